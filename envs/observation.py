"""What the scheduler sees: per-node features, global features, the action mask and (optionally) the graph.

Everything here is derived from the simulator state and the scenario; nothing reveals which nodes are
attackers (accuracy in the global features is the mean over all nodes, not over honest ones).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces

from envs.config import EnvConfig
from envs.dynamics.energy import N_ACTIONS
from envs.scenario import Scenario
from envs.state import SimState

# name, low, high, meaning (unit)
NODE_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    ("battery_soc", 0.0, 1.0, "stored energy / capacity"),
    ("harvest_now", 0.0, 10.0, "this round's harvest in units of the node's full-round cost (clipped)"),
    ("harvest_forecast", 0.0, 10.0, "mean harvest over the next forecast_rounds, same unit"),
    ("carbon_now", 0.0, 2.0, "grid intensity now, kgCO2e/kWh"),
    ("carbon_forecast", 0.0, 2.0, "mean grid intensity over the next forecast_rounds, kgCO2e/kWh"),
    ("grid_connected", 0.0, 1.0, "1 if the node may draw from the grid"),
    ("trust", 0.0, 1.0, "neighbours' mean trust in this node (1 = fully trusted)"),
    ("staleness", 0.0, 1.0, "rounds since the node's model last changed / max_rounds"),
    ("local_loss", 0.0, 10.0, "last local training loss (cross-entropy, clipped)"),
    ("degree", 0.0, 1.0, "neighbours / most neighbours of any node"),
    ("last_action", 0.0, 1.0, "action carried out last round / (K - 1)"),
    ("dropped", 0.0, 1.0, "1 if the node could not afford last round's action"),
    ("round_cost", 0.0, 1.0, "energy of a full round (train + full broadcast) / capacity"),
    ("compute_time", 0.0, 1.0, "training time per round / round length (device speed)"),
    ("load", 0.0, 1.0, "share of last round the node spent computing (CPU load)"),
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


def adjacency_matrix(scenario: Scenario) -> np.ndarray:
    adjacency = np.zeros((scenario.n_nodes, scenario.n_nodes), dtype=np.float32)
    adjacency[scenario.edge_dst.cpu().numpy(), scenario.edge_src.cpu().numpy()] = 1.0
    return adjacency


def true_telemetry(scenario: Scenario, state: SimState, forecast_rounds: int) -> dict[str, torch.Tensor]:
    """What an honest node reports about itself: battery, harvest, load (privacy may noise these) and
    its grid's carbon intensity."""
    t = state.round
    carbon = scenario.carbon_g_per_kwh
    full_round_wh = scenario.costs.total_wh[:, 2]
    harvest = scenario.harvest_wh[:, t]
    forecast = scenario.harvest_wh[:, t + 1 : t + 1 + forecast_rounds].mean(1)
    trained_last = (state.last_action >= 1).to(harvest.dtype)
    return {
        "battery_soc": state.battery_wh / scenario.capacity_wh,
        "harvest_now": harvest / full_round_wh,
        "harvest_forecast": forecast / full_round_wh,
        "load": trained_last * scenario.costs.compute_wh[:, 1] / scenario.busy_w * 3600.0 / scenario.round_s,
        "carbon_now": carbon[:, t] / 1000.0,
        "carbon_forecast": carbon[:, t + 1 : t + 1 + forecast_rounds].mean(1) / 1000.0,
    }


LIES = {"battery_soc": 1.0, "harvest_now": 10.0, "harvest_forecast": 10.0, "load": 0.0,
        "carbon_now": 0.03, "carbon_forecast": 0.03}  # full cell, plenty of sun, idle, Norway-clean grid


def apply_lies(telemetry: dict[str, torch.Tensor], liars: torch.Tensor) -> dict[str, torch.Tensor]:
    """Lying-telemetry attackers report the most attractive values there are."""
    return {name: torch.where(liars, torch.full_like(value, LIES[name]), value) for name, value in telemetry.items()}


def observe(
    config: EnvConfig,
    scenario: Scenario,
    state: SimState,
    telemetry: dict[str, torch.Tensor],
    trust: torch.Tensor,
    action_mask: torch.Tensor,
    adjacency: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Assemble the Dict observation; ``telemetry`` is what the nodes reported (noised or not)."""
    t = state.round
    full_round_wh = scenario.costs.total_wh[:, 2]
    columns = {
        **telemetry,
        "grid_connected": scenario.grid_connected.float(),
        "trust": trust,
        "staleness": state.staleness / config.max_rounds,
        "local_loss": state.local_loss,
        "degree": scenario.degree / scenario.degree.max(),
        "last_action": state.last_action.float() / (N_ACTIONS - 1),
        "dropped": state.dropped.float(),
        "round_cost": full_round_wh / scenario.capacity_wh,
        "compute_time": scenario.costs.compute_wh[:, 1] / scenario.busy_w * 3600.0 / scenario.round_s,
    }
    nodes = torch.stack([columns[name] for name, *_ in NODE_FEATURES], dim=1)
    low = torch.tensor([f[1] for f in NODE_FEATURES], device=nodes.device)
    high = torch.tensor([f[2] for f in NODE_FEATURES], device=nodes.device)
    nodes = torch.nan_to_num(nodes, nan=0.0, posinf=0.0, neginf=0.0).clamp(low, high)

    hour = (scenario.start_utc_hour + t * config.round_minutes / 60.0) % 24.0
    mean_accuracy = float(state.node_accuracy.mean())
    consensus = float((state.params - state.params.mean(0)).pow(2).sum(1).mean())
    awake = float((state.last_action >= 1).float().mean())
    glob = np.array(
        [
            math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24), t / config.max_rounds,
            mean_accuracy, config.target_accuracy - mean_accuracy, consensus,
            float(state.dropped.float().mean()), awake,
        ],
        dtype=np.float32,
    )
    glob = np.clip(np.nan_to_num(glob), [f[1] for f in GLOBAL_FEATURES], [f[2] for f in GLOBAL_FEATURES])
    obs = {
        "nodes": nodes.cpu().numpy().astype(np.float32),
        "global": glob.astype(np.float32),
        "action_mask": action_mask.cpu().numpy().astype(np.float32),
    }
    if adjacency is not None:
        obs["adjacency"] = adjacency
    return obs
