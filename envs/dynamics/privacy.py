"""Differentially private telemetry, after OpenMined's federated CPU-usage tracker, where members only
ever publish noised metrics and the aggregator sees only protected values. Raw power, battery and load
traces leak secrets (Hertzbleed, Wang et al., USENIX Security 2022; PLATYPUS, Lipp et al., IEEE S&P 2021).

What is private is what only the node knows: its battery's state of charge and the CPU load of its other
work (``background_load``; it slows the node's training and raises its energy). Harvest follows from the
region's weather and the panel size, and the grid's intensity from the region: both are public.

A value report is the vector of the two private values, each scaled to [0, 1] (``PRIVATE_RANGES``): one
node's report changes by at most 1 per coordinate, L1 sensitivity 2, L2 √2.

    laplace   noise Laplace(0, b) per coordinate with b = 2 / ε          -> ε-DP per report
    gaussian  noise N(0, σ²) per coordinate with σ = √2·√(2 ln(1.25/δ)) / ε -> (ε, δ)-DP per report
              (the classic calibration, Dwork & Roth 2014, Thm A.1; exact for ε ≤ 1)

Composition over a device's reports: ``basic`` adds ε (and δ) per report; ``rdp`` uses opacus' Rényi-DP
accountant for the Gaussian mechanism (Mironov 2017), much tighter over many reports. The accountant is the
device's, not the episode's: it lives as long as the env instance and carries over from episode to episode.
A node reports when it was awake in the last round or every ``heartbeat_rounds`` rounds, if the report
stays within its lifetime ``budget`` and, with ``daily_epsilon``, within that many ε per day of its life so
far (a day's worth in its first day); otherwise it stays silent and its last released values stand.

With ``battery_report: afford_bit`` the battery is not released as a value at all: the node sends one bit,
"I can afford the next ``afford_rounds`` full rounds", through RAPPOR's permanent randomised response
(Erlingsson, Pihur & Korolova, CCS 2014): for each value of the bit, a device draws once in its life a
response that is a fair coin with probability f (``afford_flip``) and the true bit otherwise, and reports
that memoised response whenever the bit has that value. Each value costs ε∞ = 2·ln((1 - f/2) / (f/2))
once, whatever the number of reports (RAPPOR's longitudinal bound, one-bit Bloom filter); the moments at
which a device's responses switch still follow its true bit, which the bound does not cover. A device
whose first report of a value would pass its allowance keeps its last released bit until it can afford it.
"""

from __future__ import annotations

import functools
import math

import torch

from greengossip.envs.config import PrivacyConfig
from greengossip.envs.dynamics import streams

PRIVATE_RANGES = {"battery_soc": 1.0, "load": 1.0}
L1_SENSITIVITY = float(len(PRIVATE_RANGES))
L2_SENSITIVITY = math.sqrt(len(PRIVATE_RANGES))
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def noise_scale(privacy: PrivacyConfig) -> float:
    """Laplace b or Gaussian σ, in range-normalised units, of one coordinate of one report."""
    if privacy.mechanism == "laplace":
        return L1_SENSITIVITY / privacy.epsilon_per_report
    return L2_SENSITIVITY * math.sqrt(2 * math.log(1.25 / privacy.delta)) / privacy.epsilon_per_report


def bit_epsilon(privacy: PrivacyConfig) -> float:
    """ε∞ of one memoised one-bit response (RAPPOR, h = 1): 2·ln((1 - f/2) / (f/2))."""
    half = privacy.afford_flip / 2
    return 2 * math.log((1 - half) / half)


def debiased_share(responses: torch.Tensor, flip: float) -> torch.Tensor:
    """Unbiased estimate of the share of devices whose true bit is 1, from their memoised responses
    (..., N) bool: a response is 1 with probability f/2 + (1 - f)·bit, so the share is
    (mean response - f/2) / (1 - f) (RAPPOR's estimator for one bit, h = 1). A fleet aggregate: it may
    come out below 0 or above 1, and only its mean over many devices is the share."""
    if not 0 < flip < 1:
        raise ValueError(f"afford_flip must be in (0, 1) for the share to be estimable, got {flip}")
    return (responses.float().mean(-1) - flip / 2) / (1 - flip)


@functools.lru_cache(maxsize=4096)
def _rdp_epsilon(noise_multiplier: float, reports: int, delta: float) -> float:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    if reports == 0:
        return 0.0
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=reports, orders=list(RDP_ORDERS))
    return float(get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)[0])


class PrivacyAccountant:
    """Per-device lifetime count of value reports, of the bit values memoised, of rounds lived, and the ε
    they have cost. Survives the episodes of one env instance."""

    def __init__(self, privacy: PrivacyConfig, n_nodes: int, device: torch.device, rounds_per_day: float = 96.0):
        self.privacy = privacy
        self.rounds_per_day = rounds_per_day
        self.reports = torch.zeros(n_nodes, dtype=torch.long, device=device)
        self.rounds_lived = torch.zeros(n_nodes, dtype=torch.long, device=device)
        self.bit_seen = torch.zeros(n_nodes, 2, dtype=torch.bool, device=device)  # bit value ever reported
        self.bit_memo = torch.zeros(n_nodes, 2, dtype=torch.bool, device=device)  # its permanent response

    def epsilon_for(self, reports: torch.Tensor) -> torch.Tensor:
        """ε of ``reports`` value reports (the bit's cost not included)."""
        privacy = self.privacy
        if privacy.mechanism == "none":
            return torch.zeros_like(reports, dtype=torch.float32)
        if privacy.accountant == "basic":
            return reports.float() * privacy.epsilon_per_report
        multiplier = noise_scale(privacy) / L2_SENSITIVITY
        table = {int(k): _rdp_epsilon(multiplier, int(k), privacy.delta) for k in torch.unique(reports).tolist()}
        return torch.tensor([table[int(k)] for k in reports.tolist()], device=reports.device)

    def _bit_spent(self) -> torch.Tensor:
        if self.privacy.mechanism == "none":
            return torch.zeros(len(self.reports), device=self.reports.device)
        return self.bit_seen.sum(1).float() * bit_epsilon(self.privacy)

    @property
    def spent(self) -> torch.Tensor:
        """(N,) ε spent so far in each device's life."""
        return self.epsilon_for(self.reports) + self._bit_spent()

    @property
    def days_lived(self) -> torch.Tensor:
        """(N,) simulated days each device has lived, at least one (a day's allowance comes up front)."""
        return (self.rounds_lived.float() / self.rounds_per_day).clamp_min(1.0)

    def allowance(self) -> torch.Tensor:
        """(N,) the most ε each device may have spent by now: its lifetime budget, and its daily pace (a
        day's worth in its first day, then ``daily_epsilon`` per day lived), so spent / days lived never
        passes ``daily_epsilon``."""
        budget = torch.full((len(self.reports),), self.privacy.budget, device=self.reports.device)
        if self.privacy.daily_epsilon is None:
            return budget
        return torch.minimum(budget, self.privacy.daily_epsilon * self.days_lived)

    def _bit_reserved(self) -> torch.Tensor:
        """(N,) ε kept for the one-bit report's values a device has not released yet: value reports may not
        take it, or a device that has said "I can afford the rounds" could never afford to say it cannot."""
        if self.privacy.mechanism == "none" or self.privacy.battery_report != "afford_bit":
            return torch.zeros(len(self.reports), device=self.reports.device)
        return (~self.bit_seen).sum(1).float() * bit_epsilon(self.privacy)

    def may_report(self) -> torch.Tensor:
        """(N,) bool: one more value report stays within the allowance, less what the bit's unreleased
        values keep."""
        spent = self.epsilon_for(self.reports + 1) + self._bit_spent() + self._bit_reserved()
        return spent <= self.allowance() + 1e-9

    def record(self, reporting: torch.Tensor) -> None:
        self.reports = self.reports + reporting.long()

    def live(self, rows: torch.Tensor) -> None:
        """One more round in the life of the devices ``rows`` (bool)."""
        self.rounds_lived = self.rounds_lived + rows.long()

    def afford_bit(self, truth: torch.Tensor, key: torch.Tensor, rounds: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(response, released), each (N,) bool: the memoised randomised response to each device's true bit
        ``truth``, drawn the first time the device reports that value (from the episode's counter-based
        stream) and the same ever after; a device whose first report of a value would pass its allowance
        releases nothing (``released`` False) until it can afford it."""
        value = truth.long()
        fresh = ~self.bit_seen.gather(1, value.unsqueeze(1)).squeeze(1)
        released = ~fresh | (self.spent + bit_epsilon(self.privacy) <= self.allowance() + 1e-9)
        fresh = fresh & released
        if bool(fresh.any()):
            n_nodes = len(truth) // len(key)
            draws = streams.uniform(key, rounds, streams.AFFORD_BIT, (n_nodes, 2)).view(-1, 2)
            response = torch.where(draws[:, 0] < self.privacy.afford_flip, draws[:, 1] < 0.5, truth)
            memo = torch.where(fresh, response, self.bit_memo.gather(1, value.unsqueeze(1)).squeeze(1))
            self.bit_memo = self.bit_memo.scatter(1, value.unsqueeze(1), memo.unsqueeze(1))
            self.bit_seen = self.bit_seen.scatter(1, value.unsqueeze(1), torch.ones_like(fresh).unsqueeze(1))
        return self.bit_memo.gather(1, value.unsqueeze(1)).squeeze(1), released


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
