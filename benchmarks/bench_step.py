"""Step speed of the environment, and how much the batched round gains over the per-node reference.

For each fleet size N the default config is copied with ``n_nodes = N`` and a random-geometric graph
whose radius shrinks as sqrt(32 / N) from the default 0.35 at N = 32 (so the mean degree stays about
12 and the graph stays sparse); the adjacency observation is dropped above 128 nodes. Every node trains
and broadcasts in full (action 2) every round.

Columns: env step (``env.step``: transition + observation + info), the batched ``transition`` alone,
the per-node ``reference_transition`` on the same states and the same round randomness, the speed-up
reference / batched, and the largest parameter difference between the two (a sanity check that both
computed the same round). Times are medians over the rounds: the machine may be shared.

``--threads`` (default 1) sets torch's intra-op threads. The tensors of one round are small, and on a
machine whose cores are busy with other work two OpenMP threads that wait for each other make a step
tens of times slower than one thread does.

    python benchmarks/bench_step.py --rounds 10 --sizes 8 32 128 512
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch

from envs.config import EnvConfig
from envs.gossip_env import EdgeLearningEnv
from envs.reference import reference_transition
from envs.simulator import draw_randomness, transition

ACTION_FULL = 2


def config_for(n_nodes: int, rounds: int) -> EnvConfig:
    base = EnvConfig()
    radius = min(1.5, base.topology.radius * math.sqrt(32 / n_nodes))
    data = base.model_dump()
    data.update(n_nodes=n_nodes, max_rounds=max(base.max_rounds, rounds + 4), target_accuracy=1.0)
    data["topology"].update(kind="random_geometric", radius=radius)
    data["observation"].update(adjacency=n_nodes <= 128)
    return EnvConfig.model_validate(data)


def time_env_steps(config: EnvConfig, rounds: int, seed: int) -> list[float]:
    env = EdgeLearningEnv(config)
    env.reset(seed=seed)
    action = np.full(config.n_nodes, ACTION_FULL, dtype=np.int64)
    env.step(action)  # warm-up: first calls allocate
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        times.append(time.perf_counter() - start)
        if terminated or truncated:
            env.reset()
    return times


def time_transitions(
    config: EnvConfig, rounds: int, seed: int
) -> tuple[list[float], list[float], float, int]:
    """Batched and reference round times on the same states and randomness; the largest |Δparams|."""
    env = EdgeLearningEnv(config)
    env.reset(seed=seed)
    scenario, state = env.scenario, env.sim_state
    action = torch.full((config.n_nodes,), ACTION_FULL, dtype=torch.long)
    transition(config, scenario, state, action, draw_randomness(config, scenario, state.round))  # warm-up
    batched, reference, worst = [], [], 0.0
    for _ in range(rounds):
        noise = draw_randomness(config, scenario, state.round)
        start = time.perf_counter()
        fast, _ = transition(config, scenario, state, action, noise)
        middle = time.perf_counter()
        slow, _ = reference_transition(config, scenario, state, action, noise)
        end = time.perf_counter()
        batched.append(middle - start)
        reference.append(end - middle)
        worst = max(worst, float((fast.params - slow.params).abs().max()))
        state = fast
    return batched, reference, worst, int(scenario.edge_src.numel()) // 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per size (after one warm-up)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128, 512], help="fleet sizes N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}; {args.rounds} rounds per size, all nodes train + full broadcast\n")

    default_steps = time_env_steps(EnvConfig(), args.rounds, args.seed)
    median_ms, mean_ms = 1e3 * statistics.median(default_steps), 1e3 * statistics.mean(default_steps)
    print(f"default config (N = {EnvConfig().n_nodes}): env.step median {median_ms:.2f} ms, "
          f"mean {mean_ms:.2f} ms\n")

    print("| N | edges | env steps/s | env step ms | batched round ms | reference round ms | speed-up "
          "| max abs Δparams |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        config = config_for(n, args.rounds)
        steps = statistics.median(time_env_steps(config, args.rounds, args.seed))
        batched, reference, worst, edges = time_transitions(config, args.rounds, args.seed)
        fast, slow = statistics.median(batched), statistics.median(reference)
        print(f"| {n} | {edges} | {1 / steps:.1f} | {1e3 * steps:.2f} | {1e3 * fast:.2f} | {1e3 * slow:.1f} "
              f"| {slow / fast:.1f}x | {worst:.1e} |", flush=True)


if __name__ == "__main__":
    main()
