"""Wrappers that adapt the Dict observation to libraries that want a flat vector."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FlattenObservation


class FlattenGossipObservation(FlattenObservation):
    """Flattens the Dict observation into one Box (for SB3 MlpPolicy, CleanRL, RL Zoo3) and keeps
    ``action_masks()`` reachable so MaskablePPO still works through the wrapper."""

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


def make_flat_env(config=None, **kwargs) -> gym.Env:
    """``gymnasium.make`` of the registered id with the flattening wrapper on top."""
    return FlattenGossipObservation(gym.make("GreenGossip/EdgeLearning-v1", config=config, **kwargs))
