"""A native Gymnasium vector env: B environments x N nodes stepped as one tensor program.

``gymnasium.make_vec("GreenGossip/EdgeLearning-v3", num_envs=B, vectorization_mode="vector_entry_point")``
returns it. Every environment keeps its own numpy generator (seeded ``seed + i`` as Gymnasium's vector
envs do) for its scenarios, and all randomness inside a round comes from counter-based streams keyed per
episode, so environment i gives exactly the numbers of a single env reset with ``seed + i``.

Autoreset is Gymnasium 1.x's ``AutoresetMode.SAME_STEP``: an environment whose episode ends is reset
inside the same ``step``; the returned observation is the new episode's first one, and the last
observation and info of the finished episode are in ``info["final_obs"]`` / ``info["final_info"]``
(masks ``info["_final_obs"]`` / ``info["_final_info"]``). Read KPIs from ``final_info``.

``workers`` > 1 splits the environments into that many contiguous groups, each one batched program
(``FleetBatch``), stepped at once. ``worker_kind="thread"`` (the default) steps them in as many threads:
torch and NumPy's BLAS release the GIL inside their kernels, and a batched round is mostly kernels, so the
groups run on separate cores. With torch on one intra-op thread (as the training CLI and bench_step run it),
2 workers step 64 environments of 32 nodes about 1.5x faster
than one on a 2-core CPU (design note 20). ``worker_kind="process"`` gives each group a worker
process instead (``envs/env_groups.py``): no group waits for the GIL, which makes the same step another
12-15 % faster, at the price of pickling each step's observations and of the groups' ``FleetBatch``
objects living in the workers (CPU only; design note 21).
Each group's numbers equal those of a single env with the same seed, as for one group; only float32
summation order in the batched products differs.
"""

from __future__ import annotations

import functools
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from greengossip.envs.config import ConfigError, EnvConfig, load_config
from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.env_groups import GroupProcess, GroupRound, play_group_round, reset_group, wait_for_all
from greengossip.envs.errors import bounded_repr
from greengossip.envs.fleet_batch import FleetBatch
from greengossip.envs.footprint import check_fits
from greengossip.envs.gossip_env import check_reset_options, validate_actions
from greengossip.envs.numerics import raise_if_nonfinite
from greengossip.envs.observation import observation_space

WORKER_KINDS = ("thread", "process")


class EdgeLearningVectorEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: str | dict | EnvConfig | None = None, render_mode=None,
                 workers: int = 1, worker_kind: str = "thread", check_finite: bool = False):
        if render_mode is not None:
            raise ValueError("the vector env does not render; use the single env with render_mode='rgb_array'")
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1 (threads or processes, each stepping a group of the "
                             f"environments), got {workers!r}")
        if worker_kind not in WORKER_KINDS:
            raise ValueError(f"worker_kind must be one of {WORKER_KINDS}, got {worker_kind!r}")
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1 (environments stepped together), got "
                             f"{bounded_repr(num_envs)}")
        self.config = load_config(config)
        self.check_finite = bool(check_finite)  # raise FloatingPointError at a non-finite value (envs/numerics.py)
        try:
            check_fits(self.config, int(num_envs))
        except ValueError as exc:
            raise ConfigError(f"num_envs={int(num_envs)}: {exc}") from None
        if worker_kind == "process" and self.config.device != "cpu":
            raise ValueError(f"worker_kind='process' steps the groups on the CPU only (device is "
                             f"{self.config.device!r}); use worker_kind='thread'")
        self.num_envs = int(num_envs)
        self.n_nodes = self.config.n_nodes
        self.single_observation_space = observation_space(self.config)
        self.single_action_space = spaces.MultiDiscrete(np.full(self.n_nodes, N_ACTIONS, dtype=np.int64))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._device = torch.device(self.config.device)
        self.workers = max(1, min(int(workers), self.num_envs))
        # one group runs in the calling thread whatever the kind: there is nothing to run beside it
        self.worker_kind = worker_kind if self.workers > 1 else "thread"
        # group k is environments [first, last): one batched program each
        bounds = np.linspace(0, self.num_envs, self.workers + 1).round().astype(int).tolist()
        self._groups = list(zip(bounds[:-1], bounds[1:]))
        in_processes = self.worker_kind == "process"
        self._fleets = [] if in_processes else [FleetBatch(self.config) for _ in range(self.workers)]
        self._processes: list[GroupProcess] = []  # started at the first reset (worker_kind "process")
        self._pool: ThreadPoolExecutor | None = None  # started at the first step with more than one group
        if self.workers > 1 and not in_processes and hasattr(os, "register_at_fork"):
            # a forked child inherits the pool but not its threads (work sent to it would wait forever), and
            # new threads there may not start torch's own thread pool: the child steps its groups in turn
            os.register_at_fork(after_in_child=functools.partial(_drop_pool, weakref.ref(self)))
        self._forked = False
        self._rngs: list[np.random.Generator] = []
        self._started = False

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        check_reset_options(options, allowed=())  # luck re-keys one env's streams: EdgeLearningEnv only
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"seed must be an int or a list of {self.num_envs} seeds, got {len(seed)}")
            seeds = list(seed)
        if self.worker_kind == "process":
            if not self._processes:
                self._processes = [GroupProcess(self.config, k) for k in range(self.workers)]
            for process, (first, last) in zip(self._processes, self._groups):
                process.reset_async(seeds[first:last])  # each worker builds its group's scenarios
            observations = wait_for_all(self._processes)
        else:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
            # scenarios are built in this thread, in environment order (networkx and pvlib hold the GIL anyway)
            observations = [reset_group(fleet, self.config, self._rngs[first:last])
                            for fleet, (first, last) in zip(self._fleets, self._groups)]
        self._started = True
        self.closed = False  # a reset after close starts new workers: close must stop them again
        return _joined(observations), {}

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        flat = validate_actions(actions, (self.num_envs, self.n_nodes), self._device, "actions")
        parts = self._run_groups(flat.view(self.num_envs, -1))
        rewards, terminated, truncated = (np.concatenate([getattr(part, name) for part in parts])
                                          for name in ("rewards", "terminated", "truncated"))
        info = _joined([part.info for part in parts])
        if self.check_finite:
            raise_if_nonfinite({"values": info["nonfinite_values"]}, info["round"])
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

    def _run_groups(self, actions: torch.Tensor) -> list[GroupRound]:
        """``actions`` (B, N) -> each group's round, groups in order."""
        if self.worker_kind == "process":
            values = actions.numpy()
            for process, bounds in zip(self._processes, self._groups):
                process.step_async(values[slice(*bounds)])  # every group starts before any is waited for
            return wait_for_all(self._processes)
        return self._run_groups_here(actions)

    def _run_groups_here(self, actions: torch.Tensor) -> list[GroupRound]:
        if len(self._groups) == 1 or self._forked:
            return [self._step_group(k, actions[slice(*self._groups[k])]) for k in range(len(self._groups))]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gossip-group")
        return list(self._pool.map(lambda k: self._step_group(k, actions[slice(*self._groups[k])]),
                                   range(self.workers)))

    def _step_group(self, group: int, actions: torch.Tensor) -> GroupRound:
        first, last = self._groups[group]
        return play_group_round(self._fleets[group], self.config, self._rngs[first:last], actions)

    def action_masks(self) -> np.ndarray:
        """(B, N, K) bool action masks of every environment."""
        if not self._started:
            raise RuntimeError("call reset() before action_masks(): the masks come from the nodes' reports")
        if self.worker_kind == "process":
            return np.concatenate([process.masks for process in self._processes])
        return np.concatenate([fleet.action_masks() for fleet in self._fleets])

    @property
    def fleet(self) -> FleetBatch:
        """The batched program of all environments (one worker)."""
        if len(self._groups) != 1:
            raise AttributeError(f"with workers={self.workers} each group of environments has its own FleetBatch: "
                                 "use .fleets")
        return self._fleets[0]

    @property
    def fleets(self) -> list[FleetBatch]:
        """One batched program per worker, environments in order (worker threads only)."""
        if self.worker_kind == "process":
            raise AttributeError("with worker_kind='process' each group's FleetBatch lives in its worker process")
        return list(self._fleets)

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for process in self._processes:
            process.close()
        self._processes = []
        if self.worker_kind == "thread":
            self._fleets = [FleetBatch(self.config) for _ in range(self.workers)]
        self._started = False


def _drop_pool(env_ref: weakref.ref) -> None:
    env = env_ref()
    if env is not None:
        env._pool, env._forked = None, True


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-group dicts of (B_k, ...) arrays -> one dict of (B, ...) arrays, groups in order."""
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
