"""GreenGossip inside other RL code: RL Zoo3, a CleanRL-style script, Ray RLlib (docs/rl_libraries.md).

Each recipe runs here on a tiny budget. The RL Zoo3 and RLlib checks skip when their package is not
installed (``pip install -e ".[test]"`` brings rl_zoo3; RLlib is the optional ``rllib`` extra). The Zoo
check runs the command of docs/rl_libraries.md with ``-n 2048`` (about 30 s), in every CI run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import gymnasium as gym
import pytest
import yaml
from conftest import FLAT_ENV_ID, ROOT, TINY

ZOO_FILE = ROOT / "configs" / "zoo" / "ppo.yml"
ENV_ID = "GreenGossip/EdgeLearning-v3"


def _quiet_env() -> dict[str, str]:
    # one OpenMP thread per process: the rounds' tensors are small and the CI machine is shared
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _zoo_command(out, timesteps: int, *hyperparams: str) -> list[str]:
    """The command of docs/rl_libraries.md, with the log folder, a seed and (optionally) hyperparameter overrides."""
    command = [
        sys.executable,
        "-m",
        "rl_zoo3.train",
        "--algo",
        "ppo",
        "--env",
        ENV_ID,
        "--gym-packages",
        "greengossip",
        "-n",
        str(timesteps),
        "--conf-file",
        str(ZOO_FILE),
        "--env-kwargs",
        f"config:'{TINY}'",
        "-f",
        str(out),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--eval-freq",
        "-1",
    ]
    return command + (["--hyperparams", *hyperparams] if hyperparams else [])


def test_zoo_hyperparameter_file_covers_both_ids_and_the_wrapper_imports():
    hyperparams = yaml.safe_load(ZOO_FILE.read_text())
    assert set(hyperparams) == {ENV_ID, FLAT_ENV_ID}
    wrappers = hyperparams[ENV_ID]["env_wrapper"]
    module, _, name = wrappers[0].rpartition(".")
    wrapper = getattr(importlib.import_module(module), name)
    env = wrapper(gym.make(ENV_ID, config=TINY))
    assert isinstance(env.observation_space, gym.spaces.Box)  # what the Zoo's MlpPolicy needs
    assert hyperparams[FLAT_ENV_ID]["env_wrapper"] is None
    assert hyperparams[ENV_ID]["n_steps"] == hyperparams[FLAT_ENV_ID]["n_steps"]


def _run_zoo(tmp_path, timesteps: int, *hyperparams: str):
    result = subprocess.run(
        _zoo_command(tmp_path, timesteps, *hyperparams),
        cwd=ROOT,
        env=_quiet_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    models = list((tmp_path / "ppo").glob("GreenGossip-EdgeLearning-v3_*/GreenGossip-EdgeLearning-v3.zip"))
    assert len(models) == 1, f"no model saved under {tmp_path}: {result.stdout[-2000:]}"
    from stable_baselines3 import PPO

    model = PPO.load(models[0], device="cpu")
    assert model.num_timesteps >= timesteps
    return model


@pytest.mark.skipif(importlib.util.find_spec("rl_zoo3") is None, reason="rl_zoo3 not installed (test extra)")
def test_rl_zoo3_trains_a_few_thousand_steps_from_the_documented_command(tmp_path):
    _run_zoo(tmp_path, 2048)


def load_example(name: str):
    """``examples/<name>.py`` as a module: the examples are scripts outside the package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cleanrl_style_script_trains_on_a_tiny_budget(tmp_path):
    """The documented command-line flags, through the script's own ``main(argv)`` (in-process: it shares the
    test run's imports and solar caches; ``python examples/cleanrl_ppo.py ...`` only adds the interpreter)."""
    cleanrl_ppo = load_example("cleanrl_ppo")

    summary = cleanrl_ppo.main(
        [
            "--config",
            str(TINY),
            "--total-timesteps",
            "32",
            "--num-steps",
            "16",
            "--update-epochs",
            "1",
            "--out",
            str(tmp_path),
            "--seed",
            "3",
        ]
    )
    assert summary["global_step"] == 32 and summary["sps"] > 0
    (run_dir,) = list(tmp_path.iterdir())
    assert (run_dir / "cleanrl_ppo.cleanrl_model").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray[rllib] not installed (optional rllib extra)"
)
def test_rllib_trains_one_iteration_locally(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "examples/rllib_example.py",
            "--config",
            str(TINY),
            "--iterations",
            "1",
            "--train-batch-size",
            "128",
            "--out",
            str(tmp_path / "checkpoint"),
        ],
        cwd=ROOT,
        env=_quiet_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [yaml.safe_load(line) for line in result.stdout.splitlines() if line.startswith('{"iteration"')]
    assert lines and lines[-1]["iteration"] == 1 and lines[-1]["env_steps_sampled"] >= 128
    assert (tmp_path / "checkpoint").is_dir()
