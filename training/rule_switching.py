"""Training a rule switch (``agents/rule_switching.py``): PPO over a ``Discrete`` choice of rules.

:class:`RuleSwitchingVecEnv` wraps any vector env of the ``Dict`` observation (the suite's training slots,
a validation env): its observation is each fleet's summary, its action the index of the rule that
decides every node of that fleet this round. Rewards, dones and infos pass through unchanged, so the
validation callback and the monitor read the same KPIs as for any other scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from greengossip.agents.rule_switching import (
    check_guard,
    check_switchable,
    fleet_summary,
    guarded,
    rule_actions,
    summary_space,
)


class RuleSwitchingVecEnv(VecEnvWrapper):
    """``venv`` seen through a rule switch: observation ``fleet_summary``, action one rule index per env.
    With ``hold`` k > 1 an env takes the action at its episode's first round and every k rounds after, and
    keeps that rule in between (the actions of the other rounds are ignored). With ``guard`` g an env
    follows the first rule from ``progress`` g on, whatever the action (the deployed scheduler's deadline
    guard, ``agents.rule_switching.RuleSwitchingScheduler``), so training and validation play what the
    scheduler will."""

    def __init__(self, venv: VecEnv, rules: Sequence[str], hold: int = 1, guard: float | None = None):
        self.rule_specs = list(rules)
        self.rules = check_switchable(self.rule_specs)
        if not (isinstance(hold, int) and hold >= 1):
            raise ValueError(f"hold must be a whole number of rounds >= 1, got {hold!r}")
        self.hold = hold
        self.guard = check_guard(guard)
        super().__init__(venv, observation_space=summary_space(), action_space=spaces.Discrete(len(self.rules)))
        self._observation: dict[str, np.ndarray] | None = None
        self._held = np.zeros(self.num_envs, dtype=np.int64)  # the choice each env follows
        self._age = np.zeros(self.num_envs, dtype=np.int64)  # rounds it has followed it

    def reset(self) -> np.ndarray:
        self._observation = self.venv.reset()
        self._age[:] = 0
        return fleet_summary(self._observation)

    def step_async(self, actions: np.ndarray) -> None:
        if self._observation is None:
            raise RuntimeError("reset() the rule switch before stepping it")
        actions = np.asarray(actions, dtype=np.int64).reshape(-1)
        self._held = np.where(self._age % self.hold == 0, actions, self._held)
        choices = guarded(self._held, self._observation, self.guard)
        self.venv.step_async(rule_actions(self.rules, self._observation, choices))

    def step_wait(self):
        observation, rewards, dones, infos = self.venv.step_wait()
        self._observation = observation
        self._age = np.where(dones, 0, self._age + 1)
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = fleet_summary(info["terminal_observation"])
        return fleet_summary(observation), rewards, dones, infos


def new_switching_model(venv: RuleSwitchingVecEnv, *, first_rule_bias: float, net_arch: Sequence[int],
                        seed: int, device: str = "cpu", **ppo_kwargs) -> PPO:
    """PPO with an MLP over the fleet summary, ``switch_rules``, ``switch_hold`` and ``switch_guard`` stored
    with it (they survive ``save``).

    ``first_rule_bias`` is added to the first rule's logit at the start, so the untrained policy follows
    that rule (its deterministic choice) and samples the others less often; PPO learns from there."""
    model = PPO("MlpPolicy", venv, seed=seed, device=device, verbose=0,
                policy_kwargs=dict(net_arch=dict(pi=list(net_arch), vf=list(net_arch))), **ppo_kwargs)
    model.switch_rules = list(venv.rule_specs)
    model.switch_hold = venv.hold
    model.switch_guard = venv.guard
    with torch.no_grad():
        model.policy.action_net.bias[0] += first_rule_bias
    return model
