"""The files of a training run: never overwritten by accident, written whole or not at all.

* :func:`prepare_run_folder` refuses an ``--out`` that already holds a run unless the run is resumed
  (``--resume``) or replaced (``--overwrite``, which first deletes the earlier run's files, so that no
  checkpoint, best model or log of it is mistaken for the new run's).
* :func:`atomic_save` writes a model to a temporary file beside its target and renames it into place
  (``os.replace``): a save cut short by a crash, a full disk or a kill leaves the previous file, never a
  truncated one.
* :func:`resume_checkpoint` checks a checkpoint before going on from it; a damaged one is reported by
  name and the one before it is used.
* :class:`AppendingCSVOutputFormat` makes SB3's ``progress.csv`` go on after a resumed run's rows.
* :func:`check_writable` lets every command find out, before any work, that it cannot write its output.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from stable_baselines3.common.logger import CSVOutputFormat

from greengossip.agents.policies import ModelFileError, read_model_data
from greengossip.envs.errors import UserError

CHECKPOINT = re.compile(r"model_(\d+)_steps\.zip")
# what a training run writes into its folder (train.py and multi_agent.py); a folder holding any of the
# first three holds a run
RUN_MARKERS = ("model.zip", "checkpoints", "logs")
RUN_OUTPUTS = (*RUN_MARKERS, "best_model.zip", "best_model.json", "best_model_unguarded.zip",
               "best_model_unguarded.json", "monitor.csv", "evaluations.csv", "emissions.csv", "settings.yaml",
               "env_config.yaml", "multi_agent.json", "train.log", "comparison")


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and make sure a file can be written there; a clear error otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"cannot write to {what} {folder}: {reason[:1].lower()}{reason[1:]}") from None
    return folder


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` can be written: its folder is writable and it is not a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path")
    check_writable(path.parent, f"folder of the {what}")
    return path


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_MARKERS)


def prepare_run_folder(folder: str | Path, resume: str | None, overwrite: bool) -> Path:
    """The run folder, checked for writing: refused when it holds a run that is neither resumed nor to
    be overwritten; with ``overwrite`` the earlier run's files are deleted first (other files stay)."""
    folder = Path(folder)
    if resume and overwrite:
        raise UserError("--resume goes on from the run in --out and --overwrite deletes it; give one of them")
    if folder.is_dir() and holds_run(folder) and not (resume or overwrite):
        found = ", ".join(name for name in RUN_MARKERS if (folder / name).exists())
        raise UserError(f"--out {folder} already holds a run ({found}); pass --resume latest to go on from it, "
                        "--overwrite to replace it, or another --out")
    check_writable(folder, "--out")
    if overwrite:
        for name in RUN_OUTPUTS:
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for stale in folder.glob("resume*.monitor.csv"):
            stale.unlink()
    return folder


def atomic_write_bytes(path: str | Path, write: Callable) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, flush it to disk, then rename it to
    ``path`` in one step."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_save(model, path: str | Path) -> Path:
    """``model.save(path)``, atomically (see the module doc)."""
    return atomic_write_bytes(path, model.save)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def append_csv_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path``, writing the header (``row``'s keys) first if the file is new."""
    new_file = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)


def checkpoints_newest_first(folder: Path) -> list[Path]:
    found = [(int(match.group(1)), path) for path in folder.glob("model_*_steps.zip")
             if (match := CHECKPOINT.fullmatch(path.name))]
    return [path for _, path in sorted(found, reverse=True)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the most steps in ``folder`` (not checked; see :func:`resume_checkpoint`)."""
    newest = checkpoints_newest_first(folder)
    return newest[0] if newest else None


def resume_checkpoint(out: Path, resume: str, on_log: Callable[[str], None] = print) -> Path:
    """The model file to go on from: ``resume`` itself, or with ``latest`` the newest checkpoint in
    ``out/checkpoints`` that reads as a whole model; each damaged one is reported by name and skipped."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_file():
            raise UserError(f"--resume {resume}: file not found")
        try:
            read_model_data(path)
        except ModelFileError as exc:
            raise UserError(f"--resume {resume}: {exc}") from None
        return path
    folder = out / "checkpoints"
    candidates = checkpoints_newest_first(folder)
    for path in candidates:
        try:
            read_model_data(path)
        except ModelFileError as exc:
            on_log(f"checkpoint {path} cannot be used ({exc}); trying the one before it")
            continue
        return path
    if candidates:
        raise UserError(f"--resume latest: none of the {len(candidates)} checkpoints in {folder} can be read "
                        f"({', '.join(path.name for path in candidates)})")
    raise UserError(f"--resume latest: no checkpoint found (looked for {folder}/model_<steps>_steps.zip)")


class AppendingCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV log, going on after the rows already in the file (a resumed run) instead of truncating
    it; columns new to this run are added to the header with empty cells above, as SB3 itself does."""

    def __init__(self, filename: str | Path):
        path = Path(filename)
        if not (path.is_file() and path.stat().st_size):
            super().__init__(str(path))
            return
        self.file = open(path, "r+")  # read-write without truncation: SB3 rewrites the header in place
        header = self.file.readline().rstrip("\n")
        self.keys = header.split(",") if header else []
        self.separator, self.quotechar = ",", '"'
        self.file.seek(0, os.SEEK_END)
