"""The privacy-utility curve of private telemetry: ε per node per day against carbon-to-target and drop-outs.

Runs one rule (by default the private sensor field's rule that reads the battery) on a config (by
default ``configs/scenarios/private_sensor_field.yaml``) without privacy and at several daily ε. Each daily ε
is split as the shipped config splits its 1 ε a day: ``--bit-share`` of it buys the one-bit battery report's
two memoised values (RAPPOR's f chosen so that 2·ε∞ = bit share × daily ε) and each load report costs a
``--reports-per-day``-th of it. For each setting and seed, one env instance is seeded once and plays
``--episodes`` episodes in turn (unseeded resets), so its devices' lifetime accountants carry over from
episode to episode. Seeds default to the validation split (10000..10009); pass ``--seeds`` for others.

Prints, and with ``--out`` writes, a Markdown table: ε spent per device per simulated day (mean over devices
at the end of each lifetime), targets met, mean carbon-to-target over the episodes that met it, its change
against no privacy, and drop-outs per episode (nodes that did not do what they were asked: refusals and
mid-round brown-outs).

    python benchmarks/privacy_utility.py --out docs/privacy_utility.md
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from greengossip import envs  # noqa: F401
from greengossip.agents.heuristics import build_heuristic
from greengossip.envs.config import load_config

# the private sensor field's rule that reads the telemetry (the mains nodes wait while the reports say most
# battery nodes cannot pay a round), the rule ``greengossip ablate`` selects for the field on validation seeds
RULE = "battery_quorum:period=1"
DAILY_EPSILONS = (0.25, 1.0, 4.0, 16.0, 64.0)
VALIDATION_SEEDS = tuple(range(10000, 10010))


def flip_for(epsilon_infinity: float) -> float:
    """RAPPOR's f whose memoised one-bit response costs ``epsilon_infinity``: 2·ln((1 - f/2)/(f/2)) = ε∞."""
    return 2.0 / (1.0 + math.exp(epsilon_infinity / 2.0))


def privacy_at(privacy: dict, daily_epsilon: float, bit_share: float, reports_per_day: float) -> dict:
    """The config's privacy block paced at ``daily_epsilon``, split between the bit and the load reports."""
    return {**privacy, "daily_epsilon": daily_epsilon, "afford_flip": flip_for(bit_share * daily_epsilon / 2),
            "epsilon_per_report": daily_epsilon / reports_per_day}


def run(config: dict, seeds: list[int], episodes: int, rule: str) -> dict[str, float]:
    carbon, reached, dropouts, per_day = [], 0, [], []
    for seed in seeds:
        env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
        for episode in range(episodes):
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
        per_day.append(info.get("epsilon_per_day", 0.0))
        env.close()
    return {"per_day": float(np.mean(per_day)), "reached": reached, "episodes": len(seeds) * episodes,
            "carbon": float(np.mean(carbon)) if carbon else float("nan"), "dropouts": float(np.mean(dropouts))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="scenarios/private_sensor_field",
                        help="config name or YAML path (default: the private sensor field)")
    parser.add_argument("--rule", default=RULE, help=f"scheduler spec (default: {RULE})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(VALIDATION_SEEDS))
    parser.add_argument("--episodes", type=int, default=1, help="episodes per seed, one device lifetime")
    parser.add_argument("--bit-share", type=float, default=0.8, help="share of the daily ε for the one-bit report")
    parser.add_argument("--reports-per-day", type=float, default=4.0, help="load reports the daily ε buys")
    parser.add_argument("--daily-epsilons", type=float, nargs="+", default=list(DAILY_EPSILONS))
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = load_config(args.config).model_dump()
    split = "validation" if all(10000 <= s < 20000 for s in args.seeds) else "given"
    lines = [f"`{args.config}`, scheduler `{args.rule}`, {split} seeds {args.seeds[0]}..{args.seeds[-1]} "
             f"({len(args.seeds)}), {args.episodes} episode(s) per seed (one device lifetime each); each daily ε "
             f"split {args.bit_share:.0%} to the one-bit report's two values, the rest to "
             f"{args.reports_per_day:g} load reports a day. Written by `benchmarks/privacy_utility.py`.", "",
             "| privacy | ε per node per day (spent) | targets met | carbon to target (g) | vs no privacy "
             "| drop-outs per episode |", "|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    settings = [("none", {**base["privacy"], "mechanism": "none"})]
    for eps in args.daily_epsilons:
        privacy = privacy_at(base["privacy"], eps, args.bit_share, args.reports_per_day)
        settings.append((f"ε/day ≤ {eps:g} (f = {privacy['afford_flip']:.2f}, ε/report = "
                         f"{privacy['epsilon_per_report']:g})", privacy))
    baseline = None
    for label, privacy in settings:
        result = run({**base, "privacy": privacy}, args.seeds, args.episodes, args.rule)
        baseline = result["carbon"] if baseline is None else baseline
        line = (f"| {label} | {result['per_day']:.2f} | {result['reached']}/{result['episodes']} "
                f"| {result['carbon']:.2f} | {result['carbon'] / baseline - 1:+.0%} | {result['dropouts']:.1f} |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        Path(args.out).write_text("# Privacy-utility curve\n\n" + "\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
