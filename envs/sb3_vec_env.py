"""Stable-Baselines3 ``VecEnv`` over the native batched vector env, so PPO / MaskablePPO train on B
environments stepped as one tensor program (no subprocesses).

SB3 resets finished environments in the same step and passes the last observation as
``info["terminal_observation"]``, which is exactly the SAME_STEP autoreset of ``EdgeLearningVectorEnv``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from envs.gossip_env import single_env_info
from envs.vector_env import EdgeLearningVectorEnv


class GossipVecEnv(VecEnv):
    def __init__(self, num_envs: int, config=None, seed: int | None = None):
        self.venv = EdgeLearningVectorEnv(num_envs=num_envs, config=config)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._seed = seed
        self._actions: np.ndarray | None = None

    def reset(self):
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed = None  # later resets continue each environment's own generator
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs, -1)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        done = terminated | truncated
        infos: list[dict[str, Any]] = []
        for index in range(self.num_envs):  # SB3's API wants one info dict per environment
            if done[index]:
                env_info = single_env_info(info["final_info"], index, True)
                env_info["terminal_observation"] = info["final_obs"][index]
                env_info["TimeLimit.truncated"] = bool(truncated[index] and not terminated[index])
            else:
                env_info = single_env_info(info, index, False)
            infos.append(env_info)
        return obs, rewards.astype(np.float32), done, infos

    def action_masks(self) -> np.ndarray:
        return self.venv.action_masks().reshape(self.num_envs, -1)

    def close(self) -> None:
        self.venv.close()

    def seed(self, seed: int | None = None):
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.venv, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        if method_name == "action_masks":  # MaskablePPO asks every environment for its mask
            masks = self.venv.action_masks()
            return [masks[i] for i in self._indices(indices)]
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
