"""Hand-written schedulers: valid, mask-respecting actions on every config; each rule does what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import CONFIG_DIR, TINY, make_env

from greengossip.agents.base import (
    GLOBAL_INDEX,
    IDLE,
    SEND_FULL,
    SEND_Q8,
    TRAIN,
    HeuristicScheduler,
    Scheduler,
    first_affordable,
)
from greengossip.agents.heuristics import HEURISTICS
from greengossip.agents.learned import make_scheduler
from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.observation import NODE_INDEX, STALENESS_HORIZON

# Top-level configs only (the issue: glob, skip sub-folders), so new scenarios are covered automatically.
TOP_LEVEL_CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
STEPS_PER_CONFIG = 12
EXPECTED = {"all_nodes", "random_k", "battery_greedy", "carbon_aware", "oort", "trust_threshold",
            "event_triggered", "energy_carbon_trust", "carbon_periodic", "harvest_aware", "carbon_timing",
            "carbon_window", "fleet_timing", "network_aware", "battery_quorum"}


def _assert_valid(action, mask: np.ndarray) -> None:
    action = np.asarray(action)
    n = mask.shape[0]
    assert action.shape == (n,)
    assert np.issubdtype(action.dtype, np.integer)
    assert action.min() >= 0 and action.max() < N_ACTIONS
    assert mask[np.arange(n), action].all(), f"actions {action} break the mask"


def _observation(seed: int = 0):
    env = make_env(TINY)
    obs, _ = env.reset(seed=seed)
    return env, obs


def test_registry_holds_every_heuristic_of_the_design():
    assert set(HEURISTICS) == EXPECTED
    for name, cls in HEURISTICS.items():
        scheduler = cls(seed=0)
        assert cls.name == name
        assert isinstance(scheduler, Scheduler)  # the runtime-checkable protocol
        assert scheduler.observation_kind == "dict"
        assert cls.__doc__ and len(cls.__doc__) > 80, f"{name} must document and cite its idea"


@pytest.mark.parametrize("path", TOP_LEVEL_CONFIGS, ids=lambda p: p.name)
def test_every_heuristic_returns_valid_mask_respecting_actions(path):
    env = make_env(path)
    privacy = getattr(env.unwrapped.config, "privacy", None)
    exact_mask = privacy is None or privacy.mechanism == "none"  # DP noise makes the mask an estimate
    for name, cls in HEURISTICS.items():
        scheduler = cls(seed=0)
        obs, _ = env.reset(seed=1)
        for _ in range(STEPS_PER_CONFIG):
            action, state = scheduler.predict(obs, deterministic=True)
            assert state is None
            _assert_valid(action, obs["action_mask"] > 0.5)
            np.testing.assert_array_equal(obs["action_mask"] > 0.5, env.unwrapped.action_masks())
            obs, _, terminated, truncated, info = env.step(action)
            assert info["dropped_nodes"] == 0 or not exact_mask, f"{name}: dropped nodes under an exact mask"
            if terminated or truncated:
                break


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_heuristics_respect_a_sparse_random_mask(name):
    _, obs = _observation()
    rng = np.random.default_rng(0)
    scheduler = HEURISTICS[name](seed=0)
    for trial in range(20):
        mask = rng.random(obs["action_mask"].shape) < (0.15 + 0.04 * trial)
        mask[:, IDLE] = True
        observed = dict(obs, action_mask=mask.astype(np.float32))
        action, _ = scheduler.predict(observed)
        _assert_valid(action, mask)


def test_nothing_affordable_means_everyone_idles():
    _, obs = _observation()
    mask = np.zeros_like(obs["action_mask"])
    mask[:, IDLE] = 1.0
    for name, cls in HEURISTICS.items():
        action, _ = cls(seed=0).predict(dict(obs, action_mask=mask))
        assert (action == IDLE).all(), name


def _rollout(scheduler, seed: int, steps: int = 15) -> list[np.ndarray]:
    env = make_env(TINY)
    obs, _ = env.reset(seed=seed)
    actions = []
    for _ in range(steps):
        action, _ = scheduler.predict(obs)
        actions.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return actions


def test_random_k_is_reproducible_from_its_seed():
    first = _rollout(make_scheduler("random_k", seed=3), seed=0)
    again = _rollout(make_scheduler("random_k", seed=3), seed=0)
    other = _rollout(make_scheduler("random_k", seed=4), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_episode_start_resets_memory_and_random_stream():
    scheduler = make_scheduler("random_k", seed=1)
    first = _rollout(scheduler, seed=0, steps=5)
    second = _rollout(scheduler, seed=0, steps=5)  # same object, next episode: a fresh but new stream
    assert scheduler._episode == 1
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    replay = make_scheduler("random_k", seed=1)
    _rollout(replay, seed=0, steps=5)
    assert all(np.array_equal(a, b) for a, b in zip(second, _rollout(replay, seed=0, steps=5)))


def test_batched_observation_gives_batched_action():
    _, obs = _observation()
    batched = {key: value[None] for key, value in obs.items()}
    action, _ = HEURISTICS["carbon_aware"](seed=0).predict(batched, episode_start=np.array([True]))
    single, _ = HEURISTICS["carbon_aware"](seed=0).predict(obs)
    assert action.shape == (1, len(single))
    np.testing.assert_array_equal(action[0], single)


def test_heuristic_refuses_a_flat_observation():
    _, obs = _observation()
    with pytest.raises(TypeError, match="Dict observation"):
        HEURISTICS["all_nodes"](seed=0).predict(np.concatenate([v.ravel() for v in obs.values()]))


def test_first_affordable_falls_back_in_order():
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
                    dtype=bool)
    np.testing.assert_array_equal(first_affordable(mask, SEND_FULL, SEND_Q8, IDLE), [2, 3, 0, 0])
    np.testing.assert_array_equal(first_affordable(mask, SEND_FULL, TRAIN), [2, 1, 1, 0])
    per_node = np.array([SEND_Q8, SEND_FULL, TRAIN, TRAIN])
    np.testing.assert_array_equal(first_affordable(mask, per_node, IDLE), [3, 0, 1, 0])


# ---------------------------------------------------------------------------------------------- behaviour
def _set(obs, name: str, values) -> dict:
    nodes = obs["nodes"].copy()
    nodes[:, NODE_INDEX[name]] = values
    return dict(obs, nodes=nodes)


def test_carbon_aware_gives_full_broadcasts_to_the_greenest_half():
    _, obs = _observation()
    n = obs["nodes"].shape[0]
    carbon = np.linspace(0.9, 0.02, n)  # the last nodes are the greenest
    obs = _set(_set(obs, "carbon_now", carbon), "carbon_forecast", carbon)
    action, _ = HEURISTICS["carbon_aware"](seed=0).predict(obs)
    assert (action[n // 2:] == SEND_FULL).all() and (action[: n // 2] == SEND_Q8).all()


def test_trust_rules_idle_untrusted_nodes():
    _, obs = _observation()
    trust = np.ones(obs["nodes"].shape[0])
    trust[[1, 4]] = 0.2
    obs = _set(obs, "trust", trust)
    for name in ("trust_threshold", "energy_carbon_trust", "carbon_periodic"):
        action, _ = HEURISTICS[name](seed=0).predict(obs)
        assert (action[[1, 4]] == IDLE).all(), name
        assert (np.delete(action, [1, 4]) != IDLE).all(), name


def test_combined_rule_sends_8bit_except_on_green_grids():
    _, obs = _observation()
    carbon = np.full(obs["nodes"].shape[0], 0.4)
    carbon[0] = 0.03
    action, _ = HEURISTICS["energy_carbon_trust"](seed=0).predict(_set(obs, "carbon_now", carbon))
    assert action[0] == SEND_FULL and (action[1:] == SEND_Q8).all()


def test_carbon_periodic_broadcasts_from_dirty_grids_every_period_rounds():
    """Played on the env: nodes on grids above the threshold broadcast in the first round and then once
    every ``period`` rounds (training in between); nodes on cleaner grids broadcast every round."""
    env = make_env(TINY)
    obs, _ = env.reset(seed=0)
    carbon = obs["nodes"][:, NODE_INDEX["carbon_now"]]
    threshold = float(np.median(carbon))  # about half of the tiny fleet counts as dirty
    dirty = carbon > threshold
    assert dirty.any() and (~dirty).any()
    scheduler = HEURISTICS["carbon_periodic"](seed=0, period=3, dirty_intensity=threshold)
    sent_rounds, affordable = [], np.ones(len(carbon), dtype=bool)
    for _ in range(7):
        obs = dict(obs, nodes=obs["nodes"].copy())
        obs["nodes"][:, NODE_INDEX["carbon_now"]] = carbon  # hold each grid's class fixed over the rounds
        obs["nodes"][:, NODE_INDEX["trust"]] = 1.0
        action, _ = scheduler.predict(obs)
        mask = env.unwrapped.action_masks()
        _assert_valid(action, mask)
        affordable &= mask[:, SEND_Q8]  # exact masks on tiny: an allowed broadcast is never dropped
        sent_rounds.append(action >= SEND_Q8)
        assert (action[dirty & (action < SEND_Q8)] == TRAIN).all()  # a waiting node trains, never idles
        assert not (action == SEND_FULL).any()
        obs, *_ = env.step(action)
    sent = np.array(sent_rounds)  # (rounds, nodes)
    expected_dirty = np.array([True, False, False, True, False, False, True])
    assert (dirty & affordable).any() and (~dirty & affordable).any()
    for node in np.flatnonzero(dirty & affordable):
        assert (sent[:, node] == expected_dirty).all(), (node, sent[:, node])
    for node in np.flatnonzero(~dirty & affordable):
        assert sent[:, node].all(), (node, sent[:, node])


def test_carbon_periodic_sprints_near_the_target_and_only_when_asked():
    """With ``sprint_gap``, dirty nodes that would wait out their period broadcast once the fleet's accuracy
    is within the gap of the target; farther away, or without the option, they keep waiting."""
    _, obs = _observation()
    n = obs["nodes"].shape[0]
    obs = _set(_set(_set(obs, "carbon_now", np.full(n, 0.6)), "trust", np.ones(n)), "staleness", np.zeros(n))
    obs["global"] = obs["global"].copy()
    obs["global"][GLOBAL_INDEX["progress"]] = 0.1  # past the first round, a broadcast one round ago
    mask = np.ones((n, N_ACTIONS), dtype=bool)
    plain = HEURISTICS["carbon_periodic"](seed=0, period=6)
    sprinting = HEURISTICS["carbon_periodic"](seed=0, period=6, sprint_gap=0.02)
    for gap, sprints in ((0.5, False), (0.021, False), (0.02, True), (0.005, True), (-0.01, True)):
        obs["global"][GLOBAL_INDEX["target_gap"]] = gap
        assert (plain.act(obs, mask) == TRAIN).all(), gap
        assert (sprinting.act(obs, mask) == (SEND_Q8 if sprints else TRAIN)).all(), gap
    distrusted = _set(obs, "trust", np.full(n, 0.1))
    assert (sprinting.act(distrusted, mask) == IDLE).all()  # the sprint does not wake distrusted nodes
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match=r"sprint_gap must be None \(no sprint\) or an accuracy gap in \[0, 1\)"):
            HEURISTICS["carbon_periodic"](seed=0, sprint_gap=bad)


def _carbon_window_observation(now, forecast, silent_rounds):
    _, obs = _observation()
    obs = _set(_set(obs, "carbon_now", now), "carbon_forecast", forecast)
    obs = _set(obs, "staleness", np.asarray(silent_rounds, dtype=np.float32) / STALENESS_HORIZON)
    obs["global"] = obs["global"].copy()
    obs["global"][GLOBAL_INDEX["progress"]] = 0.1  # past the first round
    return obs


def test_carbon_window_keeps_the_nodes_dirtiest_against_their_own_forecast_silent():
    """The share with the lowest now/forecast ratio works, whatever the grids' levels: a coal grid below its
    own coming hours works before a clean grid above them."""
    _, obs = _observation()
    n = obs["nodes"].shape[0]
    now = np.where(np.arange(n) % 2 == 0, 0.70, 0.05)  # coal and hydro grids, alternating
    ratio = np.linspace(0.6, 1.4, n)  # each node's intensity now against its own forecast
    obs = _carbon_window_observation(now, now / ratio, np.zeros(n))
    mask = np.ones((n, N_ACTIONS), dtype=bool)
    action = HEURISTICS["carbon_window"](seed=0, share=0.5).act(obs, mask)
    works = action == SEND_Q8
    assert works.sum() == math.ceil(0.5 * n)
    assert works[: n // 2].all() and (action[math.ceil(n / 2):] == IDLE).all()  # the dirtiest against their day sleep
    first_round = dict(obs, **{"global": obs["global"].copy()})
    first_round["global"][GLOBAL_INDEX["progress"]] = 0.0
    assert (HEURISTICS["carbon_window"](seed=0, share=0.5).act(first_round, mask) == SEND_Q8).all()


def test_carbon_window_rotates_by_silence_on_a_flat_view_and_respects_the_mask():
    """With every grid flat (now = forecast, the blind view) the nodes silent longest work; a node silent
    ``max_wait`` rounds works even against a dirty hour; a node that cannot afford the broadcast sleeps."""
    _, obs = _observation()
    n = obs["nodes"].shape[0]
    silent = np.arange(n)[::-1] % 6  # a spread of silences, none at max_wait=8
    flat = _carbon_window_observation(np.full(n, 0.3), np.full(n, 0.3), silent)
    mask = np.ones((n, N_ACTIONS), dtype=bool)
    rule = HEURISTICS["carbon_window"](seed=0, share=0.5)
    works = rule.act(flat, mask) == SEND_Q8
    k = math.ceil(0.5 * n)
    assert works.sum() == k and silent[works].min() >= silent[~works].max()
    dirty_now = np.full(n, 0.3)
    dirty_now[0] = 0.9  # node 0 far above its forecast, but silent for max_wait rounds
    waited = _carbon_window_observation(dirty_now, np.full(n, 0.3), np.where(np.arange(n) == 0, 8, 0))
    assert rule.act(waited, mask)[0] == SEND_Q8
    unaffordable = mask.copy()
    unaffordable[works.argmax(), SEND_Q8] = False
    assert rule.act(flat, unaffordable)[works.argmax()] == IDLE
    for bad in ({"share": 0.0}, {"share": 1.5}, {"max_wait": 0}):
        with pytest.raises(ValueError, match="must be"):
            HEURISTICS["carbon_window"](seed=0, **bad)


def test_fleet_timing_sleeps_the_whole_fleet_while_its_mean_intensity_is_above_its_forecast():
    """The fleet's mean now against its mean forecast decides for every node at once, whatever each grid
    says on its own; the wait ends after ``max_wait`` silent rounds, never starts in the first round, and
    a flat view (now = forecast, the blind view) never waits."""
    n = _observation()[1]["nodes"].shape[0]
    mask = np.ones((n, N_ACTIONS), dtype=bool)
    rule = HEURISTICS["fleet_timing"](seed=0, period=1, trust_threshold=0, max_wait=4)
    grids = np.where(np.arange(n) % 2 == 0, 0.40, 0.05)  # a windy grid and a nuclear one
    calm = _carbon_window_observation(grids * np.where(np.arange(n) % 2 == 0, 1.5, 0.8), grids, np.zeros(n))
    assert (rule.act(calm, mask) == IDLE).all()  # the nuclear grid is below its forecast, the fleet is not
    windy = _carbon_window_observation(grids * np.where(np.arange(n) % 2 == 0, 0.8, 1.5), grids, np.zeros(n))
    assert (rule.act(windy, mask) == SEND_Q8).all()
    assert (rule.act(_carbon_window_observation(grids, grids, np.zeros(n)), mask) == SEND_Q8).all()
    waited = _carbon_window_observation(calm["nodes"][:, NODE_INDEX["carbon_now"]], grids, np.full(n, 4))
    assert (rule.act(waited, mask) == SEND_Q8).all()
    first_round = dict(calm, **{"global": calm["global"].copy()})
    first_round["global"][GLOBAL_INDEX["progress"]] = 0.0
    assert (rule.act(first_round, mask) == SEND_Q8).all()
    patient = HEURISTICS["fleet_timing"](seed=0, period=1, trust_threshold=0, slack=0.5)
    assert (patient.act(calm, mask) == SEND_Q8).all()  # 1.42x the forecast is within a slack of 50 %
    batch = {key: np.stack([calm[key], windy[key]]) for key in ("nodes", "global")}
    assert (rule.act(batch, np.stack([mask, mask])) == np.array([[IDLE], [SEND_Q8]])).all()
    for bad in ({"max_wait": 0}, {"max_wait": STALENESS_HORIZON + 1}, {"slack": -0.1}):
        with pytest.raises(ValueError, match="must be"):
            HEURISTICS["fleet_timing"](seed=0, **bad)


def test_carbon_periodic_gives_the_dirtiest_grids_their_own_period():
    _, obs = _observation()
    n = obs["nodes"].shape[0]
    carbon = np.where(np.arange(n) % 2 == 0, 0.6, 0.4)  # even nodes above dirtier_intensity (0.5)
    obs = _set(_set(obs, "carbon_now", carbon), "trust", np.ones(n))
    obs["global"] = obs["global"].copy()
    obs["global"][GLOBAL_INDEX["progress"]] = 0.1
    mask = np.ones((n, N_ACTIONS), dtype=bool)
    rule = HEURISTICS["carbon_periodic"](seed=0, period=6, dirtier_period=10)
    for silent, dirty_sends, dirtier_sends in ((4, False, False), (5, True, False), (8, True, False), (9, True, True)):
        action = rule.act(_set(obs, "staleness", np.full(n, silent / STALENESS_HORIZON)), mask)
        assert (action[1::2] == (SEND_Q8 if dirty_sends else TRAIN)).all(), silent
        assert (action[0::2] == (SEND_Q8 if dirtier_sends else TRAIN)).all(), silent
    same = HEURISTICS["carbon_periodic"](seed=0, period=6)  # without it, one period for every dirty grid
    assert (same.act(_set(obs, "staleness", np.full(n, 5 / STALENESS_HORIZON)), mask) == SEND_Q8).all()
    for bad in (0, 18, 2.5):
        with pytest.raises(ValueError, match="dirtier_period must be a whole number of rounds between 1 and 17"):
            HEURISTICS["carbon_periodic"](seed=0, dirtier_period=bad)


def test_network_aware_holds_gateways_broadcasts_back_but_not_their_training():
    """Nodes with internet links (gateways) train and mix every round and broadcast only every
    ``gateway_period`` rounds and in the first round; the others broadcast as carbon_periodic says; where
    most of the fleet would count as gateways (every link on the internet), nobody is held back."""
    _, obs = _observation()
    n = obs["nodes"].shape[0]
    gateway = np.arange(n) < 2
    obs = _set(_set(obs, "trust", np.ones(n)), "degree", np.full(n, 0.8))
    obs = _set(obs, "internet_links", np.where(gateway, 0.2, 0.0))
    mask = np.ones((n, N_ACTIONS), dtype=bool)
    rule = HEURISTICS["network_aware"](seed=0, period=1, gateway_period=4, max_gateway_share=0.3)
    periodic = HEURISTICS["carbon_periodic"](seed=0, period=1)
    obs["global"] = obs["global"].copy()
    obs["global"][GLOBAL_INDEX["progress"]] = 0.0
    assert (rule.act(_set(obs, "staleness", np.zeros(n)), mask) == SEND_Q8).all()  # the first round
    obs["global"][GLOBAL_INDEX["progress"]] = 0.1
    for silent, gateways_send in ((0, False), (2, False), (3, True), (16, True)):
        seen = _set(obs, "staleness", np.full(n, silent / STALENESS_HORIZON))
        action = rule.act(seen, mask)
        assert (action[gateway] == (SEND_Q8 if gateways_send else TRAIN)).all(), silent
        assert np.array_equal(action[~gateway], periodic.act(seen, mask)[~gateway]), silent
    # a gateway that cannot afford to train idles rather than breaking the mask
    poor = mask.copy()
    poor[0, TRAIN:] = False
    assert rule.act(_set(obs, "staleness", np.zeros(n)), poor)[0] == IDLE
    everyone = _set(obs, "internet_links", np.full(n, 0.8))  # every link crosses the internet
    assert (rule.act(_set(everyone, "staleness", np.zeros(n)), mask) == SEND_Q8).all()
    # a quarter of the fleet (2 of 8) is more than the default tenth: no one is held back
    default = HEURISTICS["network_aware"](seed=0, period=1, gateway_period=4)
    assert (default.act(_set(obs, "staleness", np.zeros(n)), mask) == SEND_Q8).all()
    for bad in (0, 18, 2.5):
        with pytest.raises(ValueError, match="gateway_period must be a whole number of rounds between 1 and 17"):
            HEURISTICS["network_aware"](seed=0, gateway_period=bad)
    with pytest.raises(ValueError, match=r"internet_share must be a share in \(0, 1\]"):
        HEURISTICS["network_aware"](seed=0, internet_share=0)


def test_event_triggered_sends_first_then_only_on_a_trigger():
    _, obs = _observation()
    scheduler = HEURISTICS["event_triggered"](seed=0, threshold=0.5, max_silence=3)
    first, _ = scheduler.predict(obs)
    assert (first == SEND_FULL).all()  # nothing published yet
    sent = _set(_set(obs, "last_action", np.full(len(first), SEND_FULL / (N_ACTIONS - 1))), "local_loss",
                obs["nodes"][:, NODE_INDEX["local_loss"]] * 1.1)  # small loss change: no trigger
    obs_next = dict(sent, **{"global": obs["global"].copy()})
    obs_next["global"][2] = 0.1  # progress > 0: same episode
    quiet, _ = scheduler.predict(obs_next)
    assert (quiet == TRAIN).all()
    moved = _set(obs_next, "local_loss", obs["nodes"][:, NODE_INDEX["local_loss"]] * 0.3)
    moved = _set(moved, "last_action", np.full(len(first), TRAIN / (N_ACTIONS - 1)))
    loud, _ = scheduler.predict(moved)
    assert (loud == SEND_FULL).all()


def test_oort_and_battery_greedy_pick_a_fraction_and_rotate():
    for name in ("oort", "battery_greedy", "random_k"):
        actions = _rollout(make_scheduler(f"{name}:fraction=0.5", seed=0), seed=0, steps=12)
        n = len(actions[0])
        assert all(((a != IDLE).sum() <= int(np.ceil(0.5 * n))) for a in actions), name
        ever_active = np.any([a != IDLE for a in actions], axis=0)
        assert ever_active.sum() > n // 2, f"{name} never rotates"


def test_make_scheduler_parses_parameters_and_explains_errors():
    scheduler = make_scheduler("random_k:fraction=0.25", seed=2)
    assert isinstance(scheduler, HeuristicScheduler) and scheduler.fraction == 0.25 and scheduler.seed == 2
    with pytest.raises(ValueError, match="unknown scheduler 'no_such_rule'.*all_nodes"):
        make_scheduler("no_such_rule")
    with pytest.raises(ValueError, match="random_k:speed=3"):
        make_scheduler("random_k:speed=3")
    with pytest.raises(ValueError, match="key=value"):
        make_scheduler("random_k:0.3")


def test_battery_quorum_keeps_mains_nodes_waiting_while_the_battery_nodes_cannot_pay():
    _, obs = _observation()
    n = obs["nodes"].shape[0]
    mains = np.arange(n) < n // 4
    obs = _set(_set(obs, "grid_connected", mains.astype(float)), "harvest_forecast", 0.0)
    obs = _set(_set(obs, "trust", 1.0), "battery_soc", 0.9)
    everything = np.ones_like(obs["action_mask"])
    scheduler = HEURISTICS["battery_quorum"](seed=0, quorum=0.3, period=1)

    def act(mask, dropped_share, progress=0.1):
        glob = obs["global"].copy()
        glob[GLOBAL_INDEX["dropped_share"]], glob[GLOBAL_INDEX["progress"]] = dropped_share, progress
        return scheduler.predict(dict(obs, action_mask=mask, **{"global": glob}))[0]

    flat = everything.copy()
    flat[~mains, SEND_FULL:] = 0.0  # the reports keep every battery node out of a broadcast
    assert (act(flat, 0.0)[mains] == IDLE).all()
    battery_share = (~mains).mean()
    dropped = act(everything, 0.8 * battery_share)  # 80 % of the battery nodes dropped out last round
    assert (dropped[mains] == IDLE).all() and (dropped[~mains] != IDLE).all()
    assert (act(everything, 0.5 * battery_share) != IDLE).all()  # half of them can pay: a quorum
    assert (act(everything, 0.0) != IDLE).all()  # no reports at all: nobody waits for the fleet
    assert (act(flat, battery_share, progress=0.6)[mains] != IDLE).all()  # past its patience
    with pytest.raises(ValueError, match="quorum"):
        HEURISTICS["battery_quorum"](quorum=1.5)
