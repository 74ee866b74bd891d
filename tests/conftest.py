"""Shared helpers of the test suite: where the configs are, small env factories, hypothesis settings."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, settings

from greengossip import envs  # noqa: F401  (registers the GreenGossip ids)
from greengossip.envs.config import EnvConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
TINY = CONFIG_DIR / "tiny.yaml"
DEFAULT = CONFIG_DIR / "default.yaml"
ENV_ID = "GreenGossip/EdgeLearning-v3"
FLAT_ENV_ID = "GreenGossip/EdgeLearningFlat-v3"

# A round's tensors are small: one intra-op thread is faster, and on a shared machine whose cores are
# busy two waiting OpenMP threads make a step 20-40x slower (see benchmarks/bench_step.py --threads).
torch.set_num_threads(1)

# Property tests run many small examples; torch's first call on a tensor shape can be slow, so no deadline.
settings.register_profile(
    "greengossip", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("greengossip")

# cuBLAS repeats its products under torch.use_deterministic_algorithms(True) only with this set before
# its first use (torch raises otherwise); it changes nothing on the CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# The torch devices an env test runs on: the CPU always, CUDA where torch sees one (CI has none; on a machine
# with a GPU, `pytest -k cuda` runs them there, docs/bench_cuda.md).
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]

# Sub-folders of configs/ whose YAML files are always scenarios (every file must load as an EnvConfig).
SCENARIO_DIRS = ("scenarios",)


def _is_env_config(path: Path) -> bool:
    """Top-level files and files under configs/scenarios/ are env configs by definition; a file in any
    other sub-folder (e.g. configs/train/) counts only if all its top-level keys are EnvConfig fields."""
    relative = path.relative_to(CONFIG_DIR)
    if len(relative.parts) == 1 or relative.parts[0] in SCENARIO_DIRS:
        return True
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and bool(data) and set(data) <= set(EnvConfig.model_fields)


def env_config_paths() -> list[Path]:
    """Every env config YAML under configs/, found by glob so that new configs are tested automatically."""
    paths = sorted(CONFIG_DIR.rglob("*.yaml")) + sorted(CONFIG_DIR.rglob("*.yml"))
    return [p for p in paths if _is_env_config(p)]


def config_id(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module: the benchmarks are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_variant(**changes) -> EnvConfig:
    """configs/tiny.yaml with top-level fields or ``section__field`` entries replaced."""
    data = yaml.safe_load(TINY.read_text())
    for key, value in changes.items():
        if "__" in key:
            section, field = key.split("__", 1)
            data.setdefault(section, {})[field] = value
        else:
            data[key] = value
    return load_config(data)


def make_env(config=TINY, **kwargs) -> gym.Env:
    """The registered env (with Gymnasium's default wrappers) for a config path, dict or EnvConfig."""
    return gym.make(ENV_ID, config=config, **kwargs)


def all_nodes(env: gym.Env, code: int) -> np.ndarray:
    return np.full(env.unwrapped.n_nodes, code, dtype=np.int64)


@pytest.fixture(scope="module")
def tiny_config() -> EnvConfig:
    return load_config(TINY)


def train_small_suite_run(tmp_path: Path, recipe: str, changes: str) -> dict:
    """``greengossip train`` (its argument parser and ``run``) on ``configs/train/<recipe>.yaml`` cut down to
    one update without the final comparison, plus the YAML lines ``changes``; the run's record, with the run
    folder as ``"out"``."""
    import argparse

    from greengossip.training import train

    settings = tmp_path / "small.yaml"
    settings.write_text(f"extends: {CONFIG_DIR / 'train' / f'{recipe}.yaml'}\n"
                        "total_timesteps: 64\neval_episodes: 2\neval_freq: 100000\ncompare: false\n"
                        "track_carbon: false\nprogress_bar: false\n" + changes)
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    out = tmp_path / "run"
    assert train.run(parser.parse_args(["--settings", str(settings), "--out", str(out)])) == 0
    return {**json.loads((out / "training_record.json").read_text()), "out": out}
