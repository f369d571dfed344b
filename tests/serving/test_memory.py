"""keep_large_buffers: multi-megabyte buffers reuse heap memory instead of faulting fresh pages in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

_FAULTS = r"""
import resource, sys, threading
import numpy as np
from serving.memory import keep_large_buffers
if sys.argv[1] == "tuned":
    assert keep_large_buffers()

def one_worker():
    # What a server thread does per 640 px request: the body arrives in 256 KB pieces, is joined
    # (4.9 MB) and becomes the input tensor; all of it is freed afterwards.
    for _ in range(20):
        pieces = [bytes(262144) for _ in range(20)]
        body = b"".join(pieces)
        tensor = np.frombuffer(body, np.float32).copy()
        del pieces, body, tensor

for _ in range(2):  # the second round is measured: warm-up excluded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    workers = [threading.Thread(target=one_worker) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_stop_faulting_fresh_pages():
    default, tuned = _faults("default"), _faults("tuned")
    # By default the large buffers are fresh mappings, faulted in page by page every request.
    assert default > 10_000, default
    assert tuned < default / 20, (tuned, default)
