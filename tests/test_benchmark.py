"""The scenario suite (seeded families, splits), the oracle bound and ``greengossip benchmark``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from greengossip.envs import ENV_ID
from greengossip.envs.config import ConfigError
from greengossip.training import benchmark, suite
from greengossip.training.oracle import OracleScheduler, base_policies, clone_env
from greengossip.training.settings import FIRST_TEST_SEED, FIRST_VALIDATION_SEED

FAMILIES = suite.family_names()

# a family small enough for CI: the tiny scenario with 8 to 10 nodes (12 to 14 out of distribution)
TINY_FAMILY = """
base: tiny
n_nodes: {train: [8, 10], ood: [12, 14]}
start_day: {train: [0, 364]}
oracle: {rules: [all_nodes, carbon_aware, carbon_periodic], every: 10, width: 2}
"""


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny_family.yaml"
    path.write_text(TINY_FAMILY)
    return path


def test_every_family_ships_a_range_file_of_a_shipped_base():
    assert set(FAMILIES) >= {"solar_sensor_field", "continental_grid", "adversarial_fleet", "private_sensor_field",
                             "large_network"}
    for family in FAMILIES:
        name, ranges = suite.load_family(family)
        assert name == family and ranges.shifts, family  # every family has an out-of-distribution split


@pytest.mark.parametrize("family", FAMILIES)
def test_the_same_seed_draws_the_same_scenario(family):
    first, again = suite.draw_scenario(family, FIRST_TEST_SEED), suite.draw_scenario(family, FIRST_TEST_SEED)
    assert first.config == again.config and first.parameters == again.parameters
    others = [suite.draw_scenario(family, FIRST_TEST_SEED + i).config for i in range(1, 4)]
    assert any(other != first.config for other in others)


def test_splits_are_disjoint_and_aligned_with_training_settings():
    ranges = list(suite.SPLITS.values())
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert not set(a) & set(b)
    assert suite.SPLITS["validation"].start == FIRST_VALIDATION_SEED
    assert suite.SPLITS["test"].start == FIRST_TEST_SEED
    assert suite.split_of(FIRST_TEST_SEED) == "test" and suite.split_of(suite.FIRST_OOD_SEED) == "ood"
    with pytest.raises(ValueError, match="in no split"):
        suite.split_of(suite.SEED_LIMIT)
    with pytest.raises(ValueError, match="unknown split 'tst'; allowed: train, validation, test, ood"):
        suite.split_seeds("tst", 3)


def _inside(value, span) -> bool:
    return span[0] <= value <= span[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_ood_draws_lie_outside_the_training_ranges_and_test_draws_inside(family):
    _, ranges = suite.load_family(family)
    train_regions = {r.name for r in ranges.regions.train} if ranges.regions else set()
    for seed in range(suite.FIRST_OOD_SEED, suite.FIRST_OOD_SEED + 12):
        drawn = suite.draw_scenario(family, seed).parameters
        assert not _inside(drawn["n_nodes"], ranges.n_nodes.train)
        for name in ("year", "start_day"):
            span = getattr(ranges, name)
            if span is not None and span.ood is not None:
                assert not _inside(drawn[name], span.train)
        if ranges.regions is not None and ranges.regions.ood is not None:
            assert not set(drawn["regions"].split("+")) & train_regions
        if ranges.epsilon is not None and ranges.epsilon.ood is not None:
            assert not _inside(drawn["epsilon"], ranges.epsilon.train)
        if ranges.topology is not None and ranges.topology.ood is not None:
            assert drawn["topology"] not in ranges.topology.train
    for seed in range(FIRST_TEST_SEED, FIRST_TEST_SEED + 12):
        drawn = suite.draw_scenario(family, seed).parameters
        assert _inside(drawn["n_nodes"], ranges.n_nodes.train)
        if ranges.regions is not None:
            assert set(drawn["regions"].split("+")) <= train_regions


@pytest.mark.parametrize(("text", "message"), [
    (TINY_FAMILY + "n_node: {train: [8, 9]}\n", r"n_node: unknown key"),
    (TINY_FAMILY.replace("[8, 10]", "[10, 8]"), r"n_nodes = .*train range \[10, 8\] is reversed"),
    (TINY_FAMILY.replace("[12, 14]", "[9, 14]"), r"ood range \[9, 14\] overlaps the training range \[8, 10\]"),
    (TINY_FAMILY.replace("carbon_periodic]", "carbon_periodik]"),
     r"oracle.rules = .*unknown heuristics \['carbon_periodik'\]; allowed: all_nodes"),
    (TINY_FAMILY + "topology: {train: [ring], ood: [hexagon]}\n", r"topology.ood.0 = 'hexagon'.*'geographic'"),
    (TINY_FAMILY + "fleet_share: [[0.5, 0.6]]\n", r"fleet_share: 1 ranges for a base fleet of 3 groups"),
    (TINY_FAMILY.replace("base: tiny", "base: tinyy"), r"base = 'tinyy'.*shipped names: .*tiny"),
    (TINY_FAMILY + "year: {train: [2010, 2012]}\n", r"year range \[2010, 2012\] must lie in \[2017, 2020\]"),
])
def test_a_bad_range_file_is_one_error_naming_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        suite.load_family(path)


def test_normalised_score_anchors_floor_and_missing_scale():
    assert benchmark.normalised_score(10.0, 10.0, 4.0) == 0.0
    assert benchmark.normalised_score(4.0, 10.0, 4.0) == 1.0
    assert benchmark.normalised_score(7.0, 10.0, 4.0) == pytest.approx(0.5)
    assert benchmark.normalised_score(math.nan, 10.0, 4.0) == benchmark.FLOOR  # a missed target
    assert benchmark.normalised_score(100.0, 10.0, 4.0) == benchmark.FLOOR
    assert math.isnan(benchmark.normalised_score(5.0, math.nan, 4.0))  # all_nodes missed: no scale
    assert math.isnan(benchmark.normalised_score(5.0, 4.0, 4.0))  # the oracle no better than all_nodes


def test_a_cloned_env_replays_the_same_future(tiny_family):
    draw = suite.draw_scenario(str(tiny_family), FIRST_TEST_SEED)
    env = gym.make(ENV_ID, config=draw.config)
    env.reset(seed=draw.seed)
    rng = np.random.default_rng(0)
    for _ in range(3):
        env.step(rng.integers(0, 6, draw.config.n_nodes))
    copy = clone_env(env)
    for _ in range(4):
        action = rng.integers(0, 6, draw.config.n_nodes)
        _, reward, *_ = env.step(action)
        _, reward_copy, *_ = copy.step(action)
        assert reward == reward_copy
    assert np.array_equal(env.unwrapped.sim_state.params.numpy(), copy.sim_state.params.numpy())
    assert copy.scenario is env.unwrapped.scenario  # shared, not copied


@pytest.fixture(scope="module")
def tiny_benchmark(tiny_family, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    rows = benchmark.run_benchmark(["all_nodes", "carbon_periodic"], [str(tiny_family)], "test", 1, out)
    return out, rows


def test_the_benchmark_writes_its_files_with_the_anchors_at_zero_and_one(tiny_benchmark):
    out, rows = tiny_benchmark
    for name in ("episodes.csv", "leaderboard.csv", "leaderboard.md", "benchmark.png"):
        assert (out / name).stat().st_size > 0
    by_scheduler = {row["scheduler"]: row for row in rows}
    assert set(by_scheduler) == {"all_nodes", "carbon_periodic", "oracle"}
    assert by_scheduler["all_nodes"]["normalised_score"] == 0.0
    assert by_scheduler["oracle"]["normalised_score"] == 1.0
    with open(out / "leaderboard.csv") as handle:
        board = list(csv.DictReader(handle))
    assert {row["family"] for row in board} == {"tiny_family", "overall"}
    assert "### tiny_family" in (out / "leaderboard.md").read_text()


def test_the_oracle_beats_all_nodes_on_a_tiny_scenario(tiny_benchmark):
    _, rows = tiny_benchmark
    by_scheduler = {row["scheduler"]: row for row in rows}
    oracle, anchor = by_scheduler["oracle"], by_scheduler["all_nodes"]
    assert oracle["reached_target"] and anchor["reached_target"]
    assert oracle["carbon_to_target_g"] < anchor["carbon_to_target_g"]
    assert oracle["oracle_plan"].startswith(("all_nodes", "carbon_aware", "carbon_periodic"))


def test_the_oracle_is_deterministic_and_follows_its_plan(tiny_family):
    from greengossip.training.rollout import play_episode

    draw = suite.draw_scenario(str(tiny_family), FIRST_TEST_SEED + 1)
    results = []
    for _ in range(2):
        env = gym.make(ENV_ID, config=draw.config)
        oracle = OracleScheduler(env, base_policies(["all_nodes", "carbon_periodic"], ["observed"]), every=10,
                                 width=1, seed=draw.seed)
        info = play_episode(oracle, env, draw.seed)
        assert oracle.replans == 0  # the real episode never left the path the copies predicted
        results.append((info["episode_carbon_g"], info["steps"]))
    assert results[0] == results[1]


def test_a_replayed_plan_repeats_the_oracle_in_its_world_and_not_under_other_luck(tiny_family):
    from greengossip.training.oracle import PlanReplay, parse_plan
    from greengossip.training.rollout import play_episode

    draw = suite.draw_scenario(str(tiny_family), FIRST_TEST_SEED + 2)
    env = gym.make(ENV_ID, config=draw.config)
    oracle = OracleScheduler(env, base_policies(["all_nodes", "carbon_periodic", "harvest_aware"]), every=3,
                             width=3, seed=draw.seed)
    taken, replayed = [], []
    info = play_episode(oracle, env, draw.seed, on_step=lambda i, r: taken.append(i.get("carbon_g")))
    text = " > ".join(f"{label}@{first}" for first, label in oracle.plan.policies)
    plan = parse_plan(text)
    assert [(first, policy.label) for first, policy in plan] == oracle.plan.policies
    env = gym.make(ENV_ID, config=draw.config)
    again = play_episode(PlanReplay(env, plan, seed=draw.seed), env, draw.seed,
                         on_step=lambda i, r: replayed.append(i.get("carbon_g")))
    assert replayed == taken and again["steps"] == info["steps"]
    env = gym.make(ENV_ID, config=draw.config)
    lucky = play_episode(PlanReplay(env, plan, seed=draw.seed), env, draw.seed, luck=1)
    assert lucky["accuracy"] != info["accuracy"]  # other initial weights and minibatches
    _, row = benchmark.run_job(benchmark.Job(0, draw, "replay", "replay", plan=text))  # the benchmark's jobs too
    assert row["carbon_to_target_g"] == info.get("carbon_to_target_g") and row["rounds"] == info["episode_rounds"]


@pytest.mark.parametrize("text", ["", "carbon_periodic@3", "carbon_periodic", "all_nodes@0 > carbon_periodic@x"])
def test_a_malformed_plan_is_refused(text):
    from greengossip.training.oracle import parse_plan

    with pytest.raises(ValueError, match="oracle plan"):
        parse_plan(text)


def test_the_command_refuses_an_unknown_family_in_one_line(tmp_path, capsys):
    from greengossip.training.cli import main

    assert main(["benchmark", "--families", "solar_feld", "--seeds-per-family", "1", "--out", str(tmp_path)]) == 2
    assert "unknown family 'solar_feld'; allowed: adversarial_fleet" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_the_oracle_finishes_at_least_as_well_as_each_family_rule(family, tmp_path):
    from greengossip.training.oracle import outcome_key

    _, ranges = suite.load_family(family)
    rows = benchmark.run_benchmark(list(ranges.oracle.rules), [family], "test", 1, tmp_path)

    def key(row):
        return outcome_key(bool(row["reached_target"]), row["carbon_to_target_g"] or 0.0, row["final_accuracy"],
                           row["episode_carbon_g"])

    oracle = next(row for row in rows if row["scheduler"] == "oracle")
    assert all(key(oracle) <= key(row) for row in rows)


def test_the_default_heuristics_include_each_family_s_own_rules():
    defaults = benchmark.default_schedulers(["solar_sensor_field", "continental_grid"])
    assert set(benchmark.DEFAULT_SCHEDULERS) <= set(defaults)
    assert {"harvest_aware:period=1", "fleet_timing:period=1,trust_threshold=0"} <= set(defaults)
    assert "trust_threshold" in defaults and len(defaults) == len(set(defaults))


def test_the_margin_table_takes_scenarios_that_need_no_grid_energy():
    def row(scheduler, seed, carbon):
        return {"family": "field", "seed": seed, "scheduler": scheduler, "reached_target": 1,
                "carbon_to_target_g": carbon, "final_accuracy": 0.9, "episode_carbon_g": carbon}

    rows = [row("oracle", 1, 0.0), row("all_nodes", 1, 2.0), row("carbon_aware", 1, 0.0),
            row("oracle", 2, 1.0), row("all_nodes", 2, 4.0), row("carbon_aware", 2, 2.0)]
    benchmark.add_scores(rows)
    (margin,) = benchmark.oracle_margins(rows)
    assert margin["best_heuristic"] == "carbon_aware"
    assert margin["saving"] == pytest.approx(0.25)  # (0 + 50 %) / 2
    assert margin["oracle_beaten"] == 0
    assert "| field | carbon_aware | 25% " in benchmark.markdown(rows, "test")


def test_the_docs_section_names_the_schedulers_only_when_they_were_named(tmp_path):
    write_docs_section = benchmark.write_docs_section
    page = tmp_path / "benchmark.md"
    page.write_text("# Benchmark\n\n## Leaderboard: test\n\nold\n\n## Leaderboard: ood\n\nkept\n")
    write_docs_section(page, "test", "| new |\n", 3.2, 2, ["all_nodes", "pretrained"])
    text = page.read_text()
    assert "`greengossip benchmark --split test --schedulers all_nodes pretrained --docs`" in text
    assert "in 3 min with 2 worker(s)" in text and "old" not in text and text.endswith("kept\n")
    write_docs_section(page, "ood", "| other |\n", 1.0, 1)
    assert "`greengossip benchmark --split ood --docs`" in page.read_text()
