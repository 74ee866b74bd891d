"""B environments of one config stepped as one tensor program.

``FleetBatch`` is what both the single env (B = 1) and the vector env (B > 1) drive: it holds the
stacked scenario and state, settles a round for all B·N nodes at once, and returns per-environment
rewards, flags and KPIs as (B,) arrays. Building scenarios (networkx, pvlib) stays outside, per episode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from greengossip.envs.config import EnvConfig
from greengossip.envs.dynamics import attacks
from greengossip.envs.dynamics.learning import accuracy_per_node
from greengossip.envs.dynamics.privacy import PRIVATE_RANGES, PrivacyAccountant, privatize
from greengossip.envs.memory import keep_freed_memory
from greengossip.envs.observation import adjacency_matrix, apply_lies, observe, scenario_features, true_telemetry
from greengossip.envs.reward import reward_components, reward_scales, weighted_reward
from greengossip.envs.scenario import Scenario, stack_scenarios
from greengossip.envs.simulator import RoundOutcome, affordable_actions, draw_randomness, transition
from greengossip.envs.state import PER_ENV_FIELDS, SimState, honest_mean, initial_state, model_spec, per_env, trust_in_nodes
from greengossip.envs.threads import simulator_call

COUNTS = ("participants", "trained_nodes", "broadcasting_nodes", "dropped_nodes", "malicious_participants")
TOTALS = ("carbon_g", "energy_wh", "grid_wh", "harvested_wh", "bytes_sent", "malicious_participants")


class FleetBatch:
    def __init__(self, config: EnvConfig):
        keep_freed_memory()  # the round's big blocks are reused, not faulted in as new pages (envs/memory.py)
        self.config = config
        self.spec = model_spec(config)
        self.scenarios: list[Scenario] = []
        self.scenario: Scenario | None = None
        self.state: SimState | None = None
        self.last_outcome: RoundOutcome | None = None

    # ------------------------------------------------------------------ episodes
    @simulator_call
    def reset(self, scenarios: list[Scenario]) -> None:
        """Start a new episode in every environment."""
        self.scenarios = list(scenarios)
        self.scenario = stack_scenarios(self.scenarios)
        self.state = initial_state(self.config, self.scenario)
        n_envs, device = len(scenarios), self.scenario.capacity_wh.device
        self.accountant = PrivacyAccountant(self.config.privacy, self.scenario.n_nodes, device)
        self.totals = {key: np.zeros(n_envs) for key in TOTALS}
        self.rounds_to_target = np.full(n_envs, -1, dtype=np.int64)
        self.carbon_to_target = np.full(n_envs, np.nan)
        self.energy_to_target = np.full(n_envs, np.nan)
        self.last_outcome = None
        self._after_new_scenario()
        self.reported = None
        self._refresh_telemetry()

    @simulator_call
    def replace(self, envs: np.ndarray, scenarios: list[Scenario]) -> None:
        """Start a new episode in environments ``envs`` only (autoreset); the others carry on."""
        for index, scenario in zip(envs, scenarios):
            self.scenarios[int(index)] = scenario
        old_width = self.scenario.neighbours.shape[1]
        self.scenario = stack_scenarios(self.scenarios)
        fresh = initial_state(self.config, stack_scenarios(list(scenarios)))
        n = self.scenario.nodes_per_env
        env_index = torch.as_tensor(np.asarray(envs), dtype=torch.long, device=self.state.params.device)
        rows = (env_index.unsqueeze(1) * n + torch.arange(n, device=env_index.device)).view(-1)
        width = self.scenario.neighbours.shape[1]
        trust = torch.zeros(self.scenario.n_nodes, width, device=rows.device)
        keep = min(old_width, width)
        trust[:, :keep] = self.state.trust[:, :keep]
        trust[rows, : fresh.trust.shape[1]] = fresh.trust
        trust[rows, fresh.trust.shape[1]:] = 0.0
        changes: dict[str, Any] = {"trust": trust}
        for field in dataclasses.fields(SimState):
            name = field.name
            if name == "trust":
                continue
            value = getattr(self.state, name).clone()
            value[env_index if name in PER_ENV_FIELDS else rows] = getattr(fresh, name)
            changes[name] = value
        self.state = self.state.replace(**changes)
        self.accountant.reports[rows] = 0
        for key in TOTALS:
            self.totals[key][envs] = 0.0
        self.rounds_to_target[envs] = -1
        self.carbon_to_target[envs] = np.nan
        self.energy_to_target[envs] = np.nan
        self._after_new_scenario()
        replaced = torch.zeros(self.scenario.n_nodes, dtype=torch.bool, device=rows.device)
        replaced[rows] = True
        self._refresh_telemetry(replaced)

    def _after_new_scenario(self) -> None:
        self.scales = reward_scales(self.scenario)
        self.adjacency = adjacency_matrix(self.scenario) if self.config.observation.adjacency else None
        self.features = scenario_features(self.scenario, self.config.observation.forecast_rounds)
        self.liars = attacks.is_kind(self.scenario.attack_kind, "lying_telemetry")
        self.any_liars = bool(self.liars.any())

    # ------------------------------------------------------------------ one round
    @simulator_call
    def step(self, action: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Play one round in every environment: (B·N,) actions -> rewards, terminated, truncated (each (B,))
        and the KPIs as a dict of (B,) arrays (episode totals included; they matter where an episode ended)."""
        config, scenario = self.config, self.scenario
        noise = draw_randomness(config, scenario, self.state.round)
        self.state, outcome = transition(config, scenario, self.state, action, noise)
        self.last_outcome = outcome
        state = self.state
        accuracy = state.accuracy.double().cpu().numpy()
        rounds = state.round.cpu().numpy()
        # the round's accuracy is measured on the fixed evaluation subsample; the target counts as reached
        # only once the whole test split confirms it, so rounds_to_target keeps its full-split meaning
        claimed = accuracy >= config.target_accuracy
        out_of_time = rounds >= config.max_rounds
        full_accuracy = self._full_split_accuracy(accuracy, claimed | out_of_time)
        terminated = claimed & (full_accuracy >= config.target_accuracy)
        truncated = ~terminated & out_of_time
        info = self._round_info(outcome, rounds)
        components = reward_components(
            config, self.scales,
            accuracy=accuracy, previous_accuracy=outcome.previous_accuracy.double().cpu().numpy(),
            carbon_g=info["carbon_g"], energy_wh=info["energy_wh"],
            malicious_share=info["malicious_participants"] / scenario.nodes_per_env,
            attack_influence=np.minimum(info["attack_influence"], 10.0),
            terminated=terminated, truncated=truncated,
        )
        reward = weighted_reward(config, components)
        info.update({f"reward_{name}": value for name, value in components.items()})
        info["cost"] = info["carbon_g"]
        reached = terminated & (self.rounds_to_target < 0)
        self.rounds_to_target[reached] = rounds[reached]
        self.carbon_to_target[reached] = self.totals["carbon_g"][reached]
        self.energy_to_target[reached] = self.totals["energy_wh"][reached]
        done = terminated | truncated
        info.update(self._episode_info(done, full_accuracy))
        self._refresh_telemetry()
        if config.privacy.mechanism == "none":
            info["epsilon_spent"] = info["epsilon_spent_mean"] = np.zeros(scenario.n_envs)
        else:
            spent = per_env(self.accountant.spent, scenario)
            info["epsilon_spent"] = spent.max(1).values.double().cpu().numpy()
            info["epsilon_spent_mean"] = spent.mean(1).double().cpu().numpy()
        return reward, terminated, truncated, info

    def _round_info(self, outcome: RoundOutcome, rounds: np.ndarray) -> dict[str, np.ndarray]:
        scenario, flow = self.scenario, outcome.energy
        sums = {  # per-node quantities summed per environment in one pass
            "carbon_g": outcome.carbon_g,
            "carbon_grid_g": outcome.carbon_grid_g,
            "carbon_backbone_g": outcome.carbon_backbone_g,
            "energy_wh": flow.consumed,
            "energy_compute_wh": outcome.compute_wh,
            "energy_radio_wh": outcome.radio_wh,
            "energy_base_wh": outcome.base_wh,
            "grid_wh": flow.grid,
            "harvested_wh": flow.harvested,
            "spilled_wh": flow.spilled,
            "bytes_sent": outcome.bytes_sent,
            "participants": outcome.trained | outcome.sent,
            "trained_nodes": outcome.trained,
            "broadcasting_nodes": outcome.sent,
            "dropped_nodes": outcome.dropped,
        }
        per_env_values = {
            "accuracy": outcome.accuracy,
            "consensus_distance": outcome.consensus_distance,
            "malicious_participants": outcome.malicious_participants,
            "attack_influence": outcome.attack_influence,
        }
        def columns(values) -> torch.Tensor:  # one float block (bool counts included) of per-node or per-env values
            return torch.stack([v if v.is_floating_point() else v.float() for v in values], dim=1).double()

        totals = per_env(columns(sums.values()), scenario).sum(1)  # (B, K), summed in double like the episode totals
        table = torch.cat([totals, columns(per_env_values.values())], dim=1).cpu().numpy()
        info: dict[str, np.ndarray] = {"round": rounds}
        for column, key in enumerate([*sums, *per_env_values]):
            value = table[:, column]
            info[key] = value.astype(np.int64) if key in COUNTS else value
        for key in TOTALS:
            self.totals[key] += info[key]
        return info

    def _full_split_accuracy(self, accuracy: np.ndarray, needed: np.ndarray) -> np.ndarray:
        """(B,) mean honest accuracy on the whole test split where ``needed`` (NaN elsewhere); the round's
        subsample figure where the subsample is the whole split."""
        scenario = self.scenario
        if scenario.eval_index.numel() == scenario.test_y.numel():
            return np.where(needed, accuracy, np.nan)
        if not needed.any():
            return np.full(len(needed), np.nan)
        node_accuracy = accuracy_per_node(self.spec, self.state.params, scenario.test_x, scenario.test_y)
        return np.where(needed, honest_mean(node_accuracy, scenario).double().cpu().numpy(), np.nan)

    def _episode_info(self, done: np.ndarray, full_accuracy: np.ndarray) -> dict[str, np.ndarray]:
        final = np.where(done, full_accuracy, np.nan)
        return {
            "episode_carbon_g": self.totals["carbon_g"].copy(),
            "episode_energy_wh": self.totals["energy_wh"].copy(),
            "episode_grid_wh": self.totals["grid_wh"].copy(),
            "episode_harvested_wh": self.totals["harvested_wh"].copy(),
            "episode_bytes_sent": self.totals["bytes_sent"].copy(),
            "episode_malicious_participants": self.totals["malicious_participants"].astype(np.int64),
            "episode_rounds": self.state.round.cpu().numpy(),
            "rounds_to_target": self.rounds_to_target.copy(),
            "carbon_to_target_g": self.carbon_to_target.copy(),
            "energy_to_target_wh": self.energy_to_target.copy(),
            "final_accuracy": final,
        }

    # ------------------------------------------------------------------ what the scheduler sees
    def _refresh_telemetry(self, rows: torch.Tensor | None = None) -> None:
        """What the nodes in ``rows`` report for the coming round (lies and DP noise included), and the
        action mask derived from it: the scheduler never sees more than the nodes chose to publish."""
        scenario, state, config = self.scenario, self.state, self.config
        privacy = config.privacy
        telemetry = true_telemetry(scenario, self.features, state)
        n = scenario.nodes_per_env
        if self.any_liars:
            started = (state.round >= config.attack.start_round).repeat_interleave(n)
            telemetry = apply_lies(telemetry, self.liars & started)
        if privacy.mechanism != "none":
            if rows is None:  # every node reports
                rows = torch.ones(scenario.n_nodes, dtype=torch.bool, device=state.params.device)
            woke = state.last_action >= 1
            due = woke | (state.round % privacy.heartbeat_rounds == 0).repeat_interleave(n)
            reporting = due & self.accountant.may_report() & rows
            noised = privatize(privacy, telemetry, scenario.stream_key, state.round)
            previous = {name: torch.full_like(value, PRIVATE_RANGES.get(name, 1.0) / 2)
                        for name, value in telemetry.items()}
            if self.reported is not None:
                previous = {name: torch.where(rows, previous[name], self.reported[name]) for name in previous}
            telemetry = {name: torch.where(reporting, noised[name], previous[name]) if name in PRIVATE_RANGES
                         else value for name, value in telemetry.items()}
            self.accountant.record(reporting)
        self.reported = telemetry
        if privacy.mechanism == "none" and not self.any_liars:  # true values: already in range
            self.telemetry = telemetry
        else:
            self.telemetry = {name: value.clamp(0.0, PRIVATE_RANGES[name]) if name in PRIVATE_RANGES else value
                              for name, value in telemetry.items()}
        reported_battery = self.telemetry["battery_soc"] * scenario.capacity_wh
        reported_harvest = self.telemetry["harvest_now"] * scenario.costs.total_wh[:, 2]
        self.mask = affordable_actions(config, scenario, reported_battery, reported_harvest)

    @simulator_call
    def observation(self) -> dict[str, np.ndarray]:
        """Batched Dict observation: every array has the environment axis first."""
        adjacency = None if self.adjacency is None else self.adjacency.copy()
        trust = trust_in_nodes(self.scenario, self.state.trust)
        return observe(self.config, self.scenario, self.features, self.state, self.telemetry, trust, self.mask,
                       adjacency)

    def action_masks(self) -> np.ndarray:
        """(B, N, K) bool."""
        return per_env(self.mask, self.scenario).cpu().numpy()
