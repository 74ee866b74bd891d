"""Episode bookkeeping of B environments: running totals, when the target was reached and at what cost,
and when an episode ends.

The simulator state (envs/state.py) is what the world is; ``EpisodeState`` is what the KPIs have added
up since each environment's episode began, kept in NumPy double so the totals do not drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from greengossip.envs.config import EnvConfig

# round figures added up over an episode
TOTALS = ("carbon_g", "energy_wh", "grid_wh", "harvested_wh", "bytes_sent", "malicious_participants")


def episode_end(config: EnvConfig, claimed: np.ndarray, full_accuracy: np.ndarray, rounds: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(terminated, truncated), each (B,) bool. ``claimed``: the round's subsample accuracy reached the
    target; it counts only once the whole test split (``full_accuracy``) confirms it, so rounds_to_target
    keeps its full-split meaning. Truncated at the deadline when the target was not met."""
    terminated = claimed & (full_accuracy >= config.target_accuracy)
    truncated = ~terminated & (rounds >= config.max_rounds)
    return terminated, truncated


@dataclass
class EpisodeState:
    """(B,) per-environment running figures of the current episodes."""

    totals: dict[str, np.ndarray]  # TOTALS, each (B,) summed since the episode began
    rounds_to_target: np.ndarray  # (B,) long, -1 until the target is reached
    carbon_to_target: np.ndarray  # (B,) gCO2e up to the target, NaN until reached
    energy_to_target: np.ndarray  # (B,) Wh up to the target, NaN until reached

    @classmethod
    def fresh(cls, n_envs: int) -> EpisodeState:
        return cls(
            totals={key: np.zeros(n_envs) for key in TOTALS},
            rounds_to_target=np.full(n_envs, -1, dtype=np.int64),
            carbon_to_target=np.full(n_envs, np.nan),
            energy_to_target=np.full(n_envs, np.nan),
        )

    def restart(self, envs: np.ndarray) -> None:
        """Start the figures of environments ``envs`` afresh (autoreset); the others carry on."""
        for key in TOTALS:
            self.totals[key][envs] = 0.0
        self.rounds_to_target[envs] = -1
        self.carbon_to_target[envs] = np.nan
        self.energy_to_target[envs] = np.nan

    def add_round(self, figures: dict[str, np.ndarray]) -> None:
        for key in TOTALS:
            self.totals[key] += figures[key]

    def record_target(self, terminated: np.ndarray, rounds: np.ndarray) -> None:
        """Remember the round and cost at which each environment first met the target."""
        reached = terminated & (self.rounds_to_target < 0)
        self.rounds_to_target[reached] = rounds[reached]
        self.carbon_to_target[reached] = self.totals["carbon_g"][reached]
        self.energy_to_target[reached] = self.totals["energy_wh"][reached]

    def summary(self, rounds: np.ndarray, done: np.ndarray, full_accuracy: np.ndarray) -> dict[str, np.ndarray]:
        """The episode figures for ``info`` (copies: later rounds must not change what was reported)."""
        return {
            "episode_carbon_g": self.totals["carbon_g"].copy(),
            "episode_energy_wh": self.totals["energy_wh"].copy(),
            "episode_grid_wh": self.totals["grid_wh"].copy(),
            "episode_harvested_wh": self.totals["harvested_wh"].copy(),
            "episode_bytes_sent": self.totals["bytes_sent"].copy(),
            "episode_malicious_participants": self.totals["malicious_participants"].astype(np.int64),
            "episode_rounds": rounds,
            "rounds_to_target": self.rounds_to_target.copy(),
            "carbon_to_target_g": self.carbon_to_target.copy(),
            "energy_to_target_wh": self.energy_to_target.copy(),
            "final_accuracy": np.where(done, full_accuracy, np.nan),
        }
