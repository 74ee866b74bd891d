"""The table of docs/results.md: one Markdown row per run folder of ``benchmarks/train_default.sh``.

    python benchmarks/results_table.py runs/*               # one row per run
    python benchmarks/results_table.py --by-recipe runs/*   # one row per recipe: docs/results.md's table

Reads each run's ``evaluations.csv`` (steps trained, step of the best model) and the harness's
``results.csv`` files of its three comparisons on the test seeds: ``comparison/`` (default scenario),
``attack_heavy/`` and ``x4/`` (four times the nodes). Carbon is carbon-to-target, averaged over the episodes
that reached the target. The last two columns check the learned scheduler's two targets against the registered
heuristics at their defaults (the prior rule of a residual model runs in the comparisons too, but is not counted):

* ``default``: at least as many targets reached as the best registered heuristic of the run's default
  comparison (most targets reached, then least carbon to target) and at least 20 % less carbon to target
  than it;
* ``attackers``: fewer attackers (attacker node-rounds, summed per episode, averaged) than that heuristic
  on attack_heavy; in brackets the fewest of any registered heuristic, which the trust rules hold.

``--model best_model_unguarded`` reads another model of the run instead: a ``carbon_guard`` run keeps the
plain pick beside the guarded one. Where both picks are the same validation, the best model's rows stand
for it; otherwise its rows come from ``<run>/<model>/<comparison>/results.csv``, written by

    greengossip evaluate --config default --schedulers RUN/best_model_unguarded.zip \
        --seeds 20000 ... 20009 --out RUN/best_model_unguarded/comparison   # and attack_heavy likewise

with the heuristics' rows taken from the run's own comparisons. A comparison not run shows as "not run".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from greengossip.agents.heuristics import HEURISTICS  # noqa: E402
from greengossip.training.evaluate import read_csv, summarize  # noqa: E402

MODEL = "best_model"


def scheduler_kpis(path: Path) -> dict[str, dict[str, tuple[float, float, int]]]:
    """The harness's ``summarize`` of one comparison, by scheduler: KPI -> (mean, CI half-width, n). A
    KPI to target averages the episodes that reached it, and its n counts them."""
    return {scheduler: kpis for (_config, scheduler), kpis in summarize(read_csv(path)).items()}


def training_steps(run: Path, model: str = MODEL) -> tuple[int, int]:
    """Steps at the last validation and at the one that saved ``model`` (its .json record, or for the
    best model the last validation marked best)."""
    with open(run / "evaluations.csv") as handle:
        evaluations = list(csv.DictReader(handle))
    if model != MODEL:
        return int(evaluations[-1]["timesteps"]), int(json.loads((run / f"{model}.json").read_text())["timesteps"])
    best = [int(r["timesteps"]) for r in evaluations if r["best"] == "True"]
    return int(evaluations[-1]["timesteps"]), best[-1]


def comparison_kpis(run: Path, part: str, model: str, same_as_best: bool) -> dict[str, dict] | None:
    """The heuristics' KPIs of one comparison with ``model``'s under the name MODEL: from the run's own
    comparison when ``model`` is the best model or was saved by the same validation
    (``same_as_best``), else from ``<run>/<model>/<part>``; None where it was not evaluated there."""
    kpis = scheduler_kpis(run / part / "results.csv")
    if same_as_best:
        return kpis
    extra = run / model / part / "results.csv"
    if not extra.is_file():
        return None
    kpis.pop(MODEL, None)
    return {**kpis, MODEL: scheduler_kpis(extra)[model]}


def run_figures(run: Path, model: str = MODEL) -> dict | None:
    """One run's figures against the heuristics, or None where its comparisons were not run for ``model``."""
    steps, best = training_steps(run, model)
    same_as_best = model == MODEL or best == training_steps(run)[1]
    default, attacked, larger = (comparison_kpis(run, part, model, same_as_best)
                                 for part in ("comparison", "attack_heavy", "x4"))
    figures = {"steps": steps, "best": best}
    if default is None or attacked is None:
        return {**figures, "run": False}

    def to_target(kpis: dict) -> tuple[float, int, int]:
        carbon, _, reached = kpis["carbon_to_target_g"]
        return carbon, reached, kpis["_episodes"][2]

    def attackers(kpis: dict) -> float:
        return kpis["malicious_participation"][0]

    def rank(name: str) -> tuple[int, float]:
        carbon, reached, _ = to_target(default[name])
        return -reached, carbon if reached else math.inf

    best_rule = min((name for name in default if name in HEURISTICS), key=rank)
    carbon, reached, episodes = to_target(default[MODEL])
    base_carbon, base_reached, _ = to_target(default[best_rule])
    a_carbon, a_reached, a_episodes = to_target(attacked[MODEL])
    a_count, base_count = attackers(attacked[MODEL]), attackers(attacked[best_rule])
    figures.update(
        run=True, best_rule=best_rule, carbon=carbon, reached=reached, episodes=episodes,
        saving=1 - carbon / base_carbon,
        attack_carbon=a_carbon, attack_reached=a_reached, attack_episodes=a_episodes, attackers=a_count,
        base_attackers=base_count,
        fewest=min(attackers(kpis) for name, kpis in attacked.items() if name in HEURISTICS),
        default_ok=reached >= base_reached and carbon <= 0.8 * base_carbon, attack_ok=a_count < base_count,
        x4=None if larger is None else (*to_target(larger[MODEL]), to_target(larger["random_k"])[0]),
    )
    return figures


def summarise(run: Path, model: str = MODEL) -> str:
    f = run_figures(run, model)
    steps = f"{f['steps'] // 1000}k ({f['best'] // 1000}k)"
    if not f["run"]:
        return f"| `{run.name}` ({model}) | {steps} | not run |"
    if f["x4"] is None:
        x4 = "not run"
    else:
        x4_carbon, x4_reached, x4_episodes, random_k = f["x4"]
        x4 = f"{x4_carbon:.0f} g, {x4_reached}/{x4_episodes} (random k {random_k:,.0f} g)"
    name = f"`{run.name}`" + ("" if model == MODEL else f" ({model})")
    return (f"| {name} | {steps} | {f['carbon']:.1f} g, {f['reached']}/{f['episodes']} "
            f"({-f['saving']:+.1%}) | {f['attack_carbon']:.1f} g / {f['attackers']:.0f}, "
            f"{f['attack_reached']}/{f['attack_episodes']} | {x4} "
            f"| {'yes' if f['default_ok'] else 'no'} ({f['best_rule']}) | {'yes' if f['attack_ok'] else 'no'} "
            f"({f['base_attackers']:.0f}; fewest {f['fewest']:.0f}) |")


def recipe_of(run: Path) -> str:
    """The training recipe a run used, by name: the settings file its train.log names."""
    log = run / "train.log"
    found = re.search(r"\(settings (\S+?)\)", log.read_text()) if log.is_file() else None
    return Path(found.group(1)).stem if found else "unknown"


def recipe_rows(runs: list[Path], model: str = MODEL) -> list[str]:
    """docs/results.md's table of recipes: the runs grouped by the recipe they trained with."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    for run in runs:
        figures = run_figures(run, model)
        if figures["run"]:
            seed = yaml.safe_load((run / "settings.yaml").read_text())["seed"]
            groups.setdefault(recipe_of(run), []).append((seed, figures))
    rows = ["| recipe | seeds | carbon to target | attackers | targets missed | both targets met |",
            "|---|---|---|---|---|---|"]
    for recipe, members in sorted(groups.items()):
        figures = [f for _, f in sorted(members, key=lambda member: member[0])]
        carbon = [f["carbon"] for f in figures]
        saving = [-f["saving"] for f in figures]
        attackers = [f["attackers"] for f in figures]
        missed = sum(f["episodes"] - f["reached"] + f["attack_episodes"] - f["attack_reached"] for f in figures)
        total = sum(f["episodes"] + f["attack_episodes"] for f in figures)
        met = sum(f["default_ok"] and f["attack_ok"] for f in figures)
        rows.append(f"| `{recipe}` | {', '.join(str(seed) for seed, _ in sorted(members))} "
                    f"| {min(carbon):.1f}–{max(carbon):.1f} g ({min(saving):+.0%} to {max(saving):+.0%}) "
                    f"| {min(attackers):.0f}–{max(attackers):.0f} | {missed} of {total} | {met} of {len(figures)} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of benchmarks/train_default.sh")
    parser.add_argument("--model", default=MODEL, help="which saved model of each run (file stem; default "
                        f"{MODEL}, or best_model_unguarded for a carbon_guard run's plain pick)")
    parser.add_argument("--by-recipe", action="store_true", help="one row per training recipe (the table of "
                        "docs/results.md) instead of one per run")
    args = parser.parse_args(argv)
    finished = []
    for run in args.runs:
        if not run.is_dir():
            print(f"skipped {run}: not a folder", file=sys.stderr)
            continue
        missing = [part for part in ("evaluations.csv", "comparison/results.csv", "attack_heavy/results.csv",
                                     "x4/results.csv") if not (run / part).exists()]
        if args.model != MODEL and not (run / f"{args.model}.json").is_file():
            missing.append(f"{args.model}.json (not a carbon_guard run?)")
        if missing:
            print(f"skipped {run}: unfinished, no {', '.join(missing)}", file=sys.stderr)
            continue
        finished.append(run)
    if args.by_recipe:
        print("\n".join(recipe_rows(finished, args.model)))
        return
    print("| run | steps (best) | default: carbon to target | attack_heavy: carbon / attackers | 4x nodes "
          "| default target (best rule) | fewer attackers than the best rule |")
    print("|---|---|---|---|---|---|---|")
    for run in finished:
        print(summarise(run, args.model))

if __name__ == "__main__":
    main()
