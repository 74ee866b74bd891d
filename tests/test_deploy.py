"""``greengossip deploy``: one process per node over torch.distributed agrees with the simulator, and a node
that dies or hangs is named and stops the run with no process left behind."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import greengossip.envs.telemetry as telemetry_module
from greengossip.envs.config import load_config
from greengossip.envs.dynamics.gossip import compress
from greengossip.envs.errors import UserError
from greengossip.envs.workloads import COMPRESSION_LEVELS, message_bytes
from greengossip.training.cli import main
from greengossip.training.deploy import report
from greengossip.training.deploy.launch import Fault, NodeFailure
from greengossip.training.deploy.messages import REPLACE, decode, encode, mode_of
from greengossip.training.deploy.report import COLUMNS, compare


def _children() -> list[int]:
    """Live processes whose parent is this one (zombies already reaped do not count)."""
    me = f"PPid:\t{os.getpid()}\n"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as status:
                text = status.read()
        except OSError:
            continue
        if me in text and "State:\tZ" not in text:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("level", range(len(COMPRESSION_LEVELS)))
@pytest.mark.parametrize("scale", [0.0, 1e-3, 5.0])
def test_message_decodes_to_what_the_simulator_applies_in_its_bytes(level, scale):
    delta = torch.randn(650, generator=torch.Generator().manual_seed(level)) * scale
    mode = mode_of(level)
    payload = encode(mode, delta)
    expected = delta if mode == REPLACE else compress(delta.unsqueeze(0), torch.tensor([level]))[0]
    assert torch.equal(decode(mode, payload, 650), expected)
    assert payload.numel() == message_bytes(650, COMPRESSION_LEVELS[level])


def test_deploy_on_eight_processes_matches_the_simulator(tmp_path):
    """The CI check: the tiny scenario, 8 node processes, 3 rounds, through the command line."""
    before = set(_children())
    assert main(["deploy", "--config", "tiny", "--scheduler", "carbon_aware", "--rounds", "3",
                 "--out", str(tmp_path)]) == 0
    with open(tmp_path / "sim_vs_real.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [int(row["round"]) for row in rows] == [1, 2, 3]
    for row in rows:
        assert float(row["bytes_real"]) > 0
        assert float(row["bytes_real"]) == float(row["bytes_sim"])
        assert abs(float(row["accuracy_real"]) - float(row["accuracy_sim"])) < 0.02
        assert int(row["actions_equal"]) == 1
        assert float(row["observation_gap"]) < 1e-5
        assert float(row["compute_s_measured"]) > 0
    assert "compute-time factor" in (tmp_path / "sim_vs_real.md").read_text()
    assert (tmp_path / "sim_vs_real.png").stat().st_size > 0
    assert set(_children()) <= before


class EveryLevel:
    """Node i trains and broadcasts at compression level i mod 4 (full, q8, top10, top1), where it can."""

    observation_kind = "dict"

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        mask = observation["action_mask"] > 0.5
        wanted = 2 + np.arange(len(mask)) % len(COMPRESSION_LEVELS)
        return np.where(mask[np.arange(len(mask)), wanted], wanted, 0), state


def test_every_compression_level_arrives_in_the_simulators_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "make_scheduler", lambda spec, env=None, seed=0: EveryLevel())
    rows = compare("tiny", "every level", 2, tmp_path)
    for row in rows:
        assert row["bytes_real"] == row["bytes_sim"] > 0
        assert row["actions_equal"] == 1
        assert abs(row["accuracy_gap_pp"]) < 2.0


def test_nodes_release_their_own_private_telemetry_as_the_simulator_does(tmp_path, monkeypatch):
    """Each node noises its own battery and background load (one-bit battery report, lifetime accountant):
    the scheduler sees what it sees in the simulator, up to float rounding elsewhere. This process reads
    true telemetry only at the episode's start of the deployment, then once per round of the simulator."""
    tiny = load_config("tiny")
    config = tiny.model_copy(update={"privacy": load_config("private_telemetry").privacy,
                                     "background_load": tiny.background_load.model_copy(update={"mean": 0.2})})
    assert config.privacy.mechanism != "none"
    reads = []
    true_telemetry = telemetry_module.true_telemetry
    monkeypatch.setattr(telemetry_module, "true_telemetry", lambda *args: reads.append(1) or true_telemetry(*args))
    rows = compare(config, "energy_carbon_trust", 3, tmp_path)
    assert len(reads) == 1 + (1 + 3)
    for row in rows:
        assert row["observation_gap"] < 1e-5
        assert row["actions_equal"] == 1
        assert row["bytes_real"] == row["bytes_sim"]


def test_attackers_play_their_attacks_as_in_the_simulator(tmp_path):
    """Model poisoners (crafted from their honest neighbours' copies; out of the consensus step even in
    rounds where they only train), free riders and label flippers, under trust-weighted ClippedGossip: the
    honest accuracy is the simulator's. A poisoner that broadcasts
    at a compressed level sends its crafted model in full: the bytes are the simulator's but for those."""
    tiny = load_config("tiny")
    config = tiny.model_copy(update={
        "attack": tiny.attack.model_copy(update={"fraction": 0.4, "on_probability": 0.8,
                                                 "kinds": ["sign_flip", "alie", "label_flip", "free_rider"]}),
        "defence": tiny.defence.model_copy(update={"aggregator": "clipped_gossip", "trust_weighting": True})})
    rows = compare(config, "carbon_periodic", 4, tmp_path)
    for row in rows:
        assert row["actions_equal"] == 1
        assert abs(row["accuracy_gap_pp"]) < 2.0
        assert row["observation_gap"] < 1e-4  # the attackers' own models included (all-node features)
        assert row["bytes_real"] - row["crafted_extra_bytes_real"] == row["bytes_sim"]


def test_dead_node_is_named_by_node_and_round_and_nothing_is_left(tmp_path):
    before = set(_children())
    started = time.monotonic()
    with pytest.raises(NodeFailure, match=r"node 3 died \(exit code 3\) in round 1"):
        compare("tiny", "all_nodes", 3, tmp_path, timeout_s=10.0, faults=(Fault(node=3, round=1, kind="die"),))
    assert time.monotonic() - started < 60
    assert set(_children()) <= before
    assert not (tmp_path / "sim_vs_real.csv").exists()


@pytest.mark.slow
def test_hung_node_is_named_within_the_timeout(tmp_path):
    before = set(_children())
    with pytest.raises(NodeFailure, match=r"node 5 hung in round 2: no report after"):
        compare("tiny", "all_nodes", 4, tmp_path, timeout_s=3.0, faults=(Fault(node=5, round=2, kind="hang"),))
    assert set(_children()) <= before


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds = 0: need at least 1"),
    (["--nodes", "3"], "--nodes = '3': expected START:STOP"),
    (["--scheduler", "nope"], "unknown scheduler 'nope'"),
    (["--timeout", "0"], "--timeout = 0.0: need a number of seconds > 0"),
])
def test_bad_arguments_are_one_message_and_status_2(tmp_path, capsys, argv, message):
    before = set(_children())
    assert main(["deploy", "--config", "tiny", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert set(_children()) <= before


def test_dissensus_is_refused_naming_the_field(tmp_path):
    tiny = load_config("tiny")
    config = tiny.model_copy(update={"attack": tiny.attack.model_copy(update={"fraction": 0.25,
                                                                                "kinds": ["dissensus"]})})
    with pytest.raises(UserError, match=r"attack.kinds = \['dissensus'\]: not supported by deploy"):
        compare(config, "all_nodes", 2, tmp_path)


@pytest.mark.slow
def test_two_hosts_on_loopback_share_one_group(tmp_path, monkeypatch):
    """Two launchers, as on two hosts: this one starts nodes 0-3 and the coordinator, a second process
    nodes 4-7 alone; they meet at MASTER_ADDR:MASTER_PORT."""
    from greengossip.training.deploy.launch import free_port

    port = free_port("127.0.0.1")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    other = subprocess.Popen([sys.executable, "-m", "greengossip.training.cli", "deploy", "--config", "tiny",
                              "--rounds", "3", "--nodes", "4:8", "--worker-only"], env=env)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    try:
        rows = compare("tiny", "carbon_periodic", 3, tmp_path / "a", nodes=range(0, 4))
    finally:
        assert other.wait(timeout=60) == 0
    assert all(row["bytes_real"] == row["bytes_sim"] for row in rows)
