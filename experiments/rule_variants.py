"""Variants of the graded `carbon_periodic` rule that go after the dirty grids' bytes in other ways.

    python experiments/rule_variants.py [--config configs/default.yaml] [--seeds 20]

The graded prior of ``configs/train/quick_start.yaml`` (every 6th round from grids above 0.3
kgCO2e/kWh, every 10th above 0.5, a sprint within 0.02 of the target) spends about half of its carbon on
the 8-bit broadcasts of the two dirtiest grids (``experiments/carbon_split.py``). Each variant here changes
one thing: periods counted on the round number rather than on each node's staleness, a top-k message
instead of training only in the rounds a dirty node waits, or a period kept by the dirtiest grids during
the sprint. Prints carbon-to-target, targets and rounds on validation seeds 10000.. (docs/results.md,
"Where the carbon goes"). Test seeds are never used.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch

from greengossip.agents.base import (
    IDLE,
    SEND_Q8,
    SEND_TOP1,
    SEND_TOP10,
    TRAIN,
    first_affordable,
    global_feature,
    node_feature,
)
from greengossip.agents.heuristics import CarbonPeriodic, build_heuristic
from greengossip.envs.config import load_config
from greengossip.envs.observation import STALENESS_HORIZON
from greengossip.training.settings import FIRST_VALIDATION_SEED


def _sibling(name: str):
    """The script ``name``.py beside this one, as a module (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


carbon_split = _sibling("carbon_split")
# the graded prior as quick_start.yaml names it (rule_search.py reads it from there)
GRADED_PRIOR = _sibling("rule_search").ALWAYS[1]
RULE_OPTIONS = ("period", "dirty_intensity", "trust_threshold", "sprint_gap", "dirtier_period", "dirtier_intensity")


class GradedVariant(CarbonPeriodic):
    """``GRADED_PRIOR`` (every 6th round above 0.3 kgCO2e/kWh, every 10th above 0.5, a sprint within 0.02
    of the target) with one of three changes.

    ``by_round``: a waiting node sends when the round number is a multiple of its period (all dirty nodes
    in step) instead of when its copy is period - 1 rounds old. ``wait_action``: what a waiting node does
    (TRAIN in the rule; SEND_TOP1 / SEND_TOP10 send a sparse message as well, so periods go by the round
    number). ``sprint_dirtier_period``: in the sprint, nodes above ``dirtier_intensity`` keep this period
    instead of sending every round."""

    name = "graded_variant"
    batched_act = False  # reads the round number as one int: one observation at a time

    def __init__(self, by_round: bool = False, wait_action: int = TRAIN, sprint_dirtier_period: int = 1,
                 sprint_gap: float | None = None, max_rounds: int = 192):
        prior = build_heuristic(GRADED_PRIOR)
        options = {name: getattr(prior, name) for name in RULE_OPTIONS}
        if sprint_gap is not None:
            options["sprint_gap"] = sprint_gap
        super().__init__(**options)
        self.by_round = by_round or wait_action != TRAIN  # a sparse send resets staleness
        self.wait_action = wait_action
        self.sprint_dirtier_period = sprint_dirtier_period
        self.max_rounds = max_rounds

    def act(self, observation, mask):
        intensity = node_feature(observation, "carbon_now")
        round_index = int(round(global_feature(observation, "progress") * self.max_rounds))
        sprint = global_feature(observation, "target_gap") <= self.sprint_gap
        dirtier = intensity > self.dirtier_intensity
        if sprint:
            period = np.where(dirtier, self.sprint_dirtier_period, 1)
        else:
            period = np.where(dirtier, self.dirtier_period, np.where(intensity > self.dirty_intensity, self.period, 1))
        if self.by_round:
            waits = (round_index > 0) & (round_index % period != 0)
        else:
            silent_rounds = np.rint(node_feature(observation, "staleness") * STALENESS_HORIZON)
            waits = (round_index > 0) & (silent_rounds < period - 1)
        action = np.where(waits, first_affordable(mask, self.wait_action, TRAIN), first_affordable(mask, SEND_Q8))
        return np.where(node_feature(observation, "trust") >= self.trust_threshold, action, IDLE)


def variants(max_rounds: int) -> dict[str, GradedVariant]:
    found = {
        "as it is": GradedVariant(max_rounds=max_rounds),
        "periods on the round number": GradedVariant(by_round=True, max_rounds=max_rounds),
        "wait rounds send top-1 %": GradedVariant(wait_action=SEND_TOP1, max_rounds=max_rounds),
        "wait rounds send top-10 %": GradedVariant(wait_action=SEND_TOP10, max_rounds=max_rounds),
    }
    for period in (2, 3, 5, 10):
        for gap in (0.02, 0.03, 0.04):
            found[f"sprint: dirtiest period {period}, gap {gap}"] = GradedVariant(
                sprint_dirtier_period=period, sprint_gap=gap, max_rounds=max_rounds)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml", help="env scenario (default: default.yaml)")
    parser.add_argument("--seeds", type=int, default=20, help="validation seeds 10000.. to run (default 20)")
    parser.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.config)
    seeds = list(range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + args.seeds))
    print(f"| variant of the graded prior | carbon to target (mean over {len(seeds)} validation seeds) "
          "| targets | rounds |")
    print("|---|---:|---:|---:|")
    for name, rule in variants(config.max_rounds).items():
        if args.only and not any(part in name for part in args.only):
            continue
        split = carbon_split.carbon_split(rule, config, seeds)
        print(f"| {name} | {split['carbon_to_target_g']:.2f} g | {split['targets']}/{len(seeds)} | "
              f"{split['rounds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
