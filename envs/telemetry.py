"""What the nodes report to the scheduler each round, and the action mask derived from it.

A node's report starts from the truth (envs/observation.py ``true_telemetry``); lying-telemetry attackers
replace it with the most attractive values; with private telemetry the private values (battery, background
load) pass through the configured mechanism, a node reports only when due and within its device's budget,
and a node that stays silent shows its last released values (envs/dynamics/privacy.py). The per-node
drop-out flag is then not released at all (the fleet's share of drop-outs, an aggregate, still is), and
nothing else per node may give a drop-out away: a node reports when it was asked to wake (not when it did),
and the scheduler's ``last_action`` and ``staleness`` columns show what it asked of each node, not what the
node carried out (a node that could not pay its round sleeps instead). The scheduler never sees more than
the nodes chose to publish, and its action mask is built from that.
"""

from __future__ import annotations

import numpy as np
import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import attacks
from greengossip.envs.dynamics.energy import decode_action
from greengossip.envs.dynamics.privacy import PRIVATE_RANGES, PrivacyAccountant, noise_scale, privatize
from greengossip.envs.observation import ScenarioFeatures, apply_lies, true_telemetry
from greengossip.envs.scenario import Scenario
from greengossip.envs.simulator import affordable_actions, background_load
from greengossip.envs.state import SimState, per_env

# what a node shows before its first report of an episode (mid-range values; under the one-bit report, 0.5
# is "no response yet" between the responses 0 and 1)
PLACEHOLDER = {"battery_soc": 0.5, "load": 0.5}
# the mask keeps a node out when the chance that it can afford the round, given its one-bit response, is
# below this: asking a node that cannot pay wastes what it has above its reserve (on an off-grid node,
# carbon-free energy) and its round, while keeping out one that can pay loses its round's progress, which
# the fleet pays for in extra rounds; so only a likely "cannot" is worth a veto (chosen on validation seeds)
VETO_PROBABILITY = 0.25
# variance of the fleet's share of affording devices before any response (a uniform share: 1/12); the
# debiased share is shrunk towards one half by how much noisier than this it is
SHARE_PRIOR_VARIANCE = 1.0 / 12.0


class TelemetryChannel:
    """The reports of B·N nodes: the published values (``telemetry``), the mask built from them
    (``mask``) and, with private telemetry, each device's lifetime privacy accountant."""

    def __init__(self, config: EnvConfig):
        self.config = config
        self.accountant: PrivacyAccountant | None = None
        self.reported: dict[str, torch.Tensor] | None = None
        self.telemetry: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None
        # what the scheduler asked of each node last round, and the rounds since it last asked it to
        # broadcast: under hidden drop-outs these stand in for what the nodes carried out
        self.requested_action: torch.Tensor | None = None
        self.requested_silence: torch.Tensor | None = None

    def start(self, scenario: Scenario, new_devices: bool = True) -> None:
        """New episodes in every environment. Unless ``new_devices``, the devices' accountants carry over
        (while the batch keeps its size): a device's budget is for its life, not for an episode."""
        if new_devices or self.accountant is None or len(self.accountant.reports) != scenario.n_nodes:
            self.accountant = PrivacyAccountant(self.config.privacy, scenario.n_nodes, scenario.capacity_wh.device,
                                                rounds_per_day=1440.0 / self.config.round_minutes)
        self.reported = None
        device = scenario.capacity_wh.device
        self.requested_action = torch.zeros(scenario.n_nodes, dtype=torch.long, device=device)
        self.requested_silence = torch.zeros(scenario.n_nodes, device=device)
        self.new_scenario(scenario)

    def new_scenario(self, scenario: Scenario) -> None:
        self.liars = attacks.is_kind(scenario.attack_kind, "lying_telemetry")
        self.any_liars = bool(self.liars.any())

    def requested(self, action: torch.Tensor) -> None:
        """The (B·N,) actions the scheduler asks of the nodes for the round about to be played (kept only
        where drop-outs are hidden: elsewhere the columns show what the nodes carried out)."""
        if not self.hides_dropouts():
            return
        _, sends, _ = decode_action(action)
        self.requested_silence = torch.where(sends, 0.0, self.requested_silence + 1)
        self.requested_action = action.clone()

    def round_played(self, scenario: Scenario) -> None:
        """Every device lived one more round."""
        self.accountant.live(torch.ones(scenario.n_nodes, dtype=torch.bool, device=self.accountant.reports.device))

    def refresh(self, scenario: Scenario, features: ScenarioFeatures, state: SimState,
                restarted: torch.Tensor | None = None) -> None:
        """What the nodes report for the coming round, and the mask. ``restarted`` (bool): only these
        nodes' episodes just began (the others reported this round already); they show the placeholder until
        their first report. None: a round was played (or every episode began) and every node is due."""
        if restarted is not None:  # a new episode: nothing asked of these nodes yet
            self.requested_action = torch.where(restarted, 0, self.requested_action)
            self.requested_silence = torch.where(restarted, 0.0, self.requested_silence)
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
        if self.hides_dropouts():
            self.telemetry = {**self.telemetry, "last_action": self.requested_action,
                              "staleness": self.requested_silence}
        reported_battery = self.telemetry["battery_soc"] * scenario.capacity_wh
        if privacy.mechanism != "none" and privacy.battery_report == "afford_bit":
            reported_battery = self._read_afford_bit(scenario)
        reported_harvest = self.telemetry["harvest_now"] * scenario.costs.total_wh[:, 2]
        load = None
        if config.background_load.mean > 0:
            load = self._load_estimate(self.telemetry["load"])
        self.mask = affordable_actions(config, scenario, reported_battery, reported_harvest, state.round,
                                       load=load)

    def afford_probability(self, scenario: Scenario, responses: torch.Tensor) -> torch.Tensor:
        """(B·N,) the chance that each node can afford the next ``afford_rounds`` rounds, given its released
        one-bit response (1, 0, or 0.5 before its first): randomised-response debiasing. A response is 1 with
        probability 1 - f/2 from a node that can afford the rounds and f/2 from one that cannot; the prior is
        its environment's debiased fleet share (``debiased_share``), shrunk towards one half by its sampling
        variance (at most 1 / (4·n·(1 - f)²)), so that a fleet too small for its noise falls back on
        not knowing. Bayes' rule then gives P(can afford | response)."""
        flip = self.config.privacy.afford_flip
        n = scenario.nodes_per_env
        known = (responses - 0.5).abs() > 0.25
        said_yes = responses > 0.75
        counted = known.view(-1, n).sum(1).clamp_min(1).float()
        yes_share = (said_yes.view(-1, n).sum(1) / counted)
        prior = torch.full_like(counted, 0.5)
        if flip < 1:
            share = (yes_share - flip / 2) / (1 - flip)
            sampling_variance = 0.25 / counted / (1 - flip) ** 2
            weight = SHARE_PRIOR_VARIANCE / (SHARE_PRIOR_VARIANCE + sampling_variance)
            prior = (0.5 + weight * (share - 0.5)).clamp(0.02, 0.98)
        prior = prior.repeat_interleave(n)
        if_affords = torch.where(said_yes, 1 - flip / 2, flip / 2)
        if_not = torch.where(said_yes, flip / 2, 1 - flip / 2)
        posterior = prior * if_affords / (prior * if_affords + (1 - prior) * if_not)
        return torch.where(known, posterior, prior)

    def _read_afford_bit(self, scenario: Scenario) -> torch.Tensor:
        """Under the one-bit report: the battery column shows the charge the likelier answer implies (the
        least that affords the rounds where the chance that the node can afford them is at least one half,
        the reserve otherwise: a rule comparing its spare charge with a round reads the Bayes decision), and
        the battery the mask assumes (Wh) keeps out only the nodes whose chance is below
        ``VETO_PROBABILITY`` (the reserve: this round's public harvest may still pay) and lets the others be
        asked (the node itself refuses what it cannot pay, or browns out)."""
        reserve = self.config.energy.battery_min_soc
        affords = (reserve + self.config.privacy.afford_rounds * scenario.costs.total_wh[:, 2]
                   / scenario.capacity_wh).clamp(max=1.0)
        chance = self.afford_probability(scenario, self.telemetry["battery_soc"])
        self.afford_chance = chance
        reserve = torch.full_like(affords, reserve)
        self.telemetry = {**self.telemetry, "battery_soc": torch.where(chance >= 0.5, affords, reserve)}
        return torch.where(chance >= VETO_PROBABILITY, affords, reserve) * scenario.capacity_wh

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
        asked = self.requested_action >= 1  # asked to wake: whether it could pay is its own business
        due = asked | (state.round % privacy.heartbeat_rounds == 0).repeat_interleave(n)
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
        """The battery column under the one-bit report, as released: the memoised response (1.0 "can
        afford", 0.0 "cannot"). The true bit answers the mask's question: whether what the node holds above
        its reserve, with this round's harvest, pays ``afford_rounds`` full rounds."""
        privacy, energy = self.config.privacy, self.config.energy
        full_round = scenario.costs.total_wh[:, 2]
        spare_wh = (telemetry["battery_soc"] - energy.battery_min_soc) * scenario.capacity_wh
        harvest_wh = telemetry["harvest_now"] * full_round
        truth = spare_wh + harvest_wh >= privacy.afford_rounds * full_round
        response, released = self.accountant.afford_bit(truth, scenario.stream_key, state.round)
        return response.float(), released

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
