"""Differentially private telemetry: noise of the configured scale, an accountant that only grows and
stops at the budget, and no raw values in the observation."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from greengossip import envs  # noqa: F401
from greengossip.envs.config import PrivacyConfig, load_config
from greengossip.envs.dynamics.privacy import PRIVATE_RANGES, PrivacyAccountant, noise_scale, privatize


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_noise_has_the_configured_scale(mechanism):
    privacy = PrivacyConfig(mechanism=mechanism, epsilon_per_report=3.0, delta=1e-5)
    values = {name: torch.full((20000,), 0.5 * value_range) for name, value_range in PRIVATE_RANGES.items()}
    noised = privatize(privacy, values, torch.tensor([7]), torch.tensor([0]))
    scale = noise_scale(privacy)
    expected_std = scale * math.sqrt(2) if mechanism == "laplace" else scale
    for name, value_range in PRIVATE_RANGES.items():
        error = (noised[name] - values[name]) / value_range
        assert abs(float(error.mean())) < 0.05 * expected_std
        assert float(error.std()) == pytest.approx(expected_std, rel=0.05)


def test_laplace_scale_follows_sensitivity_over_epsilon():
    # two private coordinates (battery, background load), each in [0, 1]: L1 sensitivity 2
    assert noise_scale(PrivacyConfig(mechanism="laplace", epsilon_per_report=2.0)) == pytest.approx(1.0)
    assert noise_scale(PrivacyConfig(mechanism="laplace", epsilon_per_report=8.0)) == pytest.approx(0.25)


def test_rdp_composition_is_tighter_than_basic_over_many_reports():
    basic = PrivacyAccountant(PrivacyConfig(mechanism="gaussian", accountant="basic", epsilon_per_report=0.5), 1,
                              torch.device("cpu"))
    rdp = PrivacyAccountant(PrivacyConfig(mechanism="gaussian", accountant="rdp", epsilon_per_report=0.5), 1,
                            torch.device("cpu"))
    reports = torch.tensor([1, 10, 100])
    eps_basic, eps_rdp = basic.epsilon_for(reports), rdp.epsilon_for(reports)
    assert torch.all(eps_rdp[1:] < eps_basic[1:])
    assert torch.all(eps_rdp[1:] > eps_rdp[:-1])


def private_env(**privacy):
    config = load_config("configs/tiny.yaml").model_dump()
    config["privacy"] = {"mechanism": "laplace", "epsilon_per_report": 2.0, "budget": 12.0, **privacy}
    config["max_rounds"] = 30
    config["target_accuracy"] = 1.0
    return gym.make("GreenGossip/EdgeLearning-v3", config=config)


def test_epsilon_spent_grows_monotonically_and_stops_at_the_budget():
    env = private_env()
    env.reset(seed=0)
    spent = []
    for _ in range(30):
        *_, info = env.step(np.full(8, 2))
        spent.append(info["epsilon_spent"])
    assert all(b >= a for a, b in zip(spent, spent[1:]))
    assert spent[0] > 0
    assert max(spent) == pytest.approx(12.0)
    assert spent[-1] == spent[-10]  # budget gone: no more reports
    per_node = env.unwrapped.accountant.spent
    assert torch.all(per_node <= 12.0 + 1e-9)


def test_telemetry_goes_stale_once_the_budget_is_spent():
    env = private_env(budget=4.0)
    env.reset(seed=0)
    observed = []
    for _ in range(10):
        obs, *_ = env.step(np.full(8, 2))
        observed.append(obs["nodes"][:, 0].copy())
    assert np.array_equal(observed[-1], observed[-2])


def test_observation_never_shows_raw_telemetry_when_private():
    env = private_env()
    obs, _ = env.reset(seed=0)
    true_soc = (env.unwrapped.sim_state.battery_wh / env.unwrapped.scenario.capacity_wh).numpy()
    differences = [np.abs(obs["nodes"][:, 0] - true_soc)]
    for _ in range(5):
        obs, *_ = env.step(np.full(8, 1))
        true_soc = (env.unwrapped.sim_state.battery_wh / env.unwrapped.scenario.capacity_wh).numpy()
        differences.append(np.abs(obs["nodes"][:, 0] - true_soc))
    assert np.all(np.concatenate(differences) > 1e-6)


def test_privacy_off_reports_the_truth_and_spends_nothing():
    env = gym.make("GreenGossip/EdgeLearning-v3", config="configs/tiny.yaml")
    obs, _ = env.reset(seed=0)
    true_soc = (env.unwrapped.sim_state.battery_wh / env.unwrapped.scenario.capacity_wh).numpy()
    assert np.allclose(obs["nodes"][:, 0], true_soc, atol=1e-6)
    *_, info = env.step(np.full(8, 2))
    assert info["epsilon_spent"] == 0.0


def test_rdp_accountant_needs_the_gaussian_mechanism():
    from greengossip.envs.config import ConfigError

    with pytest.raises(ConfigError, match="rdp.*gaussian"):
        load_config({"privacy": {"mechanism": "laplace", "accountant": "rdp"}})
