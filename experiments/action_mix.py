"""Which actions a saved scheduler takes: the share of node-rounds per action on held-out seeds.

    python experiments/action_mix.py runs/res3-s2/best_model.zip runs/res3-s3/model.zip [--config C] [--seeds 10]

Runs the deterministic policy of each model on validation seeds 10000.. of the scenario (all seeds as one
batched program, up to each episode's end) and prints the shares of idle / train / train + full /
train + 8-bit / train + top-10 % / train + top-1 %, with carbon-to-target and rounds. This is how the
drift of the undiscounted residual runs was found (docs/results.md): their late checkpoints put half of
all node-rounds on top-1 % messages, cheap per round and slow to converge.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from greengossip.envs.config import load_config
from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.training.rollout import play_vec_episodes
from greengossip.training.settings import FIRST_VALIDATION_SEED

ACTION_NAMES = ("idle", "train", "full", "8-bit", "top-10%", "top-1%")


def action_mix(model, config, seeds: list[int]) -> tuple[np.ndarray, list[dict]]:
    """(K,) share of node-rounds per action until each episode's end, and the episodes' last infos."""
    venv = GossipVecEnv(len(seeds), config=config)
    counts = np.zeros(N_ACTIONS, dtype=np.int64)

    def count(action: np.ndarray, running: np.ndarray) -> None:
        nonlocal counts
        counts += np.bincount(action.reshape(len(seeds), -1)[running].ravel(), minlength=N_ACTIONS)

    finals = play_vec_episodes(model, venv, seeds, on_action=count)
    venv.close()
    return counts / counts.sum(), finals


def main(argv: list[str] | None = None) -> None:
    from sb3_contrib import MaskablePPO

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="saved MaskablePPO .zip files")
    parser.add_argument("--config", default="configs/default.yaml", help="env scenario (default: default.yaml)")
    parser.add_argument("--seeds", type=int, default=10, help="validation seeds 10000.. to run (default 10)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config)
    seeds = list(range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + args.seeds))
    print("| model | " + " | ".join(ACTION_NAMES) + " | carbon to target (g) | targets | rounds |")
    print("|---|" + "---:|" * (len(ACTION_NAMES) + 3))
    for path in args.models:
        shares, finals = action_mix(MaskablePPO.load(path, device="cpu"), config, seeds)
        reached = [f for f in finals if f.get("carbon_to_target_g") is not None]
        carbon = np.mean([f["carbon_to_target_g"] for f in reached]) if reached else float("nan")
        rounds = np.mean([f["episode_rounds"] for f in finals])
        print(f"| {path} | " + " | ".join(f"{share:.2f}" for share in shares)
              + f" | {carbon:.1f} | {len(reached)}/{len(finals)} | {rounds:.1f} |")


if __name__ == "__main__":
    main()
