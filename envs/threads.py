"""How the simulator's work runs: NumPy's BLAS with one thread, torch in inference mode.

The round's small per-node products go through NumPy's OpenBLAS (``envs/dynamics/learning.py``), which
starts a thread per core for the larger ones. On a machine whose cores are busy with anything else
(training workers, the learner, a second env) those threads wait for each other and a round becomes many
times slower: the reason the CLI runs torch with one thread too. The limit holds only while the env works
(``FleetBatch`` wraps reset and step); the caller's setting is restored afterwards.

The same methods run under ``torch.inference_mode``: the simulator never differentiates (its gradients are
written out by hand), and without autograd's version counters and view tracking each of the few hundred
small torch ops of a round is cheaper (about 5-10 % of a default step). Tensors made there are inference
tensors: code outside may read them but not update them in place.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def _blas_libraries() -> tuple:
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


def simulator_call(method: F) -> F:
    """Run ``method`` in torch's inference mode with every BLAS library NumPy loaded limited to one
    thread (a few µs per call)."""

    @functools.wraps(method)
    @torch.inference_mode()
    def limited(*args, **kwargs):
        libraries = _blas_libraries()
        before = [library.get_num_threads() for library in libraries]
        for library, threads in zip(libraries, before):
            if threads != 1:
                library.set_num_threads(1)
        try:
            return method(*args, **kwargs)
        finally:
            for library, threads in zip(libraries, before):
                if threads != 1:
                    library.set_num_threads(threads)

    return limited  # type: ignore[return-value]
