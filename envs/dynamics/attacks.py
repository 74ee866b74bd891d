"""Attackers: who they are (hidden from the agent) and what they send.

Model-poisoning attacks replace what an attacker broadcasts; the attacker's own model keeps training
normally so it can keep crafting. An attacker sees what a node in its place could see: the copies its
neighbours broadcast (their public models, this round's included: a rushing attacker sends last), and
who its fellow attackers are (they collude). Statistics of "the honest models" are over the attacker's
honest neighbours only; an attacker with no honest neighbour sends its own model.

| kind | what an active attacker does | source |
|---|---|---|
| sign_flip | broadcasts -x_i, the negation of its model | sign-flipping, e.g. Allen-Zhu et al. 2020; He et al. 2022 |
| gaussian | broadcasts x_i + N(0, gaussian_std²) | Gaussian attack, Blanchard et al. (Krum), NeurIPS 2017 |
| alie | broadcasts μ - z·σ of its honest neighbours' models, z from its neighbourhood's size n and attackers f: z = Φ⁻¹((n - s) / n), s = ⌊n/2 + 1⌋ - f | "A little is enough", Baruch, Baruch & Goldberg, NeurIPS 2019 |
| ipm | broadcasts -ε · μ of its honest neighbours' models | inner-product manipulation, Xie, Koyejo & Gupta, UAI 2020 |
| dissensus | broadcasts the mean over its honest neighbours i of x̂_i - ε·Σ_k w_ik (x̂_k - x̂_i) / Σ_{j attacker} w_ij: each target's own consensus step, reversed and scaled | dissensus attack, He, Karimireddy & Jaggi 2022 (ClippedGossip), one broadcast for all targets |
| min_max | broadcasts μ + γ·p, p = -σ/‖σ‖ (inverse standard deviation); against mean, median or trimmed mean γ is the largest with every ‖μ + γp - x_k‖ ≤ the largest distance between two honest neighbours (Min-Max); against ClippedGossip or trust weighting (aggregator-aware) γ is the median ‖x_k - μ‖, so the message sits at a typical neighbour's distance: inside the clip radius, scored fully trusted | Shejwalkar & Houmansadr, NDSS 2021 |
| label_flip | trains on labels y -> 9 - y, broadcasts honestly | data poisoning, Tolpegin et al., ESORICS 2020 |
| free_rider | claims to train but does not; sends its stale model | free-riding in FL, Lin, Du & Liu 2019 |
| lying_telemetry | reports a full battery, plenty of harvest and a clean grid so it gets picked; when picked broadcasts -x_i | this project (telemetry spoofing) |

Dissensus needs each target's pending consensus step Σ_k w_ik (x̂_k - x̂_i), which He et al.'s threat model
grants (an attacker that knows its neighbours' states and the mixing weights); it is the one kind that
uses two-hop knowledge. An active model attacker sends NaN or ±inf instead with probability
``nonfinite_probability``; receivers discard non-finite messages (envs/dynamics/gossip.py), so they never
reach an honest model.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch

from greengossip.envs.config import AttackConfig, DefenceConfig

ATTACK_KINDS = ("sign_flip", "gaussian", "alie", "ipm", "label_flip", "free_rider", "lying_telemetry", "dissensus",
                "min_max")
CODE = {name: i for i, name in enumerate(ATTACK_KINDS)}
HONEST = -1
MODEL_POISONING = ("sign_flip", "gaussian", "alie", "ipm", "lying_telemetry", "dissensus", "min_max")
# kinds crafted from the honest neighbours' models
FROM_NEIGHBOURS = ("alie", "ipm", "dissensus", "min_max")
# defences whose clipping or trust scores an aggregator-aware attacker stays inside
DISTANCE_DEFENCES = ("clipped_gossip",)


def assign_attackers(attack: AttackConfig, n_nodes: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) attack code per node, HONEST for honest nodes; kinds are dealt to attackers in turn."""
    kind = np.full(n_nodes, HONEST, dtype=np.int64)
    n_attackers = min(int(round(attack.fraction * n_nodes)), n_nodes - 1)  # at least one honest node
    if n_attackers:
        chosen = rng.choice(n_nodes, n_attackers, replace=False)
        kind[chosen] = [CODE[attack.kinds[i % len(attack.kinds)]] for i in range(n_attackers)]
    return kind


def alie_z(n_nodes: int, n_attackers: int) -> float:
    """Baruch et al. 2019: s = floor(n/2 + 1) - f supporters are needed; z = Φ⁻¹((n - s) / n)."""
    supporters = math.floor(n_nodes / 2 + 1) - n_attackers
    quantile = min(max((n_nodes - supporters) / n_nodes, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(quantile)


def is_kind(kind: torch.Tensor, *names: str) -> torch.Tensor:
    mask = torch.zeros_like(kind, dtype=torch.bool)
    for name in names:
        mask |= kind == CODE[name]
    return mask


def alie_z_tensor(n_nodes: torch.Tensor, n_attackers: torch.Tensor) -> torch.Tensor:
    """``alie_z`` elementwise over neighbourhood sizes and attacker counts (float tensors)."""
    supporters = torch.floor(n_nodes / 2 + 1) - n_attackers
    quantile = ((n_nodes - supporters) / n_nodes).clamp(1e-6, 1 - 1e-6)
    return math.sqrt(2.0) * torch.erfinv(2 * quantile - 1)


def crafted_broadcasts(
    attack: AttackConfig,
    defence: DefenceConfig,
    kind: torch.Tensor,
    honest: torch.Tensor,
    params: torch.Tensor,
    public: torch.Tensor,
    neighbours: torch.Tensor,
    neighbour_valid: torch.Tensor,
    neighbour_weight: torch.Tensor,
    rows: torch.Tensor,
    gaussian_noise: torch.Tensor | None,
    nonfinite_draw: torch.Tensor,
) -> torch.Tensor:
    """(A, P) what the model-poisoning attackers on node rows ``rows`` (A,) broadcast this round.

    ``public`` (N, P) holds the copies the neighbours broadcast, this round's included; ``honest`` (N,)
    tells an attacker which neighbours are not fellow attackers."""
    # the statistics are taken in double: neighbours' models start out nearly equal, and their spread (what
    # ALIE and Min-Max scale by) would otherwise be float rounding
    dtype = params.dtype
    params, public = params.double(), public.double()
    own = params.index_select(0, rows)
    own_kind = kind.index_select(0, rows)
    slots = neighbours.index_select(0, rows)  # (A, D)
    seen = neighbour_valid.index_select(0, rows) & honest[slots]  # honest neighbours' slots
    count = seen.sum(1, keepdim=True).to(public.dtype)  # (A, 1)
    # (A, D, P) the copies each attacker holds of its honest neighbours' models (a colluder's copy may be
    # non-finite: it is selected out, not multiplied by 0)
    models = torch.where(seen.unsqueeze(2), public[slots], torch.zeros((), dtype=public.dtype, device=public.device))
    mean_h = torch.where(count > 0, models.sum(1) / count.clamp_min(1), own)
    spread = torch.where(seen.unsqueeze(2), models - mean_h.unsqueeze(1), torch.zeros_like(models))
    std_h = (spread.square().sum(1) / count.clamp_min(1)).sqrt()

    def where(name: str, value: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.where((own_kind == CODE[name]).unsqueeze(1), value, out)

    out = -own  # sign_flip and lying_telemetry
    if bool((own_kind == CODE["alie"]).any()):
        degree = neighbour_valid.index_select(0, rows).sum(1).to(params.dtype)
        colluders = degree - count.squeeze(1)
        z = alie_z_tensor(degree + 1, colluders + 1)
        out = where("alie", mean_h - z.unsqueeze(1) * std_h, out)
    out = where("ipm", -attack.ipm_epsilon * mean_h, out)
    if gaussian_noise is not None:
        out = where("gaussian", own + attack.gaussian_std * gaussian_noise.index_select(0, rows).double(), out)
    if bool((own_kind == CODE["dissensus"]).any()):
        out = where("dissensus", _dissensus(attack, honest, public, neighbours, neighbour_valid, neighbour_weight,
                                            slots, seen, own), out)
    if bool((own_kind == CODE["min_max"]).any()):
        out = where("min_max", _min_max(defence, models, seen, mean_h, std_h), out)
    # kinds built from the honest neighbours' models have nothing to build on without one
    out = torch.where((count == 0) & is_kind(own_kind, *FROM_NEIGHBOURS).unsqueeze(1), own, out)
    # a NaN on even, +inf on odd coordinates: both kinds of non-finite value reach the receivers
    poison = torch.full_like(own, float("nan"))
    poison[:, 1::2] = float("inf")
    return torch.where((nonfinite_draw.index_select(0, rows) < attack.nonfinite_probability).unsqueeze(1), poison,
                       out).to(dtype)


def _dissensus(attack: AttackConfig, honest: torch.Tensor, public: torch.Tensor, neighbours: torch.Tensor,
               neighbour_valid: torch.Tensor, neighbour_weight: torch.Tensor, slots: torch.Tensor,
               seen: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """(A, P) He et al.'s message for each target i (an honest neighbour), averaged over the targets."""
    targets = slots[seen]  # (T,) node rows of all attackers' honest neighbours, attacker by attacker
    target_slots = neighbours.index_select(0, targets)  # (T, D)
    target_weight = neighbour_weight.index_select(0, targets) * neighbour_valid.index_select(0, targets)
    honest_weight = target_weight * honest[target_slots]
    attacker_weight = (target_weight - honest_weight).sum(1, keepdim=True)  # Σ_{j attacker} w_ij
    centre = public.index_select(0, targets)
    heard = honest[target_slots].unsqueeze(2)
    differences = torch.where(heard, public[target_slots] - centre.unsqueeze(1), torch.zeros_like(centre[:1, None]))
    step = (honest_weight.unsqueeze(2) * differences).sum(1)
    message = centre - attack.dissensus_epsilon * step / attacker_weight.clamp_min(1e-12)
    owner = torch.arange(len(slots), device=slots.device).unsqueeze(1).expand_as(slots)[seen]
    total = torch.zeros_like(own).index_add_(0, owner, message)
    count = seen.sum(1, keepdim=True)
    return torch.where(count > 0, total / count.clamp_min(1), own)


def _min_max(defence: DefenceConfig, models: torch.Tensor, seen: torch.Tensor, mean_h: torch.Tensor,
             std_h: torch.Tensor) -> torch.Tensor:
    """(A, P) Shejwalkar & Houmansadr's μ + γ·p, γ as the attacked aggregator allows (module table)."""
    direction = -std_h / torch.linalg.vector_norm(std_h, dim=1, keepdim=True).clamp_min(1e-12)
    offset = mean_h.unsqueeze(1) - models  # (A, D, P) μ - x_k
    to_mean = torch.linalg.vector_norm(offset, dim=2)  # (A, D)
    if defence.aggregator in DISTANCE_DEFENCES or defence.trust_weighting:
        far = torch.where(seen, to_mean, torch.full_like(to_mean, float("nan")))
        gamma = far.nanmedian(1).values.nan_to_num(0.0)  # lower median, like the receivers' own
    else:
        pairwise = torch.cdist(models, models)  # (A, D, D)
        both = seen.unsqueeze(2) & seen.unsqueeze(1)
        radius = torch.where(both, pairwise, torch.zeros_like(pairwise)).flatten(1).max(1).values  # (A,)
        # ‖μ - x_k + γp‖² ≤ R² with ‖p‖ = 1: γ ≤ -b + √(b² - c), b = p·(μ - x_k), c = ‖μ - x_k‖² - R²
        b = (offset * direction.unsqueeze(1)).sum(2)
        c = to_mean.square() - radius.square().unsqueeze(1)
        root = (-b + (b.square() - c).clamp_min(0).sqrt()).clamp_min(0)
        gamma = torch.where(seen, root, torch.full_like(root, float("inf"))).min(1).values
        gamma = torch.where(torch.isfinite(gamma), gamma, torch.zeros_like(gamma))
    return mean_h + gamma.unsqueeze(1) * direction
