"""The env in other libraries' hands: the masked path through Gymnasium 1.x wrappers, the flat id's vector
entry point, PettingZoo's render test, and the documented spaces checked against the code."""

from __future__ import annotations

import functools
import re

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.vec_env import DummyVecEnv

from greengossip.envs import multi_agent
from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.multi_agent import LOCAL_OBS_DIM
from greengossip.envs.observation import GLOBAL_FEATURES, NODE_FEATURES
from greengossip.envs.wrappers import FlattenGossipVectorObservation
from tests.conftest import ENV_ID, FLAT_ENV_ID, ROOT


def _idle_only(env: gym.Env) -> np.ndarray:
    masks = np.zeros_like(env.unwrapped.action_masks())
    masks[:, 0] = True
    return masks


@pytest.mark.parametrize("env_id", [ENV_ID, FLAT_ENV_ID])
def test_the_masks_reach_maskable_ppo_through_gym_make_s_wrappers(env_id):
    env = gym.make(env_id, config="tiny")
    env.reset(seed=3)
    masks = env.unwrapped.action_masks()
    assert masks.shape == (env.unwrapped.n_nodes, N_ACTIONS) and masks.dtype == bool
    np.testing.assert_array_equal(env.get_wrapper_attr("action_masks")(), masks)
    # SB3's vector env asks each env for get_wrapper_attr("action_masks"), so gym.make's env works as it is
    vec = DummyVecEnv([lambda: env])
    vec.reset()
    np.testing.assert_array_equal(get_action_masks(vec).reshape(masks.shape), masks)
    # sb3-contrib's ActionMasker puts its own function in front: here one that allows idling only
    masked = DummyVecEnv([lambda: ActionMasker(gym.make(env_id, config="tiny"), _idle_only)])
    observation = masked.reset()
    assert get_action_masks(masked).reshape(masks.shape)[:, 1:].sum() == 0
    policy = "MultiInputPolicy" if env_id == ENV_ID else "MlpPolicy"
    model = MaskablePPO(policy, masked, n_steps=16, batch_size=16, n_epochs=1, seed=0).learn(16)
    action, _ = model.predict(observation, action_masks=get_action_masks(masked), deterministic=False)
    assert (action == 0).all()


def test_the_flat_id_s_vector_entry_point_flattens_each_env_as_the_single_env_does():
    vec = gym.make_vec(FLAT_ENV_ID, num_envs=2, config="tiny")
    assert isinstance(vec, FlattenGossipVectorObservation)
    observations, _ = vec.reset(seed=5)
    assert observations.shape == (2, *vec.single_observation_space.shape)
    assert vec.observation_space.contains(observations)
    for index in range(2):
        single, _ = gym.make(FLAT_ENV_ID, config="tiny").reset(seed=5 + index)
        np.testing.assert_array_equal(observations[index], single)
    assert vec.action_masks().shape == (2, vec.unwrapped.n_nodes, N_ACTIONS)
    for _ in range(200):  # idle until an episode ends at its deadline: the finished one's last observation
        _, _, terminated, truncated, infos = vec.step(np.zeros(vec.action_space.shape, dtype=np.int64))
        if (terminated | truncated).any():
            break
    done = np.flatnonzero(terminated | truncated)
    assert done.size and all(infos["final_obs"][i].shape == vec.single_observation_space.shape for i in done)
    vec.close()


def test_pettingzoo_render_test_passes_and_human_mode_prints_the_round(capsys):
    from pettingzoo.test import render_test

    render_test(functools.partial(multi_agent.env, config="tiny"))
    env = multi_agent.parallel_env(config="tiny", render_mode="human")
    env.reset(seed=0)
    env.step({agent: 0 for agent in env.agents})
    assert env.render() is None and "round" in capsys.readouterr().out
    with pytest.raises(ValueError, match="render_mode='video'.*allowed"):
        multi_agent.parallel_env(config="tiny", render_mode="video")


# What the docs say each space is, by pattern; every pattern must be found somewhere, so that a rewording
# that drops a shape from the docs fails here instead of passing unchecked.
DOCUMENTED_SHAPES = {
    r"MultiDiscrete\(\[(\d+)\] \* N\)": N_ACTIONS,
    r"(?<!Multi)Discrete\((\d+)\)": N_ACTIONS,
    r"action_masks?(?:\(\))?`*\)?\s*(?:=|\||`)?\s*`?\(N, (\d+)\)": N_ACTIONS,
    r"nodes`*\s*(?:=|\|)?\s*`?\(N, (\d+)\)": len(NODE_FEATURES),
    r"\(N, (\d+)\)`? node features": len(NODE_FEATURES),
    r"global`*\s*(?:=|\|)?\s*`?\((\d+),\)": len(GLOBAL_FEATURES),
    r"Box\((\d+),\)": LOCAL_OBS_DIM,
    r"the node's own (\d+) features": len(NODE_FEATURES),
}
DOCUMENTED_IN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "envs" / "gossip_env.py",
                 ROOT / "envs" / "multi_agent.py", ROOT / "envs" / "wrappers.py"]


def test_every_documented_space_shape_is_the_code_s():
    found = dict.fromkeys(DOCUMENTED_SHAPES, 0)
    wrong = []
    for path in DOCUMENTED_IN:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, expected in DOCUMENTED_SHAPES.items():
                for match in re.finditer(pattern, line):
                    found[pattern] += 1
                    if int(match.group(1)) != expected:
                        wrong.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r}, the code has {expected}")
    assert not wrong, "documented shapes that differ from the code:\n" + "\n".join(wrong)
    assert all(found.values()), f"patterns no longer found in the docs: {[p for p, n in found.items() if not n]}"


def test_the_readme_lists_every_heuristic():
    from greengossip.agents.heuristics import HEURISTICS

    text = (ROOT / "README.md").read_text()
    listed = text[text.index("Heuristics: "):].split("\n\n", 1)[0]
    missing = [name for name in HEURISTICS if f"`{name}`" not in listed]
    assert not missing, f"README's list of heuristics leaves out {missing}"
