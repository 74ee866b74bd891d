"""The scenario suite as the world of the shared per-node policy: training envs that draw a fresh train-split
scenario every episode, and model selection on validation-split scenarios.

Every training env has a fixed fleet size (SuperSuit turns an env of ``N`` nodes into ``N`` SB3 envs, and
that count cannot change between episodes) and a fixed family: env ``i`` runs family ``i mod k``, and the
``m`` envs of one family have fleet sizes spread evenly over its training range cut at
``suite.max_nodes``. Each episode a train seed (0..9,999) drawn from the env's own generator draws the
scenario (``training.suite.draw_scenario``: regions, season, year, fleet mix, battery, attacks, epsilon,
graph), whose ``n_nodes`` is replaced by the env's fleet size, and the env is reset with that seed. A node's
view has ``LOCAL_OBS_DIM`` numbers whatever ``N``, so SuperSuit's ``ConcatVecEnv`` stacks the per-node vector
envs of different sizes into one SB3 vector env that feeds one PPO.

The best model is the one with the highest mean validation score over ``suite.eval_seeds_per_family``
validation seeds (10,000..) per family: per scenario, the share of carbon-to-target saved against
``all_nodes`` on the same scenario, and :data:`MISSED` for a missed target (:func:`scenario_score`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv
from stable_baselines3.common.vec_env import VecMonitor
from supersuit.vector import ConcatVecEnv, MarkovVectorEnv

from greengossip.agents.decentralized import DecentralizedScheduler
from greengossip.agents.heuristics import build_heuristic
from greengossip.envs import ENV_ID
from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.multi_agent import EdgeLearningParallelEnv, local_observation_space
from greengossip.training.builders import SeededSB3VecEnvWrapper, monitored
from greengossip.training.callbacks import PeriodicEvalCallback
from greengossip.training.rollout import play_episode
from greengossip.training.run_files import append_csv_row, atomic_save, atomic_write_text
from greengossip.training.settings import SettingsError, SuiteSettings
from greengossip.training.suite import SPLITS, ScenarioDraw, draw_scenario, load_family, resized, split_seeds

BASELINE = "all_nodes"  # the validation score's zero: every node trains and sends every round
MISSED = -1.0  # the validation score of a missed target, and the lowest a scenario scores


def fleet_sizes(suite: SuiteSettings, n_envs: int) -> list[tuple[str, int]]:
    """(family, fleet size) of each training env: family ``i mod k``; a family's ``m`` envs spread over
    its training ``n_nodes`` range cut at ``suite.max_nodes`` (at the midpoints of ``m`` equal parts).
    SettingsError when there are fewer envs than families."""
    families = suite.family_names
    if n_envs < len(families):
        raise SettingsError(f"suite: {len(families)} families need n_envs >= {len(families)} for the shared "
                            f"per-node policy (training env i runs family i mod {len(families)}), got n_envs {n_envs}")
    envs: list[tuple[str, int]] = []
    for i in range(n_envs):
        family = families[i % len(families)]
        low, high = (min(end, suite.max_nodes) for end in load_family(family)[1].n_nodes.train)
        share = len(range(i % len(families), n_envs, len(families)))
        part = i // len(families)
        envs.append((family, int(round(low + (high - low) * (part + 0.5) / share))))
    return envs


class SuiteDrawParallelEnv(ParallelEnv):
    """The per-node env (``EdgeLearningParallelEnv``) of one family at a fixed fleet size, on a fresh
    train-split scenario every episode.

    ``reset(seed=s)`` seeds the generator that picks the train seeds (later resets without a seed go on
    with it); each reset draws a train seed, the family's scenario for it at ``n_nodes`` nodes, and resets
    the env with that seed. ``last_draw`` is the scenario being played."""

    metadata = {"name": "greengossip_suite_draw_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, family: str, n_nodes: int, local_reward_weight: float = 0.0):
        self.family, self.n_nodes, self.local_reward_weight = family, int(n_nodes), float(local_reward_weight)
        self._family, self._ranges = load_family(family)
        self.possible_agents = [f"node_{i}" for i in range(self.n_nodes)]
        self.agents: list[str] = []
        self.render_mode = None
        self._observation_space = local_observation_space()
        self._action_space = gym.spaces.Discrete(N_ACTIONS)
        self._rng = np.random.default_rng()
        self._env: EdgeLearningParallelEnv | None = None
        self.last_draw: ScenarioDraw | None = None

    def observation_space(self, agent: str) -> gym.spaces.Box:
        return self._observation_space

    def action_space(self, agent: str) -> gym.spaces.Discrete:
        return self._action_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        train = SPLITS["train"]
        draw_seed = int(self._rng.integers(train.start, train.stop))
        self.last_draw = draw_scenario(self._family, draw_seed, self._ranges)
        if self._env is not None:
            self._env.close()
        self._env = EdgeLearningParallelEnv(resized(self.last_draw.config, self.n_nodes),
                                            local_reward_weight=self.local_reward_weight)
        observations, infos = self._env.reset(seed=draw_seed, options=options)
        self.agents = list(self._env.agents)
        return observations, infos

    def step(self, actions: dict[str, Any]):
        if self._env is None:
            raise RuntimeError("call reset() before step()")
        result = self._env.step(actions)
        self.agents = list(self._env.agents)
        return result

    def close(self) -> None:
        if self._env is not None:
            self._env.close()


def make_suite_vec_env(suite: SuiteSettings, n_envs: int, local_reward_weight: float = 0.0, seed: int | None = None,
                       monitor_file: str | Path | None = None, append: bool = False):
    """One SB3 vector env over the ``n_envs`` training envs of :func:`fleet_sizes`: one SB3 env per node
    of each (SuperSuit's ``MarkovVectorEnv``), stacked with SuperSuit's ``ConcatVecEnv`` (which takes
    vector envs of different sizes); env ``i`` first resets with ``seed + i``."""
    envs = fleet_sizes(suite, n_envs)
    vec = ConcatVecEnv([
        (lambda family=family, n=n: MarkovVectorEnv(SuiteDrawParallelEnv(family, n, local_reward_weight)))
        for family, n in envs
    ])
    venv = SeededSB3VecEnvWrapper(vec)
    if seed is not None:
        venv.seed(seed)
    if monitor_file is None:
        return VecMonitor(venv)
    return monitored(venv, Path(monitor_file), append)


def validation_draws(suite: SuiteSettings) -> list[ScenarioDraw]:
    """The validation scenarios of model selection: the first ``eval_seeds_per_family`` validation seeds of
    each family, fleets above ``max_eval_nodes`` cut to it."""
    draws = []
    for family in suite.family_names:
        name, ranges = load_family(family)
        for seed in split_seeds("validation", suite.eval_seeds_per_family):
            draw = draw_scenario(name, seed, ranges)
            if draw.config.n_nodes > suite.max_eval_nodes:
                draw = ScenarioDraw(draw.family, draw.seed, draw.split, resized(draw.config, suite.max_eval_nodes),
                                    {**draw.parameters, "n_nodes": suite.max_eval_nodes})
            draws.append(draw)
    return draws


def scenario_score(carbon_to_target: float | None, baseline: float | None) -> float:
    """Share of ``baseline``'s (all_nodes') carbon-to-target saved, at least :data:`MISSED`; a missed target
    (None) scores :data:`MISSED`. Where the baseline misses or emits nothing there is no scale: reaching the
    target scores 0."""
    if carbon_to_target is None or not math.isfinite(carbon_to_target):
        return MISSED
    if baseline is None or not math.isfinite(baseline) or baseline <= 0:
        return 0.0
    return max(MISSED, (baseline - carbon_to_target) / baseline)


def _carbon_to_target(info: dict[str, Any]) -> float | None:
    return float(info["episode_carbon_g"]) if info["target_reached"] else None


class SuiteSharedPolicyEvalCallback(PeriodicEvalCallback):
    """Every ``eval_freq`` node decisions (SB3's count; and at the end): the shared policy as a fleet
    scheduler on each validation scenario (:func:`validation_draws`); logs ``eval/*`` and
    ``eval/<family>/score``, and keeps ``best_model.zip`` (+ ``.json``) in ``out`` by mean
    :func:`scenario_score`. ``all_nodes`` plays each scenario once first, for the score's scale. The logs
    count rounds: node decisions over ``decisions_per_round``."""

    def __init__(self, draws: Sequence[ScenarioDraw], eval_freq: int, decisions_per_round: float, out: Path,
                 on_log: Callable[[str], None] | None = None, skip_final: Callable[[], bool] = lambda: False):
        super().__init__(eval_freq, skip_final)
        self.draws, self.decisions_per_round = list(draws), decisions_per_round
        self.best_path, self.csv_path = out / "best_model.zip", out / "evaluations.csv"
        record = self.best_path.with_suffix(".json")
        best = json.loads(record.read_text()) if record.is_file() and self.best_path.is_file() else {}
        self.best_score, self.best_summary = float(best.get("score", -math.inf)), best
        self.on_log = on_log or (lambda message: None)
        self.baselines: list[float | None] | None = None

    def best_model_file(self) -> Path:
        return self.best_path

    def _play(self, make_policy: Callable[[gym.Env], Any]) -> list[dict[str, Any]]:
        infos = []
        for draw in self.draws:
            env = gym.make(ENV_ID, config=draw.config)
            try:
                infos.append(play_episode(make_policy(env), env, draw.seed))
            finally:
                env.close()
        return infos

    def evaluate(self) -> dict[str, float]:
        self._last_eval = self.num_timesteps
        if self.baselines is None:
            self.baselines = [_carbon_to_target(info) for info in self._play(lambda env: build_heuristic(BASELINE))]
        infos = self._play(lambda env: DecentralizedScheduler(self.model, env=env))
        scores = [scenario_score(_carbon_to_target(info), base) for info, base in zip(infos, self.baselines)]
        summary = {
            "score": float(np.mean(scores)),
            "target_reached": float(np.mean([info["target_reached"] for info in infos])),
            "carbon_g": float(np.mean([info["episode_carbon_g"] for info in infos])),
            "return": float(np.mean([info["return"] for info in infos])),
        }
        for family in dict.fromkeys(draw.family for draw in self.draws):
            summary[f"{family}/score"] = float(np.mean(
                [score for draw, score in zip(self.draws, scores) if draw.family == family]))
        for key, value in summary.items():
            self.logger.record(f"eval/{key}", value)
        rounds = int(self.num_timesteps / self.decisions_per_round)
        improved = summary["score"] > self.best_score
        if improved:
            self.best_score, self.best_summary = summary["score"], summary
            atomic_save(self.model, self.best_path)
            atomic_write_text(self.best_path.with_suffix(".json"),
                              json.dumps({"trained_rounds": rounds, **summary}, indent=2))
        append_csv_row(self.csv_path, {"trained_rounds": rounds, **summary, "best": improved})
        self.on_log(f"eval @ {rounds} rounds: score {summary['score']:.3f} (carbon saved against "
                    f"{BASELINE}), target reached {summary['target_reached']:.0%}"
                    + ("  (new best)" if improved else ""))
        return summary
