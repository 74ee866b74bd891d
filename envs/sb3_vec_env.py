"""Stable-Baselines3 ``VecEnv`` over the native batched vector env, so PPO / MaskablePPO train on B
environments stepped as one tensor program (no subprocesses).

SB3 resets finished environments in the same step and passes the last observation as
``info["terminal_observation"]``, which is exactly the SAME_STEP autoreset of ``EdgeLearningVectorEnv``.

``config`` may also be a list of scenarios with the same fleet size (a training mix, e.g. default and
attack_heavy): environment i then runs scenario i mod k, and the environments of each scenario are one
batched program (a Python loop over the k scenarios, never over environments). ``workers`` and
``worker_kind`` are each scenario's ``EdgeLearningVectorEnv`` workers: threads or processes that step
groups of its environments at once.

``pad_to`` lets the scenarios' fleet sizes differ (one scenario per environment, as in domain
randomisation over N): every observation is padded with absent nodes up to ``pad_to``
(``observation.padded_observation``: zero features, no allowed action), the spaces are those of a
``pad_to``-node fleet, and each scenario steps only its own nodes' actions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from greengossip.envs.gossip_env import single_env_info
from greengossip.envs.observation import padded_observation, spaces_for_nodes
from greengossip.envs.vector_env import EdgeLearningVectorEnv


class GossipVecEnv(VecEnv):
    def __init__(self, num_envs: int, config=None, seed: int | None = None, workers: int = 1,
                 worker_kind: str = "thread", pad_to: int | None = None):
        configs = list(config) if isinstance(config, (list, tuple)) else [config]
        if num_envs < len(configs):
            raise ValueError(f"num_envs ({num_envs}) must be at least the number of scenarios ({len(configs)})")
        self.groups = [np.arange(j, num_envs, len(configs)) for j in range(len(configs))]
        self.venvs = [EdgeLearningVectorEnv(num_envs=len(group), config=c, workers=workers, worker_kind=worker_kind)
                      for c, group in zip(configs, self.groups)]
        first = self.venvs[0]
        self.pad_to = pad_to
        if pad_to is not None:
            too_large = [venv.n_nodes for venv in self.venvs if venv.n_nodes > pad_to]
            if too_large:
                raise ValueError(f"pad_to ({pad_to}) must be at least every scenario's n_nodes (got {max(too_large)})")
        expected = self._spaces(first)
        for venv in self.venvs[1:]:
            if self._spaces(venv) != expected:
                raise ValueError("the scenarios of one GossipVecEnv must have the same observation and action "
                                 f"spaces (n_nodes {first.n_nodes} vs {venv.n_nodes}, observation settings)"
                                 + ("" if pad_to is None else "; with pad_to only n_nodes may differ"))
        self._owner = np.empty(num_envs, dtype=np.int64)  # environment -> (scenario, position in its group)
        self._position = np.empty(num_envs, dtype=np.int64)
        for j, group in enumerate(self.groups):
            self._owner[group], self._position[group] = j, np.arange(len(group))
        super().__init__(num_envs, *expected)
        self._seed = seed
        self._actions: np.ndarray | None = None

    @property
    def venv(self) -> EdgeLearningVectorEnv:
        """The batched vector env (single-scenario adapters)."""
        if len(self.venvs) != 1:
            raise AttributeError("a scenario mix has one vector env per scenario: use .venvs")
        return self.venvs[0]

    def _spaces(self, venv: EdgeLearningVectorEnv):
        """(observation space, action space) of one environment of ``venv`` as this VecEnv shows it."""
        if self.pad_to is None:
            return venv.single_observation_space, venv.single_action_space
        return spaces_for_nodes(venv.single_observation_space, venv.single_action_space, self.pad_to)

    def _padded(self, observation: dict[str, np.ndarray], batched: bool = True) -> dict[str, np.ndarray]:
        return observation if self.pad_to is None else padded_observation(observation, self.pad_to, batched)

    def _gather(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-scenario batched observations -> one batch in environment order (padded with ``pad_to``)."""
        parts = [self._padded(part) for part in parts]
        if len(parts) == 1:
            return parts[0]
        out = {key: np.empty((self.num_envs, *value.shape[1:]), dtype=value.dtype) for key, value in parts[0].items()}
        for part, group in zip(parts, self.groups):
            for key, value in part.items():
                out[key][group] = value
        return out

    def reset(self):
        seeds = [None if self._seed is None else [self._seed + int(i) for i in group] for group in self.groups]
        obs = self._gather([venv.reset(seed=seed)[0] for venv, seed in zip(self.venvs, seeds)])
        self._seed = None  # later resets continue each environment's own generator
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs, -1)

    def step_wait(self):
        rewards = np.empty(self.num_envs, dtype=np.float32)
        dones = np.empty(self.num_envs, dtype=bool)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        observations = []
        for venv, group in zip(self.venvs, self.groups):
            obs, reward, terminated, truncated, info = venv.step(self._actions[group][:, :venv.n_nodes])
            observations.append(obs)
            done = terminated | truncated
            rewards[group], dones[group] = reward, done
            for position, index in enumerate(group):  # SB3's API wants one info dict per environment
                if done[position]:
                    env_info = single_env_info(info["final_info"], position, True)
                    env_info["terminal_observation"] = self._padded(info["final_obs"][position], batched=False)
                    env_info["TimeLimit.truncated"] = bool(truncated[position] and not terminated[position])
                else:
                    env_info = single_env_info(info, position, False)
                infos[index] = env_info
        return self._gather(observations), rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        masks = [venv.action_masks().reshape(len(group), -1) for venv, group in zip(self.venvs, self.groups)]
        if self.pad_to is not None:  # absent nodes allow no action
            width = self.pad_to * int(self.action_space.nvec[0])
            masks = [np.pad(mask, ((0, 0), (0, width - mask.shape[1]))) for mask in masks]
        if len(masks) == 1:
            return masks[0]
        out = np.empty((self.num_envs, masks[0].shape[1]), dtype=masks[0].dtype)
        for mask, group in zip(masks, self.groups):
            out[group] = mask
        return out

    def close(self) -> None:
        for venv in self.venvs:
            venv.close()

    def seed(self, seed: int | None = None):
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.venvs[self._owner[i]], attr_name) for i in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        for j in sorted({int(self._owner[i]) for i in self._indices(indices)}):
            setattr(self.venvs[j], attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        if method_name == "action_masks":  # MaskablePPO asks every environment for its mask
            masks = self.action_masks()
            return [masks[i] for i in self._indices(indices)]
        results = [getattr(venv, method_name)(*method_args, **method_kwargs) for venv in self.venvs]
        return [results[self._owner[i]] for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
