"""Where one env step's time goes: each part of the round timed in place, then torch's profiler.

Two tables for B environments of N nodes (bench_step's fleets: every node trains and broadcasts in full):

* **parts**: the step's named pieces (the round's random draws, the transition and, inside it, local
  SGD, the accuracy evaluation, the gossip functions, energy; then the info, telemetry and observation
  the env builds around it), each timed where the env calls it. The wrappers replace the functions in
  the modules that call them for the duration of the run and are removed afterwards. A part's time
  includes the parts inside it; "other" is what its named children leave. Page faults per step (minor
  faults, from ``getrusage``) show the fresh memory a part touches: at B = 64 a fresh (B·N, P) block
  costs about as much to fault in as to compute (design notes 14 and 18).
* **operators**: torch's profiler over a separate run of the same steps: the aten operators by self CPU
  time, how many the step calls and how many it calls at top level. Under the profiler every call
  costs more, so read its times as shares, and the parts table for times.

    python benchmarks/profile_step.py --nodes 128                  # one env, 200 steps
    python benchmarks/profile_step.py --nodes 32 --batch 64 --rounds 60 --out profile.md
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import ACTION_FULL, config_for  # noqa: E402

from greengossip.envs.fleet_batch import FleetBatch  # noqa: E402
from greengossip.envs.gossip_env import EdgeLearningEnv  # noqa: E402
from greengossip.envs.telemetry import TelemetryChannel  # noqa: E402
from greengossip.envs.vector_env import EdgeLearningVectorEnv  # noqa: E402

# module -> functions timed where that module calls them (the name the module looks up at call time)
TIMED_FUNCTIONS = {
    "greengossip.envs.fleet_batch": ("draw_randomness", "transition", "observe", "round_kpis", "reward_components",
                                     "weighted_reward", "trust_in_nodes"),
    "greengossip.envs.telemetry": ("true_telemetry", "affordable_actions"),
    "greengossip.envs.simulator": ("local_sgd", "accuracy_per_node", "consensus_distance", "settle_energy",
                       "affordable", "decode_action", "honest_mean", "at_round"),
    "greengossip.envs.dynamics.gossip": ("broadcast", "split_finite", "neighbour_distances", "aggregate_pull",
                             "neighbour_scores", "slots"),
    "greengossip.envs.observation": ("model_lag",),
    "greengossip.envs.gossip_env": ("validate_actions", "single_env_info"),
    "greengossip.envs.vector_env": ("validate_actions",),
}
TIMED_METHODS = ((FleetBatch, ("_full_split_accuracy",)), (TelemetryChannel, ("refresh",)))
STEP = "step"


class PartTimer:
    """Inclusive wall time and minor page faults per call path (step > transition > local_sgd ...)."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, ...], float] = defaultdict(float)
        self.faults: dict[tuple[str, ...], int] = defaultdict(int)
        self.path: list[str] = []

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.path.append(name)
        key = tuple(self.path)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] += time.perf_counter() - start
            self.faults[key] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            self.path.pop()

    def wrap(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.part(name):
                return function(*args, **kwargs)

        return timed

    def clear(self) -> None:
        self.seconds.clear()
        self.faults.clear()


@contextlib.contextmanager
def instrumented(timer: PartTimer) -> Iterator[None]:
    """Every function in ``TIMED_FUNCTIONS`` and ``TIMED_METHODS`` wrapped by ``timer``, restored on exit."""
    originals: list[tuple[object, str, object]] = []
    try:
        for module_name, names in TIMED_FUNCTIONS.items():
            module = importlib.import_module(module_name)
            for name in names:
                originals.append((module, name, getattr(module, name)))
                setattr(module, name, timer.wrap(name, getattr(module, name)))
        for owner, methods in TIMED_METHODS:
            for name in methods:
                originals.append((owner, name, owner.__dict__[name]))
                setattr(owner, name, timer.wrap(name.lstrip("_"), owner.__dict__[name]))
        yield
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def make_env(n_nodes: int, n_envs: int, rounds: int, seed: int):
    """A single env (B = 1) or the batched vector env on bench_step's fleet, reset, and its step action."""
    config = config_for(n_nodes, rounds)
    if n_envs == 1:
        env = EdgeLearningEnv(config)
        action = np.full(n_nodes, ACTION_FULL, dtype=np.int64)
    else:
        env = EdgeLearningVectorEnv(num_envs=n_envs, config=config)
        action = np.full((n_envs, n_nodes), ACTION_FULL, dtype=np.int64)
    env.reset(seed=seed)
    return env, action


def profile_parts(n_nodes: int, n_envs: int, rounds: int, warmup: int, seed: int) -> tuple[PartTimer, list[float]]:
    """The parts of ``rounds`` steps after ``warmup`` untimed ones, and each step's own wall time."""
    env, action = make_env(n_nodes, n_envs, rounds + warmup, seed)
    timer, steps = PartTimer(), []
    with instrumented(timer):
        for index in range(warmup + rounds):
            if index == warmup:
                timer.clear()
            start = time.perf_counter()
            with timer.part(STEP):
                env.step(action)
            steps.append(time.perf_counter() - start)
    return timer, steps[warmup:]


def parts_table(timer: PartTimer, rounds: int, max_depth: int = 3) -> list[str]:
    """Markdown rows, each part under its parent, largest first, with what the named children leave."""
    total = timer.seconds[(STEP,)]
    lines = ["| part | ms per step | share of the step | page faults per step |", "|---|---:|---:|---:|"]

    def row(label: str, seconds: float, faults: int | None, depth: int) -> str:
        fault_text = "" if faults is None else f"{faults / rounds:.0f}"
        indent = "· " * depth
        return (f"| {indent}{label} | {1e3 * seconds / rounds:.3f} | {100 * seconds / total:.1f} % "
                f"| {fault_text} |")

    def walk(path: tuple[str, ...]) -> None:
        children = sorted((key for key in timer.seconds if len(key) == len(path) + 1 and key[:-1] == path),
                          key=lambda key: -timer.seconds[key])
        depth = len(path) - 1
        lines.append(row(path[-1], timer.seconds[path], timer.faults[path], depth))
        if not children or len(path) >= max_depth:
            return
        for child in children:
            walk(child)
        rest = timer.seconds[path] - sum(timer.seconds[child] for child in children)
        lines.append(row(f"other ({path[-1]})", rest, None, depth + 1))

    walk((STEP,))
    return lines


def profile_operators(n_nodes: int, n_envs: int, rounds: int, warmup: int, seed: int, top: int) -> list[str]:
    """Markdown rows of the aten operators by self CPU time under torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    env, action = make_env(n_nodes, n_envs, rounds + warmup, seed)
    for _ in range(warmup):
        env.step(action)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(rounds):
            env.step(action)
    top_level = sum(1 for event in profiler.events() if event.name.startswith("aten::")
                    and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::")))
    averages = [event for event in profiler.key_averages() if event.key.startswith("aten::")]
    averages.sort(key=lambda event: -event.self_cpu_time_total)
    calls = sum(event.count for event in averages)
    lines = [f"aten calls per step: {calls / rounds:.0f} in all, {top_level / rounds:.0f} at top level", "",
             "| operator | calls per step | self CPU per step (µs, under the profiler) |", "|---|---:|---:|"]
    for event in averages[:top]:
        lines.append(f"| `{event.key}` | {event.count / rounds:.1f} | {event.self_cpu_time_total / rounds:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=128, help="nodes per environment N")
    parser.add_argument("--batch", type=int, default=1, help="environments B (1: the single env)")
    parser.add_argument("--rounds", type=int, default=200, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=20, help="steps played before profiling")
    parser.add_argument("--top", type=int, default=20, help="operators listed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, at least 1")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    for name in ("nodes", "batch", "rounds", "top", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads, user_api="blas"):
        timer, steps = profile_parts(args.nodes, args.batch, args.rounds, args.warmup, args.seed)
        operators = profile_operators(args.nodes, args.batch, min(args.rounds, 50), args.warmup, args.seed,
                                      args.top)
    lines = [f"B = {args.batch}, N = {args.nodes}, {args.rounds} steps after {args.warmup}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s): step median {1e3 * statistics.median(steps):.2f} ms, "
             f"mean {1e3 * statistics.mean(steps):.2f} ms", "", *parts_table(timer, args.rounds), "", *operators]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
