"""A shared per-node policy, trained with ``greengossip train --multi-agent``, as a fleet scheduler.

:func:`load_decentralized_scheduler` wraps the trained policy with the one scheduler interface
``predict(observation, state, episode_start, deterministic) -> (action, state)``: it takes the centralized
``Dict`` observation, rebuilds each node's local view from it and the graph, and lets every node pick its
own action (masked to what it can afford). Specs of the form ``decentralized:<path>`` name one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.save_util import load_from_zip_file

from greengossip.envs.config import load_config
from greengossip.envs.multi_agent import (
    LOCAL_OBS_DIM,
    local_observation_space,
    local_observations,
    neighbour_table_from_adjacency,
)

DECENTRALIZED_PREFIX = "decentralized:"


class DecentralizedScheduler:
    """A shared per-node policy (trained on ``EdgeLearningParallelEnv``) as a fleet scheduler.

    ``predict`` takes the single-agent env's ``Dict`` observation, as every scheduler of the harness does,
    builds each node's local view with ``greengossip.envs.multi_agent.local_observations`` (the same function the
    multi-agent env uses, so training and evaluation see the same numbers) and lets each node choose from
    its own view only; infeasible actions are masked out of each node's choice. The graph comes from the
    observation's ``adjacency`` when present, else from ``env.unwrapped.scenario`` (pass ``env``).
    """

    observation_kind = "dict"

    def __init__(self, model: Any, env: Any = None, seed: int = 0, path: str | Path | None = None):
        self.model = model
        self.env = env
        self.seed = int(seed)
        self.path = None if path is None else Path(path)
        self.rng = np.random.default_rng(self.seed)

    def __repr__(self) -> str:
        return f"DecentralizedScheduler({self.path})"

    @property
    def name(self) -> str:
        return f"decentralized-{self.path.stem}" if self.path is not None else "decentralized"

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        if not isinstance(observation, dict) or "nodes" not in observation:
            raise TypeError(
                "a decentralized scheduler reads the Dict observation (keys nodes, global, action_mask), "
                f"got {type(observation).__name__}; do not wrap the env with FlattenGossipObservation"
            )
        nodes = np.asarray(observation["nodes"])
        if nodes.ndim == 3:  # batched (SB3's evaluate_policy): one graph per row
            if "adjacency" not in observation and nodes.shape[0] != 1:
                raise ValueError(
                    "a batch of observations without 'adjacency' has no graph per row; "
                    "enable observation.adjacency in the config or predict one env at a time"
                )
            actions = [
                self.predict(
                    {key: np.asarray(value)[b] for key, value in observation.items()},
                    None,
                    None,
                    deterministic,
                )[0]
                for b in range(nodes.shape[0])
            ]
            return np.stack(actions), state
        return self._act(observation, deterministic), state

    def _graph(self, observation: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        scenario = None if self.env is None else getattr(self.env.unwrapped, "scenario", None)
        if scenario is not None and scenario.n_nodes == np.asarray(observation["nodes"]).shape[0]:
            return scenario.neighbours.cpu().numpy(), scenario.neighbour_valid.cpu().numpy()
        if "adjacency" in observation:
            return neighbour_table_from_adjacency(observation["adjacency"])
        raise ValueError(
            "a decentralized scheduler needs the communication graph: pass env= (the env it acts in) "
            "or set observation.adjacency: true in the env config"
        )

    def _act(self, observation: dict[str, np.ndarray], deterministic: bool) -> np.ndarray:
        local = local_observations(observation, *self._graph(observation))
        policy = self.model.policy
        obs_tensor, _ = policy.obs_to_tensor(local)
        with torch.no_grad():
            logits = policy.get_distribution(obs_tensor).distribution.logits.cpu().numpy().astype(np.float64)
        mask = np.asarray(observation["action_mask"]) > 0.5
        logits = np.where(mask, logits, -np.inf)  # idle is always affordable, so every row keeps a choice
        if not deterministic:
            logits = logits + self.rng.gumbel(size=logits.shape)  # Gumbel-max: a sample of softmax(logits)
        return logits.argmax(axis=1).astype(np.int64)


def is_decentralized_model(path: str | Path) -> bool:
    """True when ``path`` is an SB3 zip whose policy reads one node's local view (``LOCAL_OBS_DIM``)."""
    try:
        data, _params, _variables = load_from_zip_file(
            path, device="cpu", load_data=True, print_system_info=False
        )
    except Exception:  # noqa: BLE001 - not a readable SB3 zip
        return False
    space = (data or {}).get("observation_space")
    return space is not None and space == local_observation_space()


def load_decentralized_scheduler(
    path: str | Path, config=None, env=None, seed: int = 0
) -> DecentralizedScheduler:
    """A trained shared per-node PPO policy (``model.zip`` of ``greengossip train --multi-agent``) as a scheduler.

    ``path`` may omit ``.zip`` and may carry the ``decentralized:`` prefix. ``env``: the (single-agent)
    env the scheduler will act in, which gives it the graph; without one the observation must include
    ``adjacency``. ``config`` (optional path / dict / EnvConfig) is checked for that up front.
    """
    text = str(path)
    text = text[len(DECENTRALIZED_PREFIX) :] if text.startswith(DECENTRALIZED_PREFIX) else text
    file = Path(text)
    if not file.is_file() and Path(text + ".zip").is_file():
        file = Path(text + ".zip")
    if not file.is_file():
        raise ValueError(
            f"decentralized scheduler {path!r}: no saved model at {file} (train one with "
            "'greengossip train --multi-agent', which writes OUT/model.zip)"
        )
    model = PPO.load(file, device="cpu")
    if model.observation_space != local_observation_space():
        raise ValueError(
            f"{file} is not a shared per-node policy: it reads {model.observation_space}, but a node's local "
            f"view is Box({LOCAL_OBS_DIM},) (envs.multi_agent.LOCAL_FEATURES). Load centralized models with "
            "greengossip.agents.make_scheduler(path) instead"
        )
    if config is not None and env is None:
        if not load_config(config).observation.adjacency:
            raise ValueError(
                "this config has observation.adjacency: false, so the observation carries no graph; "
                "pass env= to load_decentralized_scheduler so the scheduler can read the scenario's"
            )
    model.set_random_seed(seed)
    return DecentralizedScheduler(model, env=env, seed=seed, path=file)
