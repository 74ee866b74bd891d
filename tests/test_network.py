"""Network energy, geographic topology and the workload: the pieces of the world the links and the learner
decide (docs/world_model.md: Network energy, Topology, Workload)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import make_env, tiny_variant
from hypothesis import given
from hypothesis import strategies as st

from greengossip.envs.config import EnvConfig
from greengossip.envs.devices import LINK_PROFILES, backbone_kwh_per_gb, marginal_network_kwh_per_gb
from greengossip.envs.dynamics.energy import network_bytes, receive, settle_energy
from greengossip.envs.reference import node_receive_cost
from greengossip.envs.scenario import _assign, make_graph, make_scenario, radio_range
from greengossip.envs.simulator import draw_randomness, transition
from greengossip.envs.state import initial_state
from greengossip.envs.workloads import COMPRESSION_LEVELS, WORKLOAD_PROFILES, make_workload, message_bytes

TOL = 1e-9


# ---------------------------------------------------------------------------------------------- topology
def _geographic(n_nodes: int, seed: int, **topology) -> tuple[nx.Graph, np.ndarray, np.ndarray, EnvConfig]:
    config = EnvConfig(n_nodes=n_nodes, topology={"kind": "geographic", **topology})
    rng = np.random.default_rng(seed)
    region = _assign([r.fraction for r in config.regions], n_nodes, rng)
    grid = rng.random(n_nodes) < 0.3
    graph, positions = make_graph(config, rng, region, grid)
    return graph, region, grid, config


@pytest.mark.parametrize("n_nodes", [8, 32, 256, 1024, 4096])
def test_mean_degree_stays_bounded_from_8_to_4096_nodes(n_nodes):
    for seed in range(2):
        graph, region, _, _ = _geographic(n_nodes, seed)
        assert nx.is_connected(graph)
        mean_degree = 2 * graph.number_of_edges() / n_nodes
        assert mean_degree <= 16, f"N = {n_nodes}: mean degree {mean_degree:.1f}"


def test_links_within_a_region_follow_radio_range_and_only_gateways_cross_regions():
    n_nodes, gateways = 400, 2
    config = EnvConfig(n_nodes=n_nodes, topology={"kind": "geographic", "gateways_per_region": gateways})
    scenario = make_scenario(config, np.random.default_rng(3))
    region = scenario.region_index.numpy()
    src, dst = scenario.edge_src.numpy(), scenario.edge_dst.numpy()
    crossing = region[src] != region[dst]
    assert crossing.any() and (~crossing).any()
    # every region's crossing links start at no more than its gateways
    for r in range(len(config.regions)):
        assert len(np.unique(src[crossing & (region[src] == r)])) <= gateways
    # local links: mostly within the radio range of the region's square (the few closest-pair joins that
    # connect stray components may be longer), drawn inside the region's cluster
    side = np.ptp(scenario.positions[region == 0], axis=0).max()
    local_length = np.linalg.norm(scenario.positions[src] - scenario.positions[dst], axis=1)[~crossing] / side
    members = np.bincount(region)
    reach = np.array([radio_range(int(m), config.topology.connectivity) for m in members])[region[src][~crossing]]
    assert np.mean(local_length <= reach * 1.01) > 0.97
    # the scenario marks exactly the crossing links as internet links
    marked = scenario.internet_slot & scenario.neighbour_valid
    table_region = region[scenario.neighbours.numpy()]
    assert np.array_equal(marked.numpy(), (table_region != region[:, None]) & scenario.neighbour_valid.numpy())


def test_other_graph_kinds_send_every_link_over_the_internet():
    scenario = make_scenario(tiny_variant(), np.random.default_rng(0))  # small_world
    assert torch.equal(scenario.internet_slot, scenario.neighbour_valid)


def test_internet_links_feature_counts_each_nodes_links_to_other_regions():
    """The observation's ``internet_links``: a node's neighbours in other regions on the degree feature's scale,
    so only gateways show it on the geographic graph and every node equals its degree on the other kinds."""
    from greengossip.envs.observation import NODE_INDEX

    env = make_env(EnvConfig(n_nodes=96, topology={"kind": "geographic", "gateways_per_region": 2}))
    observation, _ = env.reset(seed=5)
    scenario = env.unwrapped._fleet.scenario
    region = scenario.region_index.numpy()
    crossing = (region[scenario.neighbours.numpy()] != region[:, None]) & scenario.neighbour_valid.numpy()
    degree = scenario.neighbour_valid.numpy().sum(1)
    internet = observation["nodes"][:, NODE_INDEX["internet_links"]]
    assert np.allclose(internet, crossing.sum(1) / degree.max())
    assert 0 < np.count_nonzero(internet) <= 2 * len(env.unwrapped.config.regions)
    assert np.allclose(observation["nodes"][:, NODE_INDEX["degree"]], degree / degree.max())
    small_world = make_env(tiny_variant())
    nodes = small_world.reset(seed=0)[0]["nodes"]
    assert np.array_equal(nodes[:, NODE_INDEX["internet_links"]], nodes[:, NODE_INDEX["degree"]])


def test_gateways_are_mains_powered_where_a_region_has_such_nodes():
    graph, region, grid, config = _geographic(256, seed=1)
    for r in range(len(config.regions)):
        gateways = {a for a, b in graph.edges() if region[a] == r and region[b] != r}
        gateways |= {b for a, b in graph.edges() if region[b] == r and region[a] != r}
        if grid[region == r].sum() >= config.topology.gateways_per_region:
            assert all(grid[g] for g in gateways), f"region {r}: a battery node is a gateway"


# ---------------------------------------------------------------------------------------------- receiving
@st.composite
def rounds_of_messages(draw):
    """A random graph's padded neighbour table, each node's message bytes, awake flags and energy state."""
    n = draw(st.integers(2, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    graph = nx.gnp_random_graph(n, draw(st.floats(0.0, 1.0)), seed=seed)
    width = max(1, max(d for _, d in graph.degree()))
    table = np.tile(np.arange(n)[:, None], (1, width))
    valid = np.zeros((n, width), dtype=bool)
    for i in range(n):
        for slot, j in enumerate(sorted(graph.neighbors(i))):
            table[i, slot], valid[i, slot] = j, True
    floats = lambda lo, hi: torch.tensor(draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)),  # noqa: E731
                                         dtype=torch.float64)
    sent = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    bytes_sent = torch.where(sent, floats(1.0, 2e7), 0.0)
    awake = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))) | sent
    links = [draw(st.sampled_from(sorted(LINK_PROFILES))) for _ in range(n)]
    capacity = floats(0.5, 20.0)
    return {
        "graph": graph, "neighbours": torch.as_tensor(table), "valid": torch.as_tensor(valid),
        "bytes_sent": bytes_sent, "awake": awake, "links": links,
        "idle_w": floats(0.1, 5.0), "action_wh": floats(0.0, 5.0), "battery": floats(0.0, 1.0) * capacity,
        "capacity": capacity, "harvest": floats(0.0, 5.0),
        "grid": torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        "charge_limit": floats(0.0, 10.0), "efficiency": draw(st.floats(0.05, 1.0)),
    }


def _reception(m):
    profiles = [LINK_PROFILES[name] for name in m["links"]]
    as64 = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return receive(m["bytes_sent"], m["awake"], m["neighbours"], m["valid"],
                   joule_per_bit=as64([p.downlink_joule_per_bit for p in profiles]),
                   downlink_bit_s=as64([p.downlink_mbit_s * 1e6 for p in profiles]),
                   idle_w=m["idle_w"], tail_j=as64([p.tail_s * p.tail_w for p in profiles]))


@given(rounds_of_messages())
def test_energy_is_conserved_per_node_with_receiving_included(m):
    """energy in = stored + used + spilled per node and round, with what a node receives in its demand."""
    reception = _reception(m)
    demand = m["action_wh"] + reception.receive_wh
    flow = settle_energy(demand, m["battery"], m["capacity"], m["harvest"], m["grid"], m["charge_limit"],
                         m["efficiency"])
    delta_stored = flow.battery_after - m["battery"]
    torch.testing.assert_close(flow.harvested + flow.grid,
                               flow.consumed + delta_stored + flow.spilled + flow.charge_loss, atol=TOL, rtol=TOL)
    torch.testing.assert_close(flow.consumed + flow.unmet, m["action_wh"] + reception.receive_wh,
                               atol=TOL, rtol=TOL)
    assert (reception.receive_wh >= 0).all()


@given(rounds_of_messages())
def test_awake_nodes_receive_what_their_sending_neighbours_broadcast(m):
    reception = _reception(m)
    graph = m["graph"]
    for i in graph.nodes:
        expected = sum(float(m["bytes_sent"][j]) for j in graph.neighbors(i)) if bool(m["awake"][i]) else 0.0
        assert float(reception.bytes_received[i]) == pytest.approx(expected, rel=1e-12, abs=1e-9)
        if expected == 0.0:
            assert float(reception.receive_wh[i]) == 0.0, "a node that takes nothing in pays nothing"


@given(rounds_of_messages())
def test_internet_bytes_count_each_awake_receiver_over_an_internet_link(m):
    internet = m["valid"] & (torch.rand(m["valid"].shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    carried = network_bytes(m["bytes_sent"], m["awake"], m["neighbours"], internet)
    for i in m["graph"].nodes:
        reached = sum(1 for slot in range(internet.shape[1])
                      if internet[i, slot] and m["awake"][m["neighbours"][i, slot]])
        assert float(carried[i]) == pytest.approx(float(m["bytes_sent"][i]) * reached, rel=1e-12)


def test_receive_cost_is_the_downlink_figure_and_below_the_uplink_cost():
    """Huang et al.'s downlink costs less per bit than the uplink on both radios; the reference agrees
    with the batched cost on a scenario's nodes."""
    for profile in LINK_PROFILES.values():
        assert 0 < profile.downlink_joule_per_bit < profile.uplink_joule_per_bit
    scenario = make_scenario(tiny_variant(), np.random.default_rng(0))
    n = scenario.n_nodes
    bytes_sent = torch.full((n,), 1e6)
    everyone = torch.ones(n, dtype=torch.bool)
    reception = receive(bytes_sent, everyone, scenario.neighbours, scenario.neighbour_valid,
                        joule_per_bit=scenario.downlink_joule_per_bit, downlink_bit_s=scenario.downlink_bit_s,
                        idle_w=scenario.idle_w, tail_j=scenario.tail_j)
    for i in range(n):
        assert float(reception.receive_wh[i]) == pytest.approx(
            node_receive_cost(scenario, i, float(reception.bytes_received[i])), rel=1e-5)


# ---------------------------------------------------------------------------------------------- accounting
def _play(config, rounds: int = 6, action: int = 2):
    env = make_env(config)
    env.reset(seed=5)
    infos = []
    for _ in range(rounds):
        *_, terminated, truncated, info = env.step(np.full(env.unwrapped.n_nodes, action))
        infos.append(info)
        if terminated or truncated:
            break
    return infos


def test_info_reports_both_accountings_and_the_reward_charges_the_configured_one():
    runs = {accounting: _play(tiny_variant(energy__network_accounting=accounting))
            for accounting in ("marginal", "attributional")}
    for accounting, infos in runs.items():
        for info in infos:
            assert info["carbon_g"] == pytest.approx(info[f"carbon_{accounting}_g"])
            assert info["carbon_marginal_g"] <= info["carbon_attributional_g"]
            assert info["carbon_g"] == pytest.approx(info["carbon_grid_g"] + info["carbon_backbone_g"])
    for marginal, attributional in zip(*runs.values()):
        # the same world: the same carbon under each accounting, whichever the reward uses
        assert marginal["carbon_marginal_g"] == pytest.approx(attributional["carbon_marginal_g"])
        assert marginal["carbon_attributional_g"] == pytest.approx(attributional["carbon_attributional_g"])
        assert marginal["internet_bytes"] > 0
    # attributional kWh/GB is far above the power model's marginal figure
    assert backbone_kwh_per_gb(2023) > 20 * marginal_network_kwh_per_gb()
    ratio = np.mean([a["carbon_backbone_g"] / m["carbon_backbone_g"] for m, a in zip(*runs.values())])
    assert ratio == pytest.approx(backbone_kwh_per_gb(2023) / marginal_network_kwh_per_gb(), rel=1e-3)


def test_a_single_region_fleet_in_radio_range_uses_no_internet():
    config = tiny_variant(topology={"kind": "geographic"},
                          regions=[{"name": "Oslo", "country_iso": "NOR", "latitude": 59.91, "longitude": 10.75,
                                    "fraction": 1.0}])
    for info in _play(config):
        assert info["internet_bytes"] == 0
        assert info["carbon_backbone_g"] == 0 and info["carbon_attributional_g"] == info["carbon_grid_g"]
        assert info["bytes_received"] > 0 and info["energy_breakdown_wh"]["receive"] > 0


def test_fleet_energy_includes_what_the_nodes_receive():
    """A grid-backed fleet never browns out: energy_wh is every node's action plus what it received."""
    fleet = [{"device": "jetson_nano", "link": "lte", "fraction": 1.0, "battery_wh": 5.0, "solar_wp": 5.0,
              "grid_connected": True}]
    for info in _play(tiny_variant(fleet=fleet)):
        breakdown = info["energy_breakdown_wh"]
        assert set(breakdown) == {"compute", "radio", "receive", "base"}
        assert breakdown["receive"] > 0
        assert info["energy_wh"] == pytest.approx(sum(breakdown.values()), rel=1e-6)


# ---------------------------------------------------------------------------------------------- workload
def test_learner_workload_sends_exactly_the_learners_parameters():
    config = tiny_variant(learning__model="mlp", workload={"kind": "learner"})
    scenario = make_scenario(config, np.random.default_rng(0))
    n_params = initial_state(config, scenario).params.shape[1]
    expected = [message_bytes(n_params, level) for level in COMPRESSION_LEVELS]
    torch.testing.assert_close(scenario.costs.bytes_sent[0, 2:], torch.tensor(expected, dtype=torch.float32))
    assert expected[0] == 4 * n_params


def test_emulated_profile_states_bytes_and_compute_together():
    profile = WORKLOAD_PROFILES["mobilenet_v2"]
    workload = make_workload("emulated", "mobilenet_v2", learner_params=650)
    full, q8, top10, top1 = workload.bytes_per_level()
    assert full == pytest.approx(14.0e6, rel=0.01)  # MobileNetV2 as float32
    assert q8 == pytest.approx(full / 4, rel=1e-3) and top10 == pytest.approx(full / 5, rel=1e-3)
    assert top1 == pytest.approx(full / 50, rel=1e-3)
    config = EnvConfig()
    scenario = make_scenario(config, np.random.default_rng(0))
    rpi = scenario.device_names.index("rpi4")
    samples = config.learning.local_steps * config.learning.batch_size
    seconds = samples * profile.train_gflop_per_sample / 1.8  # the Pi's 1.8 GFLOP/s
    assert float(scenario.costs.compute_wh[rpi, 1]) == pytest.approx(6.4 * seconds / 3600, rel=1e-4)


def _accuracy_trajectory(action: int, local_steps: int, rounds: int = 15) -> np.ndarray:
    config = tiny_variant(learning__model="mlp", learning__local_steps=local_steps, workload={"kind": "learner"},
                          fleet=[{"device": "jetson_orin_nano", "link": "wifi", "fraction": 1.0, "battery_wh": 5.0,
                                  "solar_wp": 0.0, "grid_connected": True}])
    trajectories = []
    for seed in range(2):
        scenario = make_scenario(config, np.random.default_rng(seed))
        state = initial_state(config, scenario)
        accuracy = []
        with torch.inference_mode():
            for _ in range(rounds):
                chosen = torch.full((scenario.n_nodes,), action)
                state, _ = transition(config, scenario, state, chosen, draw_randomness(config, scenario, state.round))
                accuracy.append(float(state.accuracy))
        trajectories.append(accuracy)
    return np.mean(trajectories, axis=0)


def test_compression_and_local_steps_change_the_accuracy_trajectory():
    """On the MLP learner, top-1 % messages (CHOCO error feedback) learn clearly slower than full ones,
    and more local steps per round clearly faster: compression and compute buy accuracy."""
    full = _accuracy_trajectory(action=2, local_steps=2)
    top1 = _accuracy_trajectory(action=2 + COMPRESSION_LEVELS.index("top1"), local_steps=2)
    one_step = _accuracy_trajectory(action=2, local_steps=1)
    eight_steps = _accuracy_trajectory(action=2, local_steps=8)
    assert full.mean() - top1.mean() > 0.1, (full.round(2), top1.round(2))
    assert eight_steps.mean() - one_step.mean() > 0.05, (eight_steps.round(2), one_step.round(2))
