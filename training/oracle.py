"""The clairvoyant bound of a scenario: rollout search over cloned simulator states.

A round is a function of the state and the actions alone: every random draw comes from counter-based
streams keyed by the episode and the round (envs/dynamics/streams.py), so a copy of the env, stepped with
the same actions, replays the same future. :func:`clone_env` copies an env's state (the scenario, which no
round changes, is shared), and :class:`OracleScheduler` plans on such copies:

* its *base policies* are heuristics, each seeing the observation as it is (``observed``) or the truth the
  simulator holds (``truth``: the mean harvest over the next 12 h and intensity over the next 2 h, who the
  attackers are, the true battery, load and affordable actions; ``training.ablate.read_truth``);
* at round 0 it plays every base policy to the end of the episode on a copy and follows the best plan;
* every ``every`` rounds it plays the ``width`` base policies that did best when last played again from
  the current state, and switches to one when that finishes better than the plan it follows (a fortified
  rollout: Bertsekas, "Rollout Algorithms for Discrete Optimization: A Survey", 2013). The plan only ever
  improves, so the oracle does at least as well as each of its base policies alone, on every scenario.

Plans are ranked by :func:`outcome_key`: the target met first, then the least carbon-to-target. A copy
whose carbon so far already exceeds the plan's carbon-to-target is stopped early (it cannot do better).
The oracle is deterministic: the same scenario and base policies give the same actions.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greengossip.agents.heuristics import build_heuristic
from greengossip.envs.observation import NODE_INDEX

TRUTH_COLUMNS = ("harvest_forecast", "carbon_forecast", "trust", "battery_soc", "harvest_now", "load")
VIEWS = ("observed", "truth")


def clone_env(env) -> Any:
    """An independent copy of ``env``'s core (``env.unwrapped``) in its current state. What no round
    changes (the config, the scenario and the features derived from it) is shared, not copied."""
    core = env.unwrapped
    fleet = core._fleet
    shared = [fleet.config, fleet.scenario, fleet.features, fleet.spec, *fleet.scenarios]
    memo = {id(item): item for item in shared if item is not None}
    return copy.deepcopy(core, memo)


def truth_view(observation: dict[str, np.ndarray], env) -> dict[str, np.ndarray]:
    """``observation`` with the truth the simulator holds in place of what the scheduler may not know."""
    from greengossip.envs.state import at_round, time_index
    from greengossip.training.ablate import read_truth

    truth = read_truth(env)
    nodes = np.array(observation["nodes"], copy=True)
    for name in TRUTH_COLUMNS:
        nodes[:, NODE_INDEX[name]] = truth.columns[name]
    fleet = env.unwrapped._fleet
    online = at_round(fleet.scenario.available, time_index(fleet.scenario, fleet.state.round)).cpu().numpy()
    mask = truth.mask & (online[:, None] | (np.arange(truth.mask.shape[1]) == 0))  # offline nodes only idle
    return {**observation, "nodes": nodes, "action_mask": mask.astype(np.float32)}


def outcome_key(reached: bool, carbon_to_target_g: float, final_accuracy: float,
                episode_carbon_g: float) -> tuple[float, float, float]:
    """Best first: the target met, then the least carbon-to-target; among misses, the highest accuracy,
    then the least carbon."""
    if reached:
        return (0.0, float(carbon_to_target_g), 0.0)
    return (1.0, -float(final_accuracy), float(episode_carbon_g))


@dataclass(frozen=True)
class BasePolicy:
    rule: str  # a heuristic spec, name:key=value,...
    view: str  # "observed" or "truth"

    @property
    def label(self) -> str:
        return self.rule if self.view == "observed" else f"{self.rule}@truth"


def base_policies(rules: Sequence[str], views: Sequence[str] = VIEWS) -> list[BasePolicy]:
    """Every rule under every view, truth first (a strong plan early makes the bound prune more)."""
    unknown = [view for view in views if view not in VIEWS]
    if unknown:
        raise ValueError(f"unknown views {unknown}; allowed: {', '.join(VIEWS)}")
    ordered = [view for view in ("truth", "observed") if view in views]
    return list(dict.fromkeys(BasePolicy(rule, view) for view in ordered for rule in rules))


@dataclass
class Plan:
    """Actions from round 0 to the end of the episode, the cumulative carbon after each round, and what
    the plan achieves."""

    actions: list[np.ndarray]
    carbon: list[float]
    key: tuple[float, float, float]
    policies: list[tuple[int, str]] = field(default_factory=list)  # (first round, base policy) switches


class OracleScheduler:
    """The clairvoyant scheduler of one env: ``predict`` returns the action of the best plan found on
    copies of ``env`` (see the module docstring). It reads the env, not the observation."""

    name = "oracle"

    def __init__(self, env, policies: Sequence[BasePolicy], every: int = 8, width: int = 3, seed: int = 0):
        if not policies:
            raise ValueError("the oracle needs at least one base policy")
        for name, value in (("every", every), ("width", width)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        self.env = env
        self.policies = list(policies)
        self.every = int(every)
        self.width = int(width)
        self.seed = int(seed)
        self.plan: Plan | None = None
        # the base policies, best first by how they finished when last played (pruned ones last)
        self._ranking: list[tuple[tuple, int]] = []
        self.rollouts = 0  # copies played (a measure of the search's cost)
        self.replans = 0  # times the env left the plan's path (0 unless the simulator is not replayable)

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True,
                **_: Any) -> tuple[np.ndarray, Any]:
        core = self.env.unwrapped
        now = int(core.sim_state.round[0])
        carbon = float(core._fleet.totals["carbon_g"][0])
        if now == 0 or self.plan is None or now >= len(self.plan.actions):
            if now != 0:
                self.replans += 1
            self.plan = self._search(core, now, None)
        elif not np.isclose(self.plan.carbon[now - 1], carbon, rtol=1e-9, atol=1e-12):
            self.replans += 1
            self.plan = self._search(core, now, None)
        elif now % self.every == 0:
            self.plan = self._search(core, now, self.plan)
        return self.plan.actions[now].copy(), state

    # ------------------------------------------------------------------ search
    def _search(self, core, now: int, incumbent: Plan | None) -> Plan:
        prefix_actions = incumbent.actions[:now] if incumbent is not None else []
        prefix_carbon = incumbent.carbon[:now] if incumbent is not None else []
        best = incumbent
        chosen = range(len(self.policies)) if incumbent is None else [i for _, i in self._ranking[:self.width]]
        ranking = []
        for index in chosen:
            policy = self.policies[index]
            bound = best.key[1] if best is not None and best.key[0] == 0.0 else None
            found = self._rollout(core, policy, bound)
            self.rollouts += 1
            if found is None:
                ranking.append(((math.inf,), index))
                continue
            actions, carbon, key = found
            ranking.append((key, index))
            if best is None or key < best.key:
                switches = (incumbent.policies if incumbent is not None else [])
                best = Plan(prefix_actions + actions, prefix_carbon + carbon, key,
                            [entry for entry in switches if entry[0] < now] + [(now, policy.label)])
        if best is None:  # every copy was stopped by a bound: impossible without an incumbent
            raise RuntimeError("the oracle found no plan")
        played = {index for _, index in ranking}
        self._ranking = sorted(ranking) + [entry for entry in self._ranking if entry[1] not in played]
        return best

    def _rollout(self, core, policy: BasePolicy, bound: float | None
                 ) -> tuple[list[np.ndarray], list[float], tuple] | None:
        """Play ``policy`` on a copy of ``core`` to the end: (actions, cumulative carbon, key), or None
        when its carbon passed ``bound`` (the incumbent's carbon-to-target) before the target was met."""
        env = clone_env(core)
        scheduler = build_heuristic(policy.rule, seed=self.seed)
        observation = env._observation()
        actions, carbon = [], []
        info: dict[str, Any] = {}
        done, first = False, True
        while not done:
            seen = truth_view(observation, env) if policy.view == "truth" else observation
            action, _ = scheduler.predict(seen, episode_start=np.array([first]), deterministic=True)
            first = False
            action = np.asarray(action, dtype=np.int64).reshape(-1)
            observation, _, terminated, truncated, info = env.step(action)
            actions.append(action)
            carbon.append(float(env._fleet.totals["carbon_g"][0]))
            done = terminated or truncated
            if bound is not None and not terminated and carbon[-1] >= bound:
                return None
        reached = info.get("rounds_to_target") is not None
        key = outcome_key(reached, info.get("carbon_to_target_g") or 0.0, info.get("final_accuracy") or 0.0,
                          info.get("episode_carbon_g") or 0.0)
        return actions, carbon, key


def parse_plan(text: str) -> list[tuple[int, BasePolicy]]:
    """The oracle's plan as the benchmark writes it (``label@first > label@first``, ``label`` a rule or
    ``rule@truth``): (first round, base policy) in order."""
    plan = []
    for part in filter(None, (piece.strip() for piece in text.split(">"))):
        label, sep, first = part.rpartition("@")
        if not sep or not first.isdigit():
            raise ValueError(f"an oracle plan step is label@round, got {part!r}")
        rule, at, view = label.rpartition("@")
        policy = BasePolicy(rule, "truth") if at and view == "truth" else BasePolicy(label, "observed")
        plan.append((int(first), policy))
    if not plan or plan[0][0] != 0:
        raise ValueError(f"an oracle plan starts at round 0, got {text!r}")
    return plan


class PlanReplay:
    """The oracle's schedule of base policies (``parse_plan``) followed in another episode: from each
    step's first round on, that step's rule decides, as it did in the oracle's copies (a fresh rule at
    each switch, under its view). Played in the world the oracle searched, it repeats the oracle's actions;
    played under other random streams (the env's ``luck``), it keeps what the plan knew of the world and
    loses what it knew of chance."""

    name = "oracle_replay"

    def __init__(self, env, plan: Sequence[tuple[int, BasePolicy]], seed: int = 0):
        self.env = env
        self.plan = list(plan)
        self.seed = int(seed)
        self._step, self._scheduler = -1, None

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True,
                **_: Any) -> tuple[np.ndarray, Any]:
        core = self.env.unwrapped
        now = int(core.sim_state.round[0])
        step = max(i for i, (first, _) in enumerate(self.plan) if first <= now)
        fresh = step != self._step
        if fresh:
            self._step, self._scheduler = step, build_heuristic(self.plan[step][1].rule, seed=self.seed)
        policy = self.plan[step][1]
        seen = truth_view(observation, core) if policy.view == "truth" else observation
        action, _ = self._scheduler.predict(seen, episode_start=np.array([fresh]), deterministic=True)
        return np.asarray(action, dtype=np.int64).reshape(-1), state
