"""The workload: what one round trains and what one broadcast carries, stated in one place.

Every node runs a real learner (``envs/dynamics/learning.py``) whose accuracy the simulator measures.
Compute time and message bytes come from one workload, chosen by ``config.workload``:

* ``learner``: the learner itself. Its parameter count sets the bytes of every message and its
  training FLOPs per sample set the compute time, so cost and accuracy describe the same model.
* ``emulated``: a named on-device model (``WORKLOAD_PROFILES``) whose parameter count and training
  FLOPs per sample set compute and bytes, while the learner's accuracy stands in for the emulated
  model's. The proxy's limits are in docs/world_model.md (Workload).

Both use the same message encoding, so compression changes bytes in the same proportions whichever
workload is chosen: ``full`` sends every parameter as float32; ``q8`` one byte per parameter and one
float32 scale (the scale is max |Δ| / 127, as ``gossip.compress`` computes it); ``topK`` the ceil(K % · P)
largest entries of Δ as float32 values with int32 indices. What compression does to accuracy is
always the learner's, measured under CHOCO-SGD error feedback (``envs/dynamics/gossip.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

COMPRESSION_LEVELS: tuple[str, ...] = ("full", "q8", "top10", "top1")
TOPK_FRACTION: dict[str, float] = {"top10": 0.10, "top1": 0.01}
FLOAT_BYTES = 4
INDEX_BYTES = 4
# A training step costs about three forward passes (forward, and a backward of about twice the forward:
# Kaplan et al., "Scaling laws for neural language models", 2020, sec. 2.1), at 2 FLOPs per multiply-add.
TRAIN_FLOP_PER_PARAMETER = 6.0


@dataclass(frozen=True)
class WorkloadProfile:
    """An emulated on-device model: its size and its training cost per sample."""

    n_params: int
    train_gflop_per_sample: float
    source: str


WORKLOAD_PROFILES: dict[str, WorkloadProfile] = {
    "mobilenet_v2": WorkloadProfile(
        n_params=3_504_872,
        # 300 M multiply-adds per 224 px image forward = 0.6 GFLOP; training about three times that
        train_gflop_per_sample=1.8,
        source="MobileNetV2 1.0 at 224 px: 3.4 M parameters and 300 M multiply-adds (Sandler et al., CVPR "
               "2018, Table 4); 3,504,872 parameters in torchvision's implementation, 14.0 MB as float32",
    ),
}


def message_bytes(n_params: int, level: str) -> float:
    """Bytes of one broadcast of a model of ``n_params`` parameters at compression ``level``."""
    if level == "full":
        return float(FLOAT_BYTES * n_params)
    if level == "q8":
        return float(n_params + FLOAT_BYTES)
    if level in TOPK_FRACTION:
        kept = max(1, math.ceil(TOPK_FRACTION[level] * n_params))
        return float(kept * (FLOAT_BYTES + INDEX_BYTES))
    raise ValueError(f"unknown compression level {level!r}; allowed: {list(COMPRESSION_LEVELS)}")


@dataclass(frozen=True)
class Workload:
    """What the scenario charges for: parameters on the wire and training GFLOP per sample."""

    name: str
    n_params: int
    train_gflop_per_sample: float

    def bytes_per_level(self) -> tuple[float, ...]:
        """Bytes of one broadcast at each of COMPRESSION_LEVELS, in that order."""
        return tuple(message_bytes(self.n_params, level) for level in COMPRESSION_LEVELS)


def make_workload(kind: str, profile: str, learner_params: int) -> Workload:
    """The workload a config names: the learner's own (``learner_params`` parameters) or a profile's."""
    if kind == "learner":
        return Workload("learner", learner_params, TRAIN_FLOP_PER_PARAMETER * learner_params / 1e9)
    if kind == "emulated":
        if profile not in WORKLOAD_PROFILES:
            raise ValueError(f"unknown workload profile {profile!r}; allowed: {sorted(WORKLOAD_PROFILES)}")
        found = WORKLOAD_PROFILES[profile]
        return Workload(profile, found.n_params, found.train_gflop_per_sample)
    raise ValueError(f"unknown workload kind {kind!r}; allowed: 'learner', 'emulated'")
