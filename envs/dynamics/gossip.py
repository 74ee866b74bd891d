"""Gossip: compressed broadcast with error feedback (CHOCO-SGD) and consensus mixing.

After CHOCO-SGD (Koloskova, Stich & Jaggi, ICML 2019): every node i keeps a public copy x̂_i of its
model that all its neighbours also hold. A broadcasting node sends q_i = Q(x_i - x̂_i) and everyone adds
q_i to x̂_i, so what compression drops this round is sent later (error feedback). An awake node then
moves towards its neighbours' public copies: x_i += γ Σ_{j≠i} w_ij (x̂_j - x_i). With Q = identity and
γ = 1 this is exactly D-PSGD's x_i = Σ_j w_ij x_j.

One departure from CHOCO: the pull is measured from the node's own model x_i, not from its public copy
x̂_i. The update is then a convex combination of x_i and the neighbours' copies for any γ ≤ 1, which
stays stable with γ = 1 under top-1 % compression, where CHOCO's x̂_j - x̂_i form diverges unless γ is
tuned down to the compression ratio (checked in tests/test_learning.py).

Messages are kept in the receivers' mailboxes (store and forward), so every neighbour's copy of x̂_j is
the same and one (N, P) tensor holds them all; a receiver mixes only with the copies that arrived this
round (the round's active links), the others' weight stays with its own model.
"""

from __future__ import annotations

import math
import warnings

import torch

from greengossip.envs.dynamics.buffers import difference
from greengossip.envs.dynamics.products import matmul, sparse_product
from greengossip.envs.workloads import COMPRESSION_LEVELS, TOPK_FRACTION

FULL = COMPRESSION_LEVELS.index("full")
# Fleets of up to this many nodes per environment mix and compare models through dense per-environment
# blocks (one batched product); larger ones through sparse products over the edges
DENSE_MIXING_UP_TO = 64


def compress(delta: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Apply each row's compression level (index into COMPRESSION_LEVELS) to (n, P) ``delta``."""
    counts = torch.bincount(level, minlength=len(COMPRESSION_LEVELS)).tolist()
    out = None
    for code, name in enumerate(COMPRESSION_LEVELS):  # loop over the four levels, not over nodes
        if counts[code] == 0:
            continue
        if counts[code] == delta.shape[0]:  # one level for every row (the usual case): no row copies
            return _compress_rows(delta, name)
        rows = (level == code).nonzero().squeeze(1)
        if out is None:
            out = torch.zeros_like(delta)
        out[rows] = _compress_rows(delta[rows], name)
    return torch.zeros_like(delta) if out is None else out


def _compress_rows(part: torch.Tensor, name: str) -> torch.Tensor:
    if name == "full":
        return part
    if name == "q8":
        scale = part.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
        return torch.round(part / scale) * scale
    k = max(1, math.ceil(TOPK_FRACTION[name] * part.shape[1]))
    # the k largest magnitudes, ties at the k-th broken towards the lowest index (as a stable sort
    # would, and as the reference does): topk's own choice among equal values differs between the CPU
    # and CUDA, and SGD steps do tie (equal updates of pixels that are equal in every sample)
    magnitude = part.abs()
    kth = magnitude.topk(k, dim=1).values[:, -1:]
    keep = magnitude >= kth
    if bool((keep.sum(1) > k).any()):  # a tie across the k-th place: take the first of the tied
        above = magnitude > kth
        tied = keep & ~above
        keep = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))
    return torch.where(keep, part, 0.0)


def mixing_matrix(
    n_nodes: int, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, include_self: bool = True
) -> torch.Tensor:
    """W with W[i, j] = w_ij on edges and (if include_self) the self weight on the diagonal; dense up to
    ``DENSE_MIXING_UP_TO`` nodes, sparse CSR beyond, so that a mixing step costs O(edges · P), not O(N² · P).
    With a dozen neighbours per node, CSR products overtake dense ones between 32 and 128 nodes (1.7x
    faster at 128, 2x at 512, 10x at 2,048 on the 2-core test machine). A batch of small fleets keeps
    one dense block per environment (``Scenario.neighbour_mixing``, ``mix``): for 64 environments of 32
    nodes a batched product of the blocks is 5x faster than a CSR product over the block diagonal."""
    rows, cols, values = dst, src, weight
    if include_self:
        self_weight = 1.0 - torch.zeros(n_nodes, device=weight.device).index_add_(0, dst, weight)
        idx = torch.arange(n_nodes, device=weight.device)
        rows, cols, values = torch.cat([dst, idx]), torch.cat([src, idx]), torch.cat([weight, self_weight])
    if n_nodes <= DENSE_MIXING_UP_TO:
        # entries at one place add up, as in a coalesced COO tensor, whose to_dense took 2 ms of a
        # 9 ms scenario build at 32 nodes (every reset builds one)
        dense = torch.zeros(n_nodes, n_nodes, dtype=values.dtype, device=values.device)
        return dense.index_put_((rows, cols), values, accumulate=True)
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_nodes, n_nodes),
                                  check_invariants=False).coalesce()
    # torch warns (once per process, at the first CSR tensor) that its sparse CSR support is in beta; the
    # env uses only the CSR products its tests check, and a user building a large fleet should not be told
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return coo.to_sparse_csr()


def mix(neighbour_mixing: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """W @ values for (N, ...) ``values``, W either (B, n, n) dense per-environment blocks or an (N, N)
    matrix over all nodes (sparse CSR, or dense)."""
    if neighbour_mixing.dim() == 3:
        n_envs, n = neighbour_mixing.shape[:2]
        return matmul(neighbour_mixing, values.reshape(n_envs, n, -1)).view(values.shape)
    if neighbour_mixing.layout == torch.sparse_csr:
        return sparse_product(neighbour_mixing, values)
    return neighbour_mixing @ values


def mix_usable(neighbour_mixing: torch.Tensor, values: torch.Tensor, usable: torch.Tensor,
               rows_finite: bool = False) -> torch.Tensor:
    """Σ_j w_ij values_j over the ``usable`` rows j only. The unusable senders' weights are zeroed in W
    (B·n² entries, or the nonzeros of a CSR matrix) rather than their rows in the (N, P) values, which
    would copy every model each round. A non-finite row is zeroed itself (0 · inf is NaN), a rare copy;
    ``rows_finite``: the caller already did (``split_finite``), so the pass that looks for one is skipped."""
    if bool(usable.all()):
        return mix(neighbour_mixing, values)
    if not rows_finite:
        values = finite_rows(values)
    weight = usable.to(values.dtype)
    if neighbour_mixing.dim() == 3:  # dense per-environment blocks: scale the senders' columns
        return mix(neighbour_mixing * weight.view(neighbour_mixing.shape[0], 1, -1), values)
    if neighbour_mixing.layout == torch.sparse_csr:
        columns = neighbour_mixing.col_indices()
        masked = torch.sparse_csr_tensor(neighbour_mixing.crow_indices(), columns,
                                         neighbour_mixing.values() * weight[columns], neighbour_mixing.shape,
                                         check_invariants=False)
        return sparse_product(masked, values)
    return (neighbour_mixing * weight) @ values


def neighbour_pattern(neighbours: torch.Tensor, neighbour_valid: torch.Tensor) -> torch.Tensor:
    """(N, N) sparse CSR with a 1 at (i, j) for every valid neighbour slot of receiver i, stored in slot
    order, so that values computed at its entries (``neighbour_distances``) fill the valid slots of an
    (N, D) table row by row."""
    counts = neighbour_valid.sum(1)
    crow = torch.zeros(len(counts) + 1, dtype=torch.long, device=counts.device)
    torch.cumsum(counts, 0, out=crow[1:])
    columns = neighbours[neighbour_valid]
    return torch.sparse_csr_tensor(crow, columns, torch.ones(len(columns), device=neighbours.device),
                                   (len(counts), len(counts)), check_invariants=False)


def broadcast(params: torch.Tensor, public: torch.Tensor, level: torch.Tensor, send: torch.Tensor) -> torch.Tensor:
    """New public copies after the senders broadcast their compressed difference. A full-precision
    sender's copy becomes its model exactly (x̂ + (x - x̂) = x)."""
    full = send & (level == FULL)
    compressed = send & ~full
    n_full, n_compressed = int(full.sum()), int(compressed.sum())
    if n_full == send.shape[0]:
        return params
    if n_compressed == send.shape[0]:
        return public + compress(params - public, level)
    if n_full:
        public = torch.where(full.unsqueeze(1), params, public)
    if n_compressed:
        public = public if n_full else public.clone()
        rows = compressed.nonzero().squeeze(1)
        public[rows] += compress(params[rows] - public[rows], level[rows])
    return public


def slots(values: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """(N, D, ...) the rows of ``values`` (N, ...) of the node in each neighbour slot (index_select:
    cheaper than indexing)."""
    return values.index_select(0, neighbours.reshape(-1)).view(*neighbours.shape, *values.shape[1:])


def split_finite(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) bool: the finite rows of ``values``, and ``values`` with the other rows zeroed (no copy when
    every row is finite, the usual case). A row's sum is finite exactly when every entry is (barring float
    overflow of a model that is garbage anyway), and one reduction is cheaper than testing all N·P entries."""
    finite = torch.isfinite(values.sum(1))
    return finite, (values if bool(finite.all()) else torch.where(finite.unsqueeze(1), values, 0.0))


def finite_rows(values: torch.Tensor) -> torch.Tensor:
    """``values`` with its non-finite rows zeroed (no copy when every row is finite, the usual case)."""
    return split_finite(values)[1]


def usable_copies(public: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """``public`` with the rows a receiver may not use zeroed (no copy when every row is usable)."""
    return public if bool(usable.all()) else torch.where(usable.unsqueeze(1), public, 0.0)


def aggregate_pull(
    own: torch.Tensor,
    public: torch.Tensor,
    neighbour_mixing: torch.Tensor,
    neighbours: torch.Tensor,
    neighbour_valid: torch.Tensor,
    neighbour_weight: torch.Tensor,
    aggregator: str,
    usable: torch.Tensor,
    trim_fraction: float = 0.25,
    clip_quantile: float = 0.5,
    slot_trust: torch.Tensor | None = None,
    pattern: torch.Tensor | None = None,
    distances: torch.Tensor | None = None,
    rows_finite: bool = False,
) -> torch.Tensor:
    """(N, P) direction each node moves its own model ``own`` (x_i), from its neighbours' usable public
    copies; ``neighbour_mixing`` is W without its diagonal; ``pattern``: the slots' ``neighbour_pattern``
    where W is sparse (built here if not given); ``distances``: ``neighbour_distances`` of ``own`` and
    ``public`` if the caller has them (clipped_gossip; computed here if not given); ``rows_finite``:
    ``public`` holds no non-finite row (the caller zeroed them with ``split_finite``), so no pass looks
    for one.

    mean            Σ_j w_ij (x̂_j - x_i) over usable senders (unusable ones' weight stays at home)
    median          coordinate-wise median of {x_i} ∪ {x̂_j} minus x_i (Yin et al., ICML 2018)
    trimmed_mean    coordinate-wise mean after cutting trim_fraction of values at each end (Yin et al. 2018)
    clipped_gossip  Σ_j w_ij CLIP(x̂_j - x̂_i, τ_i), τ_i the clip_quantile of the node's neighbour
                    distances (He, Karimireddy & Jaggi, "Byzantine-robust decentralized learning via
                    ClippedGossip", 2022; the adaptive τ is this project's practical choice)

    With ``slot_trust`` (N, D), mean and clipped_gossip scale each neighbour's weight by the receiver's
    trust in it (the weight it loses stays with the receiver's own model).
    """
    if aggregator == "mean" and slot_trust is None:
        weight_used = mix(neighbour_mixing, usable.to(public.dtype).unsqueeze(1))  # (N, 1)
        mixed = mix_usable(neighbour_mixing, public, usable, rows_finite)  # a fresh block: the pull can take its memory
        return torch.addcmul(mixed, weight_used, own, value=-1.0, out=None if mixed.requires_grad else mixed)
    valid = neighbour_valid & slots(usable, neighbours)  # (N, D)
    weight = neighbour_weight if slot_trust is None else neighbour_weight * slot_trust
    if aggregator in ("mean", "clipped_gossip"):
        # Σ_d c_id (x̂_j - x_i) as (C x̂)_i - (Σ_d c_id) x_i, with C laid out like W: no (N, D, P) block of
        # gathered neighbour models (at 4 environments x 32 nodes, 2 ms a call against 0.5)
        # the unusable slots' coefficients are 0, but 0 times a non-finite row is still NaN
        safe = public if rows_finite else finite_rows(public)
        if aggregator == "mean":
            coefficients = weight * valid
        else:
            dist = distances
            if dist is None:
                n = neighbour_mixing.shape[-1] if neighbour_mixing.layout != torch.sparse_csr else len(own)
                dist = neighbour_distances(own, safe, neighbours, neighbour_valid, n, pattern)
            tau = torch.nanquantile(torch.where(valid, dist, torch.nan), clip_quantile, dim=1, keepdim=True)
            scale = torch.where(valid, (tau / dist.clamp_min(1e-12)).clamp(max=1.0).nan_to_num(0.0), 0.0)
            coefficients = weight * scale
        return slot_product(coefficients, safe, neighbours, neighbour_valid, neighbour_mixing, pattern) - (
            coefficients.sum(1, keepdim=True) * own)
    safe = usable_copies(public, usable)
    stack = safe[neighbours]  # (N, D, P)
    own_row = own.unsqueeze(1)
    values = torch.cat([own_row, stack], dim=1)  # the node's own model always takes part
    valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
    if aggregator == "median":
        centre = torch.where(valid.unsqueeze(2), values, torch.full_like(values, float("nan"))).nanmedian(1).values
    else:  # trimmed_mean
        count = valid.sum(1, keepdim=True)
        cut = torch.floor(trim_fraction * count)
        ordered = torch.where(valid.unsqueeze(2), values, torch.full_like(values, float("inf"))).sort(1).values
        rank = torch.arange(values.shape[1], device=values.device).view(1, -1, 1)
        keep = (rank >= cut.unsqueeze(2)) & (rank < (count - cut).unsqueeze(2))
        centre = torch.where(keep, ordered, torch.zeros_like(ordered)).sum(1) / keep.sum(1).clamp_min(1)
    return centre - own


def slot_product(coefficients: torch.Tensor, values: torch.Tensor, neighbours: torch.Tensor,
                 neighbour_valid: torch.Tensor, neighbour_mixing: torch.Tensor,
                 pattern: torch.Tensor | None = None) -> torch.Tensor:
    """(N, P) Σ_d coefficients[i, d] · values[neighbours[i, d]] over the valid slots, as a product with a
    matrix laid out like W (``neighbour_mixing``): dense per-environment blocks, a dense matrix, or
    sparse CSR at the slots' ``neighbour_pattern``."""
    if neighbour_mixing.layout == torch.sparse_csr:
        if pattern is None:
            pattern = neighbour_pattern(neighbours, neighbour_valid)
        weighted = torch.sparse_csr_tensor(pattern.crow_indices(), pattern.col_indices(),
                                           coefficients[neighbour_valid], pattern.shape, check_invariants=False)
        return sparse_product(weighted, values)
    n = neighbour_mixing.shape[-1]
    rows = torch.zeros(len(neighbours), n, dtype=values.dtype, device=values.device)
    rows.scatter_add_(1, neighbours % n, coefficients * neighbour_valid)  # padding slots add 0
    if neighbour_mixing.dim() == 3:
        return matmul(rows.view(-1, n, n), values.view(-1, n, values.shape[1])).view(values.shape)
    return matmul(rows, values)


def neighbour_scores(own: torch.Tensor, public: torch.Tensor, neighbours: torch.Tensor,
                     neighbour_valid: torch.Tensor, usable: torch.Tensor, nodes_per_env: int,
                     pattern: torch.Tensor | None = None, distances: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) how much each receiver believes each neighbour's latest model: 1 for a model no farther
    than the median neighbour, falling as (median / distance)² beyond it, 0 for a non-finite model.
    ``pattern``: ``neighbour_pattern`` of the slots (built here if not given; large fleets only);
    ``distances``: ``neighbour_distances`` of ``own`` and ``public`` if the caller has them."""
    # an unusable copy only enters the distances of its own slots, which are masked below; zeroing the
    # silent ones first would copy every model, so only a non-finite one is
    dist = distances
    if dist is None:
        dist = neighbour_distances(own, finite_rows(public), neighbours, neighbour_valid, nodes_per_env, pattern)
    usable_slot = neighbour_valid & slots(usable, neighbours)
    median = lower_median(dist, usable_slot)
    # a copy as close as the median scores 1, the same model (distance 0) included when the median is 0
    score = torch.where(dist <= median, 1.0, (median / dist.clamp_min(1e-12)).square()).nan_to_num(1.0)
    return torch.where(usable_slot, score, torch.zeros_like(score))


def lower_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N, 1) lower median of each row's ``valid`` entries of (N, D) ``values`` (NaN for a row without any),
    as ``torch.nanmedian`` defines it; one sort of the row is several times faster than nanmedian here."""
    ordered = torch.where(valid, values, torch.inf).sort(1).values
    count = valid.sum(1, keepdim=True)
    median = ordered.gather(1, ((count - 1) // 2).clamp_min(0))
    return torch.where(count > 0, median, torch.nan)


SAME_MODEL_BOUND = 1e-5  # squared distance / (|a|² + |b|²) below which two models count as the same


def _about_the_fleet_mean(own: torch.Tensor, other: torch.Tensor, nodes_per_env: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``own`` and ``other`` (B·n, P) minus each environment's mean of the finite rows of ``own``. In
    inference mode both land in scratch buffers that the next call overwrites (design note 18): the
    caller uses them and lets go."""
    finite, safe = split_finite(own)
    blocks = safe.view(-1, nodes_per_env, safe.shape[1])
    if bool(finite.all()):
        centre = blocks.mean(1, keepdim=True)
    else:
        counts = finite.view(-1, nodes_per_env).sum(1).clamp_min(1)
        centre = blocks.sum(1, keepdim=True) / counts.view(-1, 1, 1)
    return (difference(own.view_as(blocks), centre, "centred own").view(own.shape),
            difference(other.view(-1, nodes_per_env, other.shape[1]), centre, "centred other").view(other.shape))


def neighbour_distances(own: torch.Tensor, other: torch.Tensor, neighbours: torch.Tensor,
                        neighbour_valid: torch.Tensor, nodes_per_env: int,
                        pattern: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) ||other[neighbours[i, d]] - own[i]|| on the valid slots, as sqrt(|a|² + |b|² - 2 a·b)
    (invalid slots hold a meaningless finite value).

    Small fleets (``DENSE_MIXING_UP_TO`` nodes per environment) take the dot products of all pairs of an
    environment from one batched Gram matrix. Larger ones compute only the dot products of the edges, as
    a sampled dense-dense product at the slots' sparse ``pattern`` (``torch.sparse.sampled_addmm``): work
    O(edges · P) and no (N, D, P) block of gathered models (at 2,048 nodes 2 ms against 21 ms for blocked
    gathers and 60 ms for the full Gram matrix).

    Both models are first taken relative to their environment's mean model (over the finite rows of
    ``own``; distances do not change). The expansion cancels: its float32 error is about 1e-7 · |a|²,
    and two models a gossip round apart lie far closer to each other than to the origin. Measured from
    the origin, distances of 2e-3 came out 2.4e-3 apart on the CPU and on CUDA (docs/bench_cuda.md).
    A squared distance within ``SAME_MODEL_BOUND`` of the squared norms is rounding and returns 0: the
    same model on both sides (nodes that kept the initial model, a node's own padding slots) is at
    distance 0 on every device, where sqrt(rounding) gave 2e-4 on the CPU and 5e-4 on CUDA."""
    own, other = _about_the_fleet_mean(own, other, nodes_per_env)
    own_sq = torch.linalg.vector_norm(own, dim=1).square()
    other_sq = torch.linalg.vector_norm(other, dim=1).square()
    if nodes_per_env <= DENSE_MIXING_UP_TO:
        n_params = own.shape[1]
        mine = own.view(-1, nodes_per_env, n_params)
        theirs = other.view(-1, nodes_per_env, n_params)
        gram = matmul(mine, theirs.transpose(1, 2))  # (B, N, N) own_i · other_j
        local = neighbours % nodes_per_env  # neighbours never cross environments
        dots = gram.view(-1, nodes_per_env).gather(1, local)
    else:
        if pattern is None:
            pattern = neighbour_pattern(neighbours, neighbour_valid)
        edge_dots = torch.sparse.sampled_addmm(pattern, own, other.T, beta=0.0).values()
        dots = torch.zeros(neighbours.shape, dtype=own.dtype, device=own.device)
        dots.masked_scatter_(neighbour_valid, edge_dots)
    scale = own_sq.unsqueeze(1) + slots(other_sq, neighbours)
    squared = scale - 2 * dots
    # what is left of the same model on both sides is rounding, about 1e-7 of the scale; the closest
    # distinct models of the default scenario's first rounds lay at 0.16 of it
    return torch.where(squared > SAME_MODEL_BOUND * scale, squared, 0.0).sqrt()
