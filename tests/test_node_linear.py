"""The per-node linear scheduler and its evolution-strategies trainer."""

from __future__ import annotations

import csv
import json
import math

import gymnasium as gym
import numpy as np
import pytest
from conftest import ENV_ID
from pydantic import ValidationError

from greengossip.agents.heuristics import build_heuristic
from greengossip.agents.learned import make_scheduler, scheduler_label
from greengossip.agents.node_linear import (
    ACTIONS,
    DISTRUST,
    FEATURE_GROUPS,
    FEATURE_NAMES,
    N_FEATURES,
    VOTERS,
    NodeLinearScheduler,
    load_node_linear,
    node_features,
    start_weights,
)
from greengossip.envs.errors import UserError
from greengossip.training.evolution import (
    MISSED,
    EvolutionSettings,
    centred_ranks,
    evolve,
    load_evolution_settings,
    paired_score,
)
from greengossip.training.suite_envs import own_size_draw

PRIOR = "carbon_periodic:period=1,trust_threshold=0"


def _episode_actions(scheduler, seed=3, max_steps=12):
    env = gym.make(ENV_ID, config="tiny")
    obs, _ = env.reset(seed=seed)
    actions = []
    for _ in range(max_steps):
        mask = env.unwrapped.action_masks()
        action, _ = scheduler.predict(obs)  # both read the mask from the observation
        assert mask[np.arange(len(action)), action].all(), "chose an action the mask forbids"
        actions.append(np.asarray(action))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()
    return actions


def test_the_start_weights_play_the_prior_rule():
    linear = _episode_actions(NodeLinearScheduler(start_weights()))
    rule = _episode_actions(build_heuristic(PRIOR))
    assert len(linear) == len(rule) > 1
    for ours, theirs in zip(linear, rule):
        np.testing.assert_array_equal(ours, theirs)


# a draw (family, seed, fleet size cut) on which the voter acts otherwise than the prior within 30 rounds
VOTING_DRAWS = {
    "harvest_aware": ("solar_sensor_field", 0, 16),
    "battery_quorum": ("solar_sensor_field", 0, 16),
    "fleet_timing": ("private_sensor_field", 0, 16),
    "carbon_timing": ("continental_grid", 0, 16),
    "carbon_periodic_2": ("continental_grid", 0, 16),
}


@pytest.mark.parametrize("voter", sorted(VOTING_DRAWS))
def test_one_vote_on_plays_that_rule(voter):
    family, seed, max_nodes = VOTING_DRAWS[voter]
    env = gym.make(ENV_ID, config=own_size_draw(family, seed, max_nodes))
    linear, rule = NodeLinearScheduler(start_weights(votes={voter: 1.0})), build_heuristic(VOTERS[voter][0])
    obs, _ = env.reset(seed=seed)
    votes = 0.0
    for _ in range(30):
        ours, _ = linear.predict(obs)
        theirs, _ = rule.predict(obs)
        np.testing.assert_array_equal(ours, theirs)
        votes += node_features(obs)[:, FEATURE_NAMES.index(f"vote_{voter}")].sum()
        obs, _, terminated, truncated, _ = env.step(ours)
        if terminated or truncated:
            break
    env.close()
    assert votes > 0, "the draw never let the voter differ from the prior: the check proved nothing"


@pytest.mark.parametrize("vote", sorted(DISTRUST))
def test_a_trust_vote_plays_the_prior_with_that_trust_cut(vote):
    env = gym.make(ENV_ID, config="attack_heavy")
    obs, _ = env.reset(seed=0)
    for _ in range(12):  # let the neighbours' trust in the attackers fall below both cuts
        obs, *_ = env.step(np.full(obs["nodes"].shape[0], 3))
    cut = DISTRUST[vote]
    distrusted = obs["nodes"][:, FEATURE_NAMES.index("trust")] < cut
    assert distrusted.any() and not distrusted.all()
    action, _ = NodeLinearScheduler(start_weights(votes={vote: 1.0})).predict(obs)
    assert np.all(action[distrusted] == 0)
    rule = build_heuristic(f"carbon_periodic:period=1,trust_threshold={cut}")
    np.testing.assert_array_equal(action, rule.predict(obs)[0])
    env.close()


def test_a_sized_vote_counts_in_large_fleets_only():
    weights = start_weights(votes={"network_aware": 1.0}, from_nodes={"network_aware": 256})
    row, prior = weights[ACTIONS.index(1)], weights[ACTIONS.index(3)]
    for n, holds in ((24, False), (128, False), (256, True), (1024, True)):
        features = np.zeros(N_FEATURES)
        features[FEATURE_NAMES.index("constant")] = 1.0
        features[FEATURE_NAMES.index("vote_network_aware")] = 1.0
        features[FEATURE_NAMES.index("vote_network_aware_x_log2_nodes_centred")] = math.log2(n) - 7.5
        assert bool(features @ row > features @ prior) is holds, n
    assert features @ row == pytest.approx(2.0 * 2.5 / 0.5)  # the margin of 2 at 256 nodes, grown with log2 N
    with pytest.raises(ValueError, match="above 181"):
        start_weights(votes={"network_aware": 1.0}, from_nodes={"network_aware": 128})
    with pytest.raises(ValueError, match="no vote to gate"):
        start_weights(from_nodes={"network_aware": 256})


def test_unknown_voters_are_refused_by_name():
    with pytest.raises(ValueError, match="not a voter; allowed: harvest_aware"):
        start_weights(votes={"sunshine": 1.0})
    with pytest.raises(UserError, match="start_votes"):
        load_evolution_settings("suite", start_votes={"sunshine": 1.0})
    with pytest.raises(UserError, match="start_votes"):
        load_evolution_settings("suite", start_votes={"harvest_aware": -1.0})


def test_random_weights_stay_within_the_mask_and_move_off_the_rule():
    weights = np.random.default_rng(0).normal(size=(len(ACTIONS), N_FEATURES))
    linear = _episode_actions(NodeLinearScheduler(weights))
    rule = _episode_actions(build_heuristic(PRIOR))
    assert any(not np.array_equal(a, b) for a, b in zip(linear, rule))
    assert set(np.concatenate(linear)) <= set(ACTIONS)


def test_features_have_one_column_per_name():
    env = gym.make(ENV_ID, config="tiny")
    obs, _ = env.reset(seed=0)
    features = node_features(obs)
    n = obs["nodes"].shape[0]
    assert features.shape == (n, N_FEATURES) == (n, len(FEATURE_NAMES))
    assert np.all(features[:, FEATURE_NAMES.index("constant")] == 1.0)
    assert np.allclose(features[:, FEATURE_NAMES.index("log2_nodes")], math.log2(n) / 10)
    assert np.isfinite(features).all()
    env.close()


def test_saved_weights_load_by_path_and_play_the_same(tmp_path):
    weights = np.random.default_rng(1).normal(size=(len(ACTIONS), N_FEATURES))
    path = NodeLinearScheduler(weights).save(tmp_path / "es.npz", {"generations_done": 3})
    loaded = make_scheduler(str(path))
    np.testing.assert_array_equal(loaded.weights, weights)
    assert scheduler_label(str(path)) == "es"
    for ours, theirs in zip(_episode_actions(loaded), _episode_actions(NodeLinearScheduler(weights))):
        np.testing.assert_array_equal(ours, theirs)


def test_bad_weight_files_are_refused_by_name(tmp_path):
    with pytest.raises(UserError, match="no node-linear scheduler"):
        load_node_linear(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(UserError, match="not a node-linear scheduler file"):
        load_node_linear(junk)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros((3, 5)), actions=np.array([0, 1, 3]), features=np.array(["a"] * 5))
    with pytest.raises(UserError, match="this version reads actions"):
        load_node_linear(other)
    with pytest.raises(ValueError, match="shape"):
        NodeLinearScheduler(np.zeros((2, 2)))


def test_the_paired_score_ranks_misses_last_and_is_clipped():
    assert paired_score(5.0, True, 5.0, True) == 0.0
    assert paired_score(4.0, True, 5.0, True) > 0 > paired_score(6.0, True, 5.0, True)
    assert paired_score(1e-6, True, 100.0, True) == pytest.approx(math.log(3.0))
    assert paired_score(100.0, True, 0.0, True) == pytest.approx(-math.log(3.0))
    assert paired_score(0.0, False, 5.0, True) == MISSED < paired_score(1e9, True, 1.0, True)
    assert paired_score(5.0, True, 5.0, False) == pytest.approx(math.log(3.0))
    ranks = centred_ranks(np.array([3.0, -1.0, 2.0]))
    np.testing.assert_allclose(ranks, [0.5, -0.5, 0.0])


def test_bad_settings_are_refused_by_field(tmp_path):
    with pytest.raises(UserError, match="sigma"):
        load_evolution_settings("suite", sigma=0)
    with pytest.raises(UserError, match="unknown families"):
        load_evolution_settings("suite", families=["atlantis"])
    with pytest.raises(UserError, match="reference"):
        load_evolution_settings("suite", reference="no_such_rule")
    with pytest.raises(UserError, match="shipped names: suite"):
        load_evolution_settings("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("generations: 2\nspeed: 3\n")
    with pytest.raises(UserError, match="speed"):
        load_evolution_settings(bad)


def test_one_generation_writes_the_run_and_repeats_for_a_seed(tmp_path):
    settings = EvolutionSettings(generations=1, pairs=1, scenarios_per_family=1, families=("solar_sensor_field",),
                                 max_nodes=16, workers=1, seed=5)
    runs = []
    for name in ("a", "b"):
        path = evolve(settings, tmp_path / name, log=lambda _line: None)
        runs.append(load_node_linear(path).weights)
        with (tmp_path / name / "progress.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 1 and "solar_sensor_field/current" in rows[0]
        # the current weights are the start, which plays the reference rule: a saving of exactly 0
        assert float(rows[0]["current"]) == 0.0
        record = json.loads((tmp_path / name / "record.json").read_text())
        assert record["generations_done"] == 1 and record["settings"]["seed"] == 5
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], start_weights())  # one Adam step moved them


def test_keep_norm_holds_the_weights_scale(tmp_path):
    votes = {"harvest_aware": 1.0}
    settings = EvolutionSettings(generations=2, pairs=1, scenarios_per_family=1, families=("solar_sensor_field",),
                                 max_nodes=16, workers=1, seed=5, start_votes=votes, keep_norm=True)
    weights = load_node_linear(evolve(settings, tmp_path, log=lambda _line: None)).weights
    start = start_weights(votes=votes)
    assert not np.allclose(weights, start)
    assert np.linalg.norm(weights) == pytest.approx(np.linalg.norm(start))


def test_zero_generations_write_the_start(tmp_path):
    votes, gate = {"harvest_aware": 1.0, "network_aware": 1.0}, {"network_aware": 256}
    settings = EvolutionSettings(generations=0, families=("solar_sensor_field",), max_nodes=16, workers=1,
                                 start_votes=votes, start_votes_from_nodes=gate)
    path = evolve(settings, tmp_path, log=lambda _line: None)
    np.testing.assert_array_equal(load_node_linear(path).weights, start_weights(votes=votes, from_nodes=gate))
    np.testing.assert_array_equal(load_node_linear(tmp_path / "start_weights.npz").weights,
                                  start_weights(votes=votes, from_nodes=gate))
    assert json.loads((tmp_path / "record.json").read_text())["generations_done"] == 0
    assert not (tmp_path / "progress.csv").exists()


def test_frozen_features_keep_their_start_weights(tmp_path):
    votes, gate = {"harvest_aware": 1.0, "network_aware": 1.0}, {"network_aware": 256}
    frozen = ("vote_network_aware_x_log2_nodes_centred", "vote_harvest_aware", "fleet")  # names and a group
    settings = EvolutionSettings(generations=2, pairs=1, scenarios_per_family=1, families=("solar_sensor_field",),
                                 max_nodes=16, workers=1, seed=5, start_votes=votes, start_votes_from_nodes=gate,
                                 keep_norm=True, frozen=frozen)
    weights = load_node_linear(evolve(settings, tmp_path, log=lambda _line: None)).weights
    start = start_weights(votes=votes, from_nodes=gate)
    columns = [FEATURE_NAMES.index(name) for name in (*frozen[:2], *FEATURE_GROUPS["fleet"])]
    free = [i for i in range(N_FEATURES) if i not in columns]
    np.testing.assert_array_equal(weights[:, columns], start[:, columns])
    assert not np.allclose(weights[:, free], start[:, free])
    # keep_norm holds the free weights' norm, not the whole matrix's
    assert np.linalg.norm(weights[:, free]) == pytest.approx(np.linalg.norm(start[:, free]))


def test_frozen_features_are_checked_by_name():
    with pytest.raises(ValidationError, match="unknown features .*'speed'.*allowed"):
        EvolutionSettings(frozen=("speed",))
    with pytest.raises(ValidationError, match="unknown features .*'fleets'.*allowed: the groups own, global"):
        EvolutionSettings(frozen=("fleets",))
    with pytest.raises(ValidationError, match="every feature is frozen"):
        EvolutionSettings(frozen=FEATURE_NAMES)
    with pytest.raises(ValidationError, match="every feature is frozen"):
        EvolutionSettings(frozen=tuple(FEATURE_GROUPS))


def test_selection_keeps_the_best_validated_weights(tmp_path):
    settings = EvolutionSettings(generations=2, pairs=1, scenarios_per_family=1, families=("solar_sensor_field",),
                                 max_nodes=16, workers=1, seed=5, sigma=2.0, learning_rate=1.0, select_every=1,
                                 select_seeds_per_family=1, select_max_nodes=16)
    weights = load_node_linear(evolve(settings, tmp_path, log=lambda _line: None)).weights
    record = json.loads((tmp_path / "record.json").read_text())
    scores = {int(g): s for g, s in record["validation_scores"].items()}
    assert sorted(scores) == [0, 1, 2]
    best = max(scores.values())
    assert record["selected_generation"] == min(g for g, s in scores.items() if s == best)
    last = load_node_linear(tmp_path / "last_weights.npz").weights
    assert not np.allclose(last, start_weights())
    if record["selected_generation"] == 0:
        np.testing.assert_array_equal(weights, start_weights())
    elif record["selected_generation"] == 2:
        np.testing.assert_array_equal(weights, last)
    with (tmp_path / "progress.csv").open() as handle:
        assert [row["validation"] != "" for row in csv.DictReader(handle)] == [True, True]


def test_without_selection_the_last_weights_are_the_run_s(tmp_path):
    settings = EvolutionSettings(generations=1, pairs=1, scenarios_per_family=1, families=("solar_sensor_field",),
                                 max_nodes=16, workers=1, seed=5)
    evolve(settings, tmp_path, log=lambda _line: None)
    assert not (tmp_path / "last_weights.npz").exists()
    assert "selected_generation" not in json.loads((tmp_path / "record.json").read_text())


def _search_rows(path):
    with path.open() as handle:
        return [{**row, "round": int(row["round"]), **{key: float(row[key]) for key in ("score", "gain", "gain_se")}}
                for row in csv.DictReader(handle)]


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_the_vote_search_keeps_the_clear_toggle_that_scores_best_on_train_draws(tmp_path, confidence):
    settings = EvolutionSettings(generations=0, families=("solar_sensor_field",), max_nodes=16, workers=1,
                                 search_votes=("harvest_aware", "carbon_periodic_2"), search_seeds_per_family=3,
                                 search_rounds=2, search_min_gain=0.0, search_confidence=confidence)
    weights = load_node_linear(evolve(settings, tmp_path, log=lambda _line: None)).weights
    rows = _search_rows(tmp_path / "search.csv")
    assert rows[0]["move"] == "start" and rows[0]["score"] == 0.0  # the prior plays the reference
    assert [row["move"] for row in rows if row["round"] == 1] == ["+harvest_aware", "+carbon_periodic_2"]
    assert all(int(row["draws"]) == 3 for row in rows)
    # a toggle's gain is its score's rise over the mix its round started from
    for row in rows:
        if row["round"] == 1:
            assert row["gain"] == pytest.approx(row["score"] - rows[0]["score"])
            assert row["gain_se"] >= 0
    # replay the search's rule from its rows: of a round's toggles with a clear gain, the best is kept
    kept = "(prior)"
    for round_ in (1, 2):
        clear = [row for row in rows if row["round"] == round_
                 and row["gain"] > 0 and row["gain"] - confidence * row["gain_se"] > 0]
        if not clear:
            break
        kept = max(clear, key=lambda row: row["score"])["votes"]
    record = json.loads((tmp_path / "record.json").read_text())
    assert ("+".join(sorted(record["searched_votes"])) or "(prior)") == kept
    np.testing.assert_array_equal(weights, start_weights(votes=record["searched_votes"]))
    np.testing.assert_array_equal(load_node_linear(tmp_path / "start_weights.npz").weights, weights)


def test_the_gain_s_standard_error_comes_from_paired_per_draw_differences():
    from greengossip.training.evolution import VoteSearch

    search = VoteSearch.__new__(VoteSearch)  # the arithmetic alone, without a pool to play in
    search.families, search.rows = ["a", "b"], []
    search.scenarios = [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    search.reference = [(1.0, True)] * 4
    search.settings = EvolutionSettings(search_min_gain=0.0, search_confidence=1.0)
    results = [(1.0, True), (0.5, True), (1.0, True), (1.0, True)]
    base = np.zeros(4)
    row, paired = search._row(1, "+x", {"x": 1.0}, results, base)
    np.testing.assert_allclose(paired, [0.0, math.log(2.0), 0.0, 0.0])
    # family a gains log 2 / 2 on average, b nothing; the mean over families is log 2 / 4
    assert row["gain"] == pytest.approx(math.log(2.0) / 4)
    # s.e. = sqrt(var_a / 2 + var_b / 2) / 2 with var_a = (log 2)^2 / 2 (ddof 1), var_b = 0
    assert row["gain_se"] == pytest.approx(math.sqrt(math.log(2.0) ** 2 / 4) / 2)
    # a gain of exactly one standard error is not clear at 1, and is at 0.5
    assert not search.clear(row)
    search.settings = EvolutionSettings(search_min_gain=0.0, search_confidence=0.5)
    assert search.clear(row)
    assert not search.clear({**row, "gain": 0.0, "gain_se": 0.0})  # no gain is never clear
    search.settings = EvolutionSettings(search_min_gain=0.2, search_confidence=0.0)
    assert not search.clear(row)  # log 2 / 4 = 0.17: under the least gain


def test_a_search_that_gains_too_little_keeps_the_start(tmp_path):
    votes = {"harvest_aware": 1.0}
    settings = EvolutionSettings(generations=0, families=("solar_sensor_field",), max_nodes=16, workers=1,
                                 start_votes=votes, search_votes=("harvest_aware", "strongly_distrusted"),
                                 search_seeds_per_family=1, search_min_gain=5.0)
    weights = load_node_linear(evolve(settings, tmp_path, log=lambda _line: None)).weights
    np.testing.assert_array_equal(weights, start_weights(votes=votes))
    rows = _search_rows(tmp_path / "search.csv")
    assert [row["move"] for row in rows] == ["start", "-harvest_aware", "+strongly_distrusted"]


def test_search_votes_are_checked_by_name():
    with pytest.raises(ValidationError, match="unknown voters .*'sunshine'.*allowed: harvest_aware"):
        EvolutionSettings(search_votes=("sunshine",))
    with pytest.raises(ValidationError, match="named twice"):
        EvolutionSettings(search_votes=("harvest_aware", "harvest_aware"))
    with pytest.raises(ValidationError, match="network_aware.*gated by the fleet size"):
        EvolutionSettings(start_votes={"network_aware": 1.0}, start_votes_from_nodes={"network_aware": 256},
                          search_votes=("network_aware",))
