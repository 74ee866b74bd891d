"""``greengossip train``: smoke run on the tiny scenario, resuming, reproducibility, settings errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch as th

from greengossip.training.cli import main
from greengossip.training.settings import ALGORITHMS, SettingsError, load_settings
from greengossip.training.train import latest_checkpoint, train
from tests.conftest import ROOT, TINY

TINY_SETTINGS = ROOT / "configs" / "train" / "tiny.yaml"
HARNESS = importlib.util.find_spec("greengossip.training.evaluate") is not None


def _settings(**overrides):
    quick = dict(
        maskable_ppo={"n_steps": 64, "batch_size": 64, "n_epochs": 2},
        eval_episodes=1,
        eval_freq=10_000,
        compare=False,
        track_carbon=False,
        progress_bar=False,
    )
    return load_settings(TINY_SETTINGS, **{**quick, **overrides})


def _tiny_with_attackers(tmp_path: Path, attack: dict) -> Path:
    """configs/tiny.yaml with ``attack`` as its attack section, written to tmp_path/tiny_attacked.yaml."""
    import yaml

    attacked = yaml.safe_load(TINY.read_text())
    attacked["attack"] = attack
    path = tmp_path / "tiny_attacked.yaml"
    path.write_text(yaml.safe_dump(attacked))
    return path


def _scalar_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in log_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


def _progress(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "progress.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_train_on_tiny_leaves_model_checkpoints_env_scalars_and_comparison(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            str(TINY),
            "--settings",
            str(TINY_SETTINGS),
            "--timesteps",
            "512",
            "--n-envs",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    for name in (
        "model.zip",
        "best_model.zip",
        "best_model.json",
        "evaluations.csv",
        "monitor.csv",
        "train.log",
        "settings.yaml",
        "env_config.yaml",
        "emissions.csv",
    ):
        assert (out / name).is_file(), name
    assert latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "model_512_steps.zip"
    tags = _scalar_tags(out / "logs")
    for tag in (
        "env/accuracy",
        "env/carbon_g",
        "env/malicious_participants",
        "env/reward_accuracy",
        "env/reward_carbon",
        "rollout/ep_rew_mean",
        "train/value_loss",
        "eval/return",
        "charts/steps_per_second",
        "carbon/training_emissions_g",
    ):
        assert tag in tags, tag
    assert "training footprint" in (out / "train.log").read_text()
    if HARNESS:
        assert (out / "comparison" / "results.md").is_file()


def test_resume_goes_on_from_the_latest_checkpoint(tmp_path):
    out = tmp_path / "run"
    first = train(TINY, _settings(total_timesteps=128, checkpoint_freq=64), out)
    assert first.timesteps == 128
    assert latest_checkpoint(out / "checkpoints").name == "model_128_steps.zip"
    resumed = train(TINY, _settings(total_timesteps=256, checkpoint_freq=64), out, resume="latest")
    assert resumed.timesteps == 256
    assert latest_checkpoint(out / "checkpoints").name == "model_256_steps.zip"
    steps = [int(row["time/total_timesteps"]) for row in _progress(out) if row.get("time/total_timesteps")]
    assert steps[-1] == 256
    # an explicit checkpoint path works too, and a finished run has nothing left to do
    again = train(
        TINY,
        _settings(total_timesteps=192, checkpoint_freq=64),
        tmp_path / "other",
        resume=str(out / "checkpoints" / "model_128_steps.zip"),
    )
    assert again.timesteps == 192
    with pytest.raises(ValueError, match="--algo maskable_ppo"):
        train(
            TINY,
            _settings(total_timesteps=256, algo="ppo", ppo={"n_steps": 64, "batch_size": 64}),
            out,
            resume="latest",
        )


def test_same_seed_gives_the_same_learning_curve(tmp_path):
    runs = [
        train(TINY, _settings(total_timesteps=128, seed=seed), tmp_path / name)
        for seed, name in ((3, "a"), (3, "b"), (4, "c"))
    ]
    curves = [_progress(run.out_dir) for run in runs]

    def learning(rows):  # everything but wall-clock figures
        return [{k: v for k, v in row.items() if not k.startswith(("time/", "charts/"))} for row in rows]

    assert learning(curves[0]) == learning(curves[1])
    assert any(row.get("train/value_loss") for row in curves[0])
    assert learning(curves[0]) != learning(curves[2])
    from sb3_contrib import MaskablePPO

    a, b = (MaskablePPO.load(run.model_path).policy.state_dict() for run in runs[:2])
    for key in a:
        th.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "recurrent_ppo"])
def test_every_algorithm_trains_briefly(algo, tmp_path):
    result = train(
        TINY,
        _settings(
            algo=algo,
            total_timesteps=64,
            **{algo: {"n_steps": 32, "batch_size": 32} if algo != "a2c" else {"n_steps": 8}},
        ),
        tmp_path / algo,
    )
    assert result.timesteps >= 64
    assert result.best_model_path.is_file()


def test_misspelt_setting_is_named_in_the_error():
    with pytest.raises(SettingsError, match="n_env: unknown setting"):
        load_settings(TINY_SETTINGS, n_env=2)
    with pytest.raises(SettingsError, match="batch_size .* larger than a rollout"):
        load_settings(TINY_SETTINGS, maskable_ppo={"n_steps": 16, "batch_size": 64})
    with pytest.raises(SettingsError, match="seed"):
        load_settings(TINY_SETTINGS, seed=10_000)  # would overlap the held-out seeds


def test_a_settings_file_extends_another_key_by_key(tmp_path):
    base = load_settings(ROOT / "configs" / "train" / "default.yaml")
    (tmp_path / "variant.yaml").write_text(
        f"extends: {ROOT / 'configs' / 'train' / 'default.yaml'}\nmaskable_ppo:\n  learning_rate: 0.0001\nseed: 3\n")
    variant = load_settings(tmp_path / "variant.yaml")
    assert (variant.maskable_ppo.learning_rate, variant.seed) == (1e-4, 3)
    # everything the variant does not name, inside the changed section too, comes from the base
    assert variant.maskable_ppo.n_steps == base.maskable_ppo.n_steps
    assert variant.model_dump(exclude={"maskable_ppo", "seed"}) == base.model_dump(exclude={"maskable_ppo", "seed"})
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(SettingsError, match="extends itself"):
        load_settings(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(SettingsError, match="not found: .*nowhere.yaml"):
        load_settings(tmp_path / "missing.yaml")


def test_a_variant_changes_one_key_of_a_nested_section_and_keeps_the_rest(tmp_path):
    base = load_settings(ROOT / "configs" / "train" / "suite_rule_rollouts.yaml")
    (tmp_path / "variant.yaml").write_text(
        f"extends: {ROOT / 'configs' / 'train' / 'suite_rule_rollouts.yaml'}\n"
        "rule_switch:\n  rollout_labels:\n    continuation: same_rule\n")
    variant = load_settings(tmp_path / "variant.yaml")
    assert variant.rule_switch.rollout_labels.continuation == "same_rule"
    assert base.rule_switch.rollout_labels.continuation == "first_rule"
    assert variant.rule_switch.model_dump(exclude={"rollout_labels": {"continuation"}}) == \
        base.rule_switch.model_dump(exclude={"rollout_labels": {"continuation"}})
    assert variant.rule_switch.rollout_labels.workers == 2  # the base's, not the field's default of 1


def test_settings_files_are_valid_and_hyperparameters_render_as_text():
    for path in sorted((ROOT / "configs" / "train").glob("*.yaml")):
        settings = load_settings(path)
        text = settings.markdown()
        assert f"| algo | {settings.algo} |" in text
        # only the chosen algorithm's section is rendered
        rendered = {algo for algo in ALGORITHMS if f"| {algo}.n_steps |" in text}
        assert rendered == {settings.algo}, path.name


def test_the_comparison_adds_a_residual_policy_s_own_prior_rule():
    from greengossip.training.train import comparison_schedulers

    model = Path("run/best_model.zip")
    assert comparison_schedulers(model, load_settings()) == [str(model), "all"]
    assert comparison_schedulers(model, load_settings(prior="carbon_periodic")) == [str(model), "all"]  # in "all"
    assert comparison_schedulers(model, load_settings("quick_start")) == [str(model), "all"]  # energy_carbon_trust
    graded = load_settings(prior="carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02")
    assert comparison_schedulers(model, graded) == [
        str(model), "all", "carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02"]


@pytest.mark.slow
def test_documented_smoke_command_finishes_in_about_a_minute(tmp_path):
    """The issue's acceptance run: default training settings, 2048 steps on tiny, via the console script."""
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "greengossip.training.cli",
        "train",
        "--config",
        str(TINY),
        "--timesteps",
        "2048",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    elapsed = time.perf_counter() - started
    assert (tmp_path / "run" / "model.zip").is_file()
    assert "env/accuracy" in _scalar_tags(tmp_path / "run" / "logs")
    if HARNESS:
        assert (tmp_path / "run" / "comparison" / "results.md").is_file()
    assert elapsed < 180, f"took {elapsed:.0f} s"


def test_training_runs_on_the_batched_vector_env(tmp_path):
    settings = _settings(n_envs=4, total_timesteps=256)
    result = train(TINY, settings, tmp_path / "batched")
    assert result.timesteps >= 256
    assert (tmp_path / "batched" / "monitor.csv").exists()


def test_also_train_on_mixes_scenarios_and_rejects_other_spaces(tmp_path):
    from greengossip.envs.config import load_config
    from greengossip.training.builders import make_vec_env, training_scenarios

    attacked_path = _tiny_with_attackers(tmp_path, {"fraction": 0.25})
    with pytest.raises(SettingsError, match="n_nodes 32 .* n_nodes 8"):
        default = str(ROOT / "configs" / "default.yaml")
        training_scenarios(load_config(TINY), _settings(n_envs=2, also_train_on=[default]))
    with pytest.raises(SettingsError, match="need n_envs >= 2"):
        training_scenarios(load_config(TINY), _settings(n_envs=1, also_train_on=[str(attacked_path)]))
    batched = _settings(n_envs=4, also_train_on=[str(attacked_path)])
    venv = make_vec_env(training_scenarios(load_config(TINY), batched), batched, tmp_path / "batched.csv")
    try:  # one batched program per scenario, environment i runs scenario i mod 2
        assert [v.config.attack.fraction for v in venv.venv.venvs] == [0.0, 0.25]
        obs = venv.reset()
        assert obs["nodes"].shape[0] == 4 and venv.action_masks().shape == (4, 8 * 6)
        _, _, _, infos = venv.step(np.full((4, 8), 2))
        honest = [venv.venv.venvs[i % 2].fleet.scenario.honest.view(2, 8)[i // 2] for i in range(4)]
        assert [int((~h).sum()) for h in honest] == [0, 2, 0, 2]
        assert [info["participants"] for info in infos] == [8, 8, 8, 8]
    finally:
        venv.close()


def test_a_scenario_listed_twice_gets_more_envs_but_is_validated_once(tmp_path):
    from greengossip.envs.config import load_config
    from greengossip.training.builders import make_vec_env, training_scenarios, validation_scenarios

    attacked_path = _tiny_with_attackers(tmp_path, {"fraction": 0.25})
    twice = [str(attacked_path), str(tmp_path / "." / "tiny_attacked.yaml")]  # one file, two spellings
    settings = _settings(n_envs=3, also_train_on=twice, select_on="training_mix")
    scenarios = training_scenarios(load_config(TINY), settings)
    venv = make_vec_env(scenarios, settings, tmp_path / "monitor.csv")
    try:  # environment i runs scenario i mod 3
        assert [v.config.attack.fraction for v in venv.venv.venvs] == [0.0, 0.25, 0.25]
    finally:
        venv.close()
    validated = validation_scenarios(TINY, settings, scenarios)
    assert list(validated) == ["tiny", "tiny_attacked"]
    assert [s.attack.fraction for s in validated.values()] == [0.0, 0.25]
    # two different files with one name keep both, told apart by their paths
    (tmp_path / "elsewhere").mkdir()
    other = _tiny_with_attackers(tmp_path / "elsewhere", {"fraction": 0.5})
    settings = _settings(n_envs=3, also_train_on=[str(attacked_path), str(other)], select_on="training_mix")
    validated = validation_scenarios(TINY, settings, training_scenarios(load_config(TINY), settings))
    assert list(validated) == [str(TINY), str(attacked_path), str(other)]
    assert [s.attack.fraction for s in validated.values()] == [0.0, 0.25, 0.5]


def test_settings_reward_weights_replace_the_scenarios_in_training_only(tmp_path):
    from greengossip.envs.config import load_config
    from greengossip.training.builders import training_scenarios

    attacked_path = _tiny_with_attackers(tmp_path, {"fraction": 0.25})
    settings = _settings(n_envs=2, also_train_on=[str(attacked_path)], reward={"carbon": 3.0, "deadline": 5.0})
    scenarios = training_scenarios(load_config(TINY), settings)
    assert [(s.reward.carbon, s.reward.deadline, s.reward.accuracy) for s in scenarios] == [(3.0, 5.0, 10.0)] * 2
    assert scenarios[1].attack.fraction == 0.25  # only the weights change, not the world
    assert load_config(TINY).reward.carbon == 1.0
    with pytest.raises(SettingsError, match="reward.carbon"):
        _settings(reward={"carbon": -1.0})
    with pytest.raises(SettingsError, match="reward.carbn"):
        _settings(reward={"carbn": 1.0})


def test_learning_rate_falls_linearly_to_learning_rate_final(tmp_path):
    settings = _settings(total_timesteps=256, maskable_ppo={"n_steps": 64, "batch_size": 64, "n_epochs": 1,
                                                            "learning_rate": 1e-3, "learning_rate_final": 1e-4})
    train(TINY, settings, tmp_path / "decay")
    rates = [float(row["train/learning_rate"]) for row in _progress(tmp_path / "decay") if row["train/learning_rate"]]
    assert len(rates) >= 3
    assert rates[0] < 1e-3 and rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    assert rates[-1] >= 1e-4
    with pytest.raises(SettingsError, match="learning_rate_final"):
        _settings(maskable_ppo={"learning_rate_final": 0.0})


def test_learning_rate_holds_for_learning_rate_decay_start_then_falls():
    from greengossip.training.builders import DelayedLinearSchedule, algorithm_kwargs

    schedule = algorithm_kwargs(_settings(maskable_ppo={"learning_rate": 1e-3, "learning_rate_final": 1e-4,
                                                        "learning_rate_decay_start": 0.6}))["learning_rate"]
    assert isinstance(schedule, DelayedLinearSchedule)
    # progress_remaining runs from 1 (first step) to 0 (total_timesteps)
    assert schedule(1.0) == schedule(0.5) == schedule(0.4) == 1e-3
    assert schedule(0.2) == pytest.approx(5.5e-4) and schedule(0.0) == pytest.approx(1e-4)
    # without a delay it is SB3's LinearSchedule, float for float (earlier runs still reproduce)
    from stable_baselines3.common.utils import LinearSchedule

    plain = algorithm_kwargs(_settings(maskable_ppo={"learning_rate": 1e-3, "learning_rate_final": 1e-4}))
    reference = LinearSchedule(1e-3, 1e-4, end_fraction=1.0)
    assert all(plain["learning_rate"](p) == reference(p) for p in (1.0, 0.73, 0.31, 0.0))
    with pytest.raises(SettingsError, match="learning_rate_final"):
        _settings(maskable_ppo={"learning_rate_decay_start": 0.5})
    with pytest.raises(SettingsError, match="learning_rate_decay_start"):
        _settings(maskable_ppo={"learning_rate_final": 1e-4, "learning_rate_decay_start": 1.0})


def test_select_on_training_mix_scores_every_scenario_on_the_validation_seeds(tmp_path):
    """select_on: training_mix runs the validation seeds on --config and on each also_train_on scenario;
    the best model's score is the mean return over all those episodes, logged per scenario too."""
    import json

    attacked_path = _tiny_with_attackers(tmp_path, {"fraction": 0.25, "kinds": ["free_rider"]})
    # the all_nodes prior lets every node take part, so the attackers do whatever an untrained policy's
    # argmax happens to be
    settings = _settings(total_timesteps=128, n_envs=2, also_train_on=[str(attacked_path)],
                         select_on="training_mix", eval_episodes=2, policy={"prior": "all_nodes"})
    train(TINY, settings, tmp_path / "mix")
    record = json.loads((tmp_path / "mix" / "best_model.json").read_text())
    returns = [record["tiny/return"], record["tiny_attacked/return"]]
    assert record["score"] == pytest.approx(sum(returns) / 2)
    assert record["tiny/malicious"] == 0 and record["tiny_attacked/malicious"] > 0
    with open(tmp_path / "mix" / "evaluations.csv") as handle:
        assert "tiny_attacked/carbon_g" in next(csv.reader(handle))
    with pytest.raises(SettingsError, match="select_on"):
        _settings(select_on="everything")


def test_batched_validation_gives_the_sequential_episodes():
    """play_vec_episodes (all validation seeds as one batched program) against play_episode seed by seed:
    the same rounds, carbon and outcome per seed, returns equal up to float32 rewards."""
    from sb3_contrib import MaskablePPO

    from greengossip.agents.policies import MaskableNodeSetPolicy
    from greengossip.envs.config import load_config
    from greengossip.envs.sb3_vec_env import GossipVecEnv
    from greengossip.training.builders import make_env
    from greengossip.training.rollout import play_episode, play_vec_episodes

    config = load_config(TINY)
    env = make_env(config)
    policy_kwargs = dict(features_extractor_kwargs=dict(hidden=16), net_arch=dict(pi=[16], vf=[16]),
                         prior="carbon_periodic")
    model = MaskablePPO(MaskableNodeSetPolicy, env, seed=0, n_steps=16, batch_size=16, policy_kwargs=policy_kwargs)
    seeds = [10_000, 10_001, 10_002]
    one_by_one = [play_episode(model, env, seed) for seed in seeds]
    together = play_vec_episodes(model, GossipVecEnv(len(seeds), config=config), seeds)
    keys = ("episode_rounds", "episode_carbon_g", "final_accuracy", "target_reached", "steps")
    assert [[e[k] for k in keys] for e in together] == [[e[k] for k in keys] for e in one_by_one]
    assert len({e["episode_rounds"] for e in together}) > 1  # episodes of different lengths: some waited
    np.testing.assert_allclose([e["return"] for e in together], [e["return"] for e in one_by_one], atol=1e-4)
    with pytest.raises(ValueError, match="consecutive seeds"):
        play_vec_episodes(model, GossipVecEnv(2, config=config), [1, 3])


def test_carbon_guard_keeps_a_best_model_that_spends_more_than_the_first_validation(tmp_path, monkeypatch):
    """HeldOutEvalCallback with carbon_guard: a higher mean return does not make a new best when the first
    scenario's carbon rises above guard x the first validation's or it reaches fewer targets; without the
    guard it does, and a guarded run keeps that pick too (best_model_unguarded.zip). The reference and
    both scores survive a resume through the .json records."""
    from types import SimpleNamespace

    from stable_baselines3.common.logger import configure

    from greengossip.training import callbacks as callbacks_module
    from greengossip.training.callbacks import HeldOutEvalCallback

    def episodes(ret, carbon, reached=True):
        return [{"return": ret, "final_accuracy": 0.9, "episode_carbon_g": carbon, "episode_energy_wh": 1.0,
                 "episode_rounds": 50, "target_reached": reached, "episode_malicious_participants": 0}]

    # (default, attack_heavy) per validation: start, better return but 10 % more default carbon, better
    # return within 5 %, better return but a missed target
    script = [(episodes(1.0, 20.0), episodes(-5.0, 20.0)), (episodes(1.0, 22.0), episodes(0.0, 20.0)),
              (episodes(1.0, 20.9), episodes(-1.0, 20.0)), (episodes(5.0, 19.0, reached=False), episodes(0.0, 9.0))]

    def run(guard, folder):
        saved = []
        model = SimpleNamespace(logger=configure(str(tmp_path / folder), ["csv"]))
        monkeypatch.setattr(callbacks_module, "atomic_save", lambda model, path: (
            saved.append((Path(path).stem, callback.num_timesteps)), Path(path).write_text("m")))
        callback = HeldOutEvalCallback({"default": None, "attack_heavy": None}, [10_000], 10,
                                       tmp_path / folder / "best_model.zip", tmp_path / folder / "evaluations.csv",
                                       carbon_guard=guard)
        callback.model = model
        for step, (default, attacked) in enumerate(script, start=1):
            callback.num_timesteps = 10 * step
            results = iter([default, attacked])
            callback._episodes = lambda env: next(results)
            callback.evaluate()
        return saved, callback

    unguarded, _ = run(None, "plain")
    assert unguarded == [("best_model", 10), ("best_model", 20), ("best_model", 40)]
    assert not (tmp_path / "plain" / "best_model_unguarded.zip").exists()
    guarded, callback = run(1.05, "guarded")
    assert [step for name, step in guarded if name == "best_model"] == [10, 30]
    assert [step for name, step in guarded if name == "best_model_unguarded"] == [10, 20, 40]
    unguarded_record = json.loads((tmp_path / "guarded" / "best_model_unguarded.json").read_text())
    assert unguarded_record["timesteps"] == 40 and json.loads(callback.best_record.read_text())["timesteps"] == 30
    resumed = HeldOutEvalCallback({"default": None}, [10_000], 10, tmp_path / "guarded" / "best_model.zip",
                                  tmp_path / "guarded" / "evaluations.csv", carbon_guard=1.05)
    assert resumed.reference == {"carbon_g": 20.0, "target_reached": 1.0}
    assert resumed.best_score == callback.best_score == pytest.approx(0.0)
    assert resumed.best_unguarded_score == callback.best_unguarded_score == pytest.approx(2.5)
    with pytest.raises(SettingsError, match="carbon_guard"):
        _settings(carbon_guard=0.0)


def test_keep_targets_keeps_no_model_that_reaches_fewer_targets_in_any_scenario(tmp_path, monkeypatch):
    """HeldOutEvalCallback with keep_targets: a higher mean return is a new best only when every scenario
    reaches the target at least as often as in the first validation, not on average; the first
    validation's targets survive a resume through the best model's .json record."""
    from types import SimpleNamespace

    from stable_baselines3.common.logger import configure

    from greengossip.training import callbacks as callbacks_module
    from greengossip.training.callbacks import HeldOutEvalCallback

    def episodes(ret, reached):
        return [{"return": ret, "final_accuracy": 0.9, "episode_carbon_g": 1.0, "episode_energy_wh": 1.0,
                 "episode_rounds": 50, "target_reached": hit, "episode_malicious_participants": 0}
                for hit in reached]

    # (solar, attack) per validation, two seeds each: start (solar 1 of 2), better return with attack 1 of 2
    # (more targets overall: 3 of 4 against 3), better return with the start's targets per family
    script = [(episodes(1.0, [True, False]), episodes(0.0, [True, True])),
              (episodes(3.0, [True, True]), episodes(1.0, [True, False])),
              (episodes(2.0, [True, False]), episodes(0.5, [True, True]))]

    def run(keep, folder):
        saved = []
        monkeypatch.setattr(callbacks_module, "atomic_save", lambda model, path: (
            saved.append((Path(path).stem, callback.num_timesteps)), Path(path).write_text("m")))
        callback = HeldOutEvalCallback({"solar": None, "attack": None}, [10_000, 10_001], 10,
                                       tmp_path / folder / "best_model.zip", tmp_path / folder / "evaluations.csv",
                                       keep_targets=keep)
        callback.model = SimpleNamespace(logger=configure(str(tmp_path / folder), ["csv"]))
        for step, (solar, attack) in enumerate(script, start=1):
            callback.num_timesteps = 10 * step
            results = iter([solar, attack])
            callback._episodes = lambda env: next(results)
            callback.evaluate()
        return [step for _, step in saved]

    assert run(False, "plain") == [10, 20]
    assert run(True, "kept") == [10, 30]
    resumed = HeldOutEvalCallback({"solar": None, "attack": None}, [10_000, 10_001], 10,
                                  tmp_path / "kept" / "best_model.zip", tmp_path / "kept" / "evaluations.csv",
                                  keep_targets=True)
    assert resumed.reference_targets == {"solar": 0.5, "attack": 1.0}
    assert not resumed._targets_kept({"solar": 1.0, "attack": 0.5})
