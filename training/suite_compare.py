"""The end of a suite training run: the model beside its prior rule and each family's own rules, on test
scenarios of every family at the family's own fleet size.

The first ``test_episodes`` test seeds (20,000..) of each family draw the scenarios (``training/suite.py``),
never used in training or model selection. No oracle plays (that is ``greengossip benchmark``, which
normalises the scores): the table gives targets met and carbon-to-target per family, in
``OUT/comparison/results.csv`` and ``results.md``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from greengossip.agents.heuristics import prior_specs
from greengossip.agents.learned import scheduler_label
from greengossip.training.benchmark import ANCHOR, Job, run_jobs
from greengossip.training.settings import TrainSettings
from greengossip.training.statistics import mean_ci
from greengossip.training.suite import draw_scenario, load_family, split_seeds

FIELDS = ("family", "seed", "scheduler", "reached_target", "carbon_to_target_g", "episode_carbon_g",
          "malicious_participation", "n_nodes")


def family_schedulers(model: str, prior: str | list[str] | None, family: str) -> list[str]:
    """What plays on ``family``: the model, its prior rules, all_nodes and the family's own rules
    (``oracle.rules`` of its range file)."""
    rules = load_family(family)[1].oracle.rules
    return list(dict.fromkeys([model, *prior_specs(prior), ANCHOR, *rules]))


def suite_jobs(model: str, prior: str | list[str] | None, families: list[str], seeds: list[int]) -> list[Job]:
    jobs: list[Job] = []
    for family in families:
        ranges = load_family(family)[1]
        specs = family_schedulers(model, prior, family)
        for seed in seeds:
            draw = draw_scenario(family, seed, ranges)
            for spec in specs:
                label = f"{spec} (prior alone)" if spec in prior_specs(prior) else scheduler_label(spec)
                jobs.append(Job(len(jobs), draw, spec, label))
    return jobs


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per family, each scheduler's targets met and mean carbon-to-target (± 95 % CI) over the
    scenarios where it met the target, best first."""
    lines: list[str] = []
    for family in dict.fromkeys(row["family"] for row in rows):
        lines += [f"### {family}", "", "| scheduler | targets met | carbon-to-target (g) |", "|---|---|---|"]
        entries = []
        for scheduler in dict.fromkeys(row["scheduler"] for row in rows if row["family"] == family):
            mine = [row for row in rows if row["family"] == family and row["scheduler"] == scheduler]
            met = [float(row["carbon_to_target_g"]) for row in mine if row["reached_target"]]
            mean, half, _ = mean_ci(met)
            entries.append((-len(met), mean if met else math.inf, scheduler, len(met), len(mine), mean, half))
        for *_, scheduler, met, total, mean, half in sorted(entries):
            carbon = "–" if math.isnan(mean) else f"{mean:.2f}" + ("" if not np.isfinite(half) else f" ± {half:.2f}")
            lines.append(f"| {scheduler} | {met}/{total} | {carbon} |")
        lines.append("")
    return "\n".join(lines)


def compare_on_suite(model_path: Path, settings: TrainSettings, out: Path, log: logging.Logger | None = None
                     ) -> tuple[list[dict] | None, str | None, str | None]:
    """(rows, Markdown table, error): the comparison of a suite run's model; a failure is reported, not
    raised, since the model is saved already."""
    log = log or logging.getLogger("greengossip.train")
    seeds = split_seeds("test", settings.test_episodes)
    families = settings.suite.family_names
    log.info("comparing %s with its prior rule and each family's rules on test seeds %d..%d of %s", model_path,
             seeds[0], seeds[-1], ", ".join(families))
    try:
        jobs = suite_jobs(str(model_path), settings.reference_rule, families, seeds)
        rows = run_jobs(jobs, settings.compare_workers)
    except Exception as exc:  # noqa: BLE001 - training is saved already; report the failure, keep the run
        log.exception("comparison failed")
        return None, None, f"{type(exc).__name__}: {exc}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = results_table(rows)
    (out / "results.md").write_text(f"Test seeds {seeds[0]}..{seeds[-1]} of each family, at its own fleet size.\n\n"
                                    + table)
    log.info("comparison (%s):\n%s", out / "results.md", table)
    return rows, table, None
