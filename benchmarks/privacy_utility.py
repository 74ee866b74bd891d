"""The privacy-utility curve of private telemetry: ε per node per day against carbon-to-target and drop-outs.

Each daily ε is split as the shipped config splits its 1 ε a day: ``--bit-share`` of it buys the one-bit
battery report's two memoised values (its f chosen so that 2·ε∞ = bit share × daily ε, RAPPOR), and each
load report costs a ``--reports-per-day``-th of it. For each daily ε (and without privacy), one env instance
on configs/private_telemetry.yaml is seeded once and plays ``--episodes`` episodes in turn (unseeded resets),
so its devices' lifetime accountants carry over from episode to episode; repeated for each seed. The
scheduler is the README's prior rule (a carbon-aware periodic schedule that reads the released battery and
harvest). Prints a Markdown table: ε spent per device per simulated day (mean over devices, at the end of
each lifetime), targets met, mean carbon-to-target over the episodes that met it, and drop-outs (nodes that
could not afford what they were asked) per episode.

    python benchmarks/privacy_utility.py --seeds 10000 10001 --episodes 2
"""

from __future__ import annotations

import argparse
import math

import gymnasium as gym
import numpy as np
import torch

from greengossip import envs  # noqa: F401
from greengossip.agents.heuristics import build_heuristic
from greengossip.envs.config import load_config

RULE = "carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02"
DAILY_EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0)


def flip_for(epsilon_infinity: float) -> float:
    """RAPPOR's f whose memoised one-bit response costs ``epsilon_infinity``: 2·ln((1 - f/2)/(f/2)) = ε∞."""
    return 2.0 / (1.0 + math.exp(epsilon_infinity / 2.0))


def run(config: dict, seeds: list[int], episodes: int, rule: str) -> dict[str, float]:
    carbon, reached, dropouts, per_day = [], 0, [], []
    for seed, episode in ((s, e) for s in seeds for e in range(episodes)):
        if episode == 0:
            env = gym.make("GreenGossip/EdgeLearning-v1", config=config)
        scheduler = build_heuristic(rule, seed=seed)
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        state, start, done, dropped = None, np.ones(1, dtype=bool), False, 0
        while not done:
            action, state = scheduler.predict(obs, state=state, episode_start=start, deterministic=True)
            start = np.zeros(1, dtype=bool)
            obs, _, terminated, truncated, info = env.step(np.asarray(action).reshape(-1))
            dropped += info["dropped_nodes"]
            done = terminated or truncated
        dropouts.append(dropped)
        if info["rounds_to_target"] is not None:
            reached += 1
            carbon.append(info["carbon_to_target_g"])
        if episode == episodes - 1:
            per_day.append(info.get("epsilon_per_day", 0.0))
    return {"per_day": float(np.mean(per_day)), "reached": reached, "episodes": len(seeds) * episodes,
            "carbon": float(np.mean(carbon)) if carbon else float("nan"),
            "dropouts": float(np.mean(dropouts))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/private_telemetry.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001, 10002, 10003, 10004])
    parser.add_argument("--episodes", type=int, default=3, help="episodes per seed, one device lifetime")
    parser.add_argument("--bit-share", type=float, default=0.8, help="share of the daily ε for the one-bit report")
    parser.add_argument("--reports-per-day", type=float, default=4.0, help="load reports the daily ε buys")
    parser.add_argument("--rule", default=RULE)
    parser.add_argument("--daily-epsilons", type=float, nargs="+", default=list(DAILY_EPSILONS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_config(args.config).model_dump()
    print(f"{args.config}, scheduler `{args.rule}`, seeds {args.seeds}, {args.episodes} episodes per seed "
          "(one device lifetime each)\n")
    print("| privacy | ε per node per day (spent) | targets met | carbon to target (g) | vs no privacy "
          "| drop-outs per episode |")
    print("|---|---:|---:|---:|---:|---:|")
    settings = [("none", {**base["privacy"], "mechanism": "none"})]
    settings += [(f"ε/day ≤ {eps:g} (f = {flip_for(args.bit_share * eps / 2):.2f}, ε/report = "
                  f"{eps / args.reports_per_day:g})",
                  {**base["privacy"], "daily_epsilon": eps, "afford_flip": flip_for(args.bit_share * eps / 2),
                   "epsilon_per_report": eps / args.reports_per_day})
                 for eps in args.daily_epsilons]
    baseline = None
    for label, privacy in settings:
        result = run({**base, "privacy": privacy}, args.seeds, args.episodes, args.rule)
        baseline = result["carbon"] if baseline is None else baseline
        print(f"| {label} | {result['per_day']:.2f} | {result['reached']}/{result['episodes']} "
              f"| {result['carbon']:.2f} | {result['carbon'] / baseline - 1:+.0%} | {result['dropouts']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
