"""Step speed of the environment, and how much the batched round gains over the per-node reference.

For each fleet size N the default config is copied with ``n_nodes = N``: its geographic graph's radio
range shrinks as sqrt(log n / n) with the nodes n of a region, so the mean degree stays bounded (about 3
at N = 32, 10 at N = 1,024) and the graph sparse; the adjacency observation is dropped above 128 nodes.
Every node trains and broadcasts in full (action 2) every round.

Columns: env step (``env.step``: transition + observation + info), the batched ``transition`` alone,
the per-node ``reference_transition`` on the same states and the same round randomness (each timed in a
loop of its own: ``time_transitions``), the speed-up
reference / batched, and the largest parameter difference between the two (a sanity check that both
computed the same round). Times are medians over the rounds: the machine may be shared.

"bare learning" is the learning work of the same round and nothing else: local SGD on every node (drawing
its minibatches included), the full broadcast, the mixing step and the accuracy evaluation on the round's
evaluation subsample, called directly on the dynamics functions;
env step / bare learning is the overhead of everything the env adds (energy, carbon, trust, attacks,
observation, info). "bare ceiling" is reference / bare learning: the speed-up over the reference that a
batched round with no overhead at all would reach, an upper bound for the column before it. The vector
table times ``EdgeLearningVectorEnv.step`` for B environments of N nodes (node-rounds/s = B·N / step time),
their batched round alone and the bare learning work of the same B·N nodes, batched alike; the speed-ups
are over B rounds of the reference (a loop over nodes: B environments cost B times one), of the batched
round (as in the first table) and of the whole vector step. The last table compares B = 64, N = 32
in one batched program with 64 single envs in Gymnasium's ``SyncVectorEnv``, stepping the two in
alternation, both on one core. ``--all-cores W`` adds the same comparison on every core: the vector env
with W workers (each steps a group of the environments as one program), as threads and as processes,
against 64 single envs in forked processes of their own (SB3's ``SubprocVecEnv``, or with ``--subprocesses
gymnasium`` Gymnasium's ``AsyncVectorEnv``) and in a ``SyncVectorEnv``, which runs on one core whatever the
machine has; the four stepped in alternation. ``--out`` writes all tables as Markdown.

The bare work and the batched round run in torch's inference mode (no autograd bookkeeping); the
reference takes its per-node gradients with autograd, so it runs without.

``--device cuda`` runs every table on that torch device (``device`` in the env config); the per-node
reference then is skipped, since its thousands of tiny kernels time the launch latency, not the round,
and the timers wait for the device to finish (``torch.cuda.synchronize``).

``--threads`` (default 1) sets torch's intra-op threads. The tensors of one round are small, and on a
machine whose cores are busy with other work two OpenMP threads that wait for each other make a step
tens of times slower than one thread does.

    python benchmarks/bench_step.py --rounds 10 --sizes 8 32 128 512 2048 --batches 1 8 64 --out bench.md
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import SubprocVecEnv
from threadpoolctl import threadpool_limits

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import gossip
from greengossip.envs.dynamics.learning import accuracy_per_node, local_sgd
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.reference import reference_transition
from greengossip.envs.scenario import Scenario
from greengossip.envs.simulator import draw_randomness, transition
from greengossip.envs.state import SimState, model_spec
from greengossip.envs.vector_env import EdgeLearningVectorEnv

ACTION_FULL = 2
SUBPROCESS_LABELS = {"sb3": "SB3 SubprocVecEnv", "gymnasium": "Gymnasium AsyncVectorEnv"}


def config_for(n_nodes: int, rounds: int, device: str = "cpu") -> EnvConfig:
    base = EnvConfig(device=device)
    data = base.model_dump()
    data.update(n_nodes=n_nodes, max_rounds=max(base.max_rounds, rounds + 4), target_accuracy=1.0)
    data["observation"].update(adjacency=n_nodes <= 128)
    return EnvConfig.model_validate(data)


def synchronize(config: EnvConfig) -> None:
    """Waits for the device's queued work, so that a timer stopped after it times the work itself."""
    if torch.device(config.device).type == "cuda":
        torch.cuda.synchronize()


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
    """Batched and reference round times on the same states and randomness; the largest |Δparams|.

    The batched rounds are timed first, in a loop of their own, as the env plays them. The same rounds
    are then played again (the transition is deterministic given its state and randomness), this time
    with the reference timed on each round's start state. Timing the two in alternation made each batched
    round (2 ms at N = 128) start in caches that the reference's 85 ms of per-node Python had just filled
    with its own data, and keeping the states for a later replay made every round's tensors fresh pages:
    both measured the batched round 25-30 % slower than the env runs it (2.5-2.7 against 2.0 ms in stop
    25), a cost of the harness, not of the round."""
    env = EdgeLearningEnv(config)
    env.reset(seed=seed)
    scenario, start_state = env.scenario, env.sim_state
    action = torch.full((config.n_nodes,), ACTION_FULL, dtype=torch.long, device=config.device)
    batched = play_batched_rounds(config, scenario, start_state, action, rounds)
    reference, worst, state = [], 0.0, start_state
    for _ in range(rounds):
        noise = draw_randomness(config, scenario, state.round)
        with torch.inference_mode():
            fast, _ = transition(config, scenario, state, action, noise)
        start = time.perf_counter()
        slow, _ = reference_transition(config, scenario, state, action, noise)
        reference.append(time.perf_counter() - start)
        worst = max(worst, float((fast.params - slow.params).abs().max()))
        state = fast
    return batched, reference, worst, int(scenario.edge_src.numel()) // 2


def play_batched_rounds(config: EnvConfig, scenario: Scenario, start_state: SimState, action: torch.Tensor,
                        rounds: int) -> list[float]:
    """Times of ``rounds`` batched rounds (``transition``) from ``start_state``, after one warm-up round."""
    with torch.inference_mode():
        transition(config, scenario, start_state, action, draw_randomness(config, scenario, start_state.round))
    times, state = [], start_state
    for _ in range(rounds):
        noise = draw_randomness(config, scenario, state.round)
        synchronize(config)
        start = time.perf_counter()
        with torch.inference_mode():
            state, _ = transition(config, scenario, state, action, noise)
        synchronize(config)
        times.append(time.perf_counter() - start)
    return times


def time_vector_rounds(config: EnvConfig, n_envs: int, rounds: int, seed: int) -> list[float]:
    """Batched round times of the vector env's B = ``n_envs`` environments, as ``time_transitions`` times
    one environment's."""
    env = EdgeLearningVectorEnv(num_envs=n_envs, config=config)
    env.reset(seed=seed)
    action = torch.full((n_envs * config.n_nodes,), ACTION_FULL, dtype=torch.long, device=config.device)
    return play_batched_rounds(config, env.fleet.scenario, env.fleet.state, action, rounds)


def time_bare_learning(config: EnvConfig, rounds: int, seed: int, n_envs: int = 1) -> list[float]:
    """The learning work of a round alone: SGD, full broadcast, mixing and evaluation of every node of
    ``n_envs`` environments (the vector env's scenarios for that seed, batched as the vector env batches
    them)."""
    env = EdgeLearningVectorEnv(num_envs=n_envs, config=config)
    env.reset(seed=seed)
    scenario, state, spec = env.fleet.scenario, env.fleet.state, model_spec(config)
    everyone = torch.ones(scenario.n_nodes, dtype=torch.bool, device=config.device)
    full = torch.zeros(scenario.n_nodes, dtype=torch.long, device=config.device)
    eval_x, eval_y = scenario.eval_x, scenario.eval_y

    def bare_round(params, public, round_index):
        batches = draw_randomness(config, scenario, round_index).batches  # SGD samples its minibatches
        samples = scenario.shards.gather(1, batches.flatten(1)).view(batches.shape)
        labels = scenario.train_y.index_select(0, samples.view(-1)).view(samples.shape)  # as the env does
        params, _ = local_sgd(spec, params, scenario.train_x, samples, labels,
                              config.learning.learning_rate)
        public = gossip.broadcast(params, public, full, everyone)
        params = params + gossip.aggregate_pull(params, public, scenario.neighbour_mixing, scenario.neighbours,
                                                scenario.neighbour_valid, scenario.neighbour_weight, "mean",
                                                everyone)
        accuracy_per_node(spec, params, eval_x, eval_y)
        return params, public

    params, public = state.params, state.public
    times = []
    with torch.inference_mode():
        params, public = bare_round(params, public, state.round)
        for r in range(rounds):
            synchronize(config)
            start = time.perf_counter()
            params, public = bare_round(params, public, state.round + r + 1)
            synchronize(config)
            times.append(time.perf_counter() - start)
    return times


def time_vector_steps(config: EnvConfig, n_envs: int, rounds: int, seed: int) -> list[float]:
    """Step times of the native batched vector env with B = ``n_envs`` environments."""
    env = EdgeLearningVectorEnv(num_envs=n_envs, config=config)
    env.reset(seed=seed)
    action = np.full((n_envs, config.n_nodes), ACTION_FULL, dtype=np.int64)
    env.step(action)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        env.step(action)
        times.append(time.perf_counter() - start)
    return times


def time_vector_against_sync(config: EnvConfig, n_envs: int, rounds: int, seed: int
                             ) -> tuple[list[float], list[float]]:
    """Step times of the native batched vector env and of a SyncVectorEnv of single envs, taken in
    alternation round by round, so that a drift of the machine's speed hits both alike."""
    batched = EdgeLearningVectorEnv(num_envs=n_envs, config=config)
    sync = gym.vector.SyncVectorEnv([lambda: EdgeLearningEnv(config) for _ in range(n_envs)])
    return time_in_alternation((batched, sync), config, n_envs, rounds, seed)


def time_workers_against_subprocesses(config: EnvConfig, n_envs: int, workers: int, rounds: int, seed: int,
                                      subprocesses: str = "sb3") -> tuple[list[float], ...]:
    """All cores on both sides: the vector env with ``workers`` threads, the same with ``workers``
    processes, and ``n_envs`` single envs, one process each (forked, so they share the imported modules),
    in SB3's SubprocVecEnv (``subprocesses="sb3"``) or Gymnasium's AsyncVectorEnv ("gymnasium"); and, for
    the other baseline the issue names, the same single envs in a SyncVectorEnv (which can only use one
    core). Stepped in alternation, in that order."""
    threads = EdgeLearningVectorEnv(num_envs=n_envs, config=config, workers=workers)
    in_processes = EdgeLearningVectorEnv(num_envs=n_envs, config=config, workers=workers, worker_kind="process")
    factories = [functools.partial(EdgeLearningEnv, config) for _ in range(n_envs)]
    if subprocesses == "sb3":
        singles = _SeededSubprocVecEnv(SubprocVecEnv(factories, start_method="fork"))
    else:
        singles = gym.vector.AsyncVectorEnv(factories, context="fork", shared_memory=False)
    sync = gym.vector.SyncVectorEnv(factories)
    try:
        return time_in_alternation((threads, in_processes, singles, sync), config, n_envs, rounds, seed)
    finally:
        for env in (sync, singles, in_processes, threads):
            env.close()


class _SeededSubprocVecEnv:
    """SB3's SubprocVecEnv with the ``reset(seed=)`` and ``close`` that ``time_in_alternation`` calls."""

    def __init__(self, venv: SubprocVecEnv):
        self.venv = venv

    def reset(self, seed: int):
        self.venv.seed(seed)
        return self.venv.reset()

    def step(self, actions: np.ndarray):
        return self.venv.step(actions)

    def close(self) -> None:
        self.venv.close()


def time_in_alternation(envs: tuple, config: EnvConfig, n_envs: int, rounds: int, seed: int
                        ) -> tuple[list[float], ...]:
    """Step times of each of ``envs`` (vector envs: ``reset(seed=)`` and ``step`` of (B, N) actions), round by
    round in turn."""
    action = np.full((n_envs, config.n_nodes), ACTION_FULL, dtype=np.int64)
    times: tuple[list[float], ...] = tuple([] for _ in envs)
    for env in envs:
        env.reset(seed=seed)
        env.step(action)
    for _ in range(rounds):
        for env, record in zip(envs, times):
            start = time.perf_counter()
            env.step(action)
            record.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per size (after one warm-up)")
    parser.add_argument("--default-rounds", type=int, default=300, help="timed steps of the default config")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128, 512], help="fleet sizes N")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64], help="vector env sizes B")
    parser.add_argument("--max-node-rounds", type=int, default=40_000,
                        help="skip vector runs with B·N above this (memory and time)")
    parser.add_argument("--reference-up-to", type=int, default=512, help="largest N timed with the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--device", default="cpu", help="torch device of the simulator (cpu, cuda, cuda:N)")
    parser.add_argument("--all-cores", type=int, default=0, metavar="WORKERS",
                        help="also compare B = 64, N = 32 on all cores: the vector env with this many worker "
                        "threads, and with as many worker processes, against 64 single-env processes (about 9 GB "
                        "of memory)")
    parser.add_argument("--subprocesses", choices=("sb3", "gymnasium"), default="sb3",
                        help="--all-cores: the 64 single-env processes in SB3's SubprocVecEnv or in Gymnasium's "
                        "AsyncVectorEnv")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        args.reference_up_to = 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        # NumPy's BLAS on as many threads as torch, for the bare learning work and the env alike
        threadpool_limits(args.threads, user_api="blas")
    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    on = "" if args.device == "cpu" else f", simulator on {args.device}" + (
        f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else "")
    emit(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
         f"load average {load:.1f}{on}; {args.rounds} rounds per size, all nodes train + full broadcast")
    emit()
    # the default step is cheap: time whole episodes (resets excluded) rather than the first few rounds
    default_steps = time_env_steps(EnvConfig(device=args.device), args.default_rounds, args.seed)
    median_ms, mean_ms = 1e3 * statistics.median(default_steps), 1e3 * statistics.mean(default_steps)
    emit(f"default config (N = {EnvConfig().n_nodes}): env.step median {median_ms:.2f} ms, mean {mean_ms:.2f} ms "
         f"over {len(default_steps)} steps")
    emit()
    emit("| N | edges | env steps/s | env step ms | batched round ms | bare learning ms | env / bare "
         "| reference round ms | speed-up vs reference | bare ceiling | max abs Δparams |")
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    reference_round: dict[int, float] = {}  # N -> median reference round (s)
    for n in args.sizes:
        config = config_for(n, args.rounds, args.device)
        steps = statistics.median(time_env_steps(config, args.rounds, args.seed))
        bare = statistics.median(time_bare_learning(config, args.rounds, args.seed))
        if n <= args.reference_up_to:
            batched, reference, worst, edges = time_transitions(config, args.rounds, args.seed)
            fast, slow = statistics.median(batched), statistics.median(reference)
            tail = f"{1e3 * slow:.1f} | {slow / fast:.1f}x | {slow / bare:.1f}x | {worst:.1e}"
            reference_round[n] = slow
        else:
            env = EdgeLearningEnv(config)
            env.reset(seed=args.seed)
            edges, tail = int(env.scenario.edge_src.numel()) // 2, "— | — | — | —"
            fast = float("nan")
        emit(f"| {n} | {edges} | {1 / steps:.1f} | {1e3 * steps:.2f} | {1e3 * fast:.2f} | {1e3 * bare:.2f} "
             f"| {steps / bare:.2f} | {tail} |")
    emit()
    emit("| N | B | vector step ms | env-steps/s | node-rounds/s | batched round ms | bare learning ms "
         "| vector / bare | round speed-up vs reference | step speed-up vs reference |")
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        config = config_for(n, args.rounds, args.device)
        for b in args.batches:
            if b * n > args.max_node_rounds:
                emit(f"| {n} | {b} | skipped (B·N > {args.max_node_rounds}) | | | | | | | |")
                continue
            step = statistics.median(time_vector_steps(config, b, args.rounds, args.seed))
            fast = statistics.median(time_vector_rounds(config, b, args.rounds, args.seed))
            bare = statistics.median(time_bare_learning(config, args.rounds, args.seed, b))
            speed_ups = "— | —"
            if n in reference_round:  # the reference is a loop over nodes: B environments take B of its rounds
                slow = b * reference_round[n]
                speed_ups = f"{slow / fast:.1f}x | {slow / step:.1f}x"
            emit(f"| {n} | {b} | {1e3 * step:.2f} | {b / step:.1f} | {b * n / step:.0f} | {1e3 * fast:.2f} "
                 f"| {1e3 * bare:.2f} | {step / bare:.2f} | {speed_ups} |")
    emit()
    config = config_for(32, 2 * args.rounds, args.device)
    vector, sync = (statistics.median(times) for times in time_vector_against_sync(config, 64, 2 * args.rounds,
                                                                                   args.seed))
    emit(f"B = 64, N = 32, {2 * args.rounds} rounds, the two envs stepped in alternation:")
    emit()
    emit("| B = 64, N = 32 | step ms | env-steps/s |")
    emit("|---|---:|---:|")
    emit(f"| EdgeLearningVectorEnv (one batched program) | {1e3 * vector:.1f} | {64 / vector:.0f} |")
    emit(f"| SyncVectorEnv of 64 EdgeLearningEnv | {1e3 * sync:.1f} | {64 / sync:.0f} |")
    emit(f"| ratio | | {sync / vector:.1f}x |")
    if args.all_cores > 0:
        threads, in_processes, singles, sync = (statistics.median(times) for times in
                                                time_workers_against_subprocesses(config, 64, args.all_cores,
                                                                                  2 * args.rounds, args.seed,
                                                                                  args.subprocesses))
        emit()
        emit(f"B = 64, N = 32 on all {os.cpu_count()} cores, {2 * args.rounds} rounds, in alternation:")
        emit()
        emit("| B = 64, N = 32 | step ms | env-steps/s | ratio to the single-env processes | ratio to SyncVectorEnv |")
        emit("|---|---:|---:|---:|---:|")
        for label, step in ((f"EdgeLearningVectorEnv, {args.all_cores} worker threads", threads),
                            (f"EdgeLearningVectorEnv, {args.all_cores} worker processes", in_processes),
                            (f"{SUBPROCESS_LABELS[args.subprocesses]} of 64 EdgeLearningEnv processes", singles),
                            ("SyncVectorEnv of 64 EdgeLearningEnv (one core)", sync)):
            emit(f"| {label} | {1e3 * step:.1f} | {64 / step:.0f} | {singles / step:.1f}x | {sync / step:.1f}x |")
    if args.out:
        write_markdown(args.out, lines, argv if argv is not None else sys.argv[1:])


def write_markdown(path: str, lines: list[str], argv: list[str]) -> None:
    """The tables as a page of their own (docs/bench_step.md): this module's docstring is the method, then
    the command that regenerates the page, then the tables."""
    method = __doc__.split("\n    python benchmarks/bench_step.py")[0].strip()
    command = " ".join(["python benchmarks/bench_step.py", *argv])
    page = ["# Environment step speed", "", method, "", f"Regenerate this page with `{command}`.", "",
            "## Tables", "", *lines]
    with open(path, "w") as handle:
        handle.write("\n".join(page) + "\n")


if __name__ == "__main__":
    main()
