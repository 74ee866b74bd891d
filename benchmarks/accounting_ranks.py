"""Every heuristic's rank by carbon-to-target under marginal and under attributional network accounting.

    python benchmarks/accounting_ranks.py [--config default] [--seeds 10]

Plays each heuristic of ``greengossip.agents.heuristics.HEURISTICS`` (its default parameters)
deterministically on validation seeds 10000.. of the scenario and adds up, per episode, the carbon of
every round under both accountings (``info["carbon_marginal_g"]``, ``info["carbon_attributional_g"]``:
the grid carbon of every node, receiving included, plus the internet links' energy at the sender's grid
intensity) and its parts. The heuristics do not read the accounting, so one run gives both figures.
Carbon-to-target is the mean over the episodes that reached the target; a heuristic that reaches it in
fewer episodes ranks below every one that reaches it in more. Prints a Markdown table (docs/world_model.md,
Network energy). Test seeds are never used.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from greengossip.agents.heuristics import HEURISTICS, build_heuristic
from greengossip.envs.config import load_config
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.training.settings import FIRST_VALIDATION_SEED

ACCOUNTINGS = ("marginal", "attributional")
PARTS = ("carbon_grid_g", "carbon_marginal_g", "carbon_attributional_g")


def play(name: str, config, seeds: list[int]) -> dict[str, float]:
    """Per-heuristic means over ``seeds``: targets met, rounds and, over the episodes that met the
    target, carbon-to-target under each accounting and the grid part of it."""
    reached: dict[str, list[float]] = {key: [] for key in PARTS}
    rounds, targets = [], 0
    for seed in seeds:
        env = EdgeLearningEnv(config)
        obs, _ = env.reset(seed=seed)
        scheduler = build_heuristic(name, seed=0)
        totals = dict.fromkeys(PARTS, 0.0)
        state, start, terminated, truncated = None, np.ones(1, dtype=bool), False, False
        while not (terminated or truncated):
            action, state = scheduler.predict(obs, state=state, episode_start=start, deterministic=True)
            start = np.zeros(1, dtype=bool)
            obs, _, terminated, truncated, info = env.step(np.asarray(action).reshape(-1))
            for key in PARTS:
                totals[key] += info[key]
        rounds.append(info["episode_rounds"])
        if terminated:
            targets += 1
            for key in PARTS:
                reached[key].append(totals[key])
    summary = {key: float(np.mean(values)) if values else float("nan") for key, values in reached.items()}
    summary.update(targets=targets, rounds=float(np.mean(rounds)))
    return summary


def ranks(results: dict[str, dict[str, float]], key: str) -> dict[str, int]:
    """1 = least carbon-to-target among the heuristics that met the target most often."""
    order = sorted(results, key=lambda name: (-results[name]["targets"], results[name][key]))
    return {name: place + 1 for place, name in enumerate(order)}


def table(results: dict[str, dict[str, float]], n_seeds: int) -> str:
    marginal = ranks(results, "carbon_marginal_g")
    attributional = ranks(results, "carbon_attributional_g")
    lines = [
        "| heuristic | targets | rounds | rank marginal | carbon to target, marginal | rank attributional | "
        "carbon to target, attributional | of which grid |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sorted(results, key=marginal.get):
        r = results[name]
        lines.append(f"| `{name}` | {r['targets']}/{n_seeds} | {r['rounds']:.1f} | {marginal[name]} | "
                     f"{r['carbon_marginal_g']:.2f} g | {attributional[name]} | {r['carbon_attributional_g']:.2f} g | "
                     f"{r['carbon_grid_g']:.2f} g |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", help="scenario name or path (default: default)")
    parser.add_argument("--seeds", type=int, default=10, help="validation seeds 10000.. to run (default 10)")
    parser.add_argument("--heuristics", nargs="+", default=sorted(HEURISTICS), help="names (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config)
    seeds = list(range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + args.seeds))
    results = {name: play(name, config, seeds) for name in args.heuristics}
    print(f"Config `{args.config}`, validation seeds {seeds[0]}-{seeds[-1]}; carbon-to-target is the mean over "
          "the episodes that met the target")
    print(table(results, len(seeds)))


if __name__ == "__main__":
    main()
