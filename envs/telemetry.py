"""What the nodes report to the scheduler each round, and the action mask derived from it.

A node's report starts from the truth (envs/observation.py ``true_telemetry``); lying-telemetry attackers
replace it with the most attractive values; with private telemetry the private values pass through the
configured mechanism and a node reports only when due and within its budget (envs/dynamics/privacy.py).
The scheduler never sees more than the nodes chose to publish, and its action mask is built from that.
"""

from __future__ import annotations

import numpy as np
import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import attacks
from greengossip.envs.dynamics.privacy import PRIVATE_RANGES, PrivacyAccountant, privatize
from greengossip.envs.observation import ScenarioFeatures, apply_lies, true_telemetry
from greengossip.envs.scenario import Scenario
from greengossip.envs.simulator import affordable_actions
from greengossip.envs.state import SimState, per_env


class TelemetryChannel:
    """The reports of B·N nodes: the published values (``telemetry``), the mask built from them
    (``mask``) and, with private telemetry, the per-node privacy accountant."""

    def __init__(self, config: EnvConfig):
        self.config = config
        self.accountant: PrivacyAccountant | None = None
        self.reported: dict[str, torch.Tensor] | None = None
        self.telemetry: dict[str, torch.Tensor] = {}
        self.mask: torch.Tensor | None = None

    def start(self, scenario: Scenario) -> None:
        """New episodes in every environment."""
        self.accountant = PrivacyAccountant(self.config.privacy, scenario.n_nodes, scenario.capacity_wh.device)
        self.reported = None
        self.new_scenario(scenario)

    def restart_rows(self, rows: torch.Tensor) -> None:
        """New episodes on node rows ``rows`` (long indices); the others carry on."""
        self.accountant.reports[rows] = 0

    def new_scenario(self, scenario: Scenario) -> None:
        self.liars = attacks.is_kind(scenario.attack_kind, "lying_telemetry")
        self.any_liars = bool(self.liars.any())

    def refresh(self, scenario: Scenario, features: ScenarioFeatures, state: SimState,
                rows: torch.Tensor | None = None) -> None:
        """What the nodes in ``rows`` (bool, all when None) report for the coming round, and the mask."""
        config = self.config
        privacy = config.privacy
        telemetry = true_telemetry(scenario, features, state)
        n = scenario.nodes_per_env
        if self.any_liars:
            started = (state.round >= config.attack.start_round).repeat_interleave(n)
            telemetry = apply_lies(telemetry, self.liars & started)
        if privacy.mechanism != "none":
            if rows is None:  # every node reports
                rows = torch.ones(scenario.n_nodes, dtype=torch.bool, device=state.params.device)
            woke = state.last_action >= 1
            due = woke | (state.round % privacy.heartbeat_rounds == 0).repeat_interleave(n)
            reporting = due & self.accountant.may_report() & rows
            noised = privatize(privacy, telemetry, scenario.stream_key, state.round)
            previous = {name: torch.full_like(value, PRIVATE_RANGES.get(name, 1.0) / 2)
                        for name, value in telemetry.items()}
            if self.reported is not None:
                previous = {name: torch.where(rows, previous[name], self.reported[name]) for name in previous}
            telemetry = {name: torch.where(reporting, noised[name], previous[name]) if name in PRIVATE_RANGES
                         else value for name, value in telemetry.items()}
            self.accountant.record(reporting)
        self.reported = telemetry
        if privacy.mechanism == "none" and not self.any_liars:  # true values: already in range
            self.telemetry = telemetry
        else:
            self.telemetry = {name: value.clamp(0.0, PRIVATE_RANGES[name]) if name in PRIVATE_RANGES else value
                              for name, value in telemetry.items()}
        reported_battery = self.telemetry["battery_soc"] * scenario.capacity_wh
        reported_harvest = self.telemetry["harvest_now"] * scenario.costs.total_wh[:, 2]
        self.mask = affordable_actions(config, scenario, reported_battery, reported_harvest, state.round)

    def epsilon_spent(self, scenario: Scenario) -> dict[str, np.ndarray]:
        """(B,) the most and the mean ε any node of each environment has spent."""
        if self.config.privacy.mechanism == "none":
            zeros = np.zeros(scenario.n_envs)
            return {"epsilon_spent": zeros, "epsilon_spent_mean": zeros}
        spent = per_env(self.accountant.spent, scenario)
        return {"epsilon_spent": spent.max(1).values.double().cpu().numpy(),
                "epsilon_spent_mean": spent.mean(1).double().cpu().numpy()}
