"""One node of a deployment: its own part of the world and its round, played in its own process.

A node holds its shard, the evaluation split, its neighbour slots (with their mixing weights, which links
cross the internet and which neighbours are fellow attackers, as colluders know), its device's cost
table and traces, and its own model, public copy, battery and trust row. Its round is the simulator's
(``envs/simulator.py``, "Order inside a round") for one node, with the simulator's own pieces:
``energy.available_for_actions``, ``receive`` and ``settle_energy`` on one-node tensors, ``local_sgd``
on a batch of one, ``gossip.compress`` (through ``messages``), and the per-node aggregation, trust and
attack rules of ``envs/reference.py``, which ``tests/test_reference.py`` holds equal to the batched ones.
Its random numbers are the simulator's: the counter-based streams of ``draw_randomness``, keyed by the
episode, the round and the node's position in the fleet.

A round on the wire, between neighbours only (``torch.distributed`` point to point):
1. every node sends each neighbour a header: awake, broadcasting, the bytes the simulator charges for
   the broadcast, and what the message does to the receiver's copy (nothing, replace, add);
2. broadcasting nodes train, then send each neighbour the encoded message; an active model-poisoning
   attacker first waits for its honest neighbours' messages (a rushing attacker sends last) and sends its
   crafted model in full;
3. each node applies what it received to its copies of its neighbours' public models, a sleeping node
   too (the simulator's mailboxes: store and forward), then mixes and rescores its neighbours if awake.
Then it releases its telemetry for the coming round itself (``telemetry``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import attacks
from greengossip.envs.dynamics.energy import IDLE, available_for_actions, decode_action, receive, settle_energy
from greengossip.envs.dynamics.learning import accuracy_per_node, local_sgd
from greengossip.envs.numerics import saturate
from greengossip.envs.reference import crafted_message, node_pull, node_scores
from greengossip.envs.scenario import N_CLASSES, Scenario
from greengossip.envs.simulator import contention_wh, draw_randomness
from greengossip.envs.state import SimState, model_spec
from greengossip.training.deploy.messages import REPLACE, SILENT, ByteMeter, decode, encode, mode_of, payload_bytes
from greengossip.training.deploy.telemetry import ACCOUNT, RELEASED, OwnRelease

ENERGY_FIELDS = ("harvested", "from_harvest", "from_battery", "grid", "consumed", "stored_in", "charge_loss",
                 "spilled", "unmet", "battery_after")
# one node's report of a round, in this order, then its trust row, its model, its public copy and its
# release for the coming round (``telemetry``)
REPORT_FIELDS = ("action", "dropped", "trained", "sent", "compute_wh", "radio_wh", "base_wh", "bytes_sent",
                 "bytes_received", "receive_wh", "internet_bytes", *ENERGY_FIELDS, "local_loss", "node_accuracy",
                 "staleness", "malicious", "model_norm", "attack_shift", "payload_bytes_sent",
                 "payload_bytes_received", "oversize_bytes", "mailbox_bytes", "control_bytes", "train_cpu_s",
                 "round_wall_s")
HEADER_BYTES = 4 * 8  # four float64 header fields per neighbour and direction


@dataclass(frozen=True)
class FleetStreams:
    """What ``draw_randomness`` reads of a scenario: the episode's stream key and the fleet's shape."""

    stream_key: torch.Tensor
    nodes_per_env: int
    n_nodes: int
    shard_size: int
    all_honest: bool

    @classmethod
    def of(cls, scenario: Scenario) -> FleetStreams:
        return cls(scenario.stream_key.clone(), scenario.nodes_per_env, scenario.n_nodes, scenario.shard_size,
                   scenario.all_honest)


@dataclass(frozen=True)
class NodeView:
    """Node ``index``'s own part of the scenario."""

    index: int
    shard_x: torch.Tensor  # (S, 65) its training samples
    shard_y: torch.Tensor  # (S,)
    eval_x: torch.Tensor  # (M_eval, 65) the evaluation split every node measures on
    eval_y: torch.Tensor
    slots: tuple[int, ...]  # positions of its valid neighbour slots in the trust row
    neighbours: tuple[int, ...]  # the neighbour in each valid slot
    weights: tuple[float, ...]  # w_ij of each valid slot
    internet: tuple[bool, ...]  # the slot's link crosses the internet
    honest_neighbour: tuple[bool, ...]  # attackers collude; otherwise read only to measure influence
    trust_width: int
    honest: bool
    kind: str | None  # attack kind, None for an honest node
    compute_wh: torch.Tensor  # (K,) cost of each action
    radio_wh: torch.Tensor
    base_wh: torch.Tensor
    total_wh: torch.Tensor
    bytes_sent: torch.Tensor
    harvest_wh: torch.Tensor  # (T,)
    available: torch.Tensor  # (T,) bool
    capacity_wh: torch.Tensor  # (1,)
    charge_limit_wh: torch.Tensor
    grid_connected: torch.Tensor
    idle_w: torch.Tensor
    tail_j: torch.Tensor
    downlink_joule_per_bit: torch.Tensor
    downlink_bit_s: torch.Tensor
    streams: FleetStreams

    @classmethod
    def of(cls, scenario: Scenario, index: int) -> NodeView:
        one = slice(index, index + 1)
        valid = scenario.neighbour_valid[index]
        kind = int(scenario.attack_kind[index])
        costs = scenario.costs
        shard = scenario.shards[index]
        return cls(
            index=index,
            shard_x=scenario.train_x[shard].clone(), shard_y=scenario.train_y[shard].clone(),
            eval_x=scenario.eval_x.clone(), eval_y=scenario.eval_y.clone(),
            slots=tuple(valid.nonzero().squeeze(1).tolist()),
            neighbours=tuple(scenario.neighbours[index][valid].tolist()),
            weights=tuple(scenario.neighbour_weight[index][valid].tolist()),
            internet=tuple(scenario.internet_slot[index][valid].tolist()),
            honest_neighbour=tuple(scenario.honest[scenario.neighbours[index][valid]].tolist()),
            trust_width=scenario.neighbours.shape[1],
            honest=bool(scenario.honest[index]),
            kind=None if kind == attacks.HONEST else attacks.ATTACK_KINDS[kind],
            compute_wh=costs.compute_wh[index].clone(), radio_wh=costs.radio_wh[index].clone(),
            base_wh=costs.base_wh[index].clone(), total_wh=costs.total_wh[index].clone(),
            bytes_sent=costs.bytes_sent[index].clone(),
            harvest_wh=scenario.harvest_wh[index].clone(), available=scenario.available[index].clone(),
            capacity_wh=scenario.capacity_wh[one].clone(), charge_limit_wh=scenario.charge_limit_wh[one].clone(),
            grid_connected=scenario.grid_connected[one].clone(), idle_w=scenario.idle_w[one].clone(),
            tail_j=scenario.tail_j[one].clone(),
            downlink_joule_per_bit=scenario.downlink_joule_per_bit[one].clone(),
            downlink_bit_s=scenario.downlink_bit_s[one].clone(),
            streams=FleetStreams.of(scenario),
        )


class Peers:
    """Point-to-point messages with the neighbours over the default process group (node j is rank j + 1),
    metered; ``on_wait`` marks the node as waiting on the network (how a hang is told from a slow peer)."""

    def __init__(self, neighbours: tuple[int, ...], meter: ByteMeter, on_wait=None):
        self.ranks = [j + 1 for j in neighbours]
        self.meter = meter
        self.on_wait = on_wait or (lambda waiting: None)

    def wait(self, works) -> None:
        self.on_wait(True)
        for work in works:
            work.wait()
        self.on_wait(False)

    def exchange_headers(self, header: torch.Tensor, tag: int) -> list[torch.Tensor]:
        received = [torch.empty_like(header) for _ in self.ranks]
        works = [dist.isend(header, rank, tag=tag) for rank in self.ranks]
        works += [dist.irecv(buffer, rank, tag=tag) for buffer, rank in zip(received, self.ranks)]
        self.wait(works)
        self.meter.control += 2 * HEADER_BYTES * len(self.ranks)
        return received


@dataclass
class NodeState:
    """What node ``index`` keeps between rounds."""

    params: torch.Tensor  # (P,)
    public: torch.Tensor  # (P,) its public copy, as its neighbours hold it
    copies: list[torch.Tensor]  # its copies of each valid neighbour's public model
    battery_wh: torch.Tensor  # (1,)
    trust: torch.Tensor  # (D_max,) its scores of the senders in its slots
    staleness: float
    local_loss: float

    @classmethod
    def of(cls, state: SimState, view: NodeView) -> NodeState:
        i = view.index
        return cls(params=state.params[i].clone(), public=state.public[i].clone(),
                   copies=[state.public[j].clone() for j in view.neighbours],
                   battery_wh=state.battery_wh[i:i + 1].clone(), trust=state.trust[i].clone(),
                   staleness=float(state.staleness[i]), local_loss=float(state.local_loss[i]))


class Node:
    """Node ``view.index`` playing rounds with its neighbours."""

    def __init__(self, config: EnvConfig, view: NodeView, state: NodeState, release: OwnRelease, on_wait=None):
        self.config = config
        self.view = view
        self.state = state
        self.release = release
        self.spec = model_spec(config)
        self.on_wait = on_wait

    def play(self, requested: int, round_index: int) -> torch.Tensor:
        """Play round ``round_index`` with the scheduler's ``requested`` action; returns the report
        (``REPORT_FIELDS``, then the trust row, the model, the public copy and the node's release for the
        coming round) as one float64 row."""
        started = time.perf_counter()
        config, view, state = self.config, self.view, self.state
        meter = ByteMeter()
        peers = Peers(view.neighbours, meter, self.on_wait)
        i, t = view.index, round_index
        draws = draw_randomness(config, view.streams, torch.tensor([t]))
        load = None if draws.background_load is None else draws.background_load[i:i + 1]

        # 1. energy: the node cannot afford its action on its true battery (or is offline): it sleeps
        wanted = torch.tensor([requested])
        total_wh = view.total_wh[wanted]
        if load is not None:
            total_wh = total_wh + contention_wh(view.compute_wh[wanted], load)
        harvest = view.harvest_wh[t:t + 1]
        budget = available_for_actions(state.battery_wh, view.capacity_wh, harvest, view.grid_connected,
                                       config.energy.battery_min_soc)
        idle = requested == IDLE
        can_afford = bool(total_wh <= budget) and bool(view.available[t]) or idle
        action = torch.tensor([requested if can_afford else IDLE])
        trains, sends, levels = decode_action(action)
        trained, sent, level = bool(trains), bool(sends), int(levels)
        compute_wh, radio_wh, base_wh, total_wh, bytes_sent = (
            column[action] for column in (view.compute_wh, view.radio_wh, view.base_wh, view.total_wh,
                                          view.bytes_sent))
        if load is not None:
            contention = contention_wh(compute_wh, load)
            compute_wh, total_wh = compute_wh + contention, total_wh + contention
        awake = trained or sent

        attacking = (draws.attack_on is not None and bool(draws.attack_on[i]) and not view.honest
                     and t >= config.attack.start_round)
        free_riding = attacking and view.kind == "free_rider"
        flipping = attacking and view.kind == "label_flip"
        # an active model poisoner keeps its own model out of the consensus step, broadcasting or not
        poisoner = attacking and view.kind in attacks.MODEL_POISONING
        poisoning = poisoner and sent
        mode = SILENT if not sent else REPLACE if poisoning else mode_of(level)
        header = torch.tensor([float(awake), float(sent), float(bytes_sent), float(mode)], dtype=torch.float64)
        headers = peers.exchange_headers(header, tag=2 * t)
        their_awake = [bool(h[0]) for h in headers]
        their_sent = [bool(h[1]) for h in headers]
        their_bytes = torch.tensor([float(h[2]) if s else 0.0 for h, s in zip(headers, their_sent)])

        # the round's energy, what it receives included, as the simulator settles it
        d = len(view.neighbours)
        reception = receive(their_bytes, torch.tensor([awake]), torch.arange(d).view(1, d),
                            torch.ones(1, d, dtype=torch.bool), joule_per_bit=view.downlink_joule_per_bit,
                            downlink_bit_s=view.downlink_bit_s, idle_w=view.idle_w, tail_j=view.tail_j)
        flow = settle_energy(total_wh + reception.receive_wh, state.battery_wh, view.capacity_wh, harvest,
                             view.grid_connected, view.charge_limit_wh, config.energy.charge_efficiency,
                             config.energy.battery_min_soc)
        reached = sum(1 for a, crosses in zip(their_awake, view.internet) if a and crosses)
        internet_bytes = float(bytes_sent) * reached

        # 2. local SGD (an active free rider skips it, an active label flipper learns 9 - y)
        cpu_started = time.process_time()
        params = state.params
        if trained and not free_riding:
            positions = draws.batches[i].unsqueeze(0)  # (1, steps, batch) places in its own shard
            labels = view.shard_y[positions]
            if flipping:
                labels = N_CLASSES - 1 - labels
            new_params, loss = local_sgd(self.spec, params.unsqueeze(0), view.shard_x, positions, labels,
                                         config.learning.learning_rate)
            params, state.local_loss = new_params[0], float(loss[0])
        train_cpu_s = time.process_time() - cpu_started

        # 3. messages: honest ones first; an active poisoner crafts from what its honest neighbours sent
        n_params = params.numel()
        modes = [int(h[3]) for h in headers]
        buffers = [torch.empty(payload_bytes(m, n_params), dtype=torch.uint8) for m in modes]
        receiving = [dist.irecv(buffer, j + 1, tag=2 * t + 1)
                     for buffer, j, m in zip(buffers, view.neighbours, modes) if m != SILENT]
        from_rank = [k for k, m in enumerate(modes) if m != SILENT]
        public, payload = state.public, None
        if sent and not poisoning:
            if free_riding:  # its copy stays stale: the message changes nothing
                payload = encode(mode, public if mode == REPLACE else torch.zeros_like(public))
            else:
                payload = encode(mode, params if mode == REPLACE else params - public)
                public = params.clone() if mode == REPLACE else public + decode(mode, payload, n_params)
        sending = [] if payload is None else [dist.isend(payload, j + 1, tag=2 * t + 1) for j in view.neighbours]
        copies = list(state.copies)
        if poisoning:
            honest_first = [w for w, k in zip(receiving, from_rank) if view.honest_neighbour[k]]
            peers.wait(honest_first)
            self._apply(copies, buffers, modes, from_rank, only_honest=True)
            public = self._craft(params, copies, draws, i)
            payload = encode(REPLACE, public)
            sending = [dist.isend(payload, j + 1, tag=2 * t + 1) for j in view.neighbours]
            peers.wait([w for w, k in zip(receiving, from_rank) if not view.honest_neighbour[k]] + sending)
            self._apply(copies, buffers, modes, from_rank, only_honest=False)
        else:
            peers.wait(receiving + sending)
            self._apply(copies, buffers, modes, from_rank, only_honest=None)
        if payload is not None:
            meter.sent += payload.numel() * d
        arrived = sum(buffers[k].numel() for k in from_rank)
        # bytes beyond what the simulator charges: crafted models sent in full at a compressed level
        oversize = sum(buffers[k].numel() - round(float(their_bytes[k])) for k in from_rank)
        if awake:
            meter.received += arrived
            meter.oversize += oversize
        else:
            meter.mailbox += arrived

        # 4. mixing and trust: an awake node (not an active poisoner) moves towards the finite copies its
        # neighbours broadcast this round, and rescores those neighbours against its model before mixing
        usable = [their_sent[k] and bool(torch.isfinite(copies[k]).all()) for k in range(d)]
        trust = state.trust
        model_norm, attack_shift = float(params.norm()), 0.0
        if awake:
            heard = [k for k in range(d) if usable[k]]
            senders = [(copies[k], view.weights[k], float(trust[view.slots[k]])) for k in heard]
            slot_models = [None] * view.trust_width
            for k in range(d):
                if usable[k]:
                    slot_models[view.slots[k]] = copies[k]
            scores = node_scores(params, slot_models)
            memory = config.defence.trust_memory
            trust = trust.clone()
            for k in range(d):
                if their_sent[k]:
                    slot = view.slots[k]
                    trust[slot] = memory * float(state.trust[slot]) + (1 - memory) * scores[slot]
            if not poisoner:
                pull = node_pull(config, params, senders)
                if not all(view.honest_neighbour):  # measured for the attackers' influence, as the simulator does
                    clean = node_pull(config, params, [sender for k, sender in zip(heard, senders)
                                                       if view.honest_neighbour[k]])
                    attack_shift = float((config.learning.gossip_step * (pull - clean)).norm())
                params = saturate(params + config.learning.gossip_step * pull)

        state.params, state.public, state.copies, state.trust = params, public, copies, trust
        state.battery_wh = flow.battery_after
        state.staleness = 0.0 if sent else state.staleness + 1.0
        accuracy = float(accuracy_per_node(self.spec, params.unsqueeze(0), view.eval_x, view.eval_y)[0])
        figures = {
            "action": float(action), "dropped": float(not can_afford), "trained": float(trained),
            "sent": float(sent), "compute_wh": float(compute_wh), "radio_wh": float(radio_wh),
            "base_wh": float(base_wh), "bytes_sent": float(bytes_sent),
            "bytes_received": float(reception.bytes_received), "receive_wh": float(reception.receive_wh),
            "internet_bytes": internet_bytes,
            **{name: float(getattr(flow, name)) for name in ENERGY_FIELDS},
            "local_loss": state.local_loss, "node_accuracy": accuracy, "staleness": state.staleness,
            "malicious": float(awake and not view.honest), "model_norm": model_norm, "attack_shift": attack_shift,
            "payload_bytes_sent": float(meter.sent), "payload_bytes_received": float(meter.received),
            "oversize_bytes": float(meter.oversize), "mailbox_bytes": float(meter.mailbox),
            "control_bytes": float(meter.control),
            "train_cpu_s": train_cpu_s, "round_wall_s": time.perf_counter() - started,
        }
        return torch.cat([torch.tensor([figures[name] for name in REPORT_FIELDS], dtype=torch.float64),
                          trust.double(), params.double(), public.double(),
                          self.release.after_round(state.battery_wh, int(action), requested)])

    def _apply(self, copies: list[torch.Tensor], buffers: list[torch.Tensor], modes: list[int], from_rank: list[int],
               only_honest: bool | None) -> None:
        """Apply the received messages to the copies of the senders' public models; ``only_honest``: True
        for the honest neighbours' messages only, False for the others only, None for all."""
        n_params = self.state.params.numel()
        for k in from_rank:
            honest = self.view.honest_neighbour[k]
            if only_honest is not None and honest != only_honest:
                continue
            message = decode(modes[k], buffers[k], n_params)
            copies[k] = message if modes[k] == REPLACE else copies[k] + message

    def _craft(self, params: torch.Tensor, copies: list[torch.Tensor], draws, i: int) -> torch.Tensor:
        """An active model-poisoning attacker's message, from its honest neighbours' copies (in double, as
        the simulator takes these statistics)."""
        view, config = self.view, self.config
        honest_models = [copy.double() for copy, honest in zip(copies, view.honest_neighbour) if honest]
        colluders = sum(1 for honest in view.honest_neighbour if not honest)
        noise_row = None if draws.attack_noise is None else draws.attack_noise[i].double()
        nonfinite = float(draws.nonfinite_draw[i]) < config.attack.nonfinite_probability
        return crafted_message(config, view.kind, params.double(), honest_models, colluders, noise_row, nonfinite,
                               targets=[]).to(params.dtype)


def report_width(config: EnvConfig, trust_width: int) -> int:
    return len(REPORT_FIELDS) + trust_width + 2 * model_spec(config).n_params + len(RELEASED) + len(ACCOUNT)
