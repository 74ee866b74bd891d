"""A slow, obviously correct per-node reference of one communication round.

``reference_transition(config, scenario, state, action, noise)`` has the semantics of
:func:`envs.simulator.transition` but is written the long way: a Python loop over nodes, torch autograd
(``cross_entropy`` + ``backward``) for each node's SGD steps, each node's compression on its own row,
mixing over the directed edge list (never the matrix), and the energy of every node settled with plain
Python floats and ``if``/``else``. Action costs are recomputed here from the device and link figures of
each node rather than read from ``scenario.costs``.

It uses only public pieces (the ``Scenario`` fields, ``SimState``, the config, the compression figures of
``envs.devices``) and none of the batched helpers it checks (``settle_energy``, ``action_costs``,
``compress``, ``mix``, ``local_sgd``, ``loss_and_grad``), so that ``tests/test_reference.py`` compares two
independent implementations. ``benchmarks/bench_step.py`` times it against the batched step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from envs.config import EnvConfig
from envs.devices import COMPRESSION_BYTE_RATIO, COMPRESSION_LEVELS, TOPK_FRACTION
from envs.scenario import N_CLASSES, N_FEATURES, Scenario
from envs.state import SimState

IDLE = 0
N_ACTIONS = 2 + len(COMPRESSION_LEVELS)


# ------------------------------------------------------------------------------------------ costs
def node_action_cost(config: EnvConfig, scenario: Scenario, node: int, action: int) -> dict[str, float]:
    """Energy (Wh) by kind and bytes on the air of one action on one node, from the device figures."""
    trains = action >= 1
    sends = action >= 2
    ratio = COMPRESSION_BYTE_RATIO[COMPRESSION_LEVELS[action - 2]] if sends else 0.0
    bytes_sent = scenario.model_bytes * ratio
    bits = 8.0 * bytes_sent
    samples = config.learning.local_steps * config.learning.batch_size
    train_s = samples / float(scenario.samples_per_s[node]) if trains else 0.0
    airtime_s = bits / float(scenario.uplink_bit_s[node])
    tail_s = float(scenario.tail_s[node]) if sends else 0.0
    tail_j = float(scenario.tail_j[node]) if sends else 0.0
    awake_s = train_s + airtime_s + tail_s
    sleep_s = scenario.round_s - awake_s
    if sleep_s < 0.0:
        sleep_s = 0.0
    compute_j = float(scenario.busy_w[node]) * train_s
    radio_j = bits * float(scenario.joule_per_bit[node]) + tail_j
    base_j = float(scenario.idle_w[node]) * airtime_s + float(scenario.sleep_w[node]) * sleep_s
    return {
        "compute_wh": compute_j / 3600.0,
        "radio_wh": radio_j / 3600.0,
        "base_wh": base_j / 3600.0,
        "total_wh": (compute_j + radio_j + base_j) / 3600.0,
        "bytes_sent": bytes_sent,
    }


def node_can_afford(config: EnvConfig, battery: float, capacity: float, harvest: float, grid: bool,
                    cost_wh: float) -> bool:
    """A node can pay for an action from this round's harvest plus its battery above the reserve;
    a grid-connected node can always pay."""
    if grid:
        return True
    reserve = config.energy.battery_min_soc * capacity
    above_reserve = battery - reserve
    if above_reserve < 0.0:
        above_reserve = 0.0
    return cost_wh <= harvest + above_reserve


def settle_node(demand: float, battery: float, capacity: float, harvest: float, grid_connected: bool,
                charge_limit: float, efficiency: float) -> dict[str, float]:
    """One node's energy for one round: harvest first, then battery, then grid; surplus harvest charges
    the battery (charge-rate limit, free capacity, efficiency loss) and the rest is spilled."""
    # supply
    if harvest >= demand:
        from_harvest = demand
    else:
        from_harvest = harvest
    rest = demand - from_harvest
    if battery >= rest:
        from_battery = rest
    else:
        from_battery = battery
    rest = rest - from_battery
    if grid_connected:
        grid = rest
        unmet = 0.0
    else:
        grid = 0.0
        unmet = rest
    # surplus
    surplus = harvest - from_harvest
    battery_mid = battery - from_battery
    room_at_input = (capacity - battery_mid) / efficiency  # energy taken in that would fill the cell
    charge_in = surplus
    if charge_in > charge_limit:
        charge_in = charge_limit
    if charge_in > room_at_input:
        charge_in = room_at_input
    if charge_in < 0.0:
        charge_in = 0.0
    stored_in = charge_in * efficiency
    battery_after = battery_mid + stored_in
    if battery_after > capacity:
        battery_after = capacity
    return {
        "harvested": harvest,
        "from_harvest": from_harvest,
        "from_battery": from_battery,
        "grid": grid,
        "consumed": demand - unmet,
        "stored_in": stored_in,
        "charge_loss": charge_in - stored_in,
        "spilled": surplus - charge_in,
        "unmet": unmet,
        "battery_after": battery_after,
    }


# ------------------------------------------------------------------------------------------ learning
def _layers(config: EnvConfig, flat: torch.Tensor) -> list[torch.Tensor]:
    """One node's flat parameter vector as its layers, in the order ModelSpec lays them out:
    softmax (W 64x10, b 10); mlp (W1 64xH, b1 H, W2 Hx10, b2 10)."""
    hidden = config.learning.hidden
    if config.learning.model == "softmax":
        shapes = [(N_FEATURES, N_CLASSES), (N_CLASSES,)]
    else:
        shapes = [(N_FEATURES, hidden), (hidden,), (hidden, N_CLASSES), (N_CLASSES,)]
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[start : start + size].reshape(shape))
        start += size
    if start != flat.numel():
        raise ValueError(f"parameter vector has {flat.numel()} entries, the {config.learning.model} model "
                         f"needs {start}")
    return out


def node_logits(config: EnvConfig, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, 64) inputs -> (B, 10) logits of one node's model."""
    layers = _layers(config, flat)
    if config.learning.model == "softmax":
        w, b = layers
        return x @ w + b
    w1, b1, w2, b2 = layers
    return F.relu(x @ w1 + b1) @ w2 + b2


def node_sgd(config: EnvConfig, flat: torch.Tensor, xs: list[torch.Tensor], ys: list[torch.Tensor]
             ) -> tuple[torch.Tensor, float]:
    """Plain SGD over the given minibatches with autograd; returns new params and the mean loss."""
    params = flat.detach().clone()
    losses = []
    for x, y in zip(xs, ys):
        params.requires_grad_(True)
        loss = F.cross_entropy(node_logits(config, params, x), y)
        loss.backward()
        with torch.no_grad():
            params = params - config.learning.learning_rate * params.grad
        losses.append(float(loss.detach()))
    return params.detach(), sum(losses) / len(losses)


# ------------------------------------------------------------------------------------------ gossip
def compress_row(delta: torch.Tensor, level: int) -> torch.Tensor:
    """One node's message: the (P,) difference compressed at the level's COMPRESSION_LEVELS name."""
    name = COMPRESSION_LEVELS[level]
    if name == "full":
        return delta.clone()
    if name == "q8":
        largest = float(delta.abs().max())
        if largest < 1e-12:
            largest = 1e-12
        scale = largest / 127.0
        return torch.round(delta / scale) * scale
    k = math.ceil(TOPK_FRACTION[name] * delta.numel())
    if k < 1:
        k = 1
    largest_first = torch.argsort(delta.abs(), descending=True, stable=True)
    kept = torch.zeros_like(delta)
    kept[largest_first[:k]] = delta[largest_first[:k]]
    return kept


# ------------------------------------------------------------------------------------------ round
def reference_transition(
    config: EnvConfig, scenario: Scenario, state: SimState, action: torch.Tensor, noise: Any
) -> tuple[SimState, dict[str, Any]]:
    """One round, node by node. ``noise`` is a ``RoundRandomness`` (its ``batches`` are positions inside
    each node's shard). Returns the new state and per-node lists of what happened."""
    n = scenario.n_nodes
    t = state.round
    eff = config.energy.charge_efficiency
    requested = [int(a) for a in action.tolist()]
    for a in requested:
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action code {a} outside 0..{N_ACTIONS - 1}")

    # 1. energy: decide who drops out, then settle every node
    carried, dropped, flows, costs = [], [], [], []
    for i in range(n):
        battery = float(state.battery_wh[i])
        capacity = float(scenario.capacity_wh[i])
        harvest = float(scenario.harvest_wh[i, t])
        grid = bool(scenario.grid_connected[i])
        wanted = node_action_cost(config, scenario, i, requested[i])
        if requested[i] == IDLE or node_can_afford(config, battery, capacity, harvest, grid,
                                                   wanted["total_wh"]):
            carried.append(requested[i])
            dropped.append(False)
            cost = wanted
        else:
            carried.append(IDLE)
            dropped.append(True)
            cost = node_action_cost(config, scenario, i, IDLE)
        costs.append(cost)
        flows.append(settle_node(cost["total_wh"], battery, capacity, harvest, grid,
                                 float(scenario.charge_limit_wh[i]), eff))

    trained = [a >= 1 for a in carried]
    sent = [a >= 2 for a in carried]

    # 2. local SGD on every trainer, one node at a time
    params = [state.params[i].detach().clone() for i in range(n)]
    local_loss = [float(state.local_loss[i]) for i in range(n)]
    for i in range(n):
        if not trained[i]:
            continue
        xs, ys = [], []
        for step in range(noise.batches.shape[1]):
            positions = noise.batches[i, step]
            sample_ids = scenario.shards[i][positions]
            xs.append(scenario.train_x[sample_ids])
            ys.append(scenario.train_y[sample_ids])
        params[i], local_loss[i] = node_sgd(config, params[i], xs, ys)

    # 3. CHOCO: senders add their compressed difference to their public copy ...
    public = [state.public[i].detach().clone() for i in range(n)]
    for i in range(n):
        if sent[i]:
            public[i] = public[i] + compress_row(params[i] - public[i], carried[i] - 2)
    # ... then every awake node moves towards its neighbours' public copies, edge by edge
    pull = [torch.zeros_like(params[i]) for i in range(n)]
    for src, dst, w in zip(scenario.edge_src.tolist(), scenario.edge_dst.tolist(),
                           scenario.edge_weight.tolist()):
        pull[dst] = pull[dst] + w * (public[src] - public[dst])
    gamma = config.learning.gossip_step
    for i in range(n):
        if trained[i] or sent[i]:
            params[i] = params[i] + gamma * pull[i]

    # 4. measure each node's model on the evaluation split
    eval_x = scenario.test_x[scenario.eval_index]
    eval_y = scenario.test_y[scenario.eval_index]
    node_accuracy = []
    for i in range(n):
        with torch.no_grad():
            predicted = node_logits(config, params[i], eval_x).argmax(-1)
        node_accuracy.append(float((predicted == eval_y).float().mean()))
    honest = [bool(h) for h in scenario.honest.tolist()]
    honest_acc = [a for a, h in zip(node_accuracy, honest) if h]
    accuracy = sum(honest_acc) / len(honest_acc)

    carbon_grid, carbon_backbone = [], []
    for i in range(n):
        g_per_wh = float(scenario.carbon_g_per_kwh[i, t]) / 1000.0
        carbon_grid.append(flows[i]["grid"] * g_per_wh)
        backbone_wh = costs[i]["bytes_sent"] * float(scenario.degree[i]) * scenario.backbone_kwh_per_byte * 1000.0
        carbon_backbone.append(backbone_wh * g_per_wh)

    device = state.params.device
    f32 = dict(dtype=torch.float32, device=device)
    changed = [trained[i] or sent[i] for i in range(n)]
    new_state = state.replace(
        params=torch.stack(params),
        public=torch.stack(public),
        battery_wh=torch.tensor([f["battery_after"] for f in flows], **f32),
        round=t + 1,
        last_action=torch.tensor(carried, dtype=torch.long, device=device),
        staleness=torch.tensor([0.0 if changed[i] else float(state.staleness[i]) + 1.0 for i in range(n)],
                               **f32),
        local_loss=torch.tensor(local_loss, **f32),
        node_accuracy=torch.tensor(node_accuracy, **f32),
        accuracy=accuracy,
        dropped=torch.tensor(dropped, dtype=torch.bool, device=device),
    )
    outcome: dict[str, Any] = {
        "action": carried,
        "dropped": dropped,
        "trained": trained,
        "sent": sent,
        "compute_wh": [c["compute_wh"] for c in costs],
        "radio_wh": [c["radio_wh"] for c in costs],
        "base_wh": [c["base_wh"] for c in costs],
        "bytes_sent": [c["bytes_sent"] for c in costs],
        "carbon_grid_g": carbon_grid,
        "carbon_backbone_g": carbon_backbone,
        "accuracy": accuracy,
        "previous_accuracy": state.accuracy,
    }
    for key in flows[0]:
        outcome[key] = [f[key] for f in flows]
    return new_state, outcome
