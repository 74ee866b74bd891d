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

A folder that holds a run is never overwritten by accident: ``--out`` with a run in it needs ``--resume``
(go on from its newest readable checkpoint, appending to its logs) or ``--overwrite`` (delete that run's
files first). Models and checkpoints are written whole or not at all (``run_files.py``). Ctrl-C stops
training after the current step, saves the model and a checkpoint, prints how to resume and exits 130.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList

from greengossip.agents.heuristics import prior_specs
from greengossip.agents.policies import detect_algorithm, load_for_nodes
from greengossip.envs.config import load_config
from greengossip.envs.errors import UserError
from greengossip.envs.shipped import find_config
from greengossip.training import multi_agent
from greengossip.training.builders import (
    DelayedLinearSchedule,  # noqa: F401  (models saved with a step-size schedule pickle it by this path)
    algorithm_kwargs,
    make_eval_env,
    make_vec_env,
    monitored,
    new_model,
    sb3_logger,
    setup_logging,
    torch_threads,
    training_callbacks,
    training_scenarios,
    validation_scenarios,
)
from greengossip.training.callbacks import HeldOutEvalCallback, StopOnInterrupt
from greengossip.training.evaluate import compare_with_heuristics
from greengossip.training.imitation import warm_start
from greengossip.training.rule_rollouts import RolloutLabels, collect_labels, fit_switch
from greengossip.training.rule_selection import warm_start_from_rules
from greengossip.training.rule_switching import RuleSwitchingVecEnv, new_switching_model
from greengossip.training.run_files import atomic_save, latest_checkpoint, prepare_run_folder, resume_checkpoint
from greengossip.training.settings import (
    ALGORITHMS,
    DEFAULT_CONFIG,
    TrainSettings,
    load_settings,
    settings_for_config,
)
from greengossip.training.suite_compare import compare_on_suite
from greengossip.training.suite_envs import SuiteVecEnv, suite_validation_envs

__all__ = ["TrainResult", "add_arguments", "latest_checkpoint", "run", "train"]
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
LOG = logging.getLogger("greengossip.train")


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None,
        help="env scenario: a shipped name (default, tiny, attack_heavy, ...) or a YAML path (default: default; "
        "none with --multi-agent and a settings suite section)"
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
        help="go on from a checkpoint: 'latest' (the newest readable one in OUT/checkpoints), or a model .zip",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="--out holds an earlier run: delete its files and train afresh")
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
        return multi_agent.run(args)
    args.config = args.config or str(DEFAULT_CONFIG)
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
    result = train(args.config, settings, out, resume=args.resume, settings_source=settings_path,
                   overwrite=args.overwrite, resume_command=resume_command(args, out))
    if result.interrupted:
        return EXIT_INTERRUPTED
    return 1 if result.comparison_error else 0


def resume_command(args: argparse.Namespace, out: str | Path) -> str:
    """The ``greengossip train`` command that goes on from the run in ``out``: the options of this one
    (``args``), ``--resume latest`` in place of ``--resume``/``--overwrite``, without ``--imitate`` (a
    resumed run skips the warm start)."""
    words = ["greengossip", "train", *(["--multi-agent"] if getattr(args, "multi_agent", False) else [])]
    for flag, name in (("--config", "config"), ("--settings", "settings"), ("--algo", "algo"),
                       ("--timesteps", "timesteps"), ("--seed", "seed"), ("--n-envs", "n_envs"),
                       ("--time-limit", "time_limit"), ("--prior", "prior")):
        value = getattr(args, name, None)
        if value is not None:
            words += [flag, str(value)]
    if getattr(args, "also_train_on", None):
        words += ["--also-train-on", *map(str, args.also_train_on)]
    if getattr(args, "local_reward_weight", 0.0):
        words += ["--local-reward-weight", str(args.local_reward_weight)]
    words += [flag for flag, name in (("--no-progress", "no_progress"), ("--no-compare", "no_compare"))
              if getattr(args, name, False)]
    return shlex.join([*words, "--out", str(out), "--resume", "latest"])


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
    interrupted: bool = False


# ---------------------------------------------------------------------------------------------- pieces
def build_model(settings: TrainSettings, venv, out: Path, resume: str | None):
    """A new model, or with ``resume`` the checkpoint (checked; a damaged newest one is skipped) on ``venv``."""
    switch = settings.rule_switch
    if not resume:
        if switch is not None:
            return new_switching_model(venv, first_rule_bias=switch.first_rule_bias, net_arch=switch.net_arch,
                                       seed=settings.seed, device=settings.device, **algorithm_kwargs(settings))
        return new_model(settings, venv)
    path = resume_checkpoint(out, resume, on_log=LOG.warning)
    if switch is not None:  # a plain PPO over the fleet summary: nothing depends on the fleet size
        model = PPO.load(path, env=venv, device=settings.device)
    else:
        algo = detect_algorithm(path)
        if algo != settings.algo:
            raise UserError(f"--resume {path} holds a {algo} model but the settings ask for {settings.algo}; "
                            f"pass --algo {algo}")
        model = load_for_nodes(path, venv, algo=algo, device=settings.device, ratio=settings.ratio)
    # SB3 does not save RNG states: reseed deterministically from where the run stopped
    model.set_random_seed(settings.seed + model.num_timesteps)
    LOG.info("resumed from %s at %d steps", path, model.num_timesteps)
    return model


def imitate(model, settings: TrainSettings) -> None:
    """The behaviour-cloning warm start (training/imitation.py), its figures logged at step 0."""
    if settings.imitation.select_from:
        summary = warm_start_from_rules(model, settings.imitation, settings.suite, seed=settings.seed)
    else:
        summary = warm_start(model, settings.imitation, seed=settings.seed)
    for name in ("cross_entropy", "value_loss", "agreement"):
        model.logger.record(f"imitation/{name}", getattr(summary, name))
    model.logger.dump(step=0)
    # The rollouts used up the envs' seeds; reseeding gives PPO the same training episodes as a run
    # without the warm start, so that comparing the two compares the starting policies.
    model.set_random_seed(settings.seed)


def fit_to_rollouts(model, settings: TrainSettings, out: Path) -> None:
    """The rule switch fitted to rollout labels (training/rule_rollouts.py), its figures logged at step 0.
    Batch i (seed + i) is labelled from the first rule's states for the first ``batches_from_first_rule``,
    after that from the states of the switch fitted to all labels so far (saved as
    ``rollout_labels_<i>.zip`` in ``out``); every fit starts from the model's initial weights."""
    labelling = settings.rule_switch.rollout_labels
    initial = copy.deepcopy(model.policy.state_dict())
    started = time.monotonic()
    labels, rollin, fit = [], None, None
    for batch in range(labelling.iterations):
        labels.append(collect_labels(
            settings.suite, settings.rule_switch.rules, settings.reward, seed=settings.seed + batch,
            scenarios_per_family=labelling.scenarios_per_family, hold=settings.rule_switch.hold,
            every=labelling.every, max_nodes=labelling.max_nodes, family_max_nodes=labelling.family_max_nodes,
            workers=labelling.workers, rollin=rollin,
            continuation=labelling.continuation))
        LOG.info("rollout labels, batch %d of %d (%s roll-in): %d states after %.0f s", batch + 1,
                 labelling.iterations, "the first rule's" if rollin is None else "the fitted switch's",
                 len(labels[-1].returns), time.monotonic() - started)
        if batch + 1 < labelling.batches_from_first_rule and batch + 1 < labelling.iterations:
            continue
        model.policy.load_state_dict(initial)
        fit = fit_switch(model, RolloutLabels.join(labels), epochs=labelling.epochs,
                         learning_rate=labelling.learning_rate, batch_size=labelling.batch_size, seed=settings.seed,
                         measure=labelling.measure)
        LOG.info("rule switch fitted to %d rollout-labelled states: it picks a best rule on %.0f%% of them and "
                 "gains %.3f per state over the first rule on %s (the best choice: %.3f)", fit["states"],
                 100 * fit["agreement"], fit["gain"], labelling.measure, fit["best_gain"])
        if batch + 1 < labelling.iterations:
            rollin = str(atomic_save(model, out / f"rollout_labels_{batch + 1}.zip"))
    for name, value in fit.items():
        model.logger.record(f"rollout_labels/{name}", value)
    model.logger.dump(step=0)
    model.set_random_seed(settings.seed)


def prior_rule_specs(settings: TrainSettings) -> list[str]:
    """A residual policy's prior rule where it is not a heuristic at its defaults
    (``carbon_periodic:period=6``), else nothing: a comparison lists it beside the model, so that the
    model's gain over the rule it starts from, not only over the defaults, can be read off."""
    return [spec for spec in prior_specs(settings.policy.prior) if ":" in spec]


def comparison_schedulers(model_path: Path, settings: TrainSettings) -> list[str]:
    """The model, every heuristic, and its prior rule (``prior_rule_specs``)."""
    return [str(model_path), "all", *prior_rule_specs(settings)]


def suite_envs(settings: TrainSettings, monitor_file: Path, append: bool):
    """(validation envs by family, training envs) of a run on the scenario suite (``settings.suite``), seen
    through the rule switch where ``settings.rule_switch`` asks for one."""
    suite = settings.suite
    sizes = (f"at {suite.n_nodes} nodes" if suite.pad_to is None
             else f"at the drawn fleet sizes cut at {suite.max_nodes} nodes (observations padded to it)")
    LOG.info("training on the suite's train split: %s %s, each of %d env slots redrawn every %d "
             "episode(s); the best model is picked on validation seeds %d..%d of every family",
             ", ".join(suite.family_names), sizes, settings.n_envs, suite.redraw_every,
             settings.validation_seeds[0], settings.validation_seeds[-1])
    if settings.reward is not None:
        LOG.info("training and validation reward weights (settings.reward) in place of each family's: %s",
                 settings.reward.model_dump())
    own_sizes = settings.rule_switch is not None and settings.rule_switch.validation_sizes == "own"
    if own_sizes:
        LOG.info("validation at each seed's own fleet size, cut at %d nodes", suite.max_eval_nodes)
    if settings.keep_targets:
        LOG.info("a validation becomes the best model only if every family reaches the target as often as in "
                 "the first validation")
    eval_envs = suite_validation_envs(suite, settings.validation_seeds, settings.reward,
                                      max_nodes=suite.max_eval_nodes if own_sizes else None)
    training = monitored(SuiteVecEnv(settings.n_envs, suite, seed=settings.seed, reward=settings.reward),
                         monitor_file, append)
    if settings.rule_switch is None:
        return eval_envs, training
    rules, hold, guard = settings.rule_switch.rules, settings.rule_switch.hold, settings.rule_switch.guard
    LOG.info("a rule switch: every %s the model picks one of %s for the whole fleet%s",
             "round" if hold == 1 else f"{hold} rounds", ", ".join(rules),
             "" if guard is None else f", and the first rule plays from {guard:.0%} of the rounds to the deadline on")
    return ({name: RuleSwitchingVecEnv(env, rules, hold, guard) for name, env in eval_envs.items()},
            RuleSwitchingVecEnv(training, rules, hold, guard))


def save_interrupted(model, out: Path, command: str | None) -> Path:
    """After Ctrl-C: the model as ``model.zip`` and as a checkpoint, and how to go on."""
    model_path = atomic_save(model, out / "model.zip")
    (out / "checkpoints").mkdir(exist_ok=True)
    checkpoint = atomic_save(model, out / "checkpoints" / f"model_{model.num_timesteps}_steps.zip")
    LOG.info("interrupted at %d steps; saved %s and %s. Go on with:\n  %s", model.num_timesteps, model_path,
             checkpoint, command or f"greengossip train ... --out {out} --resume latest")
    return model_path


# ---------------------------------------------------------------------------------------------- main
def train(
    config,
    settings: TrainSettings,
    out_dir: str | Path,
    resume: str | None = None,
    settings_source: str | Path | None = None,
    overwrite: bool = False,
    resume_command: str | None = None,
) -> TrainResult:
    """Train a scheduler on ``config`` (path, dict or EnvConfig) with ``settings`` (see the module doc)."""
    started = time.perf_counter()
    out = prepare_run_folder(out_dir, resume, overwrite)
    setup_logging(out, LOG)
    env_config = load_config(config)
    scenarios = training_scenarios(env_config, settings)
    config_path = out / "env_config.yaml"
    config_path.write_text(yaml.safe_dump(env_config.model_dump(mode="json"), sort_keys=False))
    if isinstance(config, (str, Path)):
        config_path = find_config(config)  # the harness names the scenario after the file; a name is a shipped file
    (out / "settings.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    torch_threads(settings)
    LOG.info(
        "training %s (settings %s) on %s (%s nodes) for %d steps, seed %d, %d env(s) -> %s",
        settings.algo,
        settings_source or "given",
        "the suite" if settings.suite else config if isinstance(config, (str, Path)) else "<config>",
        (env_config.n_nodes if not settings.suite else settings.suite.n_nodes if settings.suite.pad_to is None
         else f"up to {settings.suite.max_nodes}"),
        settings.total_timesteps,
        settings.seed,
        settings.n_envs,
        out,
    )

    if settings.reward is not None and settings.suite is None:
        LOG.info("training and validation reward weights (settings.reward): %s; the scenario's: %s",
                 settings.reward.model_dump(), env_config.reward.model_dump())
    if settings.select_on == "training_mix" and len(scenarios) > 1:
        validated = validation_scenarios(config, settings, scenarios)
        LOG.info("the best model is picked on %s, each on validation seeds %d..%d", ", ".join(validated),
                 settings.validation_seeds[0], settings.validation_seeds[-1])
    else:
        validated = {"": scenarios[0]}
    if settings.suite is not None:
        eval_envs, venv = suite_envs(settings, out / "monitor.csv", append=bool(resume))
    else:
        eval_envs = {name: make_eval_env(scenario, settings) for name, scenario in validated.items()}
        if len(scenarios) > 1:
            LOG.info("training scenarios mixed in: %s (env i runs scenario i mod %d)", settings.also_train_on,
                     len(scenarios))
        venv = make_vec_env(scenarios, settings, out / "monitor.csv", append=bool(resume))
    interrupt = StopOnInterrupt(on_log=LOG.info)
    try:
        model = build_model(settings, venv, out, resume)
        model.set_logger(sb3_logger(out / "logs"))
        if settings.imitation.enabled and not resume:
            imitate(model, settings)
        if settings.rule_switch is not None and settings.rule_switch.rollout_labels is not None and not resume:
            fit_to_rollouts(model, settings, out)
        best_model_path = out / "best_model.zip"
        evaluation = HeldOutEvalCallback(
            eval_envs,
            settings.validation_seeds,
            settings.eval_freq,
            best_model_path,
            out / "evaluations.csv",
            on_log=LOG.info,
            carbon_guard=settings.carbon_guard,
            keep_targets=settings.keep_targets,
            skip_final=lambda: interrupt.requested,
            at_start=settings.eval_at_start,
        )
        callbacks, emissions = training_callbacks(
            settings, out, {"settings/env": "```yaml\n" + config_path.read_text() + "\n```"}, evaluation,
            interrupt, LOG
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
        if interrupt.requested:
            model_path = save_interrupted(model, out, resume_command)
        else:
            model_path = atomic_save(model, out / "model.zip")
    finally:
        venv.close()
        for env in eval_envs.values():
            env.close()
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
        interrupted=interrupt.requested,
    )
    best_record = best_model_path.with_suffix(".json")
    if best_record.is_file():
        result.best_eval = json.loads(best_record.read_text())
    if settings.compare and not result.interrupted and settings.suite is not None:
        result.comparison, result.comparison_table, result.comparison_error = compare_on_suite(
            best_model_path, settings, out / "comparison", log=LOG)
    elif settings.compare and not result.interrupted:
        result.comparison, result.comparison_table, result.comparison_error = compare_with_heuristics(
            comparison_schedulers(best_model_path, settings), config_path, settings.test_seeds,
            out / "comparison", workers=settings.compare_workers, progress=settings.progress_bar, log=LOG,
        )
    result.seconds = time.perf_counter() - started
    write_record(out / "training_record.json", settings, result, learn_seconds)
    LOG.info("done in %.1f s", result.seconds)
    return result


def write_record(path: Path, settings: TrainSettings, result: TrainResult, learn_seconds: float) -> None:
    """What a shipped model needs beside it: the settings, seed, steps and wall time that produced it."""
    record = {
        "settings": settings.model_dump(mode="json"),
        "seed": settings.seed,
        "timesteps": result.timesteps,
        "best_model_timesteps": result.best_eval.get("timesteps"),
        "best_model_validation": {key: value for key, value in result.best_eval.items() if key != "reference"},
        "wall_minutes": round(result.seconds / 60, 2),
        "training_minutes": round(learn_seconds / 60, 2),
        "command": shlex.join(["greengossip", *sys.argv[1:]]),  # as typed, when run from the command line
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
