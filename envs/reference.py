"""A slow, obviously correct per-node reference of one communication round.

``reference_transition(config, scenario, state, action, noise)`` has the semantics of
:func:`greengossip.envs.simulator.transition` but is written the long way: a Python loop over nodes, torch autograd
(``cross_entropy`` + ``backward``) for each node's SGD steps, each node's compression on its own row,
each receiver's neighbours taken from the directed edge list (never the mixing matrix), and the energy
of every node settled with plain Python floats and ``if``/``else``. Action costs are recomputed from
each node's device and link figures rather than read from ``scenario.costs``.

A round, as the batched simulator defines it:
1. nodes that are offline this round (``Scenario.available``), or cannot pay for their action from harvest +
   battery above the reserve (grid nodes always can), sleep instead and are reported dropped (with
   ``energy.overdraw: brown_out`` an off-grid one that has any harvest or battery above the reserve spends all
   of it first, cut off mid-round); every awake
   node receives what its sending neighbours broadcast (downlink energy, idle draw, radio tail) and every
   sender's message crosses the internet once per awake neighbour linked over it; every node's energy,
   receiving included, is settled (harvest, battery down to the reserve, grid; what none covers is unmet);
2. trainers run SGD on their minibatches (active free riders skip it, active label flippers learn 9 - y);
3. senders add Q(x_i - x̂_i) to their public copy x̂_i (CHOCO-SGD error feedback), label flippers
   included (envs/dynamics/attacks.py: they "broadcast honestly"); an active free rider's copy stays
   stale; an active model poisoner's copy becomes its crafted message; non-finite copies are not usable;
4. every awake node that is not an active poisoner moves x_i += γ · pull, the pull measured from its own
   model: Σ_j w_ij (x̂_j - x_i) (mean, optionally trust-weighted), the same with each term clipped at a
   quantile τ of the distances (clipped_gossip), or the coordinate-wise median / trimmed mean of
   {x_i} ∪ {x̂_j} minus x_i; awake receivers rescore the neighbours that broadcast (trust);
5. accuracy of every node on the evaluation split, mean over honest nodes.

It uses only public pieces (``Scenario`` fields, ``SimState``, the config, the figures of
``greengossip.envs.devices``, the attack names of ``greengossip.envs.dynamics.attacks``) and none of the
batched helpers it checks (``settle_energy``, ``action_costs``, ``compress``, ``broadcast``, ``aggregate_pull``,
``neighbour_scores``, ``crafted_broadcasts``, ``local_sgd``, ``loss_and_grad``), so that
``tests/test_reference.py`` compares two independent implementations. ``benchmarks/bench_step.py``
times it against the batched step.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import torch
import torch.nn.functional as F

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics.attacks import ATTACK_KINDS, MODEL_POISONING
from greengossip.envs.numerics import PARAM_LIMIT
from greengossip.envs.scenario import N_CLASSES, N_INPUTS, Scenario
from greengossip.envs.state import SimState
from greengossip.envs.workloads import COMPRESSION_LEVELS, TOPK_FRACTION

IDLE = 0
N_ACTIONS = 2 + len(COMPRESSION_LEVELS)


# ------------------------------------------------------------------------------------------ costs
def node_action_cost(config: EnvConfig, scenario: Scenario, node: int, action: int, load: float = 0.0
                     ) -> dict[str, float]:
    """Energy (Wh) by kind and bytes on the air of one action on one node, from the device figures; beside a
    background ``load`` u, training takes 1 / (1 - u) as long at the same draw."""
    trains = action >= 1
    sends = action >= 2
    bytes_sent = message_size(scenario.workload.n_params, COMPRESSION_LEVELS[action - 2]) if sends else 0.0
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
    compute_j = float(scenario.busy_w[node]) * train_s / (1.0 - load)
    radio_j = bits * float(scenario.joule_per_bit[node]) + tail_j
    base_j = float(scenario.idle_w[node]) * airtime_s + float(scenario.sleep_w[node]) * sleep_s
    return {
        "compute_wh": compute_j / 3600.0,
        "radio_wh": radio_j / 3600.0,
        "base_wh": base_j / 3600.0,
        "total_wh": (compute_j + radio_j + base_j) / 3600.0,
        "bytes_sent": bytes_sent,
    }


def message_size(n_params: int, level: str) -> float:
    """Bytes of one message: float32 values, a float32 scale for q8, int32 indices for top-k."""
    if level == "full":
        return 4.0 * n_params
    if level == "q8":
        return 1.0 * n_params + 4.0
    kept = math.ceil(TOPK_FRACTION[level] * n_params)
    if kept < 1:
        kept = 1
    return 8.0 * kept


def node_receive_cost(scenario: Scenario, node: int, bytes_in: float) -> float:
    """Wh one node spends receiving ``bytes_in``: its link's downlink energy per bit, the device's idle
    draw while the bytes arrive, and the radio's tail after the burst."""
    if bytes_in <= 0.0:
        return 0.0
    bits = 8.0 * bytes_in
    joule = (bits * float(scenario.downlink_joule_per_bit[node])
             + float(scenario.idle_w[node]) * bits / float(scenario.downlink_bit_s[node])
             + float(scenario.tail_j[node]))
    return joule / 3600.0


def link_crosses_internet(config: EnvConfig, scenario: Scenario, a: int, b: int) -> bool:
    """Geographic graphs link regions over the internet and nodes in one region by radio; the other kinds
    know no geography and every link goes over the internet."""
    if config.topology.kind != "geographic":
        return True
    return int(scenario.region_index[a]) != int(scenario.region_index[b])


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
                charge_limit: float, efficiency: float, min_soc: float = 0.0) -> dict[str, float]:
    """One node's energy for one round: harvest first, then battery down to min_soc · capacity, then grid;
    surplus harvest charges the battery (charge-rate limit, free capacity, efficiency loss) and the rest is
    spilled."""
    # supply
    if harvest >= demand:
        from_harvest = demand
    else:
        from_harvest = harvest
    rest = demand - from_harvest
    above_reserve = battery - min_soc * capacity
    if above_reserve < 0.0:
        above_reserve = 0.0
    if above_reserve >= rest:
        from_battery = rest
    else:
        from_battery = above_reserve
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
    softmax (W 10x65, the bias in its last column); mlp (W1 65xH, the bias in its last row, W2 Hx10,
    b2 10). Inputs carry the constant bias input after their 64 pixels."""
    hidden = config.learning.hidden
    if config.learning.model == "softmax":
        shapes = [(N_CLASSES, N_INPUTS)]
    else:
        shapes = [(N_INPUTS, hidden), (hidden, N_CLASSES), (N_CLASSES,)]
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
    """(B, 65) inputs -> (B, 10) logits of one node's model."""
    layers = _layers(config, flat)
    if config.learning.model == "softmax":
        (w,) = layers
        return x @ w.T
    w1, w2, b2 = layers
    return F.relu(x @ w1) @ w2 + b2


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


# ------------------------------------------------------------------------------------------ attacks
def _alie_z(n_nodes: int, n_attackers: int) -> float:
    """Baruch et al. 2019: with s = floor(n/2 + 1) - f supporters needed, z = Phi^-1((n - s) / n)."""
    supporters = math.floor(n_nodes / 2 + 1) - n_attackers
    quantile = (n_nodes - supporters) / n_nodes
    quantile = min(max(quantile, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(quantile)


def crafted_message(config: EnvConfig, kind: str, own: torch.Tensor, neighbour_models: list[torch.Tensor],
                    n_colluders: int, noise_row: torch.Tensor | None, nonfinite: bool,
                    targets: list[tuple[torch.Tensor, list[tuple[torch.Tensor, float]], float]]) -> torch.Tensor:
    """What one active model-poisoning attacker puts in its neighbours' mailboxes. ``neighbour_models``:
    its honest neighbours' public copies; ``n_colluders``: its attacker neighbours; ``targets`` (dissensus):
    per honest neighbour, its copy, its honest neighbours' copies with their weights, and its attackers'
    total weight."""
    if nonfinite:  # NaN on even, +inf on odd coordinates
        message = torch.full_like(own, float("nan"))
        message[1::2] = float("inf")
        return message
    if kind in ("sign_flip", "lying_telemetry"):
        return -own
    if kind == "gaussian":
        return own + config.attack.gaussian_std * noise_row
    if not neighbour_models:
        return own
    count = len(neighbour_models)
    mean_h = sum(neighbour_models) / count
    std_h = (sum((m - mean_h) ** 2 for m in neighbour_models) / count).sqrt()
    if kind == "ipm":
        return -config.attack.ipm_epsilon * mean_h
    if kind == "alie":
        return mean_h - _alie_z(count + n_colluders + 1, n_colluders + 1) * std_h
    if kind == "dissensus":
        messages = []
        for centre, heard, attacker_weight in targets:
            step = sum((w * (model - centre) for model, w in heard), torch.zeros_like(centre))
            messages.append(centre - config.attack.dissensus_epsilon * step / max(attacker_weight, 1e-12))
        return sum(messages) / len(messages)
    if kind == "min_max":
        direction = -std_h / max(float(std_h.norm()), 1e-12)
        distances = sorted(float((mean_h - m).norm()) for m in neighbour_models)
        if config.defence.aggregator == "clipped_gossip" or config.defence.trust_weighting:
            return mean_h + distances[(count - 1) // 2] * direction
        radius = max(float((a - b).norm()) for a in neighbour_models for b in neighbour_models)
        gamma = math.inf
        for model in neighbour_models:
            b = float(direction @ (mean_h - model))
            c = float((mean_h - model).norm()) ** 2 - radius**2
            gamma = min(gamma, max(0.0, -b + math.sqrt(max(b * b - c, 0.0))))
        return mean_h + gamma * direction
    raise ValueError(f"{kind!r} is not a model-poisoning attack")


# ------------------------------------------------------------------------------------------ defences
def _lower_median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def node_pull(config: EnvConfig, own: torch.Tensor, senders: list[tuple[torch.Tensor, float, float]]
              ) -> torch.Tensor:
    """Direction one node moves its model x_i, from its usable neighbours' public copies.

    ``senders`` holds (x̂_j, w_ij, trust in j) for every usable neighbour j."""
    defence = config.defence
    aggregator = defence.aggregator
    if aggregator in ("mean", "clipped_gossip"):
        scale = [1.0] * len(senders)
        if aggregator == "clipped_gossip" and senders:
            dists = [float((x - own).norm()) for x, _, _ in senders]
            tau = _quantile(dists, defence.clip_quantile)
            scale = [min(1.0, tau / max(d, 1e-12)) for d in dists]
        pull = torch.zeros_like(own)
        for (x, w, trust), c in zip(senders, scale):
            weight = w * trust if defence.trust_weighting else w
            pull = pull + weight * c * (x - own)
        return pull
    values = torch.stack([own] + [x for x, _, _ in senders])  # the node's own model always takes part
    ordered = values.sort(dim=0).values  # per coordinate
    k = values.shape[0]
    if aggregator == "median":
        centre = ordered[(k - 1) // 2]
    elif aggregator == "trimmed_mean":
        cut = math.floor(defence.trim_fraction * k)
        centre = ordered[cut : k - cut].mean(0)
    else:
        raise ValueError(f"unknown aggregator {aggregator!r}")
    return centre - own


def node_scores(own: torch.Tensor, neighbour_models: list[torch.Tensor | None]) -> list[float]:
    """Receiver's score of each neighbour slot: 1 up to the median distance (the same model at distance 0
    included), (median distance / distance)² beyond it, 0 if unusable."""
    dists = [None if x is None else float((x - own).norm()) for x in neighbour_models]
    usable = [d for d in dists if d is not None]
    if not usable:
        return [0.0] * len(dists)
    median = _lower_median(usable)
    return [0.0 if d is None else 1.0 if d <= median else (median / d) ** 2 for d in dists]


# ------------------------------------------------------------------------------------------ round
def reference_transition(
    config: EnvConfig, scenario: Scenario, state: SimState, action: torch.Tensor, noise: Any
) -> tuple[SimState, dict[str, Any]]:
    """One round, node by node. ``noise`` is a ``RoundRandomness`` (its ``batches`` are positions inside
    each node's shard; ``attack_on`` / ``attack_noise`` / ``nonfinite_draw`` drive the attackers).
    Returns the new state and per-node lists and fleet figures of what happened."""
    if scenario.n_envs != 1:
        raise ValueError("the reference steps one environment at a time")
    n = scenario.n_nodes
    t = int(state.round[0])
    eff = config.energy.charge_efficiency
    requested = [int(a) for a in action.tolist()]
    for a in requested:
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action code {a} outside 0..{N_ACTIONS - 1}")

    # 1. energy: decide who drops out, then what every awake node receives, then settle every node
    loads = [0.0] * n if noise.background_load is None else [float(u) for u in noise.background_load]
    carried, dropped, costs, cut_off = [], [], [], {}
    for i in range(n):
        battery = float(state.battery_wh[i])
        capacity = float(scenario.capacity_wh[i])
        harvest = float(scenario.harvest_wh[i, t])
        grid = bool(scenario.grid_connected[i])
        wanted = node_action_cost(config, scenario, i, requested[i], loads[i])
        online = bool(scenario.available[i, t])
        if requested[i] == IDLE or (online and node_can_afford(config, battery, capacity, harvest, grid,
                                                               wanted["total_wh"])):
            carried.append(requested[i])
            dropped.append(False)
            cost = wanted
        else:
            carried.append(IDLE)
            dropped.append(True)
            cost = node_action_cost(config, scenario, i, IDLE, loads[i])
            above_reserve = max(battery - config.energy.battery_min_soc * capacity, 0.0)
            if config.energy.overdraw == "brown_out" and online and harvest + above_reserve > 0.0:
                cut_off[i] = harvest + above_reserve  # started, drew all it had, and was cut off
        costs.append(cost)

    trained = [a >= 1 for a in carried]
    sent = [a >= 2 for a in carried]
    awake = [trained[i] or sent[i] for i in range(n)]

    links: list[list[int]] = [[] for _ in range(n)]  # undirected: each edge appears in both directions
    for src, dst in zip(scenario.edge_src.tolist(), scenario.edge_dst.tolist()):
        links[dst].append(src)
    bytes_received, receive_wh, internet_bytes = [], [], []
    for i in range(n):
        bytes_in = sum(costs[j]["bytes_sent"] for j in links[i] if sent[j]) if awake[i] else 0.0
        bytes_received.append(bytes_in)
        receive_wh.append(node_receive_cost(scenario, i, bytes_in))
        reached = sum(1 for j in links[i] if awake[j] and link_crosses_internet(config, scenario, i, j))
        internet_bytes.append(costs[i]["bytes_sent"] * reached)
    flows = []
    for i in range(n):
        demand = cut_off[i] if i in cut_off else costs[i]["total_wh"] + receive_wh[i]
        flows.append(settle_node(demand, float(state.battery_wh[i]),
                                 float(scenario.capacity_wh[i]), float(scenario.harvest_wh[i, t]),
                                 bool(scenario.grid_connected[i]), float(scenario.charge_limit_wh[i]), eff,
                                 config.energy.battery_min_soc))

    # who attacks this round, and how (attackers are hidden from the agent, not from the reference)
    honest = [bool(h) for h in scenario.honest.tolist()]
    kinds = [None if h else ATTACK_KINDS[int(k)] for h, k in zip(honest, scenario.attack_kind.tolist())]
    attacking = [False] * n
    if noise.attack_on is not None and t >= config.attack.start_round:
        attacking = [not honest[i] and bool(noise.attack_on[i]) for i in range(n)]
    poisoner = [attacking[i] and kinds[i] in MODEL_POISONING for i in range(n)]

    # 2. local SGD on every trainer, one node at a time
    #    (active free riders skip it, active label flippers learn 9 - y)
    params = [state.params[i].detach().clone() for i in range(n)]
    local_loss = [float(state.local_loss[i]) for i in range(n)]
    for i in range(n):
        if not trained[i] or (attacking[i] and kinds[i] == "free_rider"):
            continue
        xs, ys = [], []
        for step in range(noise.batches.shape[1]):
            sample_ids = scenario.shards[i][noise.batches[i, step]]
            xs.append(scenario.train_x[sample_ids])
            labels = scenario.train_y[sample_ids]
            ys.append(N_CLASSES - 1 - labels if attacking[i] and kinds[i] == "label_flip" else labels)
        params[i], local_loss[i] = node_sgd(config, params[i], xs, ys)

    # 3. CHOCO: senders add their compressed difference to their public copy (label flippers too: they
    #    broadcast their poisoned model honestly); an active free rider's copy stays stale and an active
    #    model poisoner's copy becomes its crafted message
    #    (poisoners craft after every honest copy of the round is out: a rushing attacker sends last)
    public = [state.public[i].detach().clone() for i in range(n)]
    n_attackers = honest.count(False)
    for i in range(n):
        free_riding = attacking[i] and kinds[i] == "free_rider"
        if sent[i] and not free_riding and not poisoner[i]:
            if COMPRESSION_LEVELS[carried[i] - 2] == "full":  # the model itself: a copy that went
                public[i] = params[i].clone()                   # non-finite earlier is replaced, not added to
            else:
                public[i] = public[i] + compress_row(params[i] - public[i], carried[i] - 2)

    # neighbour lists from the edge list; trust slots from the neighbour table
    incoming: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    edges = zip(scenario.edge_src.tolist(), scenario.edge_dst.tolist(), scenario.edge_weight.tolist())
    for src, dst, w in edges:
        incoming[dst].append((src, w))

    honest_copies = list(public)  # what the attackers hear before any crafted message goes out
    for i in range(n):
        if not (sent[i] and poisoner[i]):
            continue
        # in double, as the batched round takes these statistics
        neighbour_models = [honest_copies[j].double() for j, _ in incoming[i] if honest[j]]
        colluders = sum(1 for j, _ in incoming[i] if not honest[j])
        targets = [(honest_copies[j].double(), [(honest_copies[k].double(), w) for k, w in incoming[j] if honest[k]],
                    sum(w for k, w in incoming[j] if not honest[k])) for j, _ in incoming[i] if honest[j]]
        noise_row = None if noise.attack_noise is None else noise.attack_noise[i].double()
        nonfinite = float(noise.nonfinite_draw[i]) < config.attack.nonfinite_probability
        public[i] = crafted_message(config, kinds[i], params[i].double(), neighbour_models, colluders, noise_row,
                                    nonfinite, targets).to(params[i].dtype)
    usable = [bool(torch.isfinite(public[i]).all()) for i in range(n)]
    slots: list[dict[int, int]] = [{} for _ in range(n)]
    for i in range(n):
        for slot, (j, valid) in enumerate(zip(scenario.neighbours[i].tolist(),
                                              scenario.neighbour_valid[i].tolist())):
            if valid:
                slots[i][j] = slot

    # ... every awake node (not an active poisoner) moves towards the public copies its neighbours
    #     broadcast this round (finite ones only)
    gamma = config.learning.gossip_step
    moves, clean_moves = [], []
    for i in range(n):
        if not awake[i] or poisoner[i]:
            moves.append(torch.zeros_like(params[i]))
            clean_moves.append(torch.zeros_like(params[i]))
            continue
        senders = [(public[j], w, float(state.trust[i, slots[i][j]])) for j, w in incoming[i]
                   if usable[j] and sent[j]]
        honest_only = [(public[j], w, float(state.trust[i, slots[i][j]])) for j, w in incoming[i]
                       if usable[j] and sent[j] and honest[j]]
        moves.append(gamma * node_pull(config, params[i], senders))
        clean_moves.append(gamma * node_pull(config, params[i], honest_only))
    influence = 0.0
    if t >= config.attack.start_round and n_attackers:
        scale = sum(float(params[i].norm()) for i in range(n) if honest[i]) / (n - n_attackers)
        gap = sum(float((moves[i] - clean_moves[i]).norm()) for i in range(n) if honest[i])
        gap /= n - n_attackers
        influence = gap / max(scale, 1e-8)

    # trust: a receiver that is awake rescores every neighbour that broadcast, against its pre-mixing model
    memory = config.defence.trust_memory
    trust = state.trust.detach().clone()
    for i in range(n):
        slot_models: list[torch.Tensor | None] = [None] * trust.shape[1]
        for j, slot in slots[i].items():
            slot_models[slot] = public[j] if usable[j] and sent[j] else None
        scores = node_scores(params[i], slot_models)
        for j, slot in slots[i].items():
            if awake[i] and sent[j]:
                trust[i, slot] = memory * float(state.trust[i, slot]) + (1 - memory) * scores[slot]
    params = [(params[i] + moves[i]).clamp(-PARAM_LIMIT, PARAM_LIMIT) for i in range(n)]

    # 4. measure each node's model on the evaluation split
    eval_x = scenario.test_x[scenario.eval_index]
    eval_y = scenario.test_y[scenario.eval_index]
    node_accuracy = []
    for i in range(n):
        with torch.no_grad():
            predicted = node_logits(config, params[i], eval_x).argmax(-1)
        node_accuracy.append(float((predicted == eval_y).float().mean()))
    honest_acc = [a for a, h in zip(node_accuracy, honest) if h]
    accuracy = sum(honest_acc) / len(honest_acc)
    honest_final = [params[i] for i in range(n) if honest[i]]
    centre = sum(honest_final) / len(honest_final)
    consensus = sum(float(((p - centre) ** 2).sum()) for p in honest_final) / len(honest_final)

    carbon_grid = []
    carbon_network: dict[str, list[float]] = {accounting: [] for accounting in scenario.network_kwh_per_byte}
    for i in range(n):
        g_per_wh = float(scenario.carbon_g_per_kwh[i, t]) / 1000.0
        carbon_grid.append(flows[i]["grid"] * g_per_wh)
        for accounting, kwh_per_byte in scenario.network_kwh_per_byte.items():
            carbon_network[accounting].append(internet_bytes[i] * kwh_per_byte * 1000.0 * g_per_wh)

    device = state.params.device
    f32 = dict(dtype=torch.float32, device=device)
    new_state = state.replace(
        params=torch.stack(params),
        public=torch.stack(public),
        battery_wh=torch.tensor([f["battery_after"] for f in flows], **f32),
        round=state.round + 1,
        last_action=torch.tensor(carried, dtype=torch.long, device=device),
        staleness=torch.tensor([0.0 if sent[i] else float(state.staleness[i]) + 1.0 for i in range(n)],
                               **f32),
        local_loss=torch.tensor(local_loss, **f32),
        node_accuracy=torch.tensor(node_accuracy, **f32),
        accuracy=torch.tensor([accuracy], dtype=torch.float32, device=device),
        consensus_distance=torch.tensor([consensus], dtype=torch.float32, device=device),
        dropped=torch.tensor(dropped, dtype=torch.bool, device=device),
        trust=trust,
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
        "bytes_received": bytes_received,
        "receive_wh": receive_wh,
        "internet_bytes": internet_bytes,
        "carbon_grid_g": carbon_grid,
        "carbon_backbone_g": carbon_network[config.energy.network_accounting],
        "carbon_backbone_marginal_g": carbon_network["marginal"],
        "carbon_backbone_attributional_g": carbon_network["attributional"],
        "accuracy": accuracy,
        "previous_accuracy": float(state.accuracy[0]),
        "consensus_distance": consensus,
        "malicious_participants": sum(1 for i in range(n) if awake[i] and not honest[i]),
        "attack_influence": influence,
    }
    for key in flows[0]:
        outcome[key] = [f[key] for f in flows]
    return new_state, outcome
