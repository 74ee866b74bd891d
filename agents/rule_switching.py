"""A fleet-level scheduler: every round a learned policy picks which rule the whole fleet follows.

The residual node-set policy (``agents/policies.py``) samples one action per node, so PPO has to credit a
fleet-level reward to 32 simultaneous per-node choices. Here the learned choice is one of a few rules per
round, made from a fixed-size summary of the fleet (:func:`fleet_summary`: the global features and each
node feature's mean, spread, minimum and maximum over the fleet, plus the fleet size), and the rule then
decides every node. The choice has one degree of freedom per round whatever the fleet size, and the
policy has no weight that depends on N. It is the structure of the clairvoyant oracle
(``training/oracle.py``), which also switches among rules during an episode, with observations in place
of foresight (a policy over options: Sutton, Precup & Singh, "Between MDPs and semi-MDPs", Artificial
Intelligence 1999, with one-round options).

Only memoryless rules can be switched (``HeuristicScheduler.memoryless``): each reads what it needs from
the observation, so taking over from another rule mid-episode leaves nothing stale behind.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from greengossip.agents.base import ObservationKind, global_column
from greengossip.agents.heuristics import memoryless_rules
from greengossip.envs.errors import UserError
from greengossip.envs.observation import GLOBAL_FEATURES, NODE_FEATURES

# log2 of the fleet size, scaled: 1.0 at 1,024 nodes
FLEET_SIZE_SCALE = 10.0


def summary_size() -> int:
    """Length of :func:`fleet_summary`: the global features, four statistics per node feature, the size."""
    return _summary_bounds()[0].size


def summary_space() -> spaces.Box:
    """Bounds of :func:`fleet_summary`, from the features' own bounds."""
    low, high = _summary_bounds()
    return spaces.Box(low, high, dtype=np.float32)


@functools.cache
def _summary_bounds() -> tuple[np.ndarray, np.ndarray]:
    node_low = np.array([f[1] for f in NODE_FEATURES], dtype=np.float32)
    node_high = np.array([f[2] for f in NODE_FEATURES], dtype=np.float32)
    low = np.concatenate([[f[1] for f in GLOBAL_FEATURES], node_low, np.zeros_like(node_low), node_low, node_low,
                          [0.0]]).astype(np.float32)
    high = np.concatenate([[f[2] for f in GLOBAL_FEATURES], node_high, node_high - node_low, node_high, node_high,
                           [2.0]]).astype(np.float32)
    return low, high


def fleet_summary(observation: dict[str, np.ndarray]) -> np.ndarray:
    """(D,) summary of one ``Dict`` observation, (B, D) of a batch: global features, then the mean,
    standard deviation, minimum and maximum of each node feature over the nodes, then log2(N) / 10.
    Absent nodes of a padded observation (no allowed action, ``envs.observation.padded_observation``) are
    left out, so a padded fleet has the summary of the fleet itself."""
    nodes = np.asarray(observation["nodes"], dtype=np.float32)
    glob = np.asarray(observation["global"], dtype=np.float32)
    present = np.asarray(observation["action_mask"]).reshape(*nodes.shape[:-1], -1).sum(-1) > 0
    present = present | ~present.any(-1, keepdims=True)  # an all-absent row: every node, not none
    weight = present[..., None].astype(np.float32)
    count = weight.sum(-2)
    mean = (nodes * weight).sum(-2) / count
    std = np.sqrt(np.maximum(((nodes - mean[..., None, :]) ** 2 * weight).sum(-2) / count, 0.0))
    low = np.where(present[..., None], nodes, np.inf).min(-2)
    high = np.where(present[..., None], nodes, -np.inf).max(-2)
    size = np.log2(np.maximum(count[..., :1], 1.0)) / FLEET_SIZE_SCALE
    summary = np.concatenate([glob, mean, std, low, high, size], axis=-1).astype(np.float32)
    return np.clip(summary, *_summary_bounds())


def check_switchable(rules: Sequence[str]) -> list:
    """The rules built from their specs; a clear error for fewer than two, a rule named twice or a rule
    with memory (``heuristics.memoryless_rules``, the check behind every setting that names rules)."""
    if isinstance(rules, str) or len(rules) < 2:
        raise UserError(f"a rule switch needs at least two rules to choose from, got {rules!r}")
    try:
        return memoryless_rules(list(rules))
    except ValueError as exc:
        raise UserError(f"a rule switch takes memoryless rules, which another rule can take over from "
                        f"mid-episode: {exc}") from None


def rule_actions(rules: Sequence, observations: dict[str, np.ndarray], choices: np.ndarray) -> np.ndarray:
    """(B, N) node actions of a batch of observations, row b decided by ``rules[choices[b]]``."""
    choices = np.asarray(choices, dtype=np.int64).reshape(-1)
    actions = np.zeros(np.asarray(observations["nodes"]).shape[:2], dtype=np.int64)
    for index in np.unique(choices):
        rows = np.flatnonzero(choices == index)
        actions[rows] = rules[index].act_batch({key: np.asarray(value)[rows] for key, value in observations.items()})
    return actions


def guarded(choices: np.ndarray, observations: dict[str, np.ndarray], guard: float | None) -> np.ndarray:
    """``choices`` (B,) with the first rule in place of each choice made once ``progress`` >= ``guard``
    (the deadline guard of :class:`RuleSwitchingScheduler`; None: no guard)."""
    if guard is None:
        return choices
    return np.where(global_column(observations, "progress")[:, 0] >= guard, 0, choices)


def check_guard(guard: float | None) -> float | None:
    """``guard`` as a float, or a clear error: a share of the rounds to the deadline, in [0, 1]."""
    if guard is None:
        return None
    if isinstance(guard, bool) or not isinstance(guard, (int, float)) or not 0.0 <= guard <= 1.0:
        raise UserError(f"a rule switch's guard is the share of the rounds to the deadline after which the first "
                        f"rule plays, between 0 and 1 (or None for no guard), got {guard!r}")
    return float(guard)


class RuleSwitchingScheduler:
    """A saved rule-switching model (an SB3 model over :func:`fleet_summary` with a ``Discrete`` choice of
    ``model.switch_rules``) behind the scheduler interface: reads the ``Dict`` observation, returns node
    actions. A model saved with ``switch_hold`` k > 1 chooses at an episode's first round and every k rounds
    after, and keeps its choice in between (carried in ``state``, reset by ``episode_start``).

    A model saved with ``switch_guard`` g hands the fleet to its first rule once a share g of the rounds
    to the deadline has passed without the target reached (``progress`` >= g: the episode ends at the
    target). Rollout labels measure one held choice followed by the first rule, so each choice looks safe
    on its own, but a run of thrifty choices can leave too little time to reach the target; the guard
    bounds how long the switch may deviate (a shield in the sense of Alshiekh et al., "Safe Reinforcement
    Learning via Shielding", AAAI 2018, with the first rule as the safe fallback)."""

    observation_kind: ObservationKind = "dict"

    def __init__(self, model: Any, path: str | Path | None = None, seed: int = 0):
        self.model = model
        self.rule_specs = list(model.switch_rules)
        self.rules = check_switchable(self.rule_specs)
        self.hold = int(getattr(model, "switch_hold", 1))  # rounds each choice is kept
        self.guard = check_guard(getattr(model, "switch_guard", None))  # progress from which the first rule plays
        self.path = None if path is None else Path(path)
        self.seed = int(seed)
        self.algorithm = type(model).__name__

    def __repr__(self) -> str:
        return f"RuleSwitchingScheduler({self.rule_specs}, {self.path})"

    @property
    def name(self) -> str:
        return self.path.stem if self.path is not None else "rule_switching"

    def choose(self, observation: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """(B,) index of the rule each observation of a batch follows."""
        choice, _ = self.model.predict(fleet_summary(observation), deterministic=deterministic)
        return np.asarray(choice, dtype=np.int64).reshape(-1)

    def predict(self, observation: dict[str, np.ndarray], state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        batched = np.asarray(observation["nodes"]).ndim == 3
        batch = observation if batched else {key: np.asarray(value)[None] for key, value in observation.items()}
        choices = self.choose(batch, deterministic)
        if self.hold > 1:  # state: (the choice each episode follows, rounds it has been followed)
            held, age = state if state is not None else (choices, np.zeros(len(choices), dtype=np.int64))
            starts = (np.ones(len(choices), dtype=bool) if episode_start is None
                      else np.asarray(episode_start, dtype=bool).reshape(-1))
            age = np.where(starts, 0, age)
            choices = np.where(age % self.hold == 0, choices, held)
            state = (choices, age + 1)
        actions = rule_actions(self.rules, batch, guarded(choices, batch, self.guard))
        return (actions if batched else actions[0]), state

    def check_env(self, env) -> None:
        """Fail early when the env's features are not those the model was trained on."""
        expected = self.model.observation_space.shape
        if expected != summary_space().shape:
            raise UserError(f"{self.path} reads a fleet summary of {expected[0]} values, but this version of the "
                            f"environment gives {summary_size()}: the model comes from another version (see "
                            "CHANGELOG.md). Train it again on this version.")
