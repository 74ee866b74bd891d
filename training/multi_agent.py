"""Decentralized scheduling: one policy shared by every node, trained with SuperSuit + Stable-Baselines3.

    greengossip train --multi-agent --config configs/tiny.yaml --settings configs/train/tiny.yaml
    python -m greengossip.training.multi_agent --config tiny --settings tiny   # the same
    python -m greengossip.training.multi_agent --settings decentralized_suite \
        --ship agents/pretrained/decentralized.zip   # on the scenario suite; the shipped policy

Each node of ``greengossip.envs.multi_agent.EdgeLearningParallelEnv`` is an agent with the same spaces, so SuperSuit
turns one env of ``N`` nodes into an SB3 vector env of ``N`` "envs" (``pettingzoo_env_to_vec_env_v1``),
``concat_vec_envs_v1`` stacks ``n_envs`` copies, and a plain SB3 PPO learns one per-node policy from every
node's experience at once (parameter sharing; Terry et al., "Revisiting parameter sharing in multi-agent
deep RL", 2020). The policy reads ``LOCAL_OBS_DIM`` numbers whatever the fleet size, so a policy trained
on 8 nodes runs on 200.

With a ``suite`` section in the settings (and no ``--config``) the training envs are the scenario suite's
instead (``training/suite_multi_agent.py``): env ``i`` plays a fresh train-split scenario of family
``i mod k`` every episode at a fixed fleet size, envs of different sizes feed the one PPO, and the best model
is picked on validation-split scenarios by the carbon-to-target saved against all_nodes.

Counting: ``--timesteps`` / ``total_timesteps`` are env rounds summed over envs, as for the centralized
trainer (same simulator cost); SB3 itself counts node decisions, ``N`` per round, and so do its logs
(``time/total_timesteps``, ``charts/steps_per_second``). ``monitor.csv`` has one row per node and episode.

What a run leaves in ``--out``: ``model.zip`` (final), ``best_model.zip`` (+ ``.json``, best mean return
on the validation seeds 10,000.., or best suite validation score), ``checkpoints/``, ``logs/`` (TensorBoard
+ progress.csv), ``monitor.csv``, ``evaluations.csv``, ``settings.yaml``, ``env_config.yaml`` (not for the
suite), ``multi_agent.json``, ``run.json`` (seed, rounds, wall-clock seconds, the best model's record and
the settings), ``train.log`` and ``comparison/`` (the evaluation harness: the shared policy as a scheduler,
``decentralized:<path>``, beside every heuristic on the test seeds 20,000..; the suite's comparison is
``greengossip benchmark``). ``--ship ZIP`` copies the best model to ``ZIP`` and ``run.json`` beside it.

For the harness, ``greengossip.agents.decentralized.load_decentralized_scheduler`` wraps a trained shared
policy as a scheduler (``decentralized:<path>``). As for ``train.py``, an ``--out`` that holds a run needs
``--resume`` or ``--overwrite``, saves are atomic, and Ctrl-C saves the model and exits 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList

from greengossip.agents.decentralized import DECENTRALIZED_PREFIX
from greengossip.envs import ENV_ID
from greengossip.envs.config import load_config
from greengossip.envs.errors import UserError
from greengossip.envs.shipped import find_config
from greengossip.training.builders import (
    activation_class,
    algorithm_kwargs,
    make_multi_agent_vec_env,
    sb3_logger,
    setup_logging,
    torch_threads,
    training_callbacks,
)
from greengossip.training.callbacks import SharedPolicyEvalCallback, StopOnInterrupt
from greengossip.training.evaluate import compare_with_heuristics
from greengossip.training.run_files import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    prepare_run_folder,
    resume_checkpoint,
)
from greengossip.training.settings import DEFAULT_CONFIG, SettingsError, load_settings
from greengossip.training.suite_multi_agent import (
    SuiteSharedPolicyEvalCallback,
    fleet_sizes,
    make_suite_vec_env,
    validation_draws,
)

EXIT_INTERRUPTED = 130
LOG = logging.getLogger("greengossip.multi_agent")


@dataclass
class MultiAgentResult:
    out_dir: Path
    model_path: Path
    best_model_path: Path
    rounds: int  # env rounds trained (SB3 counts N node decisions per round)
    seconds: float
    best_eval: dict[str, Any]
    comparison: list[dict] | None = None
    comparison_table: str | None = None
    comparison_error: str | None = None
    interrupted: bool = False


def check_rollout_batch(settings, config) -> None:
    """Refuses a PPO minibatch larger than a rollout, counted as this trainer's PPO counts its steps: one
    per node decision, n_steps x the training envs' nodes (``TrainSettings`` counts rounds, n_steps x
    n_envs, as the centralized trainer's steps are)."""
    if settings.suite is not None:
        nodes = sum(n for _, n in fleet_sizes(settings.suite, settings.n_envs))
    else:
        nodes = load_config(DEFAULT_CONFIG if config is None else config).n_nodes * settings.n_envs
    ppo = settings.ppo
    if ppo.batch_size > ppo.n_steps * nodes:
        raise SettingsError(f"ppo.batch_size ({ppo.batch_size}) is larger than a rollout (n_steps {ppo.n_steps} x "
                            f"{nodes} nodes over {settings.n_envs} env(s) = {ppo.n_steps * nodes} node decisions); "
                            "lower batch_size or raise n_steps")


def train_multi_agent(
    config, settings, out_dir: str | Path, local_reward_weight: float = 0.0, resume: str | None = None,
    overwrite: bool = False, resume_command: str | None = None,
) -> MultiAgentResult:
    """Train one shared per-node PPO policy on ``config`` with ``settings`` (a ``TrainSettings``;
    its ``ppo`` section, seeds, ``n_envs``, evaluation and checkpoint settings apply)."""
    started = time.perf_counter()
    if settings.suite is not None and config is not None:
        raise SettingsError("suite: the suite's families are the training scenarios; drop --config or the "
                            "settings' suite section")
    if settings.reward is not None:
        raise SettingsError("reward: training reward weights apply to the centralized scheduler; with "
                            "--multi-agent set the scenario's own reward (or local_reward_weight) instead")
    check_rollout_batch(settings, config)
    out = prepare_run_folder(out_dir, resume, overwrite)
    setup_logging(out, LOG)
    (out / "settings.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    torch_threads(settings)
    record: dict[str, Any] = {"kind": "decentralized", "algorithm": "PPO", "parameter_sharing": True,
                              "local_reward_weight": local_reward_weight,
                              "scheduler_spec": DECENTRALIZED_PREFIX + str(out / "best_model.zip")}
    eval_env = None
    if settings.suite is not None:
        envs = fleet_sizes(settings.suite, settings.n_envs)
        decisions_per_round = sum(n for _, n in envs) / len(envs)  # SB3's steps per env round, on average
        record["training_envs"] = [{"family": family, "n_nodes": n} for family, n in envs]
        LOG.info("training a shared per-node PPO policy on the suite's train split (%s) for %d rounds, seed %d, "
                 "local_reward_weight %g -> %s", ", ".join(f"{family} x {n}" for family, n in envs),
                 settings.total_timesteps, settings.seed, local_reward_weight, out)
        venv = make_suite_vec_env(settings.suite, settings.n_envs, local_reward_weight, seed=settings.seed,
                                  monitor_file=out / "monitor.csv", append=bool(resume))
        texts = {}
    else:
        config = DEFAULT_CONFIG if config is None else config
        env_config = load_config(config)
        decisions_per_round = env_config.n_nodes
        record["n_nodes_trained"] = env_config.n_nodes
        config_path = out / "env_config.yaml"
        config_path.write_text(yaml.safe_dump(env_config.model_dump(mode="json"), sort_keys=False))
        if isinstance(config, (str, Path)):
            config_path = find_config(config)  # the harness names the scenario after the file; a name is a shipped file
        LOG.info(
            "training a shared per-node PPO policy on %s (%d nodes = agents) for %d rounds, seed %d, %d env(s), "
            "local_reward_weight %g -> %s",
            config if isinstance(config, (str, Path)) else "<config>",
            env_config.n_nodes,
            settings.total_timesteps,
            settings.seed,
            settings.n_envs,
            local_reward_weight,
            out,
        )
        # the first reset fills the simulator's caches (clear-sky years) once for the validation episodes
        eval_env = gym.make(ENV_ID, config=env_config)
        eval_env.reset(seed=settings.validation_seeds[0])
        venv = make_multi_agent_vec_env(
            env_config,
            settings.n_envs,
            local_reward_weight,
            # in the learner's process: Ctrl-C reaches every process of the terminal, and a worker stopped in the
            # middle of a step would take that step, and the model's save, with it
            num_cpus=0,
            seed=settings.seed,
            monitor_file=out / "monitor.csv",
            append=bool(resume),
        )
        texts = {"settings/env": "```yaml\n" + (out / "env_config.yaml").read_text() + "\n```"}
    (out / "multi_agent.json").write_text(json.dumps(record, indent=2))
    interrupt = StopOnInterrupt(on_log=LOG.info)
    try:
        if resume:
            path = resume_checkpoint(out, resume, on_log=LOG.warning)
            LOG.info("resuming from %s", path)
            model = PPO.load(path, env=venv, device=settings.device)
        else:
            policy = settings.policy
            model = PPO(
                "MlpPolicy",
                venv,
                seed=settings.seed,
                device=settings.device,
                verbose=0,
                policy_kwargs={
                    "net_arch": {"pi": list(policy.pi), "vf": list(policy.vf)},
                    "activation_fn": activation_class(settings),
                    "ortho_init": policy.ortho_init,
                },
                **algorithm_kwargs(settings),
            )
        model.set_logger(sb3_logger(out / "logs"))
        if eval_env is None:
            evaluation = SuiteSharedPolicyEvalCallback(
                validation_draws(settings.suite), int(settings.eval_freq * decisions_per_round), decisions_per_round,
                out, on_log=LOG.info, skip_final=lambda: interrupt.requested)
        else:
            evaluation = SharedPolicyEvalCallback(eval_env, settings.validation_seeds, settings.eval_freq,
                                                  env_config.n_nodes, out, on_log=LOG.info,
                                                  skip_final=lambda: interrupt.requested)
        texts["settings/multi_agent"] = (out / "multi_agent.json").read_text()
        callbacks, _ = training_callbacks(settings, out, texts, evaluation, interrupt, LOG)
        remaining = int(settings.total_timesteps * decisions_per_round) - (model.num_timesteps if resume else 0)
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                log_interval=settings.log_interval,
                progress_bar=settings.progress_bar,
                reset_num_timesteps=not resume,
            )
        model_path = atomic_save(model, out / "model.zip")
        if interrupt.requested:
            (out / "checkpoints").mkdir(exist_ok=True)
            checkpoint = atomic_save(model, out / "checkpoints" / f"model_{model.num_timesteps}_steps.zip")
            LOG.info("interrupted at %d rounds; saved %s and %s. Go on with:\n  %s",
                     int(model.num_timesteps / decisions_per_round),
                     model_path, checkpoint, resume_command or f"greengossip train --multi-agent ... --out {out} "
                     "--resume latest")
    finally:
        venv.close()
        if eval_env is not None:
            eval_env.close()
    best = out / "best_model.zip"
    if not best.is_file():
        best = model_path
    result = MultiAgentResult(
        out, model_path, best, int(model.num_timesteps / decisions_per_round), 0.0, evaluation.best_summary,
        interrupted=interrupt.requested,
    )
    LOG.info(
        "trained %d rounds (%d node decisions) in %.1f s; best model %s",
        result.rounds,
        model.num_timesteps,
        time.perf_counter() - started,
        best,
    )
    if settings.suite is not None:
        LOG.info("the suite's comparison is the benchmark: greengossip benchmark --split validation --schedulers "
                 "%s%s", DECENTRALIZED_PREFIX, best)
    elif settings.compare and not result.interrupted:
        result.comparison, result.comparison_table, result.comparison_error = compare_with_heuristics(
            [DECENTRALIZED_PREFIX + str(best), "all"], config_path, settings.test_seeds, out / "comparison",
            workers=settings.compare_workers, progress=settings.progress_bar, log=LOG,
        )
    result.seconds = time.perf_counter() - started
    write_run_record(result, settings, local_reward_weight, resume)
    return result


def write_run_record(result: MultiAgentResult, settings, local_reward_weight: float, resume: str | None) -> Path:
    """``OUT/run.json``: seed, rounds, wall-clock seconds (summed over the resumed parts of a run), the
    best model's validation record and the settings; what :func:`ship` puts beside a shipped model."""
    path = result.out_dir / "run.json"
    earlier = json.loads(path.read_text()).get("wall_seconds", 0.0) if resume and path.is_file() else 0.0
    best_record = result.best_model_path.with_suffix(".json")
    record = {
        "kind": "decentralized",
        "seed": settings.seed,
        "trained_rounds": result.rounds,
        "wall_seconds": round(earlier + result.seconds, 1),
        "interrupted": result.interrupted,
        "local_reward_weight": local_reward_weight,
        "best_model": json.loads(best_record.read_text()) if best_record.is_file() else None,
        "multi_agent": json.loads((result.out_dir / "multi_agent.json").read_text()),
        "settings": settings.model_dump(mode="json"),
    }
    atomic_write_text(path, json.dumps(record, indent=2))
    return path


def ship(run_dir: str | Path, destination: str | Path) -> Path:
    """Copy a run's best model to ``destination`` (a ``.zip``) with its ``run.json`` beside it
    (``destination`` with ``.json``): settings, seed, rounds and wall-clock time of the run that made it."""
    run_dir, destination = Path(run_dir), Path(destination)
    record = run_dir / "run.json"
    if not record.is_file():
        raise UserError(f"{run_dir} holds no finished run (no run.json); train one with 'greengossip train "
                        "--multi-agent' first")
    best = run_dir / "best_model.zip"
    destination.parent.mkdir(parents=True, exist_ok=True)
    data = (best if best.is_file() else run_dir / "model.zip").read_bytes()
    atomic_write_bytes(destination, lambda handle: handle.write(data))
    shipped = json.loads(record.read_text())
    shipped["multi_agent"]["scheduler_spec"] = DECENTRALIZED_PREFIX + str(destination)  # not the run folder
    atomic_write_text(destination.with_suffix(".json"), json.dumps(shipped, indent=2))
    return destination


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m greengossip.training.multi_agent`` (``greengossip train --multi-agent`` has the
    same ones)."""
    parser.add_argument("--config", default=None,
                        help=f"env scenario YAML (default {DEFAULT_CONFIG}; none with a settings suite section)")
    parser.add_argument("--settings", default=None, help="training settings YAML (its ppo section is used)")
    parser.add_argument("--timesteps", type=int, default=None, help="env rounds over all envs")
    parser.add_argument("--seed", type=int, default=None, help="training seed (< 10000)")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel envs (each gives N agents)")
    parser.add_argument(
        "--out", default=None, help="output folder (default: runs/decentralized-<config>-s<seed>)"
    )
    parser.add_argument("--resume", default=None, metavar="latest|PATH", help="go on from a checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="--out holds an earlier run: delete its files first")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop training after this many minutes",
    )
    parser.add_argument(
        "--local-reward-weight",
        type=float,
        default=0.0,
        help="weight of each node's local reward component (0 = pure team reward)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the final comparison with the heuristics"
    )
    parser.add_argument("--ship", default=None, metavar="ZIP",
                        help="at the end, copy the best model to ZIP with the run's record (ZIP with .json) beside it, "
                        "e.g. agents/pretrained/decentralized.zip")


def run(args: argparse.Namespace) -> int:
    """Entry point for ``greengossip train --multi-agent`` and ``python -m greengossip.training.multi_agent``."""
    algo = getattr(args, "algo", None)
    if algo not in (None, "ppo"):
        raise UserError(
            f"--multi-agent trains a shared per-node policy with PPO (SuperSuit + SB3); --algo {algo} "
            "is not supported there. Drop --algo or use --algo ppo"
        )
    for option in ("imitate", "prior"):
        if getattr(args, option, None):
            raise UserError(f"--{option} applies to the centralized scheduler; --multi-agent does not support it")
    settings = load_settings(
        args.settings,
        per_node=True,
        algo="ppo",
        total_timesteps=args.timesteps,
        seed=args.seed,
        n_envs=args.n_envs,
        time_limit_minutes=getattr(args, "time_limit", None),
        progress_bar=False if args.no_progress else None,
        compare=False if args.no_compare else None,
    )
    if settings.suite is not None and args.config is not None:
        raise SettingsError("suite: the suite's families are the training scenarios; drop --config or the "
                            "settings' suite section")
    name = "suite" if settings.suite is not None else Path(args.config or DEFAULT_CONFIG).stem
    out = args.out or f"runs/decentralized-{name}-s{settings.seed}"
    command = shlex.join(["greengossip", "train", "--multi-agent",
                          *(["--config", str(args.config)] if args.config else []),
                          *(["--settings", str(args.settings)] if args.settings else []),
                          "--local-reward-weight", str(args.local_reward_weight), "--out", str(out), "--resume",
                          "latest"])
    result = train_multi_agent(
        args.config, settings, out, local_reward_weight=args.local_reward_weight, resume=args.resume,
        overwrite=args.overwrite, resume_command=command,
    )
    if result.interrupted:
        return EXIT_INTERRUPTED
    if getattr(args, "ship", None):
        LOG.info("shipped %s", ship(result.out_dir, args.ship))
    return 1 if result.comparison_error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m greengossip.training.multi_agent", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
