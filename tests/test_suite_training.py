"""Training on the scenario suite (``TrainSettings.suite``) and the shipped pretrained schedulers."""

from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatch

import gymnasium as gym
import numpy as np
import pytest

from greengossip.agents import learned
from greengossip.agents.learned import PRETRAINED_DIR, make_scheduler, resolve_pretrained, scheduler_label
from greengossip.agents.node_linear import N_FEATURES
from greengossip.envs.config import RewardWeights
from greengossip.envs.errors import UserError
from greengossip.training import evaluate
from greengossip.training.evolution import load_evolution_settings
from greengossip.training.settings import SettingsError, SuiteSettings, load_settings
from greengossip.training.suite import SPLITS, draw_scenario, family_names
from greengossip.training.suite_compare import results_table
from greengossip.training.suite_envs import SuiteVecEnv, suite_draw, suite_validation_envs
from tests.conftest import ENV_ID, ROOT, train_small_suite_run

SUITE_MODEL = PRETRAINED_DIR / "suite.zip"
LINEAR_MODEL = PRETRAINED_DIR / "node_linear.npz"


# ---------------------------------------------------------------------------------------------- settings
def test_the_suite_recipe_draws_every_family_at_one_fleet_size_without_the_graph():
    settings = load_settings("suite")
    assert settings.suite is not None and settings.suite.family_names == family_names()
    assert settings.policy.message_passing == 0  # runs on large_network, which observes no adjacency
    assert settings.time_limit_minutes is not None and settings.time_limit_minutes < 30


@pytest.mark.parametrize(("suite", "match"), [
    ({"families": ["solar_sensor_field", "atlantis"]}, r"suite\.families.*unknown families \['atlantis'\]; allowed"),
    ({"n_nodes": 1}, r"suite\.n_nodes"),
    ({"redraw_every": 0}, r"suite\.redraw_every"),
    ({"n_node": 32}, r"suite\.n_node: unknown setting"),
])
def test_bad_suite_settings_name_the_field(suite, match):
    with pytest.raises(SettingsError, match=match):
        load_settings("suite", suite=suite)


def test_the_suite_and_also_train_on_exclude_each_other():
    with pytest.raises(SettingsError, match="the suite.s families are the training scenarios; leave also_train_on"):
        load_settings("suite", also_train_on=["attack_heavy"])


# ---------------------------------------------------------------------------------------------- envs
def test_a_suite_draw_keeps_what_the_seed_drew_at_the_training_fleet_size():
    drawn = draw_scenario("continental_grid", 17)
    sized = suite_draw(SuiteSettings(n_nodes=12), "continental_grid", 17)
    assert sized.n_nodes == 12 and drawn.config.n_nodes != 12
    assert not sized.observation.adjacency
    assert [r.name for r in sized.regions] == [r.name for r in drawn.config.regions]
    assert sized.year == drawn.config.year


def test_suite_slots_draw_train_seeds_reproducibly_and_redraw_after_an_episode():
    settings = load_settings("suite", suite={"families": ["solar_sensor_field", "private_sensor_field"],
                                             "n_nodes": 6, "redraw_every": 1})
    first = SuiteVecEnv(2, settings.suite, seed=3)
    again = SuiteVecEnv(2, settings.suite, seed=3)
    other = SuiteVecEnv(2, settings.suite, seed=4)
    assert first.scenarios == again.scenarios != other.scenarios
    assert all(seed in SPLITS["train"] for _, seed in first.scenarios)
    obs = first.reset()
    assert obs["nodes"].shape[:2] == (2, 6) and "adjacency" not in obs
    before = list(first.scenarios)
    done = np.zeros(2, dtype=bool)
    for _ in range(500):  # idle fleets run to their deadline (max_rounds <= 192)
        obs, _, dones, infos = first.step(np.zeros((2, 6), dtype=np.int64))
        done |= dones
        if done.all():
            break
    assert done.all()
    assert first.scenarios != before and (first.episodes >= 1).all()
    finished = [info for info in infos if "scenario" in info]
    assert all(info["scenario"].partition(":")[0] in ("solar_sensor_field", "private_sensor_field")
               for info in finished)
    for other_env in (first, again, other):
        other_env.close()


def test_validation_envs_play_each_family_s_validation_draws():
    settings = load_settings("suite", suite={"families": ["adversarial_fleet"], "n_nodes": 5})
    envs = suite_validation_envs(settings.suite, [10_000, 10_001])
    venv = envs["adversarial_fleet"]
    assert list(envs) == ["adversarial_fleet"] and venv.num_envs == 2
    assert venv.venvs[1].n_nodes == 5
    venv.close()


def test_validation_envs_at_own_sizes_play_each_draw_s_fleet_cut_at_the_cap():
    """With max_nodes each validation seed keeps the fleet size it drew (cut at max_nodes), and the family's
    env pads its observations to the largest of them."""
    settings = load_settings("suite", suite={"families": ["large_network", "private_sensor_field"]})
    seeds = [10_000, 10_001, 10_002]
    envs = suite_validation_envs(settings.suite, seeds, max_nodes=40)
    for family, venv in envs.items():
        drawn = [min(draw_scenario(family, seed).config.n_nodes, 40) for seed in seeds]
        assert [venv.venvs[i].n_nodes for i in range(3)] == drawn
        assert venv.observation_space["nodes"].shape[0] == max(drawn)
        venv.close()
    assert [envs["large_network"].venvs[i].n_nodes for i in range(3)] == [40, 40, 40]  # 256 nodes and more


def test_the_run_s_reward_weights_replace_each_family_s_in_training_and_validation():
    weights = RewardWeights(accuracy=0.0, carbon=2.0, security=1.0, deadline=10.0)
    settings = load_settings("suite", suite={"families": ["private_sensor_field"], "n_nodes": 5},
                             reward=weights.model_dump())
    assert suite_draw(settings.suite, "private_sensor_field", 17, reward=settings.reward).reward == weights
    assert suite_draw(settings.suite, "private_sensor_field", 17).reward != weights
    training = SuiteVecEnv(2, settings.suite, seed=3, reward=settings.reward)
    validation = suite_validation_envs(settings.suite, [10_000], settings.reward)["private_sensor_field"]
    for venv in (training, validation):
        venv.reset()
        _, rewards, _, infos = venv.step(np.full((venv.num_envs, 5), 3, dtype=np.int64))
        components = [info["reward_components"] for info in infos]
        assert components[0]["accuracy"] != 0.0  # the weight, not the component, is zero
        expected = [sum(getattr(weights, name) * value for name, value in parts.items()) for parts in components]
        np.testing.assert_allclose(rewards, expected, rtol=1e-5)
        venv.close()


def test_the_comparison_table_puts_targets_met_before_carbon():
    rows = [{"family": "f", "scheduler": name, "reached_target": met, "carbon_to_target_g": carbon}
            for name, met, carbon in (("a", 1, 5.0), ("a", 0, None), ("b", 1, 9.0), ("b", 1, 7.0))]
    table = results_table(rows)
    assert table.index("| b | 2/2 | 8.00") < table.index("| a | 1/2 | 5.00 |")


# ---------------------------------------------------------------------------------------------- shipped models
def test_pretrained_names_resolve_to_the_shipped_files():
    assert resolve_pretrained("pretrained") == str(SUITE_MODEL)
    decentralized = PRETRAINED_DIR / "decentralized.zip"
    if decentralized.is_file():
        assert resolve_pretrained("pretrained-decentralized") == f"decentralized:{decentralized}"
    assert resolve_pretrained("pretrained-linear") == str(LINEAR_MODEL)
    assert resolve_pretrained("carbon_periodic:period=2") == "carbon_periodic:period=2"
    assert scheduler_label("pretrained") == "pretrained"
    assert scheduler_label("pretrained-linear") == "pretrained-linear"


def test_a_missing_shipped_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(learned, "PRETRAINED_DIR", tmp_path)
    for name, file in (("pretrained", "suite.zip"), ("pretrained-decentralized", "decentralized.zip"),
                       ("pretrained-linear", "node_linear.npz")):
        with pytest.raises(UserError, match=f"scheduler '{name}' is the shipped model .*{file}, which is missing"):
            make_scheduler(name)


def test_the_shipped_model_has_its_training_record():
    record = json.loads(SUITE_MODEL.with_suffix(".json").read_text())
    assert SUITE_MODEL.stat().st_size <= 2 * 1024 * 1024
    for key in ("settings", "seed", "timesteps", "wall_minutes", "command"):
        assert key in record, key
    assert record["settings"]["suite"] is not None and record["seed"] == record["settings"]["seed"]


def test_the_shipped_linear_scheduler_is_the_evolution_recipe_s_run():
    """Its record names the settings it was learned with: the shipped recipe's, all generations done."""
    record = json.loads(LINEAR_MODEL.with_suffix(".json").read_text())
    assert record["settings"] == load_evolution_settings("suite").model_dump(mode="json")
    assert record["generations_done"] == record["settings"]["generations"]
    assert record["features"] == N_FEATURES and "--settings suite" in record["command"]
    with np.load(LINEAR_MODEL, allow_pickle=False) as data:
        assert json.loads(str(data["record"]))["settings"] == record["settings"]


def test_the_shipped_linear_scheduler_plays_a_family_scenario():
    config = draw_scenario("private_sensor_field", 10_001).config  # validation seed
    row, _ = evaluate.run_episode("pretrained-linear", config, 10_001)
    assert row["scheduler"] == "pretrained-linear" and row["rounds"] >= 1


def test_the_shipped_model_plays_a_family_scenario_with_or_without_the_graph_observed():
    config = draw_scenario("solar_sensor_field", 10_002).config  # validation seed, 17 nodes
    assert config.observation.adjacency
    row, _ = evaluate.run_episode("pretrained", config, 10_002)
    assert row["scheduler"] == "pretrained" and row["rounds"] >= 1
    scheduler = make_scheduler("pretrained")
    env = gym.make(ENV_ID, config=config.model_copy(update={"n_nodes": 9}))
    obs, _ = env.reset(seed=0)
    action, _ = scheduler.predict(obs, action_masks=env.unwrapped.action_masks())
    assert action.shape == (9,)
    env.close()


def test_the_shipped_models_are_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    listed = patterns["greengossip.agents"]
    for path in PRETRAINED_DIR.iterdir():
        relative = str(path.relative_to(ROOT / "agents"))
        assert any(fnmatch(relative, pattern) for pattern in listed), relative


def test_the_train_command_runs_the_suite_recipe_and_records_the_run(tmp_path):
    """The README's first command on a small slice of the recipe: two families, six nodes, one update."""
    record = train_small_suite_run(
        tmp_path, "suite", "suite: {families: [solar_sensor_field, private_sensor_field], n_nodes: 6}\n")
    out = record["out"]
    assert record["timesteps"] >= 64 and record["settings"]["suite"]["n_nodes"] == 6
    evaluations = (out / "evaluations.csv").read_text().splitlines()
    assert len(evaluations) == 3  # header, the untrained model (eval_at_start), the end of training
    assert (out / "best_model.zip").is_file()
