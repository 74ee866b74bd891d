"""Stable-Baselines3 policies that work for any number of nodes (DeepSets with one round of message passing).

The scheduler's action is one choice out of ``K`` per node, so the natural policy is *one* network
applied to every node, with what the fleet as a whole looks like fed back in as context (Zaheer et al.,
"Deep Sets", NeurIPS 2017; one mean-aggregation message-passing step over the communication graph as in
GraphSAGE, Hamilton et al., NeurIPS 2017). Nothing in it has a dimension that depends on ``N``, so a
model trained on 32 nodes runs unchanged on 128::

    per node i:  x_i = [nodes_i (F), action_mask_i (K), global (G)]   (heavy-tailed features log1p-squashed)
                 h_i = MLP_enc(x_i)                                     (B, N, H)
                 h_i = h_i + MLP_msg([h_i, mean_{j -> i} h_j])          (if the obs has ``adjacency``)
    fleet:       c   = [mean_i h_i, max_i h_i]                          (B, 2H)
    actor:       logits_i = Linear(MLP_pi([h_i, c]))                    (B, N, K) -> flattened N*K
    critic:      V = Linear(MLP_vf([c, global]))                        (B, 1)

With ``prior="carbon_periodic"`` (any memoryless heuristic) the policy is *residual* (Silver et al.,
"Residual Policy Learning", 2018; Johannink et al., "Residual Reinforcement Learning for Robot Control",
ICRA 2019): ``prior_weight`` is added to the logit of the action that rule picks for each node, so the
untrained network (output near 0) already acts like the rule and PPO learns the corrections. The rule
runs on the observation inside the policy, so a saved model carries it to any fleet size.

With several rules (``prior=["network_aware:period=1", "battery_quorum:period=1", ...]``) a fleet-level
*gate* chooses among them: ``g = softmax(Linear(c))`` weighs the rules, and each node's prior logit is
``prior_weight * sum_r g_r * onehot(rule r's action)`` (a mixture of experts over the rules: Jacobs,
Jordan, Nowlan & Hinton, "Adaptive Mixtures of Local Experts", Neural Computation 1991), learned by
imitation of the rule that did best on each training scenario (``training/rule_selection.py``) and PPO.
A soft mixture lets each node follow the rules' majority, which can be a schedule none of them would
make (half a fleet waiting for a cleaner hour); with ``gate="hard"`` the whole fleet follows the one rule
the gate rates highest, and the gate learns only from the imitation's rule labels.

Logits of actions the observation's ``action_mask`` forbids are set to -1e8 inside the network
(``mask_logits``), so even plain PPO / A2C and a ``predict`` without ``action_masks`` never choose
them; MaskablePPO applies the env's masks on top (the same masks). The recurrent variant runs an LSTM
over the fleet context ``c`` and feeds its output to the per-node head instead of ``c``.

Classes: :class:`MaskableNodeSetPolicy` (sb3-contrib MaskablePPO, the default),
:class:`NodeSetPolicy` (SB3 PPO / A2C), :class:`RecurrentNodeSetPolicy` (sb3-contrib RecurrentPPO).
:func:`load_for_nodes` loads a saved model for an env with a different ``N`` (to evaluate or go on
training); :func:`load_policy` loads just the policy, which already satisfies the scheduler interface.
A policy also adapts by itself when ``predict`` receives observations of another fleet size.
"""

from __future__ import annotations

import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.maskable.distributions import MaskableCategorical, MaskableDistribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from greengossip.agents.heuristics import memoryless_rules
from greengossip.agents.node_ratio_ppo import RATIOS, NodeRatioMaskablePPO
from greengossip.envs.errors import UserError
from greengossip.envs.observation import spaces_for_nodes

MASKED_LOGIT = -1e8  # same fill value as sb3-contrib's MaskableCategorical
# what PPO's ent_coef weighs (``evaluate_actions``): the entropy, or a distance to the residual prior rule
PRIOR_REGULARISERS = ("entropy", "kl", "cross_entropy")
GATES = ("soft", "hard")  # how a gate over several prior rules weighs them (``_NodeSetCore.rule_weights``)

__all__ = [
    "MaskableNodeSetPolicy",
    "NodeCategoricalDistribution",
    "NodeSetEncoder",
    "NodeSetPolicy",
    "RecurrentNodeSetPolicy",
    "ALGORITHMS",
    "algorithm_class",
    "detect_algorithm",
    "load_for_nodes",
    "load_policy",
    "ModelFileError",
    "read_model_data",
    "policy_class",
    "spaces_for_nodes",
]


# ---------------------------------------------------------------------------------------------- spaces
def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if not isinstance(observation_space, spaces.Dict) or not {"nodes", "global", "action_mask"} <= set(
        observation_space.spaces
    ):
        raise TypeError(
            "the node-set policies read the GreenGossip Dict observation (keys nodes, global, action_mask); "
            "got "
            f"{observation_space}. Do not wrap the env with FlattenGossipObservation when training them."
        )
    if not isinstance(action_space, spaces.MultiDiscrete) or len(set(action_space.nvec.tolist())) != 1:
        raise TypeError(f"expected MultiDiscrete([K] * N) actions, got {action_space}")


# ---------------------------------------------------------------------------------------------- network
def _mlp(in_dim: int, sizes: list[int], activation: type[nn.Module]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(in_dim, size), activation()]
        in_dim = size
    return nn.Sequential(*layers), in_dim


class NodeSetEncoder(BaseFeaturesExtractor):
    """Per-node encoder (shared weights) plus message passing: Dict observation -> (B, N, hidden).

    ``features_dim`` is the size of the pooled fleet context ``[mean, max]`` (2 * hidden), which is
    what the recurrent policy's LSTM reads.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        hidden: int = 64,
        layers: int = 2,
        message_passing: int = 1,
        activation_fn: type[nn.Module] = nn.ReLU,
    ):
        super().__init__(observation_space, features_dim=2 * hidden)
        node_space, global_space = observation_space["nodes"], observation_space["global"]
        n_features = node_space.shape[-1]
        n_actions = observation_space["action_mask"].shape[-1]
        n_global = global_space.shape[0]
        self.hidden = hidden
        self.n_global = n_global
        # Features whose range reaches beyond 1 (harvest in units of a round's cost, losses, consensus
        # distance) are heavy-tailed; log1p keeps them on the scale of the others without needing N.
        self.register_buffer("node_log", th.as_tensor(node_space.high[0] > 1.0), persistent=False)
        self.register_buffer("global_log", th.as_tensor(global_space.high > 1.0), persistent=False)
        self.encoder, out = _mlp(n_features + n_actions + n_global, [hidden] * layers, activation_fn)
        assert out == hidden
        self.uses_graph = "adjacency" in observation_space.spaces and message_passing > 0
        self.message = nn.ModuleList(
            [
                _mlp(2 * hidden, [hidden], activation_fn)[0]
                for _ in range(message_passing if self.uses_graph else 0)
            ]
        )

    def squash_global(self, glob: th.Tensor) -> th.Tensor:
        return th.where(self.global_log, th.log1p(glob.clamp_min(0.0)), glob)

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        nodes = observations["nodes"]
        nodes = th.where(self.node_log, th.log1p(nodes.clamp_min(0.0)), nodes)
        n = nodes.shape[1]
        glob = self.squash_global(observations["global"]).unsqueeze(1).expand(-1, n, -1)
        h = self.encoder(th.cat([nodes, observations["action_mask"], glob], dim=-1))
        if self.uses_graph:
            if "adjacency" not in observations:
                raise ValueError(
                    "this policy was trained with message passing over the graph but the observation has no "
                    "'adjacency'; set observation.adjacency: true in the env config"
                )
            adjacency = observations["adjacency"]  # row i = nodes whose models reach node i
            degree = adjacency.sum(-1, keepdim=True).clamp_min(1.0)
            for layer in self.message:
                h = h + layer(th.cat([h, th.bmm(adjacency, h) / degree], dim=-1))
        return h


def pool(h: th.Tensor, action_mask: th.Tensor | None = None) -> th.Tensor:
    """(B, N, H) -> (B, 2H): mean and max over the fleet's nodes, both independent of N. With the
    observation's ``action_mask`` (B, N, K), absent nodes (the padding rows of an observation padded to a
    larger fleet, whose mask allows no action; a real node may always idle) are left out. An observation
    with no node at all (RecurrentPPO's all-zero sequence padding, left out of its loss) pools every row."""
    if action_mask is not None:
        present = action_mask.amax(-1, keepdim=True) > 0.5  # (B, N, 1)
        present = present | ~present.any(1, keepdim=True)
        if not bool(present.all()):
            weights = present.to(h.dtype)
            mean = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            return th.cat([mean, h.masked_fill(~present, float("-inf")).amax(1)], dim=-1)
    return th.cat([h.mean(1), h.amax(1)], dim=-1)


class NodeSetHeads(nn.Module):
    """Actor MLP applied to every node's ``[h_i, context]``; critic MLP over one fleet-level vector.

    Plays the role of SB3's ``mlp_extractor`` (``latent_dim_pi`` / ``latent_dim_vf``).
    """

    def __init__(
        self,
        node_dim: int,
        context_dim: int,
        critic_dim: int,
        pi: list[int],
        vf: list[int],
        activation_fn: type[nn.Module],
    ):
        super().__init__()
        self.policy_net, self.latent_dim_pi = _mlp(node_dim + context_dim, pi, activation_fn)
        self.value_net, self.latent_dim_vf = _mlp(critic_dim, vf, activation_fn)

    def forward_actor(self, h: th.Tensor, context: th.Tensor) -> th.Tensor:
        context = context.unsqueeze(1).expand(-1, h.shape[1], -1)
        return self.policy_net(th.cat([h, context], dim=-1))

    def forward_critic(self, critic_input: th.Tensor) -> th.Tensor:
        return self.value_net(critic_input)


class NodeCategoricalDistribution(MaskableDistribution):
    """``N`` independent categoricals over ``K`` actions as one batched (B, N, K) distribution.

    SB3's MultiCategorical splits the logits into ``N`` Python objects, fixed at construction; this one
    takes ``N`` from the logits, so the same policy serves any fleet size. Supports sb3-contrib masking.
    """

    def __init__(self, n_actions: int):
        super().__init__()
        self.n_actions = n_actions
        self.distribution = None

    def proba_distribution_net(self, latent_dim: int) -> nn.Module:
        return nn.Linear(latent_dim, self.n_actions)  # applied per node

    def proba_distribution(self, action_logits: th.Tensor) -> NodeCategoricalDistribution:
        logits = action_logits.reshape(action_logits.shape[0], -1, self.n_actions)
        self.distribution = MaskableCategorical(logits=logits)
        return self

    def apply_masking(self, masks) -> None:
        if masks is not None:
            masks = th.as_tensor(masks, device=self.distribution.logits.device).reshape(
                self.distribution.logits.shape
            )
        self.distribution.apply_masking(masks)

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        return self.node_log_prob(actions).sum(dim=1)

    def node_log_prob(self, actions: th.Tensor) -> th.Tensor:
        """(B, N): each node's log-probability of its action (``log_prob`` is their sum)."""
        actions = actions.reshape(self.distribution.logits.shape[:2]).long()
        return self.distribution.log_prob(actions)

    def entropy(self) -> th.Tensor:
        return self.distribution.entropy().sum(dim=1)

    def kl_divergence(self, other: NodeCategoricalDistribution) -> th.Tensor:
        """(B,) KL(self || other) summed over nodes. Masked actions have probability 0 under both (logit
        -1e8, finite), so they add nothing."""
        log_p, log_q = self.distribution.logits, other.distribution.logits  # normalised log-probabilities
        return (self.distribution.probs * (log_p - log_q)).sum(dim=(1, 2))

    def sample(self) -> th.Tensor:
        return self.distribution.sample()

    def mode(self) -> th.Tensor:
        return th.argmax(self.distribution.probs, dim=-1)

    def actions_from_params(self, action_logits: th.Tensor, deterministic: bool = False) -> th.Tensor:
        self.proba_distribution(action_logits)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, action_logits: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        actions = self.actions_from_params(action_logits)
        return actions, self.log_prob(actions)


# ---------------------------------------------------------------------------------------------- policies
def _resolve_arch(net_arch) -> tuple[list[int], list[int]]:
    if net_arch is None:
        return [64], [64]
    if isinstance(net_arch, dict):
        return list(net_arch.get("pi", [64])), list(net_arch.get("vf", [64]))
    return list(net_arch), list(net_arch)


def _prior_rules(prior: str | list[str] | None, prior_weight: float) -> list:
    """The heuristics whose choices get ``prior_weight`` extra logit (empty without a prior); validated
    here so that a bad name fails when the policy is built, not in the middle of a rollout."""
    try:
        rules = memoryless_rules(prior)
    except ValueError as exc:
        raise ValueError(f"prior {exc}") from None
    if rules and (not np.isfinite(prior_weight) or prior_weight <= 0):
        raise ValueError(f"prior_weight must be a finite number > 0 (extra logit of the rule's action), "
                         f"got {prior_weight!r}")
    return rules


class _NodeSetCore:
    """What the three policies share: the heads, the masked per-node logits, adapting to the fleet size."""

    mask_logits: bool
    prior: str | list[str] | None = None
    prior_weight: float = 0.0
    _priors: list = []

    allowed_actions: list[int] | None = None
    prior_regulariser: str = "entropy"

    def _set_prior(self, action_space: spaces.MultiDiscrete, prior: str | list[str] | None, prior_weight: float,
                   allowed_actions: list[int] | None = None, prior_regulariser: str = "entropy",
                   gate: str = "soft") -> None:
        """Residual prior and allowed actions (called before the SB3 base class is built)."""
        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        self.gate = gate
        self._priors = _prior_rules(prior, prior_weight)
        self.prior = prior if prior is None or isinstance(prior, str) else list(prior)
        self.prior_weight = float(prior_weight)
        if prior_regulariser not in PRIOR_REGULARISERS:
            raise ValueError(f"prior_regulariser must be one of {', '.join(PRIOR_REGULARISERS)}, "
                             f"got {prior_regulariser!r}")
        if prior_regulariser != "entropy" and prior is None:
            raise ValueError(f"prior_regulariser {prior_regulariser!r} needs a prior (it measures the distance to the "
                             "prior rule); set prior or prior_regulariser: entropy")
        self.prior_regulariser = prior_regulariser
        n_actions = int(action_space.nvec[0])
        if allowed_actions is not None:
            codes = sorted({int(code) for code in allowed_actions})
            if not codes or codes[0] != 0 or codes[-1] >= n_actions:
                raise ValueError(f"allowed_actions must be action codes in 0..{n_actions - 1} that include 0 (idle, "
                                 f"always affordable); got {list(allowed_actions)!r}")
            allowed_actions = codes
        self.allowed_actions = allowed_actions
        self._blocked_actions = None if allowed_actions is None else (
            [code for code in range(n_actions) if code not in allowed_actions] or None)

    def prior_logits(self, obs: dict[str, th.Tensor], context: th.Tensor | None = None) -> th.Tensor:
        """(B, N, K): ``prior_weight`` on the prior rule's action of each node, 0 elsewhere; with several
        rules, ``prior_weight`` times the gate's weight of each rule that picks the action (the gate reads
        the actor's fleet ``context``)."""
        numpy_obs = {key: value.detach().cpu().numpy() for key, value in obs.items()}
        n_actions = obs["action_mask"].shape[-1]
        dtype, device = obs["nodes"].dtype, obs["nodes"].device
        chosen = [nn.functional.one_hot(th.as_tensor(rule.act_batch(numpy_obs), device=device), n_actions).to(dtype)
                  for rule in self._priors]
        if self.prior_gate is None:
            return chosen[0] * self.prior_weight
        weights = self.rule_weights(context)  # (B, R)
        return th.einsum("br,brnk->bnk", weights, th.stack(chosen, dim=1)) * self.prior_weight

    def rule_weights(self, context: th.Tensor) -> th.Tensor:
        """(B, R): the gate's weight of each prior rule for each fleet context: its softmax, or with
        ``gate="hard"`` all of it on the rule it rates highest."""
        logits = self.prior_gate(context)
        if self.gate == "hard":
            return nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        return th.softmax(logits, dim=-1)

    # critic input and actor context size; the recurrent policy overrides both with the LSTM width
    def _head_dims(self) -> tuple[int, int]:
        extractor: NodeSetEncoder = self.features_extractor
        return extractor.features_dim, extractor.features_dim + extractor.n_global

    def _build(self, lr_schedule) -> None:
        if not self.share_features_extractor:
            raise ValueError(
                "the node-set policies share one encoder between actor and critic; "
                "leave share_features_extractor=True"
            )
        n_actions = int(self.action_space.nvec[0])
        self.action_dist = NodeCategoricalDistribution(n_actions)
        pi, vf = _resolve_arch(self.net_arch)
        context_dim, critic_dim = self._head_dims()
        self.mlp_extractor = NodeSetHeads(
            self.features_extractor.hidden, context_dim, critic_dim, pi, vf, self.activation_fn
        )
        self.action_net = nn.Linear(self.mlp_extractor.latent_dim_pi, n_actions)
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        # with several prior rules: the fleet-level choice among them
        self.prior_gate = nn.Linear(context_dim, len(self._priors)) if len(self._priors) > 1 else None
        if self.ortho_init:  # SB3's gains: sqrt(2) hidden, 0.01 policy output, 1 value output
            for module, gain in (
                (self.features_extractor, np.sqrt(2)),
                (self.mlp_extractor, np.sqrt(2)),
                (self.action_net, 0.01),
                (self.value_net, 1.0),
            ):
                module.apply(partial(self.init_weights, gain=gain))
        if self.prior_gate is not None:  # every rule equally likely until the gate has learned
            nn.init.zeros_(self.prior_gate.weight)
            nn.init.zeros_(self.prior_gate.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _distribution(
        self, obs: dict[str, th.Tensor], h: th.Tensor, context: th.Tensor, action_masks=None
    ) -> NodeCategoricalDistribution:
        return self._distributions(obs, h, context, action_masks, with_prior=False)[0]

    def _distributions(
        self, obs: dict[str, th.Tensor], h: th.Tensor, context: th.Tensor, action_masks=None, with_prior=True
    ) -> tuple[NodeCategoricalDistribution, NodeCategoricalDistribution | None]:
        """The policy's distribution and, ``with_prior``, the prior rule's own (its ``prior_weight`` logit
        alone, under the same masks; None without a prior), the rule evaluated once for both."""
        logits = self.action_net(self.mlp_extractor.forward_actor(h, context))  # (B, N, K)
        prior = self.prior_logits(obs, context) if self._priors else None
        if prior is not None:
            logits = logits + prior
        distribution = self._masked(obs, self.action_dist, logits, action_masks)
        if prior is None or not with_prior:
            return distribution, None
        return distribution, self._masked(obs, NodeCategoricalDistribution(self.action_dist.n_actions), prior,
                                          action_masks)

    def _masked(self, obs, distribution: NodeCategoricalDistribution, logits: th.Tensor,
                action_masks) -> NodeCategoricalDistribution:
        if self._blocked_actions is not None:  # actions this policy never takes, whatever the node can afford
            logits = logits.index_fill(-1, th.as_tensor(self._blocked_actions, device=logits.device), MASKED_LOGIT)
        if self.mask_logits:
            logits = logits.masked_fill(obs["action_mask"] < 0.5, MASKED_LOGIT)
        distribution = distribution.proba_distribution(logits)
        if action_masks is not None:
            distribution.apply_masking(action_masks)
        return distribution

    def node_logits(self, obs: dict[str, th.Tensor]) -> th.Tensor:
        """(B, N * K) action logits (after the observation's mask) for a batch of observations."""
        h = self.extract_features(obs)
        context = self._actor_context(obs, h)
        return self._distribution(obs, h, context).distribution.logits.flatten(1)

    def _actor_context(self, obs, h):  # feed-forward: the pooled fleet context
        return pool(h, obs["action_mask"])

    # -- any fleet size at predict time: SB3 reshapes observations and actions with the stored spaces
    def resize(self, n_nodes: int) -> None:
        """Point the policy's spaces at a fleet of ``n_nodes`` (the weights do not change)."""
        self.observation_space, self.action_space = spaces_for_nodes(
            self.observation_space, self.action_space, n_nodes
        )

    def obs_to_tensor(self, observation):
        if isinstance(observation, dict) and "adjacency" in observation and \
                "adjacency" not in self.observation_space.spaces:
            # trained without the graph (no message passing): an env that observes it runs the same policy
            observation = {key: value for key, value in observation.items() if key != "adjacency"}
        if isinstance(observation, dict) and "nodes" in observation:
            n_nodes = np.shape(observation["nodes"])[-2]
            if n_nodes != self.action_space.shape[0]:
                self.resize(n_nodes)
        return super().obs_to_tensor(observation)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["mask_logits"] = self.mask_logits
        data["prior"], data["prior_weight"] = self.prior, self.prior_weight
        data["prior_regulariser"] = self.prior_regulariser
        data["gate"] = self.gate
        data["allowed_actions"] = self.allowed_actions
        return data


class _FeedForwardMethods:
    """forward / evaluate_actions / get_distribution / predict_values for PPO, A2C and MaskablePPO.

    ``action_masks`` is accepted (and applied) when MaskablePPO passes it, ignored otherwise.
    """

    def _critic(self, obs, context: th.Tensor) -> th.Tensor:
        glob = self.features_extractor.squash_global(obs["global"])
        return self.value_net(self.mlp_extractor.forward_critic(th.cat([context, glob], dim=-1)))

    def forward(self, obs, deterministic: bool = False, action_masks=None):
        h = self.extract_features(obs)
        context = pool(h, obs["action_mask"])
        values = self._critic(obs, context)
        distribution = self._distribution(obs, h, context, action_masks)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions, values, log_prob

    def evaluate_actions(self, obs, actions: th.Tensor, action_masks=None, per_node: bool = False):
        """Values, log-probabilities (B,), or (B, N) per node with ``per_node``, and the regulariser that
        PPO's loss weighs with ``ent_coef`` (``prior_regulariser``, summed over nodes): ``entropy`` (PPO's
        bonus: the KL to the uniform distribution, up to a constant); ``kl``: minus KL(policy || the prior
        rule's distribution, its ``prior_weight`` logit alone), which pulls towards the rule instead of
        towards uniform; ``cross_entropy``: the log-probability of the rule's action (behaviour cloning, a
        pull towards the rule's deterministic choice). SB3 logs minus the mean as ``train/entropy_loss``."""
        h = self.extract_features(obs)
        context = pool(h, obs["action_mask"])
        distribution, prior = self._distributions(obs, h, context, action_masks,
                                                  with_prior=self.prior_regulariser != "entropy")
        if self.prior_regulariser == "kl":
            regulariser = -distribution.kl_divergence(prior)
        elif self.prior_regulariser == "cross_entropy":
            regulariser = distribution.log_prob(prior.mode())
        else:
            regulariser = distribution.entropy()
        log_prob = distribution.node_log_prob(actions) if per_node else distribution.log_prob(actions)
        return self._critic(obs, context), log_prob, regulariser

    def get_distribution(self, obs, action_masks=None):
        h = self.extract_features(obs)
        return self._distribution(obs, h, pool(h, obs["action_mask"]), action_masks)

    def predict_values(self, obs) -> th.Tensor:
        return self._critic(obs, pool(self.extract_features(obs), obs["action_mask"]))


_DEFAULTS = dict(activation_fn=nn.ReLU, features_extractor_class=NodeSetEncoder)


class MaskableNodeSetPolicy(_NodeSetCore, _FeedForwardMethods, MaskableActorCriticPolicy):
    """Node-set actor-critic for sb3-contrib's MaskablePPO (the default learned scheduler)."""

    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        net_arch=None,
        *,
        mask_logits: bool = True,
        prior: str | list[str] | None = None,
        prior_weight: float = 3.0,
        prior_regulariser: str = "entropy",
        allowed_actions: list[int] | None = None,
        gate: str = "soft",
        **kwargs,
    ):
        _check_spaces(observation_space, action_space)
        self.mask_logits = mask_logits
        self._set_prior(action_space, prior, prior_weight, allowed_actions, prior_regulariser, gate)
        super().__init__(observation_space, action_space, lr_schedule, net_arch, **{**_DEFAULTS, **kwargs})


class NodeSetPolicy(_NodeSetCore, _FeedForwardMethods, ActorCriticPolicy):
    """Node-set actor-critic for SB3's PPO and A2C (masking through the observation only)."""

    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        net_arch=None,
        *,
        mask_logits: bool = True,
        prior: str | list[str] | None = None,
        prior_weight: float = 3.0,
        prior_regulariser: str = "entropy",
        allowed_actions: list[int] | None = None,
        gate: str = "soft",
        **kwargs,
    ):
        _check_spaces(observation_space, action_space)
        if kwargs.get("use_sde"):
            raise ValueError("use_sde applies to continuous actions only; GreenGossip's actions are discrete")
        self.mask_logits = mask_logits
        self._set_prior(action_space, prior, prior_weight, allowed_actions, prior_regulariser, gate)
        super().__init__(observation_space, action_space, lr_schedule, net_arch, **{**_DEFAULTS, **kwargs})


class RecurrentNodeSetPolicy(_NodeSetCore, RecurrentActorCriticPolicy):
    """Node-set actor-critic for sb3-contrib's RecurrentPPO: an LSTM over the pooled fleet context.

    The per-node head reads ``[h_i, LSTM(c)]``; the critic reads its own LSTM's output (or the actor's,
    with ``shared_lstm``). The LSTM width does not depend on N either.
    """

    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        net_arch=None,
        *,
        mask_logits: bool = True,
        prior: str | list[str] | None = None,
        prior_weight: float = 3.0,
        prior_regulariser: str = "entropy",
        allowed_actions: list[int] | None = None,
        lstm_hidden_size: int = 64,
        gate: str = "soft",
        **kwargs,
    ):
        _check_spaces(observation_space, action_space)
        if prior_regulariser != "entropy":
            raise ValueError("prior_regulariser is for the feed-forward policies (maskable_ppo, ppo, a2c); the "
                             "recurrent policy keeps PPO's entropy bonus")
        self.mask_logits = mask_logits
        self._set_prior(action_space, prior, prior_weight, allowed_actions, gate=gate)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            lstm_hidden_size=lstm_hidden_size,
            **{**_DEFAULTS, **kwargs},
        )

    def _head_dims(self) -> tuple[int, int]:
        return self.lstm_output_dim, self.lstm_output_dim

    def _critic_latent(self, context, lstm_states_vf, latent_pi, episode_starts):
        if self.lstm_critic is not None:
            return self._process_sequence(context, lstm_states_vf, episode_starts, self.lstm_critic)
        if self.shared_lstm:
            return latent_pi.detach(), None
        return self.critic(context), lstm_states_vf

    def forward(self, obs, lstm_states: RNNStates, episode_starts: th.Tensor, deterministic: bool = False):
        h = self.extract_features(obs)
        context = pool(h, obs["action_mask"])
        latent_pi, states_pi = self._process_sequence(
            context, lstm_states.pi, episode_starts, self.lstm_actor
        )
        latent_vf, states_vf = self._critic_latent(context, lstm_states.vf, latent_pi, episode_starts)
        if self.shared_lstm:
            states_vf = (states_pi[0].detach(), states_pi[1].detach())
        elif states_vf is None:
            states_vf = states_pi
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        distribution = self._distribution(obs, h, latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions, values, log_prob, RNNStates(states_pi, states_vf)

    def get_distribution(self, obs, lstm_states, episode_starts):
        h = self.extract_features(obs)
        latent_pi, lstm_states = self._process_sequence(pool(h, obs["action_mask"]), lstm_states, episode_starts,
                                                        self.lstm_actor)
        return self._distribution(obs, h, latent_pi), lstm_states

    def predict_values(self, obs, lstm_states, episode_starts) -> th.Tensor:
        context = pool(self.extract_features(obs), obs["action_mask"])
        if self.lstm_critic is not None:
            latent_vf, _ = self._process_sequence(context, lstm_states, episode_starts, self.lstm_critic)
        elif self.shared_lstm:
            latent_vf, _ = self._process_sequence(context, lstm_states, episode_starts, self.lstm_actor)
        else:
            latent_vf = self.critic(context)
        return self.value_net(self.mlp_extractor.forward_critic(latent_vf))

    def evaluate_actions(self, obs, actions, lstm_states: RNNStates, episode_starts):
        h = self.extract_features(obs)
        context = pool(h, obs["action_mask"])
        latent_pi, _ = self._process_sequence(context, lstm_states.pi, episode_starts, self.lstm_actor)
        latent_vf, _ = self._critic_latent(context, lstm_states.vf, latent_pi, episode_starts)
        distribution = self._distribution(obs, h, latent_pi)
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        return values, distribution.log_prob(actions), distribution.entropy()

    def node_logits(self, obs, lstm_states=None, episode_starts=None) -> th.Tensor:
        h = self.extract_features(obs)
        batch = h.shape[0]
        if lstm_states is None:
            zeros = th.zeros((self.lstm_actor.num_layers, batch, self.lstm_output_dim), device=h.device)
            lstm_states = (zeros, zeros.clone())
        if episode_starts is None:
            episode_starts = th.ones(batch, device=h.device)
        latent_pi, _ = self._process_sequence(pool(h, obs["action_mask"]), lstm_states, episode_starts, self.lstm_actor)
        return self._distribution(obs, h, latent_pi).distribution.logits.flatten(1)


# ---------------------------------------------------------------------------------------------- loading
ALGORITHMS = ("maskable_ppo", "ppo", "a2c", "recurrent_ppo")


def algorithm_class(name: str, ratio: str = "joint"):
    """The SB3 / sb3-contrib algorithm class for ``name`` (one of ``ALGORITHMS``); ``ratio="per_node"``
    gives MaskablePPO with one clipped ratio per node (``agents/node_ratio_ppo.py``)."""
    classes = {"maskable_ppo": MaskablePPO, "ppo": PPO, "a2c": A2C, "recurrent_ppo": RecurrentPPO}
    if name not in classes:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
    if ratio not in RATIOS:
        raise ValueError(f"unknown ratio {ratio!r}; allowed: {', '.join(RATIOS)}")
    if ratio == "per_node":
        if name != "maskable_ppo":
            raise ValueError(f"ratio per_node is for maskable_ppo, not {name}")
        return NodeRatioMaskablePPO
    return classes[name]


def policy_class(algo: str):
    """The node-set policy class that goes with ``algo``."""
    return {
        "maskable_ppo": MaskableNodeSetPolicy,
        "ppo": NodeSetPolicy,
        "a2c": NodeSetPolicy,
        "recurrent_ppo": RecurrentNodeSetPolicy,
    }[algo]


def detect_algorithm(path: str | Path) -> str:
    """Which algorithm saved the model at ``path`` (read from the policy class and hyperparameters).
    A file that is not a readable SB3 model (truncated, empty, another format) raises
    :class:`ModelFileError` naming it."""
    data = read_model_data(path)
    cls = data.get("policy_class")
    if isinstance(cls, type) and issubclass(cls, RecurrentActorCriticPolicy):
        return "recurrent_ppo"
    if isinstance(cls, type) and issubclass(cls, MaskableActorCriticPolicy):
        return "maskable_ppo"
    # PPO and A2C share the policy; A2C stores RMSprop's epsilon, PPO its epochs
    return "ppo" if "n_epochs" in data else "a2c"


class ModelFileError(UserError):
    """A saved model file cannot be read (truncated by an interrupted save, empty, not an SB3 zip)."""


def read_model_data(path: str | Path) -> dict[str, Any]:
    """The ``data`` entry of an SB3 model zip (hyperparameters, policy class), read without building the
    model; checks that the archive is whole (every member's CRC) and holds the policy's weights."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{path} is not a readable model file ({type(exc).__name__}: {exc})") from None
    if damaged is not None:
        raise ModelFileError(f"{path} is damaged: its member {damaged} fails its checksum")
    if not {"data", "policy.pth"} <= names:
        raise ModelFileError(f"{path} is not a Stable-Baselines3 model (members {sorted(names)}; expected data "
                             "and policy.pth)")
    try:
        data, _, _ = load_from_zip_file(
            path,
            device="cpu",
            load_data=True,
            custom_objects={
                "observation_space": None,
                "action_space": None,
                "lr_schedule": None,
                "learning_rate": 0.0,
                "clip_range": None,
            },
        )
    except Exception as exc:  # noqa: BLE001 - SB3 raises whatever its JSON and pickle readers raise
        raise ModelFileError(f"{path} is not a readable model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} holds no model data")
    return data


def _target_spaces(env_or_spaces) -> tuple[spaces.Space, spaces.Space]:
    if isinstance(env_or_spaces, tuple):
        return env_or_spaces
    return env_or_spaces.observation_space, env_or_spaces.action_space


def load_for_nodes(path: str | Path, env, algo: str | None = None, device: str = "cpu", ratio: str = "joint",
                   **kwargs):
    """Load a saved model (any of ``ALGORITHMS``) for ``env``, whose fleet size may differ from training's.

    SB3 checks an env's spaces against the saved ones; the node-set policies have no N-sized weight, so
    the saved spaces are simply replaced by the env's (``custom_objects``). ``env`` may be a Gymnasium
    env, a VecEnv, or ``None`` with ``(observation_space, action_space)`` given as ``spaces``.
    """
    algo = algo or detect_algorithm(path)
    target = kwargs.pop("spaces", None) or _target_spaces(env)
    observation_space, action_space = target
    custom = {
        "observation_space": observation_space,
        "action_space": action_space,
        **kwargs.pop("custom_objects", {}),
    }
    return algorithm_class(algo, ratio).load(path, env=env, device=device, custom_objects=custom, **kwargs)


def load_policy(path: str | Path, env_or_spaces=None, device: str = "cpu"):
    """Only the policy of a saved model, for acting: ``policy.predict(obs, state, episode_start,
    deterministic)`` is the scheduler interface. Any fleet size works (also without ``env_or_spaces``:
    the policy resizes on the first observation)."""
    if env_or_spaces is None:
        model = algorithm_class(detect_algorithm(path)).load(path, device=device)
    else:
        model = load_for_nodes(path, None, device=device, spaces=_target_spaces(env_or_spaces))
    model.policy.set_training_mode(False)
    return model.policy
