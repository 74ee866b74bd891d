"""The wheel as a user gets it: built from the checkout, installed into a folder of its own, and used from a
project that has an ``envs/`` package of its own (a common RL layout that must not shadow GreenGossip)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

# What a clean checkout holds: leave out build outputs, caches and run folders of this working copy.
NOT_IN_A_CHECKOUT = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "venv",
                                           "runs", "results", ".pytest_cache", ".hypothesis", "*.pyc")


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel of a copy of the checkout, installed with ``pip install --no-deps --target``."""
    # --no-build-isolation builds with this environment's setuptools (a Python 3.12+ venv has none by default)
    pytest.importorskip("setuptools", minversion="68", reason="building the wheel needs setuptools >= 68 installed")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "checkout"
    shutil.copytree(ROOT, source, ignore=NOT_IN_A_CHECKOUT)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
          str(source)], cwd=work)
    (wheel,) = (work / "dist").glob("greengossip-*.whl")
    target = work / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], cwd=work)
    return target


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> Path:
    """A project with its own ``envs`` package."""
    project = tmp_path_factory.mktemp("project")
    (project / "envs").mkdir()
    (project / "envs" / "__init__.py").write_text("MINE = True\n")
    return project


def _user_env(installed: Path) -> dict[str, str]:
    """Only the installed folder on the path (not the checkout), one torch thread."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _greengossip(installed: Path) -> list[str]:
    """The console script pip wrote, else the module it runs."""
    script = installed / "bin" / "greengossip"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "greengossip.training.cli"]


def test_only_greengossip_lands_at_the_top_of_the_install_folder(installed):
    top = {path.name for path in installed.iterdir()} - {"bin"}
    assert {name for name in top if not name.endswith(".dist-info")} == {"greengossip"}
    shipped = installed / "greengossip" / "configs"
    assert (shipped / "tiny.yaml").is_file() and (shipped / "train" / "quick_start.yaml").is_file()
    assert (shipped / "train" / "ablations").is_dir()
    pretrained = installed / "greengossip" / "agents" / "pretrained"
    assert (pretrained / "suite.zip").is_file() and (pretrained / "suite.json").is_file()


def test_gym_make_finds_the_env_beside_the_user_s_own_envs_package(installed, user_project):
    script = textwrap.dedent("""
        import gymnasium as gym
        import envs

        assert envs.MINE, envs.__file__  # the project's own package, not GreenGossip's
        env = gym.make("greengossip:GreenGossip/EdgeLearning-v3", config="tiny")
        observation, info = env.reset(seed=0)
        import greengossip

        print(greengossip.__file__, env.unwrapped.n_nodes, env.unwrapped.action_masks().shape)
    """)
    out = _run([sys.executable, "-c", script], cwd=user_project, env=_user_env(installed)).stdout.split()
    assert Path(out[0]).is_relative_to(installed)
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    assert int(out[1]) == tiny["n_nodes"]


@pytest.mark.slow
def test_evaluate_and_train_run_by_name_with_the_recipe_s_own_settings(installed, user_project):
    """``greengossip evaluate --config tiny`` and ``greengossip train --config tiny`` from the user project;
    train must use configs/train/tiny.yaml (read back from the settings.yaml it writes), with --timesteps on
    top."""
    env = _user_env(installed)
    _run([*_greengossip(installed), "evaluate", "--config", "tiny", "--schedulers", "all_nodes", "carbon_periodic",
          "--episodes", "1", "--workers", "1", "--no-progress", "--out", "eval"], cwd=user_project, env=env)
    assert "carbon_periodic" in (user_project / "eval" / "results.md").read_text()

    _run([*_greengossip(installed), "train", "--config", "tiny", "--timesteps", "128", "--no-progress",
          "--no-compare", "--out", "run"], cwd=user_project, env=env)
    used = yaml.safe_load((user_project / "run" / "settings.yaml").read_text())
    recipe = yaml.safe_load((ROOT / "configs" / "train" / "tiny.yaml").read_text())
    assert used["total_timesteps"] == 128
    assert used["n_envs"] == recipe["n_envs"]
    assert used["policy"]["hidden"] == recipe["policy"]["hidden"]
    assert used["maskable_ppo"]["learning_rate"] == recipe["maskable_ppo"]["learning_rate"]
    assert used["maskable_ppo"]["n_steps"] == recipe["maskable_ppo"]["n_steps"]
    assert (user_project / "run" / "model.zip").is_file()
