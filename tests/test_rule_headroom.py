"""benchmarks/rule_headroom.py: the best rule, the per-scenario pick and paired savings, and its docs section."""

from __future__ import annotations

import importlib.util
import math

import pytest

from greengossip.training.suite import SEED_LIMIT
from tests.conftest import ROOT

SPEC = importlib.util.spec_from_file_location("rule_headroom", ROOT / "benchmarks" / "rule_headroom.py")
headroom = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(headroom)

A, B = headroom.RULES[0], headroom.RULES[1]


def _rows(results: dict[str, list[float | None]]) -> list[dict]:
    rows = []
    for spec, carbons in results.items():
        rows += [{"family": "f", "seed": seed, "spec": spec, "met": carbon is not None, "carbon": carbon}
                 for seed, carbon in enumerate(carbons)]
    others = [spec for spec in headroom.RULES if spec not in results]
    rows += [{"family": "f", "seed": seed, "spec": spec, "met": False, "carbon": None}
             for spec in others for seed in range(3)]
    return rows


def test_the_best_rule_meets_most_targets_and_the_pick_takes_the_cleanest_per_scenario():
    rows = _rows({A: [10.0, 10.0, None], B: [12.0, 6.0, 8.0], "model": [9.0, None, 7.0]})
    (row,) = headroom.family_rows(rows, ["model"])
    assert row["best"] == B and row["best_met"] == 3  # more targets beats less carbon
    pick, model = row["others"]
    assert pick == ("per-scenario pick", 3, pytest.approx(1 - (10 + 6 + 8) / 26))
    assert model == ("model", 2, pytest.approx(1 - (9 + 7) / (12 + 8)))  # paired: only the seeds both met


def test_the_docs_section_is_replaced_and_the_rest_kept(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Room above the rules\n\nold table\n\n## Next\n\nkept\n")
    headroom.replace_section(page, headroom.HEADING, ["new table"])
    text = page.read_text()
    assert "old table" not in text and "new table" in text and text.index("new table") < text.index("## Next")
    assert text.endswith("kept\n")
    headroom.replace_section(tmp_path / "fresh.md", headroom.HEADING, ["first"])
    assert (tmp_path / "fresh.md").read_text() == "## Room above the rules\n\nfirst\n\n"


def test_a_size_factor_plays_each_draw_on_a_larger_fleet_and_says_so():
    draw = headroom.draw_scenario("continental_grid", 10_000)
    doubled = headroom.sized(draw, 2)
    assert doubled.config.n_nodes == 2 * draw.config.n_nodes and doubled.seed == draw.seed
    assert [r.name for r in doubled.config.regions] == [r.name for r in draw.config.regions]
    assert headroom.sized(draw, 1) is draw
    rows = _rows({A: [10.0, 10.0, 10.0]})
    assert "at 2 times the fleet size each seed drew" in headroom.markdown(
        headroom.family_rows(rows, []), "validation", [0, 1, 2], 2)


def test_the_last_row_sums_the_targets_and_averages_the_savings_over_families():
    rows = _rows({A: [10.0, 10.0, 10.0], "model": [9.0, 8.0, None]})
    rows += [{**row, "family": "g", "carbon": None if row["carbon"] is None else row["carbon"] * 2}
             for row in _rows({A: [10.0, 10.0, 10.0], "model": [11.0, 10.0, 9.0]})]
    last = headroom.markdown(headroom.family_rows(rows, ["model"]), "validation", [0, 1, 2]).splitlines()[-1]
    saving = (1 - 17 / 20 + 1 - 30 / 30) / 2
    assert last == f"| mean over families | 6/6 | 6/6, +0.0 % | 5/6, {100 * saving:+.1f} % |"


def test_guarded_copies_keep_the_model_but_its_guard(tmp_path):
    from greengossip.agents.learned import make_scheduler
    from greengossip.training.rule_switching import RuleSwitchingVecEnv, new_switching_model
    from tests.test_rule_switching import RULES, _vec_env

    model = new_switching_model(RuleSwitchingVecEnv(_vec_env(), RULES, guard=0.5), first_rule_bias=0.0,
                                net_arch=[8], seed=0, n_steps=16, batch_size=16)
    model.save(tmp_path / "switch.zip")
    spec = str(tmp_path / "switch.zip")
    copies = headroom.guarded_copies([spec, A], [None, 0.25], tmp_path)
    assert [headroom.scheduler_label(path) for path in copies] == ["switch-guard-none", "switch-guard-0.25"]
    assert [make_scheduler(path).guard for path in copies] == [None, 0.25]
    assert make_scheduler(spec).guard == 0.5  # the model named keeps its own guard
    with pytest.raises(SystemExit, match="rule-switch models"):
        headroom.guarded_copies([A], [0.3], tmp_path)
    with pytest.raises(headroom.argparse.ArgumentTypeError, match="between 0 and 1"):
        headroom.guard_value("2")


def test_skip_plays_the_seeds_after_the_first_ones():
    assert headroom.played_seeds("validation", 3) == [10_000, 10_001, 10_002]
    assert headroom.played_seeds("validation", 2, skip=30) == [10_030, 10_031]
    with pytest.raises(ValueError, match="--skip must be at least 0"):
        headroom.played_seeds("validation", 2, skip=-1)


def test_a_redraw_replays_the_first_draws_pick_against_the_best_rule_of_the_redraw():
    first = _rows({A: [10.0, 10.0, 10.0], B: [8.0, 12.0, None]})
    second = [{**row, "draw": 1} for row in _rows({A: [10.0, 20.0, 10.0], B: [12.0, 10.0, 5.0]})]
    (row,) = headroom.family_rows(first + second, [])
    assert row["best"] == A  # chosen on the first draw only
    pick, own, replayed = row["others"]
    assert pick == ("per-scenario pick", 3, pytest.approx(1 - (8 + 10 + 10) / 30))
    assert own == ("per-scenario pick, redrawn", 3, pytest.approx(1 - (10 + 10 + 5) / 40))
    # the first draw picked B, A, A: on the redraw that is 12, 20, 10 against A's 10, 20, 10
    assert replayed == ("first pick, replayed", 3, pytest.approx(1 - 42 / 40))
    text = headroom.markdown([row], "validation", [0, 1, 2], redraw="luck")
    assert "under other random streams of the same world" in text and "| first pick, replayed |" in text


def test_redrawn_jobs_keep_the_scenario_and_change_the_luck_or_the_world():
    draw = headroom.draw_scenario("continental_grid", 10_000)
    job = headroom.Job(0, draw, A, A)
    lucky = headroom.redrawn(job, "luck")
    assert lucky.luck == 1 and lucky.draw is draw
    world = headroom.redrawn(job, "world")
    assert world.luck == 0 and world.draw.config == draw.config
    assert world.draw.seed == draw.seed + headroom.WORLD_SEED_OFFSET >= SEED_LIMIT  # no split's seed
    with pytest.raises(ValueError, match="redraw must be one of luck, world"):
        headroom.redrawn(job, "weather")


def test_a_saving_over_scenarios_that_needed_no_carbon_is_zero_not_a_crash():
    results = {0: {"a": 0.0, "b": 0.0}, 1: {"a": 0.0, "b": None}}
    assert headroom.paired_saving(results, [0, 1], "a", "b") == 0.0
    assert math.isnan(headroom.paired_saving({0: {"a": 1.0, "b": 0.0}}, [0], "a", "b"))  # no scale
