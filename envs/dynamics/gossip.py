"""Gossip: compressed broadcast with error feedback (CHOCO-SGD) and consensus mixing.

CHOCO-SGD (Koloskova, Stich & Jaggi, ICML 2019): every node i keeps a public copy x̂_i of its model that
all its neighbours also hold. A broadcasting node sends q_i = Q(x_i - x̂_i) and everyone adds q_i to x̂_i,
so what compression drops this round is sent later (error feedback). An awake node then moves towards
its neighbours' public copies: x_i += γ Σ_j w_ij (x̂_j - x̂_i). With Q = identity and γ = 1 this is
exactly D-PSGD's x_i = Σ_j w_ij x_j.

Messages are kept in the receivers' mailboxes (store and forward), so every neighbour's copy of x̂_j is
the same and one (N, P) tensor holds them all.
"""

from __future__ import annotations

import math

import torch

from envs.devices import COMPRESSION_LEVELS, TOPK_FRACTION


def compress(delta: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Apply each row's compression level (index into COMPRESSION_LEVELS) to (n, P) ``delta``."""
    out = torch.zeros_like(delta)
    n_params = delta.shape[1]
    for code, name in enumerate(COMPRESSION_LEVELS):  # loop over the four levels, not over nodes
        rows = (level == code).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        part = delta[rows]
        if name == "full":
            out[rows] = part
        elif name == "q8":
            scale = part.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
            out[rows] = torch.round(part / scale) * scale
        else:
            k = max(1, math.ceil(TOPK_FRACTION[name] * n_params))
            top = part.abs().topk(k, dim=1).indices
            out[rows] = torch.zeros_like(part).scatter_(1, top, part.gather(1, top))
    return out


def mixing_matrix(n_nodes: int, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """W with W[i, j] = w_ij on edges and the self weight on the diagonal; dense for small fleets,
    sparse CSR beyond 512 nodes so that a mixing step costs O(edges · P), not O(N² · P)."""
    self_weight = 1.0 - torch.zeros(n_nodes, device=weight.device).index_add_(0, dst, weight)
    idx = torch.arange(n_nodes, device=weight.device)
    rows = torch.cat([dst, idx])
    cols = torch.cat([src, idx])
    values = torch.cat([weight, self_weight])
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_nodes, n_nodes),
                                  check_invariants=False).coalesce()
    return coo.to_dense() if n_nodes <= 512 else coo.to_sparse_csr()


def broadcast(params: torch.Tensor, public: torch.Tensor, level: torch.Tensor, send: torch.Tensor) -> torch.Tensor:
    """New public copies after the senders broadcast their compressed difference."""
    rows = send.nonzero().squeeze(1)
    if rows.numel() == 0:
        return public
    public = public.clone()
    public[rows] += compress(params[rows] - public[rows], level[rows])
    return public


def mix(params: torch.Tensor, public: torch.Tensor, mixing: torch.Tensor, awake: torch.Tensor, step: float):
    """Consensus step of the awake nodes towards their neighbours' public copies (plain weighted mean)."""
    pull = mixing @ public - public  # Σ_j w_ij (x̂_j - x̂_i), rows of W sum to one
    return params + step * awake.unsqueeze(1).to(params.dtype) * pull
