"""The evaluation harness: reproducible across worker counts, models and heuristics alike, readable output."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from conftest import FLAT_ENV_ID, TINY

from greengossip.agents.heuristics import HEURISTICS
from greengossip.agents.learned import LearnedScheduler, detect_algorithm, make_scheduler
from greengossip.training import cli
from greengossip.training.evaluate import expand_schedulers, markdown_table, mean_ci, run_episode, run_evaluation
from greengossip.training.render import episode_frames, write_animation

OUTPUTS = ("results.csv", "rounds.csv", "results.md", "pareto.png", "curves.png", "battery.png")


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_all_expands_to_every_heuristic_once():
    assert expand_schedulers(["all"]) == list(HEURISTICS)
    assert expand_schedulers(["carbon_aware", "all"])[0] == "carbon_aware"
    assert len(expand_schedulers(["carbon_aware", "all"])) == len(HEURISTICS)


def test_identical_numbers_with_one_and_two_workers(tmp_path):
    schedulers, seeds = ["random_k", "energy_carbon_trust"], [0, 1]
    one = run_evaluation(schedulers, [str(TINY)], seeds, tmp_path / "one", baseline="random_k", workers=1,
                         progress=False)
    two = run_evaluation(schedulers, [str(TINY)], seeds, tmp_path / "two", baseline="random_k", workers=2,
                         progress=False)
    assert one == two
    assert [(r["scheduler"], r["seed"]) for r in one] == [(s, seed) for s in schedulers for seed in seeds]
    for name in ("results.csv", "rounds.csv", "results.md"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    for name in OUTPUTS:
        assert (tmp_path / "two" / name).stat().st_size > 0, name


def test_kpis_come_from_info_and_are_consistent():
    row, trace = run_episode("all_nodes", str(TINY), seed=0)
    assert row["scheduler"] == "all_nodes" and row["config"] == "tiny" and row["seed"] == 0
    assert row["reached_target"] == 1 and row["deadline_missed"] == 0
    assert row["rounds_to_target"] == row["rounds"] == len(trace["round"]) - 1
    assert math.isclose(row["carbon_to_target_g"], row["episode_carbon_g"], rel_tol=1e-9)
    assert math.isclose(trace["cumulative_carbon_g"][-1], row["episode_carbon_g"], rel_tol=1e-6)
    assert row["final_accuracy"] >= 0.85  # the whole test split confirms the target before termination
    assert row["dropouts"] == 0 and row["malicious_participation"] == 0 and row["epsilon_spent"] == 0
    assert all(0.0 <= s <= 1.0 for s in trace["mean_soc"])


def test_missed_target_leaves_to_target_kpis_empty():
    row, _ = run_episode("random_k:fraction=0.125", str(TINY), seed=0)
    assert row["deadline_missed"] == 1 and row["reached_target"] == 0
    assert row["carbon_to_target_g"] is None and row["rounds_to_target"] is None


def test_mean_ci_uses_student_t():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, None, float("nan")])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([])[2] == 0


def _row(scheduler, seed, carbon, accuracy, reached=True):
    return {"scheduler": scheduler, "config": "tiny", "seed": seed,
            "carbon_to_target_g": carbon if reached else None,
            "energy_to_target_wh": 1.0 if reached else None, "rounds_to_target": 10 if reached else None,
            "final_accuracy": accuracy, "deadline_missed": int(not reached), "episode_carbon_g": carbon,
            "malicious_participation": 0.0, "dropouts": 0, "epsilon_spent": 0.0}


def test_markdown_table_has_ci_and_relative_columns():
    rows = [_row("all_nodes", s, c, 0.9) for s, c in enumerate((10.0, 12.0, 14.0))]
    rows += [_row("carbon_aware", s, c, 0.9, reached=s != 2) for s, c in enumerate((4.0, 6.0, 8.0))]
    table = markdown_table(rows, baseline="all_nodes")
    assert "| **all_nodes** | 3 | 12.0 ± 4.97 |" in table
    assert "5.00 ± 12.7 (2/3)" in table  # carbon to target over the 2 episodes that reached it (t = 12.7)
    assert "1/3" in table  # deadline misses of carbon_aware
    relative = table.split("Relative to")[1]
    assert "| carbon_aware | -58 % |" in relative  # 5 / 12 - 1 on carbon to target
    assert "+33 pp" in relative and "-50 %" in relative


def _train_and_save(algorithm_cls, path, **kwargs):
    import gymnasium as gym

    env = gym.make(FLAT_ENV_ID, config=str(TINY))
    model = algorithm_cls("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu",
                          policy_kwargs={"net_arch": [32]}, **kwargs)
    model.learn(total_timesteps=64)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def ppo_tiny(tmp_path_factory):
    """A PPO trained for 64 steps on the flat env with configs/tiny.yaml, saved to a zip."""
    from stable_baselines3 import PPO

    return _train_and_save(PPO, tmp_path_factory.mktemp("model") / "ppo_tiny.zip")


def test_saved_ppo_runs_through_the_same_harness(ppo_tiny, tmp_path):
    path = ppo_tiny
    scheduler = make_scheduler(str(path))
    assert isinstance(scheduler, LearnedScheduler)
    assert scheduler.algorithm == "PPO" and scheduler.observation_kind == "flat"
    rows = run_evaluation([str(path), "all_nodes"], [str(TINY)], [0], tmp_path / "eval", workers=1,
                          progress=False)
    assert [r["scheduler"] for r in rows] == ["ppo_tiny", "all_nodes"]
    assert np.isfinite(rows[0]["final_accuracy"]) and rows[0]["rounds"] >= 1
    assert "ppo_tiny" in (tmp_path / "eval" / "results.md").read_text()
    assert [r["scheduler"] for r in _read_csv(tmp_path / "eval" / "results.csv")] == ["ppo_tiny", "all_nodes"]


def test_maskable_ppo_is_detected_and_given_the_masks(tmp_path):
    from sb3_contrib import MaskablePPO

    path = _train_and_save(MaskablePPO, tmp_path / "masked.zip")
    assert detect_algorithm(path) == "MaskablePPO"
    scheduler = make_scheduler(str(path).removesuffix(".zip"))  # SB3 style: the suffix is optional
    assert scheduler.algorithm == "MaskablePPO"
    row, _ = run_episode(str(path), str(TINY), seed=0)
    assert row["dropouts"] == 0  # tiny reports exact telemetry: a masked policy never picks the unaffordable


def test_model_for_another_fleet_size_fails_with_a_clear_message(ppo_tiny):
    with pytest.raises(ValueError, match="flat observation"):
        run_episode(str(ppo_tiny), "configs/default.yaml", seed=0)


def test_unknown_scheduler_fails_before_any_episode(tmp_path):
    with pytest.raises(ValueError, match="unknown scheduler"):
        run_evaluation(["all_nodes", "nope"], [str(TINY)], [0], tmp_path, progress=False)
    assert not (tmp_path / "results.csv").exists()


def test_cli_evaluate_writes_every_output(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["evaluate", "--config", str(TINY), "--schedulers", "all_nodes,carbon_aware",
                     "--seeds", "2",
                     "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 0
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    rows = _read_csv(out / "results.csv")
    assert [(r["scheduler"], r["seed"]) for r in rows] == [("all_nodes", "2"), ("carbon_aware", "2")]
    assert "carbon_aware" in capsys.readouterr().out


def test_cli_keeps_a_heuristic_s_parameter_list_together(tmp_path):
    from greengossip.training.evaluate import _split

    graded = "carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02"
    out = tmp_path / "cli"
    assert cli.main(["evaluate", "--config", str(TINY), "--schedulers", f"{graded},all_nodes", "--seeds", "2",
                     "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert [r["scheduler"] for r in _read_csv(out / "results.csv")] == [graded, "all_nodes"]
    assert _split([f"all_nodes,{graded},runs/a.zip", "oort:c=1", "carbon_aware"]) == [
        "all_nodes", graded, "runs/a.zip", "oort:c=1", "carbon_aware"]
    assert _split([f"{graded},carbon_periodic:period=3", "20000,20001 20002"]) == [
        graded, "carbon_periodic:period=3", "20000", "20001", "20002"]


def test_render_writes_a_gif_and_a_png_strip(tmp_path):
    frames = episode_frames("carbon_aware", str(TINY), seed=0, max_frames=3)
    assert len(frames) == 4 and frames[0].ndim == 3 and frames[0].shape[2] == 3
    gif = write_animation(frames, tmp_path / "episode.gif", fps=2)
    assert gif.suffix == ".gif" and gif.read_bytes()[:3] == b"GIF"
    strip = write_animation(frames, tmp_path / "episode.png", strip_frames=3)
    assert strip.read_bytes()[:4] == b"\x89PNG"
