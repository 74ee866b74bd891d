"""The simulator against a real decentralized run: ``greengossip deploy`` on the tiny scenario (8 node
processes) and the default one (32 node processes), each with carbon_periodic and with a trained model, and
on attack_heavy and private_telemetry (32 each) with carbon_periodic, compared round by round with the
simulator on the same config and seed. Writes each run's
sim_vs_real.{csv,md,png} under ``--out`` and regenerates docs/deploy.md with the tables.

Without ``--model`` a small model is trained first (``greengossip train --config tiny``, a node-set policy,
so it also runs on the 32-node default), which takes a few minutes on two cores.

    python benchmarks/deploy_vs_sim.py --rounds 12 --out results/deploy
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from greengossip.training.deploy.report import compare, markdown, summary

DOCS = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
RULE = "carbon_periodic"
MODEL = "trained model"
# each config and the schedulers it runs with
CASES = {"tiny": (RULE, MODEL), "default": (RULE, MODEL), "attack_heavy": (RULE,), "private_telemetry": (RULE,)}

INTRO = """# Deployment: the simulator against a real decentralized run

`greengossip deploy --config C --scheduler S --rounds R --out DIR` plays the env's rounds with one process
per node over `torch.distributed` (gloo), and plays the same config, seed and scheduler in the simulator,
round by round. Each node process holds its own shard, model, battery and trust scores, trains locally,
and sends its compressed messages (full, 8-bit, top-k) to its graph neighbours point to point
(`isend`/`irecv`). A coordinator process runs the scheduler (a heuristic or a saved SB3 model) on the
observation the env builds from the telemetry the nodes release.

```bash
greengossip deploy --config tiny --scheduler carbon_periodic --rounds 10 --out results/deploy_tiny
```

## How a node plays a round

A node's round is the simulator's round for one node, computed with the simulator's own pieces
(`training/deploy/node.py`): the energy model's `available_for_actions`, `receive` and `settle_energy` on
one-node tensors, `local_sgd` on a batch of one, `gossip.compress` for the messages, and the per-node
aggregation, trust and attack rules of `envs/reference.py` (which `tests/test_reference.py` holds equal to
the batched simulator). Its random numbers are the simulator's counter-based streams, keyed by the episode,
the round and the node's place in the fleet, so its SGD minibatches and attack draws are the simulator's.

On the wire, between neighbours only:

1. each node sends each neighbour a 32-byte header: awake, broadcasting, the bytes the simulator charges for
   the broadcast, and what the message does to the receiver's copy (replace, add, nothing);
2. broadcasting nodes train and send the encoded message: the model as float32 (`full`), int8 codes and a
   float32 scale (`q8`), or the kept values as float32 with int32 indices (`top10`, `top1`), which are the
   bytes the simulator counts; an active model-poisoning attacker first waits for its honest neighbours'
   messages (a rushing attacker sends last) and sends its crafted model;
3. each node applies what arrived to its copies of its neighbours' public models, a sleeping node too (the
   simulator's store-and-forward mailboxes), then, if awake, mixes with the robust aggregator and rescores
   the senders.

After its round a node releases its telemetry for the next one with the env's own channel: row i of what
the channel releases depends only on node i's state, noise streams and privacy accountant, so the node
computes it itself and sends only the released values. The coordinator sends each node its action
(`scatter`) and collects each node's report (`gather`): the released telemetry, and for the comparison its
energy, bytes, CPU time, accuracy, trust row and model. From these the env builds the round's KPIs, reward,
published telemetry, mask and next observation with its own code.

## Several hosts

Every host runs the same command with the same config and seed, `MASTER_ADDR` and `MASTER_PORT` set to the
coordinator's host, and `--nodes START:STOP` for the nodes it hosts; every host but the coordinator's adds
`--worker-only`. Node i is rank i + 1 of the gloo group; the coordinator is rank 0.

```bash
# host A (coordinator and nodes 0-15)
MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 greengossip deploy --config default --nodes 0:16 --out results/a
# host B (nodes 16-31)
MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 greengossip deploy --config default --nodes 16:32 --worker-only
```

Without `MASTER_ADDR` the group meets on loopback at a free port. `tests/test_deploy.py` runs two
launchers on loopback this way.

## Failures

A watch thread in each launcher reads each node's progress from shared memory. A node process that exits
is reported at once as `node 3 died (exit code 3) in round 1`; a round that has not finished after
`--timeout` seconds (default 20) is blamed on the nodes that are neither done nor waiting on the network,
as `node 5 hung in round 2: no report after 20.1 s`. Every node process is then killed, the command exits
with status 1, and node processes also die with their launcher (`PR_SET_PDEATHSIG`), so none is left behind.
A launcher watches only its own host's nodes: a node that hangs on another host is reported as the round
that did not finish and the local nodes waiting on the network, or, where none waits, by the group's own
timeout (`--timeout` + 60 s); a node that hangs before its first round, by that timeout. Neither names it.

## What is measured, and how it differs from the simulator

- **Bytes**: payload bytes metered on the sockets of awake receivers (`bytes_real`) against the
  simulator's `bytes_received` (`bytes_sim`). Headers (`control_bytes_real`), bytes that reach sleeping
  nodes' mailboxes (`mailbox_bytes_real`, which the simulator does not charge) and the unicast copies a
  sender puts on its sockets (`unicast_bytes_sent_real`, one per neighbour, where the simulator's radio
  broadcasts once) are reported apart.
- **Workload**: both runs use the learner as the workload (`workload.kind: learner`): a deployment sends the
  learner's own parameters, so a config with an emulated profile (the default's MobileNetV2) is run as its
  learner twin, and the summary says so.
- **Compute time**: the compute model's training time on each node's device profile (samples × 6 × P FLOPs
  at the device's GFLOP/s) against the CPU time the node process measured for its SGD steps on this host.
  Their ratio is the compute-time factor below; for a model of a few hundred parameters it is Python and
  dispatch overhead that dominates the measured time, not FLOPs.
- **Energy**: the simulator's energy against the same device profiles applied to the measured CPU time and
  the metered bytes (sleep and idle draw as modelled). Batteries follow the modelled energy, so that both
  runs see the same masks.
- **Attackers**: a poisoner that broadcasts at a compressed level sends its crafted model in full (it cannot
  replace its neighbours' copies with fewer bytes), where the simulator charges the compressed size: only
  then do bytes differ, and `crafted_extra_bytes_real` counts the difference. The dissensus attack needs
  its targets' neighbours' models and is refused. Harm (the attack-free twin) is not measured; the
  attackers' influence is.
- **Telemetry**: each node releases its own row through the env's privacy mechanism (its noise streams and
  its lifetime accountant are its own), and the coordinator's channel builds the published values and the
  mask from those rows; `observation_gap` is the largest difference between what the scheduler saw in the
  two runs (float32 rounding of trust, loss and model lag; the released telemetry itself is equal). The
  coordinator still collects each node's energy, battery and model for the comparison, a measurement the
  scheduler never reads.
"""


def train_model(out: Path) -> Path:
    """A small model on the tiny scenario (a node-set policy: it runs on any number of nodes)."""
    subprocess.run([sys.executable, "-m", "greengossip.training.cli", "train", "--config", "tiny", "--timesteps",
                    "2048", "--no-compare", "--out", str(out)], check=True)
    for name in ("best_model.zip", "model.zip"):
        if (out / name).exists():
            return out / name
    raise FileNotFoundError(f"training wrote no model to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="a saved SB3 model (default: train a tiny one)")
    parser.add_argument("--configs", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path, default=Path("results/deploy"))
    parser.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file to regenerate")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = args.model
    if model is None and any(MODEL in CASES[config] for config in args.configs):
        model = train_model(args.out / "model")
    specs = {RULE: RULE, MODEL: str(model)}
    sections, overview = [], []
    for config in args.configs:
        for label in CASES[config]:
            spec = specs[label]
            out = args.out / f"{config}_{label.replace(' ', '_')}"
            rows = compare(config, spec, args.rounds, out, seed=args.seed)
            figures = summary(rows)
            title = f"{config}: {label}"
            sections.append(markdown(rows, title, []))
            overview.append(
                f"| {config} | {label} | {figures['rounds']} | {figures['bytes_equal_rounds']} | "
                f"{figures['bytes_equal_but_crafted_rounds']} | "
                f"{figures['max_accuracy_gap_pp']:.2f} | {figures['observation_gap']:.2g} | "
                f"{figures['compute_factor']:.3g} | "
                f"{1000 * figures['wall_s_sim']:.1f} | {1000 * figures['wall_s_real']:.1f} |")
            print(sections[-1])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other work"
    measured = [
        "## Measured", "",
        f"Regenerated by `python benchmarks/deploy_vs_sim.py --rounds {args.rounds}` ({machine}; seed {args.seed}; "
        f"the trained model: `greengossip train --config tiny --timesteps 2048`, a node-set policy). Wall time per "
        "round is the scheduler's decision plus the round: the batched simulator step against the deployment's "
        "round trip through every node process, oversubscribed where there are more processes than cores.", "",
        "| config | scheduler | rounds | rounds with equal bytes | ... once crafted models in full are set apart "
        "| largest accuracy gap (pp) | largest observation gap | compute-time factor (measured / model) "
        "| wall ms per round, simulator | wall ms per round, deployment |",
        "|---|---|---|---|---|---|---|---|---|---|", *overview, "",
        "Per round (bytes: payload bytes that reached awake receivers; compute: seconds of training, summed over "
        "the nodes; energy: Wh, summed over the nodes):", "", *sections]
    args.docs.write_text(INTRO + "\n" + "\n".join(measured))
    print(f"wrote {args.docs}")


if __name__ == "__main__":
    main()
