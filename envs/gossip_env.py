"""The Gymnasium environment ``GreenGossip/EdgeLearning-v3``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from greengossip.envs.config import EnvConfig, load_config
from greengossip.envs.dynamics.energy import ACTION_NAMES, N_ACTIONS
from greengossip.envs.errors import bounded_repr
from greengossip.envs.fleet_batch import FleetBatch
from greengossip.envs.numerics import raise_if_nonfinite
from greengossip.envs.observation import observation_space
from greengossip.envs.render import draw_network, summary_line
from greengossip.envs.scenario import Scenario, make_scenario, with_luck
from greengossip.envs.state import SimState


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
    always pay), and every action but idle is masked while the node is offline (``availability``). A
    chosen action the node cannot afford on its true battery, or that an offline node is asked for, is
    replaced by idle and the node is reported in ``dropped_nodes``.

    ## Observation Space
    ``Dict``:

    | key | shape | content |
    |---|---|---|
    | ``nodes`` | (N, 17) | per-node features, see ``greengossip.envs.observation.NODE_FEATURES`` (name, range, unit) |
    | ``global`` | (8,) | time of day, progress, mean accuracy, gap to target, consensus distance, shares |
    | ``action_mask`` | (N, 6) | 1 = action affordable and node online |
    | ``adjacency`` | (N, N) | 0/1 communication graph (only if ``observation.adjacency``) |

    Node features: battery_soc, harvest_now, harvest_forecast, carbon_now, carbon_forecast,
    grid_connected, trust, staleness, local_loss, degree, last_action, dropped, round_cost,
    compute_time, load. ``greengossip.envs.wrappers.FlattenGossipObservation`` flattens it for plain SB3 policies.

    ## Rewards
    Weighted sum of named components (weights ``config.reward``), each reported every step in
    ``info["reward_components"]``; formulas in ``envs/reward.py``: accuracy (Δ honest accuracy), carbon
    (-gCO2e / carbon_scale), energy (-Wh / energy_scale), security (-harm, or -influence without the twin),
    deadline (+1 at the target, -shortfall/target at the deadline). ``info["cost"]`` is the round's gCO2e.

    ## Starting State
    A new scenario per reset from ``np_random``: graph, hardware mix, regions, shards, a random day of
    ``config.year`` and start time, initial state of charge uniform in
    [initial_soc_low, initial_soc_high]; all nodes start from the same model.

    ## Episode End
    Terminated when the honest nodes' mean test accuracy reaches ``target_accuracy`` (the accuracy
    guarantee is met). Each round's accuracy is measured on a fixed class-stratified subsample of the
    test split (``learning.eval_samples_per_round``, 120 points by default); when it reaches the target,
    the whole split must confirm it before the episode terminates. Truncated at ``max_rounds`` (the
    guarantee is missed; the deadline component charges the shortfall).

    ## Info
    Every step: accuracy (on the evaluation subsample), carbon_g (grid + internet links, under
    ``energy.network_accounting``: the figure the reward charges), carbon_marginal_g and
    carbon_attributional_g (the same round under each accounting), carbon_grid_g, carbon_backbone_g,
    energy_wh, energy_breakdown_wh (compute / radio / receive / base), grid_wh, harvested_wh, spilled_wh,
    bytes_sent, bytes_received, internet_bytes,
    participants, trained_nodes, broadcasting_nodes, dropped_nodes, malicious_participants,
    attack_influence, harm (honest accuracy lost against the attack-free twin), epsilon_spent (max over
    nodes), epsilon_spent_mean, epsilon_per_day, reward_components, cost, round, nonfinite_values
    (non-finite values among the round's state, KPIs and reward: 0 unless the numbers broke down, see
    ``envs/numerics.py``).
    On the last step also: episode_carbon_g, episode_energy_wh, episode_grid_wh, episode_harvested_wh,
    episode_bytes_sent, episode_malicious_participants, rounds_to_target (None if missed),
    carbon_to_target_g, energy_to_target_wh,
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

    With ``config.privacy.mechanism`` laplace or gaussian, the private values the scheduler sees (battery
    and the background CPU load; the action mask is derived from them) pass through that mechanism with
    ``epsilon_per_report`` per report, or the battery as RAPPOR's memoised one-bit report
    (``battery_report: afford_bit``); the per-node drop-out flag is not released. Each device's accountant
    lasts its life (unseeded resets carry it over; a seeded reset is a new fleet) within ``budget`` and
    ``daily_epsilon``; a silent node shows its last released values (``envs/telemetry.py``,
    ``envs/dynamics/privacy.py``, after OpenMined's federated CPU tracker).

    ## Arguments
    ``gymnasium.make("GreenGossip/EdgeLearning-v3", config="configs/tiny.yaml", render_mode="ansi")``:
    ``config`` is a YAML path, a dict or an ``EnvConfig`` (None = default scenario); ``render_mode`` is
    ``"rgb_array"`` (network picture) or ``"ansi"`` (one line per round); ``check_finite=True`` raises
    ``FloatingPointError`` at the first step with a non-finite value (debugging a scenario).
    ``reset(seed=s, options={"luck": k})`` builds the same world as ``reset(seed=s)`` (fleet, graph, data,
    weather, start hour, attackers) with its counter-based random streams re-keyed by k >= 1: another draw
    of the initial weights, the minibatches, the attacks' rounds and noise, the background load and the
    telemetry noise (``envs.scenario.with_luck``). Paired runs over k tell what a scheduler's result owes to
    the world and what to chance. Any other key is an error, not silently ignored.

    ## Version History
    * v3: under private telemetry the ``last_action`` and ``staleness`` columns show what the scheduler asked
      of each node, and a node reports on the rounds it was asked to wake: no per-node column gives a
      drop-out away. Fleets without private telemetry give the same numbers as under v2.
    * v2: the node feature ``internet_links`` (17 node features); brown-outs, the one-bit battery report read as
      a probability, the scenario suite's ``start_days``.
    * v1: world model v2: network energy under marginal or attributional accounting, the
      geography-consistent graph, multi-day episodes on hourly grid traces, binding energy, private
      telemetry with a lifetime budget, adaptive attacks and harm against an attack-free twin.
    * v0: initial release.

    ## Example
    >>> import gymnasium as gym, greengossip
    >>> env = gym.make("GreenGossip/EdgeLearning-v3", config="tiny")
    >>> obs, info = env.reset(seed=0)
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(self, config: str | dict | EnvConfig | None = None, render_mode: str | None = None,
                 check_finite: bool = False):
        self.config = load_config(config)
        self.check_finite = bool(check_finite)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; allowed: "
                             f"{self.metadata['render_modes']} or None")
        self.render_mode = render_mode
        self.n_nodes = self.config.n_nodes
        self.action_space = spaces.MultiDiscrete(np.full(self.n_nodes, N_ACTIONS, dtype=np.int64))
        self.observation_space = observation_space(self.config)
        self._device = torch.device(self.config.device)
        self._fleet = FleetBatch(self.config)
        self._last_info: dict[str, Any] = {}
        self._episode_over = False

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        check_reset_options(options)
        luck = reset_luck(options)  # checked before anything changes: a refused reset leaves the env as it was
        super().reset(seed=seed)
        # a seeded reset is a new fleet (reset(seed) stays a function of the seed); an unseeded one carries
        # the same devices, and what their privacy budgets have spent, into the next episode
        scenario = with_luck(make_scenario(self.config, self.np_random), luck)
        self._fleet.reset([scenario], new_devices=seed is not None)
        self._episode_over = False
        self._last_info = {"accuracy": float(self._fleet.state.accuracy[0]), "round": 0}
        return self._observation(), dict(self._last_info)

    def step(self, action):
        if self._fleet.state is None:
            raise RuntimeError("call reset() before step()")
        if self._episode_over:  # the traces end at the deadline: a further round has no world to run in
            raise RuntimeError(f"the episode ended at round {int(self._fleet.state.round[0])} (terminated or "
                               "truncated): call reset() before step()")
        reward, terminated, truncated, batched = self._fleet.step(self._validate_action(action))
        if self.check_finite:
            raise_if_nonfinite(self._fleet.nonfinite, batched["round"])
        self._episode_over = bool(terminated[0] or truncated[0])
        info = single_env_info(batched, 0, self._episode_over)
        self._last_info = info
        return self._observation(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), info

    def action_masks(self) -> np.ndarray:
        """(N, K) bool: actions each node can afford according to what it reported (MaskablePPO)."""
        if self._fleet.state is None:
            raise RuntimeError("call reset() before action_masks(): the masks come from the nodes' reports")
        return self._fleet.action_masks()[0]

    def render(self):
        if self.render_mode is None or self._fleet.state is None:
            return None
        state = self._fleet.state
        accuracy, round_index = float(state.accuracy[0]), int(state.round[0])
        if self.render_mode == "ansi":
            return summary_line(round_index, accuracy, self._last_info)
        outcome = self._fleet.last_outcome
        sent = None if outcome is None else outcome.sent.cpu().numpy()
        title = f"round {round_index}  accuracy {accuracy:.3f}  carbon {self._fleet.totals['carbon_g'][0]:.1f} g"
        return draw_network(self.scenario, state, sent, title)

    # ------------------------------------------------------------------ helpers
    @property
    def scenario(self) -> Scenario:
        return self._fleet.scenario

    @property
    def fleet(self) -> FleetBatch:
        """The batch of one environment this env drives; its ``play_round`` may be replaced (a deployment
        plays the round in node processes: ``greengossip.training.deploy``)."""
        return self._fleet

    @property
    def sim_state(self) -> SimState:
        return self._fleet.state

    @property
    def last_outcome(self):
        """The last round's RoundOutcome (per-node tensors), None right after reset."""
        return self._fleet.last_outcome

    @property
    def accountant(self):
        return self._fleet.accountant

    def _validate_action(self, action) -> torch.Tensor:
        return validate_actions(action, (self.n_nodes,), self._device)

    def _observation(self) -> dict[str, np.ndarray]:
        return {key: value[0] for key, value in self._fleet.observation().items()}


REWARD_PREFIX = "reward_"
BREAKDOWN_KEYS = ("energy_compute_wh", "energy_radio_wh", "energy_receive_wh", "energy_base_wh")
EPISODE_KEYS = ("episode_carbon_g", "episode_energy_wh", "episode_grid_wh", "episode_harvested_wh",
                "episode_bytes_sent", "episode_malicious_participants", "episode_rounds", "rounds_to_target",
                "carbon_to_target_g", "energy_to_target_wh", "final_accuracy")


def single_env_info(batched: dict[str, np.ndarray], index: int, done: bool) -> dict[str, Any]:
    """The info dict of environment ``index``: plain Python numbers, reward components and the energy
    breakdown as sub-dicts, episode totals only on the last step (rounds_to_target None if missed)."""
    info: dict[str, Any] = {}
    components, breakdown = {}, {}
    for key, values in batched.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):  # vector-env bookkeeping
            continue
        value = values[index].item()
        if key in EPISODE_KEYS:
            if done:
                missed = key in ("rounds_to_target", "carbon_to_target_g", "energy_to_target_wh") and (
                    value < 0 or value != value)
                info[key] = None if missed else value
        elif key.startswith(REWARD_PREFIX):
            components[key[len(REWARD_PREFIX):]] = value
        elif key in BREAKDOWN_KEYS:
            breakdown[key[len("energy_"):-len("_wh")]] = value
        else:
            info[key] = value
    info["reward_components"] = components
    info["energy_breakdown_wh"] = breakdown
    return info


ACTION_NAME = "action"
RESET_OPTIONS: tuple[str, ...] = ("luck",)  # keys reset(options=...) understands; a new option is added here


def check_reset_options(options: Any, allowed: tuple[str, ...] = RESET_OPTIONS) -> None:
    """``reset(options=...)``: None or a dict of ``allowed`` keys; an unknown key is a ValueError, not ignored."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise ValueError(f"reset(options=...) must be a dict or None, got {type(options).__name__}")
    unknown = [key for key in options if key not in allowed]
    if unknown:
        names = ", ".join(allowed) if allowed else "none (pass options=None)"
        raise ValueError(f"reset(options=...): unknown key(s) {bounded_repr(unknown)}; allowed: {names}")


def reset_luck(options: dict | None) -> int:
    """The ``luck`` of ``reset(options=...)``: a whole number >= 0 (0 or absent: the streams as drawn)."""
    luck = (options or {}).get("luck", 0)
    if isinstance(luck, (bool, np.bool_)) or not isinstance(luck, (int, np.integer)) or luck < 0:
        raise ValueError(f"reset(options=...): luck must be a whole number >= 0 (0: the random streams as "
                         f"drawn), got {bounded_repr(luck)}")
    return int(luck)



def _holds_bools(values) -> bool:
    """Whether nested lists or tuples hold a bool anywhere (numpy casts them to ints without a word)."""
    if isinstance(values, (bool, np.bool_)):
        return True
    if isinstance(values, (list, tuple)):
        return any(_holds_bools(value) for value in values)
    return False


def validate_actions(action, shape: tuple[int, ...], device: torch.device, name: str = ACTION_NAME) -> torch.Tensor:
    """Actions as a flat long tensor, checked once at the edge: an integer array (or nested lists of ints)
    of exactly ``shape`` with every code in 0..K-1. Anything else (bools, floats, strings, objects, ragged
    lists, ints beyond int64, codes out of range) is one ValueError naming ``name``, what was given and
    what is allowed."""
    allowed = (f"an integer array of shape {shape} (one code per node) with codes in 0..{N_ACTIONS - 1} "
               f"({', '.join(f'{code} {label}' for code, label in enumerate(ACTION_NAMES))})")

    def refuse(given: str) -> ValueError:
        return ValueError(f"{name}: got {given}; allowed: {allowed}")

    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    try:
        arr = np.asarray(action)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged lists, ints numpy cannot hold
        raise refuse(f"{type(action).__name__} {bounded_repr(action)} that is not an array "
                     f"({str(exc)[:120]})") from None
    kind = arr.dtype.kind
    if kind in "iu" and not isinstance(action, np.ndarray) and _holds_bools(action):
        kind = "b"  # numpy reads [0, True] as integers: a bool in a list is still not an action code
    if kind not in "iu":
        described = {"b": "booleans", "f": "floats", "c": "complex numbers", "U": "strings", "S": "bytes",
                     "O": "Python objects (mixed types, or ints beyond int64)"}.get(kind, f"dtype {arr.dtype}")
        raise refuse(f"{described} ({arr.dtype}) {bounded_repr(arr.tolist() if arr.size < 64 else arr)}")
    if arr.shape != shape:
        raise refuse(f"shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= N_ACTIONS):
        bad = arr[(arr < 0) | (arr >= N_ACTIONS)]
        raise refuse(f"codes out of range (min {arr.min()}, max {arr.max()}; e.g. {bounded_repr(bad[:4].tolist())})")
    return torch.as_tensor(arr.reshape(-1).astype(np.int64, copy=False), dtype=torch.long, device=device)
