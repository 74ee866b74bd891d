"""Rollout labels for the rule switch (``training/rule_rollouts.py``): replayed copies, labelled states,
and the fit of the switch's logits."""

from __future__ import annotations

import numpy as np
import pytest

from greengossip.agents.learned import make_scheduler
from greengossip.agents.rule_switching import RuleSwitchingScheduler, check_switchable, rule_actions, summary_size
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.training.rule_rollouts import RolloutLabels, fit_switch, label_scenario, rule_returns
from greengossip.training.rule_switching import RuleSwitchingVecEnv, new_switching_model
from greengossip.training.settings import SettingsError, load_settings
from tests.conftest import tiny_variant, train_small_suite_run

RULES = ["carbon_periodic:period=1,trust_threshold=0", "harvest_aware:period=1", "carbon_periodic:period=2"]


def _play(env, rules, choices, observation):
    """The return of ``env`` from its state when round i plays ``rules[choices(i)]``, to the end."""
    total, played, done = 0.0, 0, False
    while not done:
        batched = {key: np.asarray(value)[None] for key, value in observation.items()}
        observation, reward, terminated, truncated, _ = env.step(rule_actions(rules, batched, [choices(played)])[0])
        total += reward
        played += 1
        done = terminated or truncated
    return total


def test_each_copy_replays_the_env_s_future_and_leaves_the_env_where_it_was():
    rules = check_switchable(RULES)
    config = tiny_variant(n_nodes=6, observation__adjacency=False)
    env = EdgeLearningEnv(config)
    observation, _ = env.reset(seed=5)
    for _ in range(3):
        observation, *_ = env.step(rule_actions(rules, {k: np.asarray(v)[None] for k, v in observation.items()},
                                                [0])[0])
    round_before = int(env.unwrapped.sim_state.round[0])
    returns = rule_returns(env, rules, hold=2)
    assert int(env.unwrapped.sim_state.round[0]) == round_before  # the copies, not the env, were played
    # the env itself, played on from here: rule 1 for two rounds and rule 0 after, gives the copy's return
    assert _play(env, rules, lambda i: 1 if i < 2 else 0, observation) == pytest.approx(returns[1], rel=1e-6)
    assert returns.shape == (3,) and np.isfinite(returns).all()


def test_with_the_same_rule_continued_each_copy_returns_that_rule_s_own_value():
    rules = check_switchable(RULES)
    env = EdgeLearningEnv(tiny_variant(n_nodes=6, observation__adjacency=False))
    observation, _ = env.reset(seed=8)
    first = rule_returns(env, rules, hold=2, continuation="first_rule")
    same = rule_returns(env, rules, hold=2, continuation="same_rule")
    assert same[0] == pytest.approx(first[0], rel=1e-9)  # the first rule continues itself either way
    assert not np.allclose(same[1:], first[1:])  # the other rules' tails differ
    assert _play(env, rules, lambda i: 2, observation) == pytest.approx(same[2], rel=1e-6)


def test_a_labelled_scenario_has_one_summary_and_one_return_per_rule_for_each_labelled_round():
    settings = load_settings("suite_rule_switch")
    job = (settings.suite, "solar_sensor_field", 11, RULES, settings.reward, 2, 10, 6, None, "first_rule")
    labels = label_scenario(job)
    count = len(labels.returns)
    assert count >= 1 and labels.summaries.shape == (count, summary_size())
    assert labels.returns.shape == (count, len(RULES)) and (labels.families == "solar_sensor_field").all()
    np.testing.assert_array_equal(labels.advantages[:, 0], 0.0)
    joined = RolloutLabels.join([labels, labels])
    assert len(joined.returns) == 2 * count


def test_the_fit_plays_the_rule_with_the_largest_advantage():
    """Synthetic labels in which the best rule depends on one summary feature's sign: after the fit the
    deterministic switch picks it on nearly every state, where the untrained switch picks the first rule."""
    rng = np.random.default_rng(0)
    summaries = rng.uniform(-1.0, 1.0, (600, summary_size())).astype(np.float32)
    sign = summaries[:, 0] > 0
    returns = np.zeros((600, 3))
    returns[:, 1] = np.where(sign, 0.5, -0.5)
    returns[:, 2] = np.where(sign, -0.2, 0.3)
    families = np.where(summaries[:, 1] > 0, "a", "b").astype(object)
    labels = RolloutLabels(summaries, returns, families)
    venv = RuleSwitchingVecEnv(GossipVecEnv(1, config=tiny_variant(n_nodes=6, observation__adjacency=False)), RULES)
    model = new_switching_model(venv, first_rule_bias=2.0, net_arch=[32], seed=0, n_steps=8, batch_size=8)
    before, _ = model.predict(summaries, deterministic=True)
    assert (before == 0).all()
    fit = fit_switch(model, labels, epochs=60, learning_rate=3e-3, batch_size=64, seed=0)
    after, _ = model.predict(summaries, deterministic=True)
    assert fit["agreement"] > 0.9 and np.mean(after == np.where(sign, 1, 2)) > 0.9
    assert fit["gain"] == pytest.approx(float(returns[np.arange(600), after].mean()), abs=1e-9)
    assert fit["gain"] <= fit["best_gain"] + 1e-12


@pytest.mark.parametrize(("changes", "match"), [
    ({"every": 0}, r"rule_switch\.rollout_labels\.every"),
    ({"max_nodes": 1}, r"rule_switch\.rollout_labels\.max_nodes"),
    ({"scenarios": 3}, r"rule_switch\.rollout_labels\.scenarios"),
    ({"continuation": "best_rule"}, r"rule_switch\.rollout_labels\.continuation.*first_rule.*same_rule"),
])
def test_bad_rollout_label_settings_name_the_field(changes, match):
    with pytest.raises(SettingsError, match=match):
        load_settings("suite_rule_switch", rule_switch={"rules": RULES, "rollout_labels": changes})


def test_the_train_command_fits_a_switch_to_rollout_labels_before_ppo(tmp_path):
    record = train_small_suite_run(
        tmp_path, "suite_rule_switch", "ppo: {n_steps: 8, batch_size: 32}\n"
        "suite: {families: [solar_sensor_field], n_nodes: 6}\n"
        "rule_switch: {hold: 2, rollout_labels: {scenarios_per_family: 1, every: 12, max_nodes: 6, epochs: 2, "
        "iterations: 2}}\n")
    assert record["settings"]["rule_switch"]["rollout_labels"]["every"] == 12
    log = (record["out"] / "train.log").read_text()
    assert "batch 1 of 2 (the first rule's roll-in)" in log and "batch 2 of 2 (the fitted switch's roll-in)" in log
    assert log.count("rule switch fitted to") == 2
    first_fit = make_scheduler(record["out"] / "rollout_labels_1.zip")  # the second iteration's roll-in
    assert isinstance(first_fit, RuleSwitchingScheduler) and first_fit.hold == 2
    assert make_scheduler(record["out"] / "best_model.zip").hold == 2
