"""A native Gymnasium vector env: B environments x N nodes stepped as one tensor program.

``gymnasium.make_vec("GreenGossip/EdgeLearning-v0", num_envs=B, vectorization_mode="vector_entry_point")``
returns it. Every environment keeps its own numpy generator (seeded ``seed + i`` as Gymnasium's vector
envs do) for its scenarios, and all randomness inside a round comes from counter-based streams keyed per
episode, so environment i gives exactly the numbers of a single env reset with ``seed + i``.

Autoreset is Gymnasium 1.x's ``AutoresetMode.SAME_STEP``: an environment whose episode ends is reset
inside the same ``step``; the returned observation is the new episode's first one, and the last
observation and info of the finished episode are in ``info["final_obs"]`` / ``info["final_info"]``
(masks ``info["_final_obs"]`` / ``info["_final_info"]``). Read KPIs from ``final_info``.

``workers`` > 1 splits the environments into that many contiguous groups, each one batched program
(``FleetBatch``), stepped at once in as many threads: torch and NumPy's BLAS release the GIL inside their
kernels, and a batched round is mostly kernels, so the groups run on separate cores. With torch on one
intra-op thread (as the training CLI and bench_step run it) and BLAS on one thread (envs/threads.py), 2
workers step 64 environments of 32 nodes about 1.5x faster than one on this 2-core machine (design note 34).
Each group's numbers equal those of a single env with the same seed, as for one group; only float32
summation order in the batched products differs.
"""

from __future__ import annotations

import functools
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

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
from envs.threads import simulator_call


class _GroupRound(NamedTuple):
    """One group's round: (B_k,) arrays and dicts of them."""

    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, np.ndarray]
    observation: dict[str, np.ndarray]  # after any autoreset
    last_observation: dict[str, np.ndarray] | None  # before it; None if no episode of the group ended


class EdgeLearningVectorEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: str | dict | EnvConfig | None = None, render_mode=None,
                 workers: int = 1):
        if render_mode is not None:
            raise ValueError("the vector env does not render; use the single env with render_mode='rgb_array'")
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1 (threads, each stepping a group of the environments), "
                             f"got {workers!r}")
        self.config = load_config(config)
        self.num_envs = int(num_envs)
        self.n_nodes = self.config.n_nodes
        self.single_observation_space = observation_space(self.config)
        self.single_action_space = spaces.MultiDiscrete(np.full(self.n_nodes, N_ACTIONS, dtype=np.int64))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._device = torch.device(self.config.device)
        self.workers = max(1, min(int(workers), self.num_envs))
        # group k is environments [first, last): one batched program each
        bounds = np.linspace(0, self.num_envs, self.workers + 1).round().astype(int).tolist()
        self._groups = list(zip(bounds[:-1], bounds[1:]))
        self._fleets = [FleetBatch(self.config) for _ in range(self.workers)]
        self._pool: ThreadPoolExecutor | None = None  # started at the first step with more than one group
        if self.workers > 1 and hasattr(os, "register_at_fork"):
            # a forked child inherits the pool but not its threads: work sent to it would wait forever
            os.register_at_fork(after_in_child=functools.partial(_drop_pool, weakref.ref(self)))
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
        # scenarios are built in this thread, in environment order (networkx and pvlib hold the GIL anyway)
        for fleet, (first, last) in zip(self._fleets, self._groups):
            fleet.reset([make_scenario(self.config, rng) for rng in self._rngs[first:last]])
        return _joined([fleet.observation() for fleet in self._fleets]), {}

    def step(self, actions):
        if self._fleets[0].state is None:
            raise RuntimeError("call reset() before step()")
        flat = validate_actions(actions, (self.num_envs, self.n_nodes), self._device).view(self.num_envs, -1)
        parts = self._run_groups(flat)
        rewards, terminated, truncated = (np.concatenate([getattr(part, name) for part in parts])
                                          for name in ("rewards", "terminated", "truncated"))
        info = _joined([part.info for part in parts])
        observation = _joined([part.observation for part in parts])
        done = terminated | truncated
        info = {**info, **{f"_{key}": np.ones(self.num_envs, dtype=bool) for key in info}}
        if done.any():
            last_observation = _joined([part.observation if part.last_observation is None else part.last_observation
                                        for part in parts])
            final_obs = np.empty(self.num_envs, dtype=object)
            for index in np.flatnonzero(done):  # the finished episodes' last observations, as Gymnasium hands them
                final_obs[index] = {key: value[index] for key, value in last_observation.items()}
            info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            info["final_info"] = {key: value.copy() for key, value in info.items() if not key.startswith("_")}
            info["_final_info"] = done.copy()
        return observation, rewards.astype(np.float64), terminated, truncated, info

    @simulator_call  # BLAS limited once here, so the groups' own calls leave the shared setting alone
    def _run_groups(self, actions: torch.Tensor) -> list[_GroupRound]:
        """``actions`` (B, N) -> each group's round, groups in order."""
        if len(self._groups) == 1:
            return [self._step_group(0, actions)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gossip-group")
        return list(self._pool.map(lambda k: self._step_group(k, actions[slice(*self._groups[k])]),
                                   range(self.workers)))

    def _step_group(self, group: int, actions: torch.Tensor) -> _GroupRound:
        """Group ``group``'s round from its (B_k, N) actions, its autoresets included."""
        fleet, first = self._fleets[group], self._groups[group][0]
        rewards, terminated, truncated, info = fleet.step(actions.reshape(-1))
        observation, last_observation = fleet.observation(), None
        ended = np.flatnonzero(terminated | truncated)
        if len(ended):
            # scenario building (networkx, pvlib) is per episode by design; the round itself stays batched
            last_observation = observation
            fleet.replace(ended, [make_scenario(self.config, self._rngs[first + i]) for i in ended])
            observation = fleet.observation()
        return _GroupRound(rewards, terminated, truncated, info, observation, last_observation)

    def action_masks(self) -> np.ndarray:
        """(B, N, K) bool action masks of every environment."""
        return np.concatenate([fleet.action_masks() for fleet in self._fleets])

    @property
    def fleet(self) -> FleetBatch:
        """The batched program of all environments (one worker)."""
        if len(self._fleets) != 1:
            raise AttributeError(f"with workers={self.workers} each group of environments has its own FleetBatch: "
                                 "use .fleets")
        return self._fleets[0]

    @property
    def fleets(self) -> list[FleetBatch]:
        """One batched program per worker, environments in order."""
        return list(self._fleets)

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._fleets = [FleetBatch(self.config) for _ in range(self.workers)]


def _drop_pool(env_ref: weakref.ref) -> None:
    env = env_ref()
    if env is not None:
        env._pool = None


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-group dicts of (B_k, ...) arrays -> one dict of (B, ...) arrays, groups in order."""
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
