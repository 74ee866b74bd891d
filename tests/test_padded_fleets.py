"""Training over several fleet sizes at once: observations padded with absent nodes
(``envs.observation.padded_observation``, ``GossipVecEnv(pad_to=...)``, ``suite.fleet_sizes: drawn``),
and a node-set policy that leaves absent nodes out."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from sb3_contrib import MaskablePPO

from greengossip.agents.policies import MaskableNodeSetPolicy
from greengossip.envs.observation import padded_observation
from greengossip.envs.sb3_vec_env import GossipVecEnv
from greengossip.training.settings import SettingsError, load_settings
from greengossip.training.suite import SPLITS
from greengossip.training.suite_envs import SuiteVecEnv, suite_validation_envs
from tests.conftest import tiny_variant

SMALL = dict(features_extractor_kwargs=dict(hidden=16, message_passing=0), net_arch=dict(pi=[16], vf=[16]),
             prior="carbon_periodic:period=1,trust_threshold=0", prior_weight=1.5,
             prior_regulariser="cross_entropy")


def _tensors(obs: dict[str, np.ndarray]) -> dict[str, th.Tensor]:
    return {key: th.as_tensor(value) for key, value in obs.items()}


def test_padding_appends_absent_nodes_and_refuses_a_larger_fleet():
    obs = {"nodes": np.ones((2, 3, 4), np.float32), "global": np.ones((2, 5), np.float32),
           "action_mask": np.ones((2, 3, 6), np.float32), "adjacency": np.ones((2, 3, 3), np.float32)}
    padded = padded_observation(obs, 7)
    assert padded["nodes"].shape == (2, 7, 4) and padded["action_mask"].shape == (2, 7, 6)
    assert padded["adjacency"].shape == (2, 7, 7) and padded["global"] is obs["global"]
    assert (padded["nodes"][:, 3:] == 0).all() and (padded["action_mask"][:, 3:] == 0).all()
    assert (padded["action_mask"][:, :3] == 1).all()
    single = padded_observation({key: value[0] for key, value in obs.items()}, 5, batched=False)
    assert single["nodes"].shape == (5, 4)
    with pytest.raises(ValueError, match="a fleet of 3 nodes does not fit an observation padded to 2"):
        padded_observation(obs, 2)


def _mixed_sizes(pad_to: int | None = 9) -> GossipVecEnv:
    configs = [tiny_variant(n_nodes=n, observation__adjacency=False) for n in (6, 9)]
    return GossipVecEnv(2, config=configs, seed=5, pad_to=pad_to)


def test_a_padded_vec_env_steps_each_fleet_on_its_own_nodes_like_an_unpadded_one():
    padded = _mixed_sizes()
    alone = GossipVecEnv(1, config=tiny_variant(n_nodes=6, observation__adjacency=False), seed=5)
    assert padded.observation_space["nodes"].shape[0] == 9 and padded.action_space.shape == (9,)
    obs, reference = padded.reset(), alone.reset()
    np.testing.assert_array_equal(obs["nodes"][0, :6], reference["nodes"][0])
    masks = padded.action_masks().reshape(2, 9, -1)
    assert (masks[0, 6:] == 0).all() and (masks[0, :6].sum(-1) > 0).all() and (masks[1].sum(-1) > 0).all()
    rng = np.random.default_rng(0)
    for _ in range(200):
        actions = rng.integers(0, 3, size=(2, 9))
        obs, rewards, dones, infos = padded.step(actions)
        reference, reference_rewards, reference_dones, reference_infos = alone.step(actions[:1, :6])
        np.testing.assert_allclose(rewards[0], reference_rewards[0], rtol=1e-6)
        assert dones[0] == reference_dones[0]
        if dones[0]:
            terminal = infos[0]["terminal_observation"]
            assert terminal["nodes"].shape == (9, obs["nodes"].shape[-1]) and (terminal["action_mask"][6:] == 0).all()
            np.testing.assert_array_equal(terminal["nodes"][:6], reference_infos[0]["terminal_observation"]["nodes"])
            break
        np.testing.assert_array_equal(obs["nodes"][0, :6], reference["nodes"][0])
        assert (obs["nodes"][0, 6:] == 0).all()
    assert dones[0]
    with pytest.raises(ValueError, match=r"must have the same observation and action spaces \(n_nodes 6 vs 9"):
        _mixed_sizes(pad_to=None)
    with pytest.raises(ValueError, match=r"pad_to \(8\) must be at least every scenario's n_nodes \(got 9\)"):
        _mixed_sizes(pad_to=8)
    for env in (padded, alone):
        env.close()


def test_the_policy_leaves_absent_nodes_out():
    """Padding a fleet changes neither the real nodes' action distribution nor the value; the absent
    nodes' actions have one fixed log-probability, so they cancel in PPO's ratio."""
    padded = _mixed_sizes()
    model = MaskablePPO(MaskableNodeSetPolicy, padded, seed=0, n_steps=8, batch_size=8, policy_kwargs=SMALL)
    policy = model.policy
    obs = padded.reset()
    small = {key: value[:1, :6] if key in ("nodes", "action_mask") else value[:1] for key, value in obs.items()}
    with th.no_grad():
        # the trained weights are random: give the context a visible effect on the logits and the value
        for parameter in policy.parameters():
            parameter.add_(th.randn_like(parameter) * 0.3)
        full = policy.get_distribution(_tensors(obs)).distribution.logits[0]
        policy.resize(6)
        alone = policy.get_distribution(_tensors(small)).distribution.logits[0]
        value_alone = policy.predict_values(_tensors(small))
        policy.resize(9)
        value_full = policy.predict_values(_tensors(obs))
        th.testing.assert_close(full[:6], alone)
        th.testing.assert_close(value_full[0], value_alone[0])
        actions = th.as_tensor(padded.action_space.sample()[None].repeat(2, 0))
        node_log_prob = policy.get_distribution(_tensors(obs)).node_log_prob(actions)
    th.testing.assert_close(node_log_prob[0, 6:], th.full((3,), -np.log(full.shape[-1])))
    model.learn(16)  # PPO trains on the padded batches
    padded.close()


def test_drawn_fleet_sizes_keep_each_seed_s_size_up_to_max_nodes():
    settings = load_settings("suite", suite={"families": ["solar_sensor_field", "large_network"],
                                             "fleet_sizes": "drawn", "max_nodes": 40})
    suite = settings.suite
    assert suite.pad_to == 40 and suite.training_size(1024) == 40 and suite.training_size(17) == 17
    assert load_settings("suite").suite.pad_to is None
    env = SuiteVecEnv(4, suite, seed=1)
    sizes = {family: [] for family in suite.family_names}
    for (family, seed), venv in zip(env.scenarios, env.venvs):
        assert seed in SPLITS["train"]
        sizes[family].append(venv.n_nodes)
    assert all(n == 40 for n in sizes["large_network"])
    assert all(16 <= n <= 40 for n in sizes["solar_sensor_field"])
    obs = env.reset()
    assert obs["nodes"].shape[:2] == (4, 40)
    for slot, venv in enumerate(env.venvs):
        assert (obs["action_mask"][slot, venv.n_nodes:] == 0).all()
    env.close()
    validation = suite_validation_envs(suite, [10_000, 10_001])["solar_sensor_field"]
    assert validation.observation_space["nodes"].shape[0] == 40
    assert [venv.n_nodes for venv in validation.venvs] == [min(40, n) for n in (40, 46)]
    validation.close()


def test_a_bad_fleet_sizes_setting_names_the_field_and_the_choices():
    with pytest.raises(SettingsError, match=r"suite\.fleet_sizes.*'fixed' or 'drawn'"):
        load_settings("suite", suite={"fleet_sizes": "random"})
