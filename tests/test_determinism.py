"""One seed, one episode: all randomness flows from ``reset(seed=...)`` (house style 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import NEEDS_CUDA, all_nodes, make_env, tiny_variant

from greengossip.envs.dynamics.energy import N_ACTIONS

ROUNDS = 12


def _actions(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, N_ACTIONS, 8) for _ in range(ROUNDS)]


def _rollout(seed: int, actions: list[np.ndarray], config=None) -> list[tuple]:
    env = make_env() if config is None else make_env(config)
    obs, info = env.reset(seed=seed)
    record = [(obs, 0.0, False, False, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        record.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return record


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_same_seed_gives_identical_rollouts():
    actions = _actions()
    first, second = _rollout(7, actions), _rollout(7, actions)
    assert len(first) == len(second)
    for t, (a, b) in enumerate(zip(first, second)):
        for part, x, y in zip(("obs", "reward", "terminated", "truncated", "info"), a, b):
            _assert_same(x, y, f"round {t} {part}")


@NEEDS_CUDA
def test_cuda_rollout_repeats_and_follows_the_cpu_to_float32_rounding():
    """On CUDA the scatter-adds sum in any order, so a rerun is equal to rounding, not bit for bit; the
    CPU's episode is followed to rounding too (actions without q8/top-k compression, whose steps can turn
    a rounding difference into a quantum: docs/bench_cuda.md)."""
    rng = np.random.default_rng(3)
    uncompressed = [rng.choice([0, 1, 2], 8) for _ in range(ROUNDS)]  # sleep, train silent, full broadcast
    cpu = _rollout(7, uncompressed)
    first, second = (_rollout(7, uncompressed, tiny_variant(device="cuda")) for _ in range(2))
    assert len(first) == len(second) == len(cpu)
    for t, (a, b, c) in enumerate(zip(first, second, cpu)):
        for key in a[0]:
            np.testing.assert_allclose(a[0][key], b[0][key], atol=1e-5, err_msg=f"round {t} rerun {key}")
            np.testing.assert_allclose(a[0][key], c[0][key], atol=1e-4, err_msg=f"round {t} cpu {key}")
        assert a[1] == pytest.approx(c[1], abs=1e-4) and a[2:4] == c[2:4]
        for key in ("accuracy", "carbon_g", "energy_wh") if t > 0 else ():  # the reset's info has no KPIs
            assert a[4][key] == pytest.approx(c[4][key], rel=1e-4, abs=1e-6), f"round {t} {key}"


@NEEDS_CUDA
@pytest.mark.parametrize("n_nodes", [8, 100], ids=["dense blocks", "sparse CSR"])
def test_cuda_reruns_are_bit_identical_under_torch_deterministic_algorithms(n_nodes):
    """What a researcher sets for exact reruns on a GPU; the sparse products then sum each row in order
    (``products.sparse_product``), since cuSPARSE is outside the flag."""
    rng = np.random.default_rng(4)
    actions = [rng.integers(0, N_ACTIONS, n_nodes) for _ in range(ROUNDS)]
    config = tiny_variant(device="cuda", n_nodes=n_nodes)
    torch.use_deterministic_algorithms(True)
    try:
        first, second = _rollout(7, actions, config), _rollout(7, actions, config)
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(first) == len(second)
    for t, (a, b) in enumerate(zip(first, second)):
        for part, x, y in zip(("obs", "reward", "terminated", "truncated", "info"), a, b):
            _assert_same(x, y, f"round {t} {part}")


def test_rollout_ignores_global_random_state():
    """envs/ must not read numpy's or torch's global generators."""
    actions = _actions(1)
    np.random.seed(1)
    torch.manual_seed(1)
    first = _rollout(11, actions)
    np.random.seed(2)
    torch.manual_seed(2)
    second = _rollout(11, actions)
    for t, (a, b) in enumerate(zip(first, second)):
        _assert_same(a[0], b[0], f"round {t} obs")
        _assert_same(a[4], b[4], f"round {t} info")


def test_reset_with_same_seed_on_one_env_repeats_the_episode():
    env = make_env()
    env.reset(seed=3)
    first = [env.step(all_nodes(env, 2))[0] for _ in range(3)]
    env.reset(seed=3)
    second = [env.step(all_nodes(env, 2))[0] for _ in range(3)]
    for a, b in zip(first, second):
        _assert_same(a, b)


def test_different_seeds_give_different_scenarios():
    scenarios = []
    for seed in (0, 1):
        env = make_env()
        env.reset(seed=seed)
        scenarios.append(env.unwrapped.scenario)
    a, b = scenarios
    assert not torch.equal(a.harvest_wh, b.harvest_wh)
    assert not torch.equal(a.carbon_g_per_kwh, b.carbon_g_per_kwh)
    assert not torch.equal(a.shards, b.shards)
    assert not torch.equal(a.initial_battery_wh, b.initial_battery_wh)
    assert float(a.start_utc_hour[0]) != float(b.start_utc_hour[0]) or not np.array_equal(a.positions, b.positions)


def test_different_seeds_give_different_rollouts():
    actions = _actions(2)
    first, second = _rollout(0, actions), _rollout(1, actions)
    assert any(not np.array_equal(x[0]["nodes"], y[0]["nodes"]) for x, y in zip(first, second))


def test_numpy_and_torch_stream_hashes_agree():
    """The CPU path hashes in NumPy, other devices in torch: both must give the same random bits."""
    from greengossip.envs.dynamics import streams

    key = torch.tensor([0, 12345, 2**31 + 7, 2**32 - 1])
    rounds = torch.tensor([0, 5, 191, 3])
    prefixes = torch.from_numpy(streams._prefixes(key, rounds, streams.BATCHES).astype(np.int64))
    expected = streams._bits_torch(prefixes, 3 * 700).view(4, 3, 700)
    assert torch.equal(streams._bits(key, rounds, streams.BATCHES, (3, 700)), expected)
    # the CPU's uniforms come from the NumPy bits directly: the same floats as from torch's bits
    assert torch.equal(streams.uniform(key, rounds, streams.BATCHES, (3, 700)), (expected >> 8).float() * 2.0**-24)
    assert torch.equal(streams.open_uniform(key, rounds, streams.BATCHES, (3, 700)),
                       ((expected >> 8) + 1).float() * 2.0**-24)
    assert int(expected.min()) >= 0 and int(expected.max()) < 2**32
    assert len(torch.unique(expected)) > 0.99 * expected.numel()


def test_device_check_finds_the_cpu_identical_to_itself_and_reports_a_difference(capsys):
    """benchmarks/device_check.py (CPU against another device): with the CPU on both sides every figure
    is zero and both runs end together; its comparison does see a perturbed reward; the random actions
    only pick allowed ones."""
    import importlib.util as util

    from conftest import ROOT, TINY

    spec = util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    check = util.module_from_spec(spec)
    spec.loader.exec_module(check)
    mask = np.zeros((3, 40, N_ACTIONS), dtype=np.float32)
    mask[..., 0] = 1.0
    mask[0, :, 2] = 1.0
    picked = check.random_valid_actions(mask, np.random.default_rng(0))
    assert set(np.unique(picked[0])) <= {0, 2} and (picked[1:] == 0).all() and 2 in picked[0]

    check.main(["--device", "cpu", "--configs", str(TINY), "--rounds", "4", "--batch", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {TINY}")]
    assert len(rows) == 4  # single and vector, printed as they finish and again in the table
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")]
        assert cells[4:6] == ["yes", "identical"] and all(float(value.split()[-1]) == 0.0
                                                           for value in cells[6].split(", "))
    env = make_env(TINY)
    records, actions = check.run(env, 0, 3, 0)
    shifted = [(obs, reward + 0.5, info, done) for obs, reward, info, done in records]
    assert check.largest_differences(records, shifted)["reward"] == pytest.approx(0.5)
