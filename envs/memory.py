"""The round's large blocks come back from the heap, not as new pages from the system (glibc's malloc).

Every round allocates a few model-sized blocks (the new models, the public copies, the pull: 5.3 MB each at
64 environments x 32 nodes) and frees the previous round's. glibc serves a block above its mmap threshold
with fresh pages and returns free memory at the heap's top above its trim threshold to the system. It
raises both thresholds as big blocks come and go, but the trim threshold only to twice the largest block
freed, and a round frees several: each round then faulted 2-3 MB of fresh pages back in (600-700 minor
faults at 64 x 32 nodes). Stepped in alternation with 64 single envs (bench_step's comparison) the batched
step took 32-36 ms against 27-29 ms with the thresholds below (stop 26, design note 33).

The mmap threshold is glibc's own ceiling for the one it raises by itself (DEFAULT_MMAP_THRESHOLD_MAX, 32 MB
on 64-bit systems), the trim threshold four times that: a process keeps at most that much freed memory.
They are process-wide, like glibc's own adjustments; ``GREENGOSSIP_KEEP_FREED_MEMORY=0`` leaves malloc as
it was. On systems without glibc (macOS, Windows, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
TRIM_THRESHOLD_BYTES = 128 << 20
OPT_OUT_VARIABLE = "GREENGOSSIP_KEEP_FREED_MEMORY"


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True if they were set."""
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it (musl, macOS and Windows C libraries do not)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                  TRIM_THRESHOLD_BYTES))
