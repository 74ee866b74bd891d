"""``greengossip benchmark``: a leaderboard of schedulers over the scenario suite, normalised to a bound.

    greengossip benchmark --split test --out runs/bench [--schedulers all_nodes carbon_periodic model.zip]
        [--seeds-per-family 10] [--families solar_sensor_field continental_grid] [--workers 2]
        [--docs docs/benchmark.md]

For every family of the suite (``training/suite.py``, ``configs/suite/``) the first ``--seeds-per-family``
seeds of the split each draw one scenario, and every scheduler plays it (``training/evaluate.py``'s
episode, the env reset with the same seed). ``all_nodes`` and the clairvoyant ``oracle``
(``training/oracle.py``: the family's base rules under both views, plus every heuristic of the run) always
play too, because they anchor the score.

**Normalised score**, per scenario: (C_all − C) / (C_all − C_oracle), with C the carbon-to-target; 0 is
all_nodes and 1 the oracle. A missed target scores :data:`FLOOR` (−1), and so does anything worse: the
floor keeps one disastrous scenario from deciding a mean. A scenario where all_nodes misses its target,
or where the oracle is no better than all_nodes, has no scale and is left out of the score (the tables
say on how many scenarios each score rests).

Writes to ``--out``: ``episodes.csv`` (one row per family, seed and scheduler, with what the seed drew),
``leaderboard.csv`` and ``leaderboard.md`` (per family and overall: normalised score and the KPIs, each
with its 95 % confidence interval), ``benchmark.png`` (normalised score per family).
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from greengossip.agents.heuristics import is_heuristic_spec
from greengossip.agents.learned import make_scheduler, scheduler_label
from greengossip.envs.errors import UserError
from greengossip.training import evaluate
from greengossip.training.arg_types import int_at_least
from greengossip.training.run_files import check_writable
from greengossip.training.statistics import mean_ci
from greengossip.training.suite import (
    SPLITS,
    FamilyRanges,
    ScenarioDraw,
    draw_scenario,
    family_names,
    load_family,
    split_seeds,
)

ANCHOR = "all_nodes"  # normalised score 0
ORACLE = "oracle"  # normalised score 1
FLOOR = -1.0  # the score of a missed target, and the lowest any scenario scores
DEFAULT_SCHEDULERS = ("all_nodes", "carbon_aware", "carbon_periodic", "carbon_timing", "harvest_aware",
                      "energy_carbon_trust", "trust_threshold", "battery_greedy")
DRAWN = ("n_nodes", "regions", "year", "start_day", "fleet_share", "battery_scale", "attack_fraction",
         "attack_kinds", "epsilon", "topology")
EPISODE_FIELDS = ("family", "split", "seed", "scheduler", "reached_target", "carbon_to_target_g",
                  "normalised_score", "rounds", "final_accuracy", "episode_carbon_g", "malicious_participation",
                  "mean_harm", "dropouts", "epsilon_spent", "seconds", "oracle_plan", *DRAWN)
# (column, title, key in the episode rows): KPIs averaged per family and scheduler
KPIS = (
    ("carbon_to_target_g", "carbon-to-target (g)", "carbon_to_target_g"),
    ("attackers", "attackers", "malicious_participation"),
    ("harm", "harm", "mean_harm"),
    ("epsilon", "ε spent", "epsilon_spent"),
    ("dropouts", "drop-outs", "dropouts"),
)
LEADERBOARD_FIELDS = ("family", "scheduler", "scenarios", "scored", "normalised_score", "normalised_score_ci",
                      "targets_met", *(f"{c}{s}" for c, *_ in KPIS for s in ("", "_ci")))
OVERALL = "overall"


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=("test", "ood", "validation"), default="test",
                        help="seeds to draw the scenarios with: test (20000..), ood (30000.., outside the "
                        "training ranges) or validation (10000..); default test")
    parser.add_argument("--schedulers", nargs="+", action="extend", default=None, metavar="NAME_OR_PATH",
                        help="heuristic specs (name:key=value,...), saved SB3 model paths or 'all'; comma- or "
                        f"space-separated. Default: {' '.join(DEFAULT_SCHEDULERS)} and the families' own rules "
                        "(oracle.rules in configs/suite/). all_nodes and the oracle always play")
    parser.add_argument("--seeds-per-family", type=int_at_least(1, 10_000), default=10,
                        help="scenarios per family: the split's first N seeds (default 10)")
    parser.add_argument("--families", nargs="+", action="extend", default=None, metavar="NAME",
                        help=f"families to run (default all: {', '.join(family_names())})")
    parser.add_argument("--workers", type=int_at_least(0), default=1,
                        help="parallel processes; 0 = one per CPU core (results do not depend on it; default 1)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--docs", default=None, metavar="MARKDOWN",
                        help="also write the leaderboard into this file's '## Leaderboard: <split>' section")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    check_writable(args.out, "--out")
    families = evaluate._split(args.families) or family_names()
    schedulers = evaluate._split(args.schedulers) or default_schedulers(families)
    workers = args.workers or os.cpu_count() or 1
    started = time.monotonic()
    rows = run_benchmark(schedulers, families, args.split, args.seeds_per_family, args.out, workers=workers,
                         progress=print if args.progress else None)
    minutes = (time.monotonic() - started) / 60
    out = Path(args.out)
    table = (out / "leaderboard.md").read_text()
    if args.docs:
        write_docs_section(args.docs, args.split, table, minutes, workers,
                           schedulers if evaluate._split(args.schedulers) else None)
    print(f"\n{table}")
    print(f"{len(rows)} episodes in {minutes:.1f} min; wrote {out / 'episodes.csv'}, {out / 'leaderboard.csv'}, "
          f"{out / 'leaderboard.md'} and {out / 'benchmark.png'}")
    return 0


def default_schedulers(families: Sequence[str]) -> list[str]:
    """The heuristics a benchmark runs when none are named: :data:`DEFAULT_SCHEDULERS` with their default
    parameters, and each family's own rules (its tuned variants, the oracle's base rules)."""
    own = [rule for family in families if family in family_names() for rule in load_family(family)[1].oracle.rules]
    return list(dict.fromkeys([*DEFAULT_SCHEDULERS, *own]))


# ---------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    index: int
    draw: ScenarioDraw
    spec: str
    label: str
    oracle: tuple | None = None  # (base policies, every, width) for the oracle's job
    luck: int = 0  # the env's reset option: the same world under other random streams
    plan: str | None = None  # an oracle plan (its ``oracle_plan``) to replay in place of ``spec``


def _build_oracle(holder: dict, policies, every: int, width: int, env, seed: int):
    from greengossip.training.oracle import OracleScheduler

    holder["oracle"] = OracleScheduler(env, policies, every=every, width=width, seed=seed)
    return holder["oracle"]


def _build_replay(plan: str, env, seed: int):
    from greengossip.training.oracle import PlanReplay, parse_plan

    return PlanReplay(env, parse_plan(plan), seed=seed)


def run_job(job: Job) -> tuple[int, dict[str, Any]]:
    """One episode: the KPI row of ``training.evaluate.run_episode`` with the family, the draw and the score
    columns."""
    started = time.monotonic()
    holder: dict[str, Any] = {}
    build = (partial(_build_oracle, holder, *job.oracle) if job.oracle is not None
             else partial(_build_replay, job.plan) if job.plan is not None else None)
    row, _ = evaluate.run_episode(job.spec, job.draw.config, job.draw.seed, job.label, job.draw.family, build=build,
                                  luck=job.luck)
    oracle = holder.get("oracle")
    plan = "" if oracle is None else " > ".join(f"{label}@{first}" for first, label in oracle.plan.policies)
    return job.index, {**row, "family": job.draw.family, "split": job.draw.split, "seconds": time.monotonic() - started,
                       "oracle_plan": plan, **job.draw.parameters}


def oracle_policies(ranges: FamilyRanges, heuristics: Sequence[str]):
    """The oracle's base policies in a family: its own rules under its views, then ``heuristics`` as observed."""
    from greengossip.training.oracle import BasePolicy, base_policies

    own = base_policies(ranges.oracle.rules, ranges.oracle.views)
    return tuple(dict.fromkeys([*own, *(BasePolicy(spec, "observed") for spec in heuristics)]))


def build_jobs(schedulers: Sequence[str], families: Sequence[str], split: str, seeds_per_family: int
               ) -> list[Job]:
    specs = list(dict.fromkeys([ANCHOR, *evaluate.expand_schedulers(schedulers)]))
    if ORACLE in specs:
        specs.remove(ORACLE)
    for spec in specs:  # fail before any work on a misspelt name or a missing model
        make_scheduler(spec, seed=0)
    labels = evaluate._labels(specs, scheduler_label)
    heuristics = [spec for spec in specs if is_heuristic_spec(spec)]
    known = family_names()
    jobs: list[Job] = []
    for family in families:
        if family not in known and not Path(family).is_file():
            raise UserError(f"unknown family {family!r}; allowed: {', '.join(known)} (or a range file's path)")
        name, ranges = load_family(family)
        settings = (oracle_policies(ranges, heuristics), ranges.oracle.every, ranges.oracle.width)
        for seed in split_seeds(split, seeds_per_family):
            draw = draw_scenario(name, seed, ranges)
            jobs.append(Job(len(jobs), draw, ORACLE, ORACLE, settings))
            for spec, label in zip(specs, labels):
                jobs.append(Job(len(jobs), draw, spec, label))
    return jobs


def run_jobs(jobs: Sequence[Job], workers: int, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Rows in job order; jobs share nothing and run one torch thread each, so the rows do not depend on
    ``workers``."""
    rows: list[Any] = [None] * len(jobs)

    def done(index: int, row: dict) -> None:
        rows[index] = row
        if progress:
            finished = sum(r is not None for r in rows)
            progress(f"[{finished}/{len(jobs)}] {row['family']} seed {row['seed']} {row['scheduler']}: "
                     f"{'met' if row['reached_target'] else 'missed'} {_cell(row['carbon_to_target_g'])} g "
                     f"({row['seconds']:.0f} s)")

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done(*run_job(job))
        return rows
    method = evaluate._start_method()
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=evaluate._worker_init) as pool:
        # the oracles are the longest jobs: start them first so that no worker waits on one at the end
        order = sorted(jobs, key=lambda job: job.oracle is None)
        for future in as_completed([pool.submit(run_job, job) for job in order]):
            done(*future.result())
    return rows


# ---------------------------------------------------------------------------------------------- scores
def _carbon(row: dict) -> float:
    value = row.get("carbon_to_target_g")
    return float(value) if row.get("reached_target") and value is not None else math.nan


def normalised_score(carbon: float, anchor: float, oracle: float) -> float:
    """(anchor − carbon) / (anchor − oracle), at least :data:`FLOOR`; FLOOR for a miss (NaN carbon); NaN
    where the scenario has no scale (the anchor missed, or the oracle did not beat it)."""
    if math.isnan(anchor) or math.isnan(oracle) or anchor - oracle <= 1e-9 * max(abs(anchor), 1.0):
        return math.nan
    if math.isnan(carbon):
        return FLOOR
    return max(FLOOR, (anchor - carbon) / (anchor - oracle))


def add_scores(rows: list[dict]) -> None:
    """Set each row's ``normalised_score`` from its scenario's all_nodes and oracle rows."""
    scenarios: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        scenarios.setdefault((row["family"], row["seed"]), {})[row["scheduler"]] = row
    for by_scheduler in scenarios.values():
        anchor = _carbon(by_scheduler[ANCHOR]) if ANCHOR in by_scheduler else math.nan
        oracle = _carbon(by_scheduler[ORACLE]) if ORACLE in by_scheduler else math.nan
        for row in by_scheduler.values():
            row["normalised_score"] = normalised_score(_carbon(row), anchor, oracle)


def leaderboard(rows: list[dict]) -> list[dict]:
    """One row per family and scheduler, and per scheduler over all families (``overall``), best first."""
    families = list(dict.fromkeys(row["family"] for row in rows))
    schedulers = list(dict.fromkeys(row["scheduler"] for row in rows))
    out = []
    for family in [*families, OVERALL]:
        table = []
        for scheduler in schedulers:
            group = [r for r in rows if r["scheduler"] == scheduler and family in (OVERALL, r["family"])]
            if not group:
                continue
            score, score_ci, scored = mean_ci([r["normalised_score"] for r in group])
            entry = {"family": family, "scheduler": scheduler, "scenarios": len(group), "scored": scored,
                     "normalised_score": score, "normalised_score_ci": score_ci,
                     "targets_met": sum(int(r["reached_target"]) for r in group)}
            for column, _, key in KPIS:
                values = [_carbon(r) for r in group] if key == "carbon_to_target_g" else [r.get(key) for r in group]
                mean, half, _ = mean_ci([math.nan if v is None else float(v) for v in values])
                entry[column], entry[f"{column}_ci"] = mean, half
            table.append(entry)
        table.sort(key=lambda e: (-e["normalised_score"] if not math.isnan(e["normalised_score"]) else math.inf,
                                  -e["targets_met"]))
        out.extend(table)
    return out


def oracle_margins(rows: list[dict]) -> list[dict]:
    """Per family: the best heuristic (most targets met, then highest normalised score), how much less
    carbon-to-target the oracle needs than it (mean over the scenarios both met), and on how many
    scenarios any heuristic did better than the oracle."""
    from greengossip.training.oracle import outcome_key

    def key(row):
        return outcome_key(bool(row["reached_target"]), _carbon(row), row.get("final_accuracy") or 0.0,
                           row.get("episode_carbon_g") or 0.0)

    board = leaderboard(rows)
    out = []
    for family in dict.fromkeys(row["family"] for row in rows):
        heuristics = [e for e in board if e["family"] == family and e["scheduler"] != ORACLE
                      and is_heuristic_spec(e["scheduler"])]
        if not heuristics:
            continue
        best = max(heuristics, key=lambda e: (e["targets_met"], np.nan_to_num(e["normalised_score"], nan=-np.inf)))
        savings, beaten = [], 0
        seeds = sorted({r["seed"] for r in rows if r["family"] == family})
        for seed in seeds:
            scenario = {r["scheduler"]: r for r in rows if r["family"] == family and r["seed"] == seed}
            oracle = scenario.get(ORACLE)
            if oracle is None:
                continue
            rival = scenario.get(best["scheduler"])
            if rival is not None and not math.isnan(_carbon(rival)) and not math.isnan(_carbon(oracle)):
                if _carbon(rival) > 0:
                    savings.append(1.0 - _carbon(oracle) / _carbon(rival))
                elif _carbon(oracle) == 0:  # both reached the target on harvest alone: nothing to save
                    savings.append(0.0)
            beaten += any(key(r) < key(oracle) for name, r in scenario.items()
                          if name != ORACLE and is_heuristic_spec(name))
        saving, saving_ci, both = mean_ci(savings)
        out.append({"family": family, "best_heuristic": best["scheduler"], "saving": saving, "saving_ci": saving_ci,
                    "both_met": both, "scenarios": len(seeds), "oracle_beaten": beaten})
    return out


# ---------------------------------------------------------------------------------------------- output
def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mean_ci(mean: float, half: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "–"
    return _cell(mean, digits) if not math.isfinite(half) else f"{_cell(mean, digits)} ± {_cell(half, digits)}"


def markdown(rows: list[dict], split: str) -> str:
    board = leaderboard(rows)
    seeds = sorted({row["seed"] for row in rows})
    families = list(dict.fromkeys(row["family"] for row in rows))
    per_family = len({(row["family"], row["seed"]) for row in rows}) // len(families)
    lines = [
        f"Split `{split}`: seeds {seeds[0]}..{seeds[-1]}, {per_family} scenarios per family. Normalised score: "
        f"0 = all_nodes, 1 = the oracle, per scenario (a missed target, and anything worse: {FLOOR:g}), then "
        "averaged; *scored* counts the scenarios with a scale (all_nodes met its target and the oracle beat "
        "it). Cells are means ± 95 % CI (Student t) over scenarios; carbon-to-target averages the scenarios "
        "that met the target; attackers are attacker participations (node-rounds) per episode; harm is the "
        "honest accuracy lost against the attack-free twin (mean over rounds); ε is the most any node spent.",
        "",
    ]
    header = ("| scheduler | normalised score | scored | targets met | carbon-to-target (g) | attackers | harm "
              "| ε spent | drop-outs |")
    for family in [*families, OVERALL]:
        lines += [f"### {family}", "", header, "|---|---|---|---|---|---|---|---|---|"]
        for e in (e for e in board if e["family"] == family):
            name = f"**{e['scheduler']}**" if e["scheduler"] in (ANCHOR, ORACLE) else e["scheduler"]
            cells = [_mean_ci(e["normalised_score"], e["normalised_score_ci"]), str(e["scored"]),
                     f"{e['targets_met']}/{e['scenarios']}",
                     *(_mean_ci(e[c], e[f"{c}_ci"], 3 if c == "harm" else 2) for c, *_ in KPIS)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    margins = oracle_margins(rows)
    if margins:
        lines += ["### The oracle against the best heuristic", "",
                  "The best heuristic of each family: most targets met, then the highest normalised score. *saving*: "
                  "how much less carbon-to-target the oracle needs, mean over the scenarios both met. *oracle "
                  "beaten*: scenarios on which some heuristic finished better than the oracle (target met first, "
                  "then carbon).", "",
                  "| family | best heuristic | saving | both met | oracle beaten |", "|---|---|---|---|---|"]
        for m in margins:
            saving = "–" if not math.isfinite(m["saving"]) else (
                f"{m['saving']:.0%}" + ("" if not math.isfinite(m["saving_ci"]) else f" ± {m['saving_ci']:.0%}"))
            lines.append(f"| {m['family']} | {m['best_heuristic']} | {saving} | {m['both_met']}/{m['scenarios']} | "
                         f"{m['oracle_beaten']}/{m['scenarios']} |")
        lines.append("")
    return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key)) for key in fields})


def plot(rows: list[dict], path: Path) -> None:
    """Normalised score per family (and overall), one bar per scheduler with its 95 % interval."""
    from greengossip.training.plots import _colours, _pyplot

    plt = _pyplot()
    board = leaderboard(rows)
    families = [*dict.fromkeys(row["family"] for row in rows), OVERALL]
    schedulers = list(dict.fromkeys(row["scheduler"] for row in rows))
    colours = _colours(schedulers)
    width = 0.8 / len(schedulers)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * len(families)), 4.0))
    for i, scheduler in enumerate(schedulers):
        entries = {e["family"]: e for e in board if e["scheduler"] == scheduler}
        means = [entries[f]["normalised_score"] if f in entries else np.nan for f in families]
        errors = [np.nan_to_num(entries[f]["normalised_score_ci"]) if f in entries else 0.0 for f in families]
        axis.bar(np.arange(len(families)) + (i - (len(schedulers) - 1) / 2) * width, means, width, yerr=errors,
                 label=scheduler, color=colours[scheduler], capsize=2)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    axis.set_xticks(np.arange(len(families)), families, rotation=20, ha="right")
    axis.set_ylabel("normalised score (0 all_nodes, 1 oracle)")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_benchmark(schedulers: Sequence[str], families: Sequence[str], split: str, seeds_per_family: int,
                  out_dir: str | Path, workers: int = 1, progress: Callable[[str], None] | None = None
                  ) -> list[dict]:
    """Play every scheduler, all_nodes and the oracle on the split's scenarios of every family; write the
    episode rows, the leaderboard (CSV and Markdown) and the plot. Returns the episode rows."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    out = check_writable(out_dir)
    jobs = build_jobs(schedulers, families, split, seeds_per_family)
    rows = run_jobs(jobs, workers, progress)
    add_scores(rows)
    write_csv(out / "episodes.csv", rows, EPISODE_FIELDS)
    write_csv(out / "leaderboard.csv", leaderboard(rows), LEADERBOARD_FIELDS)
    (out / "leaderboard.md").write_text(markdown(rows, split))
    plot(rows, out / "benchmark.png")
    return rows


def write_docs_section(path: str | Path, split: str, table: str, minutes: float, workers: int,
                       schedulers: Sequence[str] | None = None) -> None:
    """Replace the body of the ``## Leaderboard: <split>`` section of ``path`` with ``table``; the line above
    it names the command, with the ``schedulers`` when they were named rather than the default list."""
    named = f" --schedulers {' '.join(schedulers)}" if schedulers else ""
    replace_section(path, f"## Leaderboard: {split}", [
        f"Written by `greengossip benchmark --split {split}{named} --docs` (training/benchmark.py) in "
        f"{minutes:.0f} min with {workers} worker(s).", "", *table.rstrip("\n").splitlines()])


def replace_section(path: str | Path, heading: str, body: list[str]) -> None:
    """Replace the body of section ``heading`` of the Markdown file ``path`` (up to the next ``## `` heading)
    with ``body``; the section is added at the end where there is none."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.is_file() else []
    body = ["", *body, ""]
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start + 1:end] = body
    else:
        lines += ["", heading, *body] if lines else [heading, *body]
    path.write_text("\n".join(lines) + "\n")
