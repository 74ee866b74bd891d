"""Fuzzing the configs: mutated dicts and mutated YAML files. Every one is either refused with one bounded
ConfigError, or accepted, and then it builds, resets and steps with finite numbers. Nothing else: no
other exception, no config that loads and then cannot run."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
from fuzz_support import ACCEPTED, LONG, NON_FINITE, REFUSED, SHORT, SILENT_ACCEPTANCE, UNCLEAR_CRASH, Tally
from hypothesis import given
from hypothesis import strategies as st

from greengossip.envs.config import ConfigError, EnvConfig, load_config
from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.shipped import find_config

BASE = load_config("tiny").model_dump(mode="json")
BASE["max_rounds"] = 4
TINY_TEXT = find_config("tiny").read_text()
MAX_MESSAGE = 5_000
BUILD_SECONDS = 120  # an accepted config that takes longer than this to build and step is counted


def _leaf_paths(value, prefix=()) -> list[tuple]:
    if isinstance(value, dict):
        return [prefix] + [p for key, item in value.items() for p in _leaf_paths(item, (*prefix, key))]
    if isinstance(value, list):
        return [prefix] + [p for index, item in enumerate(value) for p in _leaf_paths(item, (*prefix, index))]
    return [prefix]


PATHS = [path for path in _leaf_paths(BASE) if path]
weird = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e3, max_value=1e3),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-2, 5), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
    st.sampled_from([0, -1, 1, 1e-6, 1e308, 65536, 2**31, 2**63, "cuda", "cuda:7", "mps", "cpu", "1e3", ".inf",
                     "nan", "1e-6", "erdos_renyi", "scale_free", "mlp", "gaussian", "rdp", 7.5, 1440, 0.5]),
)
mutations = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), weird),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(PATHS), weird),
), min_size=1, max_size=3)


def _mutate(config: dict, mutation) -> dict:
    config = copy.deepcopy(config)
    for op, path, value in mutation:
        parent = config
        for key in path[:-1]:
            if isinstance(parent, dict) and key in parent or isinstance(parent, list) and key < len(parent):
                parent = parent[key]
            else:
                break
        else:
            key = path[-1]
            if op == "set" and (isinstance(parent, dict) or isinstance(parent, list) and key < len(parent)):
                parent[key] = value
            elif op == "delete" and isinstance(parent, dict):
                parent.pop(key, None)
            elif op == "add" and isinstance(parent, dict):
                parent[f"{key}_extra"] = value
    return config


def _all_finite(value) -> bool:
    if isinstance(value, dict):
        return all(_all_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(item) for item in value)
    return not isinstance(value, float) or math.isfinite(value)


def check_config(config, tally: Tally, build: bool) -> None:
    """Load ``config`` (a dict or a path); if it loads, build it and play two rounds."""
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        message = str(exc)
        ok = 0 < len(message) <= MAX_MESSAGE and "Traceback" not in message
        tally.record(REFUSED if ok else UNCLEAR_CRASH, config, message[:300])
        return
    except Exception as exc:  # noqa: BLE001 - what we count
        tally.record(UNCLEAR_CRASH, config, f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    if not isinstance(loaded, EnvConfig) or not _all_finite(loaded.model_dump()):
        tally.record(SILENT_ACCEPTANCE, config, "loaded a non-finite value")
        return
    if not build:
        tally.record(ACCEPTED)
        return
    started = time.perf_counter()
    try:
        env = EdgeLearningEnv(config=loaded.model_copy(update={"max_rounds": min(loaded.max_rounds, 4)}))
        obs, _ = env.reset(seed=0)
        for _ in range(2):
            obs, reward, terminated, truncated, info = env.step(np.full(env.n_nodes, 2))
            if not np.isfinite(reward) or info["nonfinite_values"] or not env.observation_space.contains(obs):
                tally.record(NON_FINITE, config, f"reward {reward}, nonfinite {info['nonfinite_values']}")
                return
            if terminated or truncated:
                break
    except Exception as exc:  # noqa: BLE001 - accepted, then failed: the config should have been refused
        tally.record(SILENT_ACCEPTANCE, config, f"accepted, then {type(exc).__name__}: {str(exc)[:300]}")
        return
    seconds = time.perf_counter() - started
    tally.record(ACCEPTED if seconds < BUILD_SECONDS else SILENT_ACCEPTANCE, config, f"took {seconds:.0f} s")


# ---------------------------------------------------------------------------------------------- YAML text mutations
SPECIALS = [":", " ", "\n", "&a", "*a", "[", "]", "{", "}", "-", "!!", "#", "\t", "'", '"', "<<: *a", "? ", "|",
            ".inf", ".nan", "1e999", "0x10", "~", "\x00", "\u2028", "%YAML 1.1\n", "---\n", "...\n"]
text_mutations = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(0, len(TINY_TEXT)), st.sampled_from(SPECIALS)),
    st.tuples(st.just("insert"), st.integers(0, len(TINY_TEXT)), st.text(max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, len(TINY_TEXT)), st.integers(1, 40)),
    st.tuples(st.just("duplicate_line"), st.integers(0, 40), st.none()),
    st.tuples(st.just("truncate"), st.integers(0, len(TINY_TEXT)), st.none()),
), min_size=1, max_size=4)


def _mutate_text(text: str, mutation) -> str:
    for op, at, arg in mutation:
        at = min(at, len(text))
        if op == "insert":
            text = text[:at] + arg + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + arg:]
        elif op == "duplicate_line":
            lines = text.splitlines(keepends=True)
            if lines:
                index = at % len(lines)
                lines.insert(index, lines[index])
            text = "".join(lines)
        else:
            text = text[:at]
    return text


@pytest.fixture(scope="module")
def yaml_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "mutated.yaml"


@pytest.fixture(scope="module")
def warm():
    EdgeLearningEnv(config=BASE).reset(seed=0)


@SHORT
@given(mutations)
def test_fuzz_config_dicts_load_or_are_refused_clearly(mutation):
    check_config(_mutate(BASE, mutation), Tally("config dicts", strict=True), build=False)


@SHORT
@given(text_mutations)
def test_fuzz_yaml_files_load_or_are_refused_clearly(yaml_path, mutation):
    try:
        yaml_path.write_text(_mutate_text(TINY_TEXT, mutation), encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError:
        return
    check_config(yaml_path, Tally("config YAML", strict=True), build=False)


@pytest.mark.parametrize("seed", range(2))
def test_fuzz_accepted_configs_build_and_step(warm, seed):
    """A few mutated configs that load are built and stepped (each build costs seconds)."""
    rng = np.random.default_rng(seed)
    tally = Tally("config builds", strict=True)
    built = 0
    for _ in range(200):
        path = PATHS[rng.integers(len(PATHS))]
        value = [0.5, 1, 2, 3, 16, 1e-3, 100.0, "ring", "grid", "mlp", True][rng.integers(11)]
        config = _mutate(BASE, [("set", path, value)])
        try:
            load_config(config)
        except ConfigError:
            continue
        check_config(config, tally, build=True)
        built += 1
        if built == 2:
            break
    assert built == 2


@pytest.mark.slow
def test_fuzz_configs_long_run(warm, yaml_path):
    dicts, files = Tally("config dicts (built when accepted)"), Tally("config YAML")

    @LONG
    @given(mutations)
    def run_dicts(mutation):
        check_config(_mutate(BASE, mutation), dicts, build=True)

    @LONG
    @given(text_mutations)
    def run_files(mutation):
        try:
            yaml_path.write_text(_mutate_text(TINY_TEXT, mutation), encoding="utf-8", errors="surrogatepass")
        except UnicodeEncodeError:
            return
        check_config(yaml_path, files, build=True)

    run_dicts()
    run_files()
    print(dicts.report())
    files.assert_clean()
    dicts.assert_clean()
