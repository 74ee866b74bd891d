"""Fuzzing the lifecycle: reset, step, action_masks, render and close in any order, on the single and the
vector env. A call out of order is one RuntimeError that names ``reset()``; every observation stays in
its space, every reward and KPI is finite, and ``info["nonfinite_values"]`` stays 0."""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_support import ACCEPTED, LONG, NON_FINITE, REFUSED, SHORT, SILENT_ACCEPTANCE, UNCLEAR_CRASH, Tally
from hypothesis import given
from hypothesis import strategies as st

from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.vector_env import EdgeLearningVectorEnv

N = 4
SMALL = {"n_nodes": N, "max_rounds": 3, "attack": {"fraction": 0.25, "kinds": ["ipm", "gaussian"]}}
CALLS = ("reset", "step", "step", "step", "bad_step", "masks", "render", "close", "reset_options")
programs = st.lists(st.tuples(st.sampled_from(CALLS), st.integers(0, 2**31 - 1)), min_size=1, max_size=10)


def _finite_info(info: dict) -> bool:
    values = [v for k, v in info.items() if isinstance(v, (int, float, np.ndarray)) and not isinstance(v, bool)
              and k not in ("final_obs", "final_info", "rounds_to_target", "carbon_to_target_g",
                            "energy_to_target_wh", "final_accuracy", "harm", "episode_harm")]
    return all(np.all(np.isfinite(np.asarray(v, dtype=float))) for v in values)


def run_program(env, program, tally: Tally, vector: bool) -> None:
    """Play ``program`` on ``env``; each call is accepted (and checked) or refused as the API promises."""
    started = ended = False
    shape = (env.num_envs, N) if vector else (N,)
    for call, seed in program:
        rng = np.random.default_rng(seed)
        try:
            if call == "reset":
                obs, _ = env.reset(seed=seed)
                started, ended = True, False
                space = env.observation_space
                if not space.contains(obs):
                    tally.record(NON_FINITE, (call, seed), "observation outside its space")
                    continue
            elif call == "reset_options":
                env.reset(seed=seed, options={"unknown_option": seed})
                tally.record(SILENT_ACCEPTANCE, (call, seed), "unknown reset option accepted")
                continue
            elif call in ("step", "bad_step"):
                action = rng.integers(0, 6, size=shape)
                if call == "bad_step":
                    action = action.astype(bool)
                obs, reward, terminated, truncated, info = env.step(action)
                if call == "bad_step" or not started or ended:
                    tally.record(SILENT_ACCEPTANCE, (call, seed, started, ended), "step accepted")
                    continue
                if not vector:
                    ended = terminated or truncated
                if not np.all(np.isfinite(reward)) or not _finite_info(info) or np.any(info["nonfinite_values"]):
                    tally.record(NON_FINITE, (call, seed), f"reward {reward}, info {info}")
                    continue
                if not env.observation_space.contains(obs):
                    tally.record(NON_FINITE, (call, seed), "observation outside its space")
                    continue
            elif call == "masks":
                masks = env.action_masks()
                if not started:
                    tally.record(SILENT_ACCEPTANCE, (call, seed), "masks before reset")
                    continue
                if masks.dtype != bool or masks.shape != (*shape, 6):
                    tally.record(UNCLEAR_CRASH, (call, seed), f"masks {masks.dtype} {masks.shape}")
                    continue
            elif call == "render":
                if not vector:
                    env.render()
            elif call == "close":
                env.close()
                if vector:
                    started = False
            tally.record(ACCEPTED)
        except ValueError as exc:
            clear = (call == "bad_step" and str(exc).startswith("action")) or (
                call == "reset_options" and "unknown_option" in str(exc))
            tally.record(REFUSED if clear else UNCLEAR_CRASH, (call, seed), f"ValueError: {exc}")
        except RuntimeError as exc:
            clear = "reset()" in str(exc) and (not started or ended or call == "bad_step")
            tally.record(REFUSED if clear else UNCLEAR_CRASH, (call, seed, started, ended), f"RuntimeError: {exc}")
        except Exception as exc:  # noqa: BLE001 - anything else is what we count
            tally.record(UNCLEAR_CRASH, (call, seed), f"{type(exc).__name__}: {exc}")
    env.close()


@pytest.fixture(scope="module")
def warm():
    EdgeLearningEnv(config=SMALL).reset(seed=0)  # scenario caches (digits, the clear-sky year) built once


@SHORT
@given(programs)
def test_fuzz_single_env_lifecycle(warm, program):
    run_program(EdgeLearningEnv(config=SMALL, render_mode="ansi"), program, Tally("lifecycle", strict=True), False)


@SHORT
@given(programs)
def test_fuzz_vector_env_lifecycle(warm, program):
    env = EdgeLearningVectorEnv(num_envs=2, config=SMALL)
    run_program(env, program, Tally("vector lifecycle", strict=True), True)


@pytest.mark.slow
def test_fuzz_lifecycle_long_run(warm):
    tally = Tally("lifecycle")

    @LONG
    @given(programs, st.booleans())
    def run(program, vector):
        env = EdgeLearningVectorEnv(num_envs=2, config=SMALL) if vector else EdgeLearningEnv(
            config=SMALL, render_mode="ansi")
        run_program(env, program, tally, vector)

    run()
    tally.assert_clean()


# ---------------------------------------------------------------------------------------------- the cases of the issue
def test_action_masks_before_reset_names_reset():
    with pytest.raises(RuntimeError, match=r"reset\(\) before action_masks"):
        EdgeLearningEnv(config=SMALL).action_masks()
    with pytest.raises(RuntimeError, match=r"reset\(\) before action_masks"):
        EdgeLearningVectorEnv(num_envs=2, config=SMALL).action_masks()


def test_unknown_reset_options_are_errors(warm):
    env = EdgeLearningEnv(config=SMALL)
    with pytest.raises(ValueError, match=r"reset\(options=...\): unknown key\(s\) \['start_day'\]"):
        env.reset(seed=0, options={"start_day": 3})
    with pytest.raises(ValueError, match="must be a dict"):
        env.reset(seed=0, options=["start_day"])
    env.reset(seed=0, options={})  # an empty dict asks for nothing
    vector = EdgeLearningVectorEnv(num_envs=2, config=SMALL)
    with pytest.raises(ValueError, match="unknown key"):
        vector.reset(seed=0, options={"anything": 1})


@pytest.mark.parametrize("num_envs", [0, -3, 1.5, True, "2", None])
def test_vector_env_needs_at_least_one_environment(num_envs):
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1"):
        EdgeLearningVectorEnv(num_envs=num_envs, config=SMALL)


def test_vector_env_refuses_more_environments_than_fit_in_memory(monkeypatch):
    from greengossip.envs import footprint
    from greengossip.envs.config import ConfigError

    monkeypatch.setattr(footprint, "device_memory_bytes", lambda device: footprint.ALWAYS_FITS_BYTES * 2)
    with pytest.raises(ConfigError, match=r"num_envs=100000: 100000 environments need about"):
        EdgeLearningVectorEnv(num_envs=100_000, config=SMALL)
