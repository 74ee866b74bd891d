"""Rollout labels for the rule switch (``training/rule_rollouts.py``): replayed copies, labelled states,
and the fit of the switch's logits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from greengossip.agents.learned import make_scheduler
from greengossip.agents.rule_switching import RuleSwitchingScheduler, check_switchable, rule_actions, summary_size
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.training.oracle import clone_env
from greengossip.training.rule_rollouts import (
    OUTCOMES,
    LabelJob,
    RolloutLabels,
    fit_switch,
    label_scenario,
    rule_outcomes,
)
from greengossip.training.rule_switching import RuleSwitchingVecEnv, new_switching_model
from greengossip.training.settings import SettingsError, load_settings
from tests.conftest import tiny_variant, train_small_suite_run

RULES = ["carbon_periodic:period=1,trust_threshold=0", "harvest_aware:period=1", "carbon_periodic:period=2"]


def _play(env, rules, choices, observation, measure="return"):
    """The return (or the gCO2e: ``measure="carbon_g"``) of ``env`` from its state when round i plays
    ``rules[choices(i)]``, to the end."""
    total, played, done = 0.0, 0, False
    while not done:
        batched = {key: np.asarray(value)[None] for key, value in observation.items()}
        observation, reward, terminated, truncated, info = env.step(
            rule_actions(rules, batched, [choices(played)])[0])
        total += reward if measure == "return" else info["carbon_g"]
        played += 1
        done = terminated or truncated
    return total


def _returns(env, rules, **kwargs):
    return rule_outcomes(env, rules, **kwargs)[:, OUTCOMES.index("return")]


def test_each_copy_replays_the_env_s_future_and_leaves_the_env_where_it_was():
    rules = check_switchable(RULES)
    config = tiny_variant(n_nodes=6, observation__adjacency=False)
    env = EdgeLearningEnv(config)
    observation, _ = env.reset(seed=5)
    for _ in range(3):
        observation, *_ = env.step(rule_actions(rules, {k: np.asarray(v)[None] for k, v in observation.items()},
                                                [0])[0])
    round_before = int(env.unwrapped.sim_state.round[0])
    outcomes = rule_outcomes(env, rules, hold=2)
    assert int(env.unwrapped.sim_state.round[0]) == round_before  # the copies, not the env, were played
    assert outcomes.shape == (3, len(OUTCOMES)) and np.isfinite(outcomes).all()
    # the env itself, played on from here: rule 1 for two rounds and rule 0 after, gives the copy's return
    # and carbon (two plays of the env from one state: the first on a clone)
    twin = clone_env(env)
    copy_return, copy_carbon, _ = outcomes[1]
    assert _play(twin, rules, lambda i: 1 if i < 2 else 0, observation, "carbon_g") == pytest.approx(
        copy_carbon, rel=1e-6)
    assert copy_carbon > 0
    assert _play(env, rules, lambda i: 1 if i < 2 else 0, observation) == pytest.approx(copy_return, rel=1e-6)


def test_with_the_same_rule_continued_each_copy_returns_that_rule_s_own_value():
    rules = check_switchable(RULES)
    env = EdgeLearningEnv(tiny_variant(n_nodes=6, observation__adjacency=False))
    observation, _ = env.reset(seed=8)
    first = _returns(env, rules, hold=2, continuation="first_rule")
    same = _returns(env, rules, hold=2, continuation="same_rule")
    assert same[0] == pytest.approx(first[0], rel=1e-9)  # the first rule continues itself either way
    assert not np.allclose(same[1:], first[1:])  # the other rules' tails differ
    assert _play(env, rules, lambda i: 2, observation) == pytest.approx(same[2], rel=1e-6)


def test_a_labelled_scenario_has_one_summary_and_one_return_per_rule_for_each_labelled_round():
    settings = load_settings("suite_rule_switch")
    job = LabelJob(settings.suite, "solar_sensor_field", 11, tuple(RULES), settings.reward, hold=2, every=10,
                   max_nodes=6)
    labels = label_scenario(job)
    count = len(labels.returns)
    assert count >= 1 and labels.summaries.shape == (count, summary_size())
    assert labels.returns.shape == (count, len(RULES)) and (labels.families == "solar_sensor_field").all()
    for measure in ("return", "carbon_to_target"):
        np.testing.assert_array_equal(labels.advantages(measure)[:, 0], 0.0)
    assert (labels.carbon_g >= 0).all() and ((labels.shortfall >= 0) & (labels.shortfall <= 1)).all()
    joined = RolloutLabels.join([labels, labels])
    assert len(joined.returns) == 2 * count
    np.testing.assert_array_equal(joined.carbon_g[count:], labels.carbon_g)


def test_the_base_rule_s_labels_from_the_episode_s_own_tail_equal_a_played_copy_s(tmp_path):
    """Rolled in with the base rule, its column is summed from the episode itself; rolled in with a switch
    that always picks the base rule, the same states are labelled with every copy played."""
    settings = load_settings("suite_rule_switch")
    venv = RuleSwitchingVecEnv(GossipVecEnv(1, config=tiny_variant(n_nodes=6, observation__adjacency=False)), RULES)
    always_first = new_switching_model(venv, first_rule_bias=50.0, net_arch=[8], seed=0, n_steps=8, batch_size=8)
    always_first.save(tmp_path / "first.zip")
    job = LabelJob(settings.suite, "solar_sensor_field", 11, tuple(RULES), settings.reward, hold=2, every=10,
                   max_nodes=6, continuation="same_rule")
    from_tail = label_scenario(job)
    played = label_scenario(dataclasses.replace(job, rollin=str(tmp_path / "first.zip")))
    np.testing.assert_array_equal(from_tail.summaries, played.summaries)
    for name in ("returns", "carbon_g", "shortfall"):
        np.testing.assert_allclose(getattr(from_tail, name), getattr(played, name), rtol=1e-9, atol=1e-12)
    assert from_tail.carbon_g[:, 0].max() > 0


def _labels(returns, carbon_g, shortfall, summaries=None):
    rows = len(returns)
    summaries = np.zeros((rows, summary_size()), np.float32) if summaries is None else summaries
    return RolloutLabels(summaries, np.asarray(returns, float), np.asarray(carbon_g, float),
                         np.asarray(shortfall, float), np.full(rows, "a", dtype=object))


def test_carbon_to_target_ranks_a_miss_below_every_copy_that_reaches_the_target():
    labels = _labels(returns=[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                     carbon_g=[[5.0, 9.0, 0.5], [4.0, 1.0, 2.0], [0.0, 0.0, 0.0]],
                     shortfall=[[0.0, 0.0, 0.2], [0.3, 0.1, 0.3], [0.0, 0.1, 0.0]])
    values = labels.values("carbon_to_target")
    # state 0: rule 2 emits least but misses; of those that reach the target, rule 0 emits least
    assert np.argsort(-values[0]).tolist() == [0, 1, 2]
    # state 1: every copy misses; the one closest to the target ranks first, and two that fall equally short
    # rank equal, whatever they emit
    assert values[1].argmax() == 1 and values[1][0] == values[1][2]
    # state 2: nothing more is emitted whatever the rule, and the copy that misses still ranks last
    assert values[2][0] == values[2][2] == 0.0 and values[2][1] < 0.0
    np.testing.assert_array_equal(labels.values("return"), labels.returns)


@pytest.mark.parametrize("measure", ["return", "carbon_to_target"])
def test_the_fit_plays_the_rule_with_the_largest_advantage(measure):
    """Synthetic labels in which the best rule depends on one summary feature's sign: after the fit the
    deterministic switch picks it on nearly every state, where the untrained switch picks the first rule.
    The rule that returns most emits most, so the two measures pick opposite rules."""
    rng = np.random.default_rng(0)
    summaries = rng.uniform(-1.0, 1.0, (600, summary_size())).astype(np.float32)
    sign = summaries[:, 0] > 0
    returns = np.zeros((600, 3))
    returns[:, 1] = np.where(sign, 0.5, -0.5)
    returns[:, 2] = np.where(sign, -0.2, 0.3)
    families = np.where(summaries[:, 1] > 0, "a", "b").astype(object)
    labels = RolloutLabels(summaries, returns, 1.0 + returns, np.zeros_like(returns), families)
    best = np.where(sign, 1, 2) if measure == "return" else np.where(sign, 2, 1)
    venv = RuleSwitchingVecEnv(GossipVecEnv(1, config=tiny_variant(n_nodes=6, observation__adjacency=False)), RULES)
    model = new_switching_model(venv, first_rule_bias=2.0, net_arch=[32], seed=0, n_steps=8, batch_size=8)
    before, _ = model.predict(summaries, deterministic=True)
    assert (before == 0).all()
    fit = fit_switch(model, labels, epochs=60, learning_rate=3e-3, batch_size=64, seed=0, measure=measure)
    after, _ = model.predict(summaries, deterministic=True)
    assert fit["agreement"] > 0.9 and np.mean(after == best) > 0.9
    realised = labels.advantages(measure)[np.arange(600), after]
    assert fit["gain"] == pytest.approx(float(realised.mean()), abs=1e-9)
    assert fit["gain"] <= fit["best_gain"] + 1e-12


@pytest.mark.parametrize(("changes", "match"), [
    ({"every": 0}, r"rule_switch\.rollout_labels\.every"),
    ({"max_nodes": 1}, r"rule_switch\.rollout_labels\.max_nodes"),
    ({"scenarios": 3}, r"rule_switch\.rollout_labels\.scenarios"),
    ({"continuation": "best_rule"}, r"rule_switch\.rollout_labels\.continuation.*first_rule.*same_rule"),
    ({"measure": "carbon"}, r"rule_switch\.rollout_labels\.measure.*return.*carbon_to_target"),
    ({"family_max_nodes": {"large": 256}}, r"family_max_nodes.*unknown families \['large'\].*large_network"),
    ({"family_max_nodes": {"large_network": 1}}, r"family_max_nodes\.large_network = 1: .*greater than or equal to 2"),
])
def test_bad_rollout_label_settings_name_the_field(changes, match):
    with pytest.raises(SettingsError, match=match):
        load_settings("suite_rule_switch", rule_switch={"rules": RULES, "rollout_labels": changes})


def test_the_train_command_fits_a_switch_to_rollout_labels_before_ppo(tmp_path):
    record = train_small_suite_run(
        tmp_path, "suite_rule_switch", "ppo: {n_steps: 8, batch_size: 32}\n"
        "suite: {families: [solar_sensor_field], n_nodes: 6}\n"
        "rule_switch: {hold: 2, rollout_labels: {scenarios_per_family: 1, every: 12, max_nodes: 6, epochs: 2, "
        "iterations: 2, measure: carbon_to_target}}\n")
    assert record["settings"]["rule_switch"]["rollout_labels"]["every"] == 12
    log = (record["out"] / "train.log").read_text()
    assert "batch 1 of 2 (the first rule's roll-in)" in log and "batch 2 of 2 (the fitted switch's roll-in)" in log
    assert log.count("rule switch fitted to") == 2 and log.count("over the first rule on carbon_to_target") == 2
    first_fit = make_scheduler(record["out"] / "rollout_labels_1.zip")  # the second iteration's roll-in
    assert isinstance(first_fit, RuleSwitchingScheduler) and first_fit.hold == 2
    assert make_scheduler(record["out"] / "best_model.zip").hold == 2


def test_a_family_named_in_family_max_nodes_is_labelled_at_its_own_cut(monkeypatch):
    from greengossip.training import rule_rollouts

    settings = load_settings("suite_rule_switch", suite={"families": ["solar_sensor_field", "large_network"]})
    cuts: dict[str, set[int]] = {}

    def record(job):
        cuts.setdefault(job.family, set()).add(job.max_nodes)
        return RolloutLabels(*(np.zeros((0, width)) for width in (summary_size(), 3, 3, 3)),
                             np.zeros(0, dtype=object))

    monkeypatch.setattr(rule_rollouts, "label_scenario", record)
    rule_rollouts.collect_labels(settings.suite, RULES, settings.reward, seed=0, scenarios_per_family=2, hold=2,
                                 every=6, max_nodes=64, family_max_nodes={"large_network": 1024})
    assert cuts == {"solar_sensor_field": {64}, "large_network": {1024}}


def test_the_carbon_rollouts_recipe_carries_its_deadline_guard_into_the_roll_in_and_the_model(tmp_path):
    """configs/train/suite_carbon_rollouts.yaml on a small slice: one family, six nodes, two small label
    batches (the second rolled in with the first fit), one update."""
    record = train_small_suite_run(
        tmp_path, "suite_carbon_rollouts", "ppo: {n_steps: 8, batch_size: 32}\n"
        "suite: {families: [solar_sensor_field], n_nodes: 6}\n"
        "rule_switch: {rollout_labels: {scenarios_per_family: 1, every: 24, max_nodes: 6, epochs: 2, iterations: 2, "
        "batches_from_first_rule: 1, family_max_nodes: {large_network: 6}}}\n")
    guard = record["settings"]["rule_switch"]["guard"]
    assert guard is not None
    for name in ("rollout_labels_1.zip", "best_model.zip"):
        assert make_scheduler(record["out"] / name).guard == guard
    assert "the first rule plays from 30% of the rounds to the deadline on" in (record["out"] / "train.log").read_text()
