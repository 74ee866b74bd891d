"""benchmarks/bench_step.py runs end to end on small sizes and writes every table it prints; the batched
round and the per-node reference agree on the round they both played."""

from __future__ import annotations

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench_step():
    return load_benchmark("bench_step")


def test_the_benchmark_writes_its_tables(bench_step, tmp_path):
    out = tmp_path / "bench.md"
    bench_step.main(["--rounds", "2", "--default-rounds", "3", "--sizes", "8", "--batches", "1", "2",
                     "--out", str(out)])
    text = out.read_text()
    size_row = next(line for line in text.splitlines() if line.startswith("| 8 | ") and "x |" in line)
    cells = [cell.strip() for cell in size_row.strip("|").split("|")]
    assert float(cells[9].rstrip("x")) > 0  # the bare ceiling: reference / bare work
    assert float(cells[10]) < 1e-4  # largest |Δparams| between the batched round and the reference
    vector_row = next(line for line in text.splitlines() if line.startswith("| 8 | 2 |"))  # the vector table, B = 2
    cells = [cell.strip() for cell in vector_row.strip("|").split("|")]
    assert min(float(cells[i]) for i in (5, 6, 7)) > 0  # round and bare learning of the same 2 x 8 nodes, ratio
    assert min(float(cells[i].rstrip("x")) for i in (8, 9)) > 0  # round and step speed-ups over 2 reference rounds
    assert "SyncVectorEnv of 64 EdgeLearningEnv" in text
    # the page carries its method (the module's docstring) and the command that regenerates it
    assert text.startswith("# Environment step speed\n") and "geographic graph" in text
    assert "Regenerate this page with `python benchmarks/bench_step.py --rounds 2 " in text


def test_steps_in_alternation_time_every_env_every_round(bench_step):
    config = bench_step.config_for(8, 4)
    vector = bench_step.EdgeLearningVectorEnv(num_envs=2, config=config, workers=2)
    single = bench_step.gym.vector.SyncVectorEnv([lambda: bench_step.EdgeLearningEnv(config) for _ in range(2)])
    times = bench_step.time_in_alternation((vector, single), config, 2, 3, seed=0)
    assert [len(record) for record in times] == [3, 3]
    assert all(t > 0 for record in times for t in record)
    vector.close()


@pytest.mark.parametrize("subprocesses", ["sb3", "gymnasium"])
def test_all_cores_times_threads_processes_and_single_env_processes(bench_step, subprocesses):
    config = bench_step.config_for(8, 4)
    times = bench_step.time_workers_against_subprocesses(config, 2, 2, 3, seed=0, subprocesses=subprocesses)
    assert [len(record) for record in times] == [3, 3, 3, 3]
    assert all(t > 0 for record in times for t in record)
