"""The one scheduler interface, and the plumbing every hand-written scheduler shares.

A scheduler is anything with SB3's ``predict(observation, state=None, episode_start=None,
deterministic=True) -> (action, state)``, so a trained SB3 model and a heuristic are interchangeable in
the evaluation harness (``training/evaluate.py``) and in ``stable_baselines3.common.evaluation``.
``observation_kind`` says which observation it expects: ``"dict"`` (the env's own ``Dict``) or
``"flat"`` (through ``greengossip.envs.wrappers.FlattenGossipObservation``).

Heuristics read only the observation, the same information a learned policy gets: the ``(N, F)`` node
features named in ``greengossip.envs.observation.NODE_FEATURES``, the global features and ``action_mask``. They may
remember earlier observations of the same episode (as a recurrent policy would) and forget them on
``episode_start``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.observation import GLOBAL_FEATURES, NODE_INDEX

ObservationKind = Literal["dict", "flat"]

IDLE, TRAIN, SEND_FULL, SEND_Q8, SEND_TOP10, SEND_TOP1 = range(N_ACTIONS)
GLOBAL_INDEX = {name: i for i, (name, *_rest) in enumerate(GLOBAL_FEATURES)}


@runtime_checkable
class Scheduler(Protocol):
    """What the harness accepts: SB3's ``predict`` plus the observation it wants."""

    observation_kind: ObservationKind

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]: ...


def node_feature(observation: dict[str, np.ndarray], name: str) -> np.ndarray:
    """(N,) column ``name`` of ``observation["nodes"]`` (see ``greengossip.envs.observation.NODE_FEATURES``); (B, N)
    for a batch of observations."""
    return observation["nodes"][..., NODE_INDEX[name]]


def global_feature(observation: dict[str, np.ndarray], name: str) -> float:
    return float(observation["global"][GLOBAL_INDEX[name]])


def global_column(observation: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Global feature ``name`` shaped to broadcast against node columns: (1,) for one observation,
    (B, 1) for a batch (``global_feature`` gives the float of one observation)."""
    return observation["global"][..., GLOBAL_INDEX[name], None]


def sent_last_round(observation: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) bool: the node carried out a broadcast last round (``last_action`` is code / (K - 1))."""
    return np.rint(node_feature(observation, "last_action") * (N_ACTIONS - 1)) >= SEND_FULL


def first_affordable(mask: np.ndarray, *preferences: np.ndarray | int) -> np.ndarray:
    """Per node, the first action in ``preferences`` that ``mask`` allows, else idle (always allowed).

    ``mask`` is (N, K), or (B, N, K) for a batch; ``preferences`` are action codes, each a scalar or an
    array of the nodes' shape, most wanted first; e.g. ``first_affordable(mask, SEND_FULL, TRAIN)`` falls
    back to training only, then to idle.
    """
    nodes = mask.shape[:-1]
    action = np.full(nodes, IDLE, dtype=np.int64)
    decided = np.zeros(nodes, dtype=bool)
    for preference in preferences:
        code = np.broadcast_to(np.asarray(preference, dtype=np.int64), nodes)
        ok = ~decided & allows(mask, code)
        action = np.where(ok, code, action)
        decided |= ok
    return action


def allows(mask: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Whether ``mask`` (..., K) allows each node's ``action`` (...)."""
    return np.take_along_axis(mask, action[..., None], axis=-1)[..., 0]


def held_to_mask(mask: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``action`` with the mask as a hard constraint: what a node cannot afford becomes idle."""
    action = np.asarray(action, dtype=np.int64)
    return np.where(allows(mask, action), action, IDLE)


class HeuristicScheduler:
    """Base class of the hand-written schedulers: batching, episode bookkeeping, mask handling.

    Subclasses implement ``act(observation, mask) -> (N,) action codes`` for one unbatched
    observation, and may override ``reset_episode()`` to clear what they remember. Randomised
    heuristics draw from ``self.rng``, a numpy ``Generator`` seeded from ``seed`` and the episode
    counter, so a run is reproducible given the seed alone.
    """

    name: ClassVar[str] = "heuristic"
    observation_kind: ObservationKind = "dict"
    # True when ``act`` is a function of the current observation alone (no rng, no memory): such a rule
    # can serve as the prior of a residual learned policy (``greengossip.agents.policies``, ``prior``)
    memoryless: ClassVar[bool] = False
    # True when ``act`` also takes a batch (observation arrays and mask with a leading (B,) axis) and
    # returns (B, N) actions: ``act_batch`` then calls it once rather than once per observation, which a
    # residual policy does for every minibatch of every PPO epoch
    batched_act: ClassVar[bool] = False

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._episode = -1
        self.rng = np.random.default_rng(self.seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"

    # ------------------------------------------------------------------ interface
    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | bool | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """SB3-style: an unbatched ``Dict`` observation gives an (N,) action, a batched one (B, N)."""
        if not isinstance(observation, dict) or "nodes" not in observation:
            raise TypeError(
                f"{type(self).__name__} reads the Dict observation (keys nodes, global, action_mask); got "
                f"{type(observation).__name__}. Do not wrap the env with FlattenGossipObservation for "
                "heuristics."
            )
        nodes = np.asarray(observation["nodes"])
        if nodes.ndim == 3:  # a vectorised env: one heuristic state would mix episodes, so only B = 1
            if nodes.shape[0] != 1:
                raise ValueError(f"{type(self).__name__} keeps per-episode memory and runs one env at a "
                                 f"time; got a batch of {nodes.shape[0]} observations")
            single = {key: np.asarray(value)[0] for key, value in observation.items()}
            action, state = self.predict(single, state, episode_start, deterministic)
            return action[None], state
        if self._episode < 0 or np.any(episode_start) or global_feature(observation, "progress") == 0.0:
            self._start_episode()
        mask = np.asarray(observation["action_mask"]) > 0.5
        action = held_to_mask(mask, self.act(observation, mask))
        self.round_index += 1
        return action, state

    def act(self, observation: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def act_batch(self, observations: dict[str, np.ndarray]) -> np.ndarray:
        """(B, N) actions of a memoryless rule for a batch of unbatched-shape observations, masked as in
        ``predict``; no episode bookkeeping (used as a residual policy's prior during PPO updates)."""
        if not self.memoryless:
            raise TypeError(f"{self.name} remembers earlier rounds or draws random numbers; only a memoryless "
                            "rule has one action per observation")
        masks = np.asarray(observations["action_mask"]) > 0.5
        if self.batched_act:
            actions = np.asarray(self.act({key: np.asarray(value) for key, value in observations.items()}, masks),
                                 dtype=np.int64)
        else:
            actions = np.stack([
                np.asarray(self.act({key: np.asarray(value)[row] for key, value in observations.items()},
                                    masks[row]), dtype=np.int64)
                for row in range(len(masks))])
        return held_to_mask(masks, actions)

    # ------------------------------------------------------------------ episode bookkeeping
    def _start_episode(self) -> None:
        self._episode += 1
        self.rng = np.random.default_rng([self.seed, self._episode])
        self.round_index = 0  # decisions taken so far in this episode
        self.reset_episode()

    def reset_episode(self) -> None:
        """Forget what was remembered about the previous episode."""
