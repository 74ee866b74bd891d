"""benchmarks/oracle_luck.py: the oracle's saving as drawn and its replayed plan's under other luck."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

SPEC = importlib.util.spec_from_file_location("oracle_luck", ROOT / "benchmarks" / "oracle_luck.py")
oracle_luck = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(oracle_luck)
RULES = oracle_luck.rule_headroom.RULES


def test_the_oracle_is_scored_as_drawn_and_its_plan_against_the_best_rule_under_other_luck():
    carbon = {(A, 0): [10.0, 10.0], (A, 1): [20.0, 10.0], (B, 0): [12.0, None], (B, 1): [9.0, 9.0]}
    rules = [{"family": "f", "seed": seed, "spec": spec, "draw": draw, "met": value is not None, "carbon": value}
             for spec in RULES for draw in (0, 1)
             for seed, value in enumerate(carbon.get((spec, draw), [None, None]))]
    outcomes = {("f", 0): {oracle_luck.ORACLE: 5.0, oracle_luck.REPLAYED: 18.0},
                ("f", 1): {oracle_luck.ORACLE: 5.0, oracle_luck.REPLAYED: None}}
    (row,) = oracle_luck.table_rows(rules, outcomes)
    assert row["best"] == A
    oracle, replayed, pick, *_ = row["others"]
    assert oracle == (oracle_luck.ORACLE, 2, pytest.approx(1 - 10 / 20))
    assert replayed == (oracle_luck.REPLAYED, 1, pytest.approx(1 - 18 / 20))  # A's 20 g on the redraw
    assert pick[0] == "per-scenario pick"


A, B = RULES[0], RULES[1]


def test_views_set_the_oracle_base_policies_views(monkeypatch):
    captured = []
    monkeypatch.setattr(oracle_luck.rule_headroom, "play", lambda *args, **kwargs: [])
    monkeypatch.setattr(oracle_luck, "run_jobs", lambda jobs, workers: captured.extend(jobs) or [
        {"oracle_plan": "all_nodes@0", "reached_target": 0, "carbon_to_target_g": None} for _ in jobs])
    for views, expected in ((None, {"observed", "truth"}), (("observed",), {"observed"})):
        captured.clear()
        oracle_luck.play(["adversarial_fleet"], [10_000], 1, views)
        oracle, replay = captured
        assert {policy.view for policy in oracle.oracle[0]} == expected
        assert (replay.plan, replay.luck, replay.oracle) == ("all_nodes@0", 1, None)  # its plan, other luck
