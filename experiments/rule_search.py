"""How good can `carbon_periodic` get? A random search over its options on validation seeds.

    python experiments/rule_search.py --samples 40 --seeds 40 [--config configs/default.yaml] [--out DIR]

Draws ``--samples`` option sets of ``carbon_periodic`` (period 3-10, a longer or equal period for the
dirtiest grids up to 17, the dirty threshold at 0.3 or 0.02 kgCO2e/kWh (0.02 makes Oslo's nodes periodic
too), no sprint or a sprint gap of 0.005-0.04), adds the defaults and the graded sprint rule of
``configs/train/quick_start.yaml``, runs each on validation seeds 10000.. through the
evaluation harness and prints them sorted by mean carbon-to-target; a rule that misses a target ranks
last, with its count of reached targets. It measures how much a better hand-set rule of this family could
still give, the bar a learned scheduler over such a rule has to clear (docs/results.md). Test seeds are
never used.
"""

from __future__ import annotations

import argparse
import collections
import random
import tempfile
from pathlib import Path

import numpy as np

from greengossip.training.evaluate import run_evaluation
from greengossip.training.settings import FIRST_VALIDATION_SEED, load_settings
from greengossip.training.train import prior_rule_specs

GRADED_SETTINGS = Path(__file__).resolve().parent.parent / "configs" / "train" / "quick_start.yaml"
# the defaults and the graded prior, read from its settings file so that the two cannot drift apart
ALWAYS = ["carbon_periodic", *prior_rule_specs(load_settings(GRADED_SETTINGS))]


def sample_rules(count: int, seed: int) -> list[str]:
    """``ALWAYS`` and then distinct random option sets, ``count`` specs in all."""
    rng = random.Random(seed)
    specs, seen = list(ALWAYS), set(ALWAYS)
    while len(specs) < count:
        period = rng.randint(3, 10)
        spec = (f"carbon_periodic:period={period},dirtier_period={rng.randint(period, 17)},"
                f"dirty_intensity={rng.choice([0.3, 0.3, 0.02])}")
        gap = rng.choice([None, 0.005, 0.01, 0.02, 0.03, 0.04])
        spec += f",sprint_gap={gap}" if gap else ""
        if spec not in seen:
            seen.add(spec)
            specs.append(spec)
    return specs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=40, help="rules in all, the two fixed ones included")
    parser.add_argument("--seeds", type=int, default=40, help="validation seeds 10000.. per rule")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the option draws")
    parser.add_argument("--out", default=None, help="the harness's CSVs and plots (a temporary folder if unset)")
    args = parser.parse_args(argv)
    if args.samples < len(ALWAYS) or args.seeds < 1:
        parser.error(f"--samples must be at least {len(ALWAYS)} and --seeds at least 1")
    seeds = list(range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + args.seeds))
    specs = sample_rules(args.samples, args.search_seed)
    out = args.out or tempfile.mkdtemp(prefix="rule_search_")
    rows = run_evaluation(specs, [args.config], seeds, out, baseline=specs[0], workers=args.workers,
                          progress=False)
    episodes = collections.defaultdict(list)
    for row in rows:
        episodes[row["scheduler"]].append(row)
    ranked = []
    for name, runs in episodes.items():
        reached = [r["carbon_to_target_g"] for r in runs if r["reached_target"]]
        ranked.append((len(reached) < len(runs), float(np.mean(reached)) if reached else np.inf, len(reached), name))
    print(f"| rule | carbon to target (g, mean over {len(seeds)} validation seeds) | targets reached |")
    print("|---|---:|---:|")
    for missed, carbon, reached, name in sorted(ranked):
        print(f"| `{name}` | {'—' if missed else f'{carbon:.2f}'} | {reached}/{len(seeds)} |")


if __name__ == "__main__":
    main()
