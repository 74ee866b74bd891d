"""Attacks, robust gossip and trust: what the defences buy, on a small fleet with fixed seeds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from greengossip import envs  # noqa: F401  (registers the env)
from greengossip.envs.config import load_config
from greengossip.envs.dynamics import gossip
from greengossip.envs.dynamics.attacks import ATTACK_KINDS, alie_z

ROUNDS = 40


def small_fleet(**overrides) -> dict:
    """20 nodes on a small-world graph, never terminating early (target 1.0), ROUNDS rounds."""
    config = load_config("configs/tiny.yaml").model_dump()
    config.update(n_nodes=20, max_rounds=ROUNDS, target_accuracy=1.0)
    config["topology"] = {"kind": "small_world", "neighbours": 8, "rewire_probability": 0.2}
    config.update(overrides)
    return config


def rollout(config: dict, seed: int, action: int = 2):
    env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
    obs, _ = env.reset(seed=seed)
    infos, observations, rewards = [], [obs], []
    for _ in range(ROUNDS):
        obs, reward, terminated, truncated, info = env.step(np.full(env.unwrapped.n_nodes, action))
        infos.append(info)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return env, infos, observations, rewards


def late_accuracy(infos) -> float:
    return float(np.mean([info["accuracy"] for info in infos[-5:]]))


SIGN_FLIP = {"fraction": 0.3, "kinds": ["sign_flip"]}


@pytest.fixture(scope="module")
def accuracies() -> dict[str, float]:
    seed = 0
    return {
        "clean": late_accuracy(rollout(small_fleet(), seed)[1]),
        "mean": late_accuracy(rollout(small_fleet(attack=SIGN_FLIP), seed)[1]),
        "clipped_gossip": late_accuracy(rollout(small_fleet(
            attack=SIGN_FLIP, defence={"aggregator": "clipped_gossip", "trust_weighting": True}), seed)[1]),
        "median": late_accuracy(rollout(small_fleet(attack=SIGN_FLIP, defence={"aggregator": "median"}), seed)[1]),
    }


def test_sign_flip_attack_ruins_plain_mean(accuracies):
    assert accuracies["clean"] > 0.8
    assert accuracies["mean"] < accuracies["clean"] - 0.4


def test_clipped_gossip_recovers_most_of_the_gap(accuracies):
    gap = accuracies["clean"] - accuracies["mean"]
    assert accuracies["clipped_gossip"] > accuracies["mean"] + 0.7 * gap


def test_median_recovers_part_of_the_gap(accuracies):
    gap = accuracies["clean"] - accuracies["mean"]
    assert accuracies["median"] > accuracies["mean"] + 0.3 * gap


@pytest.mark.parametrize("aggregator", ["mean", "median", "trimmed_mean", "clipped_gossip"])
def test_non_finite_messages_never_reach_models_observations_or_rewards(aggregator):
    attack = {"fraction": 0.3, "kinds": ["sign_flip", "gaussian"], "nonfinite_probability": 1.0}
    env, infos, observations, rewards = rollout(small_fleet(attack=attack, defence={"aggregator": aggregator}), 1)
    state, scenario = env.unwrapped.sim_state, env.unwrapped.scenario
    assert torch.isfinite(state.params[scenario.honest]).all()
    assert not torch.isfinite(state.public[~scenario.honest]).all()  # the attack really sent NaN/inf
    assert all(np.isfinite(r) for r in rewards)
    assert all(np.isfinite(value).all() for obs in observations for value in obs.values())
    assert all(np.isfinite(info["accuracy"]) and np.isfinite(info["attack_influence"]) for info in infos)


def test_trust_of_attackers_falls_below_honest_nodes():
    env, _, observations, _ = rollout(small_fleet(attack={"fraction": 0.3, "kinds": ["sign_flip", "ipm"]}), 2)
    honest = env.unwrapped.scenario.honest.numpy()
    trust = observations[-1]["nodes"][:, 6]
    assert trust[~honest].mean() < trust[honest].mean() - 0.2


def test_security_kpis_count_attackers_and_their_influence():
    env, infos, _, _ = rollout(small_fleet(attack=SIGN_FLIP), 0)
    n_attackers = int((~env.unwrapped.scenario.honest).sum())
    assert n_attackers == 6
    assert all(0 <= info["malicious_participants"] <= n_attackers for info in infos)
    assert max(info["malicious_participants"] for info in infos) > 0
    assert np.mean([info["attack_influence"] for info in infos]) > 0
    assert all(info["reward_components"]["security"] < 0 for info in infos if info["malicious_participants"])
    _, idle_infos, _, _ = rollout(small_fleet(attack=SIGN_FLIP), 0, action=0)
    assert all(info["malicious_participants"] == 0 for info in idle_infos)


def test_no_attackers_means_no_influence_and_full_honesty():
    env, infos, _, _ = rollout(small_fleet(), 0)
    assert bool(env.unwrapped.scenario.honest.all())
    assert all(info["malicious_participants"] == 0 and info["attack_influence"] == 0.0 for info in infos)


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_every_attack_kind_runs_and_keeps_observations_finite(kind):
    config = small_fleet(attack={"fraction": 0.3, "kinds": [kind]})
    config["max_rounds"] = 6
    env = gym.make("GreenGossip/EdgeLearning-v3", config=config)
    obs, _ = env.reset(seed=3)
    for _ in range(6):
        obs, reward, *_ = env.step(np.full(20, 2))
        assert np.isfinite(reward) and all(np.isfinite(v).all() for v in obs.values())


def test_lying_telemetry_reports_a_full_battery_and_clean_grid():
    env, _, observations, _ = rollout(small_fleet(attack={"fraction": 0.3, "kinds": ["lying_telemetry"]}), 0)
    liars = ~env.unwrapped.scenario.honest.numpy()
    nodes = observations[-1]["nodes"]
    assert np.allclose(nodes[liars, 0], 1.0)  # battery_soc
    assert np.all(nodes[liars, 3] < 0.05)  # carbon_now
    true_soc = (env.unwrapped.sim_state.battery_wh / env.unwrapped.scenario.capacity_wh).numpy()
    assert np.allclose(nodes[~liars, 0], true_soc[~liars], atol=1e-6)


def test_attack_start_round_delays_the_attack():
    config = small_fleet(attack={"fraction": 0.3, "kinds": ["sign_flip"], "start_round": 10})
    _, infos, _, _ = rollout(config, 0)
    assert all(info["attack_influence"] == 0.0 for info in infos[:10])
    assert max(info["attack_influence"] for info in infos[10:]) > 0


def test_alie_z_matches_baruch_et_al():
    # n = 50, f = 12 (the paper's worked setting, ~24 %): s = 26 - 12 = 14, z = Φ⁻¹(36/50) ≈ 0.58
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)


def test_robust_aggregators_ignore_an_excluded_neighbour():
    torch.manual_seed(0)
    n, p = 5, 7
    public = torch.randn(n, p)
    own = torch.randn(n, p)
    src = torch.tensor([0, 1, 1, 2, 2, 3, 3, 4, 4, 0])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 4, 3, 0, 4])
    weight = torch.full((10,), 1 / 3)
    mixing = gossip.mixing_matrix(n, src, dst, weight, include_self=False)
    from greengossip.envs.scenario import neighbour_table

    table, valid, slot_weight = (torch.as_tensor(a) for a in neighbour_table(n, src.numpy(), dst.numpy(),
                                                                              weight.numpy()))
    slot_weight = slot_weight.float()
    usable = torch.ones(n, dtype=torch.bool)
    usable[2] = False
    poisoned = public.clone()
    poisoned[2] = 1e6
    for aggregator in ("mean", "median", "trimmed_mean", "clipped_gossip"):
        clean = gossip.aggregate_pull(own, public, mixing, table, valid, slot_weight, aggregator, usable)
        dirty = gossip.aggregate_pull(own, poisoned, mixing, table, valid, slot_weight, aggregator, usable)
        others = torch.tensor([0, 1, 3, 4])
        assert torch.allclose(clean[others], dirty[others]), aggregator


@pytest.mark.parametrize(("n_nodes", "n_envs"), [(32, 3), (100, 2)], ids=["dense blocks", "sparse CSR"])
@pytest.mark.parametrize("aggregator", ["mean", "clipped_gossip"])
def test_weighted_pull_matches_the_gathered_neighbour_models(n_nodes, n_envs, aggregator):
    """Trust-weighted mean and ClippedGossip take Σ_d c_id (x̂_j - x_i) as a product with a matrix laid
    out like W; this is the same pull written out over an (N, D, P) block of the neighbours' models."""
    from greengossip.envs.fleet_batch import FleetBatch
    from greengossip.envs.scenario import make_scenario

    config = load_config("configs/attack_heavy.yaml").model_copy(update={"n_nodes": n_nodes})
    fleet = FleetBatch(config)
    fleet.reset([make_scenario(config, np.random.default_rng(seed)) for seed in range(n_envs)])
    scenario = fleet.scenario
    generator = torch.Generator().manual_seed(3)
    own = torch.randn(scenario.n_nodes, fleet.state.params.shape[1], generator=generator)
    public = own + 0.3 * torch.randn(own.shape, generator=generator)
    public[3] = float("nan")  # a non-finite message must not leak into anyone's pull
    usable = torch.rand(scenario.n_nodes, generator=generator) < 0.7
    usable[3] = False
    trust = torch.rand(scenario.neighbours.shape, generator=generator)
    pull = gossip.aggregate_pull(own, public, scenario.neighbour_mixing, scenario.neighbours,
                                 scenario.neighbour_valid, scenario.neighbour_weight, aggregator, usable,
                                 clip_quantile=0.3, slot_trust=trust, pattern=scenario.neighbour_pattern)

    valid = scenario.neighbour_valid & usable[scenario.neighbours]
    diff = torch.where(usable.unsqueeze(1), public, 0.0)[scenario.neighbours] - own.unsqueeze(1)
    weight = scenario.neighbour_weight * trust
    if aggregator == "clipped_gossip":
        dist = diff.norm(dim=2)
        tau = torch.nanquantile(torch.where(valid, dist, torch.nan), 0.3, dim=1, keepdim=True)
        weight = weight * (tau / dist).clamp(max=1.0).nan_to_num(0.0)
    expected = ((weight * valid).unsqueeze(2) * diff).sum(1)
    assert torch.isfinite(pull).all()
    torch.testing.assert_close(pull, expected, atol=2e-6, rtol=1e-5)
