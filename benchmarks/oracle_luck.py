"""What the oracle's margin over the rules owes to chance, per suite family.

    python benchmarks/oracle_luck.py [--split validation] [--seeds 10] [--skip 0] [--workers 2] [--views observed]
        [--docs docs/benchmark.md]

The oracle (``training/oracle.py``) searches copies of the env that replay the episode's own random
streams, so its plan knows the future minibatches, attack rounds and telemetry noise as well as the
weather and the attackers. Here each scenario of the split is played

* by the oracle as the benchmark builds it (the family's base rules under both views, and every rule of
  ``rule_headroom.RULES`` as observed), as drawn;
* by the oracle's plan of base policies (``training.oracle.PlanReplay``: which rule, under which view,
  from which round), replayed in the same world under other random streams (the env's ``reset`` option
  ``luck``);
* by every rule of ``rule_headroom.RULES``, as drawn and under the other streams.

Per family: the best rule (most targets met, then the least mean carbon-to-target, as drawn), the oracle's
saving against it, the replayed plan's saving against the best rule under the other streams, and the
same for the per-scenario pick of the rules (``rule_headroom.py --redraw luck``). What the replayed plan
keeps is what the oracle knew of the world; what it loses it knew of chance, which no scheduler can learn.
A replayed plan follows rules that read the truth, so it is still clairvoyant about the world. With
``--views observed`` the oracle's base rules see only the observation, as a scheduler does: what is left
is the room a scheduler that switches among the rules at the right rounds could earn.

With ``--docs`` the table replaces the "## What the oracle owes to chance" section of that Markdown file
(with ``--views``: "..., <views> views").
Validation seeds (the default) are the split for choosing methods; the test split is for reporting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from greengossip.training.benchmark import Job, oracle_policies, replace_section, run_jobs
from greengossip.training.oracle import VIEWS
from greengossip.training.suite import draw_scenario, family_names, load_family

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rule_headroom  # noqa: E402  (the rules, their plays and the paired saving)

HEADING = "## What the oracle owes to chance"
ORACLE, REPLAYED = "oracle", "oracle's plan, other luck"


def play(families: list[str], seeds: list[int], workers: int, views: tuple[str, ...] | None = None
         ) -> tuple[list[dict], dict]:
    """The rules' rows (``rule_headroom.play`` with ``redraw="luck"``), and per (family, seed) the oracle's
    carbon-to-target as drawn and its replayed plan's under the other streams (None: target missed). The
    oracle's base rules take ``views`` (None: the family's own ``oracle.views``)."""
    rules = rule_headroom.play(families, seeds, [], workers, redraw="luck")
    draws, jobs = [], []
    for family in families:
        ranges = load_family(family)[1]
        if views is not None:
            ranges = ranges.model_copy(update={"oracle": ranges.oracle.model_copy(update={"views": tuple(views)})})
        settings = (oracle_policies(ranges, rule_headroom.RULES), ranges.oracle.every, ranges.oracle.width)
        for seed in seeds:
            draw = draw_scenario(family, seed, ranges)
            draws.append(draw)
            jobs.append(Job(len(jobs), draw, ORACLE, ORACLE, settings))
    oracle_rows = run_jobs(jobs, workers)
    replay_rows = run_jobs([Job(i, draw, REPLAYED, REPLAYED, luck=1, plan=row["oracle_plan"])
                            for i, (draw, row) in enumerate(zip(draws, oracle_rows))], workers)

    def carbon(row: dict) -> float | None:
        return float(row["carbon_to_target_g"]) if row["reached_target"] else None

    outcomes = {(draw.family, draw.seed): {ORACLE: carbon(drawn), REPLAYED: carbon(replayed)}
                for draw, drawn, replayed in zip(draws, oracle_rows, replay_rows)}
    return rules, outcomes


def table_rows(rules: list[dict], outcomes: dict) -> list[dict]:
    """``rule_headroom.family_rows`` of the rules, with the oracle's and its replayed plan's cells first."""
    table = rule_headroom.family_rows(rules, [])
    first = {(row["family"], row["seed"], row["spec"]): row["carbon"] for row in rules if not row["draw"]}
    again = {(row["family"], row["seed"], row["spec"]): row["carbon"] for row in rules if row["draw"]}
    for row in table:
        family, best = row["family"], row["best"]
        seeds = sorted({seed for fam, seed in outcomes if fam == family})
        cells = []
        for name, rules_of in ((ORACLE, first), (REPLAYED, again)):
            results = {seed: {name: outcomes[(family, seed)][name], best: rules_of[(family, seed, best)]}
                       for seed in seeds}
            met = sum(results[seed][name] is not None for seed in seeds)
            cells.append((name, met, rule_headroom.paired_saving(results, seeds, name, best)))
        row["others"] = cells + row["others"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="validation", choices=("validation", "test", "ood"))
    parser.add_argument("--seeds", type=int, default=10, help="scenarios per family")
    parser.add_argument("--skip", type=int, default=0, help="leave out the split's first SKIP seeds (default 0)")
    parser.add_argument("--families", nargs="+", default=None, help="default: every family")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=None,
                        help="the views of the oracle's base rules (default: each family's own)")
    parser.add_argument("--docs", default=None, help="Markdown file whose section to replace")
    args = parser.parse_args()
    families = args.families or family_names()
    try:
        seeds = rule_headroom.played_seeds(args.split, args.seeds, args.skip)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.monotonic()
    rules, outcomes = play(families, seeds, args.workers, args.views)
    text = rule_headroom.markdown(table_rows(rules, outcomes), args.split, seeds, redraw="luck")
    oracle_note = (" The first two columns: the oracle as drawn, and its plan of base policies replayed under the "
                   "other streams, against the best rule there.")
    text = text.replace(" (`--redraw luck`)", " (the env's `luck`)").replace("\n\n|", oracle_note + "\n\n|", 1)
    print(text)
    if args.docs:
        minutes = (time.monotonic() - started) / 60
        command = " ".join(["python benchmarks/oracle_luck.py", f"--split {args.split}", f"--seeds {args.seeds}",
                            *([f"--skip {args.skip}"] if args.skip else []),
                            *(["--families", *args.families] if args.families else []),
                            *(["--views", *args.views] if args.views else []), "--docs", args.docs])
        heading = HEADING if args.views is None else f"{HEADING}, {' and '.join(args.views)} views"
        replace_section(args.docs, heading, [f"Written by `{command}` in {minutes:.0f} min with {args.workers} "
                                             "worker(s).", "", *text.rstrip("\n").splitlines()])


if __name__ == "__main__":
    main()
