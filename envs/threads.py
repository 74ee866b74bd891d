"""NumPy's BLAS with one thread while the simulator works.

Some of the round's small products and the scenario's sampling go through NumPy's OpenBLAS, which starts
a thread per core for the larger ones. On a machine whose cores are busy with anything else (training
workers, the learner, a second env) those threads wait for each other and a round becomes many times
slower (a 32-node step 9-14x, a 128-node step 1.5-2x, measured with the machine's two cores shared):
the reason the CLI runs torch with one thread too. The limit holds only while the env works
(``FleetBatch`` wraps reset and step); the caller's setting is restored afterwards.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from threadpoolctl import ThreadpoolController

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def _blas_libraries() -> tuple:
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


def simulator_call(method: F) -> F:
    """Run ``method`` with every BLAS library NumPy loaded limited to one thread (a few µs per call)."""

    @functools.wraps(method)
    def limited(*args, **kwargs):
        libraries = _blas_libraries()
        before = [library.get_num_threads() for library in libraries]
        for library, threads in zip(libraries, before):
            if threads != 1:
                library.set_num_threads(1)
        try:
            return method(*args, **kwargs)
        finally:
            for library, threads in zip(libraries, before):
                if threads != 1:
                    library.set_num_threads(threads)

    return limited  # type: ignore[return-value]
