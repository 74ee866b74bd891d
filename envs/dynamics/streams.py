"""Counter-based random numbers: every draw is a hash of (episode key, round, stream, element).

A stateful generator would tie a round's random numbers to how many environments share a batch; a
counter-based one makes node i of environment b in round t see the same numbers whether it is stepped
alone or inside a batch of 64, which is what lets the vector env match single envs exactly. The hash is
Chris Wellons' "lowbias32" integer mixer: on the CPU in NumPy's uint32 lanes, whose products wrap modulo
2**32 as the hash wants; on other devices on int64 tensors, with the 32-bit products split so that
nothing overflows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9

# stream ids: one per use, so draws never collide
BATCHES, ATTACK_ON, ATTACK_NOISE, NONFINITE, PRIVACY, MODEL_INIT, BACKGROUND, AFFORD_BIT = range(1, 9)
AVAILABILITY = 50  # drawn once per episode at scenario build (envs/availability.py)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for 0 <= x < 2**32, without int64 overflow."""
    low, high = x & 0xFFFF, x >> 16
    return ((((high * constant) & 0xFFFF) << 16) + low * constant) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


_MASK32_U64, _M1_U64, _M2_U64 = np.uint64(MASK32), np.uint64(0x7FEB352D), np.uint64(0x846CA68B)
_S15_U64, _S16_U64 = np.uint64(15), np.uint64(16)
_M1_U32, _M2_U32, _GOLDEN_U32 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B), np.uint32(GOLDEN)


def _mix32_np(x: np.ndarray) -> np.ndarray:
    """mix32 on a uint64 numpy array (products wrap modulo 2**64, so no split is needed)."""
    x = x & _MASK32_U64
    x ^= x >> _S16_U64
    x *= _M1_U64
    x &= _MASK32_U64
    x ^= x >> _S15_U64
    x *= _M2_U64
    x &= _MASK32_U64
    return x ^ (x >> _S16_U64)


def _mix32_np_inplace(x: np.ndarray, shifted: np.ndarray) -> np.ndarray:
    """mix32 on a uint32 numpy array, in place: uint32 products wrap modulo 2**32, which is the hash's own
    arithmetic, so no mask is needed; ``shifted`` is scratch of the same shape."""
    for multiplier, shift in ((_M1_U32, 16), (_M2_U32, 15)):
        x ^= np.right_shift(x, shift, out=shifted)
        x *= multiplier
    x ^= np.right_shift(x, 16, out=shifted)
    return x


def _prefixes(key: torch.Tensor, round_index: torch.Tensor, stream: int) -> np.ndarray:
    """(B,) uint64 hash of (episode key, round, stream) per environment."""
    keys = key.cpu().numpy().astype(np.uint64)
    rounds = round_index.cpu().numpy().astype(np.uint64)
    return _mix32_np(_mix32_np(_mix32_np(keys) ^ rounds) ^ np.uint64((stream * GOLDEN) & MASK32))


def _bits_np(key: torch.Tensor, round_index: torch.Tensor, stream: int, count: int) -> np.ndarray:
    """(B, count) uint32 element hashes, computed in NumPy: 32-bit lanes whose products wrap without the
    16-bit split that int64 tensors need, each operation in place (a third of the operations of the torch
    hash, on half the bytes)."""
    prefixes = _prefixes(key, round_index, stream).astype(np.uint32)
    bits = prefixes[:, None] ^ np.arange(count, dtype=np.uint32)
    shifted = np.empty_like(bits)
    _mix32_np_inplace(bits, shifted)
    bits += _GOLDEN_U32
    return _mix32_np_inplace(bits, shifted)


def _bits(key: torch.Tensor, round_index: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) 32-bit hashes (int64) for B environments with episode keys ``key`` (B,) at rounds (B,).

    On the CPU the element hashes are computed in NumPy (``_bits_np``); other devices hash in torch.
    ``tests/test_determinism.py`` checks that both give the same bits."""
    count = math.prod(shape)
    if key.device.type == "cpu":
        return torch.from_numpy(_bits_np(key, round_index, stream, count).astype(np.int64)).view(len(key), *shape)
    prefixes = _prefixes(key, round_index, stream)
    return _bits_torch(torch.from_numpy(prefixes.astype(np.int64)).to(key.device), count).view(len(key), *shape)


def _top_bits(key, round_index, stream: int, shape: tuple[int, ...], offset: int) -> torch.Tensor:
    """(B, *shape) float32 (top 24 bits of each hash + ``offset``) · 2**-24, exact in float32."""
    if key.device.type == "cpu":  # in NumPy, without the int64 round trip
        top = np.right_shift(_bits_np(key, round_index, stream, math.prod(shape)), 8)
        if offset:
            top += np.uint32(offset)
        return torch.from_numpy(top.astype(np.float32) * np.float32(2.0**-24)).view(len(key), *shape)
    return ((_bits(key, round_index, stream, shape) >> 8) + offset).float() * 2.0**-24


def _bits_torch(prefix: torch.Tensor, count: int) -> torch.Tensor:
    counter = torch.arange(count, device=prefix.device, dtype=torch.long)
    return mix32(mix32(prefix.unsqueeze(1) ^ counter) + GOLDEN)


def uniform(key, round_index, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) float32 uniform in [0, 1) with 24 random bits."""
    return _top_bits(key, round_index, stream, shape, 0)


def open_uniform(key, round_index, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) float32 uniform in (0, 1]."""
    return _top_bits(key, round_index, stream, shape, 1)


def normal(key, round_index, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normal by Box-Muller from two independent uniform streams."""
    u1 = open_uniform(key, round_index, stream, shape)
    u2 = uniform(key, round_index, stream + 1000, shape)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def laplace(key, round_index, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard Laplace (scale 1) by inverting its CDF."""
    u = open_uniform(key, round_index, stream, shape) - 0.5  # (-0.5, 0.5]
    return -torch.sign(u) * torch.log1p(-2.0 * u.abs()).clamp(min=-80.0)
