"""Gated prior rules (agents/policies.py) and their teacher (training/rule_selection.py): the gate's
mixture, saving and loading it, the settings' checks, the rollouts' choice and imitating it."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from sb3_contrib import MaskablePPO

from greengossip.agents.heuristics import memoryless_heuristic
from greengossip.agents.policies import MaskableNodeSetPolicy, pool
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.training.imitation import fit
from greengossip.training.rule_selection import (
    Trajectory,
    as_demonstrations,
    best_trajectories,
    draw_training_scenarios,
    family_best_trajectories,
    play_rule,
)
from greengossip.training.settings import SettingsError, SuiteSettings, load_settings
from greengossip.training.suite import SPLITS
from greengossip.training.suite_envs import suite_draw
from tests.conftest import ROOT

RULES = ["harvest_aware:period=1", "carbon_periodic:period=2"]
FAMILY = "solar_sensor_field"
SEED = 17  # a train-split seed


def _model(prior, n_nodes: int = 16, gate: str = "soft") -> MaskablePPO:
    venv = GossipVecEnv(1, config=[suite_draw(SuiteSettings(n_nodes=n_nodes), FAMILY, SEED)])
    return MaskablePPO(MaskableNodeSetPolicy, venv, n_steps=16, batch_size=16, device="cpu", seed=0,
                       policy_kwargs=dict(prior=prior, prior_weight=1.5, gate=gate,
                                          features_extractor_kwargs=dict(message_passing=0)))


def _observation(model) -> dict[str, th.Tensor]:
    obs = model.get_env().reset()
    return model.policy.obs_to_tensor(obs)[0]


@pytest.fixture(scope="module")
def trajectories() -> list[Trajectory]:
    return [play_rule((FAMILY, SEED, rule, 16)) for rule in RULES]


def test_an_untrained_gate_weighs_every_rule_alike_and_mixes_their_actions():
    model = _model(RULES)
    policy = model.policy
    obs = _observation(model)
    with th.no_grad():
        context = pool(policy.extract_features(obs))
        weights = policy.rule_weights(context)
        mixed = policy.prior_logits(obs, context)
    np.testing.assert_allclose(weights.numpy(), 0.5)
    numpy_obs = {key: value.numpy() for key, value in obs.items()}
    expected = np.zeros(mixed.shape)
    for rule in RULES:
        actions = memoryless_heuristic(rule).act_batch(numpy_obs)
        np.put_along_axis(expected, actions[..., None], np.take_along_axis(expected, actions[..., None], -1) + 0.75, -1)
    np.testing.assert_allclose(mixed.numpy(), expected, atol=1e-6)


def test_one_prior_rule_has_no_gate_and_the_gate_survives_saving(tmp_path):
    assert _model("harvest_aware:period=1").policy.prior_gate is None
    model = _model(RULES)
    with th.no_grad():
        model.policy.prior_gate.bias.copy_(th.tensor([0.0, 2.0]))
    model.save(tmp_path / "gated.zip")
    loaded = MaskablePPO.load(tmp_path / "gated.zip", device="cpu")
    assert loaded.policy.prior == RULES
    np.testing.assert_allclose(loaded.policy.prior_gate.bias.detach().numpy(), [0.0, 2.0])


@pytest.mark.parametrize(("prior", "message"), [
    (["harvest_aware", "harvest_aware"], "names a rule twice"),
    ([], "at least one rule"),
    (["harvest_aware", "oort"], "oort"),
])
def test_bad_prior_lists_are_refused_by_name(prior, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(ROOT / "configs" / "train" / "tiny.yaml", policy={"prior": prior})
    with pytest.raises(ValueError, match=message):
        _model(prior)


def test_rule_selection_needs_the_suite_and_only_one_teacher():
    tiny = ROOT / "configs" / "train" / "tiny.yaml"
    with pytest.raises(SettingsError, match="select_from picks rules on the scenario suite"):
        load_settings(tiny, imitation={"select_from": RULES})
    with pytest.raises(SettingsError, match="not both"):
        load_settings(tiny, imitation={"select_from": RULES, "heuristic": "energy_carbon_trust"})
    with pytest.raises(SettingsError, match="oort"):
        load_settings(tiny, imitation={"select_from": ["oort"]}, suite={})
    assert load_settings(tiny, imitation={"select_from": RULES}, suite={}).imitation.enabled


def test_training_scenarios_are_distinct_train_seeds_of_every_family():
    suite = SuiteSettings()
    drawn = draw_training_scenarios(suite, 5, seed=3)
    assert len(drawn) == 5 * len(suite.family_names) == len(set(drawn))
    assert {family for family, _ in drawn} == set(suite.family_names)
    assert all(SPLITS["train"].start <= seed < SPLITS["train"].stop for _, seed in drawn)
    assert drawn == draw_training_scenarios(suite, 5, seed=3) != draw_training_scenarios(suite, 5, seed=4)


def test_the_best_rollout_is_kept_per_scenario(trajectories):
    chosen = best_trajectories(trajectories)
    assert len(chosen) == 1
    assert chosen[0].key == min(trajectory.key for trajectory in trajectories)
    for trajectory in trajectories:
        assert trajectory.actions.shape == (len(trajectory.rewards), 16)
        assert trajectory.action_masks.shape[0] == len(trajectory.rewards)
        demonstrations = as_demonstrations(trajectory, gamma=1.0)
        assert demonstrations.complete.all()
        assert demonstrations.returns[0] == pytest.approx(trajectory.rewards.sum(), rel=1e-5)


def test_imitating_a_rule_teaches_the_gate_to_choose_it(trajectories):
    model = _model(RULES)
    demonstrated = trajectories[1]  # carbon_periodic:period=2, the second rule
    fit(model, [as_demonstrations(demonstrated, model.gamma)], epochs=3, batch_size=32, learning_rate=3e-3,
        value_coef=0.5, seed=0)
    obs = model.policy.obs_to_tensor(demonstrated.observations)[0]
    with th.no_grad():
        weights = model.policy.rule_weights(pool(model.policy.extract_features(obs)))
    assert float(weights[:, 1].mean()) > 0.8


def test_a_hard_gate_follows_one_rule_for_the_whole_fleet(trajectories):
    model = _model(RULES, gate="hard")
    policy = model.policy
    rounds = {key: value[1:20] for key, value in trajectories[0].observations.items()}
    obs = policy.obs_to_tensor(rounds)[0]
    numpy_obs = {key: value.numpy() for key, value in obs.items()}
    disagree = [memoryless_heuristic(rule).act_batch(numpy_obs) for rule in RULES]
    assert (disagree[0] != disagree[1]).any()  # else the test could not tell a hard gate from a soft one
    for favoured in (0, 1):
        with th.no_grad():
            policy.prior_gate.bias.copy_(th.tensor([1.0, 0.0] if favoured == 0 else [0.0, 1.0]))
            logits = policy.prior_logits(obs, pool(policy.extract_features(obs)))
        actions = memoryless_heuristic(RULES[favoured]).act_batch(numpy_obs)
        np.testing.assert_array_equal(logits.argmax(-1).numpy(), actions)
        np.testing.assert_allclose(logits.amax(-1).numpy(), 1.5)
    with pytest.raises(ValueError, match="gate must be one of soft, hard"):
        _model(RULES, gate="firm")


def test_the_train_command_warm_starts_a_gated_policy_from_the_rules_rollouts(tmp_path):
    """The rule-selection recipe on a small slice: two families, two rules, one scenario each, one update."""
    import argparse
    import json

    from greengossip.training import train

    recipe = tmp_path / "small.yaml"
    recipe.write_text(f"extends: {ROOT / 'configs' / 'train' / 'suite.yaml'}\n"
                      "total_timesteps: 64\neval_episodes: 1\neval_freq: 100000\ncompare: false\n"
                      "track_carbon: false\nprogress_bar: false\n"
                      "suite: {families: [solar_sensor_field, private_sensor_field], n_nodes: 6}\n"
                      f"policy: {{prior: {RULES}, gate: hard}}\n"
                      f"imitation: {{select_from: {RULES}, scenarios_per_family: 1, max_nodes: 8, epochs: 2}}\n")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    out = tmp_path / "run"
    assert train.run(parser.parse_args(["--settings", str(recipe), "--out", str(out)])) == 0
    assert "rule selection on 2 train scenarios (4 rollouts)" in (out / "train.log").read_text()
    record = json.loads((out / "training_record.json").read_text())
    assert record["settings"]["policy"]["prior"] == RULES and record["settings"]["policy"]["gate"] == "hard"
    model = MaskablePPO.load(out / "best_model.zip", device="cpu")
    assert model.policy.prior == RULES and model.policy.gate == "hard" and model.policy.prior_gate is not None


def _ending(family: str, seed: int, rule: str, carbon: float | None) -> Trajectory:
    key = (0.0, carbon, 0.0) if carbon is not None else (1.0, -0.5, 1.0)
    return Trajectory(family, seed, rule, {}, np.zeros((1, 4)), np.zeros((1, 2), dtype=np.int64), np.zeros(1), key,
                      carbon)


def test_the_family_s_best_rule_meets_most_targets_then_has_the_least_relative_carbon():
    # rule a wins the small scenario by a lot and loses the large one by a little; b misses one target
    played = [_ending("f", 1, "a", 1.0), _ending("f", 1, "b", 2.0), _ending("f", 1, "c", 1.5),
              _ending("f", 2, "a", 110.0), _ending("f", 2, "b", 100.0), _ending("f", 2, "c", 105.0),
              _ending("f", 3, "a", 5.0), _ending("f", 3, "b", None), _ending("f", 3, "c", 6.0),
              _ending("g", 1, "a", None), _ending("g", 1, "b", 3.0), _ending("g", 1, "c", None)]
    chosen = family_best_trajectories(played)
    assert sorted((t.family, t.seed, t.rule) for t in chosen) == [
        ("f", 1, "a"), ("f", 2, "a"), ("f", 3, "a"), ("g", 1, "b")]
    # scenario by scenario the winners differ
    assert sorted((t.seed, t.rule) for t in best_trajectories(played) if t.family == "f") == [
        (1, "a"), (2, "b"), (3, "a")]
    with pytest.raises(SettingsError, match="select_by"):
        load_settings(ROOT / "configs" / "train" / "tiny.yaml", imitation={"select_from": RULES, "select_by": "x"},
                      suite={})


def test_the_oracle_teacher_does_at_least_as_well_as_each_rule_and_records_what_the_policy_sees(trajectories):
    oracle = play_rule((FAMILY, SEED, "oracle", 16, *RULES))
    assert oracle.rule == "oracle"
    # the oracle's plans include every rule as observed, and its plan only improves
    assert all(oracle.key <= trajectory.key for trajectory in trajectories)
    steps, n_nodes = oracle.actions.shape
    assert n_nodes == 16 and oracle.observations["nodes"].shape[:2] == (steps, 16)
    # the observation as the scheduler reads it, not the truth the oracle plans on: the first round's is the
    # same as any rule's (the same reset)
    np.testing.assert_array_equal(oracle.observations["nodes"][0], trajectories[0].observations["nodes"][0])
    demonstrations = as_demonstrations(oracle, gamma=0.99)
    assert demonstrations.heuristic == "oracle" and len(demonstrations.actions) == steps
