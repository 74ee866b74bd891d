"""The coordinator's side of a round: send each node its action, collect the nodes' reports, and hand the
env the round as the simulator's ``transition`` would have (``FleetBatch.play_round``), so that
the KPIs, reward, episode totals, telemetry (with its privacy mechanism) and observation are the env's own.

The scheduler reads only the observation the env builds from the telemetry the nodes release themselves
(``telemetry``). The coordinator also collects what the comparison with the simulator needs: each node's
energy, bytes, CPU time, accuracy, trust row, model and public copy; of these the observation shows what
the simulator's shows (trust, staleness, last action, local loss, the model-lag column, drop-outs unless
telemetry is private), never battery or load.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics.energy import EnergyFlow
from greengossip.envs.scenario import Scenario
from greengossip.envs.simulator import RoundOutcome, RoundRandomness, network_carbon
from greengossip.envs.state import SimState, at_round, consensus_distance, honest_mean, model_spec, time_index
from greengossip.training.deploy.node import ENERGY_FIELDS, REPORT_FIELDS, report_width
from greengossip.training.deploy.telemetry import ACCOUNT, RELEASED, NodesRelease

PLAY, STOP = 1, 0
COLUMN = {name: k for k, name in enumerate(REPORT_FIELDS)}


class Coordinator:
    """Rank 0 of the process group: plays rounds through the nodes (ranks 1..N)."""

    def __init__(self, config: EnvConfig, scenario: Scenario, channel: NodesRelease, on_round=None):
        self.config = config
        self.channel = channel
        self.n_nodes = scenario.n_nodes
        self.trust_width = scenario.neighbours.shape[1]
        self.n_params = model_spec(config).n_params
        self.width = report_width(config, self.trust_width)
        self.measured: list[dict[str, float]] = []  # per round, fleet sums unless named otherwise
        self.on_round = on_round or (lambda round_index, started: None)

    def _command(self, kind: int, round_index: int, action: torch.Tensor | None) -> None:
        commands = [torch.tensor([kind, round_index, 0])]
        for i in range(self.n_nodes):
            commands.append(torch.tensor([kind, round_index, 0 if action is None else int(action[i])]))
        dist.scatter(torch.empty(3, dtype=torch.long), scatter_list=commands, src=0)

    def stop(self) -> None:
        self._command(STOP, -1, None)

    def play_round(self, config: EnvConfig, scenario: Scenario, state: SimState, action: torch.Tensor,
                   noise: RoundRandomness) -> tuple[SimState, RoundOutcome]:
        """``transition``'s signature; the nodes draw the round's random numbers themselves."""
        t = int(state.round[0])
        self.on_round(t, True)
        self._command(PLAY, t, action)
        reports = [torch.empty(self.width, dtype=torch.float64) for _ in range(self.n_nodes + 1)]
        dist.gather(torch.zeros(self.width, dtype=torch.float64), gather_list=reports, dst=0)
        self.on_round(t, False)
        table = torch.stack(reports[1:])
        self.channel.pending = table[:, -(len(RELEASED) + len(ACCOUNT)):]
        new_state, outcome = self._assemble(scenario, state, table)
        self._measure(scenario, table, outcome)
        return new_state, outcome

    def _assemble(self, scenario: Scenario, state: SimState, table: torch.Tensor) -> tuple[SimState, RoundOutcome]:
        def column(name: str) -> torch.Tensor:
            return table[:, COLUMN[name]].float()

        def flag(name: str) -> torch.Tensor:
            return table[:, COLUMN[name]] > 0.5

        start = len(REPORT_FIELDS)
        trust = table[:, start:start + self.trust_width].float()
        params = table[:, start + self.trust_width:start + self.trust_width + self.n_params].float()
        public = table[:, start + self.trust_width + self.n_params:start + self.trust_width + 2 * self.n_params].float()
        action = table[:, COLUMN["action"]].long()
        sent = flag("sent")
        node_accuracy = column("node_accuracy")
        flow = EnergyFlow(**{name: column(name) for name in ENERGY_FIELDS})
        new_state = state.replace(
            params=params, public=public, battery_wh=flow.battery_after, round=state.round + 1,
            last_action=action, staleness=column("staleness"), local_loss=column("local_loss"),
            node_accuracy=node_accuracy, accuracy=honest_mean(node_accuracy, scenario),
            consensus_distance=consensus_distance(params, scenario), dropped=flag("dropped"), trust=trust)
        intensity = at_round(scenario.carbon_g_per_wh, time_index(scenario, state.round))
        internet_bytes = column("internet_bytes")
        carbon_network = network_carbon(scenario, internet_bytes, intensity)
        outcome = RoundOutcome(
            action=action, trained=flag("trained"), sent=sent, dropped=flag("dropped"), energy=flow,
            compute_wh=column("compute_wh"), radio_wh=column("radio_wh"), base_wh=column("base_wh"),
            bytes_sent=column("bytes_sent"), bytes_received=column("bytes_received"),
            receive_wh=column("receive_wh"), internet_bytes=internet_bytes,
            carbon_grid_g=flow.grid * intensity,
            carbon_backbone_g=carbon_network[scenario.network_accounting],
            carbon_backbone_marginal_g=carbon_network["marginal"],
            carbon_backbone_attributional_g=carbon_network["attributional"],
            accuracy=new_state.accuracy, previous_accuracy=state.accuracy,
            consensus_distance=new_state.consensus_distance,
            malicious_participants=flag("malicious").sum().view(1),
            attack_influence=self._influence(scenario, state, column("model_norm"), column("attack_shift")),
        )
        return new_state, outcome

    def _influence(self, scenario: Scenario, state: SimState, model_norm: torch.Tensor,
                   attack_shift: torch.Tensor) -> torch.Tensor:
        """(1,) how far the attackers moved the honest models: the mean shift of an honest node's step
        against its attack-free step, over the mean honest model norm (the simulator's measure)."""
        if scenario.all_honest:
            return torch.zeros(1)
        scale = honest_mean(model_norm, scenario).clamp_min(1e-8)
        started = state.round >= self.config.attack.start_round
        return torch.where(started, honest_mean(attack_shift, scenario) / scale, torch.zeros(1))

    def _measure(self, scenario: Scenario, table: torch.Tensor, outcome: RoundOutcome) -> None:
        """The round's measured figures, and its energy on the same device profiles from the measured CPU
        time and metered bytes (sleep and idle draw as modelled)."""
        def column(name: str) -> np.ndarray:
            return table[:, COLUMN[name]].numpy()

        busy_w, idle_w = scenario.busy_w.double().numpy(), scenario.idle_w.double().numpy()
        tail_j = scenario.tail_j.double().numpy()
        sent, trained = column("sent") > 0.5, column("trained") > 0.5
        cpu_s = column("train_cpu_s")
        payload_sent, payload_received = column("payload_bytes_sent"), column("payload_bytes_received")
        compute_j = busy_w * cpu_s
        radio_j = 8 * payload_sent * scenario.joule_per_bit.double().numpy() + np.where(sent, tail_j, 0.0)
        receive_j = (8 * payload_received * (scenario.downlink_joule_per_bit.double().numpy()
                                             + idle_w / scenario.downlink_bit_s.double().numpy())
                     + np.where(payload_received > 0, tail_j, 0.0))
        modelled_wh = outcome.compute_wh.double().numpy() + outcome.radio_wh.double().numpy() \
            + outcome.receive_wh.double().numpy()
        consumed = outcome.energy.consumed.double().numpy()
        energy_real = consumed - modelled_wh + (compute_j + radio_j + receive_j) / 3600.0
        model_train_s = np.where(trained, outcome.compute_wh.double().numpy() * 3600.0 / busy_w, 0.0)
        self.measured.append({
            "payload_bytes_sent": float(payload_sent.sum()),
            "payload_bytes_received": float(payload_received.sum()),
            "oversize_bytes": float(column("oversize_bytes").sum()),
            "mailbox_bytes": float(column("mailbox_bytes").sum()),
            "control_bytes": float(column("control_bytes").sum()),
            "train_cpu_s": float(cpu_s.sum()),
            "model_train_s": float(model_train_s.sum()),
            "trainers": int(trained.sum()),
            "compute_wh_real": float(compute_j.sum() / 3600.0),
            "energy_wh_real": float(energy_real.sum()),
            "node_wall_s_max": float(column("round_wall_s").max()),
        })
