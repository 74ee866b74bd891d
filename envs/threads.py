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

Memory: a round of thousands of nodes makes and frees a few dozen tensors of several MB (parameters,
gradients, public copies). glibc serves blocks that large with fresh ``mmap`` pages and trims the heap
when they are freed, so every round pays the kernel for faulting in and zeroing the same megabytes again.
:func:`keep_freed_memory` raises glibc's mmap and trim thresholds once (``mallopt``), so that freed blocks
stay in the heap for the next round, as a caching allocator would. It is process-wide and only ever
raises the thresholds; set ``GREENGOSSIP_KEEP_FREED_MEMORY=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def _blas_libraries() -> tuple:
    from threadpoolctl import ThreadpoolController

    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Keep blocks up to 32 MB that the simulator frees in the heap for reuse, instead of unmapping them
    and faulting fresh pages in next round (glibc only; returns whether the setting was applied)."""
    if os.environ.get("GREENGOSSIP_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def simulator_call(method: F) -> F:
    """Run ``method`` in torch's inference mode with every BLAS library NumPy loaded limited to one
    thread (a few µs per call)."""

    @functools.wraps(method)
    @torch.inference_mode()
    def limited(*args, **kwargs):
        keep_freed_memory()
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
