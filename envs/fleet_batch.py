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
from greengossip.envs.dynamics.learning import accuracy_per_node
from greengossip.envs.episode import EpisodeState, episode_end
from greengossip.envs.kpis import StepKPIs, round_kpis
from greengossip.envs.numerics import nonfinite_by_quantity, nonfinite_total
from greengossip.envs.observation import adjacency_matrix, observe, scenario_features
from greengossip.envs.reward import reward_components, reward_scales, weighted_reward
from greengossip.envs.scenario import Scenario, stack_scenarios
from greengossip.envs.simulator import RoundOutcome, draw_randomness, transition
from greengossip.envs.state import (
    PER_ENV_FIELDS,
    SimState,
    honest_mean,
    initial_state,
    model_spec,
    per_env,
    trust_in_nodes,
)
from greengossip.envs.telemetry import TelemetryChannel


def merge_rows(state: SimState, fresh: SimState, env_index: torch.Tensor, rows: torch.Tensor, scenario: Scenario,
               old_width: int) -> SimState:
    """``state`` with environments ``env_index`` (node rows ``rows``) replaced by ``fresh``; the trust table
    takes the width of the new ``scenario`` (``old_width``: its width before)."""
    width = scenario.neighbours.shape[1]
    trust = torch.zeros(scenario.n_nodes, width, device=rows.device)
    keep = min(old_width, width)
    trust[:, :keep] = state.trust[:, :keep]
    trust[rows, : fresh.trust.shape[1]] = fresh.trust
    trust[rows, fresh.trust.shape[1]:] = 0.0
    changes: dict[str, Any] = {"trust": trust}
    for field in dataclasses.fields(SimState):
        name = field.name
        if name == "trust":
            continue
        value = getattr(state, name).clone()
        value[env_index if name in PER_ENV_FIELDS else rows] = getattr(fresh, name)
        changes[name] = value
    return state.replace(**changes)


class FleetBatch:
    def __init__(self, config: EnvConfig):
        self.config = config
        self.spec = model_spec(config)
        self.scenarios: list[Scenario] = []
        self.scenario: Scenario | None = None
        self.state: SimState | None = None
        # the attack-free twin: the same episodes, actions and random streams with every attacker honest
        self.twin: SimState | None = None
        self.episode: EpisodeState | None = None
        self.channel = TelemetryChannel(config)
        self.last_outcome: RoundOutcome | None = None
        self.nonfinite: dict[str, np.ndarray] = {}  # last step's non-finite counts per quantity (envs/numerics.py)
        # what plays a round, with ``transition``'s signature: None for the simulator's own (looked up at each
        # step, so that a profiler's wrapper of it is seen), or a deployment whose nodes play it in their own
        # processes (``greengossip.training.deploy``)
        self.play_round = None

    # ------------------------------------------------------------------ episodes
    def reset(self, scenarios: list[Scenario], new_devices: bool = True) -> None:
        """Start a new episode in every environment. ``new_devices`` False: the same devices carry on, with
        what their privacy accountants have spent in their lives so far."""
        self.scenarios = list(scenarios)
        self.scenario = stack_scenarios(self.scenarios)
        self.state = initial_state(self.config, self.scenario)
        self.twin = self.state if self._steps_twin() else None
        self.episode = EpisodeState.fresh(len(scenarios))
        self.last_outcome = None
        self.channel.start(self.scenario, new_devices)
        self._after_new_scenario()
        self.channel.refresh(self.scenario, self.features, self.state)

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
        self.state = merge_rows(self.state, fresh, env_index, rows, self.scenario, old_width)
        if self.twin is not None:
            self.twin = merge_rows(self.twin, fresh, env_index, rows, self.scenario, old_width)
        elif self._steps_twin():  # the first attackers of this batch: the twins start here
            self.twin = self.state
        self.episode.restart(envs)
        self._after_new_scenario()
        replaced = torch.zeros(self.scenario.n_nodes, dtype=torch.bool, device=rows.device)
        replaced[rows] = True
        self.channel.refresh(self.scenario, self.features, self.state, replaced)

    def _steps_twin(self) -> bool:
        return self.config.attack.harm_twin and not self.scenario.all_honest

    def _after_new_scenario(self) -> None:
        self.scales = reward_scales(self.scenario)
        self.adjacency = adjacency_matrix(self.scenario) if self.config.observation.adjacency else None
        self.features = scenario_features(self.scenario, self.config.observation.forecast_rounds)
        self.channel.new_scenario(self.scenario)

    # ------------------------------------------------------------------ one round
    def step(self, action: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Play one round in every environment: (B·N,) actions -> rewards, terminated, truncated (each (B,))
        and the KPIs as a dict of (B,) arrays (episode totals included; they matter where an episode ended)."""
        config, scenario = self.config, self.scenario
        noise = draw_randomness(config, scenario, self.state.round)
        self.channel.requested(action)
        play_round = transition if self.play_round is None else self.play_round
        self.state, outcome = play_round(config, scenario, self.state, action, noise)
        if self.twin is not None:  # no attack draws: every attacker behaves as an honest node
            self.twin, _ = transition(config, scenario, self.twin, action, noise.without_attacks())
        self.last_outcome = outcome
        state = self.state
        accuracy = state.accuracy.double().cpu().numpy()
        rounds = state.round.cpu().numpy()
        claimed = accuracy >= config.target_accuracy
        full_accuracy = self._full_split_accuracy(accuracy, claimed | (rounds >= config.max_rounds))
        terminated, truncated = episode_end(config, claimed, full_accuracy, rounds)
        kpis = StepKPIs(round_kpis(outcome, scenario, rounds))
        figures = kpis.round
        figures["harm"] = self._harm(accuracy)
        self.episode.add_round(figures)
        kpis.reward = reward_components(
            config, self.scales,
            accuracy=accuracy, previous_accuracy=outcome.previous_accuracy.double().cpu().numpy(),
            carbon_g=figures["carbon_g"], energy_wh=figures["energy_wh"],
            security_loss=self._security_loss(figures),
            terminated=terminated, truncated=truncated,
        )
        reward = weighted_reward(config, kpis.reward)
        self.episode.record_target(terminated, rounds)
        kpis.episode = self.episode.summary(rounds.copy(), terminated | truncated, full_accuracy)
        self.channel.round_played(scenario)
        self.channel.refresh(scenario, self.features, state)
        kpis.privacy = self.channel.epsilon_spent(scenario)
        info = kpis.info()
        self.nonfinite = nonfinite_by_quantity(state, scenario.n_envs, {
            **figures,
            **{f"reward_{key}": value for key, value in kpis.reward.items()}, "reward": reward})
        info["nonfinite_values"] = nonfinite_total(self.nonfinite, scenario.n_envs)
        return reward, terminated, truncated, info

    def _harm(self, accuracy: np.ndarray) -> np.ndarray:
        """(B,) honest accuracy lost to the attackers: the attack-free twin's minus the episode's (0 without
        attackers; NaN where attackers play but no twin is stepped)."""
        if self.twin is not None:
            return self.twin.accuracy.double().cpu().numpy() - accuracy
        return np.full(len(accuracy), 0.0 if self.scenario.all_honest else np.nan)

    def _security_loss(self, figures: dict[str, np.ndarray]) -> np.ndarray:
        if self.twin is not None or self.scenario.all_honest:
            return np.maximum(figures["harm"], 0.0)
        return np.minimum(figures["attack_influence"], 10.0)

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

    # ------------------------------------------------------------------ what the scheduler sees
    @property
    def accountant(self):
        return self.channel.accountant

    @property
    def totals(self) -> dict[str, np.ndarray]:
        return self.episode.totals

    @property
    def telemetry(self) -> dict[str, torch.Tensor]:
        return self.channel.telemetry

    @property
    def mask(self) -> torch.Tensor:
        return self.channel.mask

    def observation(self) -> dict[str, np.ndarray]:
        """Batched Dict observation: every array has the environment axis first."""
        adjacency = None if self.adjacency is None else self.adjacency.copy()
        trust = trust_in_nodes(self.scenario, self.state.trust)
        return observe(self.config, self.scenario, self.features, self.state, self.channel.telemetry, trust,
                       self.channel.mask, adjacency)

    def action_masks(self) -> np.ndarray:
        """(B, N, K) bool."""
        return per_env(self.channel.mask, self.scenario).cpu().numpy()
