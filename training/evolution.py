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

With ``search_votes`` the start's mix of mechanisms is itself fitted on train draws before the first
generation (``VoteSearch``): a stepwise search turns voters on or off, one a round, where that raises the
mix's paired score on the first ``search_seeds_per_family`` train seeds of every family by more than
``search_min_gain`` and ``search_confidence`` standard errors (40 draws a family resolve one target in 40,
where a generation's 2 draws a family see mostly luck); ``search.csv`` holds every mix it tried.

With ``select_every`` the run selects its model on validation draws, as the PPO recipes do: at the start,
every ``select_every`` generations and at the end, the current weights play ``select_seeds_per_family``
validation seeds of every family (from seed 10,100 on, so that the benchmark's tables, which read the split's
first seeds, stay out of the sample; at their own size cut at ``select_max_nodes``, so that the large network's
fleets above the train draws' cut are in it), scored as in training against the reference rule, and the best
are kept; a run whose steps never beat its start keeps the start.

The run writes ``progress.csv`` (one row per generation: the current weights' fitness, per family, the best,
mean and spread of the candidates', and the validation score where one was played), ``weights.npz`` (the
selected weights, or without selection the last, loadable as a scheduler by its path), ``start_weights.npz``
(the start the steps took off from, after the vote search), ``search.csv`` (with a search), ``last_weights.npz``
(with selection: the last weights) and ``record.json`` (settings, seed, wall time, the searched votes and
the search's rows, the selected generation and every validation score).
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


def _check_voters(names) -> None:
    unknown = sorted(set(names) - set(VOTE_NAMES))
    if unknown:
        raise ValueError(f"unknown voters {unknown}; allowed: {', '.join(VOTE_NAMES)}")


def clear_gain(gain: float, standard_error: float, min_gain: float, confidence: float) -> bool:
    """The vote search's rule for keeping a toggle: its gain exceeds ``min_gain`` and ``confidence`` standard
    errors (``VoteSearch``; ``benchmarks/vote_search_table.py`` replays it from a run's rows)."""
    return gain > min_gain and gain - confidence * standard_error > 0


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
    search_votes: tuple[str, ...] = Field((), description="voters (greengossip.agents.node_linear.VOTE_NAMES) that "
                                          "a stepwise search on train draws may turn on or off before the first "
                                          "generation, from start_votes; empty: no search")
    search_seeds_per_family: int = Field(40, ge=1, description="train draws of each family (its first seeds) "
                                         "every mix of the search plays")
    search_rounds: int = Field(3, ge=1, description="the most voters the search turns on or off")
    search_min_gain: float = Field(0.01, ge=0, description="a toggle is kept only where it raises the mix's "
                                   "score (the mean over families of the mean paired score) by more than this "
                                   "(log units: 0.01 is about 1 % less carbon)")
    search_confidence: float = Field(1.645, ge=0, description="and only where that gain exceeds this many "
                                     "standard errors of its paired per-draw differences (1.645: 95 % one-sided "
                                     "confidence; 1: the one-standard-error rule; 0: the mean alone)")
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
        _check_voters(votes)
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

    @field_validator("search_votes")
    @classmethod
    def _searchable(cls, voters: tuple[str, ...]) -> tuple[str, ...]:
        _check_voters(voters)
        if len(set(voters)) != len(voters):
            raise ValueError("a voter is named twice")
        return voters

    @model_validator(mode="after")
    def _gated_votes(self) -> EvolutionSettings:
        try:
            start_weights(votes=self.start_votes, from_nodes=self.start_votes_from_nodes)
        except ValueError as exc:
            raise ValueError(f"start_votes_from_nodes: {exc}") from None
        gated = sorted(set(self.search_votes) & set(self.start_votes_from_nodes))
        if gated:
            raise ValueError(f"search_votes: {gated} are gated by the fleet size (start_votes_from_nodes); the "
                             "search turns plain votes on and off only")
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
    first, second = np.zeros_like(weights), np.zeros_like(weights)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    search: VoteSearch | None = None
    # the start first: a run cut off before its first step still leaves weights, and 0 generations writes it
    path = NodeLinearScheduler(weights).save(out / "weights.npz", _record(settings, 0, started))
    from greengossip.training.evaluate import _start_method, _worker_init

    context = multiprocessing.get_context(_start_method())
    with ProcessPoolExecutor(max_workers=settings.workers, mp_context=context, initializer=_worker_init) as pool:
        if settings.search_votes:
            search = VoteSearch(settings, families, pool)
            weights = start_weights(votes=search.run(log), from_nodes=settings.start_votes_from_nodes)
            search.write(out / "search.csv")
            path = NodeLinearScheduler(weights).save(out / "weights.npz", _record(settings, 0, started, search=search))
        NodeLinearScheduler(weights).save(out / "start_weights.npz", _record(settings, 0, started, search=search))
        norm = np.linalg.norm(weights * free)
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
            path = NodeLinearScheduler(kept).save(out / "weights.npz",
                                                  _record(settings, done, started, selection, search))
    atomic_write_text(out / "record.json",
                      json.dumps(_record(settings, settings.generations, started, selection, search), indent=2))
    return path


class VoteSearch:
    """Which rules' mechanisms the start turns on, chosen on train draws: from ``start_votes``, each round tries
    turning every voter of ``search_votes`` on (margin 1) or off, on the first ``search_seeds_per_family``
    train seeds of every family, and keeps the best toggle whose gain is clear. A mix's score is the mean over
    families of its mean paired score against the reference (as a generation scores a candidate), so each
    family weighs the same whatever its draws' carbon. A toggle's gain is that score's rise over the kept mix,
    and its standard error comes from the per-draw differences, paired in the same scenarios (families
    weighted equally); a gain is clear when it exceeds ``search_min_gain`` and ``search_confidence`` standard
    errors. The rules' mechanisms trade one family for another and vary from draw to draw, so a mix that gains
    on the train draws' mean can lose on others: as in high-confidence policy improvement (Thomas, Theocharous
    & Ghavamzadeh, "High Confidence Policy Improvement", ICML 2015), the search leaves the mix it has unless
    a lower confidence bound on the gain is positive (1.645: 95 % one-sided, the default; 1: the
    one-standard-error rule of model selection, Hastie, Tibshirani & Friedman, "The Elements of Statistical
    Learning", 2009, section 7.10). Among clear toggles the highest score wins, ties going to the voter named
    first. Every mix tried is a row of ``rows``, with its gain and standard error against the mix its round
    started from."""

    def __init__(self, settings: EvolutionSettings, families: list[str], pool):
        self.settings, self.families, self.pool = settings, families, pool
        seeds = split_seeds("train", settings.search_seeds_per_family)
        self.scenarios = [(family, seed) for family in families for seed in seeds]
        self.reference = self._play([None])[0]
        self.votes: dict[str, float] = dict(settings.start_votes)
        self.rows: list[dict[str, Any]] = []

    def _play(self, mixes: list[dict[str, float] | None]) -> list[list[tuple[float, bool]]]:
        """Each mix's results on every scenario (None: the reference rule). Scenario by scenario, one worker
        plays every mix of a scenario, so that each env is built once a round."""
        weights = [None if votes is None else start_weights(votes=votes,
                                                            from_nodes=self.settings.start_votes_from_nodes)
                   for votes in mixes]
        episodes = [Episode(family, seed, self.settings.max_nodes, w, self.settings.reference)
                    for family, seed in self.scenarios for w in weights]
        results = list(self.pool.map(play, episodes, chunksize=len(mixes)))
        return [results[m::len(mixes)] for m in range(len(mixes))]

    def _by_family(self, values: np.ndarray) -> list[np.ndarray]:
        return [values[[f == family for f, _ in self.scenarios]] for family in self.families]

    def _row(self, round_: int, move: str, votes: dict[str, float], results: list[tuple[float, bool]],
             base: np.ndarray | None) -> tuple[dict, np.ndarray]:
        paired = np.array([paired_score(*result, *reference) for result, reference in zip(results, self.reference)])
        per_family = dict(zip(self.families, (float(v.mean()) for v in self._by_family(paired))))
        gain = se = 0.0
        if base is not None:
            groups = self._by_family(paired - base)
            gain = float(np.mean([g.mean() for g in groups]))
            se = float(math.sqrt(sum(g.var(ddof=1) / len(g) if len(g) > 1 else 0.0 for g in groups))
                       / len(groups))
        row = {"round": round_, "move": move, "votes": "+".join(sorted(votes)) or "(prior)",
               "score": float(np.mean(list(per_family.values()))), "gain": gain, "gain_se": se,
               "targets": sum(reached for _carbon, reached in results), "draws": len(results), **per_family}
        self.rows.append(row)
        return row, paired

    def clear(self, row: dict) -> bool:
        """Whether a toggle's gain over its round's mix is clear enough to keep it."""
        return clear_gain(row["gain"], row["gain_se"], self.settings.search_min_gain, self.settings.search_confidence)

    def run(self, log=print) -> dict[str, float]:
        """The chosen mix (voter: margin)."""
        best, base = self._row(0, "start", self.votes, self._play([self.votes])[0], None)
        log(f"vote search: start {best['votes']} {best['score']:+.4f}")
        for round_ in range(1, self.settings.search_rounds + 1):
            moves = []
            for voter in self.settings.search_votes:
                mix = dict(self.votes)
                if voter in mix:
                    del mix[voter]
                else:
                    mix[voter] = 1.0
                moves.append((("-" if voter in self.votes else "+") + voter, mix))
            played = [self._row(round_, move, mix, results, base)
                      for (move, mix), results in zip(moves, self._play([mix for _, mix in moves]))]
            log(f"vote search round {round_}: " + ", ".join(
                f"{row['move']} {row['score']:+.4f} (gain {row['gain']:+.4f} ± {row['gain_se']:.4f})"
                for row, _ in played))
            clear = [i for i, (row, _) in enumerate(played) if self.clear(row)]
            if not clear:
                break
            top = max(clear, key=lambda i: (played[i][0]["score"], -i))
            self.votes, (best, base) = moves[top][1], played[top]
        log(f"vote search: kept {best['votes']} {best['score']:+.4f}")
        return dict(self.votes)

    def write(self, path: Path) -> None:
        _write_progress(path, self.rows)


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
            selection: _Selection | None = None, search: VoteSearch | None = None) -> dict[str, Any]:
    record = {"settings": settings.model_dump(mode="json"), "generations_done": generations,
              "actions": list(ACTIONS), "features": N_FEATURES, "wall_minutes": (time.monotonic() - started) / 60}
    if search is not None:
        record["searched_votes"] = search.votes
        record["search"] = search.rows
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
