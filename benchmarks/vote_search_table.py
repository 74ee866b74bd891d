"""The vote search of one evolution run as a Markdown table: every mix of rules' mechanisms it tried on the
train draws, its targets and its paired score against the reference rule, overall and per family.

    python benchmarks/vote_search_table.py runs/evolution

Reads ``search.csv`` and ``record.json`` from the run's folder (``greengossip.training.evolution`` with
``search_votes``). Scores are mean clipped log carbon savings against the reference in the same scenarios,
times 100 (about % less carbon; a missed target scores -160), the mix's score the mean over families; a
toggle's gain is its score's rise over the mix its round started from, with the standard error of the paired
per-draw differences. The moves the search kept are in bold.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from greengossip.training.evolution import clear_gain

FIXED = ("round", "move", "votes", "score", "gain", "gain_se", "targets", "draws")


def kept_moves(rows: list[dict], min_gain: float, confidence: float) -> set[int]:
    """Indexes of the rows the search kept, by its own rule: of a round's toggles whose gain over the round's mix
    exceeds ``min_gain`` and ``confidence`` standard errors, the highest score (the first of equals); the search
    stops at a round with none."""
    kept = set()
    for round_ in sorted({int(row["round"]) for row in rows} - {0}):
        clear = [i for i, row in enumerate(rows) if int(row["round"]) == round_
                 and clear_gain(float(row["gain"]), float(row["gain_se"]), min_gain, confidence)]
        if not clear:
            break
        kept.add(max(clear, key=lambda i: (float(rows[i]["score"]), -i)))
    return kept


def table(rows: list[dict], min_gain: float, confidence: float) -> str:
    families = [name for name in rows[0] if name not in FIXED]
    header = ["round", "move", "mix", "targets", "score", "gain ± s.e.", *families]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    kept = kept_moves(rows, min_gain, confidence)
    for i, row in enumerate(rows):
        move = f"**{row['move']}**" if i in kept else row["move"]
        gain = "" if int(row["round"]) == 0 else f"{100 * float(row['gain']):+.1f} ± {100 * float(row['gain_se']):.1f}"
        cells = [row["round"], move, row["votes"], f"{row['targets']}/{row['draws']}",
                 f"{100 * float(row['score']):+.1f}", gain, *(f"{100 * float(row[name]):+.1f}" for name in families)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the folder of an evolution run with search_votes")
    args = parser.parse_args(argv)
    search, record = args.run / "search.csv", args.run / "record.json"
    if not search.is_file() or not record.is_file():
        parser.error(f"{args.run} has no search.csv and record.json: give the --out folder of a "
                     "greengossip.training.evolution run whose settings name search_votes")
    with search.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    settings = json.loads(record.read_text())["settings"]
    print(table(rows, settings["search_min_gain"], settings["search_confidence"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
