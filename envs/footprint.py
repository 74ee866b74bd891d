"""How much memory one environment of a config needs, checked before anything is built.

A config inside every field's range can still ask for more memory than the machine has: 65,536 nodes with
the adjacency observation is a 16 GiB (N, N) matrix, and a dense random graph of that size is billions of
networkx edges. Building it dies minutes later with a bare ``MemoryError`` (or the OOM killer). The
estimate here is a sum of named terms, each the size of the arrays one part of the simulator allocates,
times the copies the code makes of them; it is meant to be an upper bound within a small factor.
Against the peak resident memory of a fresh process that builds one env, resets it and plays three rounds
(on the CPU), it was 1.5x to 6x above: with the geographic topology 2,048 nodes 495 MiB estimated / 143
measured and 4,096 nodes without the adjacency 854 / 179; with random_geometric (radius 0.35) 2,048 nodes
1,371 / 457; on 256 nodes, 20,000 samples per node 2,720 / 1,803, 50,000 rounds 890 / 354 and an MLP of
1,024 hidden units 1,733 / 867. ``check_fits`` refuses a config whose estimate exceeds the memory of
the device it runs on, naming the fields behind the largest terms.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greengossip.envs.config import EnvConfig

N_INPUTS, N_CLASSES = 65, 10  # digits: 64 pixels and the bias input; ten classes (envs/scenario.py)
TEST_SPLIT_ROWS = 1_797  # upper bound of the test split's rows (the whole digits set)
FLOAT, LONG = 4, 8
NETWORKX_EDGE_BYTES = 600  # an undirected edge: two adjacency-dict entries with their attribute dicts
NETWORKX_NODE_BYTES = 1_500
PANDAS_ROW_BYTES = 8 * 40  # pvlib's clear-sky model: some forty float64 columns of temporaries per time step
MODEL_COPIES = 16  # params, public copies, gradients, attack noise, aggregation temporaries, the old state
BATCH_COPIES = 3  # gathered minibatches, their activations and gradients
TRACE_COPIES = 8  # harvest and carbon traces: float64 while built, float32 kept, per-Wh copy, forecasts

# Below this, a config is accepted without asking the OS (every shipped config is far below it)
ALWAYS_FITS_BYTES = 256 << 20


def n_params(config: EnvConfig) -> int:
    if config.learning.model == "softmax":
        return N_CLASSES * N_INPUTS
    hidden = config.learning.hidden
    return N_INPUTS * hidden + hidden * N_CLASSES + N_CLASSES


def expected_edges(config: EnvConfig) -> tuple[float, float]:
    """(undirected edges, widest neighbour row) of the graph the topology builds, roughly from above."""
    n, topology = config.n_nodes, config.topology
    kind = topology.kind
    if kind == "geographic":  # radio range sqrt(c log n / (pi n)): about c log n neighbours, plus gateways
        mean = topology.connectivity * math.log(max(n, 2)) + topology.gateways_per_region * len(config.regions)
    elif kind == "ring":
        mean = 2.0
    elif kind == "grid":
        mean = 4.0
    elif kind == "small_world":
        mean = float(topology.neighbours)
    elif kind == "scale_free":
        mean = 2.0 * max(1, topology.neighbours // 2)
    elif kind == "erdos_renyi":
        mean = topology.edge_probability * (n - 1)
    elif kind == "random_geometric":
        mean = min(1.0, math.pi * topology.radius**2) * (n - 1)
    else:  # a topology this estimate does not know: assume the densest graph
        mean = n - 1.0
    mean = min(mean, n - 1.0)
    # the widest row pads the neighbour tables: hubs of a scale-free graph grow like sqrt(N)
    widest = mean * 2 + 10 if kind != "scale_free" else mean * math.sqrt(n) + 10
    return n * mean / 2, min(widest, n - 1.0)


def memory_terms(config: EnvConfig) -> dict[str, tuple[float, str]]:
    """Bytes of each part of one environment, with the fields that drive it."""
    learning = config.learning
    n = config.n_nodes
    rounds = config.max_rounds + config.observation.forecast_rounds + 1
    edges, widest = expected_edges(config)
    samples_per_round = learning.local_steps * learning.batch_size
    width = N_INPUTS + (learning.hidden if learning.model == "mlp" else 0) + N_CLASSES
    eval_rows = learning.eval_samples_per_round or TEST_SPLIT_ROWS
    rounds_per_year = 366 * 24 * 60 / config.round_minutes
    terms = {
        "adjacency observation (N x N)": (
            3.0 * n * n * FLOAT if config.observation.adjacency else 0.0, "n_nodes, observation.adjacency"),
        "graph (networkx edges)": (
            edges * NETWORKX_EDGE_BYTES + n * NETWORKX_NODE_BYTES, "n_nodes, topology"),
        "neighbour tables (N x widest degree)": (
            n * widest * (LONG + 1 + 3 * FLOAT) * 4 + 2 * edges * (2 * LONG + FLOAT) * 4, "n_nodes, topology"),
        "models (N x parameters)": (MODEL_COPIES * n * n_params(config) * FLOAT, "n_nodes, learning.model, "
                                    "learning.hidden"),
        "local data shards": (n * learning.samples_per_node * (LONG + N_INPUTS * FLOAT) * 2,
                              "n_nodes, learning.samples_per_node"),
        # positions of every step's minibatch are drawn at once; the inputs are gathered one step at a time
        "minibatches of a round": (n * samples_per_round * (FLOAT + 2 * LONG) * 2
                                   + BATCH_COPIES * n * learning.batch_size * width * FLOAT,
                                   "n_nodes, learning.local_steps, learning.batch_size"),
        "accuracy evaluation": (2 * n * min(eval_rows, TEST_SPLIT_ROWS) * width * FLOAT,
                                "n_nodes, learning.eval_samples_per_round"),
        "harvest and carbon traces (N x rounds)": (TRACE_COPIES * n * rounds * 8,
                                                   "n_nodes, max_rounds, observation.forecast_rounds"),
        "clear-sky year per region": (len(config.regions) * rounds_per_year * PANDAS_ROW_BYTES,
                                      "round_minutes, regions"),
    }
    return terms


def estimate_bytes(config: EnvConfig) -> float:
    """Upper estimate of the memory one environment of ``config`` needs, in bytes."""
    return sum(size for size, _ in memory_terms(config).values())


def device_memory_bytes(device: str) -> int | None:
    """Memory of the device the simulator would run on: the machine's RAM for 'cpu' (the cgroup limit
    where one is set), the GPU's for 'cuda[:N]'; None where it cannot be read."""
    if device != "cpu":
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def check_fits(config: EnvConfig, n_envs: int = 1) -> None:
    """Raise ValueError if ``n_envs`` environments of ``config`` would not fit in the device's memory,
    naming the terms that dominate and the fields behind them."""
    terms = memory_terms(config)
    total = n_envs * sum(size for size, _ in terms.values())
    if total <= ALWAYS_FITS_BYTES:
        return
    available = device_memory_bytes(config.device)
    if available is None or total <= available:
        return
    largest = sorted(terms.items(), key=lambda item: -item[1][0])[:3]
    parts = "; ".join(f"{name} {_gib(n_envs * size)} (from {fields})" for name, (size, fields) in largest
                      if size > 0)
    envs = f"{n_envs} environments need" if n_envs > 1 else "one environment needs"
    raise ValueError(
        f"{envs} about {_gib(total)}, more than the {_gib(available)} of memory on {config.device!r}. "
        f"Largest parts: {parts}. Reduce those fields (e.g. fewer n_nodes, observation.adjacency: false, "
        "a sparser topology, fewer max_rounds or samples)")
