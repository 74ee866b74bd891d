"""Scratch buffers reused from round to round for large intermediate results.

Under ``torch.inference_mode`` (a caller may step the env inside it) a (B·N, P) temporary that is used
and dropped within one call can live in a buffer kept across rounds. A fresh block of several MB comes
from the allocator as new pages every round, and faulting them in costs about as much as the arithmetic
that fills them (2,048 nodes: 5.3 MB per model-sized block). Only for results nobody keeps past the
call that asked.

Each thread has buffers of its own: envs stepped in threads at once (the vector env's ``workers``, a
threaded RL runner) would otherwise write into each other's scratch.
"""

from __future__ import annotations

import threading

import torch

_PER_THREAD = threading.local()  # .buffers: that thread's dict; freed with the thread
MAX_BUFFERS = 8  # per thread; fleets of many sizes in one process: keep the memory bounded


def scratch(shape: tuple[int, ...], like: torch.Tensor, tag: str = "") -> torch.Tensor:
    """A buffer of ``shape`` with ``like``'s dtype and device, the same one on every call with these
    (the caller overwrites it whole). ``tag`` keeps apart buffers of one shape that are alive together."""
    buffers = getattr(_PER_THREAD, "buffers", None)
    if buffers is None:
        buffers = _PER_THREAD.buffers = {}
    key = (tuple(shape), like.dtype, like.device, tag)
    buffer = buffers.get(key)
    if buffer is None:
        if len(buffers) >= MAX_BUFFERS:
            buffers.clear()
        buffer = buffers[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buffer


def difference(a: torch.Tensor, b: torch.Tensor, tag: str = "") -> torch.Tensor:
    """a - b (``b`` broadcast to ``a``'s shape), in a scratch buffer in inference mode (``scratch``'s tag)."""
    if not torch.is_inference_mode_enabled():
        return a - b
    return torch.sub(a, b, out=scratch(a.shape, a, tag))
