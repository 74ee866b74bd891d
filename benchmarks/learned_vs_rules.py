"""How a learned scheduler fares against each family's best rule, its own prior rule and the oracle.

    python benchmarks/learned_vs_rules.py RUN/episodes.csv [--model pretrained]
        [--prior carbon_periodic:period=1,trust_threshold=0] [--decentralized pretrained-decentralized]

Reads the ``episodes.csv`` of one ``greengossip benchmark`` run (any split) and prints a Markdown table, one
row per family, with the figures the suite's learned scheduler is judged by:

* the family's **best heuristic**: of the run's heuristics (every scheduler but the oracle and the learned
  ones), most targets met, then the highest mean normalised score, as the leaderboard's last table picks it;
* **carbon saved against it**, paired: total carbon-to-target over the scenarios that both met, so a
  scenario one of them misses does not count for the other;
* the same against the model's **prior rule** (the rule a residual policy starts from);
* the share of the best heuristic's **gap to the oracle** the model closes, in normalised score:
  (score_model - score_best) / (1 - score_best);
* the **decentralized** policy's carbon against the centralized model's, paired.

A last line averages the per-family savings and gap shares, with equal weight per family.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from greengossip.agents.heuristics import is_heuristic_spec


def _met(row: dict) -> bool:
    return row["reached_target"].strip().lower() in ("1", "true")


def _score(row: dict) -> float:
    text = row["normalised_score"].strip()
    return float(text) if text not in ("", "nan") else math.nan


class Runs:
    """The episodes of one benchmark run, by family, scheduler and seed."""

    def __init__(self, path: Path):
        self.rows: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                self.rows[(row["family"], row["scheduler"])][int(row["seed"])] = row
        self.families = sorted({family for family, _ in self.rows})
        self.schedulers = sorted({scheduler for _, scheduler in self.rows})

    def targets(self, family: str, scheduler: str) -> int:
        return sum(_met(row) for row in self.rows[(family, scheduler)].values())

    def score(self, family: str, scheduler: str) -> float:
        scores = [s for s in map(_score, self.rows[(family, scheduler)].values()) if not math.isnan(s)]
        return statistics.mean(scores) if scores else math.nan

    def saving(self, family: str, scheduler: str, against: str) -> tuple[float, int]:
        """Share of ``against``'s carbon-to-target that ``scheduler`` saves over the scenarios both met."""
        mine, theirs = self.rows[(family, scheduler)], self.rows[(family, against)]
        seeds = [seed for seed, row in mine.items() if _met(row) and seed in theirs and _met(theirs[seed])]
        ours = sum(float(mine[seed]["carbon_to_target_g"]) for seed in seeds)
        base = sum(float(theirs[seed]["carbon_to_target_g"]) for seed in seeds)
        return ((base - ours) / base if base > 0 else math.nan), len(seeds)

    def best_heuristic(self, family: str) -> str:
        rules = [s for s in self.schedulers if is_heuristic_spec(s) and (family, s) in self.rows]
        return max(rules, key=lambda s: (self.targets(family, s), self.score(family, s)))


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:+.1f} %"


def table(runs: Runs, model: str, prior: str | None, decentralized: str | None) -> str:
    header = ["family", "best heuristic", "targets (model / best)", "score (model / best)",
              "carbon saved vs best", "gap to oracle closed"]
    if prior:
        header.append(f"carbon saved vs prior `{prior}`")
    if decentralized:
        header.append("decentralized: carbon saved vs model")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    savings, gaps, wins = [], [], 0
    for family in runs.families:
        if (family, model) not in runs.rows:
            continue
        best = runs.best_heuristic(family)
        score_model, score_best = runs.score(family, model), runs.score(family, best)
        saved, both = runs.saving(family, model, best)
        gap = (score_model - score_best) / (1 - score_best) if score_best < 1 else math.nan
        savings.append(saved)
        gaps.append(gap)
        wins += saved > 0
        cells = [family, f"`{best}`", f"{runs.targets(family, model)} / {runs.targets(family, best)}",
                 f"{score_model:.2f} / {score_best:.2f}", f"{_percent(saved)} ({both} scenarios)", _percent(gap)]
        if prior:
            saved_prior, both_prior = runs.saving(family, model, prior)
            cells.append(f"{_percent(saved_prior)} ({both_prior}); targets {runs.targets(family, prior)}")
        if decentralized:
            saved_dec, both_dec = runs.saving(family, decentralized, model)
            cells.append(f"{_percent(saved_dec)} ({both_dec}); targets {runs.targets(family, decentralized)}")
        lines.append("| " + " | ".join(cells) + " |")
    finite = [s for s in savings if not math.isnan(s)]
    lines.append("")
    lines.append(f"Mean over families: carbon saved against the best heuristic "
                 f"{_percent(statistics.mean(finite) if finite else math.nan)}, ahead in {wins} of "
                 f"{len(savings)} families; share of the gap to the oracle closed "
                 f"{_percent(statistics.mean(gaps) if gaps else math.nan)}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("episodes", type=Path, help="episodes.csv of a greengossip benchmark run")
    parser.add_argument("--model", default="pretrained", help="the learned scheduler's label in the run")
    parser.add_argument("--prior", default="carbon_periodic:period=1,trust_threshold=0",
                        help="its prior rule's label ('' for none)")
    parser.add_argument("--decentralized", default="pretrained-decentralized",
                        help="the decentralized policy's label ('' for none)")
    args = parser.parse_args(argv)
    if not args.episodes.is_file():
        parser.error(f"no file {args.episodes}: give the episodes.csv that greengossip benchmark wrote")
    runs = Runs(args.episodes)
    missing = [name for name in (args.model, args.prior, args.decentralized) if name and name not in runs.schedulers]
    if missing:
        parser.error(f"{args.episodes} has no episodes of {missing}; it has {', '.join(runs.schedulers)}")
    print(table(runs, args.model, args.prior or None, args.decentralized or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
