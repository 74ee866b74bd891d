"""``greengossip evaluate``: every scheduler on the same seeds and configs; KPIs, tables, plots.

    greengossip evaluate --config configs/tiny.yaml --schedulers all --episodes 3 --out runs/eval

One job is one episode of one scheduler on one config with one seed (``env.reset(seed=seed)``, the
scheduler built with the same seed). Jobs share nothing, run one torch thread each, and are put back
in job order, so the numbers are the same whatever ``--workers`` is. KPIs come from ``info`` only
(never from the observation returned with ``done``; STYLE.md item 13).

Writes to ``--out``:

* ``results.csv``: one row per episode, the KPIs of :data:`KPIS` and a few more (see :func:`run_episode`);
* ``rounds.csv``: per round accuracy, cumulative carbon / energy and battery state of charge;
* ``results.md``: per config, mean ± 95 % confidence interval of each KPI and each KPI relative to
  the baseline scheduler (:func:`markdown_table`);
* ``pareto.png``, ``curves.png``, ``battery.png`` (see ``training/plots.py``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import multiprocessing
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from greengossip.agents.heuristics import HEURISTICS
from greengossip.agents.learned import make_scheduler, scheduler_label
from greengossip.envs import ENV_ID
from greengossip.envs.errors import UserError
from greengossip.training import plots
from greengossip.training.arg_types import int_at_least
from greengossip.training.rollout import env_for, one_torch_thread, play_episode
from greengossip.training.run_files import check_writable
from greengossip.training.statistics import mean_ci

# a comma that separates items, not one followed by the next key=value of a scheduler's parameters
ITEM_COMMA = re.compile(r",(?![A-Za-z_]\w*=)")

# (key, column title, which way is better). carbon/energy/rounds "to target" are averaged over the
# episodes that reached the target; the table says how many did when not all.
KPIS: tuple[tuple[str, str, str], ...] = (
    ("carbon_to_target_g", "carbon to target (gCO2e)", "lower"),
    ("energy_to_target_wh", "energy to target (Wh)", "lower"),
    ("rounds_to_target", "rounds to target", "lower"),
    ("final_accuracy", "final accuracy", "higher"),
    ("deadline_missed", "deadline misses", "lower"),
    ("episode_carbon_g", "episode carbon (gCO2e)", "lower"),
    ("malicious_participation", "malicious participation", "lower"),
    ("dropouts", "drop-outs", "lower"),
    ("epsilon_spent", "ε spent", "lower"),
)
TO_TARGET = ("carbon_to_target_g", "energy_to_target_wh", "rounds_to_target")
ROW_FIELDS = (
    "scheduler", "config", "seed", "reached_target", "rounds", "rounds_to_target", "carbon_to_target_g",
    "energy_to_target_wh", "final_accuracy", "deadline_missed", "episode_carbon_g", "episode_energy_wh",
    "episode_grid_wh", "episode_bytes_sent", "malicious_participation", "dropouts", "epsilon_spent",
    "mean_participants", "mean_broadcasters", "mean_harm", "episode_return",
)
TRACE_FIELDS = ("scheduler", "config", "seed", "round", "accuracy", "cumulative_carbon_g",
                "cumulative_energy_wh", "mean_soc", "min_soc")


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", nargs="+", action="extend", required=True, metavar="YAML",
                        help="one or more env configs (repeatable)")
    parser.add_argument("--schedulers", nargs="+", action="extend", default=None, metavar="NAME_OR_PATH",
                        help="heuristic names, saved SB3 model paths or 'all' (every heuristic); comma- or "
                             "space-separated; a heuristic takes parameters as name:key=value,key=value. "
                             "Default: all")
    parser.add_argument("--episodes", type=int_at_least(0, 1_000_000), default=5,
                        help="episodes per scheduler and config: seeds 0..N-1 (ignored with --seeds; default 5)")
    parser.add_argument("--seeds", nargs="+", action="extend", default=None, metavar="SEED",
                        help="explicit env seeds (comma- or space-separated)")
    parser.add_argument("--out", required=True, help="output directory (created if missing; checked for writing "
                        "before any episode)")
    parser.add_argument("--baseline", default="all_nodes", help="scheduler the table compares against "
                        "(default all_nodes)")
    parser.add_argument("--workers", type=int_at_least(0), default=0,
                        help="parallel processes; 0 = one per CPU core, at "
                        "most one per episode (results do not depend on it)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _split(values: Sequence[str] | None) -> list[str]:
    """Comma- or space-separated items. A comma followed by ``key=`` continues the parameters of the
    ``name:key=value`` before it, so ``carbon_periodic:period=6,sprint_gap=0.02`` stays one scheduler."""
    return [item for value in values or () for word in value.split() for item in ITEM_COMMA.split(word) if item]


def run(args: argparse.Namespace) -> int:
    check_writable(args.out, "--out")
    schedulers = _split(args.schedulers) or ["all"]
    try:
        seeds = [int(s) for s in _split(args.seeds)] if args.seeds else list(range(args.episodes))
    except ValueError:
        raise UserError(f"--seeds takes whole numbers, comma- or space-separated; got "
                        f"{' '.join(args.seeds)!r}") from None
    if not seeds:
        raise SystemExit("greengossip evaluate: no seeds (use --episodes N with N >= 1, or --seeds)")
    workers = args.workers or min(os.cpu_count() or 1, len(expand_schedulers(schedulers)) * len(seeds)
                                  * len(args.config))
    run_evaluation(schedulers, args.config, seeds, args.out, baseline=args.baseline, workers=workers,
                   progress=args.progress)
    out = Path(args.out)
    print(f"\n{(out / 'results.md').read_text()}")
    print(f"wrote {out / 'results.csv'}, {out / 'rounds.csv'}, {out / 'results.md'} and plots in {out}/")
    return 0


# ---------------------------------------------------------------------------------------------- jobs
def expand_schedulers(schedulers: Sequence[str]) -> list[str]:
    """``"all"`` becomes every heuristic; duplicates are dropped, order kept."""
    out: list[str] = []
    for spec in schedulers:
        out.extend(HEURISTICS if str(spec) == "all" else [str(spec)])
    return list(dict.fromkeys(out))


def _labels(items: Sequence[Any], label) -> list[str]:
    """Short, unique names: ``label(item)``, or the full text where two short names collide."""
    short = [label(item) for item in items]
    return [s if short.count(s) == 1 else str(item) for s, item in zip(short, items)]


def _config_label(config: Any) -> str:
    return Path(config).stem if isinstance(config, (str, Path)) else type(config).__name__


@dataclass(frozen=True)
class Job:
    index: int
    spec: str
    label: str
    config: Any
    config_label: str
    seed: int


def run_episode(spec: str, config: Any, seed: int, label: str | None = None,
                config_label: str | None = None, build: Callable[[Any, int], Any] | None = None,
                luck: int = 0) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """One episode of ``spec`` on ``config`` with env seed ``seed`` (and ``luck``, ``play_episode``):
    (KPI row, per-round trace).
    ``build(env, seed)`` makes the scheduler instead of ``make_scheduler(spec)`` (one that reads the env,
    such as the benchmark's oracle)."""
    with one_torch_thread():
        env = gym.make(ENV_ID, config=config)
        scheduler = make_scheduler(spec, env=env, seed=seed) if build is None else build(env, seed)
        env = env_for(scheduler, env)
        core = env.unwrapped
        trace: dict[str, list[float]] = {name: [] for name in TRACE_FIELDS[3:]}
        totals = {"carbon": 0.0, "energy": 0.0, "dropouts": 0, "malicious": 0.0, "participants": 0,
                  "broadcasters": 0, "harm": 0.0, "harm_rounds": 0}

        def record(info: dict[str, Any], reward: float | None) -> None:
            if reward is not None:
                totals["carbon"] += info["carbon_g"]
                totals["energy"] += info["energy_wh"]
                totals["dropouts"] += int(info.get("dropped_nodes", 0))
                totals["malicious"] += float(info.get("malicious_participants", 0) or 0)
                totals["participants"] += int(info.get("participants", 0))
                totals["broadcasters"] += int(info.get("broadcasting_nodes", 0))
                harm = info.get("harm")
                if harm is not None and math.isfinite(harm):
                    totals["harm"] += float(harm)
                    totals["harm_rounds"] += 1
            _record(trace, core, len(trace["round"]), info.get("accuracy", float("nan")), totals)

        info = play_episode(scheduler, env, seed, on_step=record, luck=luck)
        env.close()

    steps = info["steps"]
    reached = info.get("rounds_to_target") is not None
    epsilon = info.get("epsilon_spent")
    row = {
        "scheduler": label or scheduler_label(spec),
        "config": config_label or _config_label(config),
        "seed": int(seed),
        "reached_target": int(reached),
        "rounds": int(info.get("episode_rounds", steps)),
        "rounds_to_target": info.get("rounds_to_target"),
        "carbon_to_target_g": info.get("carbon_to_target_g"),
        "energy_to_target_wh": info.get("energy_to_target_wh"),
        "final_accuracy": float(info.get("final_accuracy", info["accuracy"])),
        "deadline_missed": int(not reached),
        "episode_carbon_g": float(info.get("episode_carbon_g", totals["carbon"])),
        "episode_energy_wh": float(info.get("episode_energy_wh", totals["energy"])),
        "episode_grid_wh": float(info.get("episode_grid_wh", float("nan"))),
        "episode_bytes_sent": float(info.get("episode_bytes_sent", float("nan"))),
        "malicious_participation": totals["malicious"],
        "dropouts": totals["dropouts"],
        "epsilon_spent": 0.0 if epsilon is None else float(np.max(epsilon)),
        "mean_participants": totals["participants"] / max(steps, 1),
        "mean_broadcasters": totals["broadcasters"] / max(steps, 1),
        "mean_harm": totals["harm"] / totals["harm_rounds"] if totals["harm_rounds"] else float("nan"),
        "episode_return": info["return"],
    }
    return row, trace


def _record(trace: dict[str, list[float]], core, round_index: int, accuracy: float, totals: dict) -> None:
    state, scenario = core.sim_state, core.scenario
    soc = (state.battery_wh / scenario.capacity_wh).cpu().numpy()
    trace["round"].append(round_index)
    trace["accuracy"].append(float(accuracy))
    trace["cumulative_carbon_g"].append(totals["carbon"])
    trace["cumulative_energy_wh"].append(totals["energy"])
    trace["mean_soc"].append(float(soc.mean()))
    trace["min_soc"].append(float(soc.min()))


def _run_job(job: Job):
    row, trace = run_episode(job.spec, job.config, job.seed, job.label, job.config_label)
    return job.index, row, trace


def _start_method() -> str:
    """How worker processes start. A fresh (spawned) worker spends seconds importing torch and building
    the per-process caches (pvlib's clear-sky year per region, the digits split) before its first
    episode, which is longer than most episodes; forking a parent that has built them costs nothing.
    Fork is used on Linux unless CUDA is initialised; workers then run one torch thread, as PyTorch's
    own DataLoader workers do. ``GREENGOSSIP_START_METHOD`` overrides (fork, spawn, forkserver)."""
    wanted = os.environ.get("GREENGOSSIP_START_METHOD")
    if wanted:
        return wanted
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods() and \
            not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _warm_caches(configs: Sequence[Any], seed: int) -> None:
    """Build each config's scenario once in the parent so that forked workers inherit the caches."""
    with one_torch_thread():
        for config in configs:
            env = gym.make(ENV_ID, config=config)
            env.reset(seed=seed)
            env.close()


def _worker_init() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)


def run_evaluation(
    schedulers: list[str],
    configs: list[str],
    seeds: list[int],
    out_dir: str | Path,
    baseline: str = "all_nodes",
    workers: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Run every scheduler on every config with every seed; write CSVs, ``results.md`` and plots.

    ``schedulers``: heuristic names (``"all"`` = every heuristic), ``name:key=value`` specs or saved
    SB3 model paths. Returns one dict of KPIs per episode, in (scheduler, config, seed) order.
    """
    out = check_writable(out_dir)
    specs = expand_schedulers(schedulers)
    if not specs or not configs or not seeds:
        raise ValueError("run_evaluation needs at least one scheduler, one config and one seed; got "
                         f"schedulers={schedulers!r}, configs={configs!r}, seeds={seeds!r}")
    for spec in specs:  # fail before any work on a misspelt name or a missing model
        make_scheduler(spec, seed=0)
    labels = _labels(specs, scheduler_label)
    config_labels = _labels(list(configs), _config_label)
    if baseline not in labels:
        alias = dict(zip(specs, labels)).get(baseline)
        if alias is None:
            print(f"baseline {baseline!r} is not among the schedulers {labels}; comparing against "
                  f"{labels[0]!r}", file=sys.stderr)
        baseline = alias or labels[0]

    combos = [(spec, label, config, clabel, int(seed))
              for spec, label in zip(specs, labels)
              for config, clabel in zip(configs, config_labels)
              for seed in seeds]
    jobs = [Job(i, *combo) for i, combo in enumerate(combos)]

    results: list[Any] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc="evaluate", unit="episode", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                bar.set_postfix_str(f"{job.label} / {job.config_label} / seed {job.seed}", refresh=False)
                _, row, trace = _run_job(job)
                results[job.index] = (row, trace)
                bar.update()
        else:
            method = _start_method()
            if method == "fork":
                _warm_caches(configs, seeds[0])
            context = multiprocessing.get_context(method)
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                                     initializer=_worker_init) as pool:
                futures = [pool.submit(_run_job, job) for job in jobs]
                for future in as_completed(futures):
                    index, row, trace = future.result()
                    results[index] = (row, trace)
                    bar.set_postfix_str(f"{row['scheduler']} / {row['config']} / seed {row['seed']}",
                                        refresh=False)
                    bar.update()
    finally:
        bar.close()

    rows = [row for row, _ in results]
    traces = [(row, trace) for row, trace in results]
    write_csv(rows, out / "results.csv")
    write_traces(traces, out / "rounds.csv")
    (out / "results.md").write_text(markdown_table(rows, baseline))
    plots.write_all(rows, traces, out, baseline=baseline)
    return rows


def compare_with_heuristics(schedulers: list[str], config_path: Path, seeds: Sequence[int], out: Path,
                            workers: int = 1, progress: bool = False, log: logging.Logger | None = None
                            ) -> tuple[list[dict] | None, str | None, str | None]:
    """The end of a training run: :func:`run_evaluation` of its model (the first of ``schedulers``) beside
    the heuristics on the held-out test ``seeds``: (rows, table, error). The model is saved already, so
    a failure of the harness is reported, not raised."""
    log = log or logging.getLogger("greengossip.evaluate")
    log.info("comparing %s with %s on %s, test seeds %d..%d", schedulers[0], ", ".join(schedulers[1:]),
             config_path, seeds[0], seeds[-1])
    try:
        rows = run_evaluation(schedulers, [str(config_path)], list(seeds), out, workers=workers, progress=progress)
    except Exception as exc:  # noqa: BLE001 - training is saved already; report the failure, keep the run
        log.exception("comparison failed")
        return None, None, f"{type(exc).__name__}: {exc}"
    table_path = out / "results.md"
    table = table_path.read_text() if table_path.is_file() else None
    if table:
        log.info("comparison (%s):\n%s", table_path, table)
    return rows, table, None


# ---------------------------------------------------------------------------------------------- output
def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(ROW_FIELDS) + [key for key in (rows[0] if rows else {}) if key not in ROW_FIELDS]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key)) for key in fields})


def read_csv(path: Path) -> list[dict]:
    """Rows written by ``write_csv``, numbers as floats and empty cells (None, NaN) as NaN."""
    def value(text: str) -> Any:
        if text == "":
            return float("nan")
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as handle:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(handle)]


def write_traces(traces: list[tuple[dict, dict]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRACE_FIELDS)
        for row, trace in traces:
            for values in zip(*(trace[name] for name in TRACE_FIELDS[3:])):
                writer.writerow([row["scheduler"], row["config"], row["seed"], *values])


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "—"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _relative(value: float, base: float, kind: str) -> str:
    if not (np.isfinite(value) and np.isfinite(base)):
        return "—"
    if kind == "rate":  # a share of episodes: difference in percentage points
        diff = round((value - base) * 100)
        return "±0 pp" if diff == 0 else f"{diff:+d} pp"
    if base == 0:  # a count the baseline never had: absolute difference
        diff = value - base
        return "±0" if diff == 0 else f"{diff:+.3g}"
    change = round((value / base - 1) * 100)
    return "±0 %" if change == 0 else f"{change:+d} %"


def summarize(rows: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(config, scheduler) -> KPI -> (mean, CI half-width, n)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["config"], row["scheduler"]), []).append(row)
    return {key: {kpi: mean_ci([r.get(kpi) for r in group]) for kpi, *_ in KPIS} | {
        "_episodes": (float(len(group)), float("nan"), len(group))}
        for key, group in groups.items()}


def markdown_table(rows: list[dict], baseline: str) -> str:
    """Per config: mean ± 95 % CI of each KPI per scheduler, then each KPI relative to ``baseline``.

    Relative values are ``mean / baseline mean - 1``; for deadline misses (a share) and where the
    baseline is 0 they are absolute differences. KPIs "to target" average the episodes that reached
    the target, with (reached/episodes) shown when some did not.
    """
    summary = summarize(rows)
    configs = list(dict.fromkeys(row["config"] for row in rows))
    schedulers = list(dict.fromkeys(row["scheduler"] for row in rows))
    lines = ["# Evaluation", ""]
    seeds = sorted({row["seed"] for row in rows})
    lines.append(f"Seeds: {', '.join(map(str, seeds))}. Cells: mean ± 95 % confidence interval (Student t) "
                 "over episodes; KPIs *to target* average the episodes that reached the target "
                 "(reached/episodes shown otherwise). Better: lower for all KPIs except final accuracy.")
    for config in configs:
        lines += ["", f"## {config}", ""]
        header = "| scheduler | episodes | " + " | ".join(title for _, title, _ in KPIS) + " |"
        lines += [header, "|" + "---|" * (len(KPIS) + 2)]
        for scheduler in schedulers:
            stats = summary.get((config, scheduler))
            if stats is None:
                continue
            n_episodes = stats["_episodes"][2]
            cells = []
            for kpi, _, _ in KPIS:
                mean, half, n = stats[kpi]
                if kpi == "deadline_missed":
                    cells.append(f"{round(mean * n)}/{n}")
                    continue
                cell = _fmt(mean) if not np.isfinite(half) or half == 0 else f"{_fmt(mean)} ± {_fmt(half)}"
                if kpi in TO_TARGET and n < n_episodes:
                    cell += f" ({n}/{n_episodes})"
                cells.append(cell)
            name = f"**{scheduler}**" if scheduler == baseline else scheduler
            lines.append(f"| {name} | {n_episodes} | " + " | ".join(cells) + " |")
        base = summary.get((config, baseline))
        if base is None:
            continue
        note = (f"Relative to **{baseline}** (mean / baseline mean − 1; deadline misses: difference in "
                "percentage points of episodes; absolute difference where the baseline is 0):")
        lines += ["", note, ""]
        lines += ["| scheduler | " + " | ".join(title for _, title, _ in KPIS) + " |",
                  "|" + "---|" * (len(KPIS) + 1)]
        for scheduler in schedulers:
            stats = summary.get((config, scheduler))
            if stats is None or scheduler == baseline:
                continue
            cells = [_relative(stats[kpi][0], base[kpi][0], "rate" if kpi == "deadline_missed" else "ratio")
                     for kpi, _, _ in KPIS]
            lines.append(f"| {scheduler} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
