"""Matrix products of the round: many small per-node ones, and the evaluation's wide one.

On the CPU they go through NumPy's OpenBLAS on views of the tensors' memory (no copies). For these shapes
(a few dozen rows, 64 features, 10 classes) torch 2.13's MKL spends about 4 µs per matrix in ``bmm`` on
AMD EPYC cores; OpenBLAS takes about a third of that, and 1.5-3x less for the evaluation's
(test points x 64) @ (64 x nodes·classes) product (one thread each; ``benchmarks/bench_step.py``).
Tensors that need autograd (the gradient tests) and other devices (CUDA) keep torch. While the env works,
OpenBLAS runs on one thread (``envs/threads.py``).
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
