"""Evolution strategies for the per-node linear scheduler (``greengossip.agents.node_linear``), scored by
carbon-to-target, paired against a reference rule in the same scenarios.

    python -m greengossip.training.evolution --settings suite --out runs/evolution

Each generation draws ``scenarios_per_family`` train-split seeds (0..9,999) of every family, at the family's
own fleet size cut at ``max_nodes``, and plays in each of them: the current weights, ``pairs`` antithetic
pairs of Gaussian perturbations (Salimans, Ho, Chen, Sidor & Sutskever, "Evolution Strategies as a Scalable
Alternative to Reinforcement Learning", 2017), and the reference rule. A candidate's fitness is the mean over
the scenarios of its clipped log carbon saving against the rule in the same scenario; a missed target scores
below every reached one. Fitness ranks (centred, so that one scenario's scale cannot dominate) weight the
perturbations into a gradient estimate, and Adam takes the step; with ``keep_norm`` the weights are then
scaled back to their start norm (the scheduler's argmax does not depend on their scale, and a search left
free to grow it makes every margin between actions wider, so the same perturbations change less and less).
The start is the prior rule with the mechanisms of the voters named in ``start_votes`` turned on
(``greengossip.agents.node_linear.start_weights``); the weights of ``frozen`` features keep their start
values (for mechanisms that act only where the training draws do not reach, such as fleets above
``max_nodes``).

Why this, where PPO is the default: the benchmark sums carbon-to-target, which an episode's return weighs only
indirectly, and a residual PPO policy over this rule did not leave it (docs/benchmark.md, "The learned
scheduler"). Evolution strategies score whole episodes by the benchmark's own measure, and every candidate of a
generation plays the same scenarios, so the comparison is paired. The steps never draw validation seeds (the
selection below plays its own); test and ood seeds are never drawn.

With ``select_every`` the run selects its model on validation draws, as the PPO recipes do: at the start,
every ``select_every`` generations and at the end, the current weights play ``select_seeds_per_family``
validation seeds of every family (from seed 10,100 on, so that the benchmark's tables, which read the split's
first seeds, stay out of the sample; at their own size cut at ``select_max_nodes``, so that the large network's
fleets above the train draws' cut are in it), scored as in training against the reference rule, and the best
are kept; a run whose steps never beat its start keeps the start.

The run writes ``progress.csv`` (one row per generation: the current weights' fitness, per family, the best,
mean and spread of the candidates', and the validation score where one was played), ``weights.npz`` (the
selected weights, or without selection the last, loadable as a scheduler by its path), ``last_weights.npz``
(with selection: the last weights) and ``record.json`` (settings, seed, wall time, the selected generation
and every validation score).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from greengossip.agents.heuristics import is_heuristic_spec
from greengossip.agents.node_linear import (
    ACTIONS,
    FEATURE_GROUPS,
    FEATURE_NAMES,
    N_FEATURES,
    PRIOR,
    VOTE_NAMES,
    NodeLinearScheduler,
    start_weights,
)
from greengossip.envs.errors import UserError
from greengossip.envs.safe_yaml import YAMLInputError, load_yaml_file
from greengossip.envs.shipped import EVOLUTION, find_config
from greengossip.training.run_files import atomic_write_text
from greengossip.training.settings import check_family_names
from greengossip.training.suite import SPLITS, family_names, split_seeds

MISSED = -math.log(3.0) - 0.5  # below the lowest score of a reached target
# selection plays the validation seeds after the split's first SELECTION_SKIP: the benchmark's validation tables
# read the first ones, and stay out of the selection's sample
SELECTION_SKIP = 100


def frozen_features(frozen: tuple[str, ...]) -> set[str]:
    """The feature names of ``frozen``, its groups (``FEATURE_GROUPS``) spelt out."""
    return {feature for name in frozen for feature in FEATURE_GROUPS.get(name, (name,))}


class EvolutionSettings(BaseModel):
    """The settings of one evolution-strategies run (``configs/evolution/suite.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    generations: int = Field(50, ge=0, description="weight updates (0: write the start weights)")
    pairs: int = Field(8, ge=1, description="antithetic perturbation pairs per generation")
    scenarios_per_family: int = Field(3, ge=1, description="train draws of each family per generation")
    families: tuple[str, ...] = Field((), description="suite families; empty: every shipped family")
    max_nodes: int = Field(48, ge=4, description="draws are played at their own fleet size cut at this")
    sigma: float = Field(0.2, gt=0, description="standard deviation of a perturbation, in weight units")
    learning_rate: float = Field(0.03, gt=0, description="Adam step size")
    reference: str = Field(PRIOR, description="rule each candidate's carbon is paired against")
    start_votes: dict[str, float] = Field(
        default_factory=dict, description="voters whose mechanism the start weights turn on, with its margin "
        "(greengossip.agents.node_linear.start_weights); empty: the prior rule")
    start_votes_from_nodes: dict[str, int] = Field(
        default_factory=dict, description="voters of start_votes that count only in fleets of at least this size")
    keep_norm: bool = Field(False, description="rescale the weights to their start norm after every step: the "
                            "scheduler's argmax does not depend on the scale, so growth only shrinks the "
                            "perturbations' effect")
    frozen: tuple[str, ...] = Field((), description="features (greengossip.agents.node_linear.FEATURE_NAMES) "
                                    "or groups of them (its FEATURE_GROUPS: own, global, fleet, derived, "
                                    "constant, votes, sized_votes) whose weights keep their start values: neither "
                                    "perturbed nor stepped, and left out of keep_norm's norm")
    select_every: int = Field(0, ge=0, description="every this many generations (and at the start and the end) "
                              "play the current weights on validation draws and keep the best as weights.npz; "
                              "0: no selection, the last weights are the run's")
    select_seeds_per_family: int = Field(4, ge=1, description="validation draws of each family a selection plays")
    select_max_nodes: int = Field(256, ge=4, description="selection draws are played at their own size cut at this")
    seed: int = Field(0, ge=0, description="draws the scenarios and the perturbations")
    workers: int = Field(2, ge=1, description="processes that play the episodes")

    @field_validator("families")
    @classmethod
    def _known(cls, families: tuple[str, ...]) -> tuple[str, ...]:
        check_family_names(families)
        return families

    @field_validator("start_votes")
    @classmethod
    def _voters(cls, votes: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(votes) - set(VOTE_NAMES))
        if unknown:
            raise ValueError(f"unknown voters {unknown}; allowed: {', '.join(VOTE_NAMES)}")
        if any(not math.isfinite(margin) or margin <= -1 for margin in votes.values()):
            raise ValueError("a vote's margin is a number above -1 (at -1 the vote would not change the action)")
        return votes

    @field_validator("frozen")
    @classmethod
    def _features(cls, frozen: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(frozen) - set(FEATURE_NAMES) - set(FEATURE_GROUPS))
        if unknown:
            raise ValueError(f"unknown features {unknown}; allowed: the groups {', '.join(FEATURE_GROUPS)} or the "
                             "names of greengossip.agents.node_linear.FEATURE_NAMES, e.g. constant, "
                             "vote_harvest_aware, vote_network_aware_x_log2_nodes_centred")
        if frozen_features(frozen) == set(FEATURE_NAMES):
            raise ValueError("every feature is frozen: leave at least one free for the search")
        return frozen

    @model_validator(mode="after")
    def _gated_votes(self) -> EvolutionSettings:
        try:
            start_weights(votes=self.start_votes, from_nodes=self.start_votes_from_nodes)
        except ValueError as exc:
            raise ValueError(f"start_votes_from_nodes: {exc}") from None
        return self

    @field_validator("reference")
    @classmethod
    def _rule(cls, spec: str) -> str:
        if not is_heuristic_spec(spec):
            raise ValueError(f"reference must be a heuristic spec (name or name:key=value,...), got {spec!r}")
        return spec

    def family_list(self) -> list[str]:
        return list(self.families) or family_names()


def load_evolution_settings(name_or_path: str | Path, **overrides: Any) -> EvolutionSettings:
    """Settings from a shipped name (``configs/evolution/<name>.yaml``) or a YAML path, with ``overrides`` (None
    values ignored); a UserError that names the field and what it allows."""
    try:
        path = find_config(name_or_path, EVOLUTION, "evolution settings")
        data = load_yaml_file(path) or {}
    except (YAMLInputError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: evolution settings are a mapping of field: value, got {type(data).__name__}")
    data = {**data, **{key: value for key, value in overrides.items() if value is not None}}
    try:
        return EvolutionSettings(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"{path}: {problems}") from exc


# ---------------------------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class Episode:
    family: str
    seed: int
    max_nodes: int
    weights: np.ndarray | None  # None: the reference rule
    reference: str


_ENVS: dict[tuple[str, int, int], Any] = {}


def _env(family: str, seed: int, max_nodes: int):
    """One env per scenario and worker, kept for the generations that draw it again."""
    key = (family, seed, max_nodes)
    if key not in _ENVS:
        import gymnasium as gym

        from greengossip.envs import ENV_ID
        from greengossip.training.suite_envs import own_size_draw

        if len(_ENVS) >= 64:
            _ENVS.pop(next(iter(_ENVS))).close()
        _ENVS[key] = gym.make(ENV_ID, config=own_size_draw(family, seed, max_nodes))
    return _ENVS[key]


def play(episode: Episode) -> tuple[float, bool]:
    """(carbon until the episode ended, target reached) of one candidate on one scenario."""
    from greengossip.agents.learned import make_scheduler
    from greengossip.training.rollout import one_torch_thread, play_episode

    scheduler = (make_scheduler(episode.reference) if episode.weights is None
                 else NodeLinearScheduler(episode.weights))
    with one_torch_thread():
        info = play_episode(scheduler, _env(episode.family, episode.seed, episode.max_nodes), episode.seed)
    return float(info["episode_carbon_g"]), bool(info["target_reached"])


def paired_score(carbon: float, reached: bool, reference_carbon: float, reference_reached: bool) -> float:
    """Log carbon saved against the reference in the same scenario, clipped to ±log 3 (a few grams in a field
    that needs almost none cannot outweigh the rest; 0.2 g floors both); a miss scores ``MISSED``."""
    if not reached:
        return MISSED
    if not reference_reached:
        return math.log(3.0)
    saving = -math.log(max(carbon, 0.2) / max(reference_carbon, 0.2))
    return float(np.clip(saving, -math.log(3.0), math.log(3.0)))


def centred_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5] (ties broken by order)."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1) - 0.5


# ---------------------------------------------------------------------------------------------- the run
def evolve(settings: EvolutionSettings, out: str | Path, log=print) -> Path:
    """Run ``settings.generations`` generations and write the run's files to ``out``; the weights' path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    families = settings.family_list()
    train = SPLITS["train"]
    weights = start_weights(votes=settings.start_votes, from_nodes=settings.start_votes_from_nodes)
    free = np.ones(N_FEATURES)
    free[[FEATURE_NAMES.index(name) for name in frozen_features(settings.frozen)]] = 0.0
    norm = np.linalg.norm(weights * free)
    first, second = np.zeros_like(weights), np.zeros_like(weights)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    # the start first: a run cut off before its first step still leaves weights, and 0 generations writes it
    path = NodeLinearScheduler(weights).save(out / "weights.npz", _record(settings, 0, started))
    from greengossip.training.evaluate import _start_method, _worker_init

    context = multiprocessing.get_context(_start_method())
    with ProcessPoolExecutor(max_workers=settings.workers, mp_context=context, initializer=_worker_init) as pool:
        selection = _Selection(settings, families, pool) if settings.select_every and settings.generations else None
        if selection is not None:
            selection.consider(weights, 0, log)
        for generation in range(settings.generations):
            scenarios = [(family, int(rng.integers(train.start, train.stop)))
                         for family in families for _ in range(settings.scenarios_per_family)]
            noise = rng.standard_normal((settings.pairs, *weights.shape)) * free
            candidates = [weights, *(weights + settings.sigma * e for e in noise),
                          *(weights - settings.sigma * e for e in noise), None]
            episodes = [Episode(family, seed, settings.max_nodes, candidate, settings.reference)
                        for candidate in candidates for family, seed in scenarios]
            results = list(pool.map(play, episodes, chunksize=1))
            k = len(scenarios)
            reference = results[-k:]
            scores = np.array([[paired_score(*results[c * k + s], *reference[s]) for s in range(k)]
                               for c in range(len(candidates) - 1)])
            fitness = scores.mean(1)
            ranks = centred_ranks(fitness[1:])
            plus, minus = ranks[:settings.pairs], ranks[settings.pairs:]
            gradient = np.tensordot(plus - minus, noise, axes=1) / (settings.pairs * settings.sigma)
            # Adam (Kingma & Ba 2015) on the ascent direction
            first = 0.9 * first + 0.1 * gradient
            second = 0.999 * second + 0.001 * gradient ** 2
            step = (first / (1 - 0.9 ** (generation + 1))) / (np.sqrt(second / (1 - 0.999 ** (generation + 1))) + 1e-8)
            weights = weights + settings.learning_rate * step
            if settings.keep_norm and norm > 0:  # free weights that start at 0 have no scale to keep
                weights = weights * (1 - free) + weights * free * (norm / np.linalg.norm(weights * free))
            row = {"generation": generation, "current": fitness[0], "best": fitness[1:].max(),
                   "mean": fitness[1:].mean(), "spread": fitness[1:].std(),
                   **{f"{family}/current": scores[0, [i for i, (f, _) in enumerate(scenarios) if f == family]].mean()
                      for family in families},
                   "validation": "", "seconds": time.monotonic() - started}
            done = generation + 1
            if selection is not None and (done % settings.select_every == 0 or done == settings.generations):
                row["validation"] = selection.consider(weights, done, log)
            rows.append(row)
            log(f"generation {generation}: current {row['current']:+.4f}, candidates best {row['best']:+.4f} "
                f"mean {row['mean']:+.4f} ({row['seconds']:.0f} s)")
            _write_progress(out / "progress.csv", rows)
            kept = weights
            if selection is not None:
                NodeLinearScheduler(weights).save(out / "last_weights.npz", _record(settings, done, started))
                kept = selection.weights
            path = NodeLinearScheduler(kept).save(out / "weights.npz", _record(settings, done, started, selection))
    atomic_write_text(out / "record.json",
                      json.dumps(_record(settings, settings.generations, started, selection), indent=2))
    return path


class _Selection:
    """Model selection on validation draws: the current weights' mean paired score against the reference on
    ``select_seeds_per_family`` validation seeds of every family (after the split's first ``SELECTION_SKIP``),
    the best weights so far and the generation they are from (an earlier one wins a tie)."""

    def __init__(self, settings: EvolutionSettings, families: list[str], pool):
        seeds = split_seeds("validation", SELECTION_SKIP + settings.select_seeds_per_family)[SELECTION_SKIP:]
        self.scenarios = [(family, seed) for family in families for seed in seeds]
        self.settings, self.pool = settings, pool
        self.reference = self._play(None)
        self.weights, self.generation, self.score = None, None, -math.inf
        self.scores: dict[int, float] = {}

    def _play(self, weights: np.ndarray | None) -> list[tuple[float, bool]]:
        episodes = [Episode(family, seed, self.settings.select_max_nodes, weights, self.settings.reference)
                    for family, seed in self.scenarios]
        return list(self.pool.map(play, episodes, chunksize=1))

    def consider(self, weights: np.ndarray, generation: int, log) -> float:
        score = float(np.mean([paired_score(*result, *reference)
                               for result, reference in zip(self._play(weights), self.reference)]))
        self.scores[generation] = score
        if score > self.score:
            self.weights, self.generation, self.score = weights.copy(), generation, score
        log(f"validation after {generation} generations: {score:+.4f} (kept: generation {self.generation}, "
            f"{self.score:+.4f})")
        return score


def _record(settings: EvolutionSettings, generations: int, started: float,
            selection: _Selection | None = None) -> dict[str, Any]:
    record = {"settings": settings.model_dump(mode="json"), "generations_done": generations,
              "actions": list(ACTIONS), "features": N_FEATURES, "wall_minutes": (time.monotonic() - started) / 60}
    if selection is not None:
        record["selected_generation"] = selection.generation
        record["validation_scores"] = {str(g): score for g, score in selection.scores.items()}
    return record


def _write_progress(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m greengossip.training.evolution",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="suite", help="a name in configs/evolution or a YAML path")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--generations", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_evolution_settings(args.settings, generations=args.generations, seed=args.seed,
                                           workers=args.workers)
        print(f"wrote {evolve(settings, args.out)}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
