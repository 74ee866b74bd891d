"""What a training run is made of: its envs, its algorithm and its callbacks, built from ``TrainSettings``.

``train.py`` (one scheduler for the whole fleet) and ``multi_agent.py`` (one policy shared by every node)
both build from here, so neither imports the other.

Training envs: the ``n_envs`` environments are one batched tensor program in the learner's process
(``GossipVecEnv``); environment ``i`` runs scenario ``i mod k`` of a training mix. The multi-agent trainer
turns one env of ``N`` nodes into ``N`` SB3 envs with SuperSuit.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import supersuit as ss
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat, make_output_format
from stable_baselines3.common.monitor import ResultsWriter
from stable_baselines3.common.vec_env import VecMonitor
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper
from torch import nn

from greengossip.agents.policies import algorithm_class, policy_class
from greengossip.envs import ENV_ID
from greengossip.envs.config import load_config
from greengossip.envs.multi_agent import EdgeLearningParallelEnv
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.training.callbacks import (
    AtomicCheckpointCallback,
    EnvKpiCallback,
    SettingsTextCallback,
    StepsPerSecondCallback,
    StopOnInterrupt,
    TrainingEmissionsCallback,
    WallClockLimitCallback,
)
from greengossip.training.run_files import AppendingCSVOutputFormat
from greengossip.training.settings import SettingsError, TrainSettings


# ---------------------------------------------------------------------------------------------- logging
def setup_logging(out: Path, logger: logging.Logger) -> None:
    """Send ``logger`` to OUT/train.log (appended, so a resumed run keeps the earlier lines) and stdout,
    replacing handlers of an earlier run in this process."""
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(out / "train.log", mode="a"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False


def sb3_logger(folder: Path) -> Logger:
    """SB3's logger writing ``progress.csv`` (appended to on a resume), TensorBoard events and ``log.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    formats = [AppendingCSVOutputFormat(folder / "progress.csv"), TensorBoardOutputFormat(str(folder)),
               make_output_format("log", str(folder))]
    return Logger(str(folder), formats)


# ---------------------------------------------------------------------------------------------- envs
def make_env(config) -> gym.Env:
    """One plain env (validation of recurrent policies, the multi-agent validation)."""
    return gym.make(ENV_ID, config=config)


def make_eval_env(config, settings: TrainSettings):
    """The validation env, reset once: one batched program over all validation seeds for feed-forward
    policies (``rollout.play_vec_episodes``: the same results, about twice as fast as episode after
    episode for 10 seeds of the default scenario, where the longest episode sets the time), a plain env
    for recurrent ones, whose state would need carrying per episode."""
    if settings.algo == "recurrent_ppo":
        env = make_env(config)
        env.reset(seed=settings.validation_seeds[0])
        return env
    env = GossipVecEnv(len(settings.validation_seeds), config=config)
    env.seed(settings.validation_seeds[0])
    env.reset()
    return env


def monitored(venv, monitor_file: Path, append: bool) -> VecMonitor:
    """``venv`` under SB3's VecMonitor writing ``monitor_file``; with ``append`` (a resumed run) the rows
    go on after the earlier run's, and the ``t`` column keeps counting from that run's start."""
    first_line = monitor_file.read_text().partition("\n")[0] if append and monitor_file.is_file() else ""
    if not first_line.startswith("#"):  # nothing to go on after
        return VecMonitor(venv, filename=str(monitor_file))
    monitor = VecMonitor(venv)
    header = json.loads(first_line[1:])
    monitor.t_start = float(header.get("t_start", monitor.t_start))
    monitor.results_writer = ResultsWriter(str(monitor_file), header=header, override_existing=False)
    return monitor


def make_vec_env(configs: list, settings: TrainSettings, monitor_file: Path, append: bool = False) -> VecMonitor:
    """The training envs: ``settings.n_envs`` environments stepped as one batched program, environment i
    running scenario ``configs[i % len(configs)]``."""
    return monitored(GossipVecEnv(settings.n_envs, config=configs), monitor_file, append)


class SeededSB3VecEnvWrapper(SB3VecEnvWrapper):
    """SuperSuit's SB3 wrapper, with the seeding SB3 >= 2 expects (``VecEnv.seed`` then ``reset()``).

    SuperSuit 3.11's wrapper forwards ``seed`` to its gymnasium ``ConcatVecEnv``, which has none, so
    ``PPO(..., seed=s)`` fails with AttributeError; here the seed is kept and handed to the next reset,
    where ConcatVecEnv gives copy ``i`` the seed ``s + i``."""

    _pending_seed: int | None = None

    def seed(self, seed: int | None = None):
        self._pending_seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def reset(self, seed: int | None = None, options: dict | None = None):
        seed = self._pending_seed if seed is None else seed
        self._pending_seed = None
        observations, self.reset_infos = self.venv.reset(seed=seed, options=options)
        return observations

    def get_attr(self, attr_name: str, indices=None):
        if attr_name == "render_mode":  # one value per SB3 env, not SuperSuit's nested list
            return [self.render_mode] * self.num_envs
        return super().get_attr(attr_name, indices)


def _close_at_exit(reference: weakref.ref) -> None:
    venv = reference()
    if venv is not None:
        try:
            venv.close()
        except Exception:  # noqa: BLE001 - at exit the workers may be gone already; nothing is left to free
            pass


def make_multi_agent_vec_env(config, n_envs: int = 1, local_reward_weight: float = 0.0, num_cpus: int = 0,
                             seed: int | None = None, monitor_file: str | Path | None = None,
                             append: bool = False) -> VecMonitor:
    """SB3 ``VecEnv`` of ``n_envs`` parallel envs x ``N`` nodes (one SB3 env per node), for parameter sharing.

    ``num_cpus`` > 1 runs the copies in SuperSuit's worker processes; 0 keeps them in this process. The
    workers are closed at interpreter exit, so a script that never calls ``close()`` still ends:
    SuperSuit's workers are not daemons, and multiprocessing's own exit handler would wait for them
    forever. Exit handlers run last-registered first, so this one runs before multiprocessing's.
    ``seed``: copy ``i`` resets with ``seed + i`` on the first reset.
    """
    parallel = EdgeLearningParallelEnv(config=config, local_reward_weight=local_reward_weight)
    vec = ss.pettingzoo_env_to_vec_env_v1(parallel)
    vec = ss.concat_vec_envs_v1(vec, n_envs, num_cpus=num_cpus, base_class="gymnasium")
    venv = SeededSB3VecEnvWrapper(vec)
    if num_cpus > 1:
        atexit.register(_close_at_exit, weakref.ref(vec))
    if seed is not None:
        venv.seed(seed)
    if monitor_file is None:
        return VecMonitor(venv)
    return monitored(venv, Path(monitor_file), append)


def training_scenarios(env_config, settings: TrainSettings) -> list:
    """``env_config`` and the ``also_train_on`` scenarios (with ``settings.reward`` where set), checked to
    fit one policy's spaces."""
    if settings.n_envs < 1 + len(settings.also_train_on):
        raise SettingsError(f"also_train_on: {1 + len(settings.also_train_on)} scenarios need n_envs >= "
                            f"{1 + len(settings.also_train_on)}, got {settings.n_envs}")
    scenarios = [env_config]
    for path in settings.also_train_on:
        extra = load_config(path)
        if (extra.n_nodes, extra.observation) != (env_config.n_nodes, env_config.observation):
            raise SettingsError(
                f"also_train_on: {path} has n_nodes {extra.n_nodes} and observation {extra.observation}, "
                f"but the training config has n_nodes {env_config.n_nodes} and observation "
                f"{env_config.observation}; the training envs must share observation and action spaces"
            )
        scenarios.append(extra)
    if settings.reward is None:
        return scenarios
    # the same worlds, trained for the settings' objective
    return [scenario.model_copy(update={"reward": settings.reward}) for scenario in scenarios]


def scenario_name(config) -> str:
    """What the logs call a scenario: its file's stem, or "config" for one given as a dict or EnvConfig."""
    return Path(config).stem if isinstance(config, (str, Path)) else "config"


def validation_scenarios(config, settings: TrainSettings, scenarios: list) -> dict[str, Any]:
    """Each distinct training scenario once, by name, ``config`` first (``select_on: training_mix``).

    A file listed more than once in ``also_train_on`` runs in more of the training envs, a larger share of
    the samples, but the best model is still picked with every scenario weighing the same."""
    paths = [config, *settings.also_train_on]
    keys = [str(Path(path).resolve()) if isinstance(path, (str, Path)) else f"<config {i}>"
            for i, path in enumerate(paths)]
    names = [scenario_name(path) for path in paths]
    if len(set(names)) < len(set(keys)):  # two files of one name in two folders
        names = [str(path) for path in paths]
    chosen: dict[str, Any] = {}
    seen: set[str] = set()
    for key, name, scenario in zip(keys, names, scenarios):
        if key not in seen:
            seen.add(key)
            chosen[name] = scenario
    return chosen


# ---------------------------------------------------------------------------------------------- algorithm
@dataclass(frozen=True)
class DelayedLinearSchedule:
    """SB3 schedule (progress_remaining 1 -> 0): ``start`` for the first ``hold`` share of the steps, then a
    straight line to ``end`` at the last step. A plain class, so that the saved model can pickle it."""

    start: float
    end: float
    hold: float

    def __call__(self, progress_remaining: float) -> float:
        done = 1.0 - progress_remaining
        if done <= self.hold:
            return self.start
        return self.start + (self.end - self.start) * min(1.0, (done - self.hold) / (1.0 - self.hold))


def algorithm_kwargs(settings: TrainSettings) -> dict[str, Any]:
    kwargs = settings.hyperparameters.model_dump()
    kwargs.pop("lstm_hidden_size", None)
    kwargs.pop("enable_critic_lstm", None)
    kwargs.pop("ratio", None)  # picks the class (new_model), not an argument of it
    final = kwargs.pop("learning_rate_final", None)
    hold = kwargs.pop("learning_rate_decay_start", 0.0)
    if final is not None:
        kwargs["learning_rate"] = DelayedLinearSchedule(kwargs["learning_rate"], final, hold)
    return kwargs


def activation_class(settings: TrainSettings) -> type[nn.Module]:
    return {"relu": nn.ReLU, "tanh": nn.Tanh}[settings.policy.activation]


def policy_kwargs(settings: TrainSettings) -> dict[str, Any]:
    """Keyword arguments of the node-set policy (``agents/policies.py``)."""
    policy = settings.policy
    activation = activation_class(settings)
    kwargs: dict[str, Any] = dict(
        net_arch=dict(pi=list(policy.pi), vf=list(policy.vf)),
        activation_fn=activation,
        ortho_init=policy.ortho_init,
        mask_logits=policy.mask_logits,
        prior=policy.prior,
        prior_weight=policy.prior_weight,
        prior_regulariser=policy.prior_regulariser,
        allowed_actions=policy.allowed_actions,
        gate=policy.gate,
        features_extractor_kwargs=dict(
            hidden=policy.hidden,
            layers=policy.encoder_layers,
            message_passing=policy.message_passing,
            activation_fn=activation,
        ),
    )
    if settings.algo == "recurrent_ppo":
        kwargs["lstm_hidden_size"] = settings.recurrent_ppo.lstm_hidden_size
        kwargs["enable_critic_lstm"] = settings.recurrent_ppo.enable_critic_lstm
    if settings.algo == "a2c" and not settings.a2c.use_rms_prop:
        kwargs["optimizer_kwargs"] = {"eps": 1e-5}
    return kwargs


def new_model(settings: TrainSettings, venv):
    """A fresh model of ``settings.algo`` with the node-set policy."""
    return algorithm_class(settings.algo, settings.ratio)(
        policy_class(settings.algo),
        venv,
        seed=settings.seed,
        device=settings.device,
        verbose=0,
        policy_kwargs=policy_kwargs(settings),
        **algorithm_kwargs(settings),
    )


def torch_threads(settings: TrainSettings) -> None:
    torch.set_num_threads(settings.torch_threads)


# ---------------------------------------------------------------------------------------------- callbacks
def training_callbacks(settings: TrainSettings, out: Path, texts: dict[str, str], evaluation: BaseCallback,
                       interrupt: StopOnInterrupt, logger: logging.Logger):
    """The callbacks every training run has (stop on Ctrl-C, settings as text, env KPIs, steps/s,
    checkpoints, held-out evaluation, wall-clock limit, codecarbon), and the emissions callback if carbon
    is tracked."""
    callbacks = [
        interrupt,
        SettingsTextCallback({"settings/training": settings.markdown(), **texts}),
        EnvKpiCallback(),
        StepsPerSecondCallback(),
        AtomicCheckpointCallback(max(settings.checkpoint_freq // settings.n_envs, 1), out / "checkpoints"),
        evaluation,
    ]
    if settings.time_limit_minutes is not None:
        callbacks.append(WallClockLimitCallback(settings.time_limit_minutes, on_log=logger.info))
    emissions = None
    if settings.track_carbon:
        emissions = TrainingEmissionsCallback(settings.country_iso_code, out, on_log=logger.info)
        callbacks.append(emissions)
    return callbacks, emissions
