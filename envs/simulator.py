"""One communication round as a batched tensor program: ``transition(state, action) -> state', outcome``.

Order inside a round: decode the action; nodes that are offline or cannot afford it on their true battery
drop out (they sleep instead, or under ``energy.overdraw: brown_out`` an off-grid node with any energy above
its reserve starts the round and is cut off mid-round: it spends that energy and does nothing);
energy is settled; the trainers run local SGD; the broadcasters send; awake nodes mix; accuracy of the
honest nodes is measured. No Python loop runs over nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import attacks, gossip, streams
from greengossip.envs.dynamics.energy import (
    IDLE,
    EnergyFlow,
    available_for_actions,
    decode_action,
    network_bytes,
    receive,
    settle_energy,
)
from greengossip.envs.dynamics.learning import accuracy_per_node, local_sgd
from greengossip.envs.numerics import saturate
from greengossip.envs.scenario import N_CLASSES, Scenario
from greengossip.envs.state import SimState, at_round, consensus_distance, honest_mean, model_spec, per_env, time_index

# share of trainers from which local SGD runs on every node rather than on a copy of the trainers' rows
WHOLE_FLEET_SGD_SHARE = 0.75


@dataclass(frozen=True)
class RoundRandomness:
    """Everything random in a round, drawn up front so the per-node reference can replay it."""

    batches: torch.Tensor  # (N, local_steps, batch) positions inside each node's shard
    attack_on: torch.Tensor | None = None  # (N,) bool, attacker active this round (None: no attackers)
    attack_noise: torch.Tensor | None = None  # (N, P) standard normal for the gaussian attack
    nonfinite_draw: torch.Tensor | None = None  # (N,) uniform, below nonfinite_probability -> NaN/inf
    background_load: torch.Tensor | None = None  # (N,) share of the CPU the node's other work takes (None: none)

    def without_attacks(self) -> RoundRandomness:
        """The same round with every attacker behaving honestly (the attack-free twin's)."""
        return RoundRandomness(batches=self.batches, background_load=self.background_load)


def background_load(config: EnvConfig, scenario: Scenario, rounds: torch.Tensor) -> torch.Tensor | None:
    """(B·N,) share u of each node's CPU its other work takes in round ``rounds`` (B,): uniform in
    [0, 2 · mean], capped at ``max_share`` (an assumption of this project); None when the mean is 0. A
    counter-based stream, so the telemetry can read the round's load before the round is played."""
    load = config.background_load
    if load.mean == 0.0:
        return None
    draw = streams.uniform(scenario.stream_key, rounds, streams.BACKGROUND, (scenario.nodes_per_env,))
    return (2.0 * load.mean * draw.view(-1)).clamp_(max=load.max_share)


def contention_wh(compute_wh: torch.Tensor, load: torch.Tensor | None) -> torch.Tensor | float:
    """Extra compute energy of training beside a background load u: the work takes 1 / (1 - u) as long at
    the same draw, so it costs compute_wh · u / (1 - u) more."""
    return 0.0 if load is None else compute_wh * load / (1.0 - load)


def draw_randomness(config: EnvConfig, scenario: Scenario, rounds: torch.Tensor) -> RoundRandomness:
    """The random numbers of round ``rounds`` (B,) of every environment, from its counter-based streams.
    Reads only the scenario's ``stream_key``, ``nodes_per_env``, ``n_nodes``, ``shard_size`` and
    ``all_honest``, so a process that holds one node's part of the world draws the same numbers."""
    key, n, total = scenario.stream_key, scenario.nodes_per_env, scenario.n_nodes
    shard_size = scenario.shard_size
    shape = (n, config.learning.local_steps, config.learning.batch_size)
    positions = (streams.uniform(key, rounds, streams.BATCHES, shape) * shard_size).long().clamp_(max=shard_size - 1)
    positions = positions.view(total, *shape[1:])
    load = background_load(config, scenario, rounds)
    if scenario.all_honest:
        return RoundRandomness(batches=positions, background_load=load)
    attack_on = streams.uniform(key, rounds, streams.ATTACK_ON, (n,)).view(total) < config.attack.on_probability
    noise = None
    if "gaussian" in config.attack.kinds:
        p = model_spec(config).n_params
        noise = streams.normal(key, rounds, streams.ATTACK_NOISE, (n, p)).view(total, p)
    nonfinite = streams.uniform(key, rounds, streams.NONFINITE, (n,)).view(total)
    return RoundRandomness(batches=positions, attack_on=attack_on, attack_noise=noise, nonfinite_draw=nonfinite,
                           background_load=load)


@dataclass(frozen=True)
class RoundOutcome:
    """What a round did: per node (B·N,) tensors and per environment (B,) tensors."""

    action: torch.Tensor  # (N,) action carried out (dropped nodes -> idle)
    trained: torch.Tensor  # (N,) bool
    sent: torch.Tensor  # (N,) bool
    dropped: torch.Tensor  # (N,) bool
    energy: EnergyFlow
    compute_wh: torch.Tensor  # (N,)
    radio_wh: torch.Tensor  # (N,)
    base_wh: torch.Tensor  # (N,)
    bytes_sent: torch.Tensor  # (N,) bytes on the air
    bytes_received: torch.Tensor  # (N,) bytes an awake node took in from its sending neighbours
    receive_wh: torch.Tensor  # (N,) Wh the receiver's radio and device spent on them (part of energy.consumed)
    internet_bytes: torch.Tensor  # (N,) bytes the sender put on links that cross the internet
    carbon_grid_g: torch.Tensor  # (N,) gCO2e from grid energy (receiving included)
    carbon_backbone_g: torch.Tensor  # (N,) gCO2e of the internet links, under the configured accounting
    carbon_backbone_marginal_g: torch.Tensor  # (N,) the same under marginal accounting
    carbon_backbone_attributional_g: torch.Tensor  # (N,) the same under attributional accounting
    accuracy: torch.Tensor  # (B,)
    previous_accuracy: torch.Tensor  # (B,)
    consensus_distance: torch.Tensor  # (B,) mean squared distance of honest models to their mean
    malicious_participants: torch.Tensor  # (B,) long, attackers that trained or broadcast this round
    attack_influence: torch.Tensor  # (B,) |honest model moves with - without attackers| / mean honest norm

    @property
    def carbon_g(self) -> torch.Tensor:
        return self.carbon_grid_g + self.carbon_backbone_g

    @property
    def carbon_marginal_g(self) -> torch.Tensor:
        return self.carbon_grid_g + self.carbon_backbone_marginal_g

    @property
    def carbon_attributional_g(self) -> torch.Tensor:
        return self.carbon_grid_g + self.carbon_backbone_attributional_g


def network_carbon(scenario: Scenario, internet_bytes: torch.Tensor, intensity_g_per_wh: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """(N,) gCO2e of the bytes each sender put on internet links, under each accounting: the network's
    energy is charged at the sender's grid intensity."""
    internet_g_per_byte = internet_bytes * intensity_g_per_wh * 1000.0
    return {accounting: internet_g_per_byte * kwh_per_byte
            for accounting, kwh_per_byte in scenario.network_kwh_per_byte.items()}


def affordable_actions(config: EnvConfig, scenario: Scenario, battery_wh: torch.Tensor,
                       harvest_wh: torch.Tensor, rounds: torch.Tensor | None = None,
                       load: torch.Tensor | None = None) -> torch.Tensor:
    """(N, K) bool: actions whose energy the node can cover this round (idle always allowed), beside the
    background ``load`` (None: none); with the environments' ``rounds`` (B,), only idle for the nodes that
    are offline in that round."""
    budget = available_for_actions(battery_wh, scenario.capacity_wh, harvest_wh, scenario.grid_connected,
                                   config.energy.battery_min_soc)
    costs = scenario.costs.total_wh
    if load is not None:
        costs = costs + contention_wh(scenario.costs.compute_wh, load.unsqueeze(1))
    mask = costs <= budget.unsqueeze(1)
    if rounds is not None:
        mask &= at_round(scenario.available, time_index(scenario, rounds)).unsqueeze(1)
    mask[:, IDLE] = True
    return mask


def affordable(config: EnvConfig, scenario: Scenario, battery_wh: torch.Tensor, harvest_wh: torch.Tensor,
               action: torch.Tensor, total_wh: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each node can cover the energy ``total_wh`` of its chosen ``action``; the
    same test as ``affordable_actions`` for one action per node."""
    budget = available_for_actions(battery_wh, scenario.capacity_wh, harvest_wh, scenario.grid_connected,
                                   config.energy.battery_min_soc)
    return (total_wh <= budget) | (action == IDLE)


def transition(
    config: EnvConfig, scenario: Scenario, state: SimState, action: torch.Tensor, noise: RoundRandomness
) -> tuple[SimState, RoundOutcome]:
    spec = model_spec(config)
    t = time_index(scenario, state.round)  # (B·N,) each node's round
    harvest = at_round(scenario.harvest_wh, t)

    # 1. energy: offline nodes and nodes that cannot afford their action on their true battery (whatever
    # their telemetry said) sleep instead; then every node's round is settled
    costs = scenario.costs
    load = noise.background_load
    total_wh = costs.total_wh.gather(1, action.unsqueeze(1)).squeeze(1)
    if load is not None:  # the node knows its own load: it refuses what it cannot afford beside it
        total_wh = total_wh + contention_wh(costs.compute_wh.gather(1, action.unsqueeze(1)).squeeze(1), load)
    online = at_round(scenario.available, t)
    can_afford = affordable(config, scenario, state.battery_wh, harvest, action, total_wh) & (online | (action == IDLE))
    dropped = ~can_afford
    browned_out = None
    if config.energy.overdraw == "brown_out":  # it starts on any energy above its reserve, and is cut off
        drawn_wh = available_for_actions(state.battery_wh, scenario.capacity_wh, harvest, scenario.grid_connected,
                                         config.energy.battery_min_soc)
        browned_out = dropped & online & (drawn_wh > 0)
    action = torch.where(can_afford, action, IDLE)
    trained, sent, level = decode_action(action)
    compute_wh, radio_wh, base_wh, total_wh, bytes_sent = costs.of(action)
    if load is not None:
        contention = contention_wh(compute_wh, load)
        compute_wh, total_wh = compute_wh + contention, total_wh + contention
    awake = trained | sent
    reception = receive(bytes_sent, awake, scenario.neighbours, scenario.neighbour_valid,
                        joule_per_bit=scenario.downlink_joule_per_bit, downlink_bit_s=scenario.downlink_bit_s,
                        idle_w=scenario.idle_w, tail_j=scenario.tail_j)
    demand_wh = total_wh + reception.receive_wh
    if browned_out is not None:  # the cut-off came mid-round: what it drew is spent, its work lost
        demand_wh = torch.where(browned_out, drawn_wh, demand_wh)
    flow = settle_energy(demand_wh, state.battery_wh, scenario.capacity_wh, harvest,
                         scenario.grid_connected, scenario.charge_limit_wh, config.energy.charge_efficiency,
                         config.energy.battery_min_soc)

    # 2. learning on the trainers only (active free riders skip it; label flippers learn 9 - y)
    kind = scenario.attack_kind
    if noise.attack_on is None:  # no attackers in this batch: none of the attack masks are needed
        free_riding = flipping = poisoner = None
    else:
        attacking = noise.attack_on & ~scenario.honest & (t >= config.attack.start_round)
        free_riding = attacking & attacks.is_kind(kind, "free_rider")
        flipping = attacking & attacks.is_kind(kind, "label_flip")
        poisoner = attacking & attacks.is_kind(kind, *attacks.MODEL_POISONING)
    learners = trained if free_riding is None else trained & ~free_riding
    params, local_loss = state.params, state.local_loss
    trainers = learners.nonzero().squeeze(1)
    # When most nodes train, the others train along and keep their old models: copying the trainers'
    # rows out and back costs more than the few wasted SGD steps (no subset at all in the common D-PSGD
    # round where everyone trains)
    whole_fleet = trainers.numel() >= WHOLE_FLEET_SGD_SHARE * scenario.n_nodes
    if trainers.numel():
        positions = noise.batches if whole_fleet else noise.batches.index_select(0, trainers)
        shards = scenario.shards if whole_fleet else scenario.shards.index_select(0, trainers)
        batches = shards.gather(1, positions.flatten(1)).view(positions.shape)
        labels = scenario.train_y.index_select(0, batches.view(-1)).view(batches.shape)  # 4x faster than [ ]
        if flipping is not None:
            flip = flipping if whole_fleet else flipping.index_select(0, trainers)
            labels = torch.where(flip.view(-1, 1, 1), N_CLASSES - 1 - labels, labels)
        own = params if whole_fleet else params.index_select(0, trainers)
        new_params, loss = local_sgd(spec, own, scenario.train_x, batches, labels, config.learning.learning_rate)
        if trainers.numel() == scenario.n_nodes:
            params, local_loss = new_params, loss
        elif whole_fleet:  # new_params is SGD's fresh block: the selection can take its memory
            params = torch.where(learners.unsqueeze(1), new_params, params)
            local_loss = torch.where(learners, loss, local_loss)
        else:
            params = params.index_copy(0, trainers, new_params)
            local_loss = local_loss.index_copy(0, trainers, loss)

    # 3. gossip: senders update their public copies, awake nodes move towards their neighbours
    # label flippers broadcast their poisoned model honestly; an active free rider's copy stays stale
    honest_senders = sent if free_riding is None else sent & ~free_riding
    public = gossip.broadcast(params, state.public, level, honest_senders)
    mixes = awake
    if poisoner is not None:
        poisoning = sent & poisoner
        if bool(poisoning.any()):
            rows = poisoning.nonzero().squeeze(1)
            crafted = attacks.crafted_broadcasts(config.attack, config.defence, kind, scenario.honest, params, public,
                                                 scenario.neighbours, scenario.neighbour_valid,
                                                 scenario.neighbour_weight, rows, noise.attack_noise,
                                                 noise.nonfinite_draw)
            public = public.index_copy(0, rows, crafted)
        # active model-poisoning attackers keep their own model out of the consensus step (their public
        # copy is the crafted one, so following the protocol would only feed their attack back into them)
        mixes = awake & ~poisoner
    defence = config.defence
    # only this round's links carry anything: a receiver mixes with the neighbours that broadcast now
    # (DESIGN §3), never with copies that went stale in its mailbox; non-finite messages are dropped
    # one pass finds the non-finite copies: they are never usable, and zeroing them (a copy only when there
    # is one) spares the distances and the pulls their own passes
    finite, public_safe = gossip.split_finite(public)
    usable = finite & sent
    # ‖x̂_j − x_i‖ on every neighbour slot, once: the trust scores and ClippedGossip's clip (in both the
    # pull and the attacker-free pull) measure the same distances
    distances = gossip.neighbour_distances(params, public_safe, scenario.neighbours,
                                           scenario.neighbour_valid, scenario.nodes_per_env,
                                           scenario.neighbour_pattern)

    def pull_from(senders: torch.Tensor) -> torch.Tensor:
        return gossip.aggregate_pull(params, public_safe, scenario.neighbour_mixing, scenario.neighbours,
                                     scenario.neighbour_valid,
                                     scenario.neighbour_weight, defence.aggregator, senders,
                                     defence.trim_fraction, defence.clip_quantile,
                                     state.trust if defence.trust_weighting else None, scenario.neighbour_pattern,
                                     distances, rows_finite=True)

    step = mixes.unsqueeze(1).to(params.dtype)
    if config.learning.gossip_step != 1.0:
        step = config.learning.gossip_step * step
    pull = pull_from(usable)
    influence = torch.zeros(scenario.n_envs, device=params.device)
    if noise.attack_on is not None:  # attackers in the batch (an attack-free twin draws no attack)
        clean_pull = pull_from(usable & scenario.honest)
        started = state.round >= config.attack.start_round
        scale = honest_mean(params.norm(dim=1), scenario).clamp_min(1e-8)
        shift = honest_mean((step * (pull - clean_pull)).norm(dim=1), scenario)
        influence = torch.where(started, shift / scale, influence)
    scores = gossip.neighbour_scores(params, public_safe, scenario.neighbours, scenario.neighbour_valid, usable,
                                     scenario.nodes_per_env, scenario.neighbour_pattern, distances)
    # the pull is a fresh block of its own, not needed after this: the new models can take its memory
    params = saturate(torch.addcmul(params, step, pull, out=None if pull.requires_grad else pull))
    fresh = scenario.neighbour_valid & gossip.slots(sent, scenario.neighbours) & awake.unsqueeze(1)
    memory = defence.trust_memory
    trust = torch.where(fresh, torch.lerp(scores, state.trust, memory), state.trust)  # m·old + (1 - m)·new

    # 4. measure
    malicious = per_env(awake & ~scenario.honest, scenario).sum(1)
    node_accuracy = accuracy_per_node(spec, params, scenario.eval_x, scenario.eval_y)
    intensity_g_per_wh = at_round(scenario.carbon_g_per_wh, t)
    internet_bytes = network_bytes(bytes_sent, awake, scenario.neighbours, scenario.internet_slot)
    carbon_network = network_carbon(scenario, internet_bytes, intensity_g_per_wh)

    new_state = state.replace(
        params=params,
        public=public,
        battery_wh=flow.battery_after,
        round=state.round + 1,
        last_action=action,
        staleness=torch.where(sent, 0.0, state.staleness + 1),
        local_loss=local_loss,
        node_accuracy=node_accuracy,
        accuracy=honest_mean(node_accuracy, scenario),
        consensus_distance=consensus_distance(params, scenario),
        dropped=dropped,
        trust=trust,
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
        bytes_received=reception.bytes_received,
        receive_wh=reception.receive_wh,
        internet_bytes=internet_bytes,
        carbon_grid_g=flow.grid * intensity_g_per_wh,
        carbon_backbone_g=carbon_network[scenario.network_accounting],
        carbon_backbone_marginal_g=carbon_network["marginal"],
        carbon_backbone_attributional_g=carbon_network["attributional"],
        accuracy=new_state.accuracy,
        previous_accuracy=state.accuracy,
        consensus_distance=new_state.consensus_distance,
        malicious_participants=malicious,
        attack_influence=influence,
    )
    return new_state, outcome
