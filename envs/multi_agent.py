"""PettingZoo ``ParallelEnv`` view of the GreenGossip simulator: one agent per node, no central scheduler.

``parallel_env(config="configs/tiny.yaml")`` (PettingZoo's naming) or
``EdgeLearningParallelEnv(config=..., local_reward_weight=0.1)``; ``env(...)`` is the AEC version.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics.energy import ACTION_NAMES, N_ACTIONS
from greengossip.envs.gossip_env import RESET_OPTIONS, EdgeLearningEnv
from greengossip.envs.observation import GLOBAL_FEATURES, NODE_FEATURES
from greengossip.envs.reward import reward_scales

# Global features a node knows without asking anyone: its own clock and the round counter. Accuracy,
# consensus distance and the fleet's drop-out / awake shares are fleet-wide and stay out of its view.
LOCAL_GLOBAL_FEATURES = ("hour_sin", "hour_cos", "progress")
_GLOBAL_INDEX = [[name for name, *_ in GLOBAL_FEATURES].index(name) for name in LOCAL_GLOBAL_FEATURES]
_GLOBAL_BOUNDS = {name: (low, high, meaning) for name, low, high, meaning in GLOBAL_FEATURES}

# name, low, high, meaning: the per-agent observation vector, in order.
LOCAL_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    *((f"own_{name}", low, high, f"own {meaning}") for name, low, high, meaning in NODE_FEATURES),
    *(
        (f"neighbour_mean_{name}", low, high, f"mean over the neighbours of: {meaning}")
        for name, low, high, meaning in NODE_FEATURES
    ),
    *(
        (f"neighbour_max_{name}", low, high, f"max over the neighbours of: {meaning}")
        for name, low, high, meaning in NODE_FEATURES
    ),
    *((name, *_GLOBAL_BOUNDS[name]) for name in LOCAL_GLOBAL_FEATURES),
    *((f"mask_{name}", 0.0, 1.0, f"1 if the node can afford '{name}' this round") for name in ACTION_NAMES),
)
LOCAL_FEATURE_NAMES = tuple(name for name, *_ in LOCAL_FEATURES)
LOCAL_OBS_DIM = len(LOCAL_FEATURES)


def local_observation_space() -> spaces.Box:
    """The per-agent ``Box``; the same for every fleet size, so one shared policy fits any ``N``."""
    return spaces.Box(
        np.array([f[1] for f in LOCAL_FEATURES], dtype=np.float32),
        np.array([f[2] for f in LOCAL_FEATURES], dtype=np.float32),
        dtype=np.float32,
    )


def neighbour_table_from_adjacency(adjacency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``(N, D_max)`` table of whom each node hears (row ``i`` of ``adjacency``) and the slots in use,
    in the layout of ``Scenario.neighbours`` / ``Scenario.neighbour_valid``."""
    heard = np.asarray(adjacency) > 0.5
    n = heard.shape[0]
    width = max(int(heard.sum(1).max(initial=0)), 1)
    order = np.argsort(~heard, axis=1, kind="stable")[:, :width]  # heard senders first, ascending
    valid = np.take_along_axis(heard, order, axis=1)
    table = np.where(valid, order, np.arange(n)[:, None])
    return table, valid


def local_observations(
    observation: dict[str, np.ndarray], neighbours: np.ndarray, neighbour_valid: np.ndarray
) -> np.ndarray:
    """``(N, LOCAL_OBS_DIM)`` float32: what each node knows, built from the centralized ``Dict`` observation.

    Own node features, the mean and max of the neighbours' features (what they gossip with their models),
    the local clock (``LOCAL_GLOBAL_FEATURES``) and the node's own action mask. ``neighbours`` /
    ``neighbour_valid`` are the padded ``(N, D_max)`` tables of ``Scenario`` (or of
    :func:`neighbour_table_from_adjacency`). A node without neighbours sees zeros for them.
    """
    nodes = np.asarray(observation["nodes"], dtype=np.float32)  # (N, F)
    valid = np.asarray(neighbour_valid, dtype=bool)[..., None]  # (N, D, 1)
    gathered = nodes[np.asarray(neighbours)]  # (N, D, F)
    count = valid.sum(1)  # (N, 1)
    mean = np.where(valid, gathered, 0.0).sum(1) / np.maximum(count, 1)
    peak = np.where(valid, gathered, -np.inf).max(1)
    peak = np.where(count > 0, peak, 0.0)
    clock = np.asarray(observation["global"], dtype=np.float32)[_GLOBAL_INDEX]
    clock = np.broadcast_to(clock, (nodes.shape[0], clock.shape[0]))
    mask = np.asarray(observation["action_mask"], dtype=np.float32)
    return np.concatenate([nodes, mean, peak, clock, mask], axis=1).astype(np.float32)


class EdgeLearningParallelEnv(ParallelEnv):
    """
    ## Description
    The simulator of ``GreenGossip/EdgeLearning-v3`` (same scenarios, same dynamics, same seeds) seen
    from the nodes: every node is an agent named ``node_<i>`` that decides for itself, from what it and
    its neighbours know, whether to sleep, train, or train and broadcast at a compression level. There
    is no central scheduler. Agents are homogeneous (identical spaces), so one shared policy (parameter
    sharing, e.g. SuperSuit + SB3 in ``training/multi_agent.py``) serves a fleet of any size.

    ## Action Space
    ``Discrete(6)`` per agent, the codes of the single-agent env: 0 idle, 1 train, 2 train + send fp32,
    3 train + send 8-bit, 4 train + send top-10 %, 5 train + send top-1 %. An action the node cannot
    afford is replaced by idle and counted in ``info["dropped_nodes"]``; ``infos[agent]["action_mask"]``
    (int8, PettingZoo's convention) and the last 6 observation entries say which are affordable.

    ## Observation Space
    ``Box(LOCAL_OBS_DIM,)`` float32 per agent (``LOCAL_FEATURES`` names every entry with range and meaning):

    | entries | content |
    |---|---|
    | 0-16 | the node's own features (``greengossip.envs.observation.NODE_FEATURES``: battery, harvest, carbon, ...) |
    | 17-33 | mean of the same features over the node's neighbours (what they gossip) |
    | 34-50 | max over the neighbours |
    | 51-53 | hour_sin, hour_cos, progress (the node's clock) |
    | 54-59 | own action mask (1 = affordable) |

    Telemetry is what the nodes publish (DP noise and lying attackers included), exactly as the
    centralized scheduler sees it; fleet-wide figures (accuracy, consensus distance) are not observed.
    ``state()`` gives the centralized view (the flattened ``Dict`` observation) for centralized critics.

    ## Rewards
    Shared team reward: the single-agent env's reward (``envs/reward.py``) for every agent. With
    ``local_reward_weight = w > 0`` each agent gets ``team + w * local_i`` where

        local_i = -carbon_w * carbon_g_i / (carbon_scale / N)
                  - energy_w * energy_wh_i / (energy_scale / N) - dropped_i

    i.e. the team's carbon and energy terms charged to the node that caused them (their mean over nodes
    equals the team terms) plus -1 when the node chose an action it could not afford.
    ``infos[agent]`` carries ``team_reward``, ``local_reward`` and every KPI of the single-agent info.

    ## Starting State, Episode End
    As ``EdgeLearningEnv``: all agents terminate together when the honest nodes' mean accuracy reaches
    the target, and are truncated together at ``max_rounds``; ``agents`` is then empty until ``reset``.

    ## Arguments
    ``config``: a shipped config's name, a YAML path, a dict or an ``EnvConfig`` (None = default scenario);
    ``render_mode``: ``"human"`` (prints the round's one-line summary), ``"ansi"`` (returns it) or
    ``"rgb_array"`` (the network drawn); ``local_reward_weight``: weight ``w`` of the local component
    (default 0: pure team reward).

    ## Version History
    * v1: the simulator of ``GreenGossip/EdgeLearning-v3`` (under private telemetry the columns and reports
      follow what each node was asked).
    * v0: initial release (simulator of ``GreenGossip/EdgeLearning-v2``).

    ## Example
    >>> from greengossip.envs.multi_agent import parallel_env
    >>> env = parallel_env(config="tiny")
    >>> observations, infos = env.reset(seed=0)
    >>> actions = {agent: env.action_space(agent).sample(infos[agent]["action_mask"]) for agent in env.agents}
    >>> observations, rewards, terminations, truncations, infos = env.step(actions)
    """

    metadata = {
        "name": "greengossip_edge_learning_v1",
        "render_modes": ["human", "rgb_array", "ansi"],
        "render_fps": 4,
        "is_parallelizable": True,
    }

    def __init__(
        self,
        config: str | dict | EnvConfig | None = None,
        render_mode: str | None = None,
        local_reward_weight: float = 0.0,
    ):
        if not np.isfinite(local_reward_weight) or local_reward_weight < 0:
            raise ValueError(
                f"local_reward_weight must be a finite number >= 0 (0 = pure team reward), "
                f"got {local_reward_weight!r}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; allowed: "
                             f"{self.metadata['render_modes']} or None")
        # "human" prints what "ansi" returns: a text line per round needs no display
        self._env = EdgeLearningEnv(config=config, render_mode="ansi" if render_mode == "human" else render_mode)
        self.config = self._env.config
        self.render_mode = render_mode
        self.local_reward_weight = float(local_reward_weight)
        self.possible_agents = [f"node_{i}" for i in range(self.config.n_nodes)]
        self.agents: list[str] = []
        # One space object per agent, built once: PettingZoo's seed test seeds each agent's space.
        self._observation_spaces = {agent: local_observation_space() for agent in self.possible_agents}
        self._action_spaces = {agent: spaces.Discrete(N_ACTIONS) for agent in self.possible_agents}
        self.state_space = spaces.flatten_space(self._env.observation_space)
        self._dict_observation: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ spaces
    def observation_space(self, agent: str) -> spaces.Box:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._action_spaces[agent]

    # ------------------------------------------------------------------ PettingZoo API
    def reset(self, seed: int | None = None, options: dict | None = None):
        observation, info = self._env.reset(seed=seed, options=_known_options(options))
        scenario = self._env.scenario
        self._neighbours = scenario.neighbours.cpu().numpy()
        self._neighbour_valid = scenario.neighbour_valid.cpu().numpy()
        self.agents = list(self.possible_agents)
        self._dict_observation = observation
        local = np.zeros(self.config.n_nodes, dtype=np.float64)
        return self._split(observation), self._infos(info, 0.0, local)

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("no live agents: call reset() first (the episode ended or never started)")
        missing = [agent for agent in self.agents if agent not in actions]
        if missing:
            raise ValueError(
                f"actions is missing {len(missing)} live agent(s), e.g. {missing[:3]}; every node "
                f"decides every round: give each of {self.agents[:2]}... a code in 0..{N_ACTIONS - 1} "
                "(0 = idle)"
            )
        joint = np.array([actions[agent] for agent in self.possible_agents]).reshape(-1)
        observation, team, terminated, truncated, info = self._env.step(joint)
        self._dict_observation = observation
        local = self._local_rewards()
        rewards = {
            agent: float(team + self.local_reward_weight * local[i]) for i, agent in enumerate(self.agents)
        }
        observations = self._split(observation)
        infos = self._infos(info, float(team), local)
        terminations = dict.fromkeys(self.agents, bool(terminated))
        truncations = dict.fromkeys(self.agents, bool(truncated))
        if terminated or truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The centralized view (flattened ``Dict`` observation of the single-agent env), for critics."""
        if self._dict_observation is None:
            raise RuntimeError("call reset() before state()")
        return spaces.flatten(self._env.observation_space, self._dict_observation).astype(np.float32)

    def render(self):
        frame = self._env.render()
        if self.render_mode != "human":
            return frame
        if frame is not None:
            print(frame)
        return None

    def close(self) -> None:
        self._env.close()

    # ------------------------------------------------------------------ helpers
    @property
    def unwrapped_env(self) -> EdgeLearningEnv:
        """The single-agent env underneath (scenario, sim_state, action_masks())."""
        return self._env

    @property
    def central_observation(self) -> dict[str, np.ndarray] | None:
        """The single-agent env's last ``Dict`` observation, from which every agent's view is cut."""
        return self._dict_observation

    def _split(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = local_observations(observation, self._neighbours, self._neighbour_valid)
        return {agent: rows[i] for i, agent in enumerate(self.possible_agents)}

    def _infos(self, info: dict[str, Any], team: float, local: np.ndarray) -> dict[str, dict[str, Any]]:
        masks = self._env.action_masks().astype(np.int8)
        return {
            agent: {**info, "action_mask": masks[i], "team_reward": team, "local_reward": float(local[i])}
            for i, agent in enumerate(self.possible_agents)
        }

    def _local_rewards(self) -> np.ndarray:
        """(N,) local component of each node for the round just played (see the class docstring)."""
        if self.local_reward_weight == 0.0:
            return np.zeros(self.config.n_nodes, dtype=np.float64)
        outcome = _last_outcome(self._env)
        scenario, weights, n = self._env.scenario, self.config.reward, self.config.n_nodes
        # one env underneath: reward_scales gives a float or a (1,) array, depending on the simulator version
        energy_scale, carbon_scale = (
            float(np.asarray(scale).reshape(-1)[0]) for scale in reward_scales(scenario)
        )
        carbon = outcome.carbon_g.double().cpu().numpy() / (carbon_scale / n)
        energy = outcome.energy.consumed.double().cpu().numpy() / (energy_scale / n)
        dropped = outcome.dropped.double().cpu().numpy()
        return -(weights.carbon * carbon + weights.energy * energy) - dropped


def _last_outcome(core: EdgeLearningEnv):
    """The ``RoundOutcome`` of the round just played: its per-node energy, carbon and drop-outs appear
    nowhere else (``info`` has fleet totals only)."""
    outcome = core.last_outcome
    if outcome is None:
        raise RuntimeError("no round has been played since reset; step the env before asking for local rewards")
    return outcome


def parallel_env(**kwargs) -> EdgeLearningParallelEnv:
    """PettingZoo-style constructor of the parallel env (keyword arguments of ``EdgeLearningParallelEnv``)."""
    return EdgeLearningParallelEnv(**kwargs)


def env(**kwargs):
    """The AEC (turn-based) version, through PettingZoo's ``parallel_to_aec``."""
    return parallel_to_aec(parallel_env(**kwargs))


def _known_options(options: dict | None) -> dict | None:
    """The reset options the Gymnasium env understands. PettingZoo's API tests reset with
    ``options={"options": 1}`` and require it to pass, so here an unknown key is a warning (never silent)
    where the Gymnasium env raises."""
    if not options:
        return options
    unknown = [key for key in options if key not in RESET_OPTIONS]
    if unknown:
        warnings.warn(f"reset(options=...): ignoring unknown key(s) {unknown!r}; allowed: {list(RESET_OPTIONS)}",
                      stacklevel=3)
    return {key: value for key, value in options.items() if key in RESET_OPTIONS}
