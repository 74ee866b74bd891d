"""A native Gymnasium vector env: B environments x N nodes stepped as one tensor program.

``gymnasium.make_vec("GreenGossip/EdgeLearning-v0", num_envs=B, vectorization_mode="vector_entry_point")``
returns it. Every environment keeps its own numpy generator (seeded ``seed + i`` as Gymnasium's vector
envs do) for its scenarios, and all randomness inside a round comes from counter-based streams keyed per
episode, so environment i gives exactly the numbers of a single env reset with ``seed + i``.

Autoreset is Gymnasium 1.x's ``AutoresetMode.SAME_STEP``: an environment whose episode ends is reset
inside the same ``step``; the returned observation is the new episode's first one, and the last
observation and info of the finished episode are in ``info["final_obs"]`` / ``info["final_info"]``
(masks ``info["_final_obs"]`` / ``info["_final_info"]``). Read KPIs from ``final_info``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.config import EnvConfig, load_config
from envs.dynamics.energy import N_ACTIONS
from envs.fleet_batch import FleetBatch
from envs.gossip_env import validate_actions
from envs.observation import observation_space
from envs.scenario import make_scenario


class EdgeLearningVectorEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: str | dict | EnvConfig | None = None, render_mode=None):
        if render_mode is not None:
            raise ValueError("the vector env does not render; use the single env with render_mode='rgb_array'")
        self.config = load_config(config)
        self.num_envs = int(num_envs)
        self.n_nodes = self.config.n_nodes
        self.single_observation_space = observation_space(self.config)
        self.single_action_space = spaces.MultiDiscrete(np.full(self.n_nodes, N_ACTIONS, dtype=np.int64))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._device = torch.device(self.config.device)
        self._fleet = FleetBatch(self.config)
        self._rngs: list[np.random.Generator] = []

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"seed must be an int or a list of {self.num_envs} seeds, got {len(seed)}")
            seeds = list(seed)
        self._rngs = [seeding.np_random(s)[0] for s in seeds]
        self._fleet.reset([make_scenario(self.config, rng) for rng in self._rngs])
        return self._fleet.observation(), {}

    def step(self, actions):
        if self._fleet.state is None:
            raise RuntimeError("call reset() before step()")
        flat = validate_actions(actions, (self.num_envs, self.n_nodes), self._device)
        rewards, terminated, truncated, info = self._fleet.step(flat)
        observation = self._fleet.observation()
        done = terminated | truncated
        info = {**info, **{f"_{key}": np.ones(self.num_envs, dtype=bool) for key in info}}
        if done.any():
            ended = np.flatnonzero(done)
            final_obs = np.empty(self.num_envs, dtype=object)
            for index in ended:  # the finished episodes' last observations, handed over as Gymnasium does
                final_obs[index] = {key: value[index] for key, value in observation.items()}
            info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            info["final_info"] = {key: value.copy() for key, value in info.items() if not key.startswith("_")}
            info["_final_info"] = done.copy()
            # scenario building (networkx, pvlib) is per episode by design; the round itself stays batched
            self._fleet.replace(ended, [make_scenario(self.config, self._rngs[i]) for i in ended])
            observation = self._fleet.observation()
        return observation, rewards.astype(np.float64), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """(B, N, K) bool action masks of every environment."""
        return self._fleet.action_masks()

    @property
    def fleet(self) -> FleetBatch:
        return self._fleet

    def close_extras(self, **kwargs: Any) -> None:
        self._fleet = FleetBatch(self.config)
