"""How much room the hand-written rules leave a scheduler that chooses among them, per suite family.

    python benchmarks/rule_headroom.py [--split train|validation|test|ood] [--seeds 10] [--skip 0] [--workers 2]
        [--size-factor 2] [--schedulers pretrained runs/x/best_model.zip] [--guards none 0.2 0.3]
        [--redraw luck|world] [--docs docs/benchmark.md]

Every rule of ``RULES`` (and every scheduler named with ``--schedulers``) plays ``--seeds`` scenarios of the
split in each family (its first, or those after the first ``--skip``: more draws for a choice made on
the first ones), at the family's own fleet size, or with ``--size-factor k`` at k
times the size each seed drew: how a model chosen on validation draws holds up on fleets larger than it
was trained on, without touching the ood seeds. Per family it prints:

* the **best rule**: most targets met, then the least mean carbon-to-target over the scenarios it met;
* the **per-scenario pick**: on each scenario, the rule with the least carbon-to-target among those that met
  the target, chosen in hindsight. Its saving against the best rule (total carbon-to-target, paired over the
  scenarios both met) bounds what any scheduler that follows one of the rules for a whole episode can gain;
* each named scheduler's paired saving against the best rule, and its targets;
* with ``--guards``, each rule-switch model of ``--schedulers`` once more under each deadline guard named
  (``none``, or the share of the rounds to the deadline from which its first rule plays:
  ``agents.rule_switching.RuleSwitchingScheduler``), as ``<model>-guard-<g>``: how the guard was chosen.

* with ``--redraw``, how much of the pick a scheduler could hope to learn: every rule plays each scenario
  a second time, under other random streams of the same world (``luck``: the env's ``reset`` option, same
  fleet, graph, weather and start hour) or in another world drawn with the same parameters (``world``: another
  env seed, the scenario's region, season, fleet size and mix kept). Two more columns: the per-scenario
  pick of the redraw (its own hindsight), and the first draw's pick replayed on the redraw, both against the
  family's best rule on the redraw. What the replayed pick keeps is a property of what stayed (the world,
  or the drawn parameters), which a scheduler could learn to read; what it loses was owed to what was drawn
  again (chance, or the world).

A last row gives each scheduler's targets over all families and its saving averaged over the families.

With ``--docs`` the table replaces the "## Room above the rules" section of that Markdown file (with
``--size-factor k``: "## Room above the rules, at k times the fleet size").
Train seeds are what a method may be fitted to, validation seeds (the default) the split for choosing methods;
the test and ood splits are for reporting.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from greengossip.agents.learned import make_scheduler, scheduler_label
from greengossip.agents.rule_switching import RuleSwitchingScheduler, check_guard
from greengossip.training.benchmark import Job, replace_section, run_jobs
from greengossip.training.suite import draw_scenario, family_names, load_family, resized, split_seeds

# the memoryless rules a residual policy can take, and carbon_aware, which keeps every node working
RULES = ("carbon_aware", "harvest_aware:period=1", "harvest_aware:period=2", "network_aware:period=1",
         "energy_carbon_trust", "fleet_timing:period=1,trust_threshold=0", "battery_quorum:period=1",
         "carbon_periodic:period=1,trust_threshold=0", "carbon_periodic:period=2", "carbon_timing:period=1")
HEADING = "## Room above the rules"
REDRAWS = ("luck", "world")
# --redraw world: env seeds this far above the split's seed, beyond every split (training.suite.SEED_LIMIT)
WORLD_SEED_OFFSET = 1_000_000
PICK, PICK_REDRAWN, PICK_REPLAYED = "per-scenario pick", "per-scenario pick, redrawn", "first pick, replayed"


def sized(draw, size_factor: float):
    """``draw`` with ``size_factor`` times the fleet it drew (at least 2 nodes)."""
    if size_factor == 1:
        return draw
    return dataclasses.replace(draw, config=resized(draw.config, max(2, round(size_factor * draw.config.n_nodes))))


def redrawn(job: Job, redraw: str) -> Job:
    """``job`` on the same scenario drawn again: under other random streams (``luck``) or as another world
    with the same drawn parameters (``world``)."""
    if redraw == "luck":
        return dataclasses.replace(job, luck=1)
    if redraw == "world":
        return dataclasses.replace(job, draw=dataclasses.replace(job.draw, seed=job.draw.seed + WORLD_SEED_OFFSET))
    raise ValueError(f"redraw must be one of {', '.join(REDRAWS)}, got {redraw!r}")


def play(families: list[str], seeds: list[int], schedulers: list[str], workers: int,
         size_factor: float = 1.0, redraw: str | None = None) -> list[dict]:
    """Every rule and scheduler on every scenario, through the benchmark's jobs (no oracle): one row per
    episode with the family, seed, spec, carbon-to-target (None where the target was missed) and draw (0;
    1 for the rules' second play of each scenario under ``redraw``)."""
    jobs: list[tuple[Job, int, int]] = []  # (job, split seed, draw)
    for family in families:
        ranges = load_family(family)[1]
        for seed in seeds:
            draw = sized(draw_scenario(family, seed, ranges), size_factor)
            for spec in (*RULES, *schedulers):
                jobs.append((Job(len(jobs), draw, spec, spec), seed, 0))
    if redraw is not None:
        jobs += [(dataclasses.replace(redrawn(job, redraw), index=len(jobs) + i), seed, 1)
                 for i, (job, seed, _) in enumerate([entry for entry in jobs if entry[0].spec in RULES])]
    rows = run_jobs([job for job, _, _ in jobs], workers)
    return [{"family": job.draw.family, "seed": seed, "spec": job.spec, "met": bool(row["reached_target"]),
             "carbon": float(row["carbon_to_target_g"]) if row["reached_target"] else None, "draw": draw}
            for (job, seed, draw), row in zip(jobs, rows)]


def played_seeds(split: str, count: int, skip: int = 0) -> list[int]:
    """``count`` seeds of ``split`` after its first ``skip``."""
    if skip < 0:
        raise ValueError(f"--skip must be at least 0, got {skip}")
    return split_seeds(split, skip + count)[skip:]


def guard_value(text: str) -> float | None:
    """``none`` or a share of the rounds to the deadline (argparse type of ``--guards``)."""
    if text == "none":
        return None
    try:
        return check_guard(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a guard is 'none' or a share between 0 and 1, got {text!r}") from None


def guarded_copies(schedulers: list[str], guards: list[float | None], folder: Path) -> list[str]:
    """For each rule-switch model among ``schedulers`` and each guard, a copy of the model with that guard,
    saved in ``folder`` as ``<stem>-guard-<g>.zip`` (``none`` for no guard); their paths."""
    copies = []
    for spec in schedulers:
        scheduler = make_scheduler(spec)
        if not isinstance(scheduler, RuleSwitchingScheduler):
            continue
        model, own = scheduler.model, getattr(scheduler.model, "switch_guard", None)
        try:  # loaded models are cached: the spec itself must keep its own guard
            for guard in guards:
                model.switch_guard = guard
                path = folder / f"{scheduler_label(spec)}-guard-{'none' if guard is None else f'{guard:g}'}.zip"
                model.save(path)
                copies.append(str(path))
        finally:
            model.switch_guard = own
    if guards and not copies:
        raise SystemExit("--guards applies to rule-switch models, and --schedulers names none")
    return copies


def paired_saving(results: dict, seeds: list[int], scheduler: str, reference: str) -> float:
    """1 - total carbon-to-target of ``scheduler`` / that of ``reference``, over the seeds both met (0 where
    both needed no carbon, NaN where only the reference did not)."""
    both = [seed for seed in seeds if results[seed][scheduler] is not None and results[seed][reference] is not None]
    if not both:
        return float("nan")
    ours, theirs = sum(results[seed][scheduler] for seed in both), sum(results[seed][reference] for seed in both)
    if theirs == 0:  # scenarios that needed no grid energy: nothing to save
        return 0.0 if ours == 0 else float("nan")
    return 1.0 - ours / theirs


def hindsight_pick(results: dict[str, float | None]) -> str | None:
    """The rule with the least carbon-to-target among those that met the target on one scenario."""
    reached = [(results[spec], spec) for spec in RULES if results[spec] is not None]
    return min(reached)[1] if reached else None


def family_rows(rows: list[dict], schedulers: list[str]) -> list[dict]:
    by_family: dict[str, dict[int, dict[str, float | None]]] = defaultdict(lambda: defaultdict(dict))
    redraws: dict[str, dict[int, dict[str, float | None]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        (redraws if row.get("draw", 0) else by_family)[row["family"]][row["seed"]][row["spec"]] = row["carbon"]
    table = []
    for family, results in by_family.items():
        seeds = sorted(results)

        def met(spec: str) -> int:
            return sum(results[seed][spec] is not None for seed in seeds)

        def mean_carbon(spec: str) -> float:
            values = [results[seed][spec] for seed in seeds if results[seed][spec] is not None]
            return sum(values) / len(values) if values else float("inf")

        best = min(RULES, key=lambda spec: (-met(spec), mean_carbon(spec)))
        picks = {seed: hindsight_pick(results[seed]) for seed in seeds}
        for seed in seeds:
            results[seed][PICK] = None if picks[seed] is None else results[seed][picks[seed]]
        picked = [PICK, *schedulers]
        others = [(name, met(name), paired_saving(results, seeds, name, best)) for name in picked]
        if family in redraws:  # the same scenarios drawn again: their own pick, and the first draw's replayed
            again = redraws[family]
            for seed in seeds:
                own = hindsight_pick(again[seed])
                again[seed][PICK_REDRAWN] = None if own is None else again[seed][own]
                again[seed][PICK_REPLAYED] = again[seed][picks[seed] or best]
            others += [(name, sum(again[seed][name] is not None for seed in seeds),
                        paired_saving(again, seeds, name, best)) for name in (PICK_REDRAWN, PICK_REPLAYED)]
        table.append({"family": family, "seeds": len(seeds), "best": best, "best_met": met(best),
                      "best_carbon": mean_carbon(best), "others": others})
    return table


def markdown(table: list[dict], split: str, seeds: list[int], size_factor: float = 1.0,
             redraw: str | None = None) -> str:
    names = [name for name, _, _ in table[0]["others"]]
    header = "| family | best rule | " + " | ".join(scheduler_label(name) for name in names) + " |"
    lines = [header, "|---|---|" + "---|" * len(names)]
    for row in table:
        cells = [f"{met}/{row['seeds']}, {100 * saving:+.1f} %" for _, met, saving in row["others"]]
        lines.append(f"| {row['family']} | `{row['best']}` {row['best_met']}/{row['seeds']}, "
                     f"{row['best_carbon']:.2f} g | " + " | ".join(cells) + " |")
    scenarios = sum(row["seeds"] for row in table)
    overall = [f"{sum(row['others'][i][1] for row in table)}/{scenarios}, "
               f"{100 * sum(row['others'][i][2] for row in table) / len(table):+.1f} %" for i in range(len(names))]
    lines.append(f"| mean over families | {sum(row['best_met'] for row in table)}/{scenarios} | "
                 + " | ".join(overall) + " |")
    size = "its own size" if size_factor == 1 else f"{size_factor:g} times the fleet size each seed drew"
    where = {"luck": "under other random streams of the same world",
             "world": "in another world drawn with the same parameters"}
    again = "" if redraw is None else (
        f" The last two columns play the rules on each scenario once more, {where[redraw]} (`--redraw {redraw}`), "
        "against the best rule there: the redraw's own per-scenario pick, and the first draw's pick replayed.")
    return (f"Split `{split}`, seeds {seeds[0]}..{seeds[-1]} of each family at {size}. Each cell: targets "
            "met, and carbon-to-target saved against the best rule (total, paired over the scenarios both "
            f"met; + is less carbon).{again}\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="validation", choices=("train", "validation", "test", "ood"))
    parser.add_argument("--seeds", type=int, default=10, help="scenarios per family (the split's first N)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the split's first SKIP seeds (default 0)")
    parser.add_argument("--families", nargs="+", default=None, help="default: every family")
    parser.add_argument("--schedulers", nargs="*", default=[], help="more schedulers to place against the rules")
    parser.add_argument("--guards", nargs="*", type=guard_value, default=[],
                        help="play each rule-switch model of --schedulers under each of these deadline guards too "
                        "(none, or a share of the rounds to the deadline)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size-factor", type=float, default=1.0,
                        help="play each scenario with this many times the nodes its seed drew (default 1)")
    parser.add_argument("--redraw", choices=REDRAWS, default=None,
                        help="play every rule on each scenario again, under other random streams (luck) or in "
                        "another world with the same drawn parameters (world), and replay the first draw's pick")
    parser.add_argument("--docs", default=None, help="Markdown file whose rule-room section to replace")
    args = parser.parse_args()
    if not 0 < args.size_factor <= 8:
        parser.error(f"--size-factor must be in (0, 8], got {args.size_factor:g}")
    families = args.families or family_names()
    try:
        seeds = played_seeds(args.split, args.seeds, args.skip)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:  # the copies' labels are read off their files
        schedulers = [*args.schedulers, *guarded_copies(args.schedulers, args.guards, Path(folder))]
        rows = play(families, seeds, schedulers, args.workers, args.size_factor, args.redraw)
        text = markdown(family_rows(rows, schedulers), args.split, seeds, args.size_factor, args.redraw)
    print(text)
    if args.docs:
        minutes = (time.monotonic() - started) / 60
        command = " ".join(["python benchmarks/rule_headroom.py", f"--split {args.split}", f"--seeds {args.seeds}",
                            *([f"--skip {args.skip}"] if args.skip else []),
                            *([f"--size-factor {args.size_factor:g}"] if args.size_factor != 1 else []),
                            *(["--families", *args.families] if args.families else []),
                            *(["--schedulers", *args.schedulers] if args.schedulers else []),
                            *(["--guards", *("none" if g is None else f"{g:g}" for g in args.guards)]
                              if args.guards else []),
                            *([f"--redraw {args.redraw}"] if args.redraw else []), "--docs", args.docs])
        heading = HEADING if args.size_factor == 1 else f"{HEADING}, at {args.size_factor:g} times the fleet size"
        if args.redraw:
            heading += f", drawn again ({args.redraw})"
        replace_section(args.docs, heading, [f"Written by `{command}` in {minutes:.0f} min with {args.workers} "
                                             "worker(s).", "", *text.rstrip("\n").splitlines()])


if __name__ == "__main__":
    main()
