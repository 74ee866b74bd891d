"""The Gymnasium environment ``GreenGossip/EdgeLearning-v0``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from envs.config import EnvConfig, load_config
from envs.dynamics.energy import ACTION_NAMES, N_ACTIONS
from envs.dynamics.learning import accuracy_per_node
from envs.dynamics import attacks
from envs.dynamics.privacy import PRIVATE_RANGES, PrivacyAccountant, privatize
from envs.observation import adjacency_matrix, apply_lies, observation_space, observe, true_telemetry
from envs.render import draw_network, summary_line
from envs.reward import reward_components, weighted_reward
from envs.scenario import Scenario, make_scenario
from envs.simulator import RoundOutcome, affordable_actions, draw_randomness, transition
from envs.state import SimState, honest_mean, initial_state, model_spec, trust_in_nodes


class EdgeLearningEnv(gym.Env):
    """
    ## Description
    A fleet of ``N`` energy-harvesting edge nodes trains one classifier together by gossip, with no
    server (D-PSGD / CHOCO-SGD). Every step is one communication round of ``round_minutes`` (default
    15 min), so an episode spans day and night: solar harvest (pvlib clear-sky x cloud process) and grid
    carbon intensity (codecarbon's per-country data shaped by hour) change under the agent's feet. The
    agent is the scheduler: it decides which nodes train and what each broadcasts. Learning is real:
    each node runs SGD on its non-IID shard of sklearn's digits and accuracy is measured on a held-out
    split. Energy follows the stated model in ``envs/dynamics/energy.py`` with the figures of
    ``envs/devices.py``.

    ## Action Space
    ``MultiDiscrete([6] * N)``, one choice per node:

    | code | meaning |
    |---|---|
    | 0 | idle (sleep, no mixing) |
    | 1 | train locally, mix, no broadcast |
    | 2 | train, broadcast the full fp32 model |
    | 3 | train, broadcast 8-bit quantised |
    | 4 | train, broadcast top-10 % (CHOCO error feedback) |
    | 5 | train, broadcast top-1 % |

    ``action_masks()`` returns an (N, 6) bool array: an action is masked when the node's reported
    battery above its reserve plus this round's harvest cannot pay for it (grid-connected nodes can
    always pay). A chosen action the node cannot afford is replaced by idle and the node is reported in
    ``dropped_nodes``.

    ## Observation Space
    ``Dict``:

    | key | shape | content |
    |---|---|---|
    | ``nodes`` | (N, 15) | per-node features, see ``envs.observation.NODE_FEATURES`` (name, range, unit) |
    | ``global`` | (8,) | time of day, progress, mean accuracy, gap to target, consensus distance, shares |
    | ``action_mask`` | (N, 6) | 1 = action affordable |
    | ``adjacency`` | (N, N) | 0/1 communication graph (only if ``observation.adjacency``) |

    Node features: battery_soc, harvest_now, harvest_forecast, carbon_now, carbon_forecast,
    grid_connected, trust, staleness, local_loss, degree, last_action, dropped, round_cost,
    compute_time, load. ``envs.wrappers.FlattenGossipObservation`` flattens it for plain SB3 policies.

    ## Rewards
    Weighted sum of named components (weights ``config.reward``), each reported every step in
    ``info["reward_components"]``; formulas in ``envs/reward.py``: accuracy (Δ honest accuracy), carbon
    (-gCO2e / carbon_scale), energy (-Wh / energy_scale), security (-(attacker share + influence)),
    deadline (+1 at the target, -shortfall/target at the deadline). ``info["cost"]`` is the round's gCO2e.

    ## Starting State
    A new scenario per reset from ``np_random``: graph, hardware mix, regions, shards, a random day of
    ``config.year`` and start time, initial state of charge uniform in
    [initial_soc_low, initial_soc_high]; all nodes start from the same model.

    ## Episode End
    Terminated when the honest nodes' mean test accuracy reaches ``target_accuracy`` (the accuracy
    guarantee is met). Truncated at ``max_rounds`` (the guarantee is missed; the deadline component
    charges the shortfall).

    ## Info
    Every step: accuracy, carbon_g (grid + backbone), carbon_grid_g, carbon_backbone_g, energy_wh,
    energy_breakdown_wh (compute / radio / base), grid_wh, harvested_wh, spilled_wh, bytes_sent,
    participants, trained_nodes, broadcasting_nodes, dropped_nodes, malicious_participants,
    attack_influence, epsilon_spent (max over nodes), epsilon_spent_mean, reward_components, cost, round.
    On the last step also: episode_carbon_g, episode_energy_wh, episode_grid_wh, episode_harvested_wh,
    episode_bytes_sent, episode_malicious_participants, rounds_to_target (None if missed), carbon_to_target_g, energy_to_target_wh,
    final_accuracy (full test split).

    ## Attacks, defences and privacy
    ``config.attack.fraction`` of the nodes are attackers; the agent never sees who (accuracy in the
    observation is over all nodes; the reward and KPIs use honest nodes). Kinds (``envs/dynamics/attacks.py``
    has the table with sources): sign_flip (sends -x), gaussian (x + noise; Blanchard et al. 2017), alie
    (mean - z·std; Baruch et al., NeurIPS 2019), ipm (-ε·mean; Xie et al., UAI 2020), label_flip (trains
    on 9 - y; Tolpegin et al. 2020), free_rider (claims to train, sends its stale model) and
    lying_telemetry (reports a full battery, sun and a clean grid to get picked, then sends -x). Attacks
    can start late (``start_round``) and switch on and off (``on_probability``); an attacker may send
    NaN/inf (``nonfinite_probability``), which receivers drop.

    Receivers aggregate with ``config.defence.aggregator`` (``envs/dynamics/gossip.py``): mean,
    coordinate-wise median or trimmed mean (Yin et al., ICML 2018), or ClippedGossip (He, Karimireddy &
    Jaggi 2022), optionally weighting neighbours by trust. Every receiver scores each neighbour's latest
    model as min(1, median distance / distance)²; the observation's ``trust`` is the mean score a node
    gets from its neighbours, so liars show up only through behaviour (outlying models, drop-outs).

    With ``config.privacy.mechanism`` laplace or gaussian, the battery, harvest and load values the
    scheduler sees (and the action mask derived from them) pass through that mechanism with
    ``epsilon_per_report`` per report; a per-node accountant (basic composition, or opacus' RDP for
    Gaussian noise) reports ``epsilon_spent`` in ``info``; a node past its budget stops reporting and
    its telemetry goes stale (``envs/dynamics/privacy.py``, after OpenMined's federated CPU tracker).

    ## Arguments
    ``gymnasium.make("GreenGossip/EdgeLearning-v0", config="configs/tiny.yaml", render_mode="ansi")``:
    ``config`` is a YAML path, a dict or an ``EnvConfig`` (None = default scenario); ``render_mode`` is
    ``"rgb_array"`` (network picture) or ``"ansi"`` (one line per round).

    ## Version History
    * v0: initial release.

    ## Example
    >>> import gymnasium as gym, envs
    >>> env = gym.make("GreenGossip/EdgeLearning-v0", config="configs/tiny.yaml")
    >>> obs, info = env.reset(seed=0)
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(self, config: str | dict | EnvConfig | None = None, render_mode: str | None = None):
        self.config = load_config(config)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; allowed: "
                             f"{self.metadata['render_modes']} or None")
        self.render_mode = render_mode
        self.n_nodes = self.config.n_nodes
        self.action_space = spaces.MultiDiscrete(np.full(self.n_nodes, N_ACTIONS, dtype=np.int64))
        self.observation_space = observation_space(self.config)
        self._device = torch.device(self.config.device)
        self._spec = model_spec(self.config)
        self._scenario: Scenario | None = None
        self._state: SimState | None = None
        self._last_outcome: RoundOutcome | None = None
        self._last_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._scenario = make_scenario(self.config, self.np_random)
        self._generator = torch.Generator(device=self._device)
        self._generator.manual_seed(int(self.np_random.integers(2**63 - 1)))
        self._state = initial_state(self.config, self._scenario, self._generator)
        self._adjacency = adjacency_matrix(self._scenario) if self.config.observation.adjacency else None
        self._totals = dict.fromkeys(
            ("carbon_g", "energy_wh", "grid_wh", "harvested_wh", "bytes_sent", "malicious_participants"), 0.0)
        self._rounds_to_target: int | None = None
        self._carbon_to_target: float | None = None
        self._energy_to_target: float | None = None
        self._last_outcome = None
        self._accountant = PrivacyAccountant(self.config.privacy, self.n_nodes, self._device)
        self._reported: dict[str, torch.Tensor] | None = None
        self._refresh_telemetry()
        self._last_info = {"accuracy": self._state.accuracy, "round": 0}
        return self._observation(), dict(self._last_info)

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action_t = self._validate_action(action)
        noise = draw_randomness(self.config, self._scenario, self._generator)
        self._state, outcome = transition(self.config, self._scenario, self._state, action_t, noise)
        self._last_outcome = outcome
        state = self._state
        terminated = state.accuracy >= self.config.target_accuracy
        truncated = (not terminated) and state.round >= self.config.max_rounds
        info = self._round_info(outcome)
        components = reward_components(
            self.config, self._scenario,
            accuracy=outcome.accuracy, previous_accuracy=outcome.previous_accuracy,
            carbon_g=info["carbon_g"], energy_wh=info["energy_wh"],
            malicious_share=outcome.malicious_participants / self.n_nodes,
            attack_influence=min(outcome.attack_influence, 10.0),
            terminated=terminated, truncated=truncated,
        )
        reward = weighted_reward(self.config, components)
        info["reward_components"] = components
        info["cost"] = info["carbon_g"]
        if terminated and self._rounds_to_target is None:
            self._rounds_to_target = state.round
            self._carbon_to_target = self._totals["carbon_g"]
            self._energy_to_target = self._totals["energy_wh"]
        if terminated or truncated:
            info.update(self._episode_info())
        self._refresh_telemetry()
        spent = self._accountant.spent  # after this round's reports
        info["epsilon_spent"] = float(spent.max())
        info["epsilon_spent_mean"] = float(spent.mean())
        self._last_info = info
        return self._observation(), reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """(N, K) bool: actions each node can afford according to what it reported (MaskablePPO)."""
        return self._mask.cpu().numpy()

    def render(self):
        if self.render_mode is None or self._state is None:
            return None
        if self.render_mode == "ansi":
            return summary_line(self._state.round, self._state.accuracy, self._last_info)
        sent = None if self._last_outcome is None else self._last_outcome.sent.cpu().numpy()
        title = (f"round {self._state.round}  accuracy {self._state.accuracy:.3f}  "
                 f"carbon {self._totals['carbon_g']:.1f} g")
        return draw_network(self._scenario, self._state, sent, title)

    # ------------------------------------------------------------------ helpers
    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @property
    def sim_state(self) -> SimState:
        return self._state

    def _validate_action(self, action) -> torch.Tensor:
        arr = np.asarray(action)
        if arr.shape != (self.n_nodes,):
            raise ValueError(f"action must have shape ({self.n_nodes},) (one code per node), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"action codes must be integers in 0..{N_ACTIONS - 1}, got {arr}")
            arr = arr.astype(np.int64)
        if arr.min() < 0 or arr.max() >= N_ACTIONS:
            raise ValueError(f"action codes must be in 0..{N_ACTIONS - 1} ({', '.join(ACTION_NAMES)}); "
                             f"got min {arr.min()}, max {arr.max()}")
        return torch.as_tensor(arr, dtype=torch.long, device=self._device)

    def _refresh_telemetry(self) -> None:
        """What the nodes report for the coming round (lies and DP noise included), and the action mask
        derived from it: the scheduler never sees more than the nodes chose to publish."""
        scenario, state, privacy = self._scenario, self._state, self.config.privacy
        telemetry = true_telemetry(scenario, state, self.config.observation.forecast_rounds)
        if state.round >= self.config.attack.start_round:
            telemetry = apply_lies(telemetry, attacks.is_kind(scenario.attack_kind, "lying_telemetry"))
        if privacy.mechanism != "none":
            woke = state.last_action >= 1
            due = woke | (state.round % privacy.heartbeat_rounds == 0)
            reporting = due & self._accountant.may_report()
            noised = privatize(privacy, telemetry, self._generator)
            previous = self._reported or {name: torch.full_like(value, PRIVATE_RANGES.get(name, 1.0) / 2)
                                          for name, value in telemetry.items()}
            telemetry = {name: torch.where(reporting, noised[name], previous[name]) if name in PRIVATE_RANGES
                         else value for name, value in telemetry.items()}
            self._accountant.record(reporting)
        self._reported = telemetry
        self._telemetry = {name: value.clamp(0.0, PRIVATE_RANGES[name]) if name in PRIVATE_RANGES else value
                           for name, value in telemetry.items()}
        reported_battery = self._telemetry["battery_soc"] * scenario.capacity_wh
        reported_harvest = self._telemetry["harvest_now"] * scenario.costs.total_wh[:, 2]
        self._mask = affordable_actions(self.config, scenario, reported_battery, reported_harvest)

    def _observation(self) -> dict[str, np.ndarray]:
        adjacency = None if self._adjacency is None else self._adjacency.copy()
        trust = trust_in_nodes(self._scenario, self._state.trust)
        return observe(self.config, self._scenario, self._state, self._telemetry, trust, self._mask, adjacency)

    def _round_info(self, outcome: RoundOutcome) -> dict[str, Any]:
        flow = outcome.energy
        info = {
            "round": self._state.round,
            "accuracy": outcome.accuracy,
            "carbon_g": float(outcome.carbon_g.sum()),
            "carbon_grid_g": float(outcome.carbon_grid_g.sum()),
            "carbon_backbone_g": float(outcome.carbon_backbone_g.sum()),
            "energy_wh": float(flow.consumed.sum()),
            "energy_breakdown_wh": {
                "compute": float(outcome.compute_wh.sum()),
                "radio": float(outcome.radio_wh.sum()),
                "base": float(outcome.base_wh.sum()),
            },
            "grid_wh": float(flow.grid.sum()),
            "harvested_wh": float(flow.harvested.sum()),
            "spilled_wh": float(flow.spilled.sum()),
            "bytes_sent": float(outcome.bytes_sent.sum()),
            "participants": int((outcome.trained | outcome.sent).sum()),
            "trained_nodes": int(outcome.trained.sum()),
            "broadcasting_nodes": int(outcome.sent.sum()),
            "dropped_nodes": int(outcome.dropped.sum()),
            "consensus_distance": outcome.consensus_distance,
            "malicious_participants": outcome.malicious_participants,
            "attack_influence": outcome.attack_influence,
        }
        self._totals["malicious_participants"] += outcome.malicious_participants
        for key in ("carbon_g", "energy_wh", "grid_wh", "harvested_wh", "bytes_sent"):
            self._totals[key] += info[key]
        return info

    def _episode_info(self) -> dict[str, Any]:
        scenario = self._scenario
        final = accuracy_per_node(self._spec, self._state.params, scenario.test_x, scenario.test_y)
        return {
            "episode_carbon_g": self._totals["carbon_g"],
            "episode_energy_wh": self._totals["energy_wh"],
            "episode_grid_wh": self._totals["grid_wh"],
            "episode_harvested_wh": self._totals["harvested_wh"],
            "episode_bytes_sent": self._totals["bytes_sent"],
            "episode_malicious_participants": int(self._totals["malicious_participants"]),
            "episode_rounds": self._state.round,
            "rounds_to_target": self._rounds_to_target,
            "carbon_to_target_g": self._carbon_to_target,
            "energy_to_target_wh": self._energy_to_target,
            "final_accuracy": honest_mean(final, scenario),
        }
