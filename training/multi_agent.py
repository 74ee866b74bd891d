"""Decentralized scheduling: one policy shared by every node, trained with SuperSuit + Stable-Baselines3.

    greengossip train --multi-agent --config configs/tiny.yaml --settings configs/train/tiny.yaml
    python -m greengossip.training.multi_agent --config configs/tiny.yaml --settings configs/train/tiny.yaml   # the same

Each node of ``greengossip.envs.multi_agent.EdgeLearningParallelEnv`` is an agent with the same spaces, so SuperSuit
turns one env of ``N`` nodes into an SB3 vector env of ``N`` "envs" (``pettingzoo_env_to_vec_env_v1``),
``concat_vec_envs_v1`` stacks ``n_envs`` copies, and a plain SB3 PPO learns one per-node policy from every
node's experience at once (parameter sharing; Terry et al., "Revisiting parameter sharing in multi-agent
deep RL", 2020). The policy reads ``LOCAL_OBS_DIM`` numbers whatever the fleet size, so a policy trained
on 8 nodes runs on 200.

Counting: ``--timesteps`` / ``total_timesteps`` are env rounds summed over envs, as for the centralized
trainer (same simulator cost); SB3 itself counts node decisions, ``N`` per round, and so do its logs
(``time/total_timesteps``, ``charts/steps_per_second``). ``monitor.csv`` has one row per node and episode.

What a run leaves in ``--out``: ``model.zip`` (final), ``best_model.zip`` (+ ``.json``, best mean return
on the validation seeds 10,000..), ``checkpoints/``, ``logs/`` (TensorBoard + progress.csv),
``monitor.csv``, ``evaluations.csv``, ``settings.yaml``, ``env_config.yaml``, ``multi_agent.json``,
``train.log`` and ``comparison/`` (the evaluation harness: the shared policy as a scheduler,
``decentralized:<path>``, beside every heuristic on the test seeds 20,000..).

For the harness, :func:`load_decentralized_scheduler` wraps a trained shared policy as a scheduler with
the one interface ``predict(observation, state, episode_start, deterministic) -> (action, state)``: it
takes the centralized ``Dict`` observation, rebuilds each node's local view from it and the graph, and
lets every node pick its own action (masked to what it can afford).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DECENTRALIZED_PREFIX = "decentralized:"
LOG = logging.getLogger("greengossip.multi_agent")


# ---------------------------------------------------------------------------------------------- env
def _seeded_sb3_wrapper():
    """SuperSuit's SB3 wrapper, with the seeding SB3 >= 2 expects (``VecEnv.seed`` then ``reset()``).

    SuperSuit 3.11's wrapper forwards ``seed`` to its gymnasium ``ConcatVecEnv``, which has none, so
    ``PPO(..., seed=s)`` fails with AttributeError; here the seed is kept and handed to the next reset,
    where ConcatVecEnv gives copy ``i`` the seed ``s + i``."""
    from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper

    class SeededSB3VecEnvWrapper(SB3VecEnvWrapper):
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

    return SeededSB3VecEnvWrapper


def make_vec_env(
    config,
    n_envs: int = 1,
    local_reward_weight: float = 0.0,
    num_cpus: int = 0,
    seed: int | None = None,
    monitor_file: str | Path | None = None,
):
    """SB3 ``VecEnv`` of ``n_envs`` parallel envs x ``N`` nodes (one SB3 env per node), for parameter sharing.

    ``num_cpus`` > 1 runs the copies in SuperSuit's worker processes; 0 keeps them in this process.
    ``seed``: copy ``i`` resets with ``seed + i`` on the first reset (None: unseeded).
    """
    import supersuit as ss
    from stable_baselines3.common.vec_env import VecMonitor

    from greengossip.envs.multi_agent import EdgeLearningParallelEnv

    parallel = EdgeLearningParallelEnv(config=config, local_reward_weight=local_reward_weight)
    vec = ss.pettingzoo_env_to_vec_env_v1(parallel)
    vec = ss.concat_vec_envs_v1(vec, n_envs, num_cpus=num_cpus, base_class="gymnasium")
    venv = _seeded_sb3_wrapper()(vec)
    if seed is not None:
        venv.seed(seed)
    return VecMonitor(venv, None if monitor_file is None else str(monitor_file))


# ---------------------------------------------------------------------------------------------- scheduler
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
        from greengossip.envs.multi_agent import neighbour_table_from_adjacency

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
        import torch

        from greengossip.envs.multi_agent import local_observations

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
    from stable_baselines3.common.save_util import load_from_zip_file

    from greengossip.envs.multi_agent import local_observation_space

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
    """A trained shared per-node PPO policy (``model.zip`` of ``train_multi_agent``) as a scheduler.

    ``path`` may omit ``.zip`` and may carry the ``decentralized:`` prefix. ``env``: the (single-agent)
    env the scheduler will act in, which gives it the graph; without one the observation must include
    ``adjacency``. ``config`` (optional path / dict / EnvConfig) is checked for that up front.
    """
    from stable_baselines3 import PPO

    from greengossip.envs.multi_agent import LOCAL_OBS_DIM, local_observation_space

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
        from greengossip.envs.config import load_config

        if not load_config(config).observation.adjacency:
            raise ValueError(
                "this config has observation.adjacency: false, so the observation carries no graph; "
                "pass env= to load_decentralized_scheduler so the scheduler can read the scenario's"
            )
    model.set_random_seed(seed)
    return DecentralizedScheduler(model, env=env, seed=seed, path=file)


# ---------------------------------------------------------------------------------------------- training
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


def _decentralized_eval_callback():
    from stable_baselines3.common.callbacks import BaseCallback

    class DecentralizedEvalCallback(BaseCallback):
        """Every ``eval_freq`` rounds (and at the end): the shared policy as a fleet scheduler on fixed
        held-out seeds of the single-agent env; logs ``eval/*``, keeps ``best_model.zip`` by mean return."""

        def __init__(self, env, seeds: Sequence[int], eval_freq_rounds: int, n_nodes: int, out: Path):
            super().__init__()
            self.env, self.seeds, self.n_nodes = env, list(seeds), n_nodes
            self.eval_freq = eval_freq_rounds * n_nodes  # SB3 counts node decisions
            self.best_path, self.csv_path = out / "best_model.zip", out / "evaluations.csv"
            self.best_score, self.best_summary = -math.inf, {}
            self._last = 0

        def _on_step(self) -> bool:
            if self.num_timesteps - self._last >= self.eval_freq:
                self.evaluate()
            return True

        def _on_training_end(self) -> None:
            if self._last != self.num_timesteps or not self.best_path.is_file():
                self.evaluate()

        def evaluate(self) -> dict[str, float]:
            self._last = self.num_timesteps
            scheduler = DecentralizedScheduler(self.model, env=self.env)
            episodes = [run_episode(scheduler, self.env, seed) for seed in self.seeds]
            summary = {key: float(np.mean([e[key] for e in episodes])) for key in episodes[0]}
            for key, value in summary.items():
                self.logger.record(f"eval/{key}", value)
            improved = summary["return"] > self.best_score
            if improved:
                self.best_score, self.best_summary = summary["return"], summary
                self.model.save(self.best_path)
                self.best_path.with_suffix(".json").write_text(
                    json.dumps(
                        {
                            "score": self.best_score,
                            "trained_rounds": self.num_timesteps // self.n_nodes,
                            **summary,
                        },
                        indent=2,
                    )
                )
            new_file = not self.csv_path.is_file()
            with self.csv_path.open("a") as handle:
                if new_file:
                    handle.write(",".join(["trained_rounds", *summary, "best"]) + "\n")
                handle.write(
                    ",".join(
                        str(v) for v in [self.num_timesteps // self.n_nodes, *summary.values(), improved]
                    )
                    + "\n"
                )
            LOG.info(
                "eval @ %d rounds: return %.3f, accuracy %.3f, carbon %.2f g, target reached %.0f%%%s",
                self.num_timesteps // self.n_nodes,
                summary["return"],
                summary["final_accuracy"],
                summary["carbon_g"],
                100 * summary["target_reached"],
                "  (new best)" if improved else "",
            )
            return summary

    return DecentralizedEvalCallback


def run_episode(scheduler, env, seed: int) -> dict[str, float]:
    """One deterministic episode of ``scheduler`` on the single-agent ``env``: return and KPIs."""
    obs, _ = env.reset(seed=seed)
    total = 0.0
    while True:
        action, _ = scheduler.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        if terminated or truncated:
            return {
                "return": total,
                "final_accuracy": float(info["final_accuracy"]),
                "carbon_g": float(info["episode_carbon_g"]),
                "energy_wh": float(info["episode_energy_wh"]),
                "rounds": float(info["episode_rounds"]),
                "target_reached": float(terminated),
            }


def train_multi_agent(
    config, settings, out_dir: str | Path, local_reward_weight: float = 0.0, resume: str | None = None
) -> MultiAgentResult:
    """Train one shared per-node PPO policy on ``config`` with ``settings`` (a ``TrainSettings``;
    its ``ppo`` section, seeds, ``n_envs``, evaluation and checkpoint settings apply)."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import configure

    from greengossip import envs
    from greengossip.envs.config import load_config

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from greengossip.training.settings import SettingsError
    from greengossip.training.train import algorithm_kwargs, setup_logging

    if settings.reward is not None:
        raise SettingsError("reward: training reward weights apply to the centralized scheduler; with "
                            "--multi-agent set the scenario's own reward (or local_reward_weight) instead")
    setup_logging(out, LOG)
    env_config = load_config(config)
    n_nodes = env_config.n_nodes
    config_path = out / "env_config.yaml"
    config_path.write_text(yaml.safe_dump(env_config.model_dump(mode="json"), sort_keys=False))
    if isinstance(config, (str, Path)):
        config_path = Path(config)  # the harness names the scenario after the file
    (out / "settings.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    (out / "multi_agent.json").write_text(
        json.dumps(
            {
                "kind": "decentralized",
                "algorithm": "PPO",
                "parameter_sharing": True,
                "local_reward_weight": local_reward_weight,
                "n_nodes_trained": n_nodes,
                "scheduler_spec": DECENTRALIZED_PREFIX + str(out / "best_model.zip"),
            },
            indent=2,
        )
    )
    torch.set_num_threads(settings.torch_threads)
    LOG.info(
        "training a shared per-node PPO policy on %s (%d nodes = agents) for %d rounds, seed %d, %d env(s), "
        "local_reward_weight %g -> %s",
        config if isinstance(config, (str, Path)) else "<config>",
        n_nodes,
        settings.total_timesteps,
        settings.seed,
        settings.n_envs,
        local_reward_weight,
        out,
    )

    # First reset here fills the simulator's caches (clear-sky years) before any worker is forked.
    eval_env = gym.make(envs.ENV_ID, config=env_config)
    eval_env.reset(seed=settings.validation_seeds[0])
    subprocess = settings.vec_env == "subprocess" or (settings.vec_env == "auto" and settings.n_envs > 1)
    venv = make_vec_env(
        env_config,
        settings.n_envs,
        local_reward_weight,
        num_cpus=settings.n_envs if subprocess else 0,
        seed=settings.seed,
        monitor_file=out / "monitor.csv",
    )
    try:
        if resume:
            path = _resume_path(out, resume)
            LOG.info("resuming from %s", path)
            model = PPO.load(path, env=venv, device=settings.device)
        else:
            policy = settings.policy
            activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[policy.activation]
            model = PPO(
                "MlpPolicy",
                venv,
                seed=settings.seed,
                device=settings.device,
                verbose=0,
                policy_kwargs={
                    "net_arch": {"pi": list(policy.pi), "vf": list(policy.vf)},
                    "activation_fn": activation,
                    "ortho_init": policy.ortho_init,
                },
                **algorithm_kwargs(settings),
            )
        model.set_logger(configure(str(out / "logs"), ["csv", "tensorboard", "log"]))
        evaluation = _decentralized_eval_callback()(
            eval_env, settings.validation_seeds, settings.eval_freq, n_nodes, out
        )
        from greengossip.training.train import training_callbacks

        texts = {
            "settings/env": "```yaml\n" + (out / "env_config.yaml").read_text() + "\n```",
            "settings/multi_agent": (out / "multi_agent.json").read_text(),
        }
        callbacks, _ = training_callbacks(settings, out, texts, evaluation, LOG)
        remaining = settings.total_timesteps * n_nodes - (model.num_timesteps if resume else 0)
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                log_interval=settings.log_interval,
                progress_bar=settings.progress_bar,
                reset_num_timesteps=not resume,
            )
        model_path = out / "model.zip"
        model.save(model_path)
    finally:
        venv.close()
        eval_env.close()
    best = out / "best_model.zip"
    if not best.is_file():
        best = model_path
    result = MultiAgentResult(
        out, model_path, best, model.num_timesteps // n_nodes, 0.0, evaluation.best_summary
    )
    LOG.info(
        "trained %d rounds (%d node decisions) in %.1f s; best model %s",
        result.rounds,
        model.num_timesteps,
        time.perf_counter() - started,
        best,
    )
    if settings.compare:
        result.comparison, result.comparison_table, result.comparison_error = compare_with_heuristics(
            best,
            config_path,
            settings.test_seeds,
            out / "comparison",
            settings.compare_workers,
            settings.progress_bar,
        )
    result.seconds = time.perf_counter() - started
    return result


def _resume_path(out: Path, resume: str) -> Path:
    if resume != "latest":
        return Path(resume)
    checkpoints = sorted(
        (out / "checkpoints").glob("model_*_steps.zip"), key=lambda p: int(p.stem.split("_")[-2])
    )
    if not checkpoints:
        raise FileNotFoundError(f"--resume latest: no checkpoint in {out / 'checkpoints'}")
    return checkpoints[-1]


def compare_with_heuristics(
    model_path: Path,
    config_path: Path,
    seeds: Sequence[int],
    out: Path,
    workers: int = 1,
    progress: bool = False,
) -> tuple[list[dict] | None, str | None, str | None]:
    """The evaluation harness on held-out seeds: ``decentralized:<model>`` beside every heuristic."""
    from greengossip.training.evaluate import run_evaluation

    spec = DECENTRALIZED_PREFIX + str(model_path)
    LOG.info("comparing %s with all heuristics on %s, seeds %d..%d", spec, config_path, seeds[0], seeds[-1])
    try:
        rows = run_evaluation(
            [spec, "all"], [str(config_path)], list(seeds), out, workers=workers, progress=progress
        )
    except Exception as exc:  # the model is saved; report the harness failure instead of losing the run
        LOG.exception("comparison failed")
        return None, None, f"{type(exc).__name__}: {exc}"
    table = (out / "results.md").read_text() if (out / "results.md").is_file() else None
    if table:
        LOG.info("comparison (%s):\n%s", out / "results.md", table)
    return rows, table, None


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m greengossip.training.multi_agent`` (``greengossip train --multi-agent`` has the same ones)."""
    from greengossip.training.train import DEFAULT_CONFIG

    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="env scenario YAML")
    parser.add_argument("--settings", default=None, help="training settings YAML (its ppo section is used)")
    parser.add_argument("--timesteps", type=int, default=None, help="env rounds over all envs")
    parser.add_argument("--seed", type=int, default=None, help="training seed (< 10000)")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel envs (each gives N agents)")
    parser.add_argument(
        "--out", default=None, help="output folder (default: runs/decentralized-<config>-s<seed>)"
    )
    parser.add_argument("--resume", default=None, metavar="latest|PATH", help="go on from a checkpoint")
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


def run(args: argparse.Namespace) -> int:
    """Entry point for ``greengossip train --multi-agent`` and ``python -m greengossip.training.multi_agent``."""
    from greengossip.training.settings import load_settings

    algo = getattr(args, "algo", None)
    if algo not in (None, "ppo"):
        raise SystemExit(
            f"--multi-agent trains a shared per-node policy with PPO (SuperSuit + SB3); --algo {algo} "
            "is not supported there. Drop --algo or use --algo ppo"
        )
    for option in ("imitate", "prior"):
        if getattr(args, option, None):
            raise SystemExit(f"--{option} applies to the centralized scheduler; --multi-agent does not support it")
    settings = load_settings(
        args.settings,
        algo="ppo",
        total_timesteps=args.timesteps,
        seed=args.seed,
        n_envs=args.n_envs,
        time_limit_minutes=getattr(args, "time_limit", None),
        progress_bar=False if args.no_progress else None,
        compare=False if args.no_compare else None,
    )
    out = args.out or f"runs/decentralized-{Path(args.config).stem}-s{settings.seed}"
    result = train_multi_agent(
        args.config, settings, out, local_reward_weight=args.local_reward_weight, resume=args.resume
    )
    return 1 if result.comparison_error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m greengossip.training.multi_agent", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
