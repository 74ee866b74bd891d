"""Summary statistics of episode KPIs, shared by the evaluation tables and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t confidence interval, n) of the finite values."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(data)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(data[0]), float("nan"), 1
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return float(data.mean()), half, n
