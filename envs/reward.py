"""Reward as named components; the scalar reward is their weighted sum (weights in ``config.reward``).

    accuracy  = Δ accuracy of the honest nodes this round (potential-based progress)
    carbon    = -(gCO2e of the round) / carbon_scale
    energy    = -(Wh consumed in the round) / energy_scale
    security  = -(attacker participation share + attack influence)
    deadline  = +1 on reaching the target; -(target - accuracy) / target when the deadline passes first

The scales make one unit "every node doing a full round (train + full broadcast)": energy_scale is that
round's device Wh, carbon_scale that round's device + backbone Wh at the world-average grid intensity of
481 gCO2e/kWh (Ember 2023).
``cost`` (for constrained-MDP users) is the round's carbon in grams.
"""

from __future__ import annotations

from envs.config import EnvConfig
from envs.scenario import Scenario

WORLD_MEAN_G_PER_KWH = 481.0  # Ember, Global Electricity Review 2023
COMPONENTS = ("accuracy", "carbon", "energy", "security", "deadline")


def reward_scales(scenario: Scenario) -> tuple[float, float]:
    """(energy_scale_wh, carbon_scale_g) of one full round of the whole fleet."""
    full_round_wh = float(scenario.costs.total_wh[:, 2].sum())
    backbone_wh = float((scenario.costs.bytes_sent[:, 2] * scenario.degree).sum()) * scenario.backbone_kwh_per_byte * 1e3
    return full_round_wh, (full_round_wh + backbone_wh) * WORLD_MEAN_G_PER_KWH / 1000.0


def reward_components(
    config: EnvConfig,
    scenario: Scenario,
    *,
    accuracy: float,
    previous_accuracy: float,
    carbon_g: float,
    energy_wh: float,
    malicious_share: float,
    attack_influence: float,
    terminated: bool,
    truncated: bool,
) -> dict[str, float]:
    energy_scale, carbon_scale = reward_scales(scenario)
    if terminated:
        deadline = 1.0
    elif truncated:
        deadline = -max(0.0, config.target_accuracy - accuracy) / config.target_accuracy
    else:
        deadline = 0.0
    return {
        "accuracy": accuracy - previous_accuracy,
        "carbon": -carbon_g / carbon_scale,
        "energy": -energy_wh / energy_scale,
        "security": -(malicious_share + attack_influence),
        "deadline": deadline,
    }


def weighted_reward(config: EnvConfig, components: dict[str, float]) -> float:
    weights = config.reward
    return float(sum(getattr(weights, name) * value for name, value in components.items()))
