"""Honest accuracy on configs/attack_heavy.yaml with and without the attackers, for every defence.

Every node trains and broadcasts in full every round (the D-PSGD schedule) for a fixed number of rounds
(the target is lifted so that no episode ends early), so the figures isolate what the aggregation rule
does. Prints a Markdown table: mean over seeds of the honest nodes' accuracy after the last round (full
test split), the first round at which the config's own target was reached, and the mean attack
influence per round.

    python benchmarks/security_figures.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

from greengossip import envs  # noqa: F401
from greengossip.envs.config import load_config

DEFENCES = {
    "mean": {"aggregator": "mean"},
    "median": {"aggregator": "median"},
    "trimmed_mean": {"aggregator": "trimmed_mean", "trim_fraction": 0.35},
    "clipped_gossip": {"aggregator": "clipped_gossip", "clip_quantile": 0.3},
    "clipped_gossip + trust": {"aggregator": "clipped_gossip", "clip_quantile": 0.3, "trust_weighting": True},
}


def episode(config: dict, seed: int, target: float) -> tuple[float, int | None, float]:
    env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
    env.reset(seed=seed)
    action = np.full(env.unwrapped.n_nodes, 2)
    influence, reached = [], None
    while True:
        _, _, terminated, truncated, info = env.step(action)
        influence.append(info["attack_influence"])
        if reached is None and info["accuracy"] >= target:
            reached = info["round"]
        if terminated or truncated:
            return info["final_accuracy"], reached, float(np.mean(influence))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/attack_heavy.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=60, help="rounds per episode (no early end)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_config(args.config).model_dump()
    target = base["target_accuracy"]
    base.update(target_accuracy=1.0, max_rounds=args.rounds)
    print(f"{args.config}: {base['attack']['fraction']:.0%} attackers ({', '.join(base['attack']['kinds'])}), "
          f"{args.rounds} rounds, seeds {args.seeds}\n")
    print(f"| defence | attack | honest accuracy after {args.rounds} rounds | first round at {target} (reached) "
          "| attack influence |")
    print("|---|---|---:|---:|---:|")
    for name, defence in DEFENCES.items():
        for attacked in (False, True):
            config = {**base, "defence": defence}  # every other defence setting at its default
            if not attacked:
                config["attack"] = {**base["attack"], "fraction": 0.0}
            runs = [episode(config, seed, target) for seed in args.seeds]
            reached = [r for _, r, _ in runs if r is not None]
            rounds = f"{np.mean(reached):.0f} ({len(reached)}/{len(runs)})" if reached else f"— (0/{len(runs)})"
            print(f"| {name} | {'on' if attacked else 'off'} | {np.mean([a for a, _, _ in runs]):.3f} | {rounds} "
                  f"| {np.mean([i for _, _, i in runs]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
