"""Scratch buffers reused from round to round for large intermediate results.

In inference mode (how the env steps) a (B·N, P) temporary that is used and dropped within one call can
live in a buffer kept across rounds. A fresh block of several MB comes from the allocator as new pages
every round, and faulting them in costs about as much as the arithmetic that fills them (2,048 nodes:
5.3 MB per model-sized block; design note 21). Only for results nobody keeps past the call that asked.
"""

from __future__ import annotations

import torch

_BUFFERS: dict[tuple, torch.Tensor] = {}
MAX_BUFFERS = 8  # fleets of many sizes in one process: keep the memory bounded


def scratch(shape: tuple[int, ...], like: torch.Tensor, tag: str = "") -> torch.Tensor:
    """A buffer of ``shape`` with ``like``'s dtype and device, the same one on every call with these
    (the caller overwrites it whole). ``tag`` keeps apart buffers of one shape that are alive together."""
    key = (tuple(shape), like.dtype, like.device, tag)
    buffer = _BUFFERS.get(key)
    if buffer is None:
        if len(_BUFFERS) >= MAX_BUFFERS:
            _BUFFERS.clear()
        buffer = _BUFFERS[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buffer


def difference(a: torch.Tensor, b: torch.Tensor, tag: str = "") -> torch.Tensor:
    """a - b (``b`` broadcast to ``a``'s shape), in a scratch buffer in inference mode (``scratch``'s tag)."""
    if not torch.is_inference_mode_enabled():
        return a - b
    return torch.sub(a, b, out=scratch(a.shape, a, tag))
