"""Per attack kind: how far trust sees the attackers, and how much honest accuracy they cost.

Each kind runs alone on configs/attack_heavy.yaml's fleet and defence (its attacker share, one kind at a
time), every node training and broadcasting in full every round (the D-PSGD schedule) for a fixed number
of rounds. Prints a Markdown table of, per kind, the mean over seeds and rounds of the attackers' trust as
the observation shows it (1 = fully trusted; honest nodes for comparison), the honest accuracy after the
last round, and the harm: the honest accuracy the attack cost against its attack-free twin
(``info["harm"]``, where the env reports it).

    python benchmarks/attack_harm.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

from greengossip import envs  # noqa: F401
from greengossip.envs.config import load_config
from greengossip.envs.dynamics.attacks import ATTACK_KINDS
from greengossip.envs.observation import NODE_INDEX


def episode(config: dict, seed: int) -> tuple[float, float, float, float]:
    """(attackers' mean trust, honest nodes' mean trust, final honest accuracy, final harm)."""
    env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
    env.reset(seed=seed)
    honest = env.unwrapped.scenario.honest.cpu().numpy()
    action = np.full(env.unwrapped.n_nodes, 2)
    attacker_trust, honest_trust = [], []
    while True:
        obs, _, terminated, truncated, info = env.step(action)
        trust = obs["nodes"][:, NODE_INDEX["trust"]]
        attacker_trust.append(trust[~honest].mean())
        honest_trust.append(trust[honest].mean())
        if terminated or truncated:
            return (float(np.mean(attacker_trust)), float(np.mean(honest_trust)), info["final_accuracy"],
                    float(info.get("harm", float("nan"))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/attack_heavy.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=60, help="rounds per episode (no early end)")
    parser.add_argument("--kinds", nargs="+", default=list(ATTACK_KINDS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_config(args.config).model_dump()
    base.update(target_accuracy=1.0, max_rounds=args.rounds)
    print(f"{args.config}: {base['attack']['fraction']:.0%} attackers of one kind, defence "
          f"{base['defence']['aggregator']}, {args.rounds} rounds, seeds {args.seeds}\n")
    print("| attack | attackers' trust | honest nodes' trust | honest accuracy | harm |")
    print("|---|---:|---:|---:|---:|")
    for kind in args.kinds:
        config = {**base, "attack": {**base["attack"], "kinds": [kind]}}
        runs = np.array([episode(config, seed) for seed in args.seeds])
        means = runs.mean(0)
        print(f"| {kind} | {means[0]:.2f} | {means[1]:.2f} | {means[2]:.3f} | {means[3]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
