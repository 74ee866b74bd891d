"""Runs are never lost: a folder with a run is refused, saves are atomic, damaged checkpoints are skipped,
a resume appends to the logs, Ctrl-C saves the model, and every command checks its output before work."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TINY

from greengossip.agents.policies import ModelFileError, detect_algorithm, read_model_data
from greengossip.envs.errors import UserError
from greengossip.training.cli import main
from greengossip.training.run_files import (
    atomic_save,
    latest_checkpoint,
    prepare_run_folder,
    resume_checkpoint,
)
from greengossip.training.settings import load_settings
from greengossip.training.train import train

TINY_SETTINGS = ROOT / "configs" / "train" / "tiny.yaml"


def _settings(**overrides):
    quick = dict(maskable_ppo={"n_steps": 64, "batch_size": 64, "n_epochs": 1}, n_envs=1, eval_episodes=1,
                 eval_freq=10_000, compare=False, track_carbon=False, progress_bar=False)
    return load_settings(TINY_SETTINGS, **{**quick, **overrides})


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def _trained_steps(progress: Path) -> list[int]:
    """``time/total_timesteps`` of each training row of ``progress.csv`` (validation rows leave it empty)."""
    return [int(row["time/total_timesteps"]) for row in _rows(progress) if row["time/total_timesteps"]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A finished 128-step run with checkpoints at 64 and 128 steps."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TINY, _settings(total_timesteps=128, checkpoint_freq=64), out)
    return out


def _copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(first_run, tmp_path, capsys):
    before = {path: path.stat().st_mtime_ns for path in first_run.rglob("*") if path.is_file()}
    code = main(["train", "--config", str(TINY), "--settings", str(TINY_SETTINGS), "--timesteps", "64",
                 "--out", str(first_run), "--no-progress", "--no-compare"])
    assert code == 2
    message = capsys.readouterr().err
    assert "already holds a run" in message and "--resume latest" in message and "--overwrite" in message
    assert {path: path.stat().st_mtime_ns for path in first_run.rglob("*") if path.is_file()} == before
    with pytest.raises(UserError, match="give one of them"):
        prepare_run_folder(first_run, resume="latest", overwrite=True)


def test_overwrite_deletes_the_earlier_run_s_files_first(first_run, tmp_path):
    out = _copy_run(first_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")  # not a run file: stays
    result = train(TINY, _settings(total_timesteps=64, checkpoint_freq=10_000), out, overwrite=True)
    assert result.timesteps == 64
    assert latest_checkpoint(out / "checkpoints") is None  # the old run's checkpoints are gone
    assert (out / "notes.txt").read_text() == "mine"
    assert _trained_steps(out / "logs" / "progress.csv") == [64]


def test_a_resume_appends_to_progress_and_monitor(first_run, tmp_path):
    out = _copy_run(first_run, tmp_path / "run")
    progress_before = _rows(out / "logs" / "progress.csv")
    monitor_before = (out / "monitor.csv").read_text().splitlines()
    train(TINY, _settings(total_timesteps=256, checkpoint_freq=64), out, resume="latest")
    progress = _rows(out / "logs" / "progress.csv")
    assert progress[: len(progress_before)] == progress_before
    assert _trained_steps(out / "logs" / "progress.csv") == [64, 128, 192, 256]
    monitor = (out / "monitor.csv").read_text().splitlines()
    assert monitor[: len(monitor_before)] == monitor_before and len(monitor) > len(monitor_before)
    assert sum(line.startswith("#") for line in monitor) == 1  # one header: the rows go on under it
    assert not list(out.glob("resume*.monitor.csv"))


def test_a_truncated_checkpoint_is_named_and_the_previous_one_used(first_run, tmp_path):
    out = _copy_run(first_run, tmp_path / "run")
    newest = out / "checkpoints" / "model_128_steps.zip"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="model_128_steps.zip"):
        detect_algorithm(newest)  # was AttributeError: 'NoneType' object has no attribute 'get'
    messages: list[str] = []
    assert resume_checkpoint(out, "latest", on_log=messages.append).name == "model_64_steps.zip"
    assert len(messages) == 1 and "model_128_steps.zip" in messages[0]
    result = train(TINY, _settings(total_timesteps=192, checkpoint_freq=64), out, resume="latest")
    assert result.timesteps == 192  # 64 from the good checkpoint, then 128 more
    (out / "checkpoints" / "model_64_steps.zip").write_bytes(b"")
    (out / "checkpoints" / "model_192_steps.zip").write_bytes(b"PK\x03\x04 not a zip")
    newest.unlink()
    with pytest.raises(UserError, match="none of the 2 checkpoints"):
        resume_checkpoint(out, "latest", on_log=lambda message: None)


def test_saves_are_atomic_an_interrupted_save_leaves_the_previous_file(first_run, tmp_path):
    from sb3_contrib import MaskablePPO

    model = MaskablePPO.load(first_run / "model.zip")
    target = tmp_path / "model.zip"
    atomic_save(model, target)
    good = target.read_bytes()

    def failing_save(handle):
        handle.write(b"PK\x03\x04 half a model")
        raise OSError("disk full")

    model.save = failing_save
    with pytest.raises(OSError, match="disk full"):
        atomic_save(model, target)
    assert target.read_bytes() == good and read_model_data(target)["policy_class"] is not None
    assert [path.name for path in tmp_path.iterdir()] == ["model.zip"]  # no temporary left behind


def test_a_damaged_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="bad.zip is not a readable model file"):
        read_model_data(bad)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ModelFileError, match="not a Stable-Baselines3 model"):
        read_model_data(tmp_path / "other.zip")


def test_outputs_are_checked_for_writing_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    commands = {
        "train": ["train", "--config", str(TINY), "--settings", str(TINY_SETTINGS), "--out", str(blocker / "run")],
        "evaluate": ["evaluate", "--config", str(TINY), "--schedulers", "all", "--out", str(blocker / "eval")],
        "render": ["render", "--config", str(TINY), "--out", str(blocker / "episode.gif")],
        "train into a file": ["train", "--config", str(TINY), "--settings", str(TINY_SETTINGS), "--out", str(blocker)],
        "render into a folder": ["render", "--config", str(TINY), "--out", str(tmp_path)],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        message = capsys.readouterr().err
        assert str(blocker if "folder" not in name else tmp_path) in message, (name, message)


def test_ctrl_c_saves_the_model_prints_how_to_resume_and_exits_130(tmp_path):
    """SIGINT to a training process: it stops after the current step, writes model.zip and a checkpoint,
    prints the command that goes on, and exits with 130."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from stable_baselines3.common.callbacks import BaseCallback
        from greengossip.training import builders
        from greengossip.training.cli import main

        class InterruptOnce(BaseCallback):  # Ctrl-C from inside, at a known step: no timing in the test
            def _on_step(self):
                if self.num_timesteps == 80:
                    os.kill(os.getpid(), signal.SIGINT)
                return True

        original = builders.training_callbacks
        def with_interrupt(*args, **kwargs):
            callbacks, emissions = original(*args, **kwargs)
            return [*callbacks, InterruptOnce()], emissions
        builders.training_callbacks = with_interrupt
        import greengossip.training.train as train_module
        train_module.training_callbacks = with_interrupt
        sys.exit(main(["train", "--config", {str(TINY)!r}, "--settings", {str(TINY_SETTINGS)!r},
                       "--timesteps", "100000", "--n-envs", "1", "--out", {str(out)!r}, "--no-progress"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 130, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (out / "model.zip").is_file() and read_model_data(out / "model.zip")
    checkpoint = latest_checkpoint(out / "checkpoints")
    # training stops at the step the signal came in or the next one, whole either way
    assert checkpoint.name in ("model_80_steps.zip", "model_81_steps.zip")
    assert read_model_data(checkpoint)
    resume = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("greengossip train")]
    assert resume == [f"greengossip train --config {TINY} --settings {TINY_SETTINGS} --timesteps 100000 --n-envs 1 "
                      f"--no-progress --out {out} --resume latest"], result.stdout[-2000:]
    assert not (out / "comparison").exists()


def test_supersuit_workers_do_not_keep_a_script_from_exiting(tmp_path):
    script = textwrap.dedent(f"""
        from greengossip.training.builders import make_multi_agent_vec_env
        venv = make_multi_agent_vec_env({str(TINY)!r}, n_envs=2, num_cpus=2, seed=0)
        venv.reset()
        print("stepped", flush=True)
    """)  # no close(): the interpreter must still end
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0 and "stepped" in result.stdout, result.stderr[-2000:]


def test_interrupt_callback_restores_the_previous_handler():
    from greengossip.training.callbacks import StopOnInterrupt

    previous = signal.getsignal(signal.SIGINT)
    callback = StopOnInterrupt()
    callback._on_training_start()
    assert signal.getsignal(signal.SIGINT) == callback._handle
    callback._handle(signal.SIGINT, None)
    assert callback.requested and callback._on_step() is False
    with pytest.raises(KeyboardInterrupt):
        callback._handle(signal.SIGINT, None)  # the second Ctrl-C quits at once
    callback._on_training_end()
    assert signal.getsignal(signal.SIGINT) == previous
