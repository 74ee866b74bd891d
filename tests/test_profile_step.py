"""benchmarks/profile_step.py: its part timings nest, it leaves the env's functions as it found them, and
it rejects sizes it cannot run."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

import greengossip.envs.dynamics.gossip
import greengossip.envs.fleet_batch
import greengossip.envs.gossip_env
import greengossip.envs.simulator  # noqa: F401  (profile_step times functions in it)
from greengossip import envs


@pytest.fixture(scope="module")
def profile_step():
    return load_benchmark("profile_step")


@pytest.mark.parametrize("n_envs", [1, 3])
def test_parts_nest_inside_the_step_and_the_wrappers_come_off(profile_step, n_envs):
    before = (envs.simulator.local_sgd, envs.fleet_batch.transition, envs.dynamics.gossip.neighbour_distances,
              envs.fleet_batch.FleetBatch.__dict__["_full_split_accuracy"])
    rounds = 3
    timer, steps = profile_step.profile_parts(8, n_envs, rounds, warmup=1, seed=0)
    after = (envs.simulator.local_sgd, envs.fleet_batch.transition, envs.dynamics.gossip.neighbour_distances,
             envs.fleet_batch.FleetBatch.__dict__["_full_split_accuracy"])
    assert after == before

    assert len(steps) == rounds
    step = ("step",)
    transition = ("step", "transition")
    for path in (transition, transition + ("local_sgd",), transition + ("accuracy_per_node",),
                 transition + ("neighbour_distances",), ("step", "observe"), ("step", "round_kpis"),
                 ("step", "refresh")):
        assert path in timer.seconds, path
    # a part's time includes its children's, and the parts of a step lie within the step's own timing
    for path, seconds in timer.seconds.items():
        children = [timer.seconds[key] for key in timer.seconds if len(key) == len(path) + 1 and key[:-1] == path]
        assert sum(children) <= seconds * (1 + 1e-9), path
    assert timer.seconds[step] <= sum(steps) * (1 + 1e-9)

    table = profile_step.parts_table(timer, rounds)
    assert table[2].startswith("| step |") and "100.0 %" in table[2]
    assert any(line.startswith("| · transition |") for line in table)
    assert any("other (transition)" in line for line in table)


def test_the_wrappers_come_off_when_a_step_fails(profile_step):
    original = envs.simulator.local_sgd
    timer = profile_step.PartTimer()
    with pytest.raises(RuntimeError, match="call reset"):
        with profile_step.instrumented(timer):
            assert envs.simulator.local_sgd is not original
            envs.gossip_env.EdgeLearningEnv(profile_step.config_for(8, 4)).step([0] * 8)
    assert envs.simulator.local_sgd is original
    assert timer.path == []


def test_operator_table_counts_the_steps_calls(profile_step):
    lines = profile_step.profile_operators(8, 1, rounds=2, warmup=1, seed=0, top=5)
    total, top_level = (float(word) for word in lines[0].replace(",", "").split() if word.isdigit())
    assert 0 < top_level <= total
    rows = [line for line in lines if line.startswith("| `aten::")]
    assert len(rows) == 5


@pytest.mark.parametrize("argv, field", [(["--nodes", "0"], "--nodes"), (["--batch", "-1"], "--batch"),
                                         (["--warmup", "-2"], "--warmup"), (["--threads", "0"], "--threads")])
def test_bad_sizes_are_named(profile_step, capsys, argv, field):
    with pytest.raises(SystemExit):
        profile_step.main(argv)
    assert field in capsys.readouterr().err
