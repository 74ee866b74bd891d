"""GreenGossip on Ray RLlib: ``register_env``, one local training iteration, and the multi-machine launch.

RLlib is an optional extra (``pip install -e ".[rllib]"``; it pins its own gymnasium, so give it its own
virtual environment). One iteration on the local machine::

    python examples/rllib_example.py --config configs/tiny.yaml --iterations 1

Centralized scheduler (default): the flat single-agent env ``GreenGossip/EdgeLearningFlat-v3``,
``MultiDiscrete([6] * N)`` actions. ``--multi-agent``: the PettingZoo ParallelEnv of
``envs/multi_agent.py`` through RLlib's ``ParallelPettingZooEnv``, every node mapped to one shared policy
(parameter sharing, as ``greengossip train --multi-agent`` does with SB3).

More than one machine (every machine needs the same Python environment with this project installed)::

    # on the head node
    ray start --head --port=6379
    # on every other node
    ray start --address=<head-node-ip>:6379
    # then, on the head node, the driver: env runners spread over the cluster's CPUs
    python examples/rllib_example.py --address auto --config configs/default.yaml \\
        --num-env-runners 16 --iterations 200 --out runs/rllib
    # when done, on every node
    ray stop

The scenario YAML is read here, on the driver, and shipped to the env runners as a dict, so worker
nodes need the package but not the config file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ENV_NAME = "greengossip_flat"
MULTI_AGENT_ENV_NAME = "greengossip_parallel"
SHARED_POLICY = "shared_node_policy"


def _flat_env_creator(env_config: dict):
    from greengossip import envs  # noqa: F401  (registers the ids inside the env-runner process)
    from greengossip.envs.wrappers import make_flat_env

    return make_flat_env(config=env_config.get("config"))


def _parallel_env_creator(env_config: dict):
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    from greengossip.envs.multi_agent import EdgeLearningParallelEnv

    return ParallelPettingZooEnv(
        EdgeLearningParallelEnv(
            config=env_config.get("config"), local_reward_weight=env_config.get("local_reward_weight", 0.0)
        )
    )


def register() -> None:
    """Make the two names known to RLlib (``PPOConfig().environment(ENV_NAME, env_config={...})``)."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, _flat_env_creator)
    register_env(MULTI_AGENT_ENV_NAME, _parallel_env_creator)


def build_config(args: argparse.Namespace):
    from ray.rllib.algorithms.ppo import PPOConfig

    scenario = yaml.safe_load(Path(args.config).read_text())  # shipped as a dict: workers need no file
    config = (
        PPOConfig()
        .framework("torch")
        .env_runners(
            num_env_runners=args.num_env_runners, num_envs_per_env_runner=1, rollout_fragment_length="auto"
        )
        .training(
            train_batch_size_per_learner=args.train_batch_size,
            minibatch_size=args.minibatch_size,
            num_epochs=args.num_epochs,
            lr=args.lr,
            gamma=0.99,
            lambda_=0.95,
        )
        .debugging(seed=args.seed)
    )
    if args.multi_agent:
        config = config.environment(
            MULTI_AGENT_ENV_NAME,
            env_config={"config": scenario, "local_reward_weight": args.local_reward_weight},
        ).multi_agent(
            policies={SHARED_POLICY}, policy_mapping_fn=lambda agent_id, episode, **kwargs: SHARED_POLICY
        )
    else:
        config = config.environment(ENV_NAME, env_config={"config": scenario})
    return config


def _metric(result: dict, *path: str) -> float | None:
    value = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="configs/tiny.yaml", help="env scenario YAML (read on the driver)"
    )
    parser.add_argument("--iterations", type=int, default=1, help="RLlib training iterations")
    parser.add_argument("--multi-agent", action="store_true", help="one agent per node, one shared policy")
    parser.add_argument(
        "--local-reward-weight", type=float, default=0.0, help="(--multi-agent) local reward weight"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto' after `ray start`); default: a local Ray",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=2, help="CPUs of the local Ray (ignored with --address)"
    )
    parser.add_argument(
        "--num-env-runners",
        type=int,
        default=0,
        help="remote env-runner actors (0 = sample in the driver process)",
    )
    parser.add_argument("--train-batch-size", type=int, default=256, help="env steps per iteration")
    parser.add_argument("--minibatch-size", type=int, default=64)
    parser.add_argument("--num-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save a checkpoint here at the end")
    args = parser.parse_args(argv)

    import ray

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        register()
        config = build_config(args)
        algo = config.build_algo() if hasattr(config, "build_algo") else config.build()  # build() before 2.43
        summary: dict = {}
        for iteration in range(1, args.iterations + 1):
            started = time.perf_counter()
            result = algo.train()
            summary = {
                "iteration": iteration,
                "seconds": round(time.perf_counter() - started, 2),
                "env_steps_sampled": _metric(result, "env_runners", "num_env_steps_sampled_lifetime")
                or _metric(result, "num_env_steps_sampled_lifetime"),
                "episodes": _metric(result, "env_runners", "num_episodes_lifetime"),
                "episode_return_mean": _metric(result, "env_runners", "episode_return_mean"),
                "episode_len_mean": _metric(result, "env_runners", "episode_len_mean"),
            }
            print(json.dumps(summary), flush=True)
        if args.out:
            checkpoint = algo.save(str(Path(args.out).resolve()))
            summary["checkpoint"] = str(getattr(checkpoint, "checkpoint", checkpoint))
            print(f"checkpoint saved to {args.out}", flush=True)
        algo.stop()
        return summary
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
