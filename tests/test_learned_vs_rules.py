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
        # carbon_aware meets both targets, harvest_aware only one but scores higher on it: carbon_aware is the
        # best heuristic
        ("solar", 1, "carbon_aware", True, 10.0, 0.5), ("solar", 2, "carbon_aware", True, 30.0, 0.5),
        ("solar", 1, "harvest_aware", True, 5.0, 0.9), ("solar", 2, "harvest_aware", False, "", -1.0),
        ("solar", 1, "model", True, 8.0, 0.6), ("solar", 2, "model", True, 24.0, 0.8),
        ("solar", 1, "oracle", True, 4.0, 1.0), ("solar", 2, "oracle", True, 20.0, 1.0),
        # another saved model in the run: never the best heuristic, however well it scores
        ("solar", 1, "other_model", True, 1.0, 0.95), ("solar", 2, "other_model", True, 2.0, 0.95),
    ])


def test_the_best_heuristic_meets_most_targets_before_it_scores_highest(episodes):
    runs = learned_vs_rules.Runs(episodes)
    assert runs.best_heuristic("solar") == "carbon_aware"


def test_savings_are_paired_over_the_scenarios_both_met(episodes):
    runs = learned_vs_rules.Runs(episodes)
    assert runs.saving("solar", "model", "carbon_aware") == (pytest.approx(1 - 32 / 40), 2)
    # seed 2: harvest_aware missed
    assert runs.saving("solar", "model", "harvest_aware") == (pytest.approx(1 - 8 / 5), 1)


def test_the_table_reports_the_gap_to_the_oracle_closed(episodes, capsys):
    assert learned_vs_rules.main([str(episodes), "--model", "model", "--prior", "harvest_aware",
                                  "--decentralized", ""]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| solar"))
    assert "`carbon_aware`" in row and "+20.0 % (2 scenarios)" in row
    assert "+40.0 %" in row  # score 0.7 against 0.5: (0.7 - 0.5) / (1 - 0.5)


def test_a_scheduler_missing_from_the_run_is_named(episodes, capsys):
    with pytest.raises(SystemExit):
        learned_vs_rules.main([str(episodes), "--model", "nowhere"])
    assert "no episodes of ['nowhere'" in capsys.readouterr().err
