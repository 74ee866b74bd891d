"""Fuzzing the command line: argv drawn from each subcommand's flags with good, bad and junk values. Every
run either reaches its work (the first env reset, or training past its config check: both stubbed
here, so nothing runs) or ends in one message
and exit status 2 without a traceback; a bad config, scheduler or settings file never reaches the work."""

from __future__ import annotations

import pytest
from fuzz_support import ACCEPTED, LONG, REFUSED, SHORT, SILENT_ACCEPTANCE, UNCLEAR_CRASH, Tally
from hypothesis import given
from hypothesis import strategies as st

from greengossip.envs.config import load_config
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.training import cli


class WorkStarted(Exception):
    """Raised by the stubbed first reset: the arguments were accepted and the work began."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_fuzz")
    made = {"DIR": root / "a_dir", "FILE": root / "a_file.txt", "BAD_ZIP": root / "model.zip",
            "EMPTY_ZIP": root / "empty.zip", "BAD_YAML": root / "bad.yaml", "EMPTY_YAML": root / "empty.yaml",
            "DUP_YAML": root / "dup.yaml", "INF_YAML": root / "inf.yaml", "OUT": root / "out"}
    made["DIR"].mkdir()
    made["FILE"].write_text("not a folder")
    made["BAD_ZIP"].write_bytes(b"PK\x03\x04 truncated")
    made["EMPTY_ZIP"].write_bytes(b"")
    made["BAD_YAML"].write_text("n_nodes: [\n")
    made["EMPTY_YAML"].write_text("# nothing\n")
    made["DUP_YAML"].write_text("n_nodes: 8\nn_nodes: 9\n")
    made["INF_YAML"].write_text("n_nodes: 8\nreward: {carbon: .inf}\n")
    return {key: str(path) for key, path in made.items()}


# values that must be refused before any work starts, wherever they appear
BAD_CONFIGS = ["nope", "DIR", "FILE", "BAD_YAML", "EMPTY_YAML", "DUP_YAML", "INF_YAML", "BAD_ZIP"]
BAD_SCHEDULERS = ["nope", "random_k:bogus=1", "random_k:fraction", "BAD_ZIP", "EMPTY_ZIP", "all_nodes,nope"]
BAD_SETTINGS = ["nope", "DIR", "BAD_YAML", "EMPTY_YAML", "DUP_YAML"]
JUNK = ["", "-", "--", "x", "-1", "1e999", "nan", "\x00", "é", "--nope", "-x"]
NUMBERS = ["0", "1", "-1", "2", "x", "1.5", "99999999999999999999999", "nan", "inf", ""]

FLAGS = {
    "evaluate": {"--config": ["tiny", *BAD_CONFIGS], "--schedulers": ["all_nodes", "random_k", *BAD_SCHEDULERS],
                 "--episodes": NUMBERS, "--seeds": ["0", "1,2", "x", "-1", "1e3", ""], "--workers": ["1", "-1", "x"],
                 "--out": ["OUT"], "--baseline": ["all_nodes", "nope"], "--no-progress": [None]},
    "render": {"--config": ["tiny", *BAD_CONFIGS], "--scheduler": ["all_nodes", *BAD_SCHEDULERS],
               "--out": ["OUT/a.gif", "OUT/a.png"], "--seed": NUMBERS, "--max-frames": NUMBERS, "--fps": NUMBERS,
               "--strip-frames": NUMBERS},
    "train": {"--config": ["tiny", *BAD_CONFIGS], "--settings": ["tiny", *BAD_SETTINGS],
              "--algo": ["ppo", "a2c", "nope"], "--timesteps": ["64", "0", "-5", "x"], "--seed": ["0", "-1", "x"],
              "--n-envs": ["1", "0", "-3", "x"], "--out": ["OUT/run"], "--no-progress": [None],
              "--no-compare": [None], "--resume": ["latest", "BAD_ZIP", "nope"], "--time-limit": NUMBERS,
              "--imitate": ["nope", "all_nodes"], "--prior": ["nope", "carbon_periodic:period=0"]},
}
MUST_REFUSE = {"--config": BAD_CONFIGS, "--schedulers": BAD_SCHEDULERS, "--scheduler": BAD_SCHEDULERS,
               "--settings": BAD_SETTINGS, "--algo": ["nope"]}


BASE = {
    "evaluate": ["--config", "tiny", "--schedulers", "all_nodes", "--episodes", "1", "--workers", "1", "--out", "OUT",
                 "--no-progress"],
    "render": ["--config", "tiny", "--scheduler", "all_nodes", "--out", "OUT/a.gif"],
    "train": ["--config", "tiny", "--settings", "tiny", "--timesteps", "64", "--out", "OUT/run", "--no-progress"],
}


@st.composite
def argvs(draw):
    """A valid command line with one to three things changed: a flag's value (good, bad or junk), a flag
    dropped, a junk token inserted; now and then no command or an unknown one."""
    command = draw(st.sampled_from([*FLAGS, *FLAGS, *FLAGS, "nope", ""]))
    if command not in FLAGS:
        return [command] if command else []
    flags, argv = FLAGS[command], list(BASE[command])
    for _ in range(draw(st.integers(1, 3))):
        change = draw(st.sampled_from(["value", "value", "value", "drop", "junk"]))
        flag = draw(st.sampled_from(sorted(flags)))
        if change == "junk":
            argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(JUNK)))
            continue
        if flag in argv:
            index = argv.index(flag)
            takes_value = flags[flag] != [None]
            del argv[index:index + 1 + takes_value]
        if change == "value":
            value = draw(st.sampled_from([*flags[flag], draw(st.sampled_from(JUNK))]))
            argv += [flag] if value is None else [flag, value]
    if command == "train" and "--out" not in argv:
        argv += ["--out", "OUT/run"]  # never the default runs/ folder of the working directory
    return [command, *argv]


def _resolved(argv: list[str], files: dict[str, str]) -> list[str]:
    out = []
    for token in argv:
        for key, path in files.items():
            if token == key or token.startswith(f"{key}/") or token.startswith(f"{key},"):
                token = path + token[len(key):]
        out.append(token)
    return out


def check_argv(argv: list[str], files: dict[str, str], tally: Tally, capsys) -> None:
    resolved = _resolved(argv, files)
    must_refuse = any(flag in MUST_REFUSE and index + 1 < len(argv) and argv[index + 1] in MUST_REFUSE[flag]
                      for index, flag in enumerate(argv))
    try:
        status = cli.main(resolved)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        captured = capsys.readouterr()
        clear = exc.code in (0, 2) and "Traceback" not in captured.err
        tally.record(REFUSED if clear else UNCLEAR_CRASH, argv, f"SystemExit({exc.code!r}) {captured.err[-300:]}")
        return
    except WorkStarted:
        capsys.readouterr()
        tally.record(SILENT_ACCEPTANCE if must_refuse else ACCEPTED, argv, "reached the first reset")
        return
    except Exception as exc:  # noqa: BLE001 - what we count
        capsys.readouterr()
        tally.record(UNCLEAR_CRASH, argv, f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    captured = capsys.readouterr()
    if status == cli.EXIT_USER_ERROR:
        lines = [line for line in captured.err.splitlines() if line.startswith("greengossip ")]
        clear = bool(lines) and "Traceback" not in captured.err + captured.out and len(captured.err) < 10_000
        tally.record(REFUSED if clear else UNCLEAR_CRASH, argv, captured.err[-300:])
    elif status == 0 and len(argv) <= 1:  # no command, or a command with no arguments that printed help
        tally.record(ACCEPTED)
    else:
        tally.record(UNCLEAR_CRASH, argv, f"exit status {status}: {captured.err[-300:]}")


@pytest.fixture
def no_work(monkeypatch):
    from greengossip.training import train

    def reset(self, *args, **kwargs):
        raise WorkStarted

    def start_training(config, *args, **kwargs):
        load_config(config)  # what training checks first; the rest of it is the work
        raise WorkStarted

    monkeypatch.setattr(EdgeLearningEnv, "reset", reset)
    monkeypatch.setattr(train, "train", start_training)


@SHORT
@given(argvs())
def test_fuzz_cli_argv_ends_in_work_or_one_message_and_status_2(no_work, files, capsys, argv):
    check_argv(argv, files, Tally("cli", strict=True), capsys)


@pytest.mark.slow
def test_fuzz_cli_long_run(no_work, files, capsys):
    tally = Tally("cli")

    @LONG
    @given(argvs())
    def run(argv):
        check_argv(argv, files, tally, capsys)

    run()
    tally.assert_clean()
