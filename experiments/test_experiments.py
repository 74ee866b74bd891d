"""Tests of the one-off analysis scripts in experiments/ (outside CI: ``python -m pytest experiments``)."""

from __future__ import annotations

import importlib.util as util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
torch.set_num_threads(1)


def load(name: str):
    """The script ``experiments/<name>.py`` as a module."""
    spec = util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_action_mix_counts_the_actions_of_each_episode_until_it_ends():
    """experiments/action_mix.py: an untrained residual model over all_nodes acts like the rule, so
    (almost) every node-round is train + full broadcast; shares sum to one."""
    from sb3_contrib import MaskablePPO

    from greengossip.agents.policies import MaskableNodeSetPolicy
    from greengossip.envs.config import load_config
    from greengossip.training.builders import make_env

    action_mix = load("action_mix")
    config = load_config(TINY)
    model = MaskablePPO(MaskableNodeSetPolicy, make_env(config), seed=0, n_steps=16, batch_size=16,
                        policy_kwargs=dict(features_extractor_kwargs=dict(hidden=16), prior="all_nodes"))
    shares, finals = action_mix.action_mix(model, config, [10_000, 10_001])
    assert shares.sum() == pytest.approx(1.0)
    assert shares[2] > 0.9  # SEND_FULL, the rule's choice wherever the node can afford it
    assert len(finals) == 2 and all("episode_rounds" in f for f in finals)


def test_carbon_split_adds_up_to_the_episode_carbon_and_broadcasts(tmp_path, capsys):
    """experiments/carbon_split.py: grid + every region's backbone carbon is the episode's carbon as the
    harness records it, and the regions' broadcasts are the harness's broadcasting node-rounds."""
    from greengossip.envs.config import load_config
    from greengossip.training.evaluate import run_evaluation

    carbon_split = load("carbon_split")
    seed = 10_000
    split = carbon_split.carbon_split("carbon_periodic", load_config(TINY), [seed])
    (row,) = run_evaluation(["carbon_periodic"], [str(TINY)], [seed], tmp_path, workers=1, progress=False)
    backbone = sum(value for key, value in split.items() if key.startswith("backbone_g:"))
    assert backbone > 0 and split["grid_g"] >= 0  # tiny.yaml: carbon_periodic may draw nothing from a grid
    assert split["grid_g"] + backbone == pytest.approx(row["episode_carbon_g"], rel=1e-6)
    broadcasts = sum(value for key, value in split.items() if key.startswith("broadcasts:"))
    assert broadcasts == pytest.approx(row["mean_broadcasters"] * row["rounds"])
    assert split["rounds"] == row["rounds"] and split["targets"] == row["reached_target"]
    carbon_split.main(["carbon_periodic", "--seeds", "1", "--config", str(TINY)])
    assert "| `carbon_periodic` |" in capsys.readouterr().out


def test_rule_variants_as_it_is_plays_the_graded_prior(capsys):
    """experiments/rule_variants.py: the unchanged variant is the graded carbon_periodic rule episode for
    episode, and a changed one plays differently."""
    from greengossip.envs.config import load_config

    rule_variants = load("rule_variants")
    config, seeds = load_config(TINY), [10_000, 10_001]
    variants = rule_variants.variants(config.max_rounds)
    assert rule_variants.GRADED_PRIOR == "carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02"
    graded = rule_variants.carbon_split.carbon_split(rule_variants.GRADED_PRIOR, config, seeds)
    assert rule_variants.carbon_split.carbon_split(variants["as it is"], config, seeds) == graded
    assert rule_variants.carbon_split.carbon_split(variants["wait rounds send top-1 %"], config, seeds) != graded
    rule_variants.main(["--seeds", "1", "--config", str(TINY), "--only", "round number"])
    assert "| periods on the round number |" in capsys.readouterr().out


def test_rule_search_draws_valid_distinct_rules_and_ranks_them(tmp_path, capsys):
    """experiments/rule_search.py: the fixed rules come first, the draws are distinct option sets the
    heuristic accepts, and a short search prints one ranked row per rule."""
    from greengossip.agents.learned import make_scheduler

    rule_search = load("rule_search")
    rules = rule_search.sample_rules(12, seed=0)
    assert rules[:2] == rule_search.ALWAYS and len(set(rules)) == 12
    assert rules == rule_search.sample_rules(12, seed=0)
    for rule in rules:
        make_scheduler(rule, seed=0)  # a bad option would raise here
    rule_search.main(["--samples", "3", "--seeds", "1", "--config", str(TINY), "--workers", "1",
                      "--out", str(tmp_path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `carbon_periodic")]
    assert len(rows) == 3 and {row.split("`")[1] for row in rows} == set(rule_search.sample_rules(3, seed=0))
    with pytest.raises(SystemExit):
        rule_search.main(["--samples", "1"])


def test_trace_device_finds_no_parting_call_between_equal_runs_and_the_one_call_that_differs():
    """experiments/trace_device.py: two CPU runs of the same episode part nowhere; a call whose recorded
    output is changed (its inputs untouched) is the one reported; the wrappers come off afterwards."""
    from greengossip.envs import simulator
    from greengossip.envs.config import load_config

    trace = load("trace_device")
    original = simulator.transition
    trace.install(trace.RECORDER)
    try:
        assert getattr(simulator.transition, "__traced__", False)
        first, actions = trace.episode(load_config(TINY), 2, 2, 0)
        second, _ = trace.episode(load_config(TINY), 2, 2, 0, actions)
    finally:
        trace.uninstall()
    assert simulator.transition is original
    assert len(first) == len(second) > 20
    assert trace.parting_calls(first, second, 1e-5, 1e-4) == ([], 0)

    changed = next(i for i, call in enumerate(second) if call[0].endswith("compress") and call[3])
    name, index, inputs, outputs = second[changed]
    second[changed] = (name, index, inputs, [(key, value + 1.0) for key, value in outputs])
    parting, unmatched = trace.parting_calls(first, second, 1e-5, 1e-4)
    assert [(call[1], call[2]) for call in parting] == [(name, index)] and unmatched == 0
    # the gap is |a - b| / (1 + |a|), largest where |a| is smallest
    expected = max(1.0 / (1.0 + float(np.abs(value).min())) for _, value in outputs)
    assert parting[0][4] == pytest.approx(expected, rel=1e-3)
