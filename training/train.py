"""``greengossip train``: train a learned scheduler with stable-baselines3 and compare it with the heuristics.

    greengossip train --config configs/default.yaml [--settings configs/train/default.yaml]
                      [--algo maskable_ppo|ppo|a2c|recurrent_ppo] [--timesteps T] [--seed S] [--n-envs E]
                      [--out DIR] [--resume latest|PATH] [--imitate HEURISTIC]

``--config`` is the env scenario (an ``EnvConfig`` YAML), ``--settings`` the training settings
(``training/settings.py``, one section per algorithm). What a run leaves in ``--out``::

    model.zip                 the final model          best_model.zip (+ .json)  best on held-out seeds
    checkpoints/              periodic checkpoints (``--resume latest`` goes on from the newest)
    logs/                     TensorBoard events (SB3's rollout/ train/ time/, plus env/ episode/ eval/
                              charts/ carbon/ imitation/ and the settings as text), progress.csv, log.txt
    monitor.csv               VecMonitor's episodes (resumeN.monitor.csv after a resume)
    evaluations.csv           every held-out evaluation
    emissions.csv             codecarbon's measurement of this training run
    settings.yaml, env_config.yaml, train.log
    comparison/               the harness's results.csv / results.md / plots (model vs. every heuristic)

Seeds: training env ``i`` starts from ``seed + i`` (``seed`` < 10,000); the evaluation callback uses
validation seeds 10,000.. to pick the best model and the final comparison test seeds 20,000.., so the
reported comparison is on scenarios that neither trained nor selected the model. The same seed and
settings give the same learning curve in one process (``--n-envs 1``, ``torch_threads: 1``).

``--imitate HEURISTIC`` (settings: ``imitation``) first fits a new policy to the heuristic's rollouts on
the training envs (``training/imitation.py``); PPO then starts from it. A resumed run skips it.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from greengossip.envs.shipped import find_config
from greengossip.training.settings import ALGORITHMS, SettingsError, TrainSettings, load_settings, settings_for_config

ENV_ID = "GreenGossip/EdgeLearning-v1"
DEFAULT_CONFIG = "default"
LOG = logging.getLogger("greengossip.train")


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="env scenario: a shipped name (default, tiny, attack_heavy, ...) or a YAML path (default: default)"
    )
    parser.add_argument(
        "--settings",
        default=None,
        help="training settings YAML (default: configs/train/<config name>.yaml if it exists, e.g. "
        "tiny.yaml for configs/tiny.yaml, else configs/train/default.yaml)",
    )
    parser.add_argument(
        "--algo",
        choices=ALGORITHMS,
        default=None,
        help="learning algorithm (default from settings: maskable_ppo)",
    )
    parser.add_argument("--timesteps", type=int, default=None, help="total env steps over all envs")
    parser.add_argument("--seed", type=int, default=None, help="training seed (< 10000)")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel envs (subprocesses when > 1)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<algo>-<config>-s<seed>)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop training after this many minutes of wall-clock time",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="go on from a checkpoint: 'latest' in OUT/checkpoints, or a model .zip",
    )
    parser.add_argument(
        "--also-train-on",
        nargs="+",
        default=None,
        metavar="CONFIG",
        help="further scenario YAMLs mixed into training (env i runs scenario i mod (1 + count)), e.g. "
        "configs/attack_heavy.yaml so that the scheduler meets attackers",
    )
    parser.add_argument(
        "--imitate",
        default=None,
        metavar="HEURISTIC",
        help="warm start: before PPO, fit the policy to this heuristic's rollouts (behaviour cloning), "
        "e.g. energy_carbon_trust; sets imitation.heuristic of the settings",
    )
    parser.add_argument(
        "--prior",
        default=None,
        metavar="HEURISTIC",
        help="residual policy: a memoryless heuristic (e.g. carbon_periodic) whose action gets policy.prior_weight "
        "extra logit, so the policy starts as that rule and PPO learns corrections; sets policy.prior",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the final comparison with the heuristics"
    )
    parser.add_argument("--multi-agent", action="store_true",
                        help="decentralized: one PPO policy shared by every node (PettingZoo + SuperSuit)")
    parser.add_argument("--local-reward-weight", type=float, default=0.0,
                        help="(--multi-agent) weight of each node's local reward component (0 = team reward only)")


def run(args: argparse.Namespace) -> int:
    if args.multi_agent:
        from greengossip.training import multi_agent

        return multi_agent.run(args)
    settings_path = args.settings or settings_for_config(args.config)
    settings = load_settings(
        settings_path,
        algo=args.algo,
        total_timesteps=args.timesteps,
        seed=args.seed,
        n_envs=args.n_envs,
        time_limit_minutes=args.time_limit,
        progress_bar=False if args.no_progress else None,
        compare=False if args.no_compare else None,
        also_train_on=args.also_train_on,
        imitate=args.imitate,
        prior=args.prior,
    )
    out = args.out or f"runs/{settings.algo}-{Path(args.config).stem}-s{settings.seed}"
    result = train(args.config, settings, out, resume=args.resume, settings_source=settings_path)
    return 1 if result.comparison_error else 0


# ---------------------------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path
    best_model_path: Path
    timesteps: int
    seconds: float
    emissions: dict[str, Any] | None = None
    comparison: list[dict] | None = None
    comparison_table: str | None = None
    comparison_error: str | None = None
    best_eval: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- pieces
def setup_logging(out: Path, logger: logging.Logger = LOG) -> None:
    """Send ``logger`` to OUT/train.log and stdout, replacing handlers of an earlier run in this process."""
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False


def training_callbacks(settings: TrainSettings, out: Path, texts: dict[str, str], evaluation, logger):
    """The callbacks every training run has (settings as text, env KPIs, steps/s, checkpoints, held-out
    evaluation, wall-clock limit, codecarbon), and the emissions callback if carbon is tracked."""
    from stable_baselines3.common.callbacks import CheckpointCallback

    from greengossip.training.callbacks import (
        EnvKpiCallback,
        SettingsTextCallback,
        StepsPerSecondCallback,
        TrainingEmissionsCallback,
        WallClockLimitCallback,
    )

    callbacks = [
        SettingsTextCallback({"settings/training": settings.markdown(), **texts}),
        EnvKpiCallback(),
        StepsPerSecondCallback(),
        CheckpointCallback(
            max(settings.checkpoint_freq // settings.n_envs, 1),
            str(out / "checkpoints"),
            name_prefix="model",
        ),
        evaluation,
    ]
    if settings.time_limit_minutes is not None:
        callbacks.append(WallClockLimitCallback(settings.time_limit_minutes, on_log=logger.info))
    emissions = None
    if settings.track_carbon:
        emissions = TrainingEmissionsCallback(settings.country_iso_code, out, on_log=logger.info)
        callbacks.append(emissions)
    return callbacks, emissions


def make_env(config, worker: bool = True):
    """One env; a training worker gets one torch thread (the envs are small and run side by side)."""
    import gymnasium as gym
    import torch

    from greengossip import envs  # noqa: F401  (registers the id in a fresh worker process)

    if worker:
        torch.set_num_threads(1)
    return gym.make(ENV_ID, config=config)


def make_eval_env(config, settings: TrainSettings):
    """The validation env, reset once: one batched program over all validation seeds for feed-forward
    policies (``callbacks.run_vec_episodes``: the same results, about twice as fast as episode after
    episode for 10 seeds of the default scenario, where the longest episode sets the time), a plain env
    for recurrent ones, whose state would need carrying per episode."""
    if settings.algo == "recurrent_ppo":
        env = make_env(config, worker=False)
        env.reset(seed=settings.validation_seeds[0])
        return env
    from greengossip.envs.sb3_vec_env import GossipVecEnv

    env = GossipVecEnv(len(settings.validation_seeds), config=config)
    env.seed(settings.validation_seeds[0])
    env.reset()
    return env


def make_vec_env(configs: list, settings: TrainSettings, monitor_file: Path):
    """The training envs: env i runs scenario ``configs[i % len(configs)]``."""
    from functools import partial

    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

    if settings.vec_env == "batched":
        from greengossip.envs.sb3_vec_env import GossipVecEnv

        return VecMonitor(GossipVecEnv(settings.n_envs, config=configs, workers=settings.env_workers,
                                       worker_kind=settings.env_worker_kind),
                          filename=str(monitor_file))
    factories = [partial(make_env, configs[i % len(configs)]) for i in range(settings.n_envs)]
    subprocess = settings.vec_env == "subprocess" or (settings.vec_env == "auto" and settings.n_envs > 1)
    # fork: workers inherit the imported modules (torch, pvlib, sklearn) instead of importing them again,
    # which costs several seconds per worker; no torch thread pool has run in this process yet.
    venv = SubprocVecEnv(factories, start_method="fork") if subprocess else DummyVecEnv(factories)
    return VecMonitor(venv, filename=str(monitor_file))


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


def training_scenarios(env_config, settings: TrainSettings) -> list:
    """``env_config`` and the ``also_train_on`` scenarios (with ``settings.reward`` where set), checked to
    fit one policy's spaces."""
    from greengossip.envs.config import load_config

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


def policy_kwargs(settings: TrainSettings) -> dict[str, Any]:
    from torch import nn

    policy = settings.policy
    activation = {"relu": nn.ReLU, "tanh": nn.Tanh}[policy.activation]
    kwargs: dict[str, Any] = dict(
        net_arch=dict(pi=list(policy.pi), vf=list(policy.vf)),
        activation_fn=activation,
        ortho_init=policy.ortho_init,
        mask_logits=policy.mask_logits,
        prior=policy.prior,
        prior_weight=policy.prior_weight,
        prior_regulariser=policy.prior_regulariser,
        allowed_actions=policy.allowed_actions,
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
    final = kwargs.pop("learning_rate_final", None)
    hold = kwargs.pop("learning_rate_decay_start", 0.0)
    if final is not None:
        kwargs["learning_rate"] = DelayedLinearSchedule(kwargs["learning_rate"], final, hold)
    return kwargs


def latest_checkpoint(folder: Path) -> Path | None:
    found = []
    for path in folder.glob("model_*_steps.zip"):
        match = re.fullmatch(r"model_(\d+)_steps\.zip", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def build_model(settings: TrainSettings, venv, out: Path, resume: str | None):
    from greengossip.agents.policies import algorithm_class, detect_algorithm, load_for_nodes, policy_class

    if resume:
        path = latest_checkpoint(out / "checkpoints") if resume == "latest" else Path(resume)
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"--resume {resume}: no checkpoint found (looked for "
                f"{out / 'checkpoints'}/model_<steps>_steps.zip)"
                if resume == "latest"
                else f"--resume {resume}: file not found"
            )
        algo = detect_algorithm(path)
        if algo != settings.algo:
            raise ValueError(
                f"--resume {path} holds a {algo} model but the settings ask for {settings.algo}; "
                f"pass --algo {algo}"
            )
        model = load_for_nodes(path, venv, algo=algo, device=settings.device)
        # SB3 does not save RNG states: reseed deterministically from where the run stopped
        model.set_random_seed(settings.seed + model.num_timesteps)
        LOG.info("resumed from %s at %d steps", path, model.num_timesteps)
        return model
    cls = algorithm_class(settings.algo)
    return cls(
        policy_class(settings.algo),
        venv,
        seed=settings.seed,
        device=settings.device,
        verbose=0,
        policy_kwargs=policy_kwargs(settings),
        **algorithm_kwargs(settings),
    )


def imitate(model, settings: TrainSettings) -> None:
    """The behaviour-cloning warm start (training/imitation.py), its figures logged at step 0."""
    from greengossip.training.imitation import warm_start

    summary = warm_start(model, settings.imitation, seed=settings.seed)
    for name in ("cross_entropy", "value_loss", "agreement"):
        model.logger.record(f"imitation/{name}", getattr(summary, name))
    model.logger.dump(step=0)
    # The rollouts used up the envs' seeds; reseeding gives PPO the same training episodes as a run
    # without the warm start, so that comparing the two compares the starting policies.
    model.set_random_seed(settings.seed)


def prior_rule_specs(settings: TrainSettings) -> list[str]:
    """A residual policy's prior rule where it is not a heuristic at its defaults
    (``carbon_periodic:period=6``), else nothing: a comparison lists it beside the model, so that the
    model's gain over the rule it starts from, not only over the defaults, can be read off."""
    prior = settings.policy.prior
    return [prior] if prior is not None and ":" in prior else []


def comparison_schedulers(model_path: Path, settings: TrainSettings) -> list[str]:
    """The model, every heuristic, and its prior rule (``prior_rule_specs``)."""
    return [str(model_path), "all", *prior_rule_specs(settings)]


def compare_with_heuristics(
    model_path: Path, config_path: Path, settings: TrainSettings, out: Path
) -> tuple[list[dict] | None, str | None, str | None]:
    """The harness on the held-out test seeds, the model against every heuristic (and its prior rule, see
    ``comparison_schedulers``): (rows, table, error)."""
    try:
        from greengossip.training.evaluate import run_evaluation
    except ImportError as exc:
        LOG.info("comparison skipped: the evaluation harness is not available (%s)", exc)
        return None, None, None
    target = out / "comparison"
    LOG.info(
        "comparing %s with all heuristics on %s, test seeds %d..%d",
        model_path.name,
        config_path,
        settings.test_seeds[0],
        settings.test_seeds[-1],
    )
    try:
        rows = run_evaluation(
            comparison_schedulers(model_path, settings),
            [str(config_path)],
            settings.test_seeds,
            target,
            workers=settings.compare_workers,
            progress=settings.progress_bar,
        )
    except Exception as exc:  # training is saved already; report the harness failure, don't lose the run
        LOG.exception("comparison failed")
        return None, None, f"{type(exc).__name__}: {exc}"
    table_path = target / "results.md"
    table = table_path.read_text() if table_path.is_file() else None
    if table:
        LOG.info("comparison (%s):\n%s", table_path, table)
    return rows, table, None


# ---------------------------------------------------------------------------------------------- main
def train(
    config,
    settings: TrainSettings,
    out_dir: str | Path,
    resume: str | None = None,
    settings_source: str | Path | None = None,
) -> TrainResult:
    """Train a scheduler on ``config`` (path, dict or EnvConfig) with ``settings`` (see the module doc)."""
    import torch
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import configure

    from greengossip.envs.config import load_config
    from greengossip.training.callbacks import HeldOutEvalCallback

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    env_config = load_config(config)
    scenarios = training_scenarios(env_config, settings)
    config_path = out / "env_config.yaml"
    config_path.write_text(yaml.safe_dump(env_config.model_dump(mode="json"), sort_keys=False))
    if isinstance(config, (str, Path)):
        config_path = find_config(config)  # the harness names the scenario after the file; a name is a shipped file
    (out / "settings.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    torch.set_num_threads(settings.torch_threads)
    LOG.info(
        "training %s (settings %s) on %s (%d nodes) for %d steps, seed %d, %d env(s) -> %s",
        settings.algo,
        settings_source or "given",
        config if isinstance(config, (str, Path)) else "<config>",
        env_config.n_nodes,
        settings.total_timesteps,
        settings.seed,
        settings.n_envs,
        out,
    )

    if settings.reward is not None:
        LOG.info("training and validation reward weights (settings.reward): %s; the scenario's: %s",
                 settings.reward.model_dump(), env_config.reward.model_dump())
    if settings.select_on == "training_mix" and len(scenarios) > 1:
        validated = validation_scenarios(config, settings, scenarios)
        LOG.info("the best model is picked on %s, each on validation seeds %d..%d", ", ".join(validated),
                 settings.validation_seeds[0], settings.validation_seeds[-1])
    else:
        validated = {"": scenarios[0]}
    background = None
    if settings.validation_in_background:
        from greengossip.training.callbacks import BackgroundValidation

        background = BackgroundValidation(validated, settings, out / "validation_snapshots")
        eval_envs = dict.fromkeys(validated)
    else:
        # The evaluation envs come first: the first reset imports the simulator's modules and fills its
        # caches (clear-sky years), which forked training workers then inherit instead of redoing.
        eval_envs = {name: make_eval_env(scenario, settings) for name, scenario in validated.items()}
    monitor, part = out / "monitor.csv", 1
    while resume and monitor.exists():  # VecMonitor overwrites: a resumed run writes its own file
        monitor, part = out / f"resume{part}.monitor.csv", part + 1
    if len(scenarios) > 1:
        LOG.info("training scenarios mixed in: %s (env i runs scenario i mod %d)", settings.also_train_on,
                 len(scenarios))
    venv = make_vec_env(scenarios, settings, monitor)
    try:
        model = build_model(settings, venv, out, resume)
        model.set_logger(configure(str(out / "logs"), ["csv", "tensorboard", "log"]))
        if settings.imitation.heuristic is not None and not resume:
            imitate(model, settings)
        best_model_path = out / "best_model.zip"
        evaluation = HeldOutEvalCallback(
            eval_envs,
            settings.validation_seeds,
            settings.eval_freq,
            best_model_path,
            out / "evaluations.csv",
            on_log=LOG.info,
            carbon_guard=settings.carbon_guard,
            background=background,
        )
        callbacks, emissions = training_callbacks(
            settings, out, {"settings/env": "```yaml\n" + config_path.read_text() + "\n```"}, evaluation, LOG
        )
        remaining = settings.total_timesteps - (model.num_timesteps if resume else 0)
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                log_interval=settings.log_interval,
                progress_bar=settings.progress_bar,
                reset_num_timesteps=not resume,
            )
        else:
            LOG.info(
                "nothing to do: the checkpoint is at %d of %d steps",
                model.num_timesteps,
                settings.total_timesteps,
            )
        model_path = out / "model.zip"
        model.save(model_path)
    finally:
        venv.close()
        for env in eval_envs.values():
            if env is not None:
                env.close()
        if background is not None:
            background.close()
    if not best_model_path.is_file():
        best_model_path = model_path
    learn_seconds = time.perf_counter() - started
    LOG.info(
        "trained %d steps in %.1f s; final model %s, best model %s (score %.3f)",
        model.num_timesteps,
        learn_seconds,
        model_path,
        best_model_path,
        evaluation.best_score,
    )

    result = TrainResult(
        out,
        model_path,
        best_model_path,
        model.num_timesteps,
        learn_seconds,
        emissions=emissions.result if emissions else None,
    )
    best_record = best_model_path.with_suffix(".json")
    if best_record.is_file():
        import json

        result.best_eval = json.loads(best_record.read_text())
    if settings.compare:
        result.comparison, result.comparison_table, result.comparison_error = compare_with_heuristics(
            best_model_path, config_path, settings, out
        )
    result.seconds = time.perf_counter() - started
    LOG.info("done in %.1f s", result.seconds)
    return result
