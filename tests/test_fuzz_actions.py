"""Fuzzing the actions: whatever a caller passes to ``step``, it is either a valid integer action (and
then exactly that action is played) or one ValueError that names the action, what was given and what
is allowed. Bools, floats, strings, mixed lists, objects and ints beyond int64 are never played."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fuzz_support import ACCEPTED, LONG, REFUSED, SHORT, SILENT_ACCEPTANCE, UNCLEAR_CRASH, Tally
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from greengossip.envs.dynamics.energy import N_ACTIONS
from greengossip.envs.gossip_env import EdgeLearningEnv, validate_actions

N = 4
SMALL = {"n_nodes": N, "max_rounds": 3}
CPU = torch.device("cpu")

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64, np.complex64, np.dtype("<U3"), np.dtype("S2")]
SHAPES = [(N,), (N - 1,), (N + 1,), (1, N), (N, 1), (), (0,), (2, N)]

arrays = st.builds(lambda dtype, shape: (dtype, shape), st.sampled_from(DTYPES), st.sampled_from(SHAPES)).flatmap(
    lambda pair: npst.arrays(pair[0], pair[1]))
python_values = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(-2, N_ACTIONS + 1), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3), st.none(), st.booleans())
lists = st.lists(python_values, max_size=N + 2)
uniform_lists = st.lists(st.integers(-(2**66), 2**66), min_size=N, max_size=N)
object_arrays = lists.map(lambda values: np.array(values + [None], dtype=object)[: len(values)])
valid = st.one_of(st.lists(st.integers(0, N_ACTIONS - 1), min_size=N, max_size=N),
                  npst.arrays(st.sampled_from([np.int8, np.int32, np.int64, np.uint8, np.uint64]), (N,),
                              elements=st.integers(0, N_ACTIONS - 1)))
anything = st.one_of(valid, arrays, lists, uniform_lists, object_arrays, python_values,
                     st.lists(st.lists(st.integers(0, 5), max_size=3), max_size=N))


def _expected(action) -> np.ndarray | None:
    """The action as it must be played, or None if it must be refused (the contract, stated apart)."""
    if isinstance(action, np.ndarray):
        arr = action
    elif isinstance(action, list) and all(type(v) is int and -(2**63) <= v < 2**63 for v in action):
        arr = np.array(action, dtype=np.int64) if action else np.zeros(0, dtype=np.int64)
    else:
        return None
    if arr.dtype.kind not in "iu" or arr.shape != (N,):
        return None
    if arr.min() < 0 or arr.max() >= N_ACTIONS:
        return None
    return arr.astype(np.int64)


def check_action(action, tally: Tally) -> None:
    expected = _expected(action)
    try:
        played = validate_actions(action, (N,), CPU)
    except ValueError as exc:
        message = str(exc)
        clear = message.startswith("action: got ") and "allowed: an integer array of shape (4,)" in message
        if not clear or len(message) > 1_000:
            tally.record(UNCLEAR_CRASH, repr(action), message)
        elif expected is not None:
            tally.record(UNCLEAR_CRASH, repr(action), f"a valid action was refused: {message}")
        else:
            tally.record(REFUSED)
        return
    except Exception as exc:  # noqa: BLE001 - anything but the promised error is what we count
        tally.record(UNCLEAR_CRASH, repr(action), f"{type(exc).__name__}: {exc}")
        return
    if expected is None or not np.array_equal(played.numpy(), expected) or played.dtype != torch.long:
        tally.record(SILENT_ACCEPTANCE, repr(action), f"played {played.tolist()}")
    else:
        tally.record(ACCEPTED)


@SHORT
@given(anything)
def test_fuzz_actions_are_played_exactly_or_refused_clearly(action):
    check_action(action, Tally("actions", strict=True))


@pytest.mark.slow
def test_fuzz_actions_long_run():
    tally = Tally("actions")

    @LONG
    @given(anything)
    def run(action):
        check_action(action, tally)

    run()
    tally.assert_clean()


# ---------------------------------------------------------------------------------------------- the cases of the issue
@pytest.fixture(scope="module")
def env():
    env = EdgeLearningEnv(config=SMALL)
    env.reset(seed=0)
    return env


@pytest.mark.parametrize("action, given_text", [
    (np.ones(N, dtype=bool), "booleans"),
    (np.array(["1", "2", "0", "1"]), "strings"),
    ([1, "a", 2, 0], "strings"),
    (np.array([1, None, 2, 0], dtype=object), "Python objects"),
    ([2**63, 0, 0, 0], "floats"),
    ([2**64, 0, 0, 0], "Python objects"),
    (np.array([2**63, 0, 0, 0], dtype=np.uint64), "out of range"),
    (np.ones(N, dtype=np.float32), "floats"),
    (np.ones(N + 1, dtype=np.int64), "shape (5,)"),
    (np.full(N, N_ACTIONS), "out of range"),
    (np.full(N, -1), "out of range"),
    (None, "Python objects"),
    ([[1, 2], [3]], "not an array"),
])
def test_bad_actions_are_one_error_naming_the_action_the_value_and_what_is_allowed(env, action, given_text):
    with pytest.raises(ValueError, match=r"^action: got .*; allowed: an integer array of shape \(4,\)") as caught:
        env.step(action)
    assert given_text in str(caught.value)
    # the refused action changed nothing: a valid one still plays
    assert np.isfinite(env.step(np.zeros(N, dtype=np.int64))[1])
    env.reset(seed=0)


def test_integer_actions_of_any_integer_dtype_and_torch_tensors_are_played(env):
    for action in (np.full(N, 2, dtype=np.uint8), [2] * N, torch.full((N,), 2)):
        env.reset(seed=0)
        env.step(action)
        assert (env.last_outcome.action == 2).all() or env.last_outcome.dropped.any()


def test_a_bool_inside_a_list_is_not_an_action_code(env):
    with pytest.raises(ValueError, match="booleans"):
        env.step([0, True, 0, 0])
