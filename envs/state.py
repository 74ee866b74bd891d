"""Simulator state: a dataclass of tensors with the node axis first.

Node tensors are (B·N, ...) for a batch of B environments of N nodes (B = 1 for a single env); the few
per-environment quantities are (B,)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import streams
from greengossip.envs.dynamics.buffers import difference
from greengossip.envs.dynamics.learning import ModelSpec, accuracy_per_node
from greengossip.envs.scenario import Scenario


@dataclass(frozen=True)
class SimState:
    params: torch.Tensor  # (N, P) each node's model
    public: torch.Tensor  # (N, P) CHOCO public copies x̂ held by the neighbours
    battery_wh: torch.Tensor  # (N,) Wh stored
    round: torch.Tensor  # (B,) long, rounds played so far
    last_action: torch.Tensor  # (N,) long, action actually carried out last round
    staleness: torch.Tensor  # (N,) rounds since the node last broadcast: the age of its neighbours' copy
    local_loss: torch.Tensor  # (N,) last training loss (initial: loss of the initial model on the shard)
    node_accuracy: torch.Tensor  # (N,) test accuracy of each node's model
    accuracy: torch.Tensor  # (B,) mean test accuracy over honest nodes
    consensus_distance: torch.Tensor  # (B,) mean squared distance of honest models to their mean
    dropped: torch.Tensor  # (N,) bool, could not afford last round's action
    trust: torch.Tensor  # (N, D_max) each receiver's score of the sender in each neighbour slot, [0, 1]

    def replace(self, **changes) -> SimState:
        return dataclasses.replace(self, **changes)


# SimState fields with one value per environment (B,); the others have one row per node (B·N, ...)
PER_ENV_FIELDS = ("round", "accuracy", "consensus_distance")


def model_spec(config: EnvConfig) -> ModelSpec:
    return ModelSpec(config.learning.model, config.learning.hidden)


def per_env(values: torch.Tensor, scenario: Scenario) -> torch.Tensor:
    """(B·N, ...) node values viewed as (B, N, ...)."""
    return values.view(scenario.n_envs, scenario.nodes_per_env, *values.shape[1:])


def honest_mean(values: torch.Tensor, scenario: Scenario) -> torch.Tensor:
    """(B,) mean over each environment's nodes that are not attackers: the accuracy the fleet delivers."""
    return (per_env(values, scenario) * scenario.honest_share.to(values.dtype)).sum(1)


def consensus_distance(params: torch.Tensor, scenario: Scenario, share: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean squared distance of the models to their mean, both weighted by ``share`` (B, N), each
    row summing to 1: by default the honest nodes' (``Scenario.honest_share``)."""
    share = scenario.honest_share if share is None else share
    grouped = per_env(params, scenario)
    centre = torch.bmm(share.unsqueeze(1), grouped)  # (B, 1, P) the weighted mean model
    squared = torch.linalg.vector_norm(difference(grouped, centre), dim=2).square()
    return (squared * share.to(squared.dtype)).sum(1)


def at_round(trace: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B·N,) each node's value of an (B·N, T) trace at its round ``t`` (B·N,)."""
    return trace.gather(1, t.unsqueeze(1)).squeeze(1)


def time_index(scenario: Scenario, rounds: torch.Tensor) -> torch.Tensor:
    """(B·N,) the round each node is in, from the (B,) rounds of the environments."""
    return rounds.repeat_interleave(scenario.nodes_per_env)


def initial_state(config: EnvConfig, scenario: Scenario) -> SimState:
    spec = model_spec(config)
    device = scenario.capacity_wh.device
    n = scenario.n_nodes
    start = torch.zeros(scenario.n_envs, dtype=torch.long, device=device)
    params = spec.init(streams.uniform(scenario.stream_key, start, streams.MODEL_INIT, (spec.n_params,)),
                       scenario.nodes_per_env)
    shard_x = scenario.train_x[scenario.shards]
    shard_y = scenario.train_y[scenario.shards]
    loss, _ = spec.loss_and_grad(params, shard_x, shard_y)
    node_accuracy = accuracy_per_node(spec, params, scenario.eval_x, scenario.eval_y)
    return SimState(
        params=params,
        public=params.clone(),
        battery_wh=scenario.initial_battery_wh.clone(),
        round=start,
        last_action=torch.zeros(n, dtype=torch.long, device=device),
        staleness=torch.zeros(n, device=device),
        local_loss=loss,
        node_accuracy=node_accuracy,
        accuracy=honest_mean(node_accuracy, scenario),
        consensus_distance=consensus_distance(params, scenario),
        dropped=torch.zeros(n, dtype=torch.bool, device=device),
        trust=scenario.neighbour_valid.float(),
    )


def trust_in_nodes(scenario: Scenario, trust: torch.Tensor) -> torch.Tensor:
    """(N,) each node's mean trust as scored by the neighbours that hear it."""
    scores = (trust * scenario.neighbour_valid).view(-1)  # padding slots point at the receiver itself
    total = torch.zeros(scenario.n_nodes, device=trust.device).index_add_(0, scenario.neighbours.view(-1), scores)
    return total / scenario.degree.clamp_min(1)
