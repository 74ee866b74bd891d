"""The scenario suite: each scenario family as a seeded generator, and the seed splits.

A family is a base scenario (``configs/scenarios/<base>.yaml``) and the ranges its parameters are drawn
from, in ``configs/suite/<family>.yaml`` (validated by :class:`FamilyRanges`: unknown keys, empty or
reversed ranges and out-of-distribution ranges that overlap the training ones are errors naming the field).
A seed draws one scenario, always the same one (:func:`draw_scenario`), and the env is then reset with that
seed, so the seed fixes the whole episode.

Seeds are split by range (:data:`SPLITS`): ``train`` 0..9,999 (training only), ``validation``
10,000..19,999 (model selection), ``test`` 20,000..29,999 (reported, never trained or selected on;
``training.settings.FIRST_TEST_SEED``), all drawn from the training ranges; ``ood`` 30,000..39,999 draws
every parameter that has an ``ood`` range from it (other regions, years, fleet sizes, attacks), the others
from the training ranges.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from greengossip.envs.config import (
    AttackKind,
    ConfigError,
    EnvConfig,
    Region,
    TopologyConfig,
    _format_errors,
    load_config,
)
from greengossip.envs.safe_yaml import YAMLInputError, load_yaml_file
from greengossip.envs.shipped import find_config, shipped_names
from greengossip.training.settings import FIRST_TEST_SEED, FIRST_VALIDATION_SEED

SUITE = "suite"  # configs/suite/: one range file per family
FIRST_OOD_SEED = 30_000
SEED_LIMIT = 40_000
SPLITS: dict[str, range] = {
    "train": range(0, FIRST_VALIDATION_SEED),
    "validation": range(FIRST_VALIDATION_SEED, FIRST_TEST_SEED),
    "test": range(FIRST_TEST_SEED, FIRST_OOD_SEED),
    "ood": range(FIRST_OOD_SEED, SEED_LIMIT),
}
VIEWS = ("observed", "truth")
TopologyKind = TopologyConfig.model_fields["kind"].annotation  # the graph kinds a config takes


def split_of(seed: int) -> str:
    """The split a seed belongs to; ValueError for a seed outside every split."""
    for name, seeds in SPLITS.items():
        if seed in seeds:
            return name
    raise ValueError(f"seed {seed} is in no split; allowed: 0 <= seed < {SEED_LIMIT} "
                     f"({', '.join(f'{n} {r.start}..{r.stop - 1}' for n, r in SPLITS.items())})")


def split_seeds(split: str, count: int) -> list[int]:
    """The first ``count`` seeds of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    seeds = SPLITS[split]
    if not 1 <= count <= len(seeds):
        raise ValueError(f"seeds per family must be between 1 and {len(seeds)}, got {count}")
    return list(seeds[:count])


# ---------------------------------------------------------------------------------------------- range files
class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _ordered(span: tuple, field: str) -> tuple:
    low, high = span
    if low > high:
        raise ValueError(f"{field} range [{low}, {high}] is reversed; write it as [low, high]")
    return span


def _apart(train: tuple, ood: tuple) -> None:
    if not (ood[1] < train[0] or ood[0] > train[1]):
        raise ValueError(f"ood range [{ood[0]}, {ood[1]}] overlaps the training range [{train[0]}, {train[1]}]; "
                         "an out-of-distribution range must lie wholly outside it")


class _TrainOrOod(_Frozen):
    """A range with a ``train`` side and an optional ``ood`` side (subclasses declare both fields)."""

    def side(self, ood: bool):
        """The ``ood`` side for an out-of-distribution draw where there is one, else ``train``."""
        return self.ood if ood and self.ood is not None else self.train


class _Span(_TrainOrOod):
    """[low, high] on each side; the ``ood`` span lies wholly outside the ``train`` one."""

    @model_validator(mode="after")
    def _valid(self) -> _Span:
        _ordered(self.train, "train")
        if self.ood is not None:
            _ordered(self.ood, "ood")
            _apart(self.train, self.ood)
        return self


class IntSpan(_Span):
    """Whole numbers drawn uniformly from [low, high] (both included); ``ood`` outside ``train``."""

    train: tuple[int, int]
    ood: tuple[int, int] | None = None

    def draw(self, rng: np.random.Generator, ood: bool) -> int:
        low, high = self.side(ood)
        return int(rng.integers(low, high + 1))


class FloatSpan(_Span):
    """Numbers drawn uniformly from [low, high]; ``ood`` outside ``train``."""

    train: tuple[float, float]
    ood: tuple[float, float] | None = None

    def draw(self, rng: np.random.Generator, ood: bool) -> float:
        low, high = self.side(ood)
        return float(rng.uniform(low, high))


class _CountedPool(_TrainOrOod):
    """``count`` (drawn from [low, high]) distinct members of the side's pool, in pool order."""

    def _check_count(self) -> None:
        _ordered(self.count, "count")
        for name in ("train", "ood"):
            pool = getattr(self, name)
            if pool is not None and not 1 <= self.count[0] <= self.count[1] <= len(pool):
                raise ValueError(f"count [{self.count[0]}, {self.count[1]}] must lie in [1, {len(pool)}], the size "
                                 f"of the {name} pool")

    def choose(self, rng: np.random.Generator, ood: bool) -> list:
        pool = self.side(ood)
        count = int(rng.integers(self.count[0], self.count[1] + 1))
        return [pool[i] for i in np.sort(rng.choice(len(pool), size=count, replace=False))]


class TopologyChoice(_TrainOrOod):
    """Graph kinds, one drawn uniformly; the ``ood`` kinds are none of the ``train`` ones."""

    train: tuple[TopologyKind, ...] = Field(min_length=1)
    ood: tuple[TopologyKind, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _apart(self) -> TopologyChoice:
        shared = set(self.train) & set(self.ood or ())
        if shared:
            raise ValueError(f"ood kinds {sorted(shared)} are also training kinds; an out-of-distribution kind must "
                             "not be drawn in training")
        return self

    def draw(self, rng: np.random.Generator, ood: bool) -> str:
        kinds = self.side(ood)
        return str(kinds[int(rng.integers(len(kinds)))])


class AttackKinds(_CountedPool):
    """A subset of ``count`` (drawn from [low, high]) attack kinds out of the pool; the ``ood`` pool shares
    no kind with the ``train`` pool."""

    count: tuple[int, int]
    train: tuple[AttackKind, ...] = Field(min_length=1)
    ood: tuple[AttackKind, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _valid(self) -> AttackKinds:
        self._check_count()
        shared = set(self.train) & set(self.ood or ())
        if shared:
            raise ValueError(f"ood kinds {sorted(shared)} are also training kinds")
        return self

    def draw(self, rng: np.random.Generator, ood: bool) -> tuple[str, ...]:
        return tuple(self.choose(rng, ood))


class AttackRanges(_Frozen):
    fraction: FloatSpan | None = None
    kinds: AttackKinds | None = None


class PoolRegion(Region):
    """A region of a pool: its share of the nodes is set when it is drawn (equal shares)."""

    fraction: float = Field(1.0, gt=0, le=1)


class RegionPool(_CountedPool):
    """``count`` (drawn from [low, high]) regions out of the pool, each with an equal share of the nodes;
    the ``ood`` pool has no region or country of the ``train`` pool."""

    count: tuple[int, int]
    train: tuple[PoolRegion, ...] = Field(min_length=1)
    ood: tuple[PoolRegion, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _valid(self) -> RegionPool:
        self._check_count()
        if self.ood is not None:
            shared = {r.country_iso for r in self.train} & {r.country_iso for r in self.ood}
            if shared:
                raise ValueError(f"ood regions in countries {sorted(shared)} of the training pool; an "
                                 "out-of-distribution region is in another country (another grid)")
        return self

    def draw(self, rng: np.random.Generator, ood: bool) -> list[dict[str, Any]]:
        chosen = self.choose(rng, ood)
        return [{**region.model_dump(exclude_none=True), "fraction": 1.0 / len(chosen)} for region in chosen]


class OracleSettings(_Frozen):
    """The clairvoyant bound's base rules (training/oracle.py): every rule under every view is one base
    policy; the benchmark adds its own heuristics (observed)."""

    rules: tuple[str, ...] = Field(("all_nodes",), min_length=1)
    views: tuple[Literal["observed", "truth"], ...] = Field(VIEWS, min_length=1)
    every: int = Field(8, ge=1, le=10_000, description="rounds between two re-plans")
    width: int = Field(3, ge=1, le=100, description="base policies played again at each re-plan (the best so far)")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, rules: tuple[str, ...]) -> tuple[str, ...]:
        from greengossip.agents.heuristics import HEURISTICS

        unknown = [rule for rule in rules if rule.partition(":")[0] not in HEURISTICS]
        if unknown:
            raise ValueError(f"unknown heuristics {unknown}; allowed: {', '.join(HEURISTICS)} (options as "
                             "name:key=value)")
        return rules


class FamilyRanges(_Frozen):
    """One family: its base scenario and the ranges a seed draws from (absent: the base's value)."""

    base: str = Field(description="a shipped scenario config, e.g. solar_sensor_field")
    description: str = ""
    n_nodes: IntSpan
    year: IntSpan | None = Field(None, description="calendar year and ENTSO-E trace year (2017-2020 ship)")
    start_day: IntSpan | None = Field(None, description="day of the year of round 0 (0 = 1 January)")
    regions: RegionPool | None = None
    fleet_share: tuple[tuple[float, float], ...] | None = Field(
        None, description="weight range of each group of the base fleet, in order; the weights are normalised")
    battery_scale: FloatSpan | None = Field(None, description="factor on every group's battery_wh")
    attack: AttackRanges | None = None
    epsilon: FloatSpan | None = Field(None, description="privacy.epsilon_per_report")
    topology: TopologyChoice | None = None
    oracle: OracleSettings = OracleSettings()

    @field_validator("base")
    @classmethod
    def _shipped_base(cls, base: str) -> str:
        try:
            find_config(base)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return base

    @field_validator("year")
    @classmethod
    def _trace_years(cls, year: IntSpan | None) -> IntSpan | None:
        for span in (year.train, year.ood) if year is not None else ():
            if span is not None and not (2017 <= span[0] and span[1] <= 2020):
                raise ValueError(f"year range [{span[0]}, {span[1]}] must lie in [2017, 2020], the years whose "
                                 "hourly grid traces ship")
        return year

    @field_validator("start_day")
    @classmethod
    def _days(cls, days: IntSpan | None) -> IntSpan | None:
        for span in (days.train, days.ood) if days is not None else ():
            if span is not None and not (0 <= span[0] and span[1] <= 364):
                raise ValueError(f"start_day range [{span[0]}, {span[1]}] must lie in [0, 364]")
        return days

    @field_validator("fleet_share")
    @classmethod
    def _weights(cls, shares: tuple | None) -> tuple | None:
        for low, high in shares or ():
            if not 0 < low <= high:
                raise ValueError(f"fleet_share range [{low}, {high}] must satisfy 0 < low <= high")
        return shares

    @property
    def shifts(self) -> tuple[str, ...]:
        """The parameters the ood split draws from out-of-distribution ranges."""
        out = []
        for name in ("n_nodes", "year", "start_day", "battery_scale", "epsilon", "topology"):
            value = getattr(self, name)
            if value is not None and value.ood is not None:
                out.append(name)
        if self.regions is not None and self.regions.ood is not None:
            out.append("regions")
        for name in ("fraction", "kinds"):
            value = getattr(self.attack, name) if self.attack is not None else None
            if value is not None and value.ood is not None:
                out.append(f"attack_{name}")
        return tuple(out)


def family_names() -> list[str]:
    """The families that ship a range file (configs/suite/)."""
    return shipped_names(SUITE)


def load_family(name: str | Path) -> tuple[str, FamilyRanges]:
    """(family name, ranges) of a shipped family's name or a range file's path; ConfigError naming the
    field, the value and what is allowed for anything invalid."""
    try:
        path = find_config(name, kind=SUITE, what="suite family")
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    try:
        data = load_yaml_file(path)
    except YAMLInputError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"suite family ({path}) must be a mapping of fields, got {type(data).__name__}")
    try:
        ranges = FamilyRanges.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(path)).replace("GreenGossip config", "suite family", 1)) from None
    if ranges.fleet_share is not None:
        groups = len(_base_dict(ranges.base).get("fleet") or EnvConfig().fleet)
        if len(ranges.fleet_share) != groups:
            raise ConfigError(f"invalid suite family ({path}):\n  - fleet_share: {len(ranges.fleet_share)} ranges "
                              f"for a base fleet of {groups} groups; give one [low, high] per group")
    return path.stem, ranges


def _base_dict(base: str) -> dict[str, Any]:
    data = load_yaml_file(find_config(base))
    return dict(data) if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class ScenarioDraw:
    """One scenario of a family: the config a seed drew, and what was drawn (for tables)."""

    family: str
    seed: int
    split: str
    config: EnvConfig
    parameters: dict[str, Any]


def resized(config: EnvConfig, n_nodes: int, **observation: Any) -> EnvConfig:
    """``config`` with ``n_nodes`` nodes (and the ``observation`` fields given replaced), validated again: the
    graph, the fleet's groups and the attackers follow the fleet size, and a size that makes the scenario
    invalid is an error that says so."""
    data = config.model_dump(mode="json")
    return load_config({**data, "n_nodes": int(n_nodes), "observation": {**data["observation"], **observation}})


def _rng(family: str, seed: int) -> np.random.Generator:
    # the family's name enters the seed, so two families never draw in lockstep
    return np.random.default_rng([seed, zlib.crc32(family.encode())])


def draw_scenario(family: str, seed: int, ranges: FamilyRanges | None = None) -> ScenarioDraw:
    """The scenario that ``seed`` draws from ``family`` (a name or a range file): the same seed always
    gives the same scenario. The seed's split (:func:`split_of`) decides whether the ood ranges are used."""
    if ranges is None:
        family, ranges = load_family(family)
    split = split_of(int(seed))
    ood = split == "ood"
    rng = _rng(family, int(seed))
    data = _base_dict(ranges.base)
    drawn: dict[str, Any] = {}
    # the parameters draw in this fixed order: the same seed gives the same scenario
    drawn["n_nodes"] = data["n_nodes"] = ranges.n_nodes.draw(rng, ood)
    if ranges.year is not None:
        year = ranges.year.draw(rng, ood)
        data["year"], data["grid"] = year, {**(data.get("grid") or {}), "trace_year": year}
        drawn["year"] = year
    if ranges.start_day is not None:
        day = ranges.start_day.draw(rng, ood)
        data["start_days"] = (day, day + 1)
        drawn["start_day"] = day
    if ranges.regions is not None:
        data["regions"] = ranges.regions.draw(rng, ood)
        drawn["regions"] = "+".join(region["name"] for region in data["regions"])
    if ranges.fleet_share is not None or ranges.battery_scale is not None:
        fleet = [dict(group) for group in (data.get("fleet") or [g.model_dump() for g in EnvConfig().fleet])]
        if ranges.fleet_share is not None:
            weights = np.array([rng.uniform(low, high) for low, high in ranges.fleet_share])
            for group, share in zip(fleet, weights / weights.sum()):
                group["fraction"] = float(share)
            drawn["fleet_share"] = "/".join(f"{group['fraction']:.2f}" for group in fleet)
        if ranges.battery_scale is not None:
            scale = ranges.battery_scale.draw(rng, ood)
            for group in fleet:
                group["battery_wh"] = float(group["battery_wh"]) * scale
            drawn["battery_scale"] = round(scale, 3)
        data["fleet"] = fleet
    if ranges.attack is not None:
        attack = dict(data.get("attack") or {})
        if ranges.attack.fraction is not None:
            attack["fraction"] = drawn["attack_fraction"] = round(ranges.attack.fraction.draw(rng, ood), 3)
        if ranges.attack.kinds is not None:
            attack["kinds"] = ranges.attack.kinds.draw(rng, ood)
            drawn["attack_kinds"] = "+".join(attack["kinds"])
        data["attack"] = attack
    if ranges.epsilon is not None:
        epsilon = round(ranges.epsilon.draw(rng, ood), 3)
        privacy = dict(data.get("privacy") or {})
        if privacy.get("mechanism", "none") == "none":
            raise ConfigError(f"suite family {family!r}: epsilon needs a base config with private telemetry "
                              f"(privacy.mechanism laplace or gaussian); {ranges.base!r} has none")
        data["privacy"] = {**privacy, "epsilon_per_report": epsilon}
        drawn["epsilon"] = epsilon
    if ranges.topology is not None:
        kind = ranges.topology.draw(rng, ood)
        data["topology"] = {**(data.get("topology") or {}), "kind": kind}
        drawn["topology"] = kind
    try:
        config = load_config(data)
    except ConfigError as exc:
        raise ConfigError(f"suite family {family!r}, seed {seed}: the drawn scenario is not a valid config "
                          f"(narrow the ranges):\n{exc}") from None
    return ScenarioDraw(family, int(seed), split, config, drawn)
