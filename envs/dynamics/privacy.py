"""Differentially private telemetry, after OpenMined's federated CPU-usage tracker, where members only
ever publish noised metrics. Raw power, battery and load traces leak secrets (Hertzbleed, Wang et al.,
USENIX Security 2022; PLATYPUS, Lipp et al., IEEE S&P 2021), so the scheduler sees noised values.

A report is the vector of the four private values, each scaled by its range to [0, 1]:
``battery_soc`` (range 1), ``harvest_now`` and ``harvest_forecast`` (range 10, in full-round costs) and
``load`` (range 1). One node's report changes by at most 1 per coordinate: L1 sensitivity 4, L2 2.

    laplace   noise Laplace(0, b) per coordinate with b = 4 / ε          -> ε-DP per report
    gaussian  noise N(0, σ²) per coordinate with σ = 2·√(2 ln(1.25/δ)) / ε -> (ε, δ)-DP per report
              (the classic calibration, Dwork & Roth 2014, Thm A.1; exact for ε ≤ 1)

Composition over a node's reports: ``basic`` adds ε (and δ) per report; ``rdp`` uses opacus' Rényi-DP
accountant for the Gaussian mechanism (Mironov 2017), much tighter over many reports. A node reports
when it was awake in the last round or every ``heartbeat_rounds`` rounds, and stops for good once the
next report would take it past its budget: its telemetry then goes stale.
"""

from __future__ import annotations

import functools
import math

import torch

from greengossip.envs.config import PrivacyConfig
from greengossip.envs.dynamics import streams

PRIVATE_RANGES = {"battery_soc": 1.0, "harvest_now": 10.0, "harvest_forecast": 10.0, "load": 1.0}
L1_SENSITIVITY = float(len(PRIVATE_RANGES))
L2_SENSITIVITY = math.sqrt(len(PRIVATE_RANGES))
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def noise_scale(privacy: PrivacyConfig) -> float:
    """Laplace b or Gaussian σ, in range-normalised units, of one coordinate of one report."""
    if privacy.mechanism == "laplace":
        return L1_SENSITIVITY / privacy.epsilon_per_report
    return L2_SENSITIVITY * math.sqrt(2 * math.log(1.25 / privacy.delta)) / privacy.epsilon_per_report


@functools.lru_cache(maxsize=4096)
def _rdp_epsilon(noise_multiplier: float, reports: int, delta: float) -> float:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    if reports == 0:
        return 0.0
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=reports, orders=list(RDP_ORDERS))
    return float(get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)[0])


class PrivacyAccountant:
    """Per-node count of reports and the ε they have cost."""

    def __init__(self, privacy: PrivacyConfig, n_nodes: int, device: torch.device):
        self.privacy = privacy
        self.reports = torch.zeros(n_nodes, dtype=torch.long, device=device)

    def epsilon_for(self, reports: torch.Tensor) -> torch.Tensor:
        privacy = self.privacy
        if privacy.mechanism == "none":
            return torch.zeros_like(reports, dtype=torch.float32)
        if privacy.accountant == "basic":
            return reports.float() * privacy.epsilon_per_report
        multiplier = noise_scale(privacy) / L2_SENSITIVITY
        table = {int(k): _rdp_epsilon(multiplier, int(k), privacy.delta) for k in torch.unique(reports).tolist()}
        return torch.tensor([table[int(k)] for k in reports.tolist()], device=reports.device)

    @property
    def spent(self) -> torch.Tensor:
        """(N,) ε spent so far."""
        return self.epsilon_for(self.reports)

    def may_report(self) -> torch.Tensor:
        """(N,) bool: one more report stays within the budget."""
        return self.epsilon_for(self.reports + 1) <= self.privacy.budget + 1e-9

    def record(self, reporting: torch.Tensor) -> None:
        self.reports = self.reports + reporting.long()


def privatize(privacy: PrivacyConfig, values: dict[str, torch.Tensor], key: torch.Tensor, rounds: torch.Tensor
              ) -> dict[str, torch.Tensor]:
    """Noised copies of the private telemetry values (in their own units); other keys pass through.

    ``key`` and ``rounds`` (B,) select each environment's counter-based noise stream for this round."""
    scale = noise_scale(privacy)
    n_nodes = len(values["battery_soc"]) // len(key)
    shape = (n_nodes, len(PRIVATE_RANGES))
    draw = streams.laplace if privacy.mechanism == "laplace" else streams.normal
    noise = scale * draw(key, rounds, streams.PRIVACY, shape).view(-1, len(PRIVATE_RANGES))
    out = dict(values)
    for column, (name, value_range) in enumerate(PRIVATE_RANGES.items()):
        clean = values[name].clamp(0.0, value_range) / value_range
        out[name] = (clean + noise[:, column]) * value_range
    return out
