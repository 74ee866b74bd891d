"""Real local learning, batched over nodes: one flat parameter row per node, manual gradients.

Gradients are written out by hand (softmax regression and a one-hidden-layer ReLU MLP) rather than
taken with autograd: the step then costs a handful of batched matmuls, which is what keeps a 32-node
round in the low milliseconds. ``tests/test_reference.py`` checks them against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.dynamics.products import matmul
from envs.scenario import N_CLASSES, N_FEATURES

# logits evaluated at once: larger blocks of (test points x classes x nodes) fall out of the cache and,
# above a few MB, cost a fresh zero-filled allocation every round; the evaluation walks nodes in blocks
EVAL_BLOCK_ELEMENTS = 1 << 18


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
            return self.shared_input_logits(params, x).permute(2, 0, 1)
        if self.kind == "softmax":
            w, b = self.unpack(params)
            return matmul(x, w, b.unsqueeze(1))
        w1, b1, w2, b2 = self.unpack(params)
        hidden = torch.relu(matmul(x, w1, b1.unsqueeze(1)))
        return matmul(hidden, w2, b2.unsqueeze(1))

    def shared_input_logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(n, P) params, (M, 64) inputs seen by every node -> (M, 10, n) logits, class-major.

        The first layer of every node runs as one (M, 64) x (64, n·width) matrix product rather than n
        batched ones over a broadcast copy of the inputs: same arithmetic, a fraction of the time. With
        the node axis innermost, a reduction over classes is an element-wise max of ten contiguous slabs,
        which torch vectorises (an argmax over a last axis of 10 it does not)."""
        n = params.shape[0]
        if self.kind == "softmax":
            w, b = self.unpack(params)
            return matmul(x, w.permute(1, 2, 0).reshape(N_FEATURES, -1)).view(-1, N_CLASSES, n) + b.T
        w1, b1, w2, b2 = self.unpack(params)
        hidden = torch.relu(matmul(x, w1.permute(1, 0, 2).reshape(N_FEATURES, -1)).view(-1, n, self.hidden) + b1)
        return matmul(hidden.transpose(0, 1), w2, b2.unsqueeze(1)).permute(1, 2, 0)

    def loss_and_grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """Mean cross-entropy per node (n,) and its gradient (n, P)."""
        n = y.shape[0]
        if self.kind == "softmax":
            w, b = self.unpack(params)
            loss, delta = _cross_entropy_and_delta(matmul(x, w, b.unsqueeze(1)), y)
            grads = [matmul(x.transpose(1, 2), delta), delta.sum(1)]
        else:
            w1, b1, w2, b2 = self.unpack(params)
            hidden = torch.relu(matmul(x, w1, b1.unsqueeze(1)))
            loss, delta = _cross_entropy_and_delta(matmul(hidden, w2, b2.unsqueeze(1)), y)
            d_hidden = matmul(delta, w2.transpose(1, 2)) * (hidden > 0)
            grads = [
                matmul(x.transpose(1, 2), d_hidden), d_hidden.sum(1),
                matmul(hidden.transpose(1, 2), delta), delta.sum(1),
            ]
        return loss, torch.cat([g.reshape(n, -1) for g in grads], dim=1)


def _cross_entropy_and_delta(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy per node (n,) of (n, B, 10) ``logits`` against labels (n, B), and its gradient
    d loss / d logits = (softmax - onehot) / B, computed in place on the log-probabilities (no one-hot
    tensor: the label's entry is decremented directly)."""
    batch = y.shape[1]
    label = y.unsqueeze(-1)
    log_prob = torch.log_softmax(logits, dim=-1)
    loss = -log_prob.gather(-1, label).squeeze(-1).mean(-1)
    delta = log_prob.exp_()
    delta.scatter_add_(-1, label, torch.full(label.shape, -1.0, dtype=delta.dtype, device=delta.device))
    return loss, delta.div_(batch)


def local_sgd(
    spec: ModelSpec,
    params: torch.Tensor,
    data_x: torch.Tensor,
    samples: torch.Tensor,
    y: torch.Tensor,
    learning_rate: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain SGD on every given node at once.

    params (n, P); data_x (M, 64) the training inputs; samples (n, steps, B) the rows of data_x in each
    node's minibatches and y (n, steps, B) their labels; returns new params and the mean training loss
    of each node over its steps. Each step gathers only its own minibatches: one gather for all steps
    is a block of tens of MB at thousands of nodes, which the allocator hands out as fresh pages every
    round (several times slower than the copy itself)."""
    n, steps, batch = samples.shape
    loss_sum = torch.zeros(n, device=params.device)
    for step in range(steps):  # loop over SGD steps, never over nodes
        x = data_x.index_select(0, samples[:, step].reshape(-1)).view(n, batch, -1)
        loss, grad = spec.loss_and_grad(params, x, y[:, step])
        params = torch.add(params, grad, alpha=-learning_rate)
        loss_sum += loss
    return params, loss_sum / steps


def accuracy_per_node(spec: ModelSpec, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) share of the test points (x (M, 64), y (M,), shared by all nodes) each node's model gets right.

    A point counts when argmax over the classes is its label, ties going to the lowest class as in
    ``torch.argmax`` (at the all-zero start every model predicts class 0): the true logit beats every
    lower class strictly and no higher class exceeds it. Written as two masked maxima over the classes
    because that is several times faster than argmax here (see ``shared_input_logits``)."""
    classes = torch.arange(N_CLASSES, device=y.device)
    lower = torch.where(classes < y.unsqueeze(1), 0.0, -torch.inf).unsqueeze(2)  # (M, 10, 1)
    higher = torch.where(classes > y.unsqueeze(1), 0.0, -torch.inf).unsqueeze(2)
    label = y.view(-1, 1, 1)
    block = max(1, EVAL_BLOCK_ELEMENTS // (len(y) * N_CLASSES))
    shares = []
    for start in range(0, params.shape[0], block):  # blocks of nodes, one for fleets of up to ~70 nodes
        logits = spec.shared_input_logits(params[start : start + block], x)  # (M, 10, n)
        true_logit = logits.gather(1, label.expand(-1, 1, logits.shape[2])).squeeze(1)  # (M, n)
        correct = (true_logit > (logits + lower).amax(1)) & (true_logit >= (logits + higher).amax(1))
        shares.append(correct.float().mean(0))
    return shares[0] if len(shares) == 1 else torch.cat(shares)
