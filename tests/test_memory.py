"""envs/memory.py: once an env exists, a round's pattern of big blocks reuses the heap instead of faulting in
new pages; the opt-out variable leaves malloc alone. Each case runs in a fresh interpreter, since the
setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from greengossip.envs.memory import OPT_OUT_VARIABLE

ROUND_PATTERN = """
import resource, torch
from greengossip import envs
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.memory import keep_freed_memory

EdgeLearningEnv("configs/tiny.yaml")  # the env sets the thresholds itself
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
kept = [torch.ones(1_400_000) for _ in range(2)]  # two 5.6 MB blocks in the state
for round_index in range(40):
    if round_index == 10:
        start = faults()
    fresh = [torch.ones(1_400_000) for _ in range(3)]  # new models, public copies, pull
    kept = fresh[1:]  # the previous round's blocks are freed
print(keep_freed_memory(), (faults() - start) / 30)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")


def run_rounds(keep: str | None) -> tuple[bool, float]:
    environment = {key: value for key, value in os.environ.items() if key != OPT_OUT_VARIABLE}
    if keep is not None:
        environment[OPT_OUT_VARIABLE] = keep
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", ROUND_PATTERN], capture_output=True, text=True, cwd=root,
                            env=environment, timeout=120, check=True)
    applied, faults_per_round = result.stdout.split()
    return applied == "True", float(faults_per_round)


@glibc_only
def test_an_env_makes_big_blocks_come_back_from_the_heap():
    applied, faults_per_round = run_rounds(None)
    assert applied
    # 3 x 5.6 MB of fresh pages would be about 4,100 faults a round; a kept heap needs none
    assert faults_per_round < 50


@glibc_only
def test_the_opt_out_variable_leaves_malloc_alone():
    applied, _ = run_rounds("0")
    assert not applied
