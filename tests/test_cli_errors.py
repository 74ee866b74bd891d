"""Every user error of the ``greengossip`` command ends in one message on stderr and exit status 2,
without a traceback; an interrupt ends with 130."""

from __future__ import annotations

import errno
import pathlib

import pytest

from greengossip.envs.errors import UserError
from greengossip.training import cli


def _fails_cleanly(capsys, argv: list[str], match: str) -> str:
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == cli.EXIT_USER_ERROR, captured
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith(f"greengossip {argv[0]}: "), captured.err
    assert match in captured.err, captured.err
    return captured.err


def _evaluate(tmp_path, *extra: str) -> list[str]:
    return ["evaluate", "--config", "tiny", "--episodes", "1", "--workers", "1", "--no-progress",
            "--out", str(tmp_path / "out"), *extra]


def test_unknown_scheduler(tmp_path, capsys):
    _fails_cleanly(capsys, _evaluate(tmp_path, "--schedulers", "nope"), "unknown scheduler 'nope'")


def test_heuristic_option_the_rule_does_not_take(tmp_path, capsys):
    _fails_cleanly(capsys, _evaluate(tmp_path, "--schedulers", "random_k:bogus=1"), "random_k:bogus=1")


def test_heuristic_option_that_is_not_key_value(tmp_path, capsys):
    _fails_cleanly(capsys, _evaluate(tmp_path, "--schedulers", "random_k:fraction"), "must look like key=value")


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04" + b"\x00" * 40, b""])
def test_corrupt_model_zip(tmp_path, capsys, content):
    model = tmp_path / "model.zip"
    model.write_bytes(content)
    _fails_cleanly(capsys, _evaluate(tmp_path, "--schedulers", str(model)), str(model))


def test_unknown_config_name(tmp_path, capsys):
    argv = ["evaluate", "--config", "no_such_config", "--episodes", "1", "--workers", "1", "--no-progress",
            "--out", str(tmp_path)]
    _fails_cleanly(capsys, argv, "shipped names")


def test_invalid_config_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("n_nodes: 1\n")
    _fails_cleanly(capsys, ["render", "--config", str(config), "--out", str(tmp_path / "a.gif")], "n_nodes")


def test_out_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    argv = ["evaluate", "--config", "tiny", "--episodes", "1", "--workers", "1", "--no-progress",
            "--schedulers", "all_nodes", "--out", str(taken)]
    _fails_cleanly(capsys, argv, "taken")


def test_read_only_out(tmp_path, capsys, monkeypatch):
    # the tests may run as root, for whom a chmod-ed folder is still writable: refuse as the OS would
    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    err = _fails_cleanly(capsys, _evaluate(tmp_path, "--schedulers", "all_nodes"), "read-only file system")
    assert "--out" in err


def test_unknown_training_settings(tmp_path, capsys):
    _fails_cleanly(capsys, ["train", "--config", "tiny", "--settings", "nope.yaml", "--out", str(tmp_path / "r")],
                   "training settings")


def test_no_seeds(tmp_path, capsys):
    argv = ["evaluate", "--config", "tiny", "--episodes", "0", "--out", str(tmp_path)]
    _fails_cleanly(capsys, argv, "no seeds")


def test_user_error_raised_by_a_subcommand_is_one_line(monkeypatch, capsys):
    from greengossip.training import render

    def refuse(args):
        raise UserError("x" * 10_000)

    monkeypatch.setattr(render, "run", refuse)
    err = _fails_cleanly(capsys, ["render", "--out", "a.gif"], "xxx")
    assert len(err) < cli.MAX_MESSAGE_CHARS + 100


def test_interrupt_exits_130(monkeypatch, capsys):
    from greengossip.training import render

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "run", interrupted)
    assert cli.main(["render", "--out", "a.gif"]) == cli.EXIT_INTERRUPTED
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    from greengossip.training import render

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(render, "run", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["render", "--out", "a.gif"])


def test_bad_arguments_exit_2_through_argparse(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["evaluate", "--episodes", "many"])
    assert caught.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["evaluate", "--config", "tiny", "--episodes", "99999999999999999999999", "--out", "o"],
    ["evaluate", "--config", "tiny", "--episodes", "-1", "--out", "o"],
    ["evaluate", "--config", "tiny", "--workers", "x", "--out", "o"],
    ["render", "--fps", "0", "--out", "a.gif"],
    ["render", "--fps", "nan", "--out", "a.gif"],
    ["render", "--max-frames", "-1", "--out", "a.gif"],
    ["render", "--strip-frames", "0", "--out", "a.gif"],
])
def test_numeric_options_out_of_range_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and argv[3] in err


def test_seeds_that_are_not_numbers(tmp_path, capsys):
    _fails_cleanly(capsys, _evaluate(tmp_path, "--seeds", "1,x"), "--seeds takes whole numbers")
