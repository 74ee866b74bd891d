"""What the scheduler sees: per-node features, global features, the action mask and (optionally) the graph.

Everything here is derived from the simulator state and the scenario; nothing reveals which nodes are
attackers (accuracy in the global features is the mean over all nodes, not over honest ones).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics.buffers import difference
from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.scenario import Scenario
from greengossip.envs.state import SimState, at_round, consensus_distance, per_env, time_index

# Staleness is observed in units of this many rounds (4 hours of 15-minute rounds), capped at 1: fine
# enough to tell 1 from 2 rounds of silence, which a scale of max_rounds (192) all but hides.
STALENESS_HORIZON = 16

# name, low, high, meaning (unit)
NODE_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    ("battery_soc", 0.0, 1.0, "stored energy / capacity"),
    ("harvest_now", 0.0, 10.0, "this round's harvest in units of the node's full-round cost (clipped)"),
    ("harvest_forecast", 0.0, 10.0, "mean harvest over the next forecast_rounds, same unit"),
    ("carbon_now", 0.0, 2.0, "grid intensity now, kgCO2e/kWh"),
    ("carbon_forecast", 0.0, 2.0, "mean grid intensity over the next forecast_rounds, kgCO2e/kWh"),
    ("grid_connected", 0.0, 1.0, "1 if the node may draw from the grid"),
    ("trust", 0.0, 1.0, "neighbours' mean trust in this node (1 = fully trusted)"),
    ("staleness", 0.0, 1.0, f"rounds since the node last broadcast / {STALENESS_HORIZON} (capped at 1)"),
    ("local_loss", 0.0, 10.0, "last local training loss (cross-entropy, clipped)"),
    ("degree", 0.0, 1.0, "neighbours / most neighbours of any node"),
    ("last_action", 0.0, 1.0, "action carried out last round / (K - 1)"),
    ("dropped", 0.0, 1.0, "1 if the node could not afford last round's action (0 under private telemetry: "
     "released only as the fleet's dropped_share)"),
    ("round_cost", 0.0, 1.0, "energy of a full round (train + full broadcast) / capacity"),
    ("compute_time", 0.0, 1.0, "training time per round / round length (device speed)"),
    ("load", 0.0, 1.0, "share of the CPU the node's other work takes this round (private; slows training)"),
    ("model_lag", 0.0, 2.0, "distance from the node's model to the copy its neighbours hold (its public, "
     "error-feedback copy) / the model's norm (clipped): what compressed or skipped broadcasts still owe"),
    ("internet_links", 0.0, 1.0, "neighbours reached over the internet (links to other regions; every link on the "
     "non-geographic graphs) / most neighbours of any node: the copies of each broadcast the backbone carries"),
)
GLOBAL_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    ("hour_sin", -1.0, 1.0, "sin(2π · UTC hour / 24)"),
    ("hour_cos", -1.0, 1.0, "cos(2π · UTC hour / 24)"),
    ("progress", 0.0, 1.0, "round / max_rounds"),
    ("accuracy", 0.0, 1.0, "mean test accuracy over all nodes"),
    ("target_gap", -1.0, 1.0, "target_accuracy - accuracy"),
    ("consensus_distance", 0.0, 10.0, "mean squared distance of models to their mean (clipped)"),
    ("dropped_share", 0.0, 1.0, "share of nodes that dropped out last round"),
    ("awake_share", 0.0, 1.0, "share of nodes that trained or sent last round"),
)
NODE_INDEX = {name: i for i, (name, *_rest) in enumerate(NODE_FEATURES)}


@functools.cache
def _numpy_bounds(features: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Low and high of each feature, built once."""
    return np.array([f[1] for f in features], dtype=np.float32), np.array([f[2] for f in features], dtype=np.float32)


def observation_space(config: EnvConfig) -> spaces.Dict:
    n = config.n_nodes
    node_low = np.array([f[1] for f in NODE_FEATURES], dtype=np.float32)
    node_high = np.array([f[2] for f in NODE_FEATURES], dtype=np.float32)
    parts = {
        "nodes": spaces.Box(np.tile(node_low, (n, 1)), np.tile(node_high, (n, 1)), dtype=np.float32),
        "global": spaces.Box(
            np.array([f[1] for f in GLOBAL_FEATURES], dtype=np.float32),
            np.array([f[2] for f in GLOBAL_FEATURES], dtype=np.float32),
            dtype=np.float32,
        ),
        "action_mask": spaces.Box(0.0, 1.0, (n, N_ACTIONS), dtype=np.float32),
    }
    if config.observation.adjacency:
        parts["adjacency"] = spaces.Box(0.0, 1.0, (n, n), dtype=np.float32)
    return spaces.Dict(parts)


PER_NODE_KEYS = ("nodes", "action_mask")  # observation keys with one row per node


def spaces_for_nodes(
    observation_space: spaces.Dict, action_space: spaces.MultiDiscrete, n_nodes: int
) -> tuple[spaces.Dict, spaces.MultiDiscrete]:
    """The GreenGossip observation and action spaces of the same scenario family with ``n_nodes`` nodes.

    Per-node bounds are the same for every node, so the first row of each per-node Box is tiled.
    """
    parts: dict[str, spaces.Space] = {}
    for key, box in observation_space.spaces.items():
        if key in PER_NODE_KEYS:
            parts[key] = spaces.Box(
                np.tile(box.low[:1], (n_nodes, 1)), np.tile(box.high[:1], (n_nodes, 1)), dtype=box.dtype
            )
        elif key == "adjacency":
            parts[key] = spaces.Box(0.0, 1.0, (n_nodes, n_nodes), dtype=box.dtype)
        else:
            parts[key] = box
    n_actions = int(action_space.nvec[0])
    return spaces.Dict(parts), spaces.MultiDiscrete(np.full(n_nodes, n_actions, dtype=np.int64))


def padded_observation(observation: dict[str, np.ndarray], n_nodes: int, batched: bool = True) -> dict[str, np.ndarray]:
    """``observation`` of a fleet of N <= ``n_nodes`` nodes with rows of zeros appended up to ``n_nodes``:
    an absent node has no features and no allowed action (an all-zero ``action_mask`` row, which no real
    node has, since idle is always allowed). ``batched``: the arrays have a leading environment axis."""
    axis = 1 if batched else 0
    out = {}
    for key, value in observation.items():
        missing = n_nodes - value.shape[axis] if key in PER_NODE_KEYS or key == "adjacency" else 0
        if missing < 0:
            raise ValueError(f"a fleet of {value.shape[axis]} nodes does not fit an observation padded to {n_nodes}")
        if missing == 0:
            out[key] = value
            continue
        widths = [(0, 0)] * value.ndim
        widths[axis] = (0, missing)
        if key == "adjacency":
            widths[axis + 1] = (0, missing)
        out[key] = np.pad(value, widths)
    return out


def adjacency_matrix(scenario: Scenario) -> np.ndarray:
    """(B, N, N) 0/1 adjacency of each environment's graph."""
    n = scenario.nodes_per_env
    adjacency = np.zeros((scenario.n_envs, n, n), dtype=np.float32)
    src, dst = scenario.edge_src.cpu().numpy(), scenario.edge_dst.cpu().numpy()
    adjacency[dst // n, dst % n, src % n] = 1.0
    return adjacency


@dataclass(frozen=True)
class ScenarioFeatures:
    """Everything the observation reads from a scenario that is fixed for the episode, computed once
    per scenario (at reset) so that a step only gathers each node's value at its round."""

    harvest_now: torch.Tensor  # (N, T) harvest of the round / the node's full-round cost
    harvest_forecast: torch.Tensor  # (N, T') mean of the next forecast_rounds of harvest_now's trace
    carbon_now: torch.Tensor  # (N, T) kgCO2e/kWh
    carbon_forecast: torch.Tensor  # (N, T')
    load_when_training: torch.Tensor  # (N,) share of a round spent computing when the node trains
    static_columns: dict[str, torch.Tensor]  # (N,) node features that never change within an episode


def forward_window_means(trace: torch.Tensor, horizon: int) -> torch.Tensor:
    """(N, T - horizon) column t: mean of each row over the ``horizon`` entries after t."""
    return trace.unfold(1, horizon, 1)[:, 1:].mean(2)


def scenario_features(scenario: Scenario, forecast_rounds: int) -> ScenarioFeatures:
    full_round_wh = scenario.costs.total_wh[:, 2]
    compute_time = scenario.costs.compute_wh[:, 1] / scenario.busy_w * 3600.0 / scenario.round_s
    degree = per_env(scenario.degree, scenario)
    most_neighbours = degree.max(1, keepdim=True).values
    internet_links = per_env(scenario.internet_slot.sum(1).to(degree.dtype), scenario)
    return ScenarioFeatures(
        harvest_now=scenario.harvest_wh / full_round_wh.unsqueeze(1),
        harvest_forecast=forward_window_means(scenario.harvest_wh, forecast_rounds) / full_round_wh.unsqueeze(1),
        carbon_now=scenario.carbon_g_per_wh,  # g/Wh = kg/kWh
        carbon_forecast=forward_window_means(scenario.carbon_g_per_kwh, forecast_rounds) / 1000.0,
        load_when_training=compute_time,
        static_columns={
            "grid_connected": scenario.grid_connected.float(),
            "degree": (degree / most_neighbours).view(-1),
            "internet_links": (internet_links / most_neighbours).view(-1),
            "round_cost": full_round_wh / scenario.capacity_wh,
            "compute_time": compute_time,
        },
    )


def true_telemetry(scenario: Scenario, features: ScenarioFeatures, state: SimState,
                   background_load: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What an honest node reports about itself: battery and the CPU load of its other work this round
    (private: privacy noises these), harvest and its grid's carbon intensity (public)."""
    t = time_index(scenario, state.round)
    return {
        "battery_soc": state.battery_wh / scenario.capacity_wh,
        "harvest_now": at_round(features.harvest_now, t),
        "harvest_forecast": at_round(features.harvest_forecast, t),
        "load": torch.zeros_like(state.battery_wh) if background_load is None else background_load,
        "carbon_now": at_round(features.carbon_now, t),
        "carbon_forecast": at_round(features.carbon_forecast, t),
    }


LIES = {"battery_soc": 1.0, "harvest_now": 10.0, "harvest_forecast": 10.0, "load": 0.0,
        "carbon_now": 0.03, "carbon_forecast": 0.03}  # full cell, plenty of sun, idle, Norway-clean grid


def apply_lies(telemetry: dict[str, torch.Tensor], liars: torch.Tensor) -> dict[str, torch.Tensor]:
    """Lying-telemetry attackers report the most attractive values there are."""
    return {name: torch.where(liars, torch.full_like(value, LIES[name]), value) for name, value in telemetry.items()}


def model_lag(params: torch.Tensor, public: torch.Tensor) -> torch.Tensor:
    """(N,) ||x_i - x̂_i|| / ||x_i||: how far each node's neighbours' copy of its model (the CHOCO public
    copy) lags the model itself. Top-k and skipped broadcasts leave it growing; a full broadcast clears
    it. The cost of compression that the carbon of one round does not show (docs/results.md)."""
    lag = torch.linalg.vector_norm(difference(params, public), dim=1)
    return lag / torch.linalg.vector_norm(params, dim=1).clamp_min(1e-8)


def observe(
    config: EnvConfig,
    scenario: Scenario,
    features: ScenarioFeatures,
    state: SimState,
    telemetry: dict[str, torch.Tensor],
    trust: torch.Tensor,
    action_mask: torch.Tensor,
    adjacency: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Assemble the Dict observation of every environment, batched: nodes (B, N, F), global (B, G),
    action_mask (B, N, K), adjacency (B, N, N). ``telemetry`` is what the nodes reported."""
    columns = {
        **telemetry,
        **features.static_columns,
        "trust": trust,
        # under hidden drop-outs the telemetry holds what the scheduler asked (envs/telemetry.py)
        "staleness": (telemetry.get("staleness", state.staleness) / STALENESS_HORIZON).clamp(max=1.0),
        "local_loss": state.local_loss,
        "last_action": telemetry.get("last_action", state.last_action) / (N_ACTIONS - 1),
        "dropped": telemetry["dropped"] if "dropped" in telemetry else state.dropped.float(),
        "model_lag": model_lag(state.params, state.public),
    }
    # one (B, N, F) block leaves the device; cleaning and clipping it is cheaper in NumPy than in torch
    nodes = per_env(torch.stack([columns[name] for name, *_ in NODE_FEATURES], dim=1), scenario).cpu().numpy()
    node_low, node_high = _numpy_bounds(NODE_FEATURES)
    nodes = np.nan_to_num(nodes, copy=False, nan=0.0, posinf=0.0, neginf=0.0).clip(node_low, node_high)

    # per-environment figures: the tensor work, then the few (B,) numbers in numpy. The scheduler does
    # not know who the attackers are, so its consensus distance is over all nodes; without attackers
    # that is the honest figure the round has already measured
    if scenario.all_honest:
        consensus = state.consensus_distance
    else:
        every_node = torch.full(scenario.honest_share.shape, 1.0 / scenario.nodes_per_env,
                                device=state.params.device)
        consensus = consensus_distance(state.params, scenario, every_node)
    shares = per_env(torch.stack([state.node_accuracy, state.dropped.float(), (state.last_action >= 1).float()],
                                 dim=1), scenario).mean(1)  # (B, 3)
    per_environment = torch.cat([shares, consensus.unsqueeze(1)], dim=1).double().cpu().numpy()
    accuracy, dropped_share, awake_share, consensus = per_environment.T
    rounds = state.round.cpu().numpy()
    hour = (scenario.start_utc_hour.cpu().numpy() + rounds * (config.round_minutes / 60.0)) % 24.0
    glob = np.stack([
        np.sin(2 * math.pi * hour / 24), np.cos(2 * math.pi * hour / 24), rounds / config.max_rounds,
        accuracy, config.target_accuracy - accuracy, consensus, dropped_share, awake_share,
    ], axis=1)
    glob = np.nan_to_num(glob, nan=0.0, posinf=0.0, neginf=0.0).clip(*_numpy_bounds(GLOBAL_FEATURES))
    obs = {
        "nodes": nodes.astype(np.float32, copy=False),
        "global": glob.astype(np.float32),
        "action_mask": per_env(action_mask, scenario).cpu().numpy().astype(np.float32),
    }
    if adjacency is not None:
        obs["adjacency"] = adjacency
    return obs
