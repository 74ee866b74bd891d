"""Matrix products of the round: the per-node small products with an optional bias, and the sparse
mixing of the gossip step, which must repeat bit for bit on CUDA under torch's deterministic flag."""

from __future__ import annotations

import torch


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ bias): (i, k) @ (k, j), or (n, i, k) @ (n, k, j) with one small product per node
    (bias (n, 1, j), stacked products only)."""
    return a @ b if bias is None else torch.baddbmm(bias, a, b)


def sparse_product(matrix: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``matrix`` (sparse CSR, N x M) @ ``values`` (M, ...). On CUDA under
    ``torch.use_deterministic_algorithms(True)`` the rows are summed by ``rowwise_sparse_product``:
    cuSPARSE's product is outside that flag's reach, and two reruns of an N = 128 episode differed there by
    1e-8 in the first round (H200; docs/bench_cuda.md), while every other kernel repeated bit
    for bit."""
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        return rowwise_sparse_product(matrix, values)
    return matrix @ values


def rowwise_sparse_product(matrix: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """CSR @ dense as each nonzero's scaled row of ``values`` added into its output row with
    ``index_add_``, which the deterministic flag makes repeatable on CUDA. Costs a (nonzeros, P) buffer."""
    crow = matrix.crow_indices()
    rows = torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())
    flat = values.reshape(values.shape[0], -1)
    terms = matrix.values().to(flat.dtype).unsqueeze(1) * flat[matrix.col_indices()]
    out = torch.zeros(matrix.shape[0], flat.shape[1], dtype=flat.dtype, device=flat.device)
    return out.index_add_(0, rows, terms).view(matrix.shape[0], *values.shape[1:])
