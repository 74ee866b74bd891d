"""benchmarks/vote_search_table.py: the vote search's rows as a table, with the moves it kept."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark

vote_search_table = load_benchmark("vote_search_table")


def _rows(*rows):
    return [{"round": r, "move": m, "votes": v, "score": s, "gain": g, "gain_se": e, "targets": 4, "draws": 4,
             "solar": s} for r, m, v, s, g, e in rows]


def test_of_the_clear_toggles_the_best_is_kept():
    rows = _rows((0, "start", "(prior)", 0.0, 0.0, 0.0),
                 (1, "+a", "a", 0.05, 0.05, 0.01), (1, "+b", "b", 0.08, 0.08, 0.1),  # +b: the gain is not clear
                 (2, "+b", "a+b", 0.085, 0.035, 0.01), (2, "-a", "(prior)", 0.0, -0.05, 0.01))
    assert vote_search_table.kept_moves(rows, min_gain=0.01, confidence=1.0) == {1, 3}
    assert vote_search_table.kept_moves(rows, min_gain=0.01, confidence=0.0) == {2, 3}  # on the mean alone: +b
    assert vote_search_table.kept_moves(rows, min_gain=0.1, confidence=0.0) == set()


def test_ties_go_to_the_move_tried_first():
    rows = _rows((0, "start", "(prior)", 0.0, 0.0, 0.0), (1, "+a", "a", 0.05, 0.05, 0.0),
                 (1, "+b", "b", 0.05, 0.05, 0.0))
    assert vote_search_table.kept_moves(rows, min_gain=0.0, confidence=1.0) == {1}


def test_the_table_marks_kept_moves_and_reads_the_run_folder(tmp_path, capsys):
    rows = _rows((0, "start", "(prior)", 0.0, 0.0, 0.0), (1, "+a", "a", 0.05, 0.05, 0.01),
                 (1, "+b", "b", -0.02, -0.02, 0.01))
    fields = list(rows[0])
    (tmp_path / "search.csv").write_text(
        ",".join(fields) + "\n" + "".join(",".join(str(r[f]) for f in fields) + "\n" for r in rows))
    (tmp_path / "record.json").write_text(json.dumps({"settings": {"search_min_gain": 0.01,
                                                                   "search_confidence": 1.0}}))
    assert vote_search_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | **+a** | a | 4/4 | +5.0 | +5.0 ± 1.0 | +5.0 |" in out
    assert "| 1 | +b | b | 4/4 | -2.0 | -2.0 ± 1.0 | -2.0 |" in out


def test_a_folder_without_a_search_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        vote_search_table.main([str(tmp_path)])
    assert "no search.csv" in capsys.readouterr().err
