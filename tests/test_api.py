"""Conformance of the Gymnasium API over every config in configs/ and every registered id."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import (
    ENV_ID,
    FLAT_ENV_ID,
    NEEDS_CUDA,
    TINY,
    all_nodes,
    config_id,
    env_config_paths,
    make_env,
    tiny_variant,
)
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from greengossip.envs.dynamics.energy import IDLE, N_ACTIONS
from greengossip.envs.reward import COMPONENTS
from greengossip.envs.wrappers import FlattenGossipObservation

CONFIGS = env_config_paths()
STEP_KEYS = ("accuracy", "carbon_g", "energy_wh", "grid_wh", "harvested_wh", "bytes_sent", "participants",
             "dropped_nodes", "reward_components", "cost")
EPISODE_KEYS = ("episode_carbon_g", "episode_energy_wh", "rounds_to_target")


def test_config_glob_finds_the_shipped_configs():
    names = {config_id(p) for p in CONFIGS}
    assert {"default.yaml", "tiny.yaml"} <= names


# ---------------------------------------------------------------------------------------------- checkers
@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_gymnasium_env_checker_passes(path):
    env = make_env(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped, skip_render_check=True)
    # the checker reports problems (precision, bounds, determinism) as warnings from gymnasium itself
    problems = [str(w.message) for w in caught if "gymnasium" in w.filename]
    assert not problems, problems


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_sb3_env_checker_passes(path):
    sb3_check_env(make_env(path).unwrapped, warn=True)


@NEEDS_CUDA
@pytest.mark.parametrize("attacked", [False, True], ids=["tiny", "tiny+attacks+privacy"])
def test_env_checkers_pass_on_cuda(attacked):
    """The simulator's tensors on the GPU; what the agent sees stays NumPy on the host. The checker wants
    bit-equal steps from equal seeds, which CUDA gives under torch's deterministic flag (its atomic adds
    sum in any order otherwise: docs/bench_cuda.md)."""
    extra = dict(attack={"fraction": 0.25, "kinds": ["sign_flip", "gaussian"]},
                 privacy={"mechanism": "laplace", "epsilon_per_report": 4.0, "budget": 20.0}) if attacked else {}
    env = make_env(tiny_variant(device="cuda", **extra))
    torch.use_deterministic_algorithms(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gym_check_env(env.unwrapped, skip_render_check=True)
    finally:
        torch.use_deterministic_algorithms(False)
    problems = [str(w.message) for w in caught if "gymnasium" in w.filename]
    assert not problems, problems
    sb3_check_env(make_env(tiny_variant(device="cuda", **extra)).unwrapped, warn=True)
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.sim_state.params.device.type == "cuda"
    assert all(isinstance(value, np.ndarray) for value in obs.values())


def test_make_by_id_and_by_module_prefixed_id():
    for env_id in (ENV_ID, f"greengossip:{ENV_ID}"):
        env = gym.make(env_id, config=TINY)
        obs, _ = env.reset(seed=0)
        assert env.unwrapped.n_nodes == 8
        assert env.observation_space.contains(obs)


def test_make_without_config_builds_the_default_scenario():
    env = gym.make(ENV_ID)
    assert env.unwrapped.n_nodes == 32
    assert env.action_space.shape == (32,)


# ---------------------------------------------------------------------------------------------- flat wrapper
def test_flat_id_passes_checkers_and_keeps_action_masks():
    env = gym.make(FLAT_ENV_ID, config=TINY)
    assert isinstance(env.observation_space, gym.spaces.Box) and len(env.observation_space.shape) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "different from the unwrapped version": wrapped on purpose
        gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    env.reset(seed=1)
    mask = env.get_wrapper_attr("action_masks")()
    assert mask.shape == (8, N_ACTIONS) and mask.dtype == bool
    np.testing.assert_array_equal(mask, env.unwrapped.action_masks())


def test_flat_wrapper_action_masks_reach_maskable_ppo():
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
    from stable_baselines3.common.vec_env import DummyVecEnv

    wrapper = FlattenGossipObservation(make_env())
    wrapper.reset(seed=2)
    assert wrapper.action_masks().shape == (8, N_ACTIONS)
    vec = DummyVecEnv([lambda: FlattenGossipObservation(make_env())])
    vec.reset()
    assert is_masking_supported(vec)
    assert get_action_masks(vec).reshape(1, 8, N_ACTIONS).shape == (1, 8, N_ACTIONS)


# ---------------------------------------------------------------------------------------------- state
def test_pickled_env_continues_identically():
    env = make_env()
    env.reset(seed=5)
    env.step(all_nodes(env, 2))
    clone = pickle.loads(pickle.dumps(env))
    rng = np.random.default_rng(0)
    for _ in range(3):
        action = rng.integers(0, N_ACTIONS, 8)
        obs_a, reward_a, *_ = env.step(action)
        obs_b, reward_b, *_ = clone.step(action)
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        assert reward_a == reward_b


def test_observations_stay_inside_observation_space_over_random_rollout():
    env = make_env()
    env.action_space.seed(3)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    for _ in range(25):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        for key, space in env.observation_space.spaces.items():
            assert space.contains(obs[key]), f"obs[{key!r}] left its space: {obs[key]}"
        if terminated or truncated:
            obs, _ = env.reset()


def test_action_masks_shape_idle_always_allowed_and_masked_choices_drop_out():
    # low initial charge so that some actions are unaffordable
    env = make_env(tiny_variant(energy__initial_soc_low=0.05, energy__initial_soc_high=0.15))
    env.reset(seed=4)
    saw_masked = False
    for _ in range(12):
        mask = env.unwrapped.action_masks()
        assert mask.shape == (8, N_ACTIONS) and mask.dtype == bool
        assert mask[:, IDLE].all()
        saw_masked |= not mask.all()
        # choose the most expensive action everywhere; the masked ones must be reported as drop-outs
        wanted = all_nodes(env, 2)
        _, _, terminated, truncated, info = env.step(wanted)
        assert info["dropped_nodes"] == int((~mask[:, 2]).sum())
        if terminated or truncated:
            break
    assert saw_masked, "the low-battery scenario never masked an action; the test lost its point"


def test_allowed_actions_never_drop_out():
    env = make_env(tiny_variant(energy__initial_soc_low=0.05, energy__initial_soc_high=0.2))
    env.reset(seed=6)
    rng = np.random.default_rng(6)
    saw_masked = False
    for _ in range(12):
        mask = env.unwrapped.action_masks()
        saw_masked |= not mask.all()
        action = np.array([rng.choice(np.flatnonzero(row)) for row in mask])
        *_, terminated, truncated, info = env.step(action)
        assert info["dropped_nodes"] == 0
        if terminated or truncated:
            break
    assert saw_masked, "nothing was ever masked: the test lost its point"


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("action", "pattern"),
    [
        (np.zeros(7, dtype=np.int64), r"shape \(8,\)"),
        (np.zeros((8, 1), dtype=np.int64), r"shape \(8,\)"),
        (np.full(8, N_ACTIONS), rf"0\.\.{N_ACTIONS - 1}"),
        (np.full(8, -1), rf"0\.\.{N_ACTIONS - 1}"),
        (np.full(8, 0.5), rf"0\.\.{N_ACTIONS - 1}"),
    ],
    ids=["too-short", "2-d", "code-too-large", "negative", "fractional"],
)
def test_bad_action_raises_value_error_naming_allowed_range(action, pattern):
    env = make_env().unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=pattern):
        env.step(action)


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        make_env().unwrapped.step(np.zeros(8, dtype=np.int64))


def test_render_modes():
    env = make_env(render_mode="ansi")
    env.reset(seed=0)
    env.step(all_nodes(env, 2))
    text = env.render()
    assert isinstance(text, str) and "acc" in text
    env = make_env(render_mode="rgb_array")
    env.reset(seed=0)
    env.step(all_nodes(env, 3))
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] > 10 and frame.shape[1] > 10
    assert frame.std() > 0  # something was drawn


def test_bad_render_mode_raises():
    with pytest.raises(ValueError, match="render_mode"):
        make_env(render_mode="human3d").unwrapped  # noqa: B018


# ---------------------------------------------------------------------------------------------- info & reward
def _check_step_info(env, info, reward):
    missing = [key for key in STEP_KEYS if key not in info]
    assert not missing, f"info lacks {missing}"
    assert set(info["reward_components"]) == set(COMPONENTS)
    weights = env.unwrapped.config.reward
    expected = sum(getattr(weights, name) * value for name, value in info["reward_components"].items())
    assert reward == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert isinstance(info["participants"], int) and isinstance(info["dropped_nodes"], int)
    assert 0 <= info["participants"] <= env.unwrapped.n_nodes


def test_info_keys_and_reward_over_an_episode_that_reaches_the_target():
    env = make_env()
    env.reset(seed=1)
    for _ in range(env.unwrapped.config.max_rounds):
        _, reward, terminated, truncated, info = env.step(all_nodes(env, 2))
        _check_step_info(env, info, reward)
        if terminated or truncated:
            break
    assert terminated, "all-full training on tiny should reach the target"
    for key in EPISODE_KEYS:
        assert key in info
    assert info["rounds_to_target"] == int(env.unwrapped.sim_state.round[0])
    assert info["reward_components"]["deadline"] == 1.0


def test_info_on_truncation_reports_missed_target_and_deadline_penalty():
    env = make_env(tiny_variant(max_rounds=5))
    env.reset(seed=2)
    for step in range(5):
        _, reward, terminated, truncated, info = env.step(all_nodes(env, IDLE))
        _check_step_info(env, info, reward)
        assert not terminated
        assert truncated == (step == 4)
    for key in EPISODE_KEYS:
        assert key in info
    assert info["rounds_to_target"] is None
    assert info["reward_components"]["deadline"] < 0
    assert info["episode_energy_wh"] > 0
    # the traces end at the deadline: another round is refused with a message, then reset starts afresh
    with pytest.raises(RuntimeError, match="episode ended at round 5.*call reset"):
        env.unwrapped.step(all_nodes(env, IDLE))
    env.reset(seed=2)
    assert not env.step(all_nodes(env, IDLE))[3]


def test_model_lag_measures_what_the_neighbours_copy_is_missing():
    """``model_lag`` = ||x - x̂|| / ||x|| per node: 0 at reset (the public copies start equal), grows when
    nodes train without broadcasting, and a full broadcast (then mixing) leaves less than silence does."""
    import torch

    from greengossip.agents.base import SEND_FULL, TRAIN
    from greengossip.envs.observation import NODE_INDEX

    env = make_env()
    obs, _ = env.reset(seed=4)
    column = NODE_INDEX["model_lag"]
    np.testing.assert_array_equal(obs["nodes"][:, column], 0.0)
    n = env.unwrapped.n_nodes
    for _ in range(3):
        obs, *_ = env.step(np.full(n, TRAIN))
    state = env.unwrapped.sim_state
    expected = (torch.linalg.vector_norm(state.params - state.public, dim=1)
                / torch.linalg.vector_norm(state.params, dim=1)).numpy()
    np.testing.assert_allclose(obs["nodes"][:, column], np.clip(expected, 0, 2), rtol=1e-5)
    silent = obs["nodes"][:, column].copy()
    assert (silent > 0).all()
    sent = obs["action_mask"][:, SEND_FULL] > 0.5
    obs, *_ = env.step(np.where(sent, SEND_FULL, TRAIN))
    assert sent.any() and (obs["nodes"][sent, column] < silent[sent]).mean() > 0.5
