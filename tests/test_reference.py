"""Differential tests: the batched simulator against the slow per-node reference (house style 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_variant

from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.dynamics.learning import ModelSpec
from greengossip.envs.reference import node_action_cost, reference_transition
from greengossip.envs.scenario import N_CLASSES, N_INPUTS, make_scenario
from greengossip.envs.simulator import draw_randomness, transition
from greengossip.envs.state import initial_state

ROUNDS = 6
ATOL = 1e-5
OUTCOME_FIELDS = ("bytes_sent", "bytes_received", "receive_wh", "internet_bytes", "carbon_grid_g",
                  "carbon_backbone_g", "carbon_backbone_marginal_g", "carbon_backbone_attributional_g",
                  "compute_wh", "radio_wh", "base_wh")
FLOW_FIELDS = ("harvested", "from_harvest", "from_battery", "grid", "consumed", "stored_in", "charge_loss",
               "spilled", "unmet", "battery_after")


def _setup(model: str, seed: int, **changes):
    config = tiny_variant(learning__model=model, availability__model="markov", background_load__mean=0.2,
                          **changes)  # phones come and go; their other work takes some of their CPU
    scenario = make_scenario(config, np.random.default_rng(seed))
    state = initial_state(config, scenario)
    generator = None
    # run some nodes nearly flat, so that part of the fleet cannot afford what it is asked to do
    rng = np.random.default_rng(seed)
    low = torch.as_tensor(rng.random(scenario.n_nodes) < 0.5)
    reserve = config.energy.battery_min_soc * scenario.capacity_wh
    battery = torch.where(low, reserve * torch.as_tensor(rng.uniform(0.5, 1.05, scenario.n_nodes),
                                                         dtype=torch.float32), state.battery_wh)
    return config, scenario, generator, state.replace(battery_wh=battery), rng


def _actions(rng, n: int, round_index: int) -> torch.Tensor:
    # every code appears in every round (a shuffled cycle), the rest at random
    codes = np.concatenate([np.arange(N_ACTIONS), rng.integers(0, N_ACTIONS, max(0, n - N_ACTIONS))])[:n]
    return torch.as_tensor(rng.permutation(codes), dtype=torch.long)


@pytest.mark.parametrize("model", ["softmax", "mlp"])
@pytest.mark.parametrize("whole_fleet_sgd", [True, False])
def test_batched_transition_matches_per_node_reference(model, whole_fleet_sgd, monkeypatch):
    # local SGD on every node with the idle ones' results dropped, or on a copy of the trainers' rows
    import greengossip.envs.simulator  # noqa: F401  (envs.simulator below)
    from greengossip import envs

    monkeypatch.setattr(envs.simulator, "WHOLE_FLEET_SGD_SHARE", 0.0 if whole_fleet_sgd else 1.01)
    _check_rounds_against_reference(*_setup(model, seed=3), model)


@pytest.mark.parametrize("accounting", ["marginal", "attributional"])
def test_geographic_round_matches_reference(accounting):
    """Radio-range links inside a region carry no internet energy, gateway links between regions do."""
    config, *rest = _setup("softmax", seed=4, n_nodes=24, topology={"kind": "geographic"},
                           energy__network_accounting=accounting)
    scenario = rest[0]
    assert bool(scenario.internet_slot.any()) and bool((scenario.neighbour_valid & ~scenario.internet_slot).any())
    _check_rounds_against_reference(config, *rest, "softmax")


def test_brown_out_round_matches_reference():
    """Nodes cut off mid-round spend what they had above the reserve in both implementations."""
    _check_rounds_against_reference(*_setup("softmax", seed=5, energy__overdraw="brown_out"), "softmax")


def _check_rounds_against_reference(config, scenario, generator, state, rng, model: str) -> None:
    dropped_total = 0
    for t in range(ROUNDS):
        action = _actions(rng, scenario.n_nodes, t)
        noise = draw_randomness(config, scenario, state.round)
        batched, outcome = transition(config, scenario, state, action, noise)
        slow, ref = reference_transition(config, scenario, state, action, noise)
        where = f"{model}, round {t}, action {action.tolist()}"

        assert torch.equal(batched.dropped, slow.dropped), where
        assert torch.equal(batched.last_action, slow.last_action), where
        assert int(batched.round[0]) == int(slow.round[0]) == t + 1
        for field in ("params", "public", "battery_wh", "local_loss", "staleness"):
            torch.testing.assert_close(getattr(batched, field), getattr(slow, field), atol=ATOL, rtol=1e-5,
                                       msg=lambda m, f=field: f"{where}, {f}: {m}")
        # a model within float rounding may still flip the argmax of a borderline test point
        n_eval = len(scenario.eval_index)
        torch.testing.assert_close(batched.node_accuracy, slow.node_accuracy, atol=1.5 / n_eval, rtol=0)
        for field in FLOW_FIELDS:
            torch.testing.assert_close(getattr(outcome.energy, field),
                                       torch.tensor(ref[field], dtype=torch.float32), atol=ATOL, rtol=1e-5,
                                       msg=lambda m, f=field: f"{where}, energy.{f}: {m}")
        for field in OUTCOME_FIELDS:
            torch.testing.assert_close(getattr(outcome, field), torch.tensor(ref[field], dtype=torch.float32),
                                       atol=ATOL, rtol=1e-5, msg=lambda m, f=field: f"{where}, {f}: {m}")
        dropped_total += int(slow.dropped.sum())
        state = batched
    assert dropped_total > 0, "no node was ever unaffordable: the drop-out path went untested"
    assert not scenario.available[:, :ROUNDS].all(), "no node was ever offline: the churn path went untested"


TOPK_ACTIONS = (4, 5)  # train + top-10 %, train + top-1 %


def _assert_close_up_to_topk_ties(actual: torch.Tensor, expected: torch.Tensor, scenario, action, where: str):
    """Close everywhere except where a top-k tie may have broken the other way.

    Top-k compression keeps the k largest |Δ| of a sender's update. The batched round and the per-node
    reference compute Δ with different matrix kernels, so two entries equal up to float rounding can
    swap places at the cut-off: one entry of the sender's message changes, and with it that entry of
    the sender's and its receivers' models. Allow at most two entries per top-k sender and receiver,
    and nothing beyond a real tie's size."""
    mismatched = ~torch.isclose(actual, expected, atol=ATOL, rtol=1e-5, equal_nan=True)
    topk_senders = int(np.isin(np.asarray(action), TOPK_ACTIONS).sum())
    allowed = 2 * topk_senders * (1 + scenario.neighbours.shape[1])
    assert int(mismatched.sum()) <= allowed, (
        f"{where}: {int(mismatched.sum())} entries differ, more than {allowed} top-k ties can explain; "
        f"largest difference {float((actual - expected).nan_to_num().abs().max()):.2e}")
    if bool(mismatched.any()):
        assert float((actual - expected)[mismatched].nan_to_num().abs().max()) < 1e-2, where


# label_flip has its own test below
KINDS = ["sign_flip", "gaussian", "alie", "ipm", "free_rider", "lying_telemetry", "dissensus"]


@pytest.mark.parametrize(
    ("aggregator", "trust_weighting"),
    [("mean", False), ("mean", True), ("median", False), ("trimmed_mean", False), ("clipped_gossip", False),
     ("clipped_gossip", True)],
)
def test_batched_transition_matches_reference_under_attack(aggregator, trust_weighting):
    _check_attack_round(KINDS, aggregator, trust_weighting)


def test_label_flippers_broadcast_their_poisoned_model():
    _check_attack_round(["label_flip", "free_rider"], "mean", False)


@pytest.mark.parametrize(("aggregator", "trust_weighting", "messages_only"),
                         [("mean", False, False), ("median", False, False), ("trimmed_mean", False, False),
                          ("clipped_gossip", True, True)])
def test_min_max_attack_matches_reference(aggregator, trust_weighting, messages_only):
    # against ClippedGossip and trust the Min-Max message sits at the median neighbour distance, where the
    # clip and the trust score have their kink and the batched and direct distance formulas differ in float
    # rounding: there the crafted messages are compared, not what the receivers make of them
    _check_attack_round(["min_max", "alie"], aggregator, trust_weighting, messages_only=messages_only)


def _check_attack_round(kinds: list[str], aggregator: str, trust_weighting: bool, messages_only: bool = False
                        ) -> None:
    config = tiny_variant(
        n_nodes=16,
        attack={"fraction": 0.5, "kinds": kinds, "start_round": 1, "on_probability": 0.8,
                "nonfinite_probability": 0.2},
        defence={"aggregator": aggregator, "trust_weighting": trust_weighting, "trust_memory": 0.5},
    )
    scenario = make_scenario(config, np.random.default_rng(8))
    assert int((~scenario.honest).sum()) == 8
    state = initial_state(config, scenario)
    rng = np.random.default_rng(8)
    influence_seen = False
    for t in range(ROUNDS):
        action = _actions(rng, scenario.n_nodes, t)
        noise = draw_randomness(config, scenario, state.round)
        batched, outcome = transition(config, scenario, state, action, noise)
        slow, ref = reference_transition(config, scenario, state, action, noise)
        where = f"{aggregator} trust={trust_weighting}, round {t}"
        assert torch.equal(batched.dropped, slow.dropped), where
        if messages_only:
            crafted = ~scenario.honest & (action >= 2)
            torch.testing.assert_close(batched.public[crafted], slow.public[crafted], atol=ATOL, rtol=1e-5,
                                       equal_nan=True, msg=lambda m: f"{where}, crafted messages: {m}")
            influence_seen |= ref["attack_influence"] > 0
            state = batched
            continue
        for field in ("params", "public"):
            _assert_close_up_to_topk_ties(getattr(batched, field), getattr(slow, field), scenario, action,
                                          f"{where}, {field}")
        # a top-k tie that broke the other way changes the sender's copy, and with it its receivers' scores;
        # elsewhere scores agree up to the rounding of distances between near-equal models (the crafted
        # messages are built from the neighbours' own models, so they sit close to them)
        tied = ~torch.isclose(batched.public, slow.public, atol=ATOL, rtol=1e-5, equal_nan=True).all(1)
        untied = ~(tied[scenario.neighbours] | tied.unsqueeze(1))
        torch.testing.assert_close(batched.trust[untied], slow.trust[untied], atol=1e-4, rtol=1e-5,
                                   msg=lambda m: f"{where}, trust: {m}")
        for field in ("battery_wh", "local_loss"):
            torch.testing.assert_close(getattr(batched, field), getattr(slow, field), atol=ATOL, rtol=1e-5,
                                       equal_nan=True, msg=lambda m, f=field: f"{where}, {f}: {m}")
        assert outcome.malicious_participants == ref["malicious_participants"], where
        assert outcome.attack_influence == pytest.approx(ref["attack_influence"], rel=1e-4, abs=1e-6), where
        assert outcome.consensus_distance == pytest.approx(ref["consensus_distance"], rel=1e-4, abs=1e-6)
        influence_seen |= ref["attack_influence"] > 0
        state = batched
    assert bool(torch.isfinite(state.params).all()), "a non-finite message reached a model"
    assert influence_seen, "the attackers never moved an honest model: the attack paths went untested"


def test_reference_and_batched_stay_together_over_an_episode_prefix():
    """Run each implementation on its own output for several rounds: errors must not compound."""
    config, scenario, generator, state, rng = _setup("softmax", seed=5)
    fast = slow = state
    for t in range(ROUNDS):
        action = _actions(rng, scenario.n_nodes, t)
        noise = draw_randomness(config, scenario, state.round)
        fast, _ = transition(config, scenario, fast, action, noise)
        slow, _ = reference_transition(config, scenario, slow, action, noise)
    torch.testing.assert_close(fast.params, slow.params, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.battery_wh, slow.battery_wh, atol=1e-4, rtol=1e-5)
    assert torch.equal(fast.dropped, slow.dropped)


def test_scenario_cost_table_matches_device_figures():
    config, scenario, *_ = _setup("softmax", seed=0)
    for field in ("compute_wh", "radio_wh", "base_wh", "total_wh", "bytes_sent"):
        table = torch.tensor([[node_action_cost(config, scenario, i, k)[field] for k in range(N_ACTIONS)]
                              for i in range(scenario.n_nodes)], dtype=torch.float32)
        torch.testing.assert_close(getattr(scenario.costs, field), table, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_manual_gradients_match_autograd(kind):
    spec = ModelSpec(kind, hidden=16)
    gen = torch.Generator().manual_seed(0)
    n, batch = 4, 7
    params = torch.randn(n, spec.n_params, generator=gen) * 0.3
    x = torch.rand(n, batch, N_INPUTS, generator=gen)
    y = torch.randint(0, N_CLASSES, (n, batch), generator=gen)
    loss, grad = spec.loss_and_grad(params, x, y)

    for i in range(n):
        p = params[i].clone().requires_grad_(True)
        logits = spec.logits(p.unsqueeze(0), x[i].unsqueeze(0))[0]
        expected = torch.nn.functional.cross_entropy(logits, y[i])
        expected.backward()
        torch.testing.assert_close(loss[i], expected.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad[i], p.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
@pytest.mark.parametrize("n_nodes", [50, 600], ids=["one block", "several blocks"])
def test_accuracy_is_argmax_accuracy_with_ties_and_non_finite_models(kind, n_nodes):
    from greengossip.envs.dynamics.learning import accuracy_per_node

    spec = ModelSpec(kind, hidden=16)
    gen = torch.Generator().manual_seed(2)
    params = torch.randn(n_nodes, spec.n_params, generator=gen) * 0.3
    params[:5] = 0.0  # every class ties: argmax says class 0
    params[5:25] = (params[5:25] * 2).round()  # integer weights: ties between some classes
    params[25, 3] = float("nan")
    params[26] = float("inf")
    params[27, ::7] = -float("inf")
    x = torch.rand(90, N_INPUTS, generator=gen).round()  # binary pixels make integer logits tie often
    x[:, -1] = 1.0
    y = torch.randint(0, N_CLASSES, (90,), generator=gen)
    logits = [spec.logits(p.unsqueeze(0), x.unsqueeze(0))[0] for p in params]
    # torch.argmax takes NaN for the largest value; the env counts a point with a NaN logit as wrong
    expected = torch.stack([((z.argmax(1) == y) & ~z.isnan().any(1)).float().mean() for z in logits])
    with torch.inference_mode():
        accuracy = accuracy_per_node(spec, params, x, y)
    torch.testing.assert_close(accuracy, expected, rtol=0, atol=0)
    assert (accuracy[:5] == (y == 0).float().mean()).all()


def test_rowwise_sparse_product_equals_the_csr_product():
    """The product that repeats bit for bit on CUDA under torch's deterministic flag
    (``products.sparse_product``) computes CSR @ dense, empty rows and trailing value axes included."""
    from greengossip.envs.dynamics.products import rowwise_sparse_product

    generator = torch.Generator().manual_seed(1)
    dense = torch.rand(30, 40, generator=generator) * (torch.rand(30, 40, generator=generator) < 0.1)
    dense[[3, 17]] = 0.0  # rows without a nonzero
    matrix = dense.to_sparse_csr()
    for shape in ((40, 650), (40, 2, 3)):
        values = torch.randn(*shape, generator=generator)
        expected = (dense @ values.reshape(40, -1)).view(30, *shape[1:])
        torch.testing.assert_close(rowwise_sparse_product(matrix, values), expected, atol=1e-5, rtol=1e-5)


def test_a_sparse_fleet_round_is_the_same_through_the_rowwise_product(monkeypatch):
    """All three sparse products of a round (mixing, mixing over usable senders, the trust-weighted
    pulls) through ``rowwise_sparse_product``, as CUDA runs them under the deterministic flag."""
    from greengossip.envs.dynamics import gossip, products

    config = tiny_variant(n_nodes=100, attack={"fraction": 0.25, "kinds": ["sign_flip", "gaussian"]},
                          defence={"aggregator": "clipped_gossip"})
    scenario = make_scenario(config, np.random.default_rng(2))
    rng = np.random.default_rng(2)
    actions = [_actions(rng, scenario.n_nodes, t) for t in range(4)]

    def rollout():
        state = initial_state(config, scenario)
        for action in actions:
            state, _ = transition(config, scenario, state, action, draw_randomness(config, scenario, state.round))
        return state

    plain = rollout()
    calls = []

    def rowwise(matrix, values):
        calls.append(matrix.layout)
        return products.rowwise_sparse_product(matrix, values)

    monkeypatch.setattr(gossip, "sparse_product", rowwise)
    rowwise_state = rollout()
    assert len(calls) >= 2 * len(actions) and set(calls) == {torch.sparse_csr}
    for field in ("params", "public", "trust"):
        torch.testing.assert_close(getattr(rowwise_state, field), getattr(plain, field), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("nodes_per_env", [40, 300], ids=["gram-matrix path", "sampled sparse product (> 64 nodes)"])
def test_neighbour_distances_match_the_direct_norms(nodes_per_env):
    """Trust scores rest on these distances; both ways of computing them give ||x̂_j - x_i||."""
    from greengossip.envs.dynamics import gossip

    generator = torch.Generator().manual_seed(0)
    n_envs, width, n_params = 2, 7, 650
    own = torch.randn(n_envs * nodes_per_env, n_params, generator=generator)
    other = own + 0.1 * torch.randn(own.shape, generator=generator)
    # distinct neighbours per row, some slots unused (padded with the node itself, as scenarios do)
    local = torch.stack([torch.randperm(nodes_per_env, generator=generator)[:width]
                         for _ in range(n_envs * nodes_per_env)])
    valid = torch.rand(local.shape, generator=generator) < 0.8
    neighbours = local + torch.arange(n_envs).repeat_interleave(nodes_per_env).unsqueeze(1) * nodes_per_env
    neighbours = torch.where(valid, neighbours, torch.arange(len(neighbours)).unsqueeze(1))
    direct = (other[neighbours] - own.unsqueeze(1)).norm(dim=2)
    got = gossip.neighbour_distances(own, other, neighbours, valid, nodes_per_env)
    torch.testing.assert_close(got[valid], direct[valid], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("nodes_per_env", [32, 300], ids=["gram-matrix path", "sampled sparse product (> 64 nodes)"])
def test_neighbour_distances_stay_accurate_for_close_models_far_from_the_origin(nodes_per_env):
    """After a few gossip rounds the models lie close together, far from the origin (|x|² ~ 6e4 here,
    distances ~ 0.03): the distance expansion must not cancel to float32 noise, on any device. A model
    with non-finite entries leaves the others' distances exact."""
    from greengossip.envs.dynamics import gossip

    generator = torch.Generator().manual_seed(1)
    n_envs, width, n_params = 2, 6, 650
    own = 10.0 + 1e-3 * torch.randn(n_envs * nodes_per_env, n_params, generator=generator)
    other = own + 1e-3 * torch.randn(own.shape, generator=generator)
    own[3, 5] = float("inf")  # a diverged model: its own rows are meaningless, the rest must not suffer
    local = torch.stack([torch.randperm(nodes_per_env, generator=generator)[:width]
                         for _ in range(n_envs * nodes_per_env)])
    neighbours = local + torch.arange(n_envs).repeat_interleave(nodes_per_env).unsqueeze(1) * nodes_per_env
    valid = torch.ones(neighbours.shape, dtype=torch.bool)
    direct = (other[neighbours].double() - own.double().unsqueeze(1)).norm(dim=2).float()
    got = gossip.neighbour_distances(own, other, neighbours, valid, nodes_per_env)
    clean = torch.isfinite(direct)
    clean[3] = False
    assert clean.sum() > 0.9 * clean.numel()
    torch.testing.assert_close(got[clean], direct[clean], atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("nodes_per_env", [32, 300], ids=["gram-matrix path", "sampled sparse product (> 64 nodes)"])
def test_the_same_model_is_at_distance_zero_and_fully_trusted(nodes_per_env):
    """Nodes that kept the shared initial model: their copies are at distance exactly 0 (not the square
    root of rounding, which differs between devices), and a receiver whose neighbours mostly hold its own
    model (median distance 0) scores those copies 1 and a different one 0."""
    from greengossip.envs.dynamics import gossip

    generator = torch.Generator().manual_seed(2)
    n_params = 650
    own = 0.1 * torch.randn(n_params, generator=generator).repeat(nodes_per_env, 1)
    changed = torch.arange(nodes_per_env) % 3 == 0  # a third trained: their models moved
    own[changed] += 0.05 * torch.randn(int(changed.sum()), n_params, generator=generator)
    neighbours = (torch.arange(nodes_per_env).unsqueeze(1) + torch.arange(1, 4)) % nodes_per_env
    valid = torch.ones(neighbours.shape, dtype=torch.bool)
    distances = gossip.neighbour_distances(own, own, neighbours, valid, nodes_per_env)
    same = ~changed.unsqueeze(1) & ~changed[neighbours]
    assert same.any() and (distances[same] == 0).all() and (distances[~same] > 0.5).all()
    usable = torch.ones(nodes_per_env, dtype=torch.bool)
    scores = gossip.neighbour_scores(own, own, neighbours, valid, usable, nodes_per_env)
    mostly_same = same.sum(1) >= 2  # the lower median of three slots is 0
    assert mostly_same.any()
    assert (scores[mostly_same][same[mostly_same]] == 1).all()
    assert (scores[mostly_same][~same[mostly_same]] == 0).all()


def test_top_k_compression_breaks_ties_like_the_reference():
    """Equal magnitudes across the k-th place (SGD steps do tie) keep the lowest indices, as the
    reference's stable sort does, so the message does not depend on topk's device-specific choice."""
    from greengossip.envs.dynamics import gossip
    from greengossip.envs.reference import compress_row
    from greengossip.envs.workloads import COMPRESSION_LEVELS

    generator = torch.Generator().manual_seed(3)
    deltas = torch.randint(-3, 4, (64, 200), generator=generator).float()  # ties everywhere
    deltas[::2] += 1e-3 * torch.randn(32, 200, generator=generator)  # and rows without any
    for level, name in enumerate(COMPRESSION_LEVELS):
        levels = torch.full((len(deltas),), level)
        expected = torch.stack([compress_row(row, level) for row in deltas])
        assert torch.equal(gossip.compress(deltas, levels), expected), name


def test_lower_median_is_torch_nanmedian():
    from greengossip.envs.dynamics.gossip import lower_median

    generator = torch.Generator().manual_seed(1)
    values = torch.rand(400, 9, generator=generator)
    valid = torch.rand(400, 9, generator=generator) < 0.6
    valid[0] = False  # a receiver that heard nobody
    values[1, :2] = torch.tensor([torch.inf, 0.5])  # an infinite distance is a valid one
    valid[1, :2] = True
    expected = torch.where(valid, values, torch.nan).nanmedian(1, keepdim=True).values
    torch.testing.assert_close(lower_median(values, valid), expected, rtol=0, atol=0, equal_nan=True)
