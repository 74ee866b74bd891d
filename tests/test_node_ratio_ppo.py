"""MaskablePPO with one clipped ratio per node (agents/node_ratio_ppo.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from sb3_contrib import MaskablePPO

from greengossip.agents.node_ratio_ppo import NodeRatioMaskablePPO
from greengossip.agents.policies import MaskableNodeSetPolicy, algorithm_class, detect_algorithm
from tests.conftest import make_env

SMALL = dict(features_extractor_kwargs=dict(hidden=16), net_arch=dict(pi=[16], vf=[16]), prior="carbon_periodic",
             prior_regulariser="cross_entropy")


def _model(cls, n_epochs: int):
    return cls(MaskableNodeSetPolicy, make_env(), seed=0, n_steps=16, batch_size=16, n_epochs=n_epochs,
               learning_rate=0.01, clip_range=0.2, ent_coef=0.01, policy_kwargs=SMALL)


def _parameters(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


def test_node_log_probabilities_sum_to_the_fleet_log_probability():
    model = _model(NodeRatioMaskablePPO, 1)
    env = model.get_env()
    obs = {key: th.as_tensor(value) for key, value in env.reset().items()}
    actions = th.as_tensor(env.action_space.sample()[None])
    masks = th.as_tensor(np.stack(env.env_method("action_masks")))
    with th.no_grad():
        _, per_node, _ = model.policy.evaluate_actions(obs, actions, action_masks=masks, per_node=True)
        _, joint, _ = model.policy.evaluate_actions(obs, actions, action_masks=masks)
    assert per_node.shape == (1, make_env().unwrapped.n_nodes)
    th.testing.assert_close(per_node.sum(dim=1), joint)


def test_first_update_equals_ppo_and_later_ones_differ():
    """Where every ratio is 1 (one minibatch, one epoch) the per-node surrogate's gradient is PPO's; from
    the second pass on the ratios differ from 1 and the two objectives part."""
    start = _parameters(_model(MaskablePPO, 1))
    one = {cls: _model(cls, 1).learn(16) for cls in (MaskablePPO, NodeRatioMaskablePPO)}
    moved = _parameters(one[MaskablePPO])
    assert not th.allclose(moved, start)
    th.testing.assert_close(_parameters(one[NodeRatioMaskablePPO]), moved, rtol=1e-5, atol=1e-6)
    three = {cls: _model(cls, 3).learn(16) for cls in (MaskablePPO, NodeRatioMaskablePPO)}
    assert not th.allclose(_parameters(three[MaskablePPO]), _parameters(three[NodeRatioMaskablePPO]))


def test_per_node_ratio_is_chosen_in_the_settings_and_saves_as_maskable_ppo(tmp_path):
    from greengossip.training.builders import new_model
    from greengossip.training.settings import SettingsError, load_settings

    settings = load_settings("tiny", maskable_ppo={"ratio": "per_node"})
    assert settings.ratio == "per_node"
    model = new_model(settings, make_env())
    assert type(model) is NodeRatioMaskablePPO
    path = tmp_path / "model.zip"
    model.save(path)
    assert detect_algorithm(path) == "maskable_ppo"
    assert type(MaskablePPO.load(path)) is MaskablePPO
    assert load_settings("tiny").ratio == "joint"
    with pytest.raises(SettingsError, match="ratio"):
        load_settings("tiny", maskable_ppo={"ratio": "sideways"})
    with pytest.raises(SettingsError, match="ppo.ratio: per_node is for maskable_ppo"):
        load_settings("tiny", algo="ppo", ppo={"ratio": "per_node"})
    with pytest.raises(ValueError, match="per_node is for maskable_ppo, not a2c"):
        algorithm_class("a2c", "per_node")
    with pytest.raises(ValueError, match="allowed: joint, per_node"):
        algorithm_class("maskable_ppo", "sideways")


def test_behaviour_log_probabilities_are_the_rollout_s_own_per_node():
    """The per-node log-probabilities computed once at the update's start sum, state by state, to the joint
    log-probability the rollout recorded when it acted."""
    model = _model(NodeRatioMaskablePPO, 1)
    _, callback = model._setup_learn(16, callback=None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    buffer = model.rollout_buffer
    size = buffer.buffer_size * buffer.n_envs
    per_node = model._behaviour_log_prob(buffer, size)
    assert per_node.shape == (size, make_env().unwrapped.n_nodes)
    th.testing.assert_close(per_node.sum(dim=1), th.as_tensor(buffer.log_probs).flatten().float(),
                            rtol=1e-5, atol=1e-5)
