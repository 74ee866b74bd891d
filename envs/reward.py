"""Reward as named components; the scalar reward is their weighted sum (weights in ``config.reward``).

    accuracy  = Δ accuracy of the honest nodes this round (potential-based progress)
    carbon    = -(gCO2e of the round) / carbon_scale
    energy    = -(Wh consumed in the round) / energy_scale
    security  = -(harm): the honest accuracy the attackers cost this round against the episode's attack-free
                twin (floored at 0, envs/fleet_batch.py); where no twin is stepped (``attack.harm_twin``
                off) the attack influence stands in: how far the attackers moved the honest models
                this round, relative to their norm (capped at 10)
    deadline  = +1 on reaching the target; -(target - accuracy) / target when the deadline passes first

The scales make one unit "every node doing a full round (train + full broadcast)": energy_scale is that
round's device Wh (sending and receiving), carbon_scale that round's device Wh plus the energy of its
internet links under the configured network accounting, at the world-average grid intensity of
481 gCO2e/kWh (Ember 2023).
``cost`` (for constrained-MDP users) is the round's carbon in grams.
"""

from __future__ import annotations

import numpy as np
import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics.energy import network_bytes, receive
from greengossip.envs.scenario import Scenario
from greengossip.envs.state import per_env

WORLD_MEAN_G_PER_KWH = 481.0  # Ember, Global Electricity Review 2023
FULL_ACTION = 2  # train + full broadcast
COMPONENTS = ("accuracy", "carbon", "energy", "security", "deadline")


def reward_scales(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """(energy_scale_wh, carbon_scale_g), each (B,): one full round of each environment's fleet."""
    everyone = torch.ones(scenario.n_nodes, dtype=torch.bool, device=scenario.degree.device)
    full_bytes = scenario.costs.bytes_sent[:, FULL_ACTION]
    reception = receive(full_bytes, everyone, scenario.neighbours, scenario.neighbour_valid,
                        joule_per_bit=scenario.downlink_joule_per_bit, downlink_bit_s=scenario.downlink_bit_s,
                        idle_w=scenario.idle_w, tail_j=scenario.tail_j)
    full_round_wh = per_env(scenario.costs.total_wh[:, FULL_ACTION] + reception.receive_wh, scenario).sum(1)
    internet = network_bytes(full_bytes, everyone, scenario.neighbours, scenario.internet_slot)
    network_wh = per_env(internet, scenario).sum(1) * (
        scenario.network_kwh_per_byte[scenario.network_accounting] * 1e3)
    energy = full_round_wh.double().cpu().numpy()
    return energy, (energy + network_wh.double().cpu().numpy()) * WORLD_MEAN_G_PER_KWH / 1000.0


def reward_components(
    config: EnvConfig,
    scales: tuple[np.ndarray, np.ndarray],
    *,
    accuracy: np.ndarray,
    previous_accuracy: np.ndarray,
    carbon_g: np.ndarray,
    energy_wh: np.ndarray,
    security_loss: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each component as a (B,) array (one entry per environment); ``scales`` from reward_scales."""
    energy_scale, carbon_scale = scales
    shortfall = np.maximum(0.0, config.target_accuracy - accuracy) / config.target_accuracy
    deadline = np.where(terminated, 1.0, np.where(truncated, -shortfall, 0.0))
    return {
        "accuracy": accuracy - previous_accuracy,
        "carbon": -carbon_g / carbon_scale,
        "energy": -energy_wh / energy_scale,
        "security": -security_loss,
        "deadline": deadline,
    }


def weighted_reward(config: EnvConfig, components: dict[str, np.ndarray]) -> np.ndarray:
    weights = config.reward
    return sum(getattr(weights, name) * value for name, value in components.items())
