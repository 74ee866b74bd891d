"""``greengossip ablate``: does each scenario family's own factor decide the outcome?

    greengossip ablate --out runs/ablate [--seeds 5] [--families solar_sensor_field adversarial_fleet]
        [--workers 2] [--docs docs/world_model.md]

For every family in :data:`FAMILIES` (a shipped config in ``configs/scenarios/`` and the factor it is built
around) the command picks the best heuristic on full information (most targets met, then least
carbon-to-target) among the family's candidates on validation seeds, and runs it three ways on the same
test seeds, so the rule is never chosen on the seeds it is reported on:

* ``full``: the observation as the env gives it;
* ``blind``: the family's factor hidden or flattened in what the scheduler sees (:class:`InformationView`);
* ``oracle``: the factor replaced by the truth the simulator holds (future harvest or intensity beyond the
  forecast window, the true battery instead of private reports, who the attackers are instead of trust).

Only the scheduler's view changes: the world, its seeds and its KPIs are the same in all three, so the
difference is what the information is worth to that rule. Selection seeds are ``SELECTION_SEED_START``
onwards (the validation split), reported seeds ``HELD_OUT_SEED_START`` onwards (the test split); both are
disjoint from the training seeds (0..).

Writes ``ablation.csv`` (one row per family and variant: :data:`COLUMNS`) and ``ablation.md`` (the same as a
Markdown table with the factor's effect per family), and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from greengossip.envs.config import ConfigError
from greengossip.training.settings import FIRST_TEST_SEED, FIRST_VALIDATION_SEED

SELECTION_SEED_START = FIRST_VALIDATION_SEED  # the validation split: each family's best rule is chosen here
HELD_OUT_SEED_START = FIRST_TEST_SEED  # the test split: the table reports these, never trained or selected on
VARIANTS = ("full", "blind", "oracle")
COLUMNS = ("family", "factor", "variant", "scheduler", "seeds", "targets_met", "carbon_to_target_g", "attackers",
           "harm")
# the effect a family's factor must have on carbon-to-target or targets met (full against blind, or
# oracle against full) for the family to pose its problem
EFFECT_BAR = 0.10
# how far ahead the oracle sees (the observation's forecasts cover forecast_rounds): harvest until the sun
# is back after a night; intensity as far as carbon_timing lets a node wait for a cleaner hour, and never
# less than twice the observation's own forecast window (a day-ahead forecast's oracle sees two days)
ORACLE_HOURS = {"harvest": 12.0, "intensity": 2.0}


# ---------------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """A scenario family: a shipped config, the factor it is built around, and the heuristics that may be
    its best rule."""

    name: str
    factor: str
    schedulers: tuple[str, ...]
    description: str


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("solar_sensor_field", "harvest",
           ("all_nodes", "carbon_periodic:period=2", "harvest_aware:period=1", "harvest_aware:period=2"),
           "battery + solar sensor field, a few mains nodes; batteries run out overnight"),
    Family("continental_grid", "intensity",
           # no attackers here: trust_threshold=0, for on non-IID shards the trust gate idles honest nodes
           ("all_nodes", "carbon_aware", "carbon_periodic:period=1,trust_threshold=0",
            "carbon_timing:period=1,trust_threshold=0,max_wait=4", "carbon_window",
            "fleet_timing:period=1,trust_threshold=0"),
           "wind-swung Denmark and nuclear France on hourly traces, in spring"),
    Family("adversarial_fleet", "trust",
           ("trust_threshold", "energy_carbon_trust", "carbon_periodic"),
           "lying telemetry, ALIE and adaptive attackers against robust gossip"),
    Family("private_sensor_field", "telemetry",
           ("all_nodes", "battery_greedy", "carbon_periodic:period=1", "harvest_aware:period=1",
            "harvest_aware:period=2", "battery_quorum:period=1"),
           "winter battery nodes that brown out when asked beyond their means; their battery reaches the "
           "scheduler only as a one-bit private report and the fleet's drop-out share"),
    Family("large_network", "network",
           ("carbon_periodic:period=1", "carbon_timing:period=1", "network_aware:period=1"),
           "1,024 nodes in four regional clusters joined by gateways; internet bytes charged attributionally"),
)}


# ---------------------------------------------------------------------------------------------- views
@dataclass
class Truth:
    """What the simulator knows and the scheduler may not: read from the env at each step."""

    columns: dict[str, np.ndarray]  # (N,) node columns the oracle substitutes
    mask: np.ndarray  # (N, K) what each node can truly afford


def _window_mean(trace, start, horizon: int) -> np.ndarray:
    """(N,) mean of each row of ``trace`` (N, T) over the ``horizon`` entries after column ``start`` (N,),
    the last column repeated past the end of the trace."""
    import torch

    offsets = torch.arange(1, horizon + 1, device=trace.device).unsqueeze(0)
    index = (start.unsqueeze(1) + offsets).clamp(max=trace.shape[1] - 1)
    return trace.gather(1, index).mean(1).double().cpu().numpy()


def read_truth(env) -> Truth:
    """The truth behind one env's observation (B = 1)."""
    from greengossip.envs.observation import true_telemetry
    from greengossip.envs.simulator import affordable_actions, background_load
    from greengossip.envs.state import time_index

    fleet = env.unwrapped._fleet
    scenario, state, features, config = fleet.scenario, fleet.state, fleet.features, fleet.config
    t = time_index(scenario, state.round)
    horizon = {factor: max(1, int(round(hours * 60 / config.round_minutes))) for factor, hours in ORACLE_HOURS.items()}
    horizon["intensity"] = max(horizon["intensity"], 2 * config.observation.forecast_rounds)
    load = background_load(config, scenario, state.round)
    telemetry = true_telemetry(scenario, features, state, load)
    full_round_wh = scenario.costs.total_wh[:, 2]
    columns = {
        "harvest_forecast": _window_mean(scenario.harvest_wh / full_round_wh.unsqueeze(1), t,
                                         horizon["harvest"]),
        "carbon_forecast": _window_mean(scenario.carbon_g_per_kwh / 1000.0, t, horizon["intensity"]),
        "trust": scenario.honest.double().cpu().numpy(),
        **{name: telemetry[name].double().cpu().numpy() for name in ("battery_soc", "harvest_now", "load")},
    }
    mask = affordable_actions(config, scenario, state.battery_wh, telemetry["harvest_now"] * full_round_wh,
                              load=load)
    return Truth(columns, mask.cpu().numpy())


def _annual_mean_intensity(env) -> np.ndarray:
    """(N,) each node's grid intensity as its grid's annual mean, kgCO2e/kWh: the published figure a
    scheduler without hourly data would use (the trace year's mean where a trace ships, codecarbon's annual
    figure where the region runs on the synthetic shape). It knows where a grid is dirty, not when, nor
    whether the coming days are windier than the year."""
    from greengossip.envs.devices import country_energy_mix
    from greengossip.envs.grid_traces import hourly_intensity

    fleet = env.unwrapped._fleet
    scenario, config = fleet.scenario, fleet.config
    per_region = []
    for region, source in zip(config.regions, scenario.carbon_sources):
        trace = None if source == "synthetic" else hourly_intensity(source, config.grid.trace_year)
        per_region.append(float(trace.mean()) if trace is not None
                          else float(country_energy_mix()[region.country_iso]["carbon_intensity"]))
    return np.asarray(per_region)[scenario.region_index.cpu().numpy()] / 1000.0


# the node features that describe the graph: what a network-aware rule knows of it
TOPOLOGY_FEATURES = ("degree", "internet_links")


def true_topology(env) -> dict[str, np.ndarray]:
    """(N,) each node's topology features computed from the scenario's graph itself (neighbour table and
    its internet links), on the observation's scale."""
    scenario = env.unwrapped._fleet.scenario
    degree = scenario.neighbour_valid.sum(1).double().cpu().numpy()
    internet = (scenario.internet_slot & scenario.neighbour_valid).sum(1).double().cpu().numpy()
    most = max(float(degree.max()), 1.0)
    return {"degree": degree / most, "internet_links": internet / most}


def _set(observation: dict, columns: dict[str, Any]) -> dict:
    from greengossip.envs.observation import NODE_INDEX

    nodes = np.array(observation["nodes"], copy=True)
    for name, value in columns.items():
        nodes[..., NODE_INDEX[name]] = value
    return {**observation, "nodes": nodes}


def _blind(factor: str, observation: dict, env) -> dict:
    if factor == "harvest":  # the forecast zeroed: the node knows only this round's sun
        return _set(observation, {"harvest_forecast": 0.0})
    if factor == "intensity":  # flattened to each grid's annual mean: where is dirty stays known, when does not
        flat = _annual_mean_intensity(env)
        return _set(observation, {"carbon_now": flat, "carbon_forecast": flat})
    if factor == "trust":  # every node looks trusted
        return _set(observation, {"trust": 1.0})
    if factor == "telemetry":  # no reports: mid-range battery, a mask that allows everything, no drop-out share
        from greengossip.agents.base import GLOBAL_INDEX

        blind = _set(observation, {"battery_soc": 0.5})
        glob = np.array(observation["global"], copy=True)
        glob[..., GLOBAL_INDEX["dropped_share"]] = 0.0
        return {**blind, "global": glob, "action_mask": np.ones_like(observation["action_mask"])}
    if factor == "network":  # every node looks like the fleet's mean node: who the gateways are is unknown
        from greengossip.envs.observation import NODE_INDEX

        nodes = observation["nodes"]
        return _set(observation, {name: nodes[..., NODE_INDEX[name]].mean(-1, keepdims=True)
                                  for name in TOPOLOGY_FEATURES})
    raise ValueError(f"unknown factor {factor!r}; allowed: {', '.join(FACTORS)}")


def _oracle(factor: str, observation: dict, env) -> dict:
    truth = read_truth(env)
    if factor == "harvest":
        return _set(observation, {"harvest_forecast": truth.columns["harvest_forecast"]})
    if factor == "intensity":
        return _set(observation, {"carbon_forecast": truth.columns["carbon_forecast"]})
    if factor == "trust":  # who the attackers are
        return _set(observation, {"trust": truth.columns["trust"]})
    if factor == "telemetry":
        seen = _set(observation, {name: truth.columns[name] for name in ("battery_soc", "harvest_now", "load")})
        return {**seen, "action_mask": truth.mask.astype(np.float32)}
    if factor == "network":  # the graph itself (the observation's figures are already exact: oracle = full)
        return _set(observation, true_topology(env))
    raise ValueError(f"unknown factor {factor!r}; allowed: {', '.join(FACTORS)}")


FACTORS: dict[str, str] = {
    "harvest": "blind: harvest forecast zeroed; oracle: true mean harvest over the next 12 h",
    "intensity": "blind: each grid flattened to its annual mean (the episode's own mean would leak the coming "
                 "days' weather); oracle: true mean intensity over twice the forecast window (at least 2 h)",
    "trust": "blind: every node trusted; oracle: attackers at trust 0, honest nodes at 1",
    "telemetry": "blind: no battery reports (0.5), no mask and no drop-out share; oracle: true battery, harvest, "
                 "load and mask",
    "network": "blind: degree and internet links flattened to the fleet mean (no node known as a gateway); "
               "oracle: both counted from the graph itself",
}


class InformationView:
    """What a scheduler sees of one env under a variant: ``view(observation)`` hides the factor
    (``blind``), substitutes the truth (``oracle``) or leaves the observation as it is (``full``)."""

    def __init__(self, factor: str, variant: str, env):
        if factor not in FACTORS:
            raise ValueError(f"unknown factor {factor!r}; allowed: {', '.join(FACTORS)}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
        self.factor, self.variant, self.env = factor, variant, env
        self._transform: Callable | None = {"full": None, "blind": _blind, "oracle": _oracle}[variant]

    def __call__(self, observation: dict) -> dict:
        if self._transform is None:
            return observation
        return self._transform(self.factor, observation, self.env)


# ---------------------------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class EpisodeResult:
    reached: bool
    carbon_to_target_g: float  # NaN where the target was missed
    attackers: float  # attacker participations over the episode (node-rounds)
    harm: float  # honest accuracy lost against the attack-free twin, mean over rounds (NaN where not reported)


def run_episode(config: Any, spec: str, factor: str, variant: str, seed: int) -> EpisodeResult:
    import gymnasium as gym
    import torch

    from greengossip import envs
    from greengossip.agents.heuristics import build_heuristic

    torch.set_num_threads(1)
    env = gym.make(envs.ENV_ID, config=config)
    scheduler = build_heuristic(spec, seed=seed)
    view = InformationView(factor, variant, env)
    observation, info = env.reset(seed=seed)
    attackers, harms, done, steps = 0.0, [], False, 0
    max_steps = env.unwrapped.config.max_rounds + 1
    while not done:
        action, _ = scheduler.predict(view(observation), deterministic=True)
        observation, _, terminated, truncated, info = env.step(action)
        attackers += float(info.get("malicious_participants", 0) or 0)
        if info.get("harm") is not None:
            harms.append(float(info["harm"]))
        done = terminated or truncated
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"{spec} on {config}: the episode did not end after {steps} steps")
    env.close()
    reached = info.get("rounds_to_target") is not None
    carbon = info.get("carbon_to_target_g")
    return EpisodeResult(reached, float(carbon) if reached and carbon is not None else math.nan, attackers,
                         float(np.nanmean(harms)) if harms and not np.isnan(harms).all() else math.nan)


def _run_job(job: tuple) -> EpisodeResult:
    return run_episode(*job)


def run_jobs(jobs: Sequence[tuple], workers: int) -> list[EpisodeResult]:
    """Episodes in job order; each job is independent, so the results do not depend on ``workers``."""
    if workers <= 1 or len(jobs) <= 1:
        return [_run_job(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(_run_job, jobs, chunksize=1))


# ---------------------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class Row:
    family: str
    factor: str
    variant: str
    scheduler: str
    seeds: int
    targets_met: int
    carbon_to_target_g: float  # mean over the seeds that met the target
    attackers: float
    harm: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}


def summarise(family: Family, variant: str, spec: str, results: Sequence[EpisodeResult]) -> Row:
    met = [r.carbon_to_target_g for r in results if r.reached]
    harms = [r.harm for r in results if not math.isnan(r.harm)]
    return Row(family.name, family.factor, variant, spec, len(results), len(met),
               float(np.mean(met)) if met else math.nan, float(np.mean([r.attackers for r in results])),
               float(np.mean(harms)) if harms else math.nan)


def rank_key(row: Row) -> tuple[float, float]:
    """Best first: most targets met, then least carbon-to-target."""
    carbon = row.carbon_to_target_g
    return (-row.targets_met, carbon if not math.isnan(carbon) else math.inf)


def relative_change(new: float, old: float) -> float:
    if math.isnan(new) or math.isnan(old) or old == 0:
        return math.nan
    return (new - old) / abs(old)


def factor_effect(rows: dict[str, Row]) -> float:
    """The largest relative change in carbon-to-target or targets met, full against blind or oracle
    against full (NaN where nothing could be compared)."""
    full = rows["full"]
    changes = []
    for other in (rows["blind"], rows["oracle"]):
        changes.append(relative_change(other.carbon_to_target_g, full.carbon_to_target_g))
        changes.append(relative_change(other.targets_met, full.targets_met) if full.targets_met else
                       (math.inf if other.targets_met else math.nan))
    changes = [abs(c) for c in changes if not math.isnan(c)]
    return max(changes) if changes else math.nan


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[Row], seeds: Sequence[int], selection_seeds: Sequence[int]) -> str:
    lines = [
        f"Test seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per family and variant; never trained or selected "
        "on). The scheduler of a family is its best candidate on full information (most targets met, then "
        f"least carbon-to-target) on validation seeds {selection_seeds[0]}..{selection_seeds[-1]}. "
        "carbon-to-target is the "
        "mean over the seeds that met the target; attackers counts attacker participations (node-rounds) per "
        "episode; harm is the honest accuracy lost against the attack-free twin (mean over rounds and seeds). "
        "effect: the largest relative "
        f"change in carbon-to-target or targets met, full against blind or oracle against full (bar: "
        f"{EFFECT_BAR:.0%}).",
        "",
        "| family | factor | variant | scheduler | targets met | carbon-to-target (g) | attackers | harm | effect |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_family: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_family.setdefault(row.family, {})[row.variant] = row
    for family, variants in by_family.items():
        effect = factor_effect(variants) if len(variants) == len(VARIANTS) else math.nan
        for variant in VARIANTS:
            row = variants.get(variant)
            if row is None:
                continue
            shown = f"{effect:.1%}" if variant == "full" and not math.isnan(effect) else ""
            lines.append(f"| {family} | {row.factor} | {variant} | `{row.scheduler}` | {row.targets_met}/{row.seeds} | "
                         f"{_fmt(row.carbon_to_target_g)} | {_fmt(row.attackers, 1)} | {_fmt(row.harm, 3)} | {shown} |")
    lines += ["", "What each variant shows the scheduler:", ""]
    lines += [f"- {factor}: {views}" for factor, views in FACTORS.items() if factor in {r.factor for r in rows}]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- run
def _family_config(family: Family) -> Any:
    """The env config a family's episodes run on: its shipped file."""
    return f"scenarios/{family.name}"


def run_ablation(out: str | Path, families: Sequence[str], seeds: Sequence[int], workers: int = 1,
                 progress: Callable[[str], None] | None = None,
                 selection_seeds: Sequence[int] | None = None) -> list[Row]:
    """Pick each family's best heuristic on full information on ``selection_seeds`` (default: as many
    validation seeds as ``seeds``), run it full, blind and as an oracle on ``seeds``; write the CSV and
    the Markdown table to ``out``; return the rows."""
    if selection_seeds is None:
        selection_seeds = list(range(SELECTION_SEED_START, SELECTION_SEED_START + len(seeds)))
    if set(selection_seeds) & set(seeds):
        raise ConfigError(f"selection seeds and reported seeds overlap: {sorted(set(selection_seeds) & set(seeds))}")
    unknown = [name for name in families if name not in FAMILIES]
    if unknown:
        raise ConfigError(f"unknown families {unknown}; allowed: {', '.join(FAMILIES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for name in families:
        family = FAMILIES[name]
        config = _family_config(family)
        candidates = list(family.schedulers)
        n = len(selection_seeds)
        jobs = [(config, spec, family.factor, "full", seed) for spec in candidates for seed in selection_seeds]
        results = run_jobs(jobs, workers)
        validation_rows = [summarise(family, "full", spec, results[i * n:(i + 1) * n])
                           for i, spec in enumerate(candidates)]
        best = min(validation_rows, key=rank_key)
        if progress:
            progress(f"{name} (validation): " + ", ".join(f"{r.scheduler} {r.targets_met}/{r.seeds} "
                                                          f"{_fmt(r.carbon_to_target_g)} g" for r in validation_rows)
                     + f" -> {best.scheduler}")
        for variant in VARIANTS:
            jobs = [(config, best.scheduler, family.factor, variant, seed) for seed in seeds]
            rows.append(summarise(family, variant, best.scheduler, run_jobs(jobs, workers)))
            if progress:
                progress(f"{name} {variant}: {rows[-1].targets_met}/{rows[-1].seeds} "
                         f"{_fmt(rows[-1].carbon_to_target_g)} g")
    with open(out / "ablation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
    (out / "ablation.md").write_text(markdown_table(rows, list(seeds), list(selection_seeds)))
    return rows


DOCS_HEADING = "## Ablation"


def write_docs_section(path: str | Path, table: str) -> None:
    """Replace the body of the ``## Ablation`` section of ``path`` (up to the next ``## `` heading) with
    ``table``; the section is added before ``## Sources`` (or at the end) where there is none."""
    path = Path(path)
    lines = path.read_text().splitlines()
    body = ["", "Written by `greengossip ablate --docs` (training/ablate.py): each family's best rule with its "
            "factor as observed (full), hidden or flattened (blind), and replaced by the truth (oracle).", "",
            *table.rstrip("\n").splitlines(), ""]
    if DOCS_HEADING in lines:
        start = lines.index(DOCS_HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start + 1:end] = body
    else:
        at = lines.index("## Sources") if "## Sources" in lines else len(lines)
        lines[at:at] = [DOCS_HEADING, *body]
    path.write_text("\n".join(lines) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--seeds", type=int, default=5, help=f"seeds per family and variant: the best rule is chosen "
                        f"on validation seeds from {SELECTION_SEED_START}, the table reports test seeds from "
                        f"{HELD_OUT_SEED_START} (default 5 of each)")
    parser.add_argument("--families", nargs="+", default=None, metavar="NAME",
                        help=f"families to run (default all: {', '.join(FAMILIES)})")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (results do not depend on it)")
    parser.add_argument("--docs", default=None, metavar="MARKDOWN",
                        help="also write the table into this file's '## Ablation' section (docs/world_model.md)")


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise SystemExit(f"greengossip ablate: --seeds must be at least 1, got {args.seeds}")
    families = [item for value in args.families or FAMILIES for item in value.split(",") if item]
    seeds = list(range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + args.seeds))
    run_ablation(args.out, families, seeds, workers=args.workers or os.cpu_count() or 1,
                 progress=lambda line: print(line, flush=True))
    out = Path(args.out)
    if args.docs:
        write_docs_section(args.docs, (out / "ablation.md").read_text())
    print(f"\n{(out / 'ablation.md').read_text()}")
    print(f"wrote {out / 'ablation.csv'} and {out / 'ablation.md'}")
    return 0
