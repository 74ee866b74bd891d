"""Property tests on the pure energy and gossip pieces (house style 16), and energy over whole episodes.

The identity pinned here is read off ``settle_energy``: per node and round,

    harvested + grid + from_battery = consumed + stored_in + charge_loss + spilled,

and since the cell changes by Δstored = stored_in - from_battery,

    harvested + grid = consumed + Δstored + spilled + charge_loss.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import DEVICES, make_env, tiny_variant
from hypothesis import given, settings
from hypothesis import strategies as st

from greengossip.envs.dynamics.energy import available_for_actions, settle_energy
from greengossip.envs.dynamics.gossip import DENSE_MIXING_UP_TO, mixing_matrix
from greengossip.envs.dynamics.learning import ModelSpec
from greengossip.envs.reference import settle_node
from greengossip.envs.scenario import make_scenario, metropolis_hastings_edges

TOL = 1e-9  # float64 throughout the property tests
FLOWS = ("harvested", "from_harvest", "from_battery", "grid", "consumed", "stored_in", "charge_loss",
         "spilled", "unmet")

unit = st.floats(0.0, 1.0, allow_nan=False)
wh = st.floats(0.0, 50.0, allow_nan=False)


@st.composite
def fleets(draw):
    """Node arrays for one round: demand, battery in [0, capacity], harvest, grid flag, charge limit."""
    n = draw(st.integers(1, 12))
    column = lambda strategy: torch.tensor(draw(st.lists(strategy, min_size=n, max_size=n)),  # noqa: E731
                                           dtype=torch.float64)
    capacity = column(st.floats(0.1, 50.0, allow_nan=False))
    # demand, harvest and battery often land exactly on each other's boundaries
    demand = column(st.one_of(wh, st.just(0.0)))
    battery = column(unit) * capacity
    harvest = column(st.one_of(wh, st.just(0.0)))
    harvest = torch.where(column(unit) < 0.2, demand, harvest)
    grid = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    charge_limit = column(st.floats(0.0, 20.0, allow_nan=False))
    efficiency = draw(st.floats(0.05, 1.0, allow_nan=False))
    return demand, battery, capacity, harvest, grid, charge_limit, efficiency


reserves = st.one_of(st.just(0.0), st.floats(0.0, 0.5, allow_nan=False))


@given(fleets(), reserves)
def test_energy_is_conserved_per_node(fleet, min_soc):
    demand, battery, capacity, harvest, grid, limit, eff = fleet
    flow = settle_energy(demand, battery, capacity, harvest, grid, limit, eff, min_soc)
    supplied = flow.harvested + flow.grid + flow.from_battery
    used = flow.consumed + flow.stored_in + flow.charge_loss + flow.spilled
    torch.testing.assert_close(supplied, used, atol=TOL, rtol=TOL)
    delta_stored = flow.battery_after - battery
    torch.testing.assert_close(flow.harvested + flow.grid,
                               flow.consumed + delta_stored + flow.spilled + flow.charge_loss,
                               atol=TOL, rtol=TOL)
    torch.testing.assert_close(flow.consumed + flow.unmet, demand, atol=TOL, rtol=TOL)


@given(fleets(), reserves)
def test_flows_are_non_negative_and_battery_stays_in_range(fleet, min_soc):
    demand, battery, capacity, harvest, grid, limit, eff = fleet
    flow = settle_energy(demand, battery, capacity, harvest, grid, limit, eff, min_soc)
    for name in FLOWS:
        assert (getattr(flow, name) >= -TOL).all(), f"{name} negative: {getattr(flow, name)}"
    assert (flow.battery_after >= -TOL).all()
    assert (flow.battery_after <= capacity + TOL).all()
    assert (flow.stored_in <= limit * eff + TOL).all()


@given(fleets(), reserves)
def test_supply_order_harvest_then_battery_then_grid(fleet, min_soc):
    demand, battery, capacity, harvest, grid, limit, eff = fleet
    flow = settle_energy(demand, battery, capacity, harvest, grid, limit, eff, min_soc)
    uses_battery = flow.from_battery > TOL
    assert torch.allclose(flow.from_harvest[uses_battery], harvest[uses_battery], atol=TOL)
    uses_grid = flow.grid > TOL
    above_reserve = (battery - min_soc * capacity).clamp_min(0.0)
    assert torch.allclose(flow.from_battery[uses_grid], above_reserve[uses_grid], atol=TOL)
    assert (flow.grid[~grid] == 0).all(), "only grid-connected nodes may draw from the grid"
    assert (flow.unmet[grid] <= TOL).all(), "a grid-connected node is never short"
    # surplus is only spilled when the cell is full or the charge rate is used up
    spills = flow.spilled > 1e-6
    full = flow.battery_after >= capacity - 1e-6
    at_rate = (flow.stored_in + flow.charge_loss) >= limit - 1e-6
    assert (full | at_rate)[spills].all()


@given(fleets(), reserves)
def test_settle_energy_matches_per_node_reference(fleet, min_soc):
    demand, battery, capacity, harvest, grid, limit, eff = fleet
    flow = settle_energy(demand, battery, capacity, harvest, grid, limit, eff, min_soc)
    for i in range(len(demand)):
        ref = settle_node(float(demand[i]), float(battery[i]), float(capacity[i]), float(harvest[i]),
                          bool(grid[i]), float(limit[i]), eff, min_soc)
        for name, value in ref.items():
            assert float(getattr(flow, name)[i]) == pytest.approx(value, abs=TOL), name


@given(fleets(), st.floats(0.0, 0.5, allow_nan=False))
def test_affordable_demand_never_browns_out_or_digs_into_the_reserve(fleet, min_soc):
    demand, battery, capacity, harvest, grid, limit, eff = fleet
    budget = available_for_actions(battery, capacity, harvest, grid, min_soc)
    demand = torch.minimum(demand, budget)  # the node only attempts what it can afford
    flow = settle_energy(demand, battery, capacity, harvest, grid, limit, eff, min_soc)
    assert (flow.unmet <= TOL).all()
    reserve = min_soc * capacity
    off_grid = ~grid
    floor = torch.minimum(battery, reserve)
    assert (flow.battery_after[off_grid] >= floor[off_grid] - TOL).all()


@given(fleets(), st.floats(0.01, 0.5, allow_nan=False))
def test_battery_is_never_drawn_below_the_reserve_whatever_the_demand(fleet, min_soc):
    """The reserve binds every draw, sleep included: demand beyond harvest + battery above the reserve (off the
    grid) is unmet, the node browns out, and a cell below its reserve only ever charges."""
    demand, battery, capacity, harvest, grid, limit, eff = fleet
    flow = settle_energy(demand, battery, capacity, harvest, grid, limit, eff, min_soc)
    reserve = min_soc * capacity
    assert (flow.battery_after >= torch.minimum(battery, reserve) - TOL).all()
    below = battery < reserve
    assert (flow.from_battery[below] == 0).all()
    short = ~grid & (demand > harvest + (battery - reserve).clamp_min(0.0) + TOL)
    assert (flow.unmet[short] > 0).all()


# ---------------------------------------------------------------------------------------------- episodes
def _episode_energy(config, seed: int, rounds: int):
    """Per-round (info, battery before, battery after) over a random-action episode."""
    env = make_env(config)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    capacity = env.unwrapped.scenario.capacity_wh
    records = []
    for _ in range(rounds):
        before = env.unwrapped.sim_state.battery_wh.clone()
        *_, terminated, truncated, info = env.step(env.action_space.sample())
        after = env.unwrapped.sim_state.battery_wh
        assert (after >= 0).all() and (after <= capacity + 1e-5).all()
        records.append((info, float(before.sum()), float(after.sum())))
        if terminated or truncated:
            break
    return records, env.unwrapped.config.energy.charge_efficiency


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("efficiency,overdraw", [(1.0, "refuse"), (0.9, "refuse"), (0.9, "brown_out")])
def test_fleet_energy_balances_every_round_of_an_episode(efficiency, overdraw, device):
    config = tiny_variant(max_rounds=24, device=device, energy__charge_efficiency=efficiency,
                          energy__initial_soc_low=0.05, energy__initial_soc_high=0.5, energy__overdraw=overdraw)
    records, eff = _episode_energy(config, seed=1, rounds=24)
    assert len(records) >= 10
    charged = any(after > before for _, before, after in records)
    assert charged, "no round charged a battery: pick another seed"
    for info, before, after in records:
        for key in ("energy_wh", "grid_wh", "harvested_wh", "spilled_wh", "carbon_g", "bytes_sent"):
            assert info[key] >= 0, key
        # harvested + grid - consumed - Δstored - spilled is the charging loss: zero at efficiency 1,
        # at most (1 - eff) of the harvest that was not spilled otherwise
        supplied = info["harvested_wh"] + info["grid_wh"]
        loss = supplied - info["energy_wh"] - (after - before) - info["spilled_wh"]
        tol = 1e-4 * (1 + info["harvested_wh"] + info["energy_wh"])
        assert loss >= -tol
        assert loss <= (1 - eff) * (info["harvested_wh"] - info["spilled_wh"]) + tol


def test_batteries_stay_above_the_reserve_over_an_episode_of_greedy_actions():
    """Every node trains and broadcasts in full every round, on small cells: batteries run down to the
    reserve and stay there (they reached 0 when the reserve bound only the actions)."""
    config = tiny_variant(max_rounds=40, energy__initial_soc_low=0.15, energy__initial_soc_high=0.3,
                          fleet=[{"device": "rpi4", "link": "wifi", "fraction": 1.0, "battery_wh": 1.0,
                                  "solar_wp": 0.5}])
    env = make_env(config)
    env.reset(seed=4)
    scenario = env.unwrapped.scenario
    reserve = config.energy.battery_min_soc * scenario.capacity_wh
    lowest = scenario.capacity_wh.clone()
    dropped = 0
    for _ in range(config.max_rounds):
        *_, terminated, truncated, info = env.step(np.full(config.n_nodes, 2))
        battery = env.unwrapped.sim_state.battery_wh
        assert (battery >= reserve - 1e-6).all(), (battery, reserve)
        lowest = torch.minimum(lowest, battery)
        dropped += int(info["dropped_nodes"])
        if terminated or truncated:
            break
    assert dropped > 0, "no node ran short: the reserve went untested"
    assert torch.allclose(lowest, reserve, atol=1e-4), "some battery never reached the reserve"


def test_episode_totals_are_sums_of_rounds():
    records, _ = _episode_energy(tiny_variant(max_rounds=8), seed=3, rounds=8)
    last = records[-1][0]
    assert last["episode_energy_wh"] == pytest.approx(sum(r[0]["energy_wh"] for r in records))
    assert last["episode_carbon_g"] == pytest.approx(sum(r[0]["carbon_g"] for r in records))


# ---------------------------------------------------------------------------------------------- mixing
@st.composite
def connected_graphs(draw, min_nodes: int, max_nodes: int, mean_degree: float | None = None):
    n = draw(st.integers(min_nodes, max_nodes))
    seed = draw(st.integers(0, 2**31 - 1))
    p = draw(st.floats(0.0, 1.0)) if mean_degree is None else mean_degree / n
    graph = nx.gnp_random_graph(n, p, seed=seed)
    components = [sorted(c) for c in nx.connected_components(graph)]
    for left, right in zip(components, components[1:]):
        graph.add_edge(left[0], right[-1])
    return graph


def _check_mixing(graph: nx.Graph, sparse_expected: bool) -> None:
    n = graph.number_of_nodes()
    src, dst, weight = (torch.as_tensor(a) for a in metropolis_hastings_edges(graph))
    w = mixing_matrix(n, src, dst, weight.float())
    assert (w.layout == torch.sparse_csr) == sparse_expected
    dense = w.to_dense().double()
    torch.testing.assert_close(dense, dense.T, atol=1e-7, rtol=0)
    torch.testing.assert_close(dense.sum(0), torch.ones(n, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(dense.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-5, rtol=0)
    assert (dense >= -1e-7).all()
    # support = the graph plus self loops
    adjacency = torch.as_tensor(nx.to_numpy_array(graph, nodelist=range(n)) > 0)
    support = adjacency | torch.eye(n, dtype=torch.bool)
    assert not (dense.abs() > 1e-9)[~support].any()
    assert (dense[support & ~torch.eye(n, dtype=torch.bool)] > 0).all()


@given(connected_graphs(2, DENSE_MIXING_UP_TO))
def test_mixing_matrix_is_symmetric_and_doubly_stochastic(graph):
    _check_mixing(graph, sparse_expected=False)


@settings(max_examples=5)
@given(connected_graphs(DENSE_MIXING_UP_TO + 1, 600, mean_degree=6.0))
def test_sparse_mixing_matrix_of_larger_fleets_is_symmetric_and_doubly_stochastic(graph):
    _check_mixing(graph, sparse_expected=True)


def test_a_sparse_fleet_is_built_and_stepped_without_torch_beta_warnings():
    """torch warns once per process at its first sparse CSR tensor; a fresh interpreter, where any
    UserWarning is an error, is the only place where that first tensor is certainly the env's."""
    script = (
        "import numpy as np\n"
        "from conftest import tiny_variant\n"
        "from envs.gossip_env import EdgeLearningEnv\n"
        f"config = tiny_variant(n_nodes={DENSE_MIXING_UP_TO + 8}, observation={{'adjacency': False}})\n"
        "env = EdgeLearningEnv(config)\n"
        "env.reset(seed=0)\n"
        "env.step(np.full(config.n_nodes, 2))\n"
    )
    tests = Path(__file__).parent
    result = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", script], cwd=tests.parent,
                            env={**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{tests.parent}"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("n_nodes", [8, 600], ids=["dense", "sparse"])
def test_scenario_neighbour_mixing_completes_to_a_doubly_stochastic_matrix(n_nodes):
    """The scenario stores W without its diagonal; adding the self weights back gives W."""
    config = tiny_variant(n_nodes=n_nodes, topology={"kind": "random_geometric", "radius": 0.1},
                          observation={"adjacency": False})
    scenario = make_scenario(config, np.random.default_rng(0))
    off = scenario.neighbour_mixing.to_dense().double().reshape(n_nodes, n_nodes)
    assert (off.diagonal() == 0).all()
    full = off + torch.diag(1.0 - off.sum(1))
    assert (full >= -1e-7).all()
    torch.testing.assert_close(full, full.T, atol=1e-7, rtol=0)
    torch.testing.assert_close(full.sum(0), torch.ones(n_nodes, dtype=torch.float64), atol=1e-5, rtol=0)


@given(connected_graphs(2, 40), st.integers(0, 2**31 - 1))
def test_full_gossip_round_keeps_the_fleet_mean(graph, seed):
    """Doubly stochastic mixing of the public copies preserves the average model (D-PSGD invariant)."""
    n = graph.number_of_nodes()
    src, dst, weight = (torch.as_tensor(a) for a in metropolis_hastings_edges(graph))
    w = mixing_matrix(n, src, dst, weight.float()).double()
    x = torch.randn(n, ModelSpec("softmax").n_params, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    torch.testing.assert_close((w @ x).mean(0), x.mean(0), atol=1e-5, rtol=1e-5)


def test_a_node_refuses_what_its_true_battery_cannot_pay_whatever_the_scheduler_was_told():
    """The round decides on the true battery: nodes at their reserve with no sun are asked to train and send
    in full (as a scheduler misled by noisy telemetry would), and the off-grid ones quietly sleep instead."""
    import dataclasses

    from greengossip.envs.simulator import draw_randomness, transition
    from greengossip.envs.state import initial_state

    config = tiny_variant(availability__model="always")
    scenario = make_scenario(config, np.random.default_rng(0))
    scenario = dataclasses.replace(scenario, harvest_wh=torch.zeros_like(scenario.harvest_wh))
    state = initial_state(config, scenario)
    reserve = config.energy.battery_min_soc * scenario.capacity_wh
    state = state.replace(battery_wh=reserve + 1e-4)
    action = torch.full((scenario.n_nodes,), 2)
    after, outcome = transition(config, scenario, state, action, draw_randomness(config, scenario, state.round))
    off_grid = ~scenario.grid_connected
    assert off_grid.any() and (~off_grid).any()
    assert torch.equal(after.dropped, off_grid)
    assert (after.last_action[off_grid] == 0).all() and (after.last_action[~off_grid] == 2).all()
    assert (after.battery_wh[off_grid] >= reserve[off_grid] - 1e-6).all()
    assert (outcome.energy.unmet[off_grid] > 0).all(), "the sleep draw beyond the reserve is unmet (brown-out)"


@pytest.mark.parametrize("overdraw", ["refuse", "brown_out"])
def test_a_node_cut_off_mid_round_loses_the_round_and_the_energy_it_drew(overdraw):
    """Off-grid nodes a little above their reserve, no sun, asked to train and send in full: refusing, they
    sleep on their battery; browning out, they drain to the reserve and their model, public copy and
    neighbours' view stay as before the round."""
    import dataclasses

    from greengossip.envs.simulator import draw_randomness, transition
    from greengossip.envs.state import initial_state

    config = tiny_variant(availability__model="always", energy__overdraw=overdraw)
    scenario = make_scenario(config, np.random.default_rng(0))
    scenario = dataclasses.replace(scenario, harvest_wh=torch.zeros_like(scenario.harvest_wh))
    state = initial_state(config, scenario)
    reserve = config.energy.battery_min_soc * scenario.capacity_wh
    full_round = scenario.costs.total_wh[:, 2]
    state = state.replace(battery_wh=reserve + 0.5 * full_round)  # half a round above the reserve
    action = torch.full((scenario.n_nodes,), 2)
    after, outcome = transition(config, scenario, state, action, draw_randomness(config, scenario, state.round))
    off_grid = ~scenario.grid_connected
    assert off_grid.any()
    assert torch.equal(after.dropped, off_grid) and (after.last_action[off_grid] == 0).all()
    torch.testing.assert_close(after.params[off_grid], state.params[off_grid])
    torch.testing.assert_close(after.public[off_grid], state.public[off_grid])
    spent = (state.battery_wh - after.battery_wh)[off_grid]
    if overdraw == "brown_out":
        torch.testing.assert_close(after.battery_wh[off_grid], reserve[off_grid])
        torch.testing.assert_close(outcome.energy.consumed[off_grid], 0.5 * full_round[off_grid])
    else:
        sleep = scenario.costs.total_wh[off_grid, 0]
        torch.testing.assert_close(spent, sleep)
        assert (after.battery_wh[off_grid] > reserve[off_grid]).all()


def test_under_brown_outs_asking_by_the_true_mask_saves_the_harvest_for_rounds_that_finish():
    """Off-grid nodes at their reserve whose sun pays three quarters of a round: asked every round, they
    burn each round's harvest and finish none; asked only when the true mask allows, they bank the harvest
    and finish about every other round."""
    import dataclasses

    from greengossip.envs.simulator import affordable_actions, draw_randomness, transition
    from greengossip.envs.state import at_round, initial_state, time_index

    config = tiny_variant(availability__model="always", energy__overdraw="brown_out")
    scenario = make_scenario(config, np.random.default_rng(0))
    full_round = scenario.costs.total_wh[:, 2]
    scenario = dataclasses.replace(scenario, harvest_wh=(0.75 * full_round).unsqueeze(1).expand_as(
        scenario.harvest_wh).contiguous())
    reserve = config.energy.battery_min_soc * scenario.capacity_wh
    off_grid = ~scenario.grid_connected
    finished = {}
    for by_mask in (False, True):
        state = initial_state(config, scenario).replace(battery_wh=reserve.clone())
        finished[by_mask] = torch.zeros(scenario.n_nodes)
        for _ in range(8):
            action = torch.full((scenario.n_nodes,), 2)
            if by_mask:
                harvest = at_round(scenario.harvest_wh, time_index(scenario, state.round))
                allowed = affordable_actions(config, scenario, state.battery_wh, harvest, state.round)
                action = torch.where(allowed[:, 2], action, 0)
            state, _ = transition(config, scenario, state, action, draw_randomness(config, scenario, state.round))
            finished[by_mask] += (state.last_action == 2).float()
    assert off_grid.any()
    assert (finished[False][off_grid] == 0).all()
    assert (finished[True][off_grid] >= 3).all(), finished[True][off_grid]
