"""The shared per-node policy on the scenario suite (training/suite_multi_agent.py) and the shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("supersuit")

from greengossip.envs.multi_agent import LOCAL_OBS_DIM  # noqa: E402
from greengossip.training.settings import SettingsError, load_settings  # noqa: E402
from greengossip.training.suite import SPLITS, load_family  # noqa: E402
from greengossip.training.suite_multi_agent import (  # noqa: E402
    MISSED,
    SuiteDrawParallelEnv,
    fleet_sizes,
    make_suite_vec_env,
    scenario_score,
)

SHIPPED = Path(__file__).resolve().parents[1] / "agents" / "pretrained" / "decentralized.zip"
# two small families, fleets cut to 20 nodes: solar's envs get 17 and 19 nodes, the adversarial fleet's 20
SMALL_SUITE = {"families": ["solar_sensor_field", "adversarial_fleet"], "max_nodes": 20,
               "eval_seeds_per_family": 1, "max_eval_nodes": 12}


def small_settings(**overrides):
    return load_settings(None, algo="ppo", n_envs=4, suite=SMALL_SUITE, total_timesteps=16, eval_freq=10_000,
                         checkpoint_freq=10_000, ppo={"n_steps": 4, "batch_size": 16, "n_epochs": 1},
                         compare=False, track_carbon=False, progress_bar=False, **overrides)


def test_training_envs_spread_each_family_over_its_capped_range():
    settings = small_settings()
    assert fleet_sizes(settings.suite, 4) == [("solar_sensor_field", 17), ("adversarial_fleet", 20),
                                              ("solar_sensor_field", 19), ("adversarial_fleet", 20)]
    full = load_settings("decentralized_suite").suite
    envs = fleet_sizes(full, 10)
    assert {family for family, _ in envs} == set(full.family_names) and len(full.family_names) == 5
    for family, n in envs:
        low, high = load_family(family)[1].n_nodes.train
        assert min(low, full.max_nodes) <= n <= min(high, full.max_nodes)
    assert max(n for _, n in envs) == full.max_nodes  # large_network's 256..1,024 nodes are cut


def test_every_episode_plays_a_fresh_train_split_scenario_at_the_env_fleet_size():
    env = SuiteDrawParallelEnv("solar_sensor_field", 17)
    observations, infos = env.reset(seed=3)
    first = env.last_draw
    assert len(observations) == 17 and all(row.shape == (LOCAL_OBS_DIM,) for row in observations.values())
    env.reset()
    second = env.last_draw
    assert first.seed != second.seed and {first.split, second.split} == {"train"}
    assert first.seed in SPLITS["train"] and second.seed in SPLITS["train"]
    env.reset(seed=3)
    assert env.last_draw.seed == first.seed  # the seed fixes the sequence of scenarios


def test_suite_envs_of_different_fleet_sizes_feed_one_ppo(tmp_path):
    from stable_baselines3 import PPO

    settings = small_settings()
    venv = make_suite_vec_env(settings.suite, settings.n_envs, seed=0, monitor_file=tmp_path / "monitor.csv")
    try:
        assert venv.num_envs == 17 + 20 + 19 + 20  # one SB3 env per node of every training env
        observations = venv.reset()
        assert observations.shape == (76, LOCAL_OBS_DIM)
        model = PPO("MlpPolicy", venv, n_steps=4, batch_size=76, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=8 * 76)
        assert model.num_timesteps == 8 * 76
    finally:
        venv.close()


def test_suite_training_picks_the_model_on_validation_scenarios(tmp_path):
    from greengossip.agents.decentralized import is_decentralized_model
    from greengossip.training.multi_agent import ship, train_multi_agent

    result = train_multi_agent(None, small_settings(), tmp_path / "run")
    assert result.rounds == 16 and is_decentralized_model(result.best_model_path)
    record = json.loads((tmp_path / "run" / "multi_agent.json").read_text())
    assert [env["n_nodes"] for env in record["training_envs"]] == [17, 20, 19, 20]
    best = json.loads(result.best_model_path.with_suffix(".json").read_text())
    assert MISSED <= best["score"] <= 1.0
    assert set(best) >= {"solar_sensor_field/score", "adversarial_fleet/score", "target_reached"}
    shipped = ship(result.out_dir, tmp_path / "shipped" / "policy.zip")
    assert shipped.read_bytes() == result.best_model_path.read_bytes()
    record = json.loads(shipped.with_suffix(".json").read_text())
    assert record["trained_rounds"] == 16 and record["wall_seconds"] > 0 and record["seed"] == 0
    assert record["settings"]["suite"]["families"] == SMALL_SUITE["families"]
    assert record["best_model"]["score"] == best["score"]
    assert record["multi_agent"]["scheduler_spec"] == f"decentralized:{shipped}"  # not the run folder


@pytest.mark.parametrize(
    ("suite", "n_envs", "message"),
    [
        ({"families": ["solar"]}, 5, r"suite\.families.*unknown families \['solar'\]; allowed: adversarial_fleet"),
        ({"families": ["solar_sensor_field", "solar_sensor_field"]}, 5, r"suite\.families.*lists a family twice"),
        ({"max_nodes": 1}, 5, r"suite\.max_nodes"),
        ({"eval_seeds_per_family": 0}, 5, r"suite\.eval_seeds_per_family"),
        ({"size": 3}, 5, r"suite\.size: unknown setting"),
    ],
)
def test_suite_settings_errors_name_the_field(suite, n_envs, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(None, algo="ppo", n_envs=n_envs, suite=suite)


def test_fewer_training_envs_than_families_is_an_error_naming_the_suite():
    suite = load_settings(None, algo="ppo", n_envs=3, suite={}).suite  # the centralized trainer takes it
    with pytest.raises(SettingsError, match="suite: 5 families need n_envs >= 5"):
        fleet_sizes(suite, 3)


def test_suite_training_refuses_a_config(tmp_path):
    from greengossip.training.multi_agent import train_multi_agent

    with pytest.raises(SettingsError, match="suite: the suite's families are the training scenarios; drop --config"):
        train_multi_agent("tiny", small_settings(), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_validation_score_is_the_share_of_all_nodes_carbon_saved():
    assert scenario_score(6.0, 8.0) == pytest.approx(0.25)
    assert scenario_score(10.0, 8.0) == pytest.approx(-0.25)
    assert scenario_score(100.0, 8.0) == MISSED  # floored: one disaster does not decide the mean
    assert scenario_score(None, 8.0) == MISSED  # a missed target
    assert scenario_score(3.0, None) == 0.0  # all_nodes missed: no scale, reaching the target is enough


# ---------------------------------------------------------------------------------------------- shipped policy
def test_shipped_policy_loads_and_plays_a_short_episode_of_a_small_family():
    import gymnasium as gym

    from greengossip.agents import make_scheduler
    from greengossip.agents.decentralized import DecentralizedScheduler, is_decentralized_model
    from greengossip.envs import ENV_ID
    from greengossip.training.rollout import play_episode
    from greengossip.training.suite import draw_scenario

    assert SHIPPED.is_file() and SHIPPED.stat().st_size <= 2 * 1024 * 1024
    assert is_decentralized_model(SHIPPED)
    record = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert record["settings"]["suite"] is not None and record["trained_rounds"] > 0
    assert record["seed"] == record["settings"]["seed"] and record["wall_seconds"] > 0
    draw = draw_scenario("solar_sensor_field", 10_000)
    env = gym.make(ENV_ID, config=draw.config)
    scheduler = make_scheduler("pretrained-decentralized", env=env, seed=0)
    assert isinstance(scheduler, DecentralizedScheduler) and scheduler.path.name == SHIPPED.name
    dropped = []
    info = play_episode(scheduler, env, draw.seed, max_steps=6,
                        on_step=lambda info, reward: dropped.append(info.get("dropped_nodes", 0)))
    env.close()
    assert info["steps"] == 6 and np.isfinite(info["return"])
    assert sum(dropped) == 0  # every node picks only what it can afford


def test_the_minibatch_counts_node_decisions_not_rounds(tmp_path):
    from greengossip.training.multi_agent import check_rollout_batch, train_multi_agent

    ppo = {"n_steps": 32, "batch_size": 512}  # 32 rounds x 10 envs: 320 rounds, but thousands of node decisions
    with pytest.raises(SettingsError, match="batch_size .* larger than a rollout"):
        load_settings("decentralized_suite", algo="ppo", ppo=ppo)
    settings = load_settings("decentralized_suite", per_node=True, algo="ppo", ppo=ppo)
    nodes = sum(n for _, n in fleet_sizes(settings.suite, settings.n_envs))
    check_rollout_batch(settings, None)  # 512 <= 32 x nodes
    too_large = load_settings("decentralized_suite", per_node=True, algo="ppo",
                              ppo={"n_steps": 32, "batch_size": 32 * nodes + 1})
    with pytest.raises(SettingsError, match=rf"ppo\.batch_size .* = {32 * nodes} node decisions"):
        train_multi_agent(None, too_large, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything is written
