"""Real local learning, batched over nodes: one flat parameter row per node, manual gradients.

Gradients are written out by hand (softmax regression and a one-hidden-layer ReLU MLP) rather than
taken with autograd: the step then costs a handful of batched matmuls, which is what keeps a 32-node
round in the low milliseconds. ``tests/test_reference.py`` checks them against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from greengossip.envs.dynamics.buffers import scratch
from greengossip.envs.dynamics.products import matmul
from greengossip.envs.scenario import N_CLASSES, N_FEATURES, N_INPUTS

# logits evaluated at once: larger blocks of (test points x classes x nodes) fall out of the cache and,
# above a few MB, cost a fresh zero-filled allocation every round; the evaluation walks nodes in blocks
EVAL_BLOCK_ELEMENTS = 1 << 18
# local SGD walks fleets larger than this in blocks of nodes (``local_sgd``)
SGD_BLOCK_NODES = 512
SMALLEST_PROBABILITY = 1e-38  # float32's smallest normal number is 1.2e-38


@dataclass(frozen=True)
class ModelSpec:
    """The model every node trains, as one flat parameter row per node.

    Inputs are (…, 65): 64 pixels and the constant bias input (``envs/scenario.py``), so a first layer's
    bias is its last input column. Softmax regression keeps its weights class-major, (10, 65) like
    ``torch.nn.Linear``'s (out, in): its logits come out as (n, 10, batch), whose reductions over the classes
    torch vectorises (ten contiguous slabs), and its gradient (n, 10, batch) @ (n, batch, 65) lands in the
    weights' own layout. The MLP is (65, H) then (H, 10) with the output bias."""

    kind: str  # "softmax" | "mlp"
    hidden: int = 32

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        if self.kind == "softmax":
            return [(N_CLASSES, N_INPUTS)]
        return [(N_INPUTS, self.hidden), (self.hidden, N_CLASSES), (N_CLASSES,)]

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
        softmax; for the MLP a scaled uniform (Glorot) draw for the pixel weights of both layers and zero
        biases. ``uniform`` is (B, P) in [0, 1)."""
        params = torch.zeros_like(uniform)
        if self.kind == "mlp":
            w1, w2, _ = self.unpack(params)
            u1, u2, _ = self.unpack(uniform)
            for w, u, fan_in in ((w1[:, :N_FEATURES], u1[:, :N_FEATURES], N_FEATURES), (w2, u2, self.hidden)):
                bound = (6.0 / (fan_in + w.shape[2])) ** 0.5
                w.copy_((u * 2 - 1) * bound)
        return params.repeat_interleave(nodes_per_env, dim=0)

    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(n, P) params, (n, B, 65) inputs -> (n, B, 10) logits. ``x`` may be (B, 65), shared by all."""
        if x.dim() == 2:
            return self.shared_input_logits(params, x).transpose(1, 2)
        if self.kind == "softmax":
            (w,) = self.unpack(params)
            return matmul(w, x.transpose(1, 2)).transpose(1, 2)
        w1, w2, b2 = self.unpack(params)
        return matmul(torch.relu(matmul(x, w1)), w2, b2.unsqueeze(1))

    def shared_input_logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(n, P) params, (M, 65) inputs seen by every node -> (n, 10, M) logits, class-major.

        Softmax: one (n·10, 65) x (65, M) matrix product over a view of the parameters. MLP: the first
        layer of every node as one (M, 65) x (65, n·H) product rather than n batched ones over a broadcast
        copy of the inputs."""
        n = params.shape[0]
        if self.kind == "softmax":
            return matmul(params.reshape(n * N_CLASSES, N_INPUTS), x.T).view(n, N_CLASSES, -1)
        w1, w2, b2 = self.unpack(params)
        hidden = torch.relu(matmul(x, w1.permute(1, 0, 2).reshape(N_INPUTS, -1)).view(-1, n, self.hidden))
        return matmul(hidden.transpose(0, 1), w2, b2.unsqueeze(1)).transpose(1, 2)

    def loss_and_grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """Mean cross-entropy per node (n,) and its gradient (n, P); x (n, B, 65), y (n, B)."""
        n = y.shape[0]
        if self.kind == "softmax":
            (w,) = self.unpack(params)
            loss, delta = _cross_entropy_and_delta(matmul(w, x.transpose(1, 2)), y, class_dim=1)
            return loss, matmul(delta, x).view(n, -1)
        w1, w2, b2 = self.unpack(params)
        hidden = torch.relu(matmul(x, w1))
        loss, delta = _cross_entropy_and_delta(matmul(hidden, w2, b2.unsqueeze(1)), y, class_dim=2)
        d_hidden = matmul(delta, w2.transpose(1, 2)) * (hidden > 0)
        grads = [matmul(x.transpose(1, 2), d_hidden), matmul(hidden.transpose(1, 2), delta), delta.sum(1)]
        return loss, torch.cat([g.reshape(n, -1) for g in grads], dim=1)


def _cross_entropy_and_delta(
    logits: torch.Tensor, y: torch.Tensor, class_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy per node (n,) of ``logits`` against labels (n, B), and its gradient
    d loss / d logits = (softmax - onehot) / B, computed in place on the probabilities (no one-hot
    tensor: the label's entry is decremented directly). The classes lie along ``class_dim`` of logits:
    1 for (n, 10, B), 2 for (n, B, 10).

    One softmax pass rather than log_softmax and exp (a third less time at 2,048 nodes); the loss is then
    -log of the label's probability, which float32 holds down to 1e-38: a sample's loss is capped at
    -log(1e-38) = 87.5, far above the observation's clip at 10."""
    batch = y.shape[1]
    label = y.unsqueeze(class_dim)
    delta = torch.softmax(logits, dim=class_dim)
    loss = -delta.gather(class_dim, label).squeeze(class_dim).clamp_min(SMALLEST_PROBABILITY).log().mean(-1)
    delta.div_(batch)
    delta.scatter_add_(class_dim, label, torch.full(label.shape, -1.0 / batch, dtype=delta.dtype,
                                                    device=delta.device))
    return loss, delta


def local_sgd(
    spec: ModelSpec,
    params: torch.Tensor,
    data_x: torch.Tensor,
    samples: torch.Tensor,
    y: torch.Tensor,
    learning_rate: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain SGD on every given node at once.

    params (n, P); data_x (M, 65) the training inputs; samples (n, steps, B) the rows of data_x in each
    node's minibatches and y (n, steps, B) their labels; returns new params and the mean training loss
    of each node over its steps. Each step gathers only its own minibatches, into a buffer kept from
    round to round (in inference mode, where nothing keeps a reference to it): a fresh block of tens of
    MB at thousands of nodes comes from the allocator as new pages every round, and faulting them in
    costs about three times the copy itself.

    In inference mode, more than ``SGD_BLOCK_NODES`` nodes go through in blocks of that many, each block
    taking all its steps before the next starts: a block's gathered minibatches (4 MB at 512 nodes) are
    still in cache when the two products and the softmax read them, where the whole fleet's (17 MB at
    2,048 nodes) would be read back from memory (9 % less time at 2,048 nodes, 15 % at 4,096). Each
    block's last step writes straight into the returned block."""
    n = samples.shape[0]
    if n <= SGD_BLOCK_NODES or not torch.is_inference_mode_enabled():
        return _local_sgd_block(spec, params, data_x, samples, y, learning_rate)
    new_params = torch.empty_like(params)
    loss = torch.empty(n, dtype=params.dtype, device=params.device)
    for start in range(0, n, SGD_BLOCK_NODES):  # a few blocks of nodes, never one node at a time
        block = slice(start, start + SGD_BLOCK_NODES)
        _, block_loss = _local_sgd_block(spec, params[block], data_x, samples[block], y[block], learning_rate,
                                         out=new_params[block])
        loss[block] = block_loss
    return new_params, loss


def _local_sgd_block(
    spec: ModelSpec,
    params: torch.Tensor,
    data_x: torch.Tensor,
    samples: torch.Tensor,
    y: torch.Tensor,
    learning_rate: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``local_sgd`` on one block of nodes; ``out``: where the last step's parameters go."""
    n, steps, batch = samples.shape
    loss_sum = torch.zeros(n, device=params.device)
    reuse = torch.is_inference_mode_enabled()
    for step in range(steps):  # loop over SGD steps, never over nodes
        rows = samples[:, step].reshape(-1)
        if reuse:
            x = torch.index_select(data_x, 0, rows, out=scratch((len(rows), data_x.shape[1]), data_x))
        else:
            x = data_x.index_select(0, rows)
        x = x.view(n, batch, -1)
        loss, grad = spec.loss_and_grad(params, x, y[:, step])
        # the gradient is a fresh block of this step's own: the new parameters can take its memory
        target = out if out is not None and step == steps - 1 else (grad if reuse else None)
        params = torch.add(params, grad, alpha=-learning_rate, out=target)
        loss_sum += loss
    return params, loss_sum / steps


def accuracy_per_node(spec: ModelSpec, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) share of the test points (x (M, 65), y (M,), shared by all nodes) each node's model gets right.

    A point counts when argmax over the classes is its label, ties going to the lowest class as in
    ``torch.argmax`` (at the all-zero start every model predicts class 0). Written with masked maxima over
    the classes because that is several times faster than argmax here (see ``shared_input_logits``): the
    true logit must beat the best other class; only where the two are equal (exact ties: the all-zero
    start, rounded models) does a second maximum over the lower classes decide, so a round with no tie
    passes over the logits once instead of twice."""
    classes = torch.arange(N_CLASSES, device=y.device).unsqueeze(1)
    others = torch.where(classes == y, -torch.inf, 0.0)  # (10, M)
    lower = torch.where(classes < y, 0.0, -torch.inf)  # added after ``others``: the classes below the label
    label = y.view(1, 1, -1)
    n, points = params.shape[0], len(y)
    block = max(1, EVAL_BLOCK_ELEMENTS // (points * N_CLASSES))
    if n <= block:  # one block, fleets of up to ~200 nodes
        logits = spec.shared_input_logits(params, x)  # (n, 10, M)
        true_logit = logits.gather(1, label.expand(n, 1, -1)).squeeze(1)  # (n, M)
        best_other = logits.add_(others).amax(1)  # in place: the block is this call's own
        correct = true_logit > best_other
        tied = true_logit == best_other
        if bool(tied.any()):  # a tie with a lower class goes to that class
            correct |= tied & (true_logit > logits.add_(lower).amax(1))
        return correct.float().mean(1)
    # several blocks of nodes: each block's true and best other logits land in (n, M) tables, compared once
    # at the end (at 2,048 nodes ten blocks' small comparisons and means cost 0.6 ms in dispatches alone).
    # The positions of the true logits in a contiguous (block, 10, M) block are built once; index_select at
    # them takes half the time of gather (design note 17)
    at_label = (torch.arange(block, device=y.device).unsqueeze(1) * (N_CLASSES * points)
                + y * points + torch.arange(points, device=y.device)).view(-1)
    true_logit = torch.empty(n, points, dtype=params.dtype, device=params.device)
    best_other = torch.empty_like(true_logit)
    tie_won = None  # (n, M) points whose tie with the best other class the label wins, where any tie was seen
    for start in range(0, n, block):
        logits = spec.shared_input_logits(params[start : start + block], x)
        rows = slice(start, start + logits.shape[0])
        block_true, block_best = true_logit[rows], best_other[rows]
        if logits.is_contiguous():
            torch.index_select(logits.view(-1), 0, at_label[: logits.shape[0] * points], out=block_true.view(-1))
        else:
            block_true.copy_(logits.gather(1, label.expand(logits.shape[0], 1, -1)).squeeze(1))
        torch.amax(logits.add_(others), 1, out=block_best)
        tied = block_true == block_best
        if bool(tied.any()):
            if tie_won is None:
                tie_won = torch.zeros(n, points, dtype=torch.bool, device=params.device)
            tie_won[rows] = tied & (block_true > logits.add_(lower).amax(1))
    correct = true_logit > best_other
    if tie_won is not None:
        correct |= tie_won
    return correct.float().mean(1)
