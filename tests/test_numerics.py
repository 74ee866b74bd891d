"""Huge attack magnitudes never reach the reward as NaN; non-finite state is counted in ``info`` and raised
with ``check_finite``, never hidden."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from greengossip.envs.gossip_env import EdgeLearningEnv
from greengossip.envs.numerics import PARAM_LIMIT
from greengossip.envs.vector_env import EdgeLearningVectorEnv

N = 8


def _attacked(aggregator: str, kind: str, rounds: int) -> dict:
    return {"n_nodes": N, "max_rounds": rounds, "target_accuracy": 1.0,
            "attack": {"fraction": 0.25, "kinds": [kind], "gaussian_std": 1e6, "ipm_epsilon": 1e6},
            "defence": {"aggregator": aggregator}}


def _play(config: dict, seed: int = 0) -> tuple[list[float], list[dict], EdgeLearningEnv]:
    env = EdgeLearningEnv(config=config)
    env.reset(seed=seed)
    rewards, infos = [], []
    done = False
    while not done:
        _, reward, terminated, truncated, info = env.step(np.full(N, 2))
        rewards.append(reward)
        infos.append(info)
        done = terminated or truncated
    return rewards, infos, env


@pytest.mark.parametrize("aggregator, kind", [("mean", "gaussian"), ("clipped_gossip", "gaussian"),
                                              ("mean", "ipm"), ("clipped_gossip", "ipm"), ("trimmed_mean", "ipm")])
def test_largest_attack_magnitudes_keep_reward_and_kpis_finite(aggregator, kind):
    # ipm with epsilon 1e6 under the mean multiplies the honest models by about -1e5 a round: unbounded,
    # they overflow float32 within a dozen rounds
    rewards, infos, env = _play(_attacked(aggregator, kind, 40))
    assert np.isfinite(rewards).all()
    assert all(np.isfinite(info["consensus_distance"]) and np.isfinite(info["accuracy"]) for info in infos)
    assert all(info["nonfinite_values"] == 0 for info in infos)
    params = env.sim_state.params[env.scenario.honest]
    assert torch.isfinite(params).all() and params.abs().max() <= PARAM_LIMIT


def test_nonfinite_state_is_counted_in_info_not_hidden():
    env = EdgeLearningEnv(config={"n_nodes": N, "max_rounds": 5})
    env.reset(seed=0)
    assert env.step(np.ones(N, dtype=np.int64))[4]["nonfinite_values"] == 0
    state = env.sim_state
    battery = state.battery_wh.clone()
    battery[0] = float("nan")
    env._fleet.state = state.replace(battery_wh=battery)
    obs, reward, *_, info = env.step(np.zeros(N, dtype=np.int64))
    assert info["nonfinite_values"] > 0
    assert env.observation_space.contains(obs)  # the observation stays in its space; the count tells


def test_check_finite_raises_naming_the_quantity():
    env = EdgeLearningEnv(config={"n_nodes": N, "max_rounds": 5}, check_finite=True)
    env.reset(seed=0)
    env.step(np.ones(N, dtype=np.int64))  # finite: nothing raised
    loss = env.sim_state.local_loss.clone()
    loss[1] = float("inf")
    env._fleet.state = env.sim_state.replace(local_loss=loss)
    with pytest.raises(FloatingPointError, match=r"non-finite values after round 2: .*local_loss"):
        env.step(np.zeros(N, dtype=np.int64))


def test_vector_env_counts_and_raises_per_environment():
    env = EdgeLearningVectorEnv(num_envs=2, config={"n_nodes": N, "max_rounds": 5}, check_finite=True)
    env.reset(seed=0)
    info = env.step(np.ones((2, N), dtype=np.int64))[4]
    assert (info["nonfinite_values"] == 0).all()
    fleet = env.fleet
    battery = fleet.state.battery_wh.clone()
    battery[N + 2] = float("nan")  # a node of the second environment
    fleet.state = fleet.state.replace(battery_wh=battery)
    with pytest.raises(FloatingPointError, match=r"env\(s\) \[1\]"):
        env.step(np.zeros((2, N), dtype=np.int64))
