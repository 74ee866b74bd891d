"""The ``greengossip`` command. Each subcommand lives in its own module, imported only when used, that
provides ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

from greengossip.envs.config import ConfigError
from greengossip.training.settings import SettingsError

SUBCOMMANDS = {
    "train": ("greengossip.training.train", "train a scheduler with stable-baselines3 and compare it with the heuristics"),
    "evaluate": ("greengossip.training.evaluate", "run schedulers on the same seeds and configs; write CSV, tables, plots"),
    "render": ("greengossip.training.render", "write an animation / frame strip of one episode"),
    "ablate": ("greengossip.training.ablate", "each scenario family's best rule with its factor shown, hidden, known"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greengossip",
        description="GreenGossip: train and compare schedulers for green, secure decentralized edge learning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(sub_parser)
        except ModuleNotFoundError as exc:  # a subcommand whose module is not written yet
            if exc.name != module:
                raise
            sub_parser.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        parser.error(f"'{args.command}' is not available in this version")
    # one thread per process: the tensors of a round are small, and two OpenMP threads on a 2-core
    # machine that is busy with anything else make a step many times slower
    torch.set_num_threads(1)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ConfigError, SettingsError, FileNotFoundError) as exc:
        print(f"greengossip {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
