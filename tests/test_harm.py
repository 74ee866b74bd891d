"""Attackers see only their neighbours, the adaptive attacks do what their papers say, and harm is the
honest accuracy lost against the attack-free twin."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_variant

from greengossip import envs  # noqa: F401
from greengossip.envs.dynamics import attacks
from greengossip.envs.scenario import make_scenario
from greengossip.envs.state import initial_state


def _attack_env(kinds, aggregator="mean", harm_twin=True, rounds=25, fraction=0.3):
    config = tiny_variant(n_nodes=16, max_rounds=rounds, target_accuracy=1.0,
                          attack={"fraction": fraction, "kinds": kinds, "harm_twin": harm_twin},
                          defence={"aggregator": aggregator})
    return gym.make("GreenGossip/EdgeLearning-v3", config=config)


def _run(env, seed=0):
    env.reset(seed=seed)
    infos = []
    done = False
    while not done:
        *_, terminated, truncated, info = env.step(np.full(env.unwrapped.n_nodes, 2))
        infos.append(info)
        done = terminated or truncated
    return infos


def test_sign_flip_against_the_plain_mean_costs_accuracy_and_the_security_term_charges_it():
    infos = _run(_attack_env(["sign_flip"]))
    harm = np.array([info["harm"] for info in infos])
    assert harm[-5:].mean() > 0.1
    security = np.array([info["reward_components"]["security"] for info in infos])
    np.testing.assert_allclose(security, -np.maximum(harm, 0.0))


def test_no_attackers_no_harm():
    infos = _run(_attack_env(["sign_flip"], fraction=0.0), seed=1)
    assert all(info["harm"] == 0.0 and info["reward_components"]["security"] == 0.0 for info in infos)


def test_without_the_twin_harm_is_unknown_and_influence_stands_in():
    infos = _run(_attack_env(["sign_flip"], harm_twin=False, rounds=6))
    assert all(math.isnan(info["harm"]) for info in infos)
    for info in infos:
        assert info["reward_components"]["security"] == pytest.approx(-min(info["attack_influence"], 10.0))


def test_the_twin_does_not_change_the_episode():
    with_twin = _run(_attack_env(["alie", "ipm"], rounds=8))
    without = _run(_attack_env(["alie", "ipm"], harm_twin=False, rounds=8))
    assert [i["accuracy"] for i in with_twin] == [i["accuracy"] for i in without]


@pytest.mark.parametrize("kind", ["alie", "ipm", "dissensus", "min_max"])
def test_attackers_build_their_message_from_their_neighbours_only(kind):
    config = tiny_variant(n_nodes=16, attack={"fraction": 0.25, "kinds": [kind]})
    scenario = make_scenario(config, np.random.default_rng(4))
    state = initial_state(config, scenario)
    generator = torch.Generator().manual_seed(0)
    public = state.params + 0.1 * torch.randn(state.params.shape, generator=generator)
    rows = (~scenario.honest).nonzero().squeeze(1)
    args = (config.attack, config.defence, scenario.attack_kind, scenario.honest, state.params)
    tail = (scenario.neighbours, scenario.neighbour_valid, scenario.neighbour_weight, rows, None,
            torch.ones(scenario.n_nodes))
    before = attacks.crafted_broadcasts(*args, public, *tail)
    attacker = int(rows[0])
    heard = set(scenario.neighbours[attacker][scenario.neighbour_valid[attacker]].tolist())
    two_hops = set(heard)
    for j in heard:
        two_hops |= set(scenario.neighbours[j][scenario.neighbour_valid[j]].tolist())
    # dissensus reads its targets' consensus steps: two hops; the others one
    unseen = [j for j in range(scenario.n_nodes) if j not in (two_hops if kind == "dissensus" else heard)
              and j != attacker]
    assert unseen, "every node is a neighbour: the test cannot tell"
    moved = public.clone()
    moved[unseen] += 5.0
    after = attacks.crafted_broadcasts(*args, moved, *tail)
    torch.testing.assert_close(after[0], before[0])
    moved[sorted(heard)[0]] += 5.0
    assert not torch.allclose(attacks.crafted_broadcasts(*args, moved, *tail)[0], before[0])


def test_min_max_stays_within_the_honest_neighbours_spread_and_aggregator_aware_at_the_median():
    config = tiny_variant(n_nodes=16, attack={"fraction": 0.25, "kinds": ["min_max"]})
    scenario = make_scenario(config, np.random.default_rng(2))
    state = initial_state(config, scenario)
    public = state.params + 0.1 * torch.randn(state.params.shape, generator=torch.Generator().manual_seed(1))
    rows = (~scenario.honest).nonzero().squeeze(1)
    for aggregator in ("mean", "clipped_gossip"):
        defence = config.defence.model_copy(update={"aggregator": aggregator})
        message = attacks.crafted_broadcasts(config.attack, defence, scenario.attack_kind, scenario.honest,
                                             state.params, public, scenario.neighbours, scenario.neighbour_valid,
                                             scenario.neighbour_weight, rows, None, torch.ones(scenario.n_nodes))
        for a, row in enumerate(rows.tolist()):
            slots = scenario.neighbours[row][scenario.neighbour_valid[row]]
            honest = public[slots[scenario.honest[slots]]].double()
            if len(honest) < 2:
                continue
            to_message = torch.linalg.vector_norm(honest - message[a].double(), dim=1)
            mean = honest.mean(0)
            if aggregator == "mean":  # Min-Max: no farther from any honest model than the honest models' spread
                assert float(to_message.max()) <= float(torch.cdist(honest, honest).max()) * (1 + 1e-4)
                assert float(torch.linalg.vector_norm(message[a].double() - mean)) > 0
            else:  # as far from the honest mean as the median honest neighbour
                median = torch.linalg.vector_norm(honest - mean, dim=1).sort().values[(len(honest) - 1) // 2]
                gap = torch.linalg.vector_norm(message[a].double() - mean)
                assert float(gap) == pytest.approx(float(median), rel=1e-4)


def test_dissensus_drives_honest_models_apart_against_the_plain_mean():
    attacked = _run(_attack_env(["dissensus"], rounds=15), seed=3)
    clean = _run(_attack_env(["dissensus"], fraction=0.0, rounds=15), seed=3)
    assert np.mean([i["consensus_distance"] for i in attacked[5:]]) > 2 * np.mean(
        [i["consensus_distance"] for i in clean[5:]])
