"""Keeping the simulator's numbers finite, and saying so when they are not.

Two guards, both cheap next to a round:

- ``PARAM_LIMIT``: model parameters saturate at ±1e12 after each gossip step. An inner-product-manipulation
  attacker with a large epsilon multiplies the honest mean by a factor above one every round under the mean
  aggregator, so without a bound the models overflow float32 after a few dozen rounds and the accuracy,
  consensus distance and reward become inf or NaN. 1e12 is far beyond any model that still classifies
  (trained weights are of order 1), and squared distances between such models (1e24 x parameters) and the
  MLP's logits stay well inside float32's 3.4e38.
- ``nonfinite_values``: every step counts the non-finite values among what the round produced (node state
  summaries, the KPIs and the reward components) per environment; the env reports the count in ``info``
  and, with ``check_finite=True``, raises ``FloatingPointError`` naming the quantities. The observation
  still maps non-finite telemetry to 0 so that it stays in its space, but never silently: the count says so.
"""

from __future__ import annotations

import numpy as np
import torch

PARAM_LIMIT = 1e12
# figures that are NaN by design where they are not measured: harm without an attack-free twin
NOT_MEASURED = ("harm",)


def saturate(params: torch.Tensor) -> torch.Tensor:
    """Parameters clamped to ±PARAM_LIMIT, in place where autograd allows (NaN stays NaN: it is counted)."""
    if params.requires_grad:
        return params.clamp(-PARAM_LIMIT, PARAM_LIMIT)
    return params.clamp_(-PARAM_LIMIT, PARAM_LIMIT)


def _per_env_nonfinite(values: torch.Tensor, n_envs: int) -> np.ndarray:
    return (~torch.isfinite(values.reshape(n_envs, -1))).sum(1).cpu().numpy()


def nonfinite_by_quantity(state, n_envs: int, figures: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(B,) counts of non-finite values per quantity: the node state (battery, loss, accuracy), the
    per-environment state, and every (B,) figure of the step (KPIs, reward components, reward)."""
    counts = {name: _per_env_nonfinite(getattr(state, name), n_envs)
              for name in ("battery_wh", "local_loss", "node_accuracy", "accuracy", "consensus_distance")}
    for name, values in figures.items():
        if name in NOT_MEASURED:
            continue
        values = np.asarray(values)
        if values.dtype.kind == "f":
            counts[name] = (~np.isfinite(values)).astype(np.int64).reshape(n_envs, -1).sum(1)
    return counts


def nonfinite_total(counts: dict[str, np.ndarray], n_envs: int) -> np.ndarray:
    total = np.zeros(n_envs, dtype=np.int64)
    for values in counts.values():
        total += values
    return total


def raise_if_nonfinite(counts: dict[str, np.ndarray], rounds: np.ndarray) -> None:
    """``check_finite`` mode: FloatingPointError naming each quantity with non-finite values."""
    bad = {name: values for name, values in counts.items() if values.any()}
    if bad:
        where = ", ".join(f"{name} ({int(values.sum())} values, env(s) {np.flatnonzero(values).tolist()[:8]})"
                          for name, values in bad.items())
        raise FloatingPointError(f"non-finite values after round {int(np.max(rounds))}: {where}")
