"""Starting, watching and stopping a deployment's processes.

One process per node, forked from the launcher after the scenario is built (each keeps only its own part,
``NodeView``), joins a ``torch.distributed`` gloo group: the coordinator is rank 0, node i is rank i + 1.
The group meets at ``MASTER_ADDR``:``MASTER_PORT`` (default: loopback and a free port); on several hosts
each host's launcher starts the ranks of its own nodes (``--nodes START:STOP``, ``--worker-only`` on all
hosts but the coordinator's), all with the same config and seed, so that every host builds the same world.

A watch thread reads each local node's progress from shared memory: a node process that exits is
reported by node and round at once; a round that has not finished after ``timeout_s`` is blamed on the
nodes that are neither done nor waiting on the network (a node that waits is held up by another). Either
way every node process is killed, the coordinator's pending collective fails with the closed
connections, and the run stops with :class:`NodeFailure`. Node processes also die with their launcher
(``PR_SET_PDEATHSIG``), so none is left behind even when the launcher is killed.
"""

from __future__ import annotations

import ctypes
import datetime
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from greengossip.envs.config import EnvConfig
from greengossip.envs.scenario import Scenario
from greengossip.envs.state import SimState
from greengossip.training.deploy.coordinator import STOP
from greengossip.training.deploy.node import Node, NodeState, NodeView
from greengossip.training.deploy.telemetry import OwnRelease, public_part

# per node in the shared progress table: round being played, waiting on the network, rounds reported
ROUND, WAITING, REPORTED = range(3)
PR_SET_PDEATHSIG = 1
POLL_S = 0.1
# exit status of a node whose peer connection broke: another node's failure, not its own
PEER_LOST = 75


class NodeFailure(RuntimeError):
    """A node process died or hung; the message names the node and the round."""


@dataclass(frozen=True)
class Fault:
    """A failure to inject, for tests of the failure handling: node ``node`` dies or hangs in ``round``."""

    node: int
    round: int
    kind: str  # "die" | "hang"


@dataclass(frozen=True)
class Rendezvous:
    address: str
    port: int
    timeout_s: float

    @classmethod
    def from_environment(cls, timeout_s: float) -> Rendezvous:
        address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = os.environ.get("MASTER_PORT")
        return cls(address, int(port) if port else free_port(address), timeout_s)

    def join(self, rank: int, world_size: int) -> None:
        # the group's own timeout only backs up the watch thread, which acts first
        dist.init_process_group("gloo", init_method=f"tcp://{self.address}:{self.port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=self.timeout_s + 60))


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the launcher's own cleanup still stops the nodes
        pass


def _node_main(config: EnvConfig, view: NodeView, state: NodeState, world: Scenario, start: SimState,
               world_size: int, rendezvous: Rendezvous, progress, fault: Fault | None) -> None:
    _die_with_parent()
    torch.set_num_threads(1)

    def on_wait(waiting: bool) -> None:
        progress[3 * view.index + WAITING] = float(waiting)

    release = OwnRelease(config, world, start, view.index)
    rendezvous.join(view.index + 1, world_size)
    try:
        _serve(Node(config, view, state, release, on_wait), progress, fault, on_wait)
    except RuntimeError as exc:
        if not any(word in str(exc) for word in ("gloo", "Connection", "connection")):
            raise
        os._exit(PEER_LOST)  # a peer's connection broke: the launcher reports the node that failed first
    dist.destroy_process_group()


def _serve(node: Node, progress, fault: Fault | None, on_wait) -> None:
    """Play the rounds the coordinator commands until it says stop."""
    i = node.view.index
    base = 3 * i
    command = torch.empty(3, dtype=torch.long)
    while True:
        on_wait(True)
        dist.scatter(command, src=0)
        on_wait(False)
        if int(command[0]) == STOP:
            break
        round_index = int(command[1])
        progress[base + ROUND] = round_index
        if fault is not None and fault.node == i and fault.round == round_index:
            if fault.kind == "die":
                os._exit(3)
            time.sleep(3600)  # hang: busy in its own work, never waiting on anyone
        report = node.play(int(command[2]), round_index)
        progress[base + REPORTED] = round_index + 1
        on_wait(True)
        dist.gather(report, dst=0)
        on_wait(False)


class NodeProcesses:
    """The local node processes, their progress table and the watch thread."""

    def __init__(self, config: EnvConfig, scenario: Scenario, state: SimState, nodes: range,
                 rendezvous: Rendezvous, faults: tuple[Fault, ...] = ()):
        context = mp.get_context("fork")  # the world is built once, in the launcher
        self.nodes = nodes
        self.timeout_s = rendezvous.timeout_s
        self.progress = context.Array("d", 3 * scenario.n_nodes, lock=False)
        for i in nodes:
            self.progress[3 * i + ROUND] = -1
        self.failure: str | None = None
        self.round_index, self.round_started = -1, None
        self._stopping = threading.Event()
        by_node = {fault.node: fault for fault in faults}
        world_size = scenario.n_nodes + 1
        world = public_part(scenario)
        self.processes: dict[int, mp.Process] = {}
        for i in nodes:
            view = NodeView.of(scenario, i)
            process = context.Process(target=_node_main, name=f"greengossip-node-{i}", daemon=True,
                                      args=(config, view, NodeState.of(state, view), world, state, world_size,
                                            rendezvous, self.progress, by_node.get(i)))
            process.start()
            self.processes[i] = process
        self._watch = threading.Thread(target=self._watch_loop, name="greengossip-watch", daemon=True)
        self._watch.start()

    def round_event(self, round_index: int, started: bool) -> None:
        """The coordinator began (``started``) or finished collecting round ``round_index``."""
        self.round_index = round_index
        self.round_started = time.monotonic() if started else None

    def _watch_loop(self) -> None:
        while not self._stopping.is_set():
            failure = self._check()
            if failure is not None:
                self.failure = failure
                self.kill()
                return
            time.sleep(POLL_S)

    def _check(self) -> str | None:
        # a node exits with 0 only after the coordinator's STOP
        ended = {i: process.exitcode for i, process in self.processes.items() if process.exitcode not in (None, 0)}
        if ended and not self._stopping.is_set():
            failed = [i for i, code in ended.items() if code != PEER_LOST]
            if not failed:  # give the node that failed first a moment to be seen
                time.sleep(2 * POLL_S)
                ended = {i: p.exitcode for i, p in self.processes.items() if p.exitcode not in (None, 0)}
                failed = [i for i, code in ended.items() if code != PEER_LOST]
            if failed:
                i = failed[0]
                played = int(self.progress[3 * i + ROUND])
                where = f"in round {played}" if played >= 0 else "before its first round"
                return f"node {i} died (exit code {ended[i]}) {where}"
            return (f"nodes {', '.join(map(str, sorted(ended)))} lost their connections (a node on another host "
                    "or the coordinator failed)")
        started = self.round_started
        if started is None or time.monotonic() - started < self.timeout_s:
            return None
        t = self.round_index
        late = [i for i in self.nodes if self.progress[3 * i + REPORTED] < t + 1]
        stuck = [i for i in late if not self.progress[3 * i + WAITING]]
        if not late:
            return None
        seconds = time.monotonic() - started
        if stuck:
            names = ", ".join(str(i) for i in stuck)
            return f"node {names} hung in round {t}: no report after {seconds:.1f} s (timeout {self.timeout_s:g} s)"
        return (f"round {t} did not finish in {seconds:.1f} s: nodes {', '.join(map(str, late))} wait on the network "
                "(a node on another host, or a lost message)")

    def kill(self) -> None:
        """Kill every local node process (each by its own id) and reap it."""
        self._stopping.set()
        for process in self.processes.values():
            if process.exitcode is None:
                process.kill()
        for process in self.processes.values():
            process.join(timeout=5.0)

    def finish(self, join_s: float = 10.0) -> None:
        """After the STOP command: let the nodes leave the group, then make sure none is left."""
        self._stopping.set()
        deadline = time.monotonic() + join_s
        for process in self.processes.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        self.kill()

    def alive(self) -> list[int]:
        return [i for i, process in self.processes.items() if process.exitcode is None]


def run_node_processes(config: EnvConfig, scenario: Scenario, state: SimState, nodes: range,
                       rendezvous: Rendezvous, coordinate: Callable[[NodeProcesses], None] | None,
                       faults: tuple[Fault, ...] = ()) -> None:
    """Start the local nodes; with ``coordinate``, join as rank 0 and run it (it plays the rounds and sends
    STOP); without, wait for the nodes to finish. Raises NodeFailure when a node dies or hangs."""
    processes = NodeProcesses(config, scenario, state, nodes, rendezvous, faults)
    try:
        if coordinate is None:
            while processes.alive() and processes.failure is None:
                time.sleep(POLL_S)
        else:
            rendezvous.join(0, scenario.n_nodes + 1)
            try:
                coordinate(processes)
            except RuntimeError as exc:
                if not any(word in str(exc) for word in ("gloo", "Connection", "connection", "Timed out")):
                    raise
                # a collective failed: the watch thread says why, or soon will
                deadline = time.monotonic() + processes.timeout_s + 2.0
                while processes.failure is None and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                if processes.failure is None:
                    raise NodeFailure(f"the deployment stopped: {exc}") from exc
        if processes.failure is not None:
            raise NodeFailure(processes.failure)
        processes.finish()
        if any(process.exitcode not in (0, None) for process in processes.processes.values()):
            codes = {i: p.exitcode for i, p in processes.processes.items() if p.exitcode}
            raise NodeFailure(f"node processes exited with errors: {codes}")
    finally:
        processes.kill()
        if dist.is_initialized():
            dist.destroy_process_group()
