"""Does time matter, and does energy bind? Figures of the world model's time and battery parts.

    python benchmarks/time_and_energy.py [--config default] [--seeds 20] [--schedulers carbon_periodic all_nodes]
    python benchmarks/time_and_energy.py --swings

Plays each scheduler deterministically on validation seeds 10000.. twice: with the configured grid intensity
and with each region flattened to its annual mean (``grid.intensity: annual_mean``), and prints per scheduler:
carbon-to-target (reached episodes) and episode carbon under both and their relative change, targets met,
drop-outs (actions refused on the true battery or because the node was offline), energy-masked node-rounds (an
online off-grid node whose mask forbids some action), offline node-rounds, and the lowest state of charge any
battery reached against the reserve. ``--swings`` prints the daily max/min of intensity per zone from the
measured traces next to the synthetic daily shape. Test seeds are never used.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from greengossip.agents.learned import make_scheduler
from greengossip.envs import grid_traces
from greengossip.envs.config import load_config
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.scenario import make_scenario
from greengossip.training.rollout import takes_action_masks
from greengossip.training.settings import FIRST_VALIDATION_SEED


def play(spec: str, config, seed: int) -> dict[str, float]:
    env = EdgeLearningEnv(config)
    obs, _ = env.reset(seed=seed)
    scheduler = make_scheduler(spec, env=env, seed=0)
    takes_masks = takes_action_masks(scheduler)
    scenario = env.scenario
    off_grid = ~scenario.grid_connected
    reserve = config.energy.battery_min_soc * scenario.capacity_wh
    started_above = scenario.initial_battery_wh >= reserve
    figures = dict(dropped=0, energy_masked=0, battery_rounds=0, offline=0, below_reserve=0, min_soc=1.0)
    state, start, done = None, np.ones(1, dtype=bool), False
    while not done:
        masks = env.action_masks()
        t = int(env.sim_state.round[0])
        online = scenario.available[:, t]
        figures["energy_masked"] += int((~masks.all(1) & (online & off_grid).numpy()).sum())
        figures["battery_rounds"] += int((online & off_grid).sum())
        figures["offline"] += int((~online).sum())
        kwargs = {"action_masks": masks} if takes_masks else {}
        action, state = scheduler.predict(obs, state=state, episode_start=start, deterministic=True, **kwargs)
        start = np.zeros(1, dtype=bool)
        obs, _, terminated, truncated, info = env.step(np.asarray(action).reshape(-1))
        battery = env.sim_state.battery_wh
        figures["dropped"] += int(info["dropped_nodes"])
        figures["below_reserve"] += int(((battery < reserve - 1e-6) & started_above & off_grid).sum())
        soc = (battery / scenario.capacity_wh)[off_grid]
        figures["min_soc"] = min(figures["min_soc"], float(soc.min()) if soc.numel() else 1.0)
        done = terminated or truncated
    to_target = info["carbon_to_target_g"]
    figures.update(reached=float(terminated),
                   carbon_to_target_g=float("nan") if to_target is None else float(to_target),
                   episode_carbon_g=float(info["episode_carbon_g"]), rounds=float(info["episode_rounds"]))
    return figures


def summary(spec: str, config, seeds: list[int]) -> dict[str, float]:
    runs = [play(spec, config, seed) for seed in seeds]
    reached = [r["carbon_to_target_g"] for r in runs if r["reached"]]
    battery_rounds = sum(r["battery_rounds"] for r in runs)
    return {
        "targets": sum(r["reached"] for r in runs),
        "carbon_to_target_g": float(np.mean(reached)) if reached else float("nan"),
        "episode_carbon_g": float(np.mean([r["episode_carbon_g"] for r in runs])),
        "rounds": float(np.mean([r["rounds"] for r in runs])),
        "dropped_per_episode": float(np.mean([r["dropped"] for r in runs])),
        "energy_masked_share": sum(r["energy_masked"] for r in runs) / max(battery_rounds, 1),
        "offline_per_episode": float(np.mean([r["offline"] for r in runs])),
        "below_reserve": sum(r["below_reserve"] for r in runs),
        "min_soc": min(r["min_soc"] for r in runs),
    }


def swings(config) -> None:
    """Daily max/min of intensity: measured traces (median and 90th percentile over the year's days) and the
    synthetic shape of each of the config's regions (over a fortnight of rounds, averaged to hours)."""
    print("| zone | year | annual mean g/kWh | median daily max/min | p90 | max |")
    print("|---|---|---|---|---|---|")
    for zone in ("DE", "DK", "GB", "FR", "ES", "NL", "NO", "PL", "CAISO", "DUKE"):
        trace = grid_traces.hourly_intensity(zone, config.grid.trace_year)
        if trace is None:
            continue
        days = trace[: len(trace) // 24 * 24].reshape(-1, 24)
        swing = days.max(1) / days.min(1)
        print(f"| {zone} | {config.grid.trace_year} | {trace.mean():.0f} | {np.median(swing):.2f} | "
              f"{np.percentile(swing, 90):.2f} | {swing.max():.2f} |")
    per_hour = int(round(60 / config.round_minutes))
    synthetic = config.model_copy(update={
        "max_rounds": 24 * per_hour * 14, "grid": config.grid.model_copy(update={"intensity": "synthetic"})})
    scenario = make_scenario(synthetic, np.random.default_rng(0))
    for index, name in enumerate(scenario.region_names):
        node = int(torch.nonzero(scenario.region_index == index)[0])
        trace = scenario.carbon_g_per_kwh[node].double().numpy()
        hours = trace[: len(trace) // (24 * per_hour) * 24 * per_hour].reshape(-1, per_hour).mean(1)
        days = hours.reshape(-1, 24)
        swing = days.max(1) / days.min(1)
        print(f"| synthetic {name} | - | {trace.mean():.0f} | {np.median(swing):.2f} | "
              f"{np.percentile(swing, 90):.2f} | {swing.max():.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--schedulers", nargs="+",
                        default=["carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02", "all_nodes"])
    parser.add_argument("--swings", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    if args.swings:
        swings(config)
        return
    flat = config.model_copy(update={"grid": config.grid.model_copy(update={"intensity": "annual_mean"})})
    seeds = list(range(FIRST_VALIDATION_SEED, FIRST_VALIDATION_SEED + args.seeds))
    for spec in args.schedulers:
        hourly, annual = summary(spec, config, seeds), summary(spec, flat, seeds)
        change = annual["carbon_to_target_g"] / hourly["carbon_to_target_g"] - 1
        print(f"{spec}: {hourly}")
        print(f"  annual mean: {annual}")
        print(f"  carbon-to-target annual mean vs hourly: {change:+.1%}; episode carbon "
              f"{annual['episode_carbon_g'] / hourly['episode_carbon_g'] - 1:+.1%}")


if __name__ == "__main__":
    main()
