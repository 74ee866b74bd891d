"""One communication round as a batched tensor program: ``transition(state, action) -> state', outcome``.

Order inside a round: decode the action; nodes that cannot afford it drop out (they sleep instead);
energy is settled; the trainers run local SGD; the broadcasters send; awake nodes mix; accuracy of the
honest nodes is measured. No Python loop runs over nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.config import EnvConfig
from envs.dynamics import gossip
from envs.dynamics.energy import IDLE, EnergyFlow, available_for_actions, decode_action, settle_energy
from envs.dynamics.learning import accuracy_per_node, local_sgd
from envs.scenario import Scenario
from envs.state import SimState, honest_mean, model_spec


@dataclass(frozen=True)
class RoundRandomness:
    """Everything random in a round, drawn up front so the per-node reference can replay it."""

    batches: torch.Tensor  # (N, local_steps, batch) positions inside each node's shard


def draw_randomness(config: EnvConfig, scenario: Scenario, generator: torch.Generator) -> RoundRandomness:
    shape = (scenario.n_nodes, config.learning.local_steps, config.learning.batch_size)
    positions = torch.randint(0, scenario.shards.shape[1], shape, generator=generator,
                              device=scenario.shards.device)
    return RoundRandomness(batches=positions)


@dataclass(frozen=True)
class RoundOutcome:
    """What a round did, per node (N,) tensors and fleet totals (floats)."""

    action: torch.Tensor  # (N,) action carried out (dropped nodes -> idle)
    trained: torch.Tensor  # (N,) bool
    sent: torch.Tensor  # (N,) bool
    dropped: torch.Tensor  # (N,) bool
    energy: EnergyFlow
    compute_wh: torch.Tensor  # (N,)
    radio_wh: torch.Tensor  # (N,)
    base_wh: torch.Tensor  # (N,)
    bytes_sent: torch.Tensor  # (N,) bytes on the air
    carbon_grid_g: torch.Tensor  # (N,) gCO2e from grid energy
    carbon_backbone_g: torch.Tensor  # (N,) gCO2e of carrying the broadcast over the core network
    accuracy: float
    previous_accuracy: float
    consensus_distance: float  # mean squared distance of honest models to their mean

    @property
    def carbon_g(self) -> torch.Tensor:
        return self.carbon_grid_g + self.carbon_backbone_g


def affordable_actions(config: EnvConfig, scenario: Scenario, battery_wh: torch.Tensor,
                       harvest_wh: torch.Tensor) -> torch.Tensor:
    """(N, K) bool: actions whose energy the node can cover this round (idle always allowed)."""
    budget = available_for_actions(battery_wh, scenario.capacity_wh, harvest_wh, scenario.grid_connected,
                                   config.energy.battery_min_soc)
    mask = scenario.costs.total_wh <= budget.unsqueeze(1)
    mask[:, IDLE] = True
    return mask


def transition(
    config: EnvConfig, scenario: Scenario, state: SimState, action: torch.Tensor, noise: RoundRandomness
) -> tuple[SimState, RoundOutcome]:
    spec = model_spec(config)
    t = state.round
    nodes = torch.arange(scenario.n_nodes, device=action.device)
    harvest = scenario.harvest_wh[:, t]

    # 1. energy: drop what cannot be afforded, then settle every node's round
    affordable = affordable_actions(config, scenario, state.battery_wh, harvest)[nodes, action]
    dropped = ~affordable
    action = torch.where(affordable, action, torch.full_like(action, IDLE))
    trained, sent, level = decode_action(action)
    costs = scenario.costs
    compute_wh, radio_wh, base_wh = (c[nodes, action] for c in (costs.compute_wh, costs.radio_wh, costs.base_wh))
    flow = settle_energy(compute_wh + radio_wh + base_wh, state.battery_wh, scenario.capacity_wh, harvest,
                         scenario.grid_connected, scenario.charge_limit_wh, config.energy.charge_efficiency)

    # 2. learning on the trainers only
    params, local_loss = state.params, state.local_loss
    trainers = trained.nonzero().squeeze(1)
    if trainers.numel():
        batches = scenario.shards[trainers].gather(1, noise.batches[trainers].flatten(1)).view(
            noise.batches[trainers].shape)
        new_params, loss = local_sgd(spec, params[trainers], scenario.train_x, scenario.train_y, batches,
                                     config.learning.learning_rate)
        params = params.index_copy(0, trainers, new_params)
        local_loss = local_loss.index_copy(0, trainers, loss)

    # 3. gossip: senders update their public copies, awake nodes mix
    public = gossip.broadcast(params, state.public, level, sent)
    awake = trained | sent
    params = gossip.mix(params, public, scenario.mixing, awake, config.learning.gossip_step)

    # 4. measure
    eval_y = scenario.test_y[scenario.eval_index]
    node_accuracy = accuracy_per_node(spec, params, scenario.test_x[scenario.eval_index], eval_y)
    honest_params = params[scenario.honest]
    consensus = float((honest_params - honest_params.mean(0)).pow(2).sum(1).mean())
    intensity_g_per_wh = scenario.carbon_g_per_kwh[:, t] / 1000.0
    bytes_sent = costs.bytes_sent[nodes, action]
    backbone_wh = bytes_sent * scenario.degree * scenario.backbone_kwh_per_byte * 1000.0

    changed = awake
    new_state = state.replace(
        params=params,
        public=public,
        battery_wh=flow.battery_after,
        round=t + 1,
        last_action=action,
        staleness=torch.where(changed, torch.zeros_like(state.staleness), state.staleness + 1),
        local_loss=local_loss,
        node_accuracy=node_accuracy,
        accuracy=honest_mean(node_accuracy, scenario),
        dropped=dropped,
    )
    outcome = RoundOutcome(
        action=action,
        trained=trained,
        sent=sent,
        dropped=dropped,
        energy=flow,
        compute_wh=compute_wh,
        radio_wh=radio_wh,
        base_wh=base_wh,
        bytes_sent=bytes_sent,
        carbon_grid_g=flow.grid * intensity_g_per_wh,
        carbon_backbone_g=backbone_wh * intensity_g_per_wh,
        accuracy=new_state.accuracy,
        previous_accuracy=state.accuracy,
        consensus_distance=consensus,
    )
    return new_state, outcome
