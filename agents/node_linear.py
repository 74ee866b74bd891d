"""A per-node linear scheduler: each node scores a few actions by a linear function of what it observes of
itself, of the fleet and of the round, and takes the best one it can afford.

Its features are the node's own columns (each divided by its upper bound, ``NODE_FEATURES``), the global
features, the fleet's mean of every node column, and four derived numbers the rules read: the node's
intensity now against its forecast (``carbon_timing``), its share of links over the internet
(``network_aware``), its intensity against the fleet's mean, and the fleet's mean of the first ratio
(``fleet_timing``); then log2 of the fleet size and a constant. Last come the rules' votes: for each rule in
``VOTERS``, 1 where that rule would make the node do something else than the prior rule does (wait for the
sun, for a cleaner hour, for the fleet, for the battery nodes, hold a gateway's broadcast, skip a period),
and 1 where the node's neighbours distrust it, at two cuts: ``trust`` under 0.5 (the trust rules' cut) and under
0.2 (only nodes whose models their neighbours clip hard: on the train draws no honest node of the
attack-free families falls that low, while the 0.5 cut also idles honest nodes whose non-IID shards put
their models far from their neighbours'). The thresholds and
conjunctions of the rules are what a linear score cannot draw by itself; with the votes as features one weight
turns a rule's mechanism on, and the search can mix mechanisms node by node. One weight row per action, the
same for every node and every fleet size, so a policy learned on small fleets runs on any.

Weights are learned by evolution strategies over whole episodes (``greengossip.training.evolution``), which
score a candidate by the carbon it needs to reach the target, the benchmark's own measure. With only the
constant's weight on the 8-bit broadcast it is ``carbon_periodic:period=1,trust_threshold=0`` (every node
trains and sends its 8-bit model every round), the prior; ``start_weights(votes=...)`` also turns on
voters' mechanisms, so that a search can start from any voter or a mix of them (with one vote on, it plays
that voter exactly).

Saved as ``.npz`` (``weights``, the action codes and the feature names it was learned with), and named by
that path wherever a scheduler is named.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from greengossip.agents.base import IDLE, SEND_Q8, SEND_TOP10, TRAIN, HeuristicScheduler, first_affordable, held_to_mask
from greengossip.agents.heuristics import build_heuristic
from greengossip.envs.errors import UserError
from greengossip.envs.observation import GLOBAL_FEATURES, NODE_FEATURES, NODE_INDEX

SUFFIX = ".npz"
# the actions it chooses among: the ones the rules use (idle, train only, 8-bit) and the cheaper top-10 %
ACTIONS = (IDLE, TRAIN, SEND_Q8, SEND_TOP10)
DERIVED = ("carbon_now_over_forecast", "internet_share", "carbon_now_over_fleet", "fleet_carbon_now_over_forecast",
           "log2_nodes", "constant")
# the rule start_weights plays with no vote on, and the search's default reference
PRIOR = "carbon_periodic:period=1,trust_threshold=0"
# each rule's own mechanism on top of the prior (trust off: distrust is its own vote), and what it does instead
VOTERS = {
    "harvest_aware": ("harvest_aware:period=1,trust_threshold=0", IDLE),
    "carbon_timing": ("carbon_timing:period=1,trust_threshold=0", IDLE),
    "fleet_timing": ("fleet_timing:period=1,trust_threshold=0", IDLE),
    "battery_quorum": ("battery_quorum:period=1,trust_threshold=0", IDLE),
    "network_aware": ("network_aware:period=1,trust_threshold=0", TRAIN),
    "carbon_periodic_2": ("carbon_periodic:period=2,trust_threshold=0", TRAIN),
}
# the trust votes and their cuts: 1 where the node's trust is under the cut (its neighbours clip its model)
DISTRUST = {"distrusted": 0.5,  # the trust rules' cut (trust_threshold, carbon_periodic's default)
            "strongly_distrusted": 0.2}
# what start_weights and the evolution settings accept as a voter's name
VOTE_NAMES = (*VOTERS, *DISTRUST)
VOTES = tuple(f"vote_{name}" for name in VOTE_NAMES)
# each vote again times (log2 N - SIZE_CENTRE), so that a vote's weight can depend on the fleet size: centred at
# 181 nodes, about mid-way on the log scale between the suite's smallest fleets (16) and its largest (1,536),
# so that a vote that should count only in small or only in large fleets needs weights of about 1, not the
# large opposed pair an uncentred product would
SIZE_CENTRE = 7.5
SIZED_VOTES = tuple(f"{vote}_x_log2_nodes_centred" for vote in VOTES)
# the features by where they come from, so that settings can name a whole kind (evolution's ``frozen``)
FEATURE_GROUPS = {
    "own": tuple(name for name, *_ in NODE_FEATURES),
    "global": tuple(name for name, *_ in GLOBAL_FEATURES),
    "fleet": tuple(f"fleet_{name}" for name, *_ in NODE_FEATURES),
    "derived": DERIVED[:-1],
    "constant": DERIVED[-1:],
    "votes": VOTES,
    "sized_votes": SIZED_VOTES,
}
FEATURE_NAMES = tuple(name for group in FEATURE_GROUPS.values() for name in group)
N_FEATURES = len(FEATURE_NAMES)
_NODE_HIGH = np.array([high for _name, _low, high, _doc in NODE_FEATURES])


_VOTER_RULES = {name: build_heuristic(spec) for name, (spec, _instead) in VOTERS.items()}


def node_features(observation: dict[str, np.ndarray], mask: np.ndarray | None = None) -> np.ndarray:
    """(N, N_FEATURES) features of one observation, in the order of ``FEATURE_NAMES``; the rules vote with
    ``mask`` (default: the observation's ``action_mask``)."""
    nodes = np.asarray(observation["nodes"], dtype=np.float64)
    mask = np.asarray(observation["action_mask"]) > 0.5 if mask is None else np.asarray(mask, dtype=bool)
    n = nodes.shape[0]
    scaled = nodes / _NODE_HIGH
    carbon_now = nodes[:, NODE_INDEX["carbon_now"]]
    # ratios are offset by 1 so that a flat grid reads 0; clipped so that one odd trace cannot dominate
    timing = np.clip(carbon_now / np.maximum(nodes[:, NODE_INDEX["carbon_forecast"]], 1e-6), 0.0, 3.0) - 1.0
    internet = nodes[:, NODE_INDEX["internet_links"]] / np.maximum(nodes[:, NODE_INDEX["degree"]], 1e-6)
    versus_fleet = carbon_now - carbon_now.mean()
    votes = rule_votes(observation, mask)
    columns = [scaled, np.broadcast_to(np.asarray(observation["global"], dtype=np.float64), (n, len(GLOBAL_FEATURES))),
               np.broadcast_to(scaled.mean(0), (n, len(NODE_FEATURES))), timing[:, None], internet[:, None],
               versus_fleet[:, None], np.full((n, 1), timing.mean()), np.full((n, 1), math.log2(n) / 10.0),
               np.ones((n, 1)), votes, votes * (math.log2(n) - SIZE_CENTRE)]
    return np.concatenate(columns, axis=1)


def rule_votes(observation: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """(N, len(VOTES)) 0/1: where each voter acts otherwise than the prior, and where the node's trust is under
    each cut of ``DISTRUST``.
    The rules are memoryless, so a vote depends on this observation alone."""
    prior = first_affordable(mask, SEND_Q8)
    votes = []
    for rule in _VOTER_RULES.values():
        votes.append(held_to_mask(mask, rule.act(observation, mask)) != prior)  # as the rule's predict acts
    trust = np.asarray(observation["nodes"])[:, NODE_INDEX["trust"]]
    votes += [trust < cut for cut in DISTRUST.values()]
    return np.stack(votes, axis=1).astype(np.float64)


def start_weights(action: int = SEND_Q8, votes: dict[str, float] | None = None,
                  from_nodes: dict[str, int] | None = None) -> np.ndarray:
    """(len(ACTIONS), N_FEATURES) weights that prefer ``action`` by a margin of 1 (falling back to what the
    mask allows), and where a voter named in ``votes`` (a key of ``VOTERS`` or ``DISTRUST``) defers, prefer
    what that rule does instead by that vote's margin (idle for a trust vote). A voter in ``from_nodes``
    counts only in fleets of more than SIZE_CENTRE's 181 nodes: it then moves with log2 N, through 0 at 181
    nodes to the full margin at ``from_nodes`` (above 181). With the defaults,
    ``carbon_periodic:period=1,trust_threshold=0``."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    weights = np.zeros((len(ACTIONS), N_FEATURES))
    weights[ACTIONS.index(action), FEATURE_NAMES.index("constant")] = 1.0
    instead = {**{name: act for name, (_spec, act) in VOTERS.items()}, **dict.fromkeys(DISTRUST, IDLE)}
    from_nodes = from_nodes or {}
    for name in (*(votes or {}), *from_nodes):
        if name not in instead:
            raise ValueError(f"votes: {name!r} is not a voter; allowed: {', '.join(instead)}")
    for name in from_nodes:
        if name not in (votes or {}):
            raise ValueError(f"from_nodes: {name!r} has no vote to gate; give it a margin in votes")
    for name, margin in (votes or {}).items():
        row, full = ACTIONS.index(instead[name]), 1.0 + float(margin)
        if name in from_nodes:
            size = from_nodes[name]
            if not (isinstance(size, int) and math.log2(max(size, 1)) > SIZE_CENTRE):
                raise ValueError(f"from_nodes: {name} must be a whole fleet size above {2 ** SIZE_CENTRE:.0f}, "
                                 f"got {size!r}")
            sized = FEATURE_NAMES.index(f"vote_{name}_x_log2_nodes_centred")
            weights[row, sized] = full / (math.log2(size) - SIZE_CENTRE)
        else:
            weights[row, FEATURE_NAMES.index(f"vote_{name}")] = full
    return weights


class NodeLinearScheduler(HeuristicScheduler):
    """The scheduler of one weight matrix; see the module docstring. Learned, but it shares the rules'
    plumbing (``predict`` reads the mask from the observation and holds it as a hard constraint) and, like
    them, decides from the current observation alone."""

    name = "node_linear"
    memoryless = True

    def __init__(self, weights: np.ndarray):
        super().__init__(seed=0)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(ACTIONS), N_FEATURES):
            raise ValueError(f"weights must have shape {(len(ACTIONS), N_FEATURES)} (actions x features), "
                             f"got {weights.shape}")
        self.weights = weights

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        allowed = np.asarray(mask, dtype=bool)[:, ACTIONS]
        scores = np.where(allowed, node_features(observation, mask) @ self.weights.T, -np.inf)
        return np.where(allowed.any(1), np.asarray(ACTIONS)[np.argmax(scores, axis=1)], IDLE)

    def save(self, path: str | Path, record: dict[str, Any] | None = None) -> Path:
        path = Path(path)
        if path.suffix != SUFFIX:
            raise ValueError(f"a node-linear scheduler is saved as {SUFFIX}, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, weights=self.weights, actions=np.asarray(ACTIONS), features=np.asarray(FEATURE_NAMES),
                 record=np.asarray(json.dumps(record or {})))
        return path


def is_node_linear_spec(spec: str | Path) -> bool:
    return str(spec).endswith(SUFFIX)


def load_node_linear(path: str | Path) -> NodeLinearScheduler:
    """The scheduler saved at ``path``; a clear error when the file is missing or was saved with other
    actions or features than this version reads."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no node-linear scheduler at {path}: name a {SUFFIX} file written by "
                        "greengossip.training.evolution")
    try:
        with np.load(path, allow_pickle=False) as data:
            weights, actions, features = data["weights"], data["actions"], data["features"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a node-linear scheduler file ({type(exc).__name__}: {exc}); it needs "
                        "the arrays weights, actions and features") from exc
    if tuple(int(a) for a in actions) != ACTIONS or tuple(str(f) for f in features) != FEATURE_NAMES:
        raise UserError(f"{path} was saved with actions {tuple(int(a) for a in actions)} and "
                        f"{len(features)} features; this version reads actions {ACTIONS} and the "
                        f"{N_FEATURES} features of greengossip.agents.node_linear.FEATURE_NAMES")
    return NodeLinearScheduler(weights)
