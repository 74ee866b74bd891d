"""Telemetry released by the nodes themselves, through the env's own privacy mechanism.

Node i runs the env's ``TelemetryChannel`` over the public world (the scenario without anyone's data) and
feeds it its own state: row i of what the channel releases depends on node i's state alone (its battery,
what it was asked last round and the round), as do its noise streams and its lifetime privacy accountant,
so row i is what the simulator's channel releases for node i. The node sends that row and its accountant's row (reports
released, rounds lived, which one-bit values it has revealed and their memoised responses: all visible
to whoever receives its reports). The coordinator's channel takes those rows in place of its own release,
then builds the published values and the action mask as the env does (``TelemetryChannel.publish``).
"""

from __future__ import annotations

import dataclasses

import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.observation import scenario_features
from greengossip.envs.scenario import Scenario
from greengossip.envs.state import SimState
from greengossip.envs.telemetry import TelemetryChannel

RELEASED = ("battery_soc", "harvest_now", "harvest_forecast", "load", "carbon_now", "carbon_forecast")
ACCOUNT = ("reports", "rounds_lived", "bit_seen_no", "bit_seen_yes", "bit_memo_no", "bit_memo_yes")


def public_part(scenario: Scenario) -> Scenario:
    """``scenario`` without the training and test data: the graph, devices, traces and keys anyone may know."""
    return dataclasses.replace(scenario, train_x=scenario.train_x[:0], train_y=scenario.train_y[:0],
                               shards=scenario.shards[:, :0], test_x=scenario.test_x[:0],
                               test_y=scenario.test_y[:0], eval_index=scenario.eval_index[:0])


class OwnRelease:
    """Node ``index``'s side: what it releases about itself each round."""

    def __init__(self, config: EnvConfig, world: Scenario, state: SimState, index: int):
        self.world = world
        self.index = index
        self.features = scenario_features(world, config.observation.forecast_rounds)
        self.channel = TelemetryChannel(config)
        self.channel.start(world, new_devices=True)
        self.channel.refresh(world, self.features, state)  # the release at the episode's start, as the env's
        self.state = state

    def after_round(self, battery_wh: torch.Tensor, action: int, requested: int) -> torch.Tensor:
        """The node's release for the coming round, then its accountant's row, as one float64 row.
        ``action``: what it carried out; ``requested``: what the scheduler asked of it."""
        i, state = self.index, self.state
        battery, last_action = state.battery_wh.clone(), state.last_action.clone()
        battery[i], last_action[i] = battery_wh.reshape(()), action
        asked = self.channel.requested_action.clone()
        asked[i] = requested
        self.channel.requested(asked)
        self.state = state.replace(battery_wh=battery, last_action=last_action, round=state.round + 1)
        self.channel.round_played(self.world)
        released = self.channel.release(self.world, self.features, self.state)
        accountant = self.channel.accountant
        account = [accountant.reports[i], accountant.rounds_lived[i], *accountant.bit_seen[i], *accountant.bit_memo[i]]
        return torch.tensor([float(released[name][i]) for name in RELEASED] + [float(v) for v in account],
                            dtype=torch.float64)


class NodesRelease(TelemetryChannel):
    """The coordinator's channel: after the episode's start, the rows the nodes released (``pending``, set
    by the coordinator when it collects a round) stand in for its own release."""

    pending: torch.Tensor | None = None  # (N, len(RELEASED) + len(ACCOUNT))

    def release(self, scenario: Scenario, features, state: SimState,
                restarted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.pending is None:
            return super().release(scenario, features, state, restarted)
        rows, self.pending = self.pending, None
        telemetry = {name: rows[:, k].float() for k, name in enumerate(RELEASED)}
        account = rows[:, len(RELEASED):]
        accountant = self.accountant
        accountant.reports, accountant.rounds_lived = account[:, 0].long(), account[:, 1].long()
        accountant.bit_seen, accountant.bit_memo = account[:, 2:4] > 0.5, account[:, 4:6] > 0.5
        if self.config.privacy.mechanism != "none":
            telemetry["dropped"] = torch.zeros_like(telemetry["battery_soc"])  # released as a fleet share only
        self.reported = telemetry
        return telemetry
