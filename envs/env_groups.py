"""A group of the vector env's environments: one batched round with its autoresets, played in this
process or in a worker process of its own.

``EdgeLearningVectorEnv(workers=W)`` splits its environments into W contiguous groups, each one batched
program (``FleetBatch``). ``worker_kind="thread"`` steps the groups in threads of the calling process;
``worker_kind="process"`` gives each group a process (``GroupProcess``) that owns the group's
``FleetBatch`` and its environments' generators, builds their scenarios at autoreset, and answers the
step with the group's round.

Why processes: torch and OpenBLAS release the GIL inside their kernels, but every one of the round's
thousand or so operator calls holds it while Python dispatches it. Two threads that each step 32
environments of 32 nodes take 18.6-19.1 ms a step against 14.8-16.1 ms for the same two groups in two
processes, of which 0.5-1 ms goes to sending the observations back (design note 21). The price:
the groups' ``FleetBatch`` objects live in the workers (``EdgeLearningVectorEnv.fleets`` is not there),
a step's observations and infos are pickled through a pipe, and the workers run on the CPU only.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium.utils import seeding

from greengossip.envs.config import EnvConfig
from greengossip.envs.fleet_batch import FleetBatch
from greengossip.envs.scenario import make_scenario


class GroupRound(NamedTuple):
    """One group's round: (B_k,) arrays and dicts of them."""

    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    info: dict[str, np.ndarray]
    observation: dict[str, np.ndarray]  # after any autoreset
    last_observation: dict[str, np.ndarray] | None  # before it; None if no episode of the group ended


def reset_group(fleet: FleetBatch, config: EnvConfig, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
    """Start a new episode in every environment of the group; returns its first observations."""
    fleet.reset([make_scenario(config, rng) for rng in rngs])
    return fleet.observation()


def play_group_round(fleet: FleetBatch, config: EnvConfig, rngs: list[np.random.Generator],
                     actions: torch.Tensor) -> GroupRound:
    """The group's round from its (B_k, N) actions, its autoresets included."""
    rewards, terminated, truncated, info = fleet.step(actions.reshape(-1))
    observation, last_observation = fleet.observation(), None
    ended = np.flatnonzero(terminated | truncated)
    if len(ended):
        # scenario building (networkx, pvlib) is per episode by design; the round itself stays batched
        last_observation = observation
        fleet.replace(ended, [make_scenario(config, rngs[i]) for i in ended])
        observation = fleet.observation()
    return GroupRound(rewards, terminated, truncated, info, observation, last_observation)


def start_method() -> str:
    """Fork where the platform has it: the worker inherits the imported modules and the parent's caches
    (pvlib's clear-sky years, the digits split) instead of spending seconds rebuilding them.
    ``GREENGOSSIP_START_METHOD`` overrides (fork, spawn, forkserver), as for the evaluation's workers."""
    wanted = os.environ.get("GREENGOSSIP_START_METHOD")
    if wanted:
        return wanted
    return "fork" if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods() else "spawn"


class GroupProcess:
    """One group of environments stepped in a worker process. ``reset_async``/``step_async`` send the
    command, ``wait`` returns the answer, so that the parent can start every group before it waits."""

    def __init__(self, config: EnvConfig, index: int):
        context = multiprocessing.get_context(start_method())
        self.index = index
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, config), daemon=True,
                                        name=f"gossip-group-{index}")
        self._process.start()
        child_end.close()
        self._owner = os.getpid()
        self.masks: np.ndarray | None = None  # (B_k, N, K) the group's action masks after its last answer

    def reset_async(self, seeds: list[int | None]) -> None:
        self._send("reset", seeds)

    def step_async(self, actions: np.ndarray) -> None:
        self._send("step", actions)

    def wait(self) -> Any:
        """The answer to the last command: the first observations after a reset, a ``GroupRound`` after a
        step. A failure in the worker is raised here with the worker's traceback."""
        try:
            status, answer, masks = self._connection.recv()
        except (EOFError, ConnectionError, OSError) as error:
            raise self._stopped() from error
        if status == "error":
            raise RuntimeError(f"worker process {self.index} of the vector env failed:\n{answer}")
        self.masks = masks
        return answer

    def close(self) -> None:
        if self._process.pid is None or os.getpid() != self._owner:
            return
        if self._process.is_alive():
            try:
                self._connection.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()

    def _send(self, command: str, payload: Any) -> None:
        if os.getpid() != self._owner:
            # a forked copy of the vector env would talk to its parent's workers and take its answers
            raise RuntimeError(f"the vector env's worker processes belong to process {self._owner}; a forked "
                               "child must build a vector env of its own")
        try:
            self._connection.send((command, payload))
        except (BrokenPipeError, OSError) as error:
            raise self._stopped() from error

    def _stopped(self) -> RuntimeError:
        return RuntimeError(f"worker process {self.index} of the vector env stopped (exit code "
                            f"{self._process.exitcode}); the vector env cannot step any more")


def wait_for_all(processes: list[GroupProcess]) -> list[Any]:
    """Every group's answer, in order. A failed group is raised only once all answers are in: an answer
    left unread in its pipe would be taken for the answer to the next command."""
    answers, failure = [], None
    for process in processes:
        try:
            answers.append(process.wait())
        except RuntimeError as error:
            failure = failure or error
    if failure is not None:
        raise failure
    return answers


def _serve(connection: Connection, config: EnvConfig) -> None:
    """The worker's loop: answer reset and step commands until told to close or the parent goes away."""
    torch.set_num_threads(1)  # one core per worker: the round's tensors are small (design note 20)
    fleet, rngs = FleetBatch(config), []
    while True:
        try:
            command, payload = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if command == "close":
            return
        try:
            if command == "reset":
                rngs = [seeding.np_random(seed)[0] for seed in payload]
                answer = reset_group(fleet, config, rngs)
            else:
                answer = play_group_round(fleet, config, rngs, torch.from_numpy(payload))
            connection.send(("ok", answer, fleet.action_masks()))
        except Exception:  # noqa: BLE001 - handed to the parent, which raises it with this traceback
            connection.send(("error", traceback.format_exc(), None))
