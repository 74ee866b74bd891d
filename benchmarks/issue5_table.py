"""Issue 5's figures for runs of ``benchmarks/train_default.sh``: one Markdown row per run folder.

    python benchmarks/issue5_table.py runs/s19-attack5-s*

Reads each run's ``evaluations.csv`` (steps trained, step of the best model) and the harness's
``results.csv`` files of its three comparisons on the test seeds: ``comparison/`` (default scenario),
``attack_heavy/`` and ``x4/`` (four times the nodes). Carbon is carbon-to-target, averaged over the episodes
that reached the target. The last two columns check issue 5's figures against the registered heuristics
at their defaults (the prior rule of a residual model runs in the comparisons too, but is not counted):

* ``default``: at least as many targets reached as ``carbon_periodic`` (the best heuristic on carbon to
  target) and at least 20 % less carbon to target than it;
* ``attackers``: fewer attackers (attacker node-rounds, summed per episode, averaged) than
  ``carbon_periodic`` on attack_heavy; in brackets the fewest of any registered heuristic, which the
  trust rules hold.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.heuristics import HEURISTICS  # noqa: E402

MODEL = "best_model"
BEST_ON_CARBON = "carbon_periodic"


def episode_rows(path: Path) -> dict[str, list[dict]]:
    """The harness's per-episode rows, grouped by scheduler."""
    rows: dict[str, list[dict]] = defaultdict(list)
    with open(path) as handle:
        for row in csv.DictReader(handle):
            rows[row["scheduler"]].append(row)
    return rows


def carbon_to_target(rows: list[dict]) -> tuple[float, int]:
    """Mean carbon to target over the episodes that reached it (nan if none), and how many did."""
    reached = [float(r["carbon_to_target_g"]) for r in rows if r["reached_target"] in ("1", "True", "true")]
    return (float(np.mean(reached)) if reached else float("nan")), len(reached)


def attackers(rows: list[dict]) -> float:
    return float(np.mean([float(r["malicious_participation"]) for r in rows]))


def training_steps(run: Path) -> tuple[int, int]:
    """Steps at the last validation and at the one that saved the best model."""
    with open(run / "evaluations.csv") as handle:
        evaluations = list(csv.DictReader(handle))
    best = [int(r["timesteps"]) for r in evaluations if r["best"] == "True"]
    return int(evaluations[-1]["timesteps"]), best[-1]


def summarise(run: Path) -> str:
    default = episode_rows(run / "comparison" / "results.csv")
    attacked = episode_rows(run / "attack_heavy" / "results.csv")
    larger = episode_rows(run / "x4" / "results.csv")
    steps, best = training_steps(run)
    carbon, reached = carbon_to_target(default[MODEL])
    base_carbon, base_reached = carbon_to_target(default[BEST_ON_CARBON])
    a_carbon, a_reached = carbon_to_target(attacked[MODEL])
    a_count, base_count = attackers(attacked[MODEL]), attackers(attacked[BEST_ON_CARBON])
    fewest = min(attackers(rows) for name, rows in attacked.items() if name in HEURISTICS)
    x4_carbon, x4_reached = carbon_to_target(larger[MODEL])
    random_carbon, _ = carbon_to_target(larger["random_k"])
    saving = 1 - carbon / base_carbon
    default_ok = reached >= base_reached and carbon <= 0.8 * base_carbon
    return (f"| `{run.name}` | {steps // 1000}k ({best // 1000}k) | {carbon:.1f} g, {reached}/{len(default[MODEL])} "
            f"({-saving:+.1%}) | {a_carbon:.1f} g / {a_count:.0f}, {a_reached}/{len(attacked[MODEL])} "
            f"| {x4_carbon:.0f} g, {x4_reached}/{len(larger[MODEL])} (random k {random_carbon:,.0f} g) "
            f"| {'yes' if default_ok else 'no'} | {'yes' if a_count < base_count else 'no'} "
            f"({base_count:.0f}; fewest {fewest:.0f}) |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of benchmarks/train_default.sh")
    args = parser.parse_args(argv)
    print("| run | steps (best) | default: carbon to target | attack_heavy: carbon / attackers | 4x nodes "
          "| default figure | fewer attackers than carbon_periodic |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        if not run.is_dir():
            print(f"skipped {run}: not a folder", file=sys.stderr)
            continue
        missing = [part for part in ("evaluations.csv", "comparison/results.csv", "attack_heavy/results.csv",
                                     "x4/results.csv") if not (run / part).exists()]
        if missing:
            print(f"| `{run.name}` | unfinished: no {', '.join(missing)} |")
            continue
        print(summarise(run))


if __name__ == "__main__":
    main()
