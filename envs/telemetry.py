"""What the nodes report to the scheduler each round, and the action mask derived from it.

A node's report starts from the truth (envs/observation.py ``true_telemetry``); lying-telemetry attackers
replace it with the most attractive values; with private telemetry the private values (battery, background
load) pass through the configured mechanism, a node reports only when due and within its device's budget,
and a node that stays silent shows its last released values (envs/dynamics/privacy.py). The per-node
drop-out flag is then not released at all (the fleet's share of drop-outs, an aggregate, still is). The
scheduler never sees more than the nodes chose to publish, and its action mask is built from that.
"""

from __future__ import annotations

import numpy as np
import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import attacks
from greengossip.envs.dynamics.privacy import PRIVATE_RANGES, PrivacyAccountant, noise_scale, privatize
from greengossip.envs.observation import ScenarioFeatures, apply_lies, true_telemetry
from greengossip.envs.scenario import Scenario
from greengossip.envs.simulator import affordable_actions, background_load
from greengossip.envs.state import SimState, per_env

# what a node shows before its first report of an episode (mid-range values)
PLACEHOLDER = {"battery_soc": 0.5, "load": 0.5}
# likelihood ratio a one-bit "cannot afford" must carry before the mask keeps the node out
VETO_ODDS = 9.0


class TelemetryChannel:
    """The reports of B·N nodes: the published values (``telemetry``), the mask built from them
    (``mask``) and, with private telemetry, each device's lifetime privacy accountant."""

    def __init__(self, config: EnvConfig):
        self.config = config
        self.accountant: PrivacyAccountant | None = None
        self.reported: dict[str, torch.Tensor] | None = None
        self.telemetry: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def start(self, scenario: Scenario, new_devices: bool = True) -> None:
        """New episodes in every environment. Unless ``new_devices``, the devices' accountants carry over
        (while the batch keeps its size): a device's budget is for its life, not for an episode."""
        if new_devices or self.accountant is None or len(self.accountant.reports) != scenario.n_nodes:
            self.accountant = PrivacyAccountant(self.config.privacy, scenario.n_nodes, scenario.capacity_wh.device,
                                                rounds_per_day=1440.0 / self.config.round_minutes)
        self.reported = None
        self.new_scenario(scenario)

    def new_scenario(self, scenario: Scenario) -> None:
        self.liars = attacks.is_kind(scenario.attack_kind, "lying_telemetry")
        self.any_liars = bool(self.liars.any())

    def round_played(self, scenario: Scenario) -> None:
        """Every device lived one more round."""
        self.accountant.live(torch.ones(scenario.n_nodes, dtype=torch.bool, device=self.accountant.reports.device))

    def refresh(self, scenario: Scenario, features: ScenarioFeatures, state: SimState,
                restarted: torch.Tensor | None = None) -> None:
        """What the nodes report for the coming round, and the mask. ``restarted`` (bool): only these
        nodes' episodes just began (the others reported this round already); they show the placeholder until
        their first report. None: a round was played (or every episode began) and every node is due."""
        self.publish(scenario, state, self.release(scenario, features, state, restarted))

    def release(self, scenario: Scenario, features: ScenarioFeatures, state: SimState,
                restarted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What each node releases about itself (through the privacy mechanism, if any). Row i depends
        only on node i's own state, so a node can release its row itself (``greengossip.training.deploy``)."""
        config = self.config
        privacy = config.privacy
        load = background_load(config, scenario, state.round)
        telemetry = true_telemetry(scenario, features, state, load)
        n = scenario.nodes_per_env
        if self.any_liars:
            started = (state.round >= config.attack.start_round).repeat_interleave(n)
            telemetry = apply_lies(telemetry, self.liars & started)
        if privacy.mechanism != "none":
            telemetry = self._protect(scenario, state, telemetry, restarted)
            telemetry["dropped"] = torch.zeros_like(telemetry["battery_soc"])  # released as a fleet share only
        self.reported = telemetry
        return telemetry

    def publish(self, scenario: Scenario, state: SimState, telemetry: dict[str, torch.Tensor]) -> None:
        """The released values as the scheduler reads them, and the action mask built from them."""
        config = self.config
        privacy = config.privacy
        if privacy.mechanism == "none" and not self.any_liars:  # true values: already in range
            self.telemetry = telemetry
        else:
            self.telemetry = {name: value.clamp(0.0, PRIVATE_RANGES[name]) if name in PRIVATE_RANGES else value
                              for name, value in telemetry.items()}
        reported_battery = self.telemetry["battery_soc"] * scenario.capacity_wh
        if privacy.mechanism != "none" and privacy.battery_report == "afford_bit" and not self._bit_is_evidence():
            reported_battery = scenario.capacity_wh  # a weak "no" vetoes nobody: the node refuses what it cannot pay
        reported_harvest = self.telemetry["harvest_now"] * scenario.costs.total_wh[:, 2]
        load = None
        if config.background_load.mean > 0:
            load = self._load_estimate(self.telemetry["load"])
        self.mask = affordable_actions(config, scenario, reported_battery, reported_harvest, state.round,
                                       load=load)

    def _bit_is_evidence(self) -> bool:
        """Whether the one-bit report's "no" may mask a node: only when a "no" is at least
        ``VETO_ODDS`` times likelier from a node that cannot afford the rounds than from one that can,
        (1 - f/2) / (f/2) >= VETO_ODDS. A weaker bit would keep out mostly nodes that could have taken part;
        the battery column still shows what the bit implies."""
        half = self.config.privacy.afford_flip / 2
        return (1 - half) / half >= VETO_ODDS

    def _load_estimate(self, released: torch.Tensor) -> torch.Tensor:
        """The load the mask assumes: the released value, or under noise its linear least-squares estimate,
        shrunk towards the world's mean load by var(load) / (var(load) + var(noise)). A noised load taken
        at face value would mask training for every node whose noise came out high."""
        background, privacy = self.config.background_load, self.config.privacy
        if privacy.mechanism == "none":
            return released.clamp(max=background.max_share)
        spread = min(2 * background.mean, background.max_share)
        load_variance = spread**2 / 12  # uniform on [0, spread], the cap aside
        scale = noise_scale(privacy)
        noise_variance = 2 * scale**2 if privacy.mechanism == "laplace" else scale**2
        weight = load_variance / (load_variance + noise_variance)
        return (spread / 2 + weight * (released - spread / 2)).clamp(0.0, background.max_share)

    def _protect(self, scenario: Scenario, state: SimState, telemetry: dict[str, torch.Tensor],
                 restarted: torch.Tensor | None) -> dict[str, torch.Tensor]:
        privacy = self.config.privacy
        n = scenario.nodes_per_env
        previous = {name: torch.full_like(telemetry[name], PLACEHOLDER[name]) for name in PRIVATE_RANGES}
        if self.reported is not None:  # a silent node shows what it last released; a new episode, the placeholder
            previous = {name: self.reported[name] if restarted is None else
                        torch.where(restarted, previous[name], self.reported[name]) for name in previous}
        woke = state.last_action >= 1
        due = woke | (state.round % privacy.heartbeat_rounds == 0).repeat_interleave(n)
        private = dict(PRIVATE_RANGES)
        if privacy.battery_report == "afford_bit":
            private.pop("battery_soc")
            bit_battery, released = self._afford_bit(scenario, state, telemetry)
            telemetry = {**telemetry, "battery_soc": torch.where(released, bit_battery, previous["battery_soc"])}
        reporting = due & self.accountant.may_report()
        if restarted is not None:
            reporting &= restarted
        noised = privatize(privacy, telemetry, scenario.stream_key, state.round)
        protected = {name: torch.where(reporting, noised[name], previous[name]) if name in private else value
                     for name, value in telemetry.items()}
        self.accountant.record(reporting)
        return protected

    def _afford_bit(self, scenario: Scenario, state: SimState, telemetry: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The battery column under the one-bit report: the least state of charge that the memoised
        response implies (the reserve plus k full rounds when the node says it can afford them)."""
        privacy, energy = self.config.privacy, self.config.energy
        k = privacy.afford_rounds
        full_round = scenario.costs.total_wh[:, 2] / scenario.capacity_wh
        truth = telemetry["battery_soc"] - energy.battery_min_soc >= k * full_round
        response, released = self.accountant.afford_bit(truth, scenario.stream_key, state.round)
        reserve = torch.full_like(full_round, energy.battery_min_soc)
        return torch.where(response, energy.battery_min_soc + k * full_round, reserve), released

    def hides_dropouts(self) -> bool:
        return self.config.privacy.mechanism != "none"

    def epsilon_spent(self, scenario: Scenario) -> dict[str, np.ndarray]:
        """(B,) the most and the mean ε any device of each environment has spent in its life, and the
        mean ε per device per day of its life."""
        if self.config.privacy.mechanism == "none":
            zeros = np.zeros(scenario.n_envs)
            return {"epsilon_spent": zeros, "epsilon_spent_mean": zeros, "epsilon_per_day": zeros}
        spent = per_env(self.accountant.spent, scenario)
        per_day = per_env(self.accountant.spent / self.accountant.days_lived, scenario)
        return {"epsilon_spent": spent.max(1).values.double().cpu().numpy(),
                "epsilon_spent_mean": spent.mean(1).double().cpu().numpy(),
                "epsilon_per_day": per_day.mean(1).double().cpu().numpy()}
