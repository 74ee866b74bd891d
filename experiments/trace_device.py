"""Finds where the CPU and another torch device part, function by function.

Every function of ``greengossip.envs.dynamics``, ``greengossip.envs.simulator`` and ``greengossip.envs.state``
is wrapped where it is used, and each call's tensor inputs and outputs are recorded. The same episode (a
vector env of B environments, valid actions drawn at random from the CPU side's mask, as ``device_check.py``
draws them) runs on the CPU and on the device. Calls are matched by name and by their order among the calls of
that name. Printed: the first calls whose inputs agree (within ``--input-tolerance``, relative to 1 + |value|)
and whose outputs do not (beyond ``--output-tolerance``): the functions that make a difference themselves
rather than pass one on.

    python experiments/trace_device.py --device cuda --config configs/attack_heavy.yaml --batch 8 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # device_check's action draw

from device_check import random_valid_actions  # noqa: E402

import greengossip.envs.fleet_batch  # noqa: E402, F401  (loads the modules whose functions are wrapped)
import greengossip.envs.simulator  # noqa: E402, F401
from greengossip.envs.config import load_config  # noqa: E402
from greengossip.envs.vector_env import EdgeLearningVectorEnv  # noqa: E402

TRACED_PREFIXES = ("greengossip.envs.dynamics.", "greengossip.envs.simulator", "greengossip.envs.state")
UNTRACED = ("scratch",)  # returns uninitialised memory, different on every call


def tensors_in(value, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """The tensors inside a value (tuples, lists, dicts, dataclasses), as float32 arrays on the CPU (half the
    memory of float64, and the simulator computes in float32)."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            value = value.to_dense()
        return [(prefix, value.detach().to("cpu", torch.float64).numpy().astype(np.float32))]
    found = []
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            found += tensors_in(item, f"{prefix}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += tensors_in(item, f"{prefix}.{key}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found += tensors_in(getattr(value, field.name), f"{prefix}.{field.name}")
    return found


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, int, list, list]] = []
        self.counts: dict[str, int] = defaultdict(int)
        self.recording = True  # calls are counted always, kept only while recording

    def wrap(self, function):
        name = f"{function.__module__}.{function.__qualname__}"

        @functools.wraps(function)
        def traced(*args, **kwargs):
            inputs = tensors_in(list(args) + list(kwargs.values())) if self.recording else []
            output = function(*args, **kwargs)
            index = self.counts[name]
            self.counts[name] += 1
            if self.recording:
                self.calls.append((name, index, inputs, tensors_in(output)))
            return output

        traced.__traced__ = True
        return traced


def _envs_namespaces():
    """(module, attribute, value) for every name in every loaded ``envs`` module."""
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("greengossip.envs") and module is not None:
            for attribute, value in list(vars(module).items()):
                yield module, attribute, value


def install(recorder: Recorder) -> None:
    """Replaces every traced function in every ``envs`` module's namespace by a recording wrapper."""
    for module, attribute, value in _envs_namespaces():
        if (inspect.isfunction(value) and not getattr(value, "__traced__", False)
                and value.__module__.startswith(TRACED_PREFIXES) and attribute not in UNTRACED):
            setattr(module, attribute, recorder.wrap(value))


def uninstall() -> None:
    """Puts the original functions back (a test process goes on without recording)."""
    for module, attribute, value in _envs_namespaces():
        if getattr(value, "__traced__", False):
            setattr(module, attribute, value.__wrapped__)


def largest_gap(left: list, right: list) -> float:
    """The largest difference |a - b| / (1 + |a|) over matching tensors (inf where shapes differ)."""
    worst = 0.0
    for (_, a), (_, b) in zip(left, right):
        if a.shape != b.shape:
            return float("inf")
        both_nan = np.isnan(a) & np.isnan(b)
        same_inf = np.isinf(a) & (a == b)
        with np.errstate(invalid="ignore"):
            gap = np.where(both_nan | same_inf, 0.0, np.abs(a - b) / (1.0 + np.abs(a)))
        worst = max(worst, float(np.nan_to_num(gap, nan=np.inf).max(initial=0.0)))
    return worst if len(left) == len(right) else float("inf")


RECORDER = Recorder()


def episode(config, batch: int, rounds: int, seed: int, actions=None, from_round: int = 0):
    RECORDER.calls, RECORDER.counts = [], defaultdict(int)
    env = EdgeLearningVectorEnv(num_envs=batch, config=config)
    observation, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    chosen = []
    for t in range(rounds):
        action = random_valid_actions(observation["action_mask"], rng) if actions is None else actions[t]
        chosen.append(action)
        RECORDER.recording = t >= from_round
        RECORDER.calls.append((f"-- round {t} --", 0, [], []))
        observation, *_ = env.step(action)
    return RECORDER.calls, chosen


def parting_calls(on_cpu: list, on_device: list, input_tolerance: float, output_tolerance: float
                  ) -> tuple[list[tuple[str, str, int, float, float, str, tuple]], int]:
    """The calls whose inputs agree within ``input_tolerance`` and whose outputs do not, in the CPU's
    order, as (round, name, index, input gap, output gap, worst output, its shape); and how many CPU
    calls have no device counterpart."""
    device_calls = {(name, index): (inputs, outputs) for name, index, inputs, outputs in on_device}
    round_name, parting, unmatched = "", [], 0
    for name, index, inputs, outputs in on_cpu:
        if name.startswith("--"):
            round_name = name
            continue
        if (name, index) not in device_calls:
            unmatched += 1
            continue
        device_inputs, device_outputs = device_calls[(name, index)]
        input_gap, output_gap = largest_gap(inputs, device_inputs), largest_gap(outputs, device_outputs)
        if input_gap <= input_tolerance and output_gap > output_tolerance:
            worst = max(zip(outputs, device_outputs), key=lambda pair: largest_gap([pair[0]], [pair[1]]))
            parting.append((round_name, name, index, input_gap, output_gap, worst[0][0] or "return",
                            worst[0][1].shape))
    return parting, unmatched


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--baseline-device", default="cpu", help="the side compared with --device (the same "
                        "device twice shows where reruns part)")
    parser.add_argument("--nodes", type=int, default=None, help="n_nodes instead of the config's")
    parser.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    parser.add_argument("--config", default="configs/attack_heavy.yaml")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-round", type=int, default=0, help="record the calls from this round on")
    parser.add_argument("--input-tolerance", type=float, default=1e-5)
    parser.add_argument("--output-tolerance", type=float, default=1e-4)
    parser.add_argument("--show", type=int, default=12, help="how many parting calls to print")
    args = parser.parse_args(argv)
    cpu_config = load_config(args.config).model_copy(update={"device": args.baseline_device})
    if args.nodes is not None:
        cpu_config = cpu_config.model_copy(update={"n_nodes": args.nodes})
    torch.use_deterministic_algorithms(args.deterministic)
    install(RECORDER)
    try:
        on_cpu, actions = episode(cpu_config, args.batch, args.rounds, args.seed, from_round=args.from_round)
        on_device, _ = episode(cpu_config.model_copy(update={"device": args.device}), args.batch, args.rounds,
                               args.seed, actions, args.from_round)
    finally:
        uninstall()
    parting, unmatched = parting_calls(on_cpu, on_device, args.input_tolerance, args.output_tolerance)
    print(f"{len(on_cpu)} calls on {args.baseline_device}, {len(on_device)} on {args.device}")
    for round_name, name, index, input_gap, output_gap, worst, shape in parting[:args.show]:
        print(f"{round_name} {name} #{index}: inputs within {input_gap:.1e}, outputs {output_gap:.1e} apart "
              f"(worst output {worst}, shape {shape})")
    print(f"{len(parting)} calls part; {unmatched} CPU calls had no device counterpart (a branch taken on one "
          "side only)")


if __name__ == "__main__":
    main()
