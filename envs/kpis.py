"""The KPIs of one round of every environment, as one record from which ``info`` is built.

``round_kpis`` reduces a round's per-node outcome to (B,) figures in one pass (per-node quantities are
summed per environment in double, like the episode totals); ``StepKPIs`` adds what the fleet decides
around the round (reward components, privacy spent, the episode summary) and ``StepKPIs.info`` flattens
the lot into the batched info dict every env front end reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from greengossip.envs.scenario import Scenario
from greengossip.envs.simulator import RoundOutcome
from greengossip.envs.state import per_env

# per-node outcome quantities summed over each environment's nodes, in info order
NODE_SUMS = ("carbon_g", "carbon_grid_g", "carbon_backbone_g", "carbon_marginal_g", "carbon_attributional_g",
             "energy_wh", "energy_compute_wh", "energy_radio_wh", "energy_receive_wh", "energy_base_wh", "grid_wh",
             "harvested_wh", "spilled_wh", "bytes_sent", "bytes_received", "internet_bytes", "participants",
             "trained_nodes", "broadcasting_nodes", "dropped_nodes")
# quantities the round already measured per environment
ENV_VALUES = ("accuracy", "consensus_distance", "malicious_participants", "attack_influence")
# figures that are counts of nodes
COUNTS = ("participants", "trained_nodes", "broadcasting_nodes", "dropped_nodes", "malicious_participants")


def _node_sums(outcome: RoundOutcome) -> dict[str, torch.Tensor]:
    flow = outcome.energy
    return {
        "carbon_g": outcome.carbon_g,
        "carbon_grid_g": outcome.carbon_grid_g,
        "carbon_backbone_g": outcome.carbon_backbone_g,
        "carbon_marginal_g": outcome.carbon_marginal_g,
        "carbon_attributional_g": outcome.carbon_attributional_g,
        "energy_wh": flow.consumed,
        "energy_compute_wh": outcome.compute_wh,
        "energy_radio_wh": outcome.radio_wh,
        "energy_receive_wh": outcome.receive_wh,
        "energy_base_wh": outcome.base_wh,
        "grid_wh": flow.grid,
        "harvested_wh": flow.harvested,
        "spilled_wh": flow.spilled,
        "bytes_sent": outcome.bytes_sent,
        "bytes_received": outcome.bytes_received,
        "internet_bytes": outcome.internet_bytes,
        "participants": outcome.trained | outcome.sent,
        "trained_nodes": outcome.trained,
        "broadcasting_nodes": outcome.sent,
        "dropped_nodes": outcome.dropped,
    }


def _columns(values) -> torch.Tensor:
    """One double block (bool counts included) of per-node or per-env values, one column each."""
    return torch.stack([v if v.is_floating_point() else v.float() for v in values], dim=1).double()


def round_kpis(outcome: RoundOutcome, scenario: Scenario, rounds: np.ndarray) -> dict[str, np.ndarray]:
    """(B,) figures of the round, keyed by name (``round``, then NODE_SUMS, then ENV_VALUES)."""
    sums = _node_sums(outcome)
    env_values = [getattr(outcome, name) for name in ENV_VALUES]
    totals = per_env(_columns(sums.values()), scenario).sum(1)  # (B, K), summed in double like the episode totals
    table = torch.cat([totals, _columns(env_values)], dim=1).cpu().numpy()
    figures: dict[str, np.ndarray] = {"round": rounds}
    for column, key in enumerate([*NODE_SUMS, *ENV_VALUES]):
        value = table[:, column]
        figures[key] = value.astype(np.int64) if key in COUNTS else value
    return figures


@dataclass
class StepKPIs:
    """Everything one step reports, each a (B,) array: the round's figures, the reward components, the
    privacy spent and the episode summary (meaningful where an episode ended)."""

    round: dict[str, np.ndarray]
    reward: dict[str, np.ndarray] = field(default_factory=dict)
    privacy: dict[str, np.ndarray] = field(default_factory=dict)
    episode: dict[str, np.ndarray] = field(default_factory=dict)

    def info(self) -> dict[str, np.ndarray]:
        """The batched info dict: round figures, ``reward_<name>`` components, ``cost`` (the round's
        gCO2e, for constrained-MDP users), the episode summary and the privacy spent."""
        info = dict(self.round)
        info.update({f"reward_{name}": value for name, value in self.reward.items()})
        info["cost"] = self.round["carbon_g"]
        info.update(self.episode)
        info.update(self.privacy)
        return info
