"""The ``greengossip`` command. Each subcommand lives in its own module, imported only when used, that
provides ``add_arguments(parser)`` and ``run(args) -> int``.

Exit status: 0 on success; 2 for bad input from the user (a :class:`~greengossip.envs.errors.UserError`,
which ``ConfigError`` is, a ``SettingsError``, a file or folder that cannot be read or written, a model
file that is not a model), printed as one message without a traceback; 130 when interrupted. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import zipfile

import torch

from greengossip.envs.errors import UserError
from greengossip.training.settings import SettingsError

# what the user can fix: every error the command reports as one message with exit status 2
USER_ERRORS = (UserError, SettingsError, OSError, zipfile.BadZipFile)
MAX_MESSAGE_CHARS = 2_000
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

SUBCOMMANDS = {
    "train": ("greengossip.training.train",
              "train a scheduler with stable-baselines3 and compare it with the heuristics"),
    "evaluate": ("greengossip.training.evaluate",
                 "run schedulers on the same seeds and configs; write CSV, tables, plots"),
    "render": ("greengossip.training.render", "write an animation / frame strip of one episode"),
    "ablate": ("greengossip.training.ablate", "each scenario family's best rule with its factor shown, hidden, known"),
    "benchmark": ("greengossip.training.benchmark",
                  "a leaderboard over the scenario suite's test or ood split, normalised to all_nodes and an oracle"),
    "deploy": ("greengossip.training.deploy.command",
               "run a scheduler on one process per node over torch.distributed and compare with the simulator"),
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
    except USER_ERRORS as exc:
        print(f"greengossip {args.command}: {user_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"greengossip {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # raise SystemExit("message"): a user error reported the short way
        if not isinstance(exc.code, str):
            raise
        print(exc.code if exc.code.startswith("greengossip") else f"greengossip {args.command}: {exc.code}",
              file=sys.stderr)
        return EXIT_USER_ERROR


def user_message(exc: BaseException) -> str:
    """One readable message for a user error, bounded in length: an OSError names the path and what the
    system said (``[Errno 30] ...`` becomes "read-only file system: 'out/model.zip'")."""
    if isinstance(exc, OSError) and not isinstance(exc, UserError) and exc.strerror:
        what = exc.strerror[0].lower() + exc.strerror[1:]
        message = f"{what}: {str(exc.filename)!r}" if exc.filename is not None else what
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            message += " (choose a folder you can write to, e.g. with --out)"
    elif isinstance(exc, zipfile.BadZipFile):
        message = f"not a readable model file: {exc}"
    else:
        message = str(exc) or type(exc).__name__
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."

if __name__ == "__main__":
    sys.exit(main())
