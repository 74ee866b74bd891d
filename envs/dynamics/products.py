"""Kernels of the round that NumPy runs faster than torch on the CPU: matrix products (many small per-node
ones, and the evaluation's wide one) and the sort of short rows.

On the CPU they go through NumPy's OpenBLAS on views of the tensors' memory (no copies). For these shapes
(a few dozen rows, 64 features, 10 classes) torch 2.13's MKL spends about 4 µs per matrix in ``bmm`` on
AMD EPYC cores; OpenBLAS takes about a third of that, and 1.5-3x less for the evaluation's
(test points x 64) @ (64 x nodes·classes) product (one thread each; ``benchmarks/bench_step.py``).
Tensors that need autograd (the gradient tests) and other devices (CUDA) keep torch. While the env works,
OpenBLAS runs on one thread (``envs/threads.py``). Sorting 2,048 rows of 21 neighbour distances takes
torch 0.51 ms and NumPy 0.12 ms (``sort_rows``).
"""

from __future__ import annotations

import numpy as np
import torch

# set False to run the torch kernels on the CPU as well (what CUDA runs; tests compare the two)
NUMPY_ON_CPU = True


def _numpy_path(a: torch.Tensor, b: torch.Tensor) -> bool:
    return NUMPY_ON_CPU and a.device.type == "cpu" and not (a.requires_grad or b.requires_grad)


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b (+ bias): (i, k) @ (k, j), or (n, i, k) @ (n, k, j) with one small product per node
    (bias (n, 1, j), stacked products only)."""
    if _numpy_path(a, b):
        product = torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
        return product if bias is None else product.add_(bias)
    return a @ b if bias is None else torch.baddbmm(bias, a, b)


def sparse_product(matrix: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``matrix`` (sparse CSR, N x M) @ ``values`` (M, ...). On CUDA under
    ``torch.use_deterministic_algorithms(True)`` the rows are summed by ``rowwise_sparse_product``:
    cuSPARSE's product is outside that flag's reach, and two reruns of an N = 128 episode differed there by
    1e-8 in the first round (H200, stop 24; docs/bench_cuda.md), while every other kernel repeated bit
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


def sort_rows(values: torch.Tensor) -> torch.Tensor:
    """``values`` (N, D) with each row sorted in ascending order (NaN last, as in ``torch.sort``)."""
    if _numpy_path(values, values):
        return torch.from_numpy(np.sort(values.numpy(), axis=1))
    return values.sort(1).values
