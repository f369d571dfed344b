"""Keep large buffers in the process heap instead of mapping fresh pages for each one.

The runtime handles a few multi-megabyte buffers per image: a 640 px float32 tensor is 4.9 MB,
and the HTTP layer reads a request body in 256 KB pieces. glibc serves every allocation above its
mmap threshold (128 KB at first) with fresh pages from the kernel and returns them on free, so
each image pays thousands of page faults, zeroing included. Raising the threshold (and the trim
threshold with it) makes those buffers reuse heap memory: on the model server this halved the
CPU time of a 640 px v2 request outside inference (measured with ``benchmarks/stream.py``).

The cost is resident memory: freed buffers stay in the heap for the next request, which is
bounded by the largest working set (tens of MB here) and shows in the benchmarks' peak RSS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit; a 640 px tensor is well below
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where that is not glibc.

    Environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do the same
    but must be set before the process starts; this works from inside, at start-up.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds raised: %s", ok)
    return ok
