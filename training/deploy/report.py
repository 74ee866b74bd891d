"""The same config, seed and scheduler in the simulator and in a deployment, round by round.

Both runs use the learner as the workload (``workload.kind: learner``): a deployment puts the learner's
own parameters on the wire, so that is what the simulator must charge for the bytes to be comparable (a
config with an emulated profile is run as its learner twin, and the summary says so).

``DIR/sim_vs_real.csv`` has one row per round: the payload bytes that reached awake receivers in the
simulator and as metered on the sockets (``bytes_sim``, ``bytes_real``), the honest nodes' mean accuracy
(``accuracy_sim``, ``accuracy_real``), the consensus distance, the training time the compute model gives
on the nodes' device profiles against the measured CPU time, the energy of both, and the wall time per round.
``DIR/sim_vs_real.md`` summarises it and ``DIR/sim_vs_real.png`` plots it.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from greengossip.agents.learned import make_scheduler, scheduler_label
from greengossip.envs.config import EnvConfig, load_config
from greengossip.envs.errors import UserError
from greengossip.training.deploy.coordinator import Coordinator
from greengossip.training.deploy.launch import Fault, NodeProcesses, Rendezvous, run_node_processes
from greengossip.training.deploy.telemetry import NodesRelease
from greengossip.training.rollout import env_for, one_torch_thread, takes_action_masks

ENV_ID = "GreenGossip/EdgeLearning-v3"
# two-hop knowledge (each target's neighbours) that one node's process does not hold
UNSUPPORTED_ATTACKS = ("dissensus",)
COLUMNS = ("round", "observation_gap", "actions_equal", "bytes_sim", "bytes_real", "crafted_extra_bytes_real",
           "mailbox_bytes_real", "control_bytes_real", "bytes_sent_sim", "unicast_bytes_sent_real", "accuracy_sim",
           "accuracy_real", "accuracy_gap_pp", "consensus_sim", "consensus_real", "trainers", "compute_s_model",
           "compute_s_measured", "compute_wh_sim", "compute_wh_real", "energy_wh_sim", "energy_wh_real", "wall_s_sim",
           "wall_s_real")


def deploy_config(config: str | Path | dict | EnvConfig) -> tuple[EnvConfig, str | None]:
    """The config a deployment runs, and a note when it differs from the one given."""
    loaded = load_config(config)
    bad = [kind for kind in loaded.attack.kinds if kind in UNSUPPORTED_ATTACKS] if loaded.attack.fraction else []
    if bad:
        raise UserError(f"attack.kinds = {bad}: not supported by deploy (the dissensus attacker needs each target's "
                        "neighbours' models, which one node does not hold); allowed: every other kind")
    if loaded.device != "cpu":
        raise UserError(f"device = {loaded.device!r}: deploy runs its nodes on the CPU; allowed: 'cpu'")
    if loaded.workload.kind == "learner":
        return loaded, None
    note = (f"workload.kind = {loaded.workload.kind!r} ({loaded.workload.profile}) became 'learner': a deployment "
            "sends the learner's own parameters, and the simulator charges the same")
    return loaded.model_copy(update={"workload": loaded.workload.model_copy(update={"kind": "learner"})}), note


def _play(env: gym.Env, scheduler: Any, obs: Any, rounds: int) -> list[dict[str, Any]]:
    """Up to ``rounds`` rounds of ``scheduler`` from the freshly reset ``env``'s observation ``obs``
    (stopping where the episode ends); one record per round."""
    core = env.unwrapped
    masks = takes_action_masks(scheduler)
    state, episode_start = None, np.ones((1,), dtype=bool)
    rows = []
    for _ in range(rounds):
        seen = {key: np.array(value, copy=True) for key, value in obs.items()} if isinstance(obs, dict) else \
            {"flat": np.array(obs, copy=True)}
        started = time.perf_counter()
        kwargs = {"action_masks": core.action_masks()} if masks else {}
        action, state = scheduler.predict(obs, state=state, episode_start=episode_start, deterministic=True,
                                          **kwargs)
        obs, _reward, terminated, truncated, info = env.step(np.asarray(action).reshape(-1))
        wall = time.perf_counter() - started
        episode_start = np.zeros((1,), dtype=bool)
        outcome, scenario = core.last_outcome, core.scenario
        trained = outcome.trained.double()
        rows.append({
            "round": int(info["round"]), "actions": outcome.action.tolist(), "observation": seen,
            "bytes": float(outcome.bytes_received.double().sum()), "bytes_sent": float(outcome.bytes_sent.sum()),
            "accuracy": float(info["accuracy"]), "consensus": float(info["consensus_distance"]),
            "compute_wh": float(outcome.compute_wh.double().sum()), "energy_wh": float(info["energy_wh"]),
            "model_train_s": float((outcome.compute_wh.double() * 3600.0 / scenario.busy_w.double() * trained).sum()),
            "wall_s": wall,
        })
        if terminated or truncated:
            break
    return rows


def simulate(config: EnvConfig, spec: str, rounds: int, seed: int) -> list[dict[str, Any]]:
    env = gym.make(ENV_ID, config=config)
    scheduler = make_scheduler(spec, env=env, seed=seed)
    try:
        wrapped = env_for(scheduler, env)
        return _play(wrapped, scheduler, wrapped.reset(seed=seed)[0], rounds)
    finally:
        env.close()


def deploy(config: EnvConfig, spec: str, rounds: int, seed: int, timeout_s: float = 20.0,
           nodes: range | None = None, worker_only: bool = False,
           faults: tuple[Fault, ...] = ()) -> list[dict[str, Any]] | None:
    """Play ``rounds`` rounds with one process per node (those in ``nodes``, default all); the coordinator
    too unless ``worker_only``. Returns the coordinator's records (None on a worker-only host)."""
    env = gym.make(ENV_ID, config=config)
    scheduler = make_scheduler(spec, env=env, seed=seed)
    wrapped = env_for(scheduler, env)
    core = env.unwrapped
    fleet = core.fleet
    channel = fleet.channel = NodesRelease(config)  # after the episode's start, the nodes release their own rows
    obs, _ = wrapped.reset(seed=seed)  # the world: built once here, each node process keeps its own part
    nodes = range(fleet.scenario.n_nodes) if nodes is None else nodes
    if nodes.start < 0 or nodes.stop > fleet.scenario.n_nodes or len(nodes) == 0:
        raise UserError(f"--nodes {nodes.start}:{nodes.stop}: outside the fleet's nodes 0:{fleet.scenario.n_nodes}")
    records: list[dict[str, Any]] = []

    def coordinate(processes: NodeProcesses) -> None:
        coordinator = Coordinator(config, fleet.scenario, channel, on_round=processes.round_event)
        fleet.play_round = coordinator.play_round
        fleet.twin = None  # harm needs an attack-free twin deployment: not measured
        records.extend(_play(wrapped, scheduler, obs, rounds))
        coordinator.stop()
        for record, measured in zip(records, coordinator.measured):
            record.update(measured)

    rendezvous = Rendezvous.from_environment(timeout_s)
    try:
        run_node_processes(config, fleet.scenario, fleet.state, nodes, rendezvous,
                           None if worker_only else coordinate, faults)
    finally:
        env.close()
    return None if worker_only else records


def comparison_rows(simulated: list[dict], deployed: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for sim, real in zip(simulated, deployed):
        rows.append({
            "round": sim["round"], "actions_equal": int(sim["actions"] == real["actions"]),
            "observation_gap": max(float(np.abs(sim["observation"][key] - real["observation"][key]).max())
                                   for key in sim["observation"]),
            "bytes_sim": sim["bytes"], "bytes_real": real["payload_bytes_received"],
            "crafted_extra_bytes_real": real["oversize_bytes"],
            "mailbox_bytes_real": real["mailbox_bytes"], "control_bytes_real": real["control_bytes"],
            "bytes_sent_sim": sim["bytes_sent"], "unicast_bytes_sent_real": real["payload_bytes_sent"],
            "accuracy_sim": sim["accuracy"], "accuracy_real": real["accuracy"],
            "accuracy_gap_pp": 100.0 * (real["accuracy"] - sim["accuracy"]),
            "consensus_sim": sim["consensus"], "consensus_real": real["consensus"],
            "trainers": real["trainers"], "compute_s_model": real["model_train_s"],
            "compute_s_measured": real["train_cpu_s"],
            "compute_wh_sim": sim["compute_wh"], "compute_wh_real": real["compute_wh_real"],
            "energy_wh_sim": sim["energy_wh"], "energy_wh_real": real["energy_wh_real"],
            "wall_s_sim": sim["wall_s"], "wall_s_real": real["wall_s"],
        })
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    model_s = sum(row["compute_s_model"] for row in rows)
    measured_s = sum(row["compute_s_measured"] for row in rows)
    return {
        "rounds": len(rows),
        "bytes_equal_rounds": sum(int(row["bytes_sim"] == row["bytes_real"]) for row in rows),
        "bytes_equal_but_crafted_rounds": sum(
            int(row["bytes_sim"] == row["bytes_real"] - row["crafted_extra_bytes_real"]) for row in rows),
        "actions_equal_rounds": sum(row["actions_equal"] for row in rows),
        "observation_gap": max(row["observation_gap"] for row in rows),
        "max_accuracy_gap_pp": max(abs(row["accuracy_gap_pp"]) for row in rows),
        "compute_factor": measured_s / model_s if model_s > 0 else float("nan"),
        "wall_s_sim": float(np.mean([row["wall_s_sim"] for row in rows])),
        "wall_s_real": float(np.mean([row["wall_s_real"] for row in rows])),
    }


def _number(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1000 or value == 0:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def markdown(rows: list[dict[str, Any]], title: str, notes: list[str]) -> str:
    figures = summary(rows)
    n = figures["rounds"]
    shown = ("round", "bytes_sim", "bytes_real", "accuracy_sim", "accuracy_real", "accuracy_gap_pp", "consensus_sim",
             "consensus_real", "compute_s_model", "compute_s_measured", "energy_wh_sim", "energy_wh_real",
             "wall_s_sim", "wall_s_real")
    lines = [f"### {title}", ""]
    lines += [f"- bytes per round equal in {figures['bytes_equal_rounds']} of {n} rounds, and in "
              f"{figures['bytes_equal_but_crafted_rounds']} of {n} once the attackers' crafted models sent in full "
              f"at a compressed level are set apart; the scheduler chose the same actions in "
              f"{figures['actions_equal_rounds']} of {n} rounds, and what it saw differed by at most "
              f"{figures['observation_gap']:.2g} in any feature (float32 rounding of the per-node sums)",
              f"- largest honest-accuracy gap: {figures['max_accuracy_gap_pp']:.2f} percentage points",
              f"- compute-time factor (measured CPU time / the compute model on the nodes' device profiles): "
              f"{figures['compute_factor']:.3g}",
              f"- wall time per round: simulator {1000 * figures['wall_s_sim']:.1f} ms, deployment "
              f"{1000 * figures['wall_s_real']:.1f} ms"]
    lines += [f"- {note}" for note in notes]
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_number(row[name]) for name in shown) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("accuracy", "honest accuracy"), ("bytes", "bytes received"), ("energy_wh", "energy (Wh)"))
    for ax, (key, label) in zip(axes, panels):
        ax.plot(rounds, [row[f"{key}_sim"] for row in rows], "o-", label="simulator")
        ax.plot(rounds, [row[f"{key}_real"] for row in rows], "x--", label="deployment")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list[dict[str, Any]], out: Path, title: str, notes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sim_vs_real.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "sim_vs_real.md").write_text(markdown(rows, title, notes))
    plot(rows, out / "sim_vs_real.png", title)


def compare(config: str | Path | EnvConfig, spec: str, rounds: int, out: Path, seed: int = 0,
            timeout_s: float = 20.0, nodes: range | None = None, worker_only: bool = False,
            faults: tuple[Fault, ...] = ()) -> list[dict[str, Any]] | None:
    """Deploy, simulate the same, and write DIR/sim_vs_real.{csv,md,png}; returns the rows (None on a
    worker-only host, which writes nothing)."""
    loaded, note = deploy_config(config)
    if rounds < 1:
        raise UserError(f"--rounds = {rounds}: need at least 1")
    if seed < 0:
        raise UserError(f"--seed = {seed}: need a whole number >= 0")
    if not timeout_s > 0:
        raise UserError(f"--timeout = {timeout_s}: need a number of seconds > 0")
    with one_torch_thread():  # as in every node process: one thread, the same float summation order
        deployed = deploy(loaded, spec, rounds, seed, timeout_s, nodes, worker_only, faults)
        if deployed is None:
            return None
        simulated = simulate(loaded, spec, rounds, seed)
    rows = comparison_rows(simulated, deployed)
    name = Path(config).stem if isinstance(config, (str, Path)) else "config"
    title = (f"{name}, {loaded.n_nodes} node processes, {scheduler_label(spec)}, seed {seed} "
             f"({os.cpu_count()} CPU cores)")
    write(rows, Path(out), title, [note] if note else [])
    return rows
