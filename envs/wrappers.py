"""Wrappers that adapt the Dict observation to libraries that want a flat vector.

Gymnasium 1.x wrappers do not forward attributes, so ``gym.make(...)`` returns an env whose
``action_masks()`` is reached as ``env.unwrapped.action_masks()`` or ``env.get_wrapper_attr("action_masks")()``
(SB3's vector envs use the latter, so MaskablePPO finds it). The flattening wrappers below define
``action_masks()`` themselves, so code that holds the wrapper can call it directly.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import FlattenObservation

from greengossip.envs.vector_env import EdgeLearningVectorEnv


class FlattenGossipObservation(FlattenObservation):
    """Flattens the Dict observation into one Box (for SB3 MlpPolicy, CleanRL, RL Zoo3) and keeps
    ``action_masks()`` reachable so MaskablePPO still works through the wrapper."""

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


class FlattenGossipVectorObservation(VectorWrapper):
    """The batched env with each environment's Dict observation flattened into one row of a (B, D) Box, in
    the order ``gymnasium.spaces.flatten`` uses; the finished episodes' ``info["final_obs"]`` are flattened
    too. ``action_masks()`` gives the (B, N, K) masks of the env underneath. (Gymnasium's own vector
    FlattenObservation refuses envs that reset in the same step, as this one does.)"""

    def __init__(self, env: VectorEnv):
        super().__init__(env)
        self._dict_space = env.single_observation_space
        self.single_observation_space = spaces.flatten_space(self._dict_space)
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)

    def _flatten(self, observations: dict[str, np.ndarray]) -> np.ndarray:
        rows = [np.asarray(observations[key]).reshape(self.num_envs, -1) for key in self._dict_space.spaces]
        return np.concatenate(rows, axis=1).astype(self.single_observation_space.dtype, copy=False)

    def reset(self, *, seed=None, options=None):
        observations, infos = self.env.reset(seed=seed, options=options)
        return self._flatten(observations), infos

    def step(self, actions):
        observations, rewards, terminations, truncations, infos = self.env.step(actions)
        if "final_obs" in infos:
            final = np.empty(self.num_envs, dtype=object)
            for index in np.flatnonzero(infos["_final_obs"]):
                final[index] = spaces.flatten(self._dict_space, infos["final_obs"][index])
            infos = {**infos, "final_obs": final}
        return self._flatten(observations), rewards, terminations, truncations, infos

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


def make_flat_env(config=None, **kwargs) -> gym.Env:
    """``gymnasium.make`` of the registered id with the flattening wrapper on top."""
    return FlattenGossipObservation(gym.make("GreenGossip/EdgeLearning-v3", config=config, **kwargs))


def make_flat_vector_env(num_envs: int = 1, config=None, **kwargs) -> VectorEnv:
    """Vector entry point of the flat id: ``gymnasium.make_vec("GreenGossip/EdgeLearningFlat-v3", num_envs=B)``
    steps the B environments as one batched program, as the Dict id's vector env does."""
    return FlattenGossipVectorObservation(EdgeLearningVectorEnv(num_envs, config=config, **kwargs))
