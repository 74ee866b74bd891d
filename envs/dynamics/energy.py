"""Energy model: what each action costs a node, and where the energy of a round comes from.

Costs per round (all Wh), for a node with device profile D and link L, of the workload W
(``envs/workloads.py``):
    compute = D.busy_w · t_train,           t_train = local_steps · batch / samples_per_s,
                                            samples_per_s = D.train_gflop_s / W.train_gflop_per_sample
    radio   = bits · L.up J/bit + L.tail_s · L.tail_w (+ D.idle_w while sending),  bits = 8 · W's message bytes
    sleep   = D.sleep_w · (round length - time awake)
    receive = bits_in · L.down J/bit + L.tail_s · L.tail_w (if anything arrived) + D.idle_w while receiving,
              bits_in = 8 · the bytes this round's sending neighbours broadcast, for an awake node
The action's cost is known before the round (the action mask and drop-outs use it); what a node receives
depends on its neighbours and is added to its demand when the round is settled.
Supply order: harvest first, then battery down to its reserve (``battery_min_soc`` of capacity, the
battery-management cut-off: the cell is never drawn below it), then grid (grid-connected nodes only). Sleep
draw is charged every round to every node, whatever it does. Demand that no source covers is ``unmet``: an
off-grid node whose harvest and battery above the reserve cannot pay even its sleep draw (or what it
receives) browns out for the round. Surplus harvest charges the battery, limited by the charge rate and the
free capacity; charging loses (1 - efficiency); the rest is spilled. Per node and round, receiving included:

    harvested + grid = consumed + Δstored + spilled + charge_loss          (tests/test_energy.py)

The network beyond the access links (``network_bytes``) is charged per link that crosses the internet,
under the configured accounting (``envs/devices.py``); links within radio range carry no such energy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from greengossip.envs.workloads import COMPRESSION_LEVELS

IDLE, TRAIN = 0, 1
N_ACTIONS = 2 + len(COMPRESSION_LEVELS)  # idle, train only, train + broadcast at each level
ACTION_NAMES = ("idle", "train") + tuple(f"train+{name}" for name in COMPRESSION_LEVELS)


def decode_action(action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) action codes -> train (bool), send (bool), compression level (long, valid where send)."""
    train = action >= TRAIN
    send = action >= 2
    return train, send, (action - 2).clamp_min(0)


@dataclass(frozen=True)
class ActionCosts:
    """Per node and action, (N, K): energy by kind (Wh) and bytes put on the air."""

    compute_wh: torch.Tensor
    radio_wh: torch.Tensor
    base_wh: torch.Tensor  # sleep + awake-idle draw
    bytes_sent: torch.Tensor

    @functools.cached_property
    def total_wh(self) -> torch.Tensor:
        return self.compute_wh + self.radio_wh + self.base_wh

    @functools.cached_property
    def table(self) -> torch.Tensor:
        """(N, K, 5) compute, radio, base, total Wh and bytes: one gather reads a node's whole action."""
        return torch.stack([self.compute_wh, self.radio_wh, self.base_wh, self.total_wh, self.bytes_sent], 2)

    def of(self, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """compute, radio, base, total Wh and bytes (each (N,)) of each node's ``action`` (N,)."""
        index = action.view(-1, 1, 1).expand(-1, 1, 5)
        return self.table.gather(1, index).squeeze(1).unbind(1)


def action_costs(
    *, busy_w, idle_w, sleep_w, samples_per_s, joule_per_bit, uplink_bit_s, tail_j, tail_s,
    samples_per_round: int, level_bytes: tuple[float, ...], round_s: float,
) -> ActionCosts:
    """Cost table of every action for every node, computed once per scenario; ``level_bytes``: the bytes
    of one broadcast at each compression level (``Workload.bytes_per_level``)."""
    message = torch.tensor([0.0, 0.0, *level_bytes], dtype=busy_w.dtype, device=busy_w.device)
    trains = torch.tensor([0.0] + [1.0] * (N_ACTIONS - 1), device=busy_w.device)
    sends = (message > 0).to(busy_w.dtype)
    bytes_sent = message.expand(len(busy_w), -1)  # (N, K)
    bits = 8.0 * bytes_sent
    train_s = trains * (samples_per_round / samples_per_s).unsqueeze(1)
    send_s = bits / uplink_bit_s.unsqueeze(1) + sends * tail_s.unsqueeze(1)
    radio_j = bits * joule_per_bit.unsqueeze(1) + sends * tail_j.unsqueeze(1)
    awake_s = train_s + send_s
    base_j = idle_w.unsqueeze(1) * (bits / uplink_bit_s.unsqueeze(1)) + sleep_w.unsqueeze(1) * (
        round_s - awake_s
    ).clamp_min(0.0)
    return ActionCosts(
        compute_wh=busy_w.unsqueeze(1) * train_s / 3600.0,
        radio_wh=radio_j / 3600.0,
        base_wh=base_j / 3600.0,
        bytes_sent=bytes_sent,
    )


@dataclass(frozen=True)
class Reception:
    """What each node (N,) takes in during a round: bytes and the Wh its radio and device spend on them."""

    bytes_received: torch.Tensor
    receive_wh: torch.Tensor


def receive(bytes_sent: torch.Tensor, awake: torch.Tensor, neighbours: torch.Tensor,
            neighbour_valid: torch.Tensor, *, joule_per_bit, downlink_bit_s, idle_w, tail_j) -> Reception:
    """Every awake node receives what each of its neighbours broadcast this round (a sleeping node's radio
    is off: it neither pays nor mixes); ``neighbours`` (N, D) is the padded neighbour table."""
    incoming = torch.where(neighbour_valid, bytes_sent[neighbours], 0.0).sum(1)
    bytes_in = torch.where(awake, incoming, 0.0)
    bits = 8.0 * bytes_in
    joules = bits * (joule_per_bit + idle_w / downlink_bit_s) + torch.where(bytes_in > 0, tail_j, 0.0)
    return Reception(bytes_received=bytes_in, receive_wh=joules / 3600.0)


def network_bytes(bytes_sent: torch.Tensor, awake: torch.Tensor, neighbours: torch.Tensor,
                  internet_slot: torch.Tensor) -> torch.Tensor:
    """(N,) bytes each sender puts on links that cross the internet: its message once for every awake
    neighbour it reaches over such a link. ``internet_slot`` (N, D) marks those links in the neighbour
    table (the graph is undirected: a node's senders are also its receivers)."""
    reached = (internet_slot & awake[neighbours]).sum(1)
    return bytes_sent * reached


@dataclass(frozen=True)
class EnergyFlow:
    """One round's energy, per node (N,), Wh."""

    harvested: torch.Tensor
    from_harvest: torch.Tensor
    from_battery: torch.Tensor
    grid: torch.Tensor
    consumed: torch.Tensor
    stored_in: torch.Tensor  # energy that reached the cell
    charge_loss: torch.Tensor
    spilled: torch.Tensor
    unmet: torch.Tensor  # demand no source could cover (a browned-out node)
    battery_after: torch.Tensor


def available_for_actions(battery_wh, capacity_wh, harvest_wh, grid_connected, min_soc: float):
    """Wh a node may spend on an action this round: harvest + battery above the reserve (+∞ on grid)."""
    headroom = harvest_wh + (battery_wh - min_soc * capacity_wh).clamp_min(0.0)
    return torch.where(grid_connected, torch.full_like(headroom, float("inf")), headroom)


def settle_energy(
    demand_wh, battery_wh, capacity_wh, harvest_wh, grid_connected, charge_limit_wh, efficiency: float,
    min_soc: float = 0.0,
) -> EnergyFlow:
    """Meet each node's demand from harvest, battery above the reserve ``min_soc`` · capacity, and grid, in that
    order; store or spill the surplus."""
    from_harvest = torch.minimum(harvest_wh, demand_wh)
    rest = demand_wh - from_harvest
    above_reserve = (battery_wh - min_soc * capacity_wh).clamp_min(0.0)
    from_battery = torch.minimum(rest, above_reserve)
    rest = rest - from_battery
    grid = torch.where(grid_connected, rest, torch.zeros_like(rest))
    unmet = rest - grid
    surplus = harvest_wh - from_harvest
    battery_mid = battery_wh - from_battery
    charge_in = torch.minimum(surplus, torch.minimum(charge_limit_wh, (capacity_wh - battery_mid) / efficiency))
    charge_in = charge_in.clamp_min(0.0)
    stored_in = charge_in * efficiency
    return EnergyFlow(
        harvested=harvest_wh,
        from_harvest=from_harvest,
        from_battery=from_battery,
        grid=grid,
        consumed=demand_wh - unmet,
        stored_in=stored_in,
        charge_loss=charge_in - stored_in,
        spilled=surplus - charge_in,
        unmet=unmet,
        battery_after=(battery_mid + stored_in).clamp(max=capacity_wh),
    )
