"""The table of docs/results.md: one Markdown row per run folder of ``benchmarks/train_default.sh``.

    python benchmarks/results_table.py runs/quick-start-s*

Reads each run's ``evaluations.csv`` (steps trained, step of the best model) and the harness's
``results.csv`` files of its three comparisons on the test seeds: ``comparison/`` (default scenario),
``attack_heavy/`` and ``x4/`` (four times the nodes). Carbon is carbon-to-target, averaged over the episodes
that reached the target. The last two columns check the learned scheduler's two targets against the registered
heuristics at their defaults (the prior rule of a residual model runs in the comparisons too, but is not counted):

* ``default``: at least as many targets reached as ``carbon_periodic`` (the best heuristic on carbon to
  target) and at least 20 % less carbon to target than it;
* ``attackers``: fewer attackers (attacker node-rounds, summed per episode, averaged) than
  ``carbon_periodic`` on attack_heavy; in brackets the fewest of any registered heuristic, which the
  trust rules hold.

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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from greengossip.agents.heuristics import HEURISTICS  # noqa: E402
from greengossip.training.evaluate import read_csv, summarize  # noqa: E402

MODEL = "best_model"
BEST_ON_CARBON = "carbon_periodic"


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


def summarise(run: Path, model: str = MODEL) -> str:
    steps, best = training_steps(run, model)
    same_as_best = model == MODEL or best == training_steps(run)[1]
    default, attacked, larger = (comparison_kpis(run, part, model, same_as_best)
                                 for part in ("comparison", "attack_heavy", "x4"))
    if default is None or attacked is None:
        return f"| `{run.name}` ({model}) | {steps // 1000}k ({best // 1000}k) | not run |"

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
    if larger is None:
        x4 = "not run"
    else:
        x4_carbon, x4_reached, x4_episodes = to_target(larger[MODEL])
        x4 = f"{x4_carbon:.0f} g, {x4_reached}/{x4_episodes} (random k {to_target(larger['random_k'])[0]:,.0f} g)"
    saving = 1 - carbon / base_carbon
    default_ok = reached >= base_reached and carbon <= 0.8 * base_carbon
    name = f"`{run.name}`" + ("" if model == MODEL else f" ({model})")
    return (f"| {name} | {steps // 1000}k ({best // 1000}k) | {carbon:.1f} g, {reached}/{episodes} "
            f"({-saving:+.1%}) | {a_carbon:.1f} g / {a_count:.0f}, {a_reached}/{a_episodes} | {x4} "
            f"| {'yes' if default_ok else 'no'} | {'yes' if a_count < base_count else 'no'} "
            f"({base_count:.0f}; fewest {fewest:.0f}) |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of benchmarks/train_default.sh")
    parser.add_argument("--model", default=MODEL, help="which saved model of each run (file stem; default "
                        f"{MODEL}, or best_model_unguarded for a carbon_guard run's plain pick)")
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
        if args.model != MODEL and not (run / f"{args.model}.json").is_file():
            print(f"| `{run.name}` | no {args.model}.json (not a carbon_guard run?) |")
            continue
        print(summarise(run, args.model))


if __name__ == "__main__":
    main()
