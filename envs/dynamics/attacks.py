"""Attackers: who they are (hidden from the agent) and what they send.

Model-poisoning attacks replace what an attacker broadcasts; the attacker's own model keeps training
normally so it can keep crafting. Attackers are omniscient about honest models, the usual worst case.

| kind | what an active attacker does | source |
|---|---|---|
| sign_flip | broadcasts -x_i, the negation of its model | sign-flipping, e.g. Allen-Zhu et al. 2020; He et al. 2022 |
| gaussian | broadcasts x_i + N(0, gaussian_std²) | Gaussian attack, Blanchard et al. (Krum), NeurIPS 2017 |
| alie | broadcasts mean_h - z·std_h, z from the number of nodes and attackers | "A little is enough", Baruch, Baruch & Goldberg, NeurIPS 2019 |
| ipm | broadcasts -ε · mean_h | inner-product manipulation, Xie, Koyejo & Gupta, UAI 2020 |
| label_flip | trains on labels y -> 9 - y, broadcasts honestly | data poisoning, Tolpegin et al., ESORICS 2020 |
| free_rider | claims to train but does not; sends its stale model | free-riding in FL, Lin, Du & Liu 2019 |
| lying_telemetry | reports a full battery, plenty of harvest and a clean grid so it gets picked; when picked broadcasts -x_i | this project (telemetry spoofing) |

An active model attacker sends NaN or ±inf instead with probability ``nonfinite_probability``; receivers
discard non-finite messages (envs/dynamics/gossip.py), so they never reach an honest model.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch

from greengossip.envs.config import AttackConfig

ATTACK_KINDS = ("sign_flip", "gaussian", "alie", "ipm", "label_flip", "free_rider", "lying_telemetry")
CODE = {name: i for i, name in enumerate(ATTACK_KINDS)}
HONEST = -1
MODEL_POISONING = ("sign_flip", "gaussian", "alie", "ipm", "lying_telemetry")


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


def crafted_broadcasts(
    attack: AttackConfig,
    kind: torch.Tensor,
    honest: torch.Tensor,
    grouped_params: torch.Tensor,
    gaussian_noise: torch.Tensor | None,
    nonfinite_draw: torch.Tensor,
) -> torch.Tensor:
    """(B·N, P) what each model-poisoning attacker would broadcast this round (rows of others unused).

    ``honest`` (B, N) and ``grouped_params`` (B, N, P) are per environment: attackers only know the
    honest models of their own fleet."""
    n_envs, n_nodes, n_params = grouped_params.shape
    weight = honest.unsqueeze(2).to(grouped_params.dtype)
    count = weight.sum(1, keepdim=True).clamp_min(1)
    mean_h = (grouped_params * weight).sum(1, keepdim=True) / count  # (B, 1, P)
    std_h = (((grouped_params - mean_h) ** 2 * weight).sum(1, keepdim=True) / count).sqrt()
    z = alie_z(n_nodes, int((~honest[0]).sum()))  # same attacker count in every environment
    params = grouped_params.reshape(-1, n_params)

    def per_node(value: torch.Tensor) -> torch.Tensor:
        return value.expand(n_envs, n_nodes, n_params).reshape(-1, n_params)

    out = -params  # sign_flip and lying_telemetry
    out = torch.where(is_kind(kind, "alie").unsqueeze(1), per_node(mean_h - z * std_h), out)
    out = torch.where(is_kind(kind, "ipm").unsqueeze(1), per_node(-attack.ipm_epsilon * mean_h), out)
    if gaussian_noise is not None:
        out = torch.where(is_kind(kind, "gaussian").unsqueeze(1), params + attack.gaussian_std * gaussian_noise, out)
    # a NaN on even, +inf on odd coordinates: both kinds of non-finite value reach the receivers
    poison = torch.full_like(params, float("nan"))
    poison[:, 1::2] = float("inf")
    return torch.where((nonfinite_draw < attack.nonfinite_probability).unsqueeze(1), poison, out)
