"""Real local learning, batched over nodes: one flat parameter row per node, manual gradients.

Gradients are written out by hand (softmax regression and a one-hidden-layer ReLU MLP) rather than
taken with autograd: the step then costs a handful of batched matmuls, which is what keeps a 32-node
round in the low milliseconds. ``tests/test_reference.py`` checks them against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.scenario import N_CLASSES, N_FEATURES


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "softmax" | "mlp"
    hidden: int = 32

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        if self.kind == "softmax":
            return [(N_FEATURES, N_CLASSES), (N_CLASSES,)]
        return [(N_FEATURES, self.hidden), (self.hidden,), (self.hidden, N_CLASSES), (N_CLASSES,)]

    @property
    def n_params(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    def unpack(self, params: torch.Tensor) -> list[torch.Tensor]:
        """Views of a (n, P) parameter block as per-layer (n, *shape) tensors."""
        views, start = [], 0
        for shape in self.shapes:
            size = int(torch.Size(shape).numel())
            views.append(params[:, start : start + size].view(params.shape[0], *shape))
            start += size
        return views

    def init(self, uniform: torch.Tensor, nodes_per_env: int) -> torch.Tensor:
        """The same starting point on every node of an environment (D-PSGD convention): zeros for
        softmax, a scaled uniform (Glorot) draw for the MLP's weights. ``uniform`` is (B, P) in [0, 1)."""
        params = torch.zeros_like(uniform)
        if self.kind == "mlp":
            w1, _, w2, _ = self.unpack(params)
            u1, _, u2, _ = self.unpack(uniform)
            for w, u in ((w1, u1), (w2, u2)):
                bound = (6.0 / (w.shape[1] + w.shape[2])) ** 0.5
                w.copy_((u * 2 - 1) * bound)
        return params.repeat_interleave(nodes_per_env, dim=0)

    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(n, P) params, (n, B, 64) inputs -> (n, B, 10) logits. ``x`` may be (B, 64), shared by all.

        Shared inputs go through ``shared_input_logits``."""
        if x.dim() == 2:
            return self.shared_input_logits(params, x).transpose(0, 1)
        if self.kind == "softmax":
            w, b = self.unpack(params)
            return torch.baddbmm(b.unsqueeze(1), x, w)
        w1, b1, w2, b2 = self.unpack(params)
        hidden = torch.relu(torch.baddbmm(b1.unsqueeze(1), x, w1))
        return torch.baddbmm(b2.unsqueeze(1), hidden, w2)

    def shared_input_logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(n, P) params, (B, 64) inputs seen by every node -> (B, n, 10) logits, sample-major.

        The first layer of every node runs as one (B, 64) x (64, n·width) matrix product rather than n
        batched ones over a broadcast copy of the inputs: same arithmetic, a fraction of the time; the
        sample-major layout keeps the argmax over classes on contiguous memory."""
        n = params.shape[0]
        if self.kind == "softmax":
            w, b = self.unpack(params)
            return (x @ w.permute(1, 0, 2).reshape(N_FEATURES, -1)).view(-1, n, N_CLASSES) + b
        w1, b1, w2, b2 = self.unpack(params)
        hidden = torch.relu((x @ w1.permute(1, 0, 2).reshape(N_FEATURES, -1)).view(-1, n, self.hidden) + b1)
        return torch.baddbmm(b2.unsqueeze(1), hidden.transpose(0, 1), w2).transpose(0, 1)

    def loss_and_grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """Mean cross-entropy per node (n,) and its gradient (n, P)."""
        n, batch = y.shape
        onehot = torch.nn.functional.one_hot(y, N_CLASSES).to(x.dtype)
        if self.kind == "softmax":
            w, b = self.unpack(params)
            logits = torch.baddbmm(b.unsqueeze(1), x, w)
            log_prob = torch.log_softmax(logits, dim=-1)
            delta = (log_prob.exp() - onehot) / batch  # dL/dlogits
            grads = [torch.bmm(x.transpose(1, 2), delta), delta.sum(1)]
        else:
            w1, b1, w2, b2 = self.unpack(params)
            hidden = torch.relu(torch.baddbmm(b1.unsqueeze(1), x, w1))
            log_prob = torch.log_softmax(torch.baddbmm(b2.unsqueeze(1), hidden, w2), dim=-1)
            delta = (log_prob.exp() - onehot) / batch
            d_hidden = torch.bmm(delta, w2.transpose(1, 2)) * (hidden > 0)
            grads = [
                torch.bmm(x.transpose(1, 2), d_hidden), d_hidden.sum(1),
                torch.bmm(hidden.transpose(1, 2), delta), delta.sum(1),
            ]
        loss = -(log_prob * onehot).sum(-1).mean(-1)
        return loss, torch.cat([g.reshape(n, -1) for g in grads], dim=1)


def local_sgd(
    spec: ModelSpec,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    learning_rate: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain SGD on every given node at once.

    params (n, P); x (n, steps, B, 64) and y (n, steps, B) each node's minibatches;
    returns new params and the mean training loss of each node over its steps."""
    loss_sum = torch.zeros(params.shape[0], device=params.device)
    for step in range(x.shape[1]):  # loop over SGD steps, never over nodes
        loss, grad = spec.loss_and_grad(params, x[:, step], y[:, step])
        params = torch.add(params, grad, alpha=-learning_rate)
        loss_sum += loss
    return params, loss_sum / x.shape[1]


def accuracy_per_node(spec: ModelSpec, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) share of the test points (x (M, 64), y (M,), shared by all nodes) each node's model gets right."""
    return (spec.shared_input_logits(params, x).argmax(-1) == y.unsqueeze(1)).float().mean(0)
