"""``reset(seed, options={"luck": k})``: the same world under other random streams."""

from __future__ import annotations

import numpy as np
import pytest

from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.vector_env import EdgeLearningVectorEnv
from greengossip.training.rollout import play_episode
from tests.conftest import TINY

ATTACKED = {"n_nodes": 8, "max_rounds": 6, "attack": {"fraction": 0.25, "kinds": ["gaussian"]},
            "privacy": {"mechanism": "laplace"}}


def _episode(luck: int | None, rounds: int = 6) -> tuple[EdgeLearningEnv, list[np.ndarray], list[float]]:
    env = EdgeLearningEnv(config=ATTACKED)
    obs, _ = env.reset(seed=5, options=None if luck is None else {"luck": luck})
    seen, accuracy = [obs["nodes"].copy()], []
    for _ in range(rounds):
        obs, _, terminated, truncated, info = env.step(np.full(env.n_nodes, 2))
        seen.append(obs["nodes"].copy())
        accuracy.append(info["accuracy"])
        if terminated or truncated:
            break
    return env, seen, accuracy


def test_luck_keeps_the_world_and_redraws_the_rounds():
    plain, plain_seen, plain_accuracy = _episode(None)
    lucky, lucky_seen, lucky_accuracy = _episode(1)
    world, other = plain.unwrapped._fleet.scenario, lucky.unwrapped._fleet.scenario
    assert sorted(world.graph.edges()) == sorted(other.graph.edges())
    for name in ("attack_kind", "shards", "available", "start_utc_hour"):
        assert np.array_equal(np.asarray(getattr(world, name)), np.asarray(getattr(other, name))), name
    assert int(world.stream_key[0]) != int(other.stream_key[0])
    assert plain_accuracy != lucky_accuracy  # other initial weights and minibatches
    assert not all(np.array_equal(a, b) for a, b in zip(plain_seen, lucky_seen))  # other telemetry noise


def test_luck_zero_is_the_plain_reset_and_a_luck_replays_itself():
    _, plain_seen, plain_accuracy = _episode(None)
    _, zero_seen, zero_accuracy = _episode(0)
    assert zero_accuracy == plain_accuracy and all(np.array_equal(a, b) for a, b in zip(plain_seen, zero_seen))
    _, once, once_accuracy = _episode(2)
    _, again, again_accuracy = _episode(2)
    assert once_accuracy == again_accuracy and all(np.array_equal(a, b) for a, b in zip(once, again))
    assert once_accuracy != _episode(3)[2]


@pytest.mark.parametrize("luck", [-1, 1.5, True, "1", None, [1]])
def test_a_bad_luck_is_refused_by_name(luck):
    env = EdgeLearningEnv(config=TINY)
    with pytest.raises(ValueError, match=r"luck must be a whole number >= 0"):
        env.reset(seed=0, options={"luck": luck})


def test_the_vector_env_refuses_luck_rather_than_ignore_it():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['luck'\]"):
        EdgeLearningVectorEnv(num_envs=2, config=TINY).reset(seed=0, options={"luck": 1})


def test_play_episode_passes_its_luck_to_reset():
    class Recorder:
        def __init__(self):
            self.env = EdgeLearningEnv(config=TINY)
            self.options = []

        def __getattr__(self, name):
            return getattr(self.env, name)

        def reset(self, seed=None, options=None):
            self.options.append(options)
            return self.env.reset(seed=seed, options=options)

    class Idle:
        def predict(self, observation, state=None, episode_start=None, deterministic=True):
            return np.zeros(len(observation["nodes"]), dtype=np.int64), state

    env = Recorder()
    play_episode(Idle(), env, seed=0, max_steps=1)
    play_episode(Idle(), env, seed=0, max_steps=1, luck=4)
    assert env.options == [None, {"luck": 4}]


def test_the_pettingzoo_env_passes_luck_to_its_fleet():
    from greengossip.envs.multi_agent import parallel_env

    keys = []
    for luck in (0, 1):
        env = parallel_env(config=TINY)
        env.reset(seed=5, options={"luck": luck})
        keys.append(int(env._env.scenario.stream_key[0]))
    assert keys[0] != keys[1]
