"""The node-set policies: one set of weights for any fleet size, masks respected, permutation symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from sb3_contrib import MaskablePPO

from greengossip.agents.policies import (
    MaskableNodeSetPolicy,
    NodeSetPolicy,
    RecurrentNodeSetPolicy,
    algorithm_class,
    detect_algorithm,
    load_for_nodes,
    load_policy,
    policy_class,
)
from greengossip.envs.dynamics.energy import N_ACTIONS
from tests.conftest import make_env, tiny_variant

POLICIES = [MaskableNodeSetPolicy, NodeSetPolicy, RecurrentNodeSetPolicy]


def _constant_lr(_progress: float) -> float:
    return 3e-4


SMALL = dict(features_extractor_kwargs=dict(hidden=16), net_arch=dict(pi=[16], vf=[16]))


def _policy(cls, env, seed: int = 0):
    th.manual_seed(seed)
    kwargs = dict(SMALL, lstm_hidden_size=16) if cls is RecurrentNodeSetPolicy else SMALL
    return cls(env.observation_space, env.action_space, _constant_lr, **kwargs)


def _batch(obs: dict[str, np.ndarray]) -> dict[str, th.Tensor]:
    return {key: th.as_tensor(value, dtype=th.float32)[None] for key, value in obs.items()}


@pytest.fixture(scope="module")
def envs_8_and_32():
    small, large = make_env(), make_env(tiny_variant(n_nodes=32))
    yield small, large
    small.close()
    large.close()


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__name__)
def test_same_weights_give_n_times_k_logits_for_8_and_32_nodes(cls, envs_8_and_32):
    small, large = envs_8_and_32
    policy = _policy(cls, small)
    for env in (small, large):
        obs, _ = env.reset(seed=3)
        with th.no_grad():
            logits = policy.node_logits(_batch(obs))
        assert logits.shape == (1, env.unwrapped.n_nodes * N_ACTIONS)
        action, _ = policy.predict(obs, deterministic=True)
        assert action.shape == (env.unwrapped.n_nodes,)
        assert env.action_space.contains(action)


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__name__)
def test_no_parameter_shape_depends_on_the_number_of_nodes(cls, envs_8_and_32):
    small, large = envs_8_and_32
    shapes_small = {k: v.shape for k, v in _policy(cls, small).state_dict().items()}
    shapes_large = {k: v.shape for k, v in _policy(cls, large).state_dict().items()}
    assert shapes_small == shapes_large


@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__name__)
def test_masked_actions_are_never_chosen(cls, envs_8_and_32):
    small, _ = envs_8_and_32
    policy = _policy(cls, small)
    obs, _ = small.reset(seed=0)
    rng = np.random.default_rng(0)
    n = small.unwrapped.n_nodes
    batch = 64
    masks = rng.random((batch, n, N_ACTIONS)) < 0.4
    masks[..., 0] = True  # idle is always allowed by the env
    tensors = {
        key: th.as_tensor(np.repeat(value[None], batch, 0), dtype=th.float32) for key, value in obs.items()
    }
    tensors["action_mask"] = th.as_tensor(masks, dtype=th.float32)
    with th.no_grad():
        for _ in range(5):  # stochastic sampling, and the mode
            if cls is RecurrentNodeSetPolicy:
                zeros = th.zeros((1, batch, 16))
                dist, _ = policy.get_distribution(tensors, (zeros, zeros), th.ones(batch))
            else:
                dist = policy.get_distribution(tensors)
            for actions in (dist.sample(), dist.mode()):
                chosen = np.take_along_axis(masks, actions.numpy()[..., None], axis=-1)
                assert chosen.all()


def test_permuting_nodes_permutes_logits_and_keeps_the_value(envs_8_and_32):
    small, _ = envs_8_and_32
    policy = _policy(MaskableNodeSetPolicy, small)
    obs, _ = small.reset(seed=1)
    perm = np.random.default_rng(1).permutation(small.unwrapped.n_nodes)
    permuted = dict(
        obs,
        nodes=obs["nodes"][perm],
        action_mask=obs["action_mask"][perm],
        adjacency=obs["adjacency"][perm][:, perm],
    )
    with th.no_grad():
        logits = policy.node_logits(_batch(obs)).reshape(-1, N_ACTIONS)
        logits_p = policy.node_logits(_batch(permuted)).reshape(-1, N_ACTIONS)
        value, value_p = policy.predict_values(_batch(obs)), policy.predict_values(_batch(permuted))
    th.testing.assert_close(logits[perm], logits_p)
    th.testing.assert_close(value, value_p)


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo", "a2c", "recurrent_ppo"])
def test_saved_model_loads_and_acts_on_four_times_the_nodes(algo, tmp_path, envs_8_and_32):
    small, large = envs_8_and_32
    kwargs = dict(n_steps=16, batch_size=16, n_epochs=1) if algo != "a2c" else dict(n_steps=16)
    policy_kwargs = dict(SMALL, lstm_hidden_size=16) if algo == "recurrent_ppo" else SMALL
    model = algorithm_class(algo)(policy_class(algo), small, seed=0, policy_kwargs=policy_kwargs, **kwargs)
    model.learn(16)
    path = tmp_path / f"{algo}.zip"
    model.save(path)
    assert detect_algorithm(path) == algo

    # a full model on the big env (to evaluate or go on training) ...
    big = load_for_nodes(path, large)
    obs, _ = large.reset(seed=2)
    state, start = None, np.ones(1, dtype=bool)
    for _ in range(3):
        action, state = big.predict(obs, state=state, episode_start=start, deterministic=True)
        assert action.shape == (32,)
        obs, *_ = large.step(action)
        start = np.zeros(1, dtype=bool)
    # ... just the policy, told the spaces or resizing itself on the first observation
    for policy in (load_policy(path, large), load_policy(path)):
        action, _ = policy.predict(obs, deterministic=True)
        assert action.shape == (32,)
        assert obs["action_mask"][np.arange(32), action].all()


def test_plain_sb3_load_resizes_on_a_bigger_observation(tmp_path, envs_8_and_32):
    small, large = envs_8_and_32
    model = MaskablePPO(MaskableNodeSetPolicy, small, seed=0, n_steps=16, batch_size=16, policy_kwargs=SMALL)
    model.save(tmp_path / "m.zip")
    loaded = MaskablePPO.load(tmp_path / "m.zip")  # what a harness without load_for_nodes would do
    obs, _ = large.reset(seed=0)
    action, _ = loaded.predict(obs, deterministic=True, action_masks=large.unwrapped.action_masks())
    assert action.shape == (32,)
    obs_small, _ = small.reset(seed=0)
    assert loaded.predict(obs_small, deterministic=True)[0].shape == (8,)


def test_flattened_observation_is_rejected_with_a_hint():
    from greengossip.envs.wrappers import FlattenGossipObservation

    env = FlattenGossipObservation(make_env())
    with pytest.raises(TypeError, match="FlattenGossipObservation"):
        MaskableNodeSetPolicy(env.observation_space, env.action_space, _constant_lr)


# ---------------------------------------------------------------------------------------------- residual
@pytest.mark.parametrize("prior, period", [("carbon_periodic", 4), ("carbon_periodic:period=6", 6)])
@pytest.mark.parametrize("cls", POLICIES, ids=lambda c: c.__name__)
def test_untrained_residual_policy_acts_like_its_prior(cls, prior, period, envs_8_and_32):
    from greengossip.agents.heuristics import CarbonPeriodic

    _, env = envs_8_and_32
    th.manual_seed(0)
    kwargs = dict(SMALL, lstm_hidden_size=16) if cls is RecurrentNodeSetPolicy else dict(SMALL)
    policy = cls(env.observation_space, env.action_space, _constant_lr, prior=prior, **kwargs)
    plain = _policy(cls, env)
    rule = CarbonPeriodic(period=period)
    obs, _ = env.reset(seed=5)
    differs_from_plain = 0
    for _ in range(12):  # past the first round, when the rule's period starts to show
        expected, _ = rule.predict(obs)
        action, _ = policy.predict(obs, deterministic=True)
        np.testing.assert_array_equal(action, expected)
        differs_from_plain += int((plain.predict(obs, deterministic=True)[0] != expected).any())
        with th.no_grad():
            probs = th.softmax(policy.node_logits(_batch(obs)).reshape(-1, N_ACTIONS), -1)
        chosen = probs[np.arange(len(expected)), th.as_tensor(expected)]
        allowed = obs["action_mask"].sum(-1)
        # about e^w / (e^w + allowed - 1) of the probability stays on the rule's action
        assert (chosen.numpy() > 0.9 * np.exp(3.0) / (np.exp(3.0) + allowed - 1)).all()
        obs, *_ = env.step(action)
    assert differs_from_plain > 0  # the prior, not the untrained network, made the choice


def test_residual_prior_is_saved_with_the_model_and_checked(tmp_path, envs_8_and_32):
    small, large = envs_8_and_32
    model = MaskablePPO(MaskableNodeSetPolicy, small, seed=0, n_steps=16, batch_size=16, n_epochs=1,
                        policy_kwargs=dict(SMALL, prior="carbon_periodic", prior_weight=2.0))
    model.learn(16)
    model.save(tmp_path / "residual.zip")
    loaded = load_policy(tmp_path / "residual.zip", large)
    assert (loaded.prior, loaded.prior_weight) == ("carbon_periodic", 2.0)
    obs, _ = large.reset(seed=1)
    assert loaded.predict(obs, deterministic=True)[0].shape == (32,)

    for bad, message in (("random_k", "rules that act on the current observation alone"),
                         ("carbon_periodik", "no such heuristic"),
                         ("carbon_periodic:period=99", "period must be a whole number of rounds between 1 and"),
                         ("carbon_periodic:periodd=6", "unexpected keyword argument 'periodd'"),
                         ("carbon_periodic:period", "must look like key=value")):
        with pytest.raises(ValueError, match=message):
            MaskableNodeSetPolicy(small.observation_space, small.action_space, _constant_lr, prior=bad)
    with pytest.raises(ValueError, match="prior_weight"):
        MaskableNodeSetPolicy(small.observation_space, small.action_space, _constant_lr, prior="all_nodes",
                              prior_weight=0.0)


def test_act_batch_refuses_rules_with_memory():
    from greengossip.agents.heuristics import HEURISTICS

    env = make_env()
    obs, _ = env.reset(seed=0)
    batch = {key: value[None] for key, value in obs.items()}
    with pytest.raises(TypeError, match="memoryless"):
        HEURISTICS["random_k"]().act_batch(batch)
    np.testing.assert_array_equal(HEURISTICS["all_nodes"]().act_batch(batch)[0],
                                  HEURISTICS["all_nodes"]().predict(obs)[0])


@pytest.mark.parametrize("spec", ["all_nodes", "trust_threshold", "energy_carbon_trust:low_soc=0.4",
                                  "carbon_periodic", "carbon_periodic:period=6,dirtier_period=10,sprint_gap=0.02",
                                  "network_aware:period=1,gateway_period=3,max_gateway_share=0.3"])
def test_act_batch_of_a_batched_rule_equals_its_rule_one_observation_at_a_time(spec):
    """A batched rule decides a whole batch in one call (the residual prior of every PPO minibatch); each
    row must be what ``predict`` gives for that observation alone. The batch mixes envs, rounds, random
    actions (staleness, batteries), attackers (trust), random masks and target gaps on both sides of the
    sprint's, so every branch of the rules is taken in some row and left in another."""
    from greengossip.agents.base import GLOBAL_INDEX, IDLE
    from greengossip.agents.heuristics import build_heuristic
    from greengossip.envs.observation import NODE_INDEX

    rng = np.random.default_rng(0)
    rows = []
    for seed, config in enumerate(["configs/default.yaml", "configs/attack_heavy.yaml"]):
        env = make_env(config)
        obs, _ = env.reset(seed=seed)
        for _ in range(12):
            obs, *_ = env.step(rng.integers(0, N_ACTIONS, env.unwrapped.n_nodes))
            rows.append({key: np.array(value) for key, value in obs.items()})
    for row in rows:
        row["action_mask"] = np.where(rng.random(row["action_mask"].shape) < 0.3, 0, row["action_mask"])
        row["action_mask"][:, IDLE] = 1
        row["global"][GLOBAL_INDEX["target_gap"]] = rng.choice([-0.01, 0.01, 0.03, 0.3])
        row["nodes"][:, NODE_INDEX["battery_soc"]] = rng.random(len(row["nodes"]))  # for low_soc
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    rule = build_heuristic(spec)
    assert rule.batched_act
    expected = np.stack([build_heuristic(spec).predict(row)[0] for row in rows])
    assert len(np.unique(expected)) >= 2
    np.testing.assert_array_equal(rule.act_batch(batch), expected)


def test_prior_setting_names_the_allowed_rules():
    from greengossip.training.builders import policy_kwargs
    from greengossip.training.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=r"policy\.prior = 'oort': .*carbon_periodic"):
        load_settings(prior="oort")
    settings = load_settings(prior="carbon_periodic")  # --prior keeps the file's other policy settings
    assert (settings.policy.prior, settings.policy.hidden) == ("carbon_periodic", load_settings().policy.hidden)
    assert policy_kwargs(settings)["prior"] == "carbon_periodic"
    assert load_settings().policy.prior is None
    with pytest.raises(SettingsError, match=r"policy\.prior = 'carbon_periodic:period=0': .*period must be"):
        load_settings(prior="carbon_periodic:period=0")
    assert load_settings(prior="carbon_periodic:period=6").policy.prior == "carbon_periodic:period=6"


def test_allowed_actions_restrict_every_choice_and_are_checked(envs_8_and_32, tmp_path):
    small, _ = envs_8_and_32
    model = MaskablePPO(MaskableNodeSetPolicy, small, seed=0, n_steps=16, batch_size=16, n_epochs=1,
                        policy_kwargs=dict(SMALL, prior="carbon_periodic", allowed_actions=[3, 0, 1]))
    model.learn(16)
    model.save(tmp_path / "restricted.zip")
    policy = load_policy(tmp_path / "restricted.zip")
    assert policy.allowed_actions == [0, 1, 3]
    obs, _ = small.reset(seed=0)
    for _ in range(20):
        action, _ = policy.predict(obs, deterministic=False)
        assert np.isin(action, [0, 1, 3]).all()
        obs, *_ = small.step(action)
    for bad in ([1, 3], [0, 6], []):
        with pytest.raises(ValueError, match="allowed_actions must be action codes in 0..5 that include 0"):
            MaskableNodeSetPolicy(small.observation_space, small.action_space, _constant_lr, allowed_actions=bad)


@pytest.mark.parametrize("regulariser", ["kl", "cross_entropy"])
@pytest.mark.parametrize("cls", [MaskableNodeSetPolicy, NodeSetPolicy], ids=lambda c: c.__name__)
def test_prior_regulariser_measures_the_distance_to_the_rule_and_pulls_towards_it(cls, regulariser, envs_8_and_32):
    small, _ = envs_8_and_32
    th.manual_seed(0)
    policy = cls(small.observation_space, small.action_space, _constant_lr, prior="carbon_periodic",
                 prior_regulariser=regulariser, **SMALL)
    obs = _batch(small.reset(seed=5)[0])
    n_nodes = small.unwrapped.n_nodes
    with th.no_grad():  # move the network's own output away from 0, as training would
        policy.action_net.bias.copy_(th.linspace(-2.0, 2.0, N_ACTIONS))
    actions = th.zeros((1, n_nodes), dtype=th.long)
    _, _, value = policy.evaluate_actions(obs, actions)
    # by hand: per node, the rule's distribution is softmax(prior_weight on its action) over the allowed actions
    mask = obs["action_mask"][0] > 0.5
    with th.no_grad():
        log_p = th.log_softmax(policy.node_logits(obs).view(n_nodes, N_ACTIONS), -1)
        rule = policy.prior_logits(obs)[0].masked_fill(~mask, -1e8)
        if regulariser == "kl":
            distance = (log_p.exp() * (log_p - th.log_softmax(rule, -1))).sum()
        else:
            distance = -log_p.gather(1, rule.argmax(1, keepdim=True)).sum()
    assert float(distance) > 0.1
    assert th.allclose(-value, distance.view(1), rtol=1e-4)
    # PPO's loss adds ent_coef * (-value): a step on it alone brings the policy closer to the rule
    optimiser = th.optim.SGD(policy.parameters(), lr=0.05)
    (-value).sum().backward()
    optimiser.step()
    _, _, after = policy.evaluate_actions(obs, actions)
    assert float(-after.detach()) < float(-value.detach())
    # by default the same slot holds the entropy
    plain = cls(small.observation_space, small.action_space, _constant_lr, prior="carbon_periodic", **SMALL)
    _, _, entropy = plain.evaluate_actions(obs, actions)
    assert float(entropy) > 0


def test_prior_regulariser_needs_a_prior_and_a_feed_forward_policy(envs_8_and_32):
    from greengossip.training.settings import SettingsError, load_settings

    small, _ = envs_8_and_32
    space = (small.observation_space, small.action_space, _constant_lr)
    with pytest.raises(ValueError, match="'kl' needs a prior"):
        MaskableNodeSetPolicy(*space, prior_regulariser="kl")
    with pytest.raises(ValueError, match="must be one of entropy, kl, cross_entropy"):
        MaskableNodeSetPolicy(*space, prior="all_nodes", prior_regulariser="bc")
    with pytest.raises(ValueError, match="prior_regulariser is for the feed-forward"):
        RecurrentNodeSetPolicy(*space, prior="all_nodes", prior_regulariser="kl")
    with pytest.raises(SettingsError, match="prior_regulariser: cross_entropy needs a prior"):
        load_settings(policy={"prior_regulariser": "cross_entropy"})
    with pytest.raises(SettingsError, match="recurrent_ppo keeps the entropy"):
        load_settings(algo="recurrent_ppo", policy={"prior": "carbon_periodic", "prior_regulariser": "kl"})
    with pytest.raises(SettingsError, match="prior_regulariser"):
        load_settings(policy={"prior": "carbon_periodic", "prior_regulariser": "bc"})
    settings = load_settings(policy={"prior": "carbon_periodic", "prior_regulariser": "cross_entropy"})
    assert settings.policy.hidden == load_settings().policy.hidden


def test_a_model_from_another_observation_layout_is_refused_by_name():
    from types import SimpleNamespace

    from gymnasium import spaces

    from greengossip.agents.learned import LearnedScheduler
    from greengossip.envs.errors import UserError

    env = make_env("tiny")
    current = env.observation_space
    nodes = current["nodes"]
    older = spaces.Dict({**current.spaces, "nodes": spaces.Box(0.0, 1.0, (nodes.shape[0], nodes.shape[1] - 1))})
    model = SimpleNamespace(observation_space=older, predict=lambda observation, **kwargs: (None, None))
    width = nodes.shape[1]
    with pytest.raises(UserError, match=f"trained on {width - 1} nodes features.*this env has {width}"):
        LearnedScheduler(model, "MaskablePPO", "old.zip").check_env(env)
    LearnedScheduler(SimpleNamespace(observation_space=current, predict=model.predict), "MaskablePPO").check_env(env)
