"""Where a scheduler's carbon goes: grid draw and backbone bytes, per region, on validation seeds.

    python experiments/carbon_split.py carbon_periodic "carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02" \
        runs/s17-graded28-s0/best_model.zip [--config configs/default.yaml] [--seeds 20]

Plays each scheduler (a heuristic, a ``name:key=value`` spec or a saved model) deterministically on
validation seeds 10000.. and prints, per episode on average: carbon-to-target, rounds, the grid carbon
(energy the nodes draw from their grid) and, per region, the backbone carbon (bytes carried over the core
network, at the sender's grid intensity) with the number of broadcasts. It shows which part of the bill a
schedule can still cut (docs/results.md, "Where the carbon goes"). Test seeds are never used.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from greengossip.agents.learned import make_scheduler
from greengossip.envs.config import load_config
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.training.rollout import takes_action_masks
from greengossip.training.settings import FIRST_VALIDATION_SEED


def carbon_split(spec, config, seeds: list[int]) -> dict[str, float]:
    """Per-episode means over ``seeds``: carbon_to_target_g (reached episodes), targets, rounds, grid_g and,
    for each region, backbone_g:<region> and broadcasts:<region> (whole episodes). ``spec``: what
    ``make_scheduler`` takes, or a scheduler object (``experiments/rule_variants.py``)."""
    totals: collections.Counter = collections.Counter()
    reached_carbon = []
    for seed in seeds:
        env = EdgeLearningEnv(config)
        obs, _ = env.reset(seed=seed)
        scheduler = make_scheduler(spec, env=env, seed=0) if isinstance(spec, str) else spec
        takes_masks = takes_action_masks(scheduler)
        region_of_node = np.asarray(env.scenario.region_names)[env.scenario.region_index.cpu().numpy()]
        regions = {region: region_of_node == region for region in np.unique(region_of_node)}
        state, start, done = None, np.ones(1, dtype=bool), False
        while not done:
            kwargs = {"action_masks": env.action_masks()} if takes_masks else {}
            action, state = scheduler.predict(obs, state=state, episode_start=start, deterministic=True, **kwargs)
            start = np.zeros(1, dtype=bool)
            obs, _, terminated, truncated, info = env.step(np.asarray(action).reshape(-1))
            outcome = env.last_outcome
            totals["grid_g"] += float(outcome.carbon_grid_g.sum())
            backbone = outcome.carbon_backbone_g.cpu().numpy()
            sent = outcome.sent.cpu().numpy()
            for region, nodes in regions.items():
                totals[f"backbone_g:{region}"] += float(backbone[nodes].sum())
                totals[f"broadcasts:{region}"] += int(sent[nodes].sum())
            done = terminated or truncated
        totals["rounds"] += info["episode_rounds"]
        if terminated:
            reached_carbon.append(info["carbon_to_target_g"])
    split = {key: value / len(seeds) for key, value in totals.items()}
    split["carbon_to_target_g"] = float(np.mean(reached_carbon)) if reached_carbon else float("nan")
    split["targets"] = len(reached_carbon)
    return split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("schedulers", nargs="+", help="heuristic names, name:key=value specs or model .zip files")
    parser.add_argument("--config", default="configs/default.yaml", help="env scenario (default: default.yaml)")
    parser.add_argument("--seeds", type=int, default=20, help="validation seeds 10000.. to run (default 20)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config)
    seeds = list(range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + args.seeds))
    rows = [(spec, carbon_split(spec, config, seeds)) for spec in args.schedulers]
    regions = sorted({key.split(":", 1)[1] for _, split in rows for key in split if key.startswith("backbone_g:")},
                     key=lambda name: -rows[0][1].get(f"backbone_g:{name}", 0.0))
    print(f"Per episode, mean over {len(seeds)} validation seeds; backbone g (broadcasts) per region")
    print("| scheduler | carbon to target | targets | rounds | grid | " + " | ".join(regions) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(regions))
    for spec, split in rows:
        cells = [f"{split[f'backbone_g:{r}']:.2f} ({split[f'broadcasts:{r}']:.0f})" for r in regions]
        print(f"| `{spec}` | {split['carbon_to_target_g']:.2f} g | {split['targets']}/{len(seeds)} | "
              f"{split['rounds']:.1f} | {split['grid_g']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
