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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.heuristics import HEURISTICS  # noqa: E402
from training.evaluate import read_csv, summarize  # noqa: E402

MODEL = "best_model"
BEST_ON_CARBON = "carbon_periodic"


def scheduler_kpis(path: Path) -> dict[str, dict[str, tuple[float, float, int]]]:
    """The harness's ``summarize`` of one comparison, by scheduler: KPI -> (mean, CI half-width, n). A
    KPI to target averages the episodes that reached it, and its n counts them."""
    return {scheduler: kpis for (_config, scheduler), kpis in summarize(read_csv(path)).items()}


def training_steps(run: Path) -> tuple[int, int]:
    """Steps at the last validation and at the one that saved the best model."""
    with open(run / "evaluations.csv") as handle:
        evaluations = list(csv.DictReader(handle))
    best = [int(r["timesteps"]) for r in evaluations if r["best"] == "True"]
    return int(evaluations[-1]["timesteps"]), best[-1]


def summarise(run: Path) -> str:
    default = scheduler_kpis(run / "comparison" / "results.csv")
    attacked = scheduler_kpis(run / "attack_heavy" / "results.csv")
    larger = scheduler_kpis(run / "x4" / "results.csv")
    steps, best = training_steps(run)

    def to_target(kpis: dict) -> tuple[float, int, int]:
        carbon, _, reached = kpis["carbon_to_target_g"]
        return carbon, reached, kpis["_episodes"][2]

    def attackers(kpis: dict) -> float:
        return kpis["malicious_participation"][0]

    carbon, reached, episodes = to_target(default[MODEL])
    base_carbon, base_reached, _ = to_target(default[BEST_ON_CARBON])
    a_carbon, a_reached, a_episodes = to_target(attacked[MODEL])
    a_count, base_count = attackers(attacked[MODEL]), attackers(attacked[BEST_ON_CARBON])
    fewest = min(attackers(kpis) for name, kpis in attacked.items() if name in HEURISTICS)
    x4_carbon, x4_reached, x4_episodes = to_target(larger[MODEL])
    random_carbon = to_target(larger["random_k"])[0]
    saving = 1 - carbon / base_carbon
    default_ok = reached >= base_reached and carbon <= 0.8 * base_carbon
    return (f"| `{run.name}` | {steps // 1000}k ({best // 1000}k) | {carbon:.1f} g, {reached}/{episodes} "
            f"({-saving:+.1%}) | {a_carbon:.1f} g / {a_count:.0f}, {a_reached}/{a_episodes} "
            f"| {x4_carbon:.0f} g, {x4_reached}/{x4_episodes} (random k {random_carbon:,.0f} g) "
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
