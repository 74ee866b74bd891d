"""benchmarks/learned_vs_rules.py: a learned scheduler against each family's best rule, its prior and the oracle."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import load_benchmark

learned_vs_rules = load_benchmark("learned_vs_rules")
FIELDS = ("family", "seed", "scheduler", "reached_target", "carbon_to_target_g", "normalised_score")


def _write(path, episodes):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for family, seed, scheduler, met, carbon, score in episodes:
            writer.writerow(dict(zip(FIELDS, (family, seed, scheduler, int(met), carbon, score))))
    return path


@pytest.fixture
def episodes(tmp_path):
    return _write(tmp_path / "episodes.csv", [
        # rule_a meets both targets, rule_b only one but scores higher on it: rule_a is the best heuristic
        ("solar", 1, "rule_a", True, 10.0, 0.5), ("solar", 2, "rule_a", True, 30.0, 0.5),
        ("solar", 1, "rule_b", True, 5.0, 0.9), ("solar", 2, "rule_b", False, "", -1.0),
        ("solar", 1, "model", True, 8.0, 0.6), ("solar", 2, "model", True, 24.0, 0.8),
        ("solar", 1, "oracle", True, 4.0, 1.0), ("solar", 2, "oracle", True, 20.0, 1.0),
    ])


def test_the_best_heuristic_meets_most_targets_before_it_scores_highest(episodes):
    runs = learned_vs_rules.Runs(episodes)
    assert runs.best_heuristic("solar", {"model"}) == "rule_a"


def test_savings_are_paired_over_the_scenarios_both_met(episodes):
    runs = learned_vs_rules.Runs(episodes)
    assert runs.saving("solar", "model", "rule_a") == (pytest.approx(1 - 32 / 40), 2)
    assert runs.saving("solar", "model", "rule_b") == (pytest.approx(1 - 8 / 5), 1)  # seed 2: rule_b missed


def test_the_table_reports_the_gap_to_the_oracle_closed(episodes, capsys):
    assert learned_vs_rules.main([str(episodes), "--model", "model", "--prior", "rule_b", "--decentralized", ""]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| solar"))
    assert "`rule_a`" in row and "+20.0 % (2 scenarios)" in row
    assert "+40.0 %" in row  # score 0.7 against 0.5: (0.7 - 0.5) / (1 - 0.5)


def test_a_scheduler_missing_from_the_run_is_named(episodes, capsys):
    with pytest.raises(SystemExit):
        learned_vs_rules.main([str(episodes), "--model", "nowhere"])
    assert "no episodes of ['nowhere'" in capsys.readouterr().err
