"""The same episodes on the CPU and on another torch device (``device`` in the env config, e.g. CUDA).

For each config, a single env and a vector env of B environments run on both devices from the same seed
with the same actions: valid actions drawn at random from the CPU env's action mask, so every action kind
(sleep, train, full and compressed broadcasts) occurs. Printed per config and round count: the largest
absolute difference of the reward, of each observation key and of the info KPIs, and whether both
devices ended the episode at the same round. A second run on the device with the same seed shows whether
the device path is deterministic run to run.

The two devices sum in different orders (cuBLAS, atomics in scatter-adds), so the figures are not zero;
they should stay at float32 rounding (about 1e-6 relative) unless a threshold decision (a target met,
trust under its cut-off) flips on the two sides, which the "same end" column and a jump in the
differences would show.

    python benchmarks/device_check.py --device cuda --rounds 40 --out device_check.md
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from greengossip.envs.config import load_config
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.vector_env import EdgeLearningVectorEnv

KPIS = ("accuracy", "carbon_g", "energy_wh", "harvested_wh", "spilled_wh", "consensus_distance",
        "malicious_participants", "participants", "epsilon_spent")


def random_valid_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per node (over the last axis of ``mask``), uniform over the allowed ones."""
    scores = rng.random(mask.shape) * (mask > 0)
    return scores.argmax(-1).astype(np.int64)


def run(env, seed: int, rounds: int, action_seed: int, actions: list[np.ndarray] | None = None):
    """Steps ``env``; the actions are drawn from its own mask unless given. Returns per-round records."""
    rng = np.random.default_rng(action_seed)
    observation, _ = env.reset(seed=seed)
    records, chosen = [], []
    for t in range(rounds):
        action = actions[t] if actions is not None else random_valid_actions(observation["action_mask"], rng)
        chosen.append(action)
        observation, reward, terminated, truncated, info = env.step(action)
        records.append((observation, np.asarray(reward, dtype=np.float64), info,
                        np.asarray(terminated) | np.asarray(truncated)))
        if actions is None and np.all(records[-1][3]) and np.ndim(reward) == 0:
            break
    return records, chosen


def largest_differences(left, right) -> dict[str, float]:
    worst: dict[str, float] = {}

    def note(key: str, a, b) -> None:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        gap = np.where(both_nan, 0.0, np.abs(a - b))
        worst[key] = max(worst.get(key, 0.0), float(np.nan_to_num(gap, nan=np.inf).max(initial=0.0)))

    for (obs_a, reward_a, info_a, _), (obs_b, reward_b, info_b, _) in zip(left, right):
        note("reward", reward_a, reward_b)
        for key in obs_a:
            note(f"obs/{key}", obs_a[key], obs_b[key])
        for key in KPIS:
            if key in info_a:
                note(key, info_a[key], info_b[key])
    return worst


def first_divergence(left, right, tolerance: float = 1e-4) -> str:
    """Per environment, the first round whose node observations differ by more than ``tolerance``
    ("-" where none does)."""
    gaps = np.stack([np.abs(a[0]["nodes"] - b[0]["nodes"]).reshape(-1, *a[0]["nodes"].shape[-2:]).max(axis=(1, 2))
                     for a, b in zip(left, right)])  # (rounds, B)
    first = [np.flatnonzero(column > tolerance) for column in gaps.T]
    return " ".join(str(rounds[0]) if len(rounds) else "-" for rounds in first)


def ends(records) -> list[int]:
    return [t for t, record in enumerate(records) if np.any(record[3])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device compared with the CPU")
    parser.add_argument("--configs", nargs="+", default=["configs/default.yaml", "configs/attack_heavy.yaml"])
    parser.add_argument("--rounds", type=int, default=40, help="rounds per episode (fewer if it ends)")
    parser.add_argument("--batch", type=int, default=4, help="B of the vector env compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    lines = [f"torch {torch.__version__}, CPU against {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if torch.device(args.device).type == "cuda" else ""), ""]
    lines += ["| config | env | rounds | same end | run-to-run on device | largest |Δ| (reward, obs, KPIs) | "
              "first round with node obs |Δ| > 1e-4, per env | device s/step |", "|---|---|---:|---|---|---|---|---:|"]
    for path in args.configs:
        cpu_config = load_config(path)
        device_config = cpu_config.model_copy(update={"device": args.device})
        for kind in ("single", f"vector B={args.batch}"):
            def make(config):
                if kind == "single":
                    return EdgeLearningEnv(config)
                return EdgeLearningVectorEnv(num_envs=args.batch, config=config)

            on_cpu, actions = run(make(cpu_config), args.seed, args.rounds, args.seed)
            start = time.perf_counter()
            on_device, _ = run(make(device_config), args.seed, len(actions), args.seed, actions)
            per_step = (time.perf_counter() - start) / len(actions)
            again, _ = run(make(device_config), args.seed, len(actions), args.seed, actions)
            worst = largest_differences(on_cpu, on_device)
            repeat = largest_differences(on_device, again)
            repeat_text = "identical" if max(repeat.values()) == 0.0 else f"max |Δ| {max(repeat.values()):.1e}"
            shown = ", ".join(f"{key} {value:.1e}" for key, value in sorted(worst.items(), key=lambda kv: -kv[1])[:6])
            lines.append(f"| {path} | {kind} | {len(actions)} | {'yes' if ends(on_cpu) == ends(on_device) else 'no'} "
                         f"| {repeat_text} | {shown} | {first_divergence(on_cpu, on_device)} | {per_step:.4f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
