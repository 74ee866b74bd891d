"""Private telemetry as the federated tracker has it: silent nodes keep their last released values, a
device's budget lasts its life and keeps a daily pace, the one-bit report is memoised, the per-node
drop-out flag is not released (nor given away by any other column), and the background load is part of the
world."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_variant

from greengossip import envs  # noqa: F401
from greengossip.envs.config import PrivacyConfig
from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.dynamics.privacy import PrivacyAccountant, bit_epsilon, debiased_share
from greengossip.envs.observation import NODE_INDEX, STALENESS_HORIZON

BATTERY, LOAD, DROPPED = NODE_INDEX["battery_soc"], NODE_INDEX["load"], NODE_INDEX["dropped"]
LAST_ACTION, STALENESS = NODE_INDEX["last_action"], NODE_INDEX["staleness"]


def private_env(max_rounds=30, **privacy):
    config = tiny_variant(max_rounds=max_rounds, target_accuracy=1.0,
                          privacy={"mechanism": "laplace", "epsilon_per_report": 1.0, "budget": 1000.0, **privacy})
    return gym.make("GreenGossip/EdgeLearning-v3", config=config)


def test_a_silent_node_shows_its_last_released_values_and_the_mask_follows_them():
    env = private_env(heartbeat_rounds=1000)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.full(8, 2))  # everyone awake: everyone reports
    released = obs["nodes"][:, [BATTERY, LOAD]].copy()
    assert not np.allclose(released[:, 0], 0.5)
    mask = env.unwrapped.action_masks().copy()
    for _ in range(3):  # asleep and no heartbeat due: nobody reports
        obs, *_ = env.step(np.zeros(8, dtype=np.int64))
        np.testing.assert_array_equal(obs["nodes"][:, [BATTERY, LOAD]], released)
        np.testing.assert_array_equal(env.unwrapped.action_masks(), mask)


def test_a_new_episode_starts_from_the_placeholder_until_the_node_reports():
    env = private_env(budget=2.0)  # two reports in a device's life
    env.reset(seed=0)
    for _ in range(4):
        obs, *_ = env.step(np.full(8, 2))
    assert not np.allclose(obs["nodes"][:, BATTERY], 0.5)
    obs, _ = env.reset()  # the same devices, budget spent: they stay silent in the new episode
    np.testing.assert_allclose(obs["nodes"][:, [BATTERY, LOAD]], 0.5)


def test_the_budget_is_the_devices_and_lasts_across_episodes():
    env = private_env(max_rounds=5)
    env.reset(seed=0)
    for _ in range(5):
        *_, info = env.step(np.full(8, 2))
    first = info["epsilon_spent"]
    assert first > 0
    env.reset()  # unseeded: the same devices carry on
    *_, info = env.step(np.full(8, 2))
    assert info["epsilon_spent"] > first


def test_a_daily_pace_holds_epsilon_per_day():
    env = private_env(max_rounds=192, daily_epsilon=2.0, heartbeat_rounds=1)
    env.reset(seed=0)
    for _ in range(192):
        *_, info = env.step(np.full(8, 2))
    days = 192 * 15 / 1440
    assert info["epsilon_per_day"] <= 2.0 + 1e-6
    assert info["epsilon_spent"] <= 2.0 * days + 1e-6
    assert info["epsilon_spent"] >= 2.0 * days - 1.0  # the pace is used, not starved


def test_the_one_bit_report_is_memoised_and_costs_each_value_once():
    env = private_env(battery_report="afford_bit", afford_flip=0.5)
    env.reset(seed=0)
    channel = env.unwrapped._fleet.channel
    responses = {}
    for _ in range(30):
        obs, *_, info = env.step(np.full(8, 2))
        accountant = channel.accountant
        for node in range(8):
            for value in (0, 1):
                if bool(accountant.bit_seen[node, value]):
                    memo = bool(accountant.bit_memo[node, value])
                    assert responses.setdefault((node, value), memo) == memo
    assert bit_epsilon(PrivacyConfig(afford_flip=0.5)) == pytest.approx(2 * math.log(3))
    seen = channel.accountant.bit_seen.sum(1).float()
    reports = channel.accountant.reports.float()
    np.testing.assert_allclose(channel.accountant.spent.numpy(), (reports * 1.0 + seen * 2 * math.log(3)).numpy(),
                               rtol=1e-5)
    scenario = env.unwrapped.scenario
    affords = 0.1 + 4 * (scenario.costs.total_wh[:, 2] / scenario.capacity_wh).numpy()
    shown = obs["nodes"][:, BATTERY]
    assert np.all(np.isclose(shown, 0.1, atol=1e-6) | np.isclose(shown, np.minimum(affords, 1.0), atol=1e-6))


def test_the_drop_out_flag_is_not_released_per_node():
    env = private_env()
    env.reset(seed=0)
    for _ in range(30):
        obs, *_, info = env.step(np.full(8, 2))
        assert np.all(obs["nodes"][:, DROPPED] == 0.0)


def test_nothing_per_node_gives_a_drop_out_away():
    # batteries at their reserve: nodes asked to work drop out. The scheduler's last_action and staleness
    # columns show what it asked, and a node reports when asked, whether or not it could pay its round
    def drop_out_env(**privacy):
        config = tiny_variant(max_rounds=30, target_accuracy=1.0, energy__initial_soc_low=0.15,
                              energy__initial_soc_high=0.15, privacy=privacy)
        return gym.make("GreenGossip/EdgeLearning-v3", config=config)

    private = drop_out_env(mechanism="laplace", epsilon_per_report=1.0, budget=1000.0, heartbeat_rounds=1000)
    public = drop_out_env()
    private.reset(seed=0)
    public.reset(seed=0)
    accountant = private.unwrapped.accountant
    rng = np.random.default_rng(0)
    silence, drop_outs = np.zeros(8), 0
    for _ in range(12):
        action = rng.integers(0, N_ACTIONS, 8)
        reports = accountant.reports.clone().numpy()
        obs, *_ = private.step(action)
        shown, *_ = public.step(action)
        dropped = private.unwrapped.sim_state.dropped.numpy()
        drop_outs += int(dropped.sum())
        silence = np.where(action >= 2, 0, silence + 1)
        np.testing.assert_allclose(obs["nodes"][:, LAST_ACTION], action / (N_ACTIONS - 1), atol=1e-6)
        np.testing.assert_allclose(obs["nodes"][:, STALENESS], np.minimum(silence / STALENESS_HORIZON, 1), atol=1e-6)
        np.testing.assert_array_equal(accountant.reports.numpy() - reports, (action >= 1).astype(int))
        # without privacy the columns are what the nodes carried out: a drop-out slept
        carried = np.where(dropped, 0, action)
        np.testing.assert_allclose(shown["nodes"][:, LAST_ACTION], carried / (N_ACTIONS - 1), atol=1e-6)
    assert drop_outs > 0


def _energy(background: float, seed: int = 0) -> tuple[float, float]:
    config = tiny_variant(max_rounds=6, target_accuracy=1.0, background_load={"mean": background})
    env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
    env.reset(seed=seed)
    compute = total = 0.0
    for _ in range(6):
        *_, info = env.step(np.full(8, 1))
        compute += info["energy_breakdown_wh"]["compute"]
        total += info["energy_wh"]
    return compute, total


def test_background_load_stretches_training_energy_and_replays():
    quiet, busy = _energy(0.0), _energy(0.3)
    assert busy[0] > 1.1 * quiet[0]
    assert busy == _energy(0.3)


def test_background_load_is_what_the_load_column_reports():
    config = tiny_variant(max_rounds=6, target_accuracy=1.0, background_load={"mean": 0.3})
    env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
    obs, _ = env.reset(seed=0)
    assert 0.0 < obs["nodes"][:, LOAD].mean() < 0.8
    assert obs["nodes"][:, LOAD].std() > 0


def test_a_seeded_reset_is_a_new_fleet():
    env = private_env(max_rounds=5)
    env.reset(seed=0)
    for _ in range(5):
        *_, info = env.step(np.full(8, 2))
    env.reset(seed=0)
    *_, again = env.step(np.full(8, 2))
    env.reset(seed=0)
    *_, first = env.step(np.full(8, 2))
    assert again["epsilon_spent"] == first["epsilon_spent"] < info["epsilon_spent"]


@pytest.mark.parametrize(("flip", "vetoes"), [(0.9, False), (0.05, True)])
def test_only_a_likely_cannot_keeps_a_node_out_of_the_mask(flip, vetoes):
    """The mask keeps out exactly the nodes whose chance of affording the round, given their one-bit
    response, is below VETO_PROBABILITY: a strong "no" (f = 0.05) does, a weak one (f = 0.9, eight nodes:
    the fleet share is all noise) does not."""
    from greengossip.envs.simulator import affordable_actions
    from greengossip.envs.telemetry import VETO_PROBABILITY

    env = private_env(battery_report="afford_bit", afford_flip=flip, afford_rounds=1)
    obs, _ = env.reset(seed=0)
    for _ in range(12):
        obs, *_ = env.step(np.full(8, 2))
    fleet = env.unwrapped._fleet
    scenario, telemetry, channel = fleet.scenario, fleet.channel.telemetry, fleet.channel
    vetoed = channel.afford_chance < VETO_PROBABILITY
    assert bool(vetoed.any()) == vetoes
    reserve = fleet.config.energy.battery_min_soc
    affords = reserve + scenario.costs.total_wh[:, 2] / scenario.capacity_wh
    battery = torch.where(vetoed, torch.full_like(affords, reserve), affords) * scenario.capacity_wh
    expected = affordable_actions(fleet.config, scenario, battery,
                                  telemetry["harvest_now"] * scenario.costs.total_wh[:, 2], fleet.state.round)
    np.testing.assert_array_equal(env.unwrapped.action_masks(), expected.numpy())
    assert np.isclose(obs["nodes"][:, BATTERY], reserve, atol=1e-6).any()  # some node is likelier "cannot"


@pytest.mark.parametrize(("flip", "share"), [(0.5, 0.2), (0.5, 0.8), (0.75, 0.3)])
def test_the_chance_of_affording_given_a_response_is_calibrated(flip, share):
    """Among many devices that gave the same memoised response, the share that truly can afford the round
    matches the mean chance the channel gives them (randomised-response debiasing with the fleet's
    debiased share as prior), and a "yes" is worth more than a "no"."""
    from types import SimpleNamespace

    from greengossip.envs.telemetry import TelemetryChannel

    fleets, n_nodes = 8, 4096  # fleets large enough that the prior is barely shrunk towards one half
    accountant = PrivacyAccountant(PrivacyConfig(mechanism="laplace", afford_flip=flip, budget=1e9),
                                   fleets * n_nodes, torch.device("cpu"))
    truth = torch.arange(fleets * n_nodes) % n_nodes < share * n_nodes
    keys = torch.arange(fleets, dtype=torch.long) * 104729 + 3
    response, _ = accountant.afford_bit(truth, keys, torch.zeros(fleets, dtype=torch.long))
    channel = TelemetryChannel(tiny_variant(privacy={"mechanism": "laplace", "battery_report": "afford_bit",
                                                     "afford_flip": flip}))
    chance = channel.afford_probability(SimpleNamespace(nodes_per_env=n_nodes), response.float())
    for said in (False, True):
        group = response == said
        assert abs(float(chance[group].mean()) - float(truth[group].float().mean())) < 0.03
    assert float(chance[response].mean()) > float(chance[~response].mean())


@pytest.mark.parametrize("flip", [0.25, 0.5, 0.9])
def test_the_debiased_share_of_memoised_bits_is_unbiased(flip):
    """Many fleets of devices memoise their one-bit responses through the accountant: the debiased share
    scatters around the true share of devices that can afford the rounds (its mean within four standard
    errors), while the raw share of "yes" answers is pulled towards one half."""
    fleets, n_nodes, share = 64, 256, 0.3
    accountant = PrivacyAccountant(PrivacyConfig(mechanism="laplace", afford_flip=flip, budget=1e9),
                                   fleets * n_nodes, torch.device("cpu"))
    truth = torch.arange(fleets * n_nodes) % n_nodes < share * n_nodes
    keys = torch.arange(fleets, dtype=torch.long) * 7919 + 11
    response, released = accountant.afford_bit(truth, keys, torch.zeros(fleets, dtype=torch.long))
    assert released.all()
    estimates = debiased_share(response.view(fleets, n_nodes), flip)
    standard_error = float(estimates.std()) / math.sqrt(fleets)
    assert abs(float(estimates.mean()) - share) < 4 * standard_error + 1e-3
    raw = float(response.float().mean())
    assert abs(raw - share) > abs(float(estimates.mean()) - share)
    with pytest.raises(ValueError, match="afford_flip"):
        debiased_share(response, 1.0)


def test_value_reports_leave_room_for_the_bits_unreleased_value():
    """A device that has said "I can afford the rounds" and keeps reporting its load as often as its pace
    allows can still say it cannot, on the first day and within the pace."""
    privacy = PrivacyConfig(mechanism="laplace", epsilon_per_report=0.25, daily_epsilon=1.0, budget=60.0,
                            battery_report="afford_bit", afford_flip=0.9)
    accountant = PrivacyAccountant(privacy, 4, torch.device("cpu"))
    key, rounds = torch.tensor([5], dtype=torch.long), torch.zeros(1, dtype=torch.long)
    for round_index in range(24):  # half a day of 30-minute rounds
        can_afford = torch.full((4,), round_index < 12)
        _, released = accountant.afford_bit(can_afford, key, rounds + round_index)
        assert released.all(), f"round {round_index}: the bit's value was withheld"
        accountant.record(accountant.may_report())
        accountant.live(torch.ones(4, dtype=torch.bool))
        assert (accountant.spent <= accountant.allowance() + 1e-6).all()
    assert accountant.bit_seen.all()
