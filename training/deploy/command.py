"""``greengossip deploy``: run a scheduler on one process per node over torch.distributed, and compare the
run with the simulator round by round (``report``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from greengossip.envs.errors import UserError
from greengossip.training.deploy.launch import NodeFailure
from greengossip.training.deploy.report import compare
from greengossip.training.run_files import check_writable

EXIT_NODE_FAILURE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="config name or YAML path (default: tiny)")
    parser.add_argument("--scheduler", default="carbon_periodic",
                        help="a heuristic (options as name:key=value) or the path of a saved SB3 model")
    parser.add_argument("--rounds", type=int, default=10, help="rounds to play (fewer if the episode ends)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for sim_vs_real.csv, .md and .png (not needed with --worker-only)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed, the same in both runs")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds a round may take before the nodes that have not reported are named as hung")
    parser.add_argument("--nodes", default=None, metavar="START:STOP",
                        help="the nodes whose processes this host starts (default: all); for several hosts, "
                             "with MASTER_ADDR and MASTER_PORT set alike on every host")
    parser.add_argument("--worker-only", action="store_true",
                        help="start this host's nodes only; the coordinator runs on the host without this flag")


def node_range(text: str | None) -> range | None:
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return range(int(start), int(stop))
    except ValueError:
        raise UserError(f"--nodes = {text!r}: expected START:STOP, e.g. 0:16") from None


def run(args: argparse.Namespace) -> int:
    if not args.worker_only:
        if args.out is None:
            raise UserError("--out is required: the folder for sim_vs_real.csv, .md and .png")
        check_writable(args.out, "--out")
    try:
        rows = compare(args.config, args.scheduler, args.rounds, args.out, seed=args.seed, timeout_s=args.timeout,
                       nodes=node_range(args.nodes), worker_only=args.worker_only)
    except NodeFailure as failure:
        print(f"greengossip deploy: {failure}; every node process was stopped", file=sys.stderr)
        return EXIT_NODE_FAILURE
    if rows is not None:
        print((Path(args.out) / "sim_vs_real.md").read_text())
        print(f"wrote {args.out / 'sim_vs_real.csv'}, sim_vs_real.md and sim_vs_real.png")
    return 0
