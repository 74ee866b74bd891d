"""What one broadcast puts on the wire, encoded as the simulator counts it (``envs/workloads.py``).

``full`` (and an attacker's crafted model) is the model itself as float32: the receiver replaces its copy.
The others carry CHOCO's compressed difference q = Q(x - x̂), which the receiver adds to its copy:
``q8`` as one int8 code per parameter and the float32 scale (max |Δ| / 127, as ``gossip.compress``
computes it); ``top10`` and ``top1`` as the kept entries' float32 values and int32 indices. Decoding
gives back exactly the tensor the simulator adds (the q8 codes are the integers ``round(Δ / scale)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from greengossip.envs.dynamics.gossip import compress
from greengossip.envs.workloads import COMPRESSION_LEVELS, TOPK_FRACTION

# what a message does to the receiver's copy of the sender's public model
SILENT, REPLACE = 0, 1  # then 2 + the index of a compressed level in COMPRESSION_LEVELS
HEADER_FIELDS = ("awake", "sent", "modelled_bytes", "mode")


def mode_of(level: int) -> int:
    """The message mode of a broadcast at COMPRESSION_LEVELS[level]."""
    return REPLACE if COMPRESSION_LEVELS[level] == "full" else 2 + level


def kept_entries(n_params: int, name: str) -> int:
    return max(1, math.ceil(TOPK_FRACTION[name] * n_params))


def payload_bytes(mode: int, n_params: int) -> int:
    """Bytes of the payload of a message of ``mode`` for a model of ``n_params`` parameters."""
    if mode == SILENT:
        return 0
    if mode == REPLACE:
        return 4 * n_params
    name = COMPRESSION_LEVELS[mode - 2]
    if name == "q8":
        return n_params + 4
    return 8 * kept_entries(n_params, name)


def encode(mode: int, vector: torch.Tensor) -> torch.Tensor:
    """The uint8 payload of ``vector`` (P,) float32: the model for REPLACE, else the uncompressed
    difference Δ = x - x̂, compressed here exactly as ``gossip.compress`` does it."""
    vector = vector.contiguous()
    if mode == REPLACE:
        return vector.view(torch.uint8).clone()
    level = mode - 2
    if COMPRESSION_LEVELS[level] == "q8":
        scale = (vector.abs().amax().clamp_min(1e-12) / 127.0).reshape(1)
        codes = torch.round(vector / scale).to(torch.int8)
        return torch.cat([codes.view(torch.uint8), scale.view(torch.uint8)])
    kept_values = compress(vector.unsqueeze(0), torch.tensor([level]))[0]
    k = kept_entries(vector.numel(), COMPRESSION_LEVELS[level])
    kept = kept_values.nonzero().squeeze(1)
    # k entries travel whatever their values: kept entries that are exactly zero are sent as zeros
    if kept.numel() < k:
        zeros = (kept_values == 0).nonzero().squeeze(1)[: k - kept.numel()]
        kept = torch.cat([kept, zeros]).sort().values
    return torch.cat([kept_values[kept].view(torch.uint8), kept.to(torch.int32).view(torch.uint8)])


def decode(mode: int, payload: torch.Tensor, n_params: int) -> torch.Tensor:
    """The (P,) float32 a receiver applies: the model (REPLACE) or the difference to add."""
    if mode == REPLACE:
        return payload.view(torch.float32).clone()
    name = COMPRESSION_LEVELS[mode - 2]
    if name == "q8":
        codes = payload[:n_params].view(torch.int8).float()
        scale = payload[n_params:].clone().view(torch.float32)  # a fresh buffer: aligned for float32
        return codes * scale
    k = payload.numel() // 8
    values = payload[: 4 * k].view(torch.float32)
    indices = payload[4 * k:].clone().view(torch.int32).long()
    out = torch.zeros(n_params, dtype=torch.float32)
    out[indices] = values
    return out


@dataclass
class ByteMeter:
    """Bytes that crossed one node's sockets in a round, by kind."""

    sent: int = 0  # payload bytes sent, one copy per neighbour
    received: int = 0  # payload bytes received while awake (the simulator's bytes_received)
    oversize: int = 0  # of those, bytes beyond the simulator's charge (an attacker's crafted model in full)
    mailbox: int = 0  # payload bytes received while asleep (store and forward: the simulator's mailboxes)
    control: int = 0  # headers, both ways
