"""Behaviour-cloning warm start ("kickstarting") of a learned scheduler from a heuristic, before PPO.

PPO from scratch can plateau short of the best hand-written rule (on ``configs/attack_heavy.yaml`` it
did not learn to idle low-trust nodes). Starting it from a policy that already imitates the rule is the
standard fix (Schmitt et al., "Kickstarting Deep Reinforcement Learning", 2018; the supervised
pretraining of DQfD, Hester et al., AAAI 2018):

1. :func:`collect_demonstrations` runs the heuristic, through the scheduler interface the evaluation
   harness uses, on the training vec env for a number of env steps and records the observations, the
   action masks, the heuristic's per-node actions and the discounted returns-to-go;
2. :func:`fit` trains the actor by cross-entropy on the heuristic's actions and the critic by
   regression on those returns, with minibatch Adam.

:func:`warm_start` does both for the settings' ``imitation`` section and logs an :class:`ImitationSummary`.

Value targets: an episode ends when it is terminated (target reached) or truncated (deadline), and
either way nothing follows it (the deadline is part of the task and ``progress`` is in the
observation), so its returns are exact. The steps of each env's last, unfinished episode in the buffer
have no exact return; they still teach the actor but are left out of the critic's loss (no bootstrap).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch as th
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.maskable.utils import get_action_masks
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecMonitor
from torch import nn

from greengossip.agents.heuristics import prior_specs
from greengossip.agents.learned import make_scheduler
from greengossip.training.settings import ImitationSettings

LOG = logging.getLogger("greengossip.train.imitation")


@dataclass(frozen=True)
class Demonstrations:
    """A heuristic's rollouts, one row per (env step, env): ``observations`` (key -> (S, ...)),
    ``action_masks`` (S, N * K), ``actions`` (S, N), ``returns`` (S,) and ``complete`` (S,): the row's
    episode ended inside the buffer, so its return is exact."""

    heuristic: str
    observations: dict[str, np.ndarray]
    action_masks: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    complete: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class ImitationSummary:
    """How well the policy imitates the heuristic on its own rollouts. ``cross_entropy`` is per node
    action, ``value_loss`` the critic's mean squared error on the exact returns (NaN if the rollouts
    finished no episode: raise ``steps``), ``agreement`` the share of node actions where the
    deterministic policy picks the heuristic's action (``initial_agreement``: the same before the warm
    start)."""

    heuristic: str
    steps: int
    epochs: int
    initial_agreement: float
    agreement: float
    cross_entropy: float
    value_loss: float


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, B) rewards and episode ends -> (returns-to-go, complete), both (T, B); ``complete`` marks the
    steps whose episode ended within the T steps (the others' returns are partial sums)."""
    returns = np.zeros(rewards.shape, dtype=np.float32)
    complete = np.zeros(rewards.shape, dtype=bool)
    running = np.zeros(rewards.shape[1], dtype=np.float64)
    ended = np.zeros(rewards.shape[1], dtype=bool)
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * np.where(dones[t], 0.0, running)
        ended |= dones[t]
        returns[t], complete[t] = running, ended
    return returns, complete


def collect_demonstrations(venv, heuristic: str, steps: int, gamma: float, seed: int = 0) -> Demonstrations:
    """Run ``heuristic`` (a name in ``greengossip.agents.heuristics.HEURISTICS``) on every env of ``venv`` (an SB3
    ``VecEnv`` with the Dict observation and ``action_masks``) for ``steps`` env steps, rounded up to
    whole steps of the vec env. Env i's heuristic is seeded with ``seed + i``."""
    if isinstance(venv, VecMonitor):  # monitor.csv is the learner's training curve: keep these episodes out
        venv = venv.venv
    n_envs = venv.num_envs
    # one scheduler per env: heuristics remember the episode they are in
    schedulers = [make_scheduler(heuristic, seed=seed + i) for i in range(n_envs)]
    observations: list[dict[str, np.ndarray]] = []
    masks, actions, rewards, dones = [], [], [], []
    obs = venv.reset()
    episode_start = np.ones(n_envs, dtype=bool)
    for _ in range(-(-steps // n_envs)):
        observations.append({key: np.array(value) for key, value in obs.items()})
        masks.append(get_action_masks(venv).reshape(n_envs, -1))
        action = np.stack([
            scheduler.predict({key: value[i] for key, value in obs.items()},
                              episode_start=episode_start[i], deterministic=True)[0]
            for i, scheduler in enumerate(schedulers)
        ])
        actions.append(action)
        obs, reward, done, _infos = venv.step(action)
        rewards.append(reward)
        dones.append(done)
        episode_start = done
    returns, complete = discounted_returns(np.stack(rewards), np.stack(dones), gamma)

    def rows(parts) -> np.ndarray:  # (T, B, ...) -> (T * B, ...)
        stacked = np.stack(parts)
        return stacked.reshape(-1, *stacked.shape[2:])

    return Demonstrations(
        heuristic,
        {key: rows([o[key] for o in observations]) for key in observations[0]},
        rows(masks),
        rows(actions).astype(np.int64),
        returns.reshape(-1),
        complete.reshape(-1),
    )


def _check_policy(policy) -> bool:
    """True if the policy takes MaskablePPO's ``action_masks``; an error for the policies it cannot fit."""
    if isinstance(policy, MaskableActorCriticPolicy):
        return True
    if isinstance(policy, ActorCriticPolicy) and not isinstance(policy, RecurrentActorCriticPolicy):
        return False
    raise TypeError(
        f"the imitation warm start fits feed-forward actor-critic policies (MaskablePPO, PPO, A2C); got "
        f"{type(policy).__name__}. A recurrent policy would need whole sequences and LSTM states."
    )


class _Batches:
    """The demonstrations as tensors on the policy's device, served by row index."""

    def __init__(self, policy, demonstrations: Demonstrations, masked: bool):
        self.observations = policy.obs_to_tensor(demonstrations.observations)[0]
        self.action_masks = th.as_tensor(demonstrations.action_masks, device=policy.device)
        self.actions = th.as_tensor(demonstrations.actions, device=policy.device)
        self.returns = th.as_tensor(demonstrations.returns, device=policy.device)
        self.complete = th.as_tensor(demonstrations.complete, dtype=th.float32, device=policy.device)
        self.masked = masked
        self.size = demonstrations.steps

    def __call__(self, rows: th.Tensor):
        observations = {key: value[rows] for key, value in self.observations.items()}
        mask_kwargs = {"action_masks": self.action_masks[rows]} if self.masked else {}
        return observations, mask_kwargs, self.actions[rows], self.returns[rows], self.complete[rows]


def _squared_errors(values: th.Tensor, returns: th.Tensor, complete: th.Tensor) -> th.Tensor:
    """The critic's squared error per row, 0 where the return is not exact."""
    return (values.flatten() - returns) ** 2 * complete


@th.no_grad()
def _measure(policy, groups: list[_Batches], batch_size: int) -> tuple[float, float, float]:
    """(cross-entropy per node action, value loss, agreement) over all demonstrations; the value loss
    is NaN when no episode ended inside the buffer."""
    cross_entropy = squared_error = agreeing = exact = node_actions = 0.0
    for batches in groups:
        for rows in th.arange(batches.size, device=policy.device).split(batch_size):
            observations, mask_kwargs, actions, returns, complete = batches(rows)
            distribution = policy.get_distribution(observations, **mask_kwargs)
            cross_entropy -= float(distribution.log_prob(actions).sum())
            squared_error += float(_squared_errors(policy.predict_values(observations), returns, complete).sum())
            exact += float(complete.sum())
            agreeing += float((distribution.get_actions(deterministic=True) == actions).sum())
        node_actions += batches.size * batches.actions.shape[1]
    value_loss = squared_error / exact if exact else float("nan")
    return cross_entropy / node_actions, value_loss, agreeing / node_actions


def _gate_target(policy, rule: str) -> int | None:
    """The index of ``rule`` among a gated policy's prior rules, or None (no gate, or not one of them)."""
    rules = prior_specs(getattr(policy, "prior", None))
    if getattr(policy, "prior_gate", None) is None or rule not in rules:
        return None
    return rules.index(rule)


def _gate_loss(logits: th.Tensor, target: int) -> th.Tensor:
    """Cross-entropy of the gate's choice (its ``logits``) against the rule demonstrated: the rules often
    pick the same actions, so the actions alone do not say which rule the gate should weigh."""
    return nn.functional.cross_entropy(logits, th.full((len(logits),), target, device=logits.device))


@contextlib.contextmanager
def _gate_outputs(policy):
    """The gate's logits of each forward pass in the block (a list, newest last): the policy's own
    evaluation computes them once, from the fleet context it has just encoded, so the gate's loss needs no
    second pass through the encoder."""
    outputs: list[th.Tensor] = []
    gate = getattr(policy, "prior_gate", None)
    hook = None if gate is None else gate.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        if hook is not None:
            hook.remove()


def fit(
    model,
    demonstrations: Demonstrations | Sequence[Demonstrations],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    value_coef: float,
    entropy_coef: float = 0.0,
    seed: int = 0,
) -> ImitationSummary:
    """Fit ``model.policy`` to ``demonstrations``: loss = cross-entropy per node action of the
    heuristic's actions (under the recorded masks) - ``entropy_coef`` x entropy per node action
    + ``value_coef`` x MSE(value, exact return). Several ``Demonstrations`` (fleets of different sizes)
    are fitted together, each minibatch drawn from one of them. For a policy whose gate chooses among prior
    rules, demonstrations of one of those rules also teach the gate to choose it (``_gate_loss``).

    Without the entropy term the fitted policy is all but deterministic (cross-entropy near 0.01) and PPO,
    which explores by sampling it, then hardly moves away from the heuristic. With it the heuristic's
    action keeps most of the probability but not all: at 0.3, about 0.9 when four actions are allowed.

    A fresh Adam, so that PPO's own optimizer starts without moments from another loss; gradients are
    clipped at the algorithm's ``max_grad_norm``.
    """
    policy = model.policy
    parts = [demonstrations] if isinstance(demonstrations, Demonstrations) else list(demonstrations)
    if not parts:
        raise ValueError("no demonstrations to fit")
    masked = _check_policy(policy)
    groups = [_Batches(policy, part, masked) for part in parts]
    gate_targets = [_gate_target(policy, part.heuristic) for part in parts]
    initial_agreement = _measure(policy, groups, batch_size)[2]
    optimizer = th.optim.Adam(policy.parameters(), lr=learning_rate)
    generator = th.Generator().manual_seed(seed)
    policy.set_training_mode(True)
    try:
        with _gate_outputs(policy) as gate_logits:
            for _ in range(epochs):
                minibatches = [(index, rows) for index, batches in enumerate(groups)
                               for rows in th.randperm(batches.size, generator=generator).split(batch_size)]
                # one fleet's demonstrations keep their own shuffle, as when fit took only one
                order = th.randperm(len(minibatches), generator=generator).tolist() if len(groups) > 1 \
                    else range(len(minibatches))
                for position in order:
                    index, rows = minibatches[position]
                    observations, mask_kwargs, actions, returns, complete = groups[index](rows.to(policy.device))
                    gate_logits.clear()
                    values, log_prob, entropy = policy.evaluate_actions(observations, actions, **mask_kwargs)
                    value_loss = _squared_errors(values, returns, complete).sum() / complete.sum().clamp_min(1.0)
                    # SB3 sums log-probabilities and entropies over the nodes' categorical distributions
                    n_nodes = actions.shape[1]
                    loss = -(log_prob + entropy_coef * entropy).mean() / n_nodes + value_coef * value_loss
                    if gate_targets[index] is not None:
                        loss = loss + _gate_loss(gate_logits[-1], gate_targets[index])
                    optimizer.zero_grad()
                    loss.backward()
                    th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
                    optimizer.step()
    finally:
        policy.set_training_mode(False)
    cross_entropy, value_loss, agreement = _measure(policy, groups, batch_size)
    return ImitationSummary(
        "+".join(dict.fromkeys(part.heuristic for part in parts)), sum(part.steps for part in parts), epochs,
        initial_agreement, agreement, cross_entropy, value_loss
    )


def warm_start(model, settings: ImitationSettings, seed: int = 0,
               demonstrations: Sequence[Demonstrations] | None = None) -> ImitationSummary:
    """Imitate ``demonstrations``, or by default ``settings.heuristic`` on ``model``'s training envs
    (discounting with the model's gamma); then log and return how well the policy now agrees with what it
    imitated. ``training/rule_selection.py`` gives the demonstrations of ``settings.select_from``."""
    if demonstrations is None:
        if settings.heuristic is None:
            raise ValueError("imitation.heuristic is not set: name the heuristic to imitate")
        demonstrations = [collect_demonstrations(model.get_env(), settings.heuristic, settings.steps, model.gamma,
                                                 seed)]
    summary = fit(
        model,
        demonstrations,
        settings.epochs,
        settings.batch_size,
        settings.learning_rate,
        settings.value_coef,
        settings.entropy_coef,
        seed,
    )
    LOG.info(
        "imitation warm start from %s: %d steps (%d with exact returns), %d epochs; agreement %.3f -> "
        "%.3f, cross-entropy %.3f per node action, value loss %.4f",
        summary.heuristic,
        summary.steps,
        int(sum(part.complete.sum() for part in demonstrations)),
        summary.epochs,
        summary.initial_agreement,
        summary.agreement,
        summary.cross_entropy,
        summary.value_loss,
    )
    return summary
