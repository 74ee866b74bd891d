"""The rule switch: a learned fleet-level choice among memoryless rules (``agents/rule_switching.py``,
``training/rule_switching.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from greengossip.agents.base import GLOBAL_INDEX
from greengossip.agents.heuristics import build_heuristic
from greengossip.agents.learned import make_scheduler
from greengossip.agents.rule_switching import RuleSwitchingScheduler, fleet_summary, summary_size, summary_space
from greengossip.envs.errors import UserError
from greengossip.envs.observation import padded_observation
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.training.rule_switching import RuleSwitchingVecEnv, new_switching_model
from greengossip.training.settings import SettingsError, TrainSettings, load_settings
from tests.conftest import tiny_variant, train_small_suite_run

RULES = ["carbon_periodic:period=1,trust_threshold=0", "harvest_aware:period=1", "carbon_periodic:period=2"]


def _vec_env(n_envs: int = 2, n_nodes: int = 6) -> GossipVecEnv:
    return GossipVecEnv(n_envs, config=tiny_variant(n_nodes=n_nodes, observation__adjacency=False), seed=3)


def test_the_fleet_summary_has_one_length_for_any_fleet_size_and_stays_in_its_bounds():
    space = summary_space()
    for n_nodes in (4, 11):
        obs = _vec_env(2, n_nodes).reset()
        batch = fleet_summary(obs)
        assert batch.shape == (2, summary_size()) == (2, space.shape[0])
        assert space.contains(batch[0]) and space.contains(batch[1])
        single = fleet_summary({key: value[1] for key, value in obs.items()})
        np.testing.assert_array_equal(single, batch[1])
    assert fleet_summary(_vec_env(1, 4).reset())[0, -1] != fleet_summary(_vec_env(1, 11).reset())[0, -1]


def test_a_padded_fleet_has_the_summary_of_the_fleet_itself():
    obs = _vec_env(2, 5).reset()
    padded = padded_observation(obs, 9)
    np.testing.assert_allclose(fleet_summary(padded), fleet_summary(obs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("index", [0, 2])
def test_following_one_rule_through_the_switch_is_that_rule(index):
    switch, alone = RuleSwitchingVecEnv(_vec_env(), RULES), _vec_env()
    rule = build_heuristic(RULES[index])
    switch.reset()
    obs = alone.reset()
    for _ in range(25):
        expected = rule.act_batch(obs)
        _, rewards, dones, _ = switch.step(np.full(2, index))
        obs, alone_rewards, alone_dones, _ = alone.step(expected)
        np.testing.assert_allclose(rewards, alone_rewards)
        np.testing.assert_array_equal(dones, alone_dones)


def test_a_held_choice_ignores_the_actions_in_between_and_restarts_with_each_episode():
    """hold 3: the env takes the action at rounds 0, 3, 6, ... of each episode; what is sent in between
    changes nothing, and a new episode takes its first action at once."""
    held, spelled = RuleSwitchingVecEnv(_vec_env(), RULES, hold=3), RuleSwitchingVecEnv(_vec_env(), RULES)
    held.reset()
    spelled.reset()
    age = np.zeros(2, dtype=np.int64)
    following = np.zeros(2, dtype=np.int64)
    rng = np.random.default_rng(1)
    ended = 0
    for _ in range(60):
        sent = rng.integers(0, len(RULES), 2)
        following = np.where(age % 3 == 0, sent, following)
        _, rewards, dones, _ = held.step(sent)
        _, spelled_rewards, spelled_dones, _ = spelled.step(following)
        np.testing.assert_allclose(rewards, spelled_rewards)
        np.testing.assert_array_equal(dones, spelled_dones)
        age = np.where(dones, 0, age + 1)
        ended += int(dones.sum())
    assert ended >= 1
    with pytest.raises(ValueError, match="hold must be a whole number"):
        RuleSwitchingVecEnv(_vec_env(), RULES, hold=0)


def _saved_switch(tmp_path, **wrapper) -> RuleSwitchingScheduler:
    """A small untrained switch over ``RULES`` (``wrapper``: the training wrapper's hold and guard), saved
    and loaded back as a scheduler."""
    venv = RuleSwitchingVecEnv(_vec_env(), RULES, **wrapper)
    model = new_switching_model(venv, first_rule_bias=0.0, net_arch=[8], seed=0, n_steps=16, batch_size=16)
    model.save(tmp_path / "switch.zip")
    return make_scheduler(tmp_path / "switch.zip")


def test_a_saved_switch_with_a_hold_keeps_its_choice_between_decisions(tmp_path):
    scheduler = _saved_switch(tmp_path, hold=2)
    assert scheduler.hold == 2
    choices = iter([[1], [2], [0], [2]])
    scheduler.choose = lambda observation, deterministic=True: np.array(next(choices))
    obs = _vec_env(1).reset()
    followed = []
    state = None
    for start in (True, False, False, True):  # a new episode at the fourth round
        action, state = scheduler.predict(obs, state=state, episode_start=np.array([start]))
        followed.append(int(state[0][0]))
    assert followed == [1, 1, 0, 2]


def test_a_guarded_switch_plays_its_first_rule_from_the_guard_on():
    """guard 0.5: whatever the switch sends, an env follows the first rule once half of its rounds to the
    deadline have passed; before that, the rule it was sent."""
    guard = 0.5
    switch, alone = RuleSwitchingVecEnv(_vec_env(), RULES, guard=guard), _vec_env()
    first, sent = build_heuristic(RULES[0]), build_heuristic(RULES[2])
    switch.reset()
    obs = alone.reset()
    followed = set()
    for _ in range(60):
        late = obs["global"][:, GLOBAL_INDEX["progress"]] >= guard
        followed.update(late.tolist())
        expected = np.where(late[:, None], first.act_batch(obs), sent.act_batch(obs))
        _, rewards, dones, _ = switch.step(np.full(2, 2))
        obs, alone_rewards, alone_dones, _ = alone.step(expected)
        np.testing.assert_allclose(rewards, alone_rewards)
        np.testing.assert_array_equal(dones, alone_dones)
    assert followed == {False, True}  # both sides of the guard were played


def test_a_saved_switch_keeps_its_guard_and_hands_late_rounds_to_its_first_rule(tmp_path):
    scheduler = _saved_switch(tmp_path, guard=0.4)
    assert scheduler.guard == 0.4
    scheduler.choose = lambda observation, deterministic=True: np.full(len(observation["nodes"]), 2)
    obs = _vec_env(2, 9).reset()
    obs["global"][:, GLOBAL_INDEX["progress"]] = [0.39, 0.4]
    actions, _ = scheduler.predict(obs)
    np.testing.assert_array_equal(actions[0], build_heuristic(RULES[2]).act_batch(obs)[0])
    np.testing.assert_array_equal(actions[1], build_heuristic(RULES[0]).act_batch(obs)[1])
    with pytest.raises(UserError, match=r"guard is the share of the rounds to the deadline.*got 1\.5"):
        RuleSwitchingVecEnv(_vec_env(), RULES, guard=1.5)


def test_the_switch_refuses_rules_with_memory_and_a_single_rule():
    with pytest.raises(UserError, match=r"memoryless rules.*got 'carbon_aware'"):
        RuleSwitchingVecEnv(_vec_env(), ["carbon_periodic", "carbon_aware"])
    with pytest.raises(UserError, match="at least two rules"):
        RuleSwitchingVecEnv(_vec_env(), ["carbon_periodic"])


def test_a_saved_switch_loads_as_a_scheduler_that_starts_at_its_first_rule(tmp_path):
    venv = RuleSwitchingVecEnv(_vec_env(), RULES)
    model = new_switching_model(venv, first_rule_bias=3.0, net_arch=[8], seed=0, n_steps=16, batch_size=16,
                                n_epochs=1)
    path = tmp_path / "switch.zip"
    model.save(path)
    scheduler = make_scheduler(path)
    assert isinstance(scheduler, RuleSwitchingScheduler) and scheduler.rule_specs == RULES
    obs = _vec_env(1, 9).reset()  # another fleet size than the one it was built on
    single = {key: value[0] for key, value in obs.items()}
    assert scheduler.choose(obs).tolist() == [0]
    action, _ = scheduler.predict(single)
    np.testing.assert_array_equal(action, build_heuristic(RULES[0]).act_batch(obs)[0])
    model.learn(32)  # PPO steps through the switch
    assert model.num_timesteps >= 32


@pytest.mark.parametrize(("changes", "match"), [
    ({"algo": "maskable_ppo"}, r"rule_switch: a choice of one rule per round needs no action mask; set algo: ppo"),
    ({"rule_switch": {"rules": ["carbon_periodic", "oort"]}}, r"rule_switch\.rules.*must be one of .*got 'oort'"),
    ({"rule_switch": {"rules": ["carbon_periodic"]}}, r"rule_switch\.rules.*at least 2 items"),
    ({"rule_switch": {"rules": RULES, "validation_sizes": "drawn"}},
     r"rule_switch\.validation_sizes.*'training' or 'own'"),
    ({"rule_switch": {"rules": RULES, "guard": 1.5}}, r"rule_switch\.guard.*less than or equal to 1"),
])
def test_bad_rule_switch_settings_name_the_field(changes, match):
    with pytest.raises(SettingsError, match=match):
        load_settings("suite_rule_switch", **changes)


def test_a_rule_switch_needs_the_suite():
    with pytest.raises(ValueError, match=r"rule_switch: trains on the scenario suite"):
        TrainSettings(algo="ppo", rule_switch={"rules": RULES})


def test_the_train_command_trains_a_rule_switch_and_keeps_it_as_a_scheduler(tmp_path):
    record = train_small_suite_run(tmp_path, "suite_rule_switch", "ppo: {n_steps: 8, batch_size: 32}\n"
                                   "suite: {families: [solar_sensor_field], n_nodes: 6}\n")
    assert record["timesteps"] >= 64 and record["settings"]["rule_switch"]["rules"][0] == RULES[0]
    out = record["out"]
    scheduler = make_scheduler(out / "best_model.zip")
    assert isinstance(scheduler, RuleSwitchingScheduler) and len(scheduler.rule_specs) == 7
