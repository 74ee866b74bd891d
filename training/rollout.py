"""Episodes: a scheduler or SB3 model acting in an env until the episode ends.

The one episode loop of the package. Evaluation (``evaluate.py``), the held-out validation of training
(``callbacks.py``), ``greengossip render`` and the multi-agent validation all play through
:func:`play_episode` (a plain env, episode after episode) or :func:`play_vec_episodes` (an SB3 ``VecEnv``
with one environment per seed, all stepped together).

Anything with SB3's ``predict(observation, state, episode_start, deterministic)`` acts: a heuristic, a
``LearnedScheduler``, a ``DecentralizedScheduler`` or an SB3 model. Policies that take ``action_masks``
get the env's masks; a recurrent policy's state is carried from step to step. Episode outcomes are read
from ``info`` of the step that ended the episode, never from the observation returned with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from greengossip.envs.wrappers import FlattenGossipObservation

# ``on_step(info, reward)``: called after the reset (reward None) and after every step
StepHook = Callable[[dict[str, Any], "float | None"], None]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Intra-op threads change float summation order; one thread makes every episode bit-identical however
    many run side by side (and is faster: a step is a few small tensor ops)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def takes_action_masks(policy: Any) -> bool:
    """Whether ``policy.predict`` accepts ``action_masks`` (MaskablePPO, learned schedulers, heuristics)."""
    try:
        parameters = inspect.signature(policy.predict).parameters
    except (TypeError, ValueError):
        return False
    return "action_masks" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def env_for(policy: Any, env: gym.Env) -> gym.Env:
    """``env`` as the policy reads it: flattened for a model trained on the flat observation."""
    return FlattenGossipObservation(env) if getattr(policy, "observation_kind", "dict") == "flat" else env


def play_episode(policy: Any, env: gym.Env, seed: int, deterministic: bool = True,
                 on_step: StepHook | None = None, max_steps: int | None = None, luck: int = 0) -> dict[str, Any]:
    """One episode of ``policy`` on the plain env ``env`` reset with ``seed`` (and, unless 0, ``luck``:
    the same world under other random streams, ``EdgeLearningEnv.reset``).

    Returns the last step's ``info`` with ``return`` (the summed reward), ``steps``, ``target_reached``
    (the episode was terminated, not truncated) and ``ended`` (False only when ``max_steps`` cut it short).
    """
    obs, info = env.reset(seed=seed, options={"luck": luck} if luck else None)
    if on_step is not None:
        on_step(info, None)
    masks = takes_action_masks(policy)
    state, episode_start = None, np.ones((1,), dtype=bool)
    total, steps, terminated, truncated = 0.0, 0, False, False
    while not (terminated or truncated) and (max_steps is None or steps < max_steps):
        extra = {"action_masks": env.unwrapped.action_masks()} if masks else {}
        action, state = policy.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic,
                                       **extra)
        obs, reward, terminated, truncated, info = env.step(np.asarray(action).reshape(-1))
        episode_start = np.zeros((1,), dtype=bool)
        total += float(reward)
        steps += 1
        if on_step is not None:
            on_step(info, float(reward))
    return {**info, "return": total, "steps": steps, "target_reached": bool(terminated),
            "ended": bool(terminated or truncated)}


def play_vec_episodes(policy: Any, venv, seeds: Sequence[int], deterministic: bool = True,
                      on_action: Callable[[np.ndarray, np.ndarray], None] | None = None) -> list[dict[str, Any]]:
    """One episode on each environment of an SB3 ``VecEnv`` (environment i reset with ``seeds[i]``; the
    seeds consecutive, as ``VecEnv.seed`` hands them out), all stepped together: one policy call and one
    batched round per step instead of one per environment. The same results as :func:`play_episode` on
    each seed in turn for a feed-forward policy (environments of the batched vector env match single
    envs); environments whose episode has ended are stepped on until the last one ends, and ignored.
    ``on_action(action, running)`` sees each step's (B, ...) actions and which episodes are still on."""
    seeds = list(seeds)
    if len(seeds) != venv.num_envs or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError(f"need {venv.num_envs} consecutive seeds, one per environment; got {seeds}")
    venv.seed(seeds[0])
    obs = venv.reset()
    masks = takes_action_masks(policy)
    results: list[dict[str, Any] | None] = [None] * venv.num_envs
    returns = np.zeros(venv.num_envs)
    steps = np.zeros(venv.num_envs, dtype=np.int64)
    while any(result is None for result in results):
        extra = {"action_masks": np.stack(venv.env_method("action_masks"))} if masks else {}
        action, _ = policy.predict(obs, deterministic=deterministic, **extra)
        if on_action is not None:
            on_action(np.asarray(action), np.array([result is None for result in results]))
        obs, rewards, dones, infos = venv.step(action)
        for index in range(venv.num_envs):
            if results[index] is not None:
                continue
            returns[index] += float(rewards[index])
            steps[index] += 1
            if dones[index]:
                info = {key: value for key, value in infos[index].items() if key != "terminal_observation"}
                results[index] = {**info, "return": float(returns[index]), "steps": int(steps[index]),
                                  "target_reached": not info.get("TimeLimit.truncated", False), "ended": True}
    return results
