"""Fixtures for the feedback-loop tests (review queue, CVAT set-up, drift, metrics, notifications)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The CVAT test server lives beside the data tests; it is shared, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

from cvat_server import FakeCVAT  # noqa: E402


@pytest.fixture
def cvat() -> FakeCVAT:
    """An empty CVAT test server (``tests/data/cvat_server.py``) for one test, stopped after it.

    Export and import requests finish on the first status poll; a test that wants to see the
    client wait through ``queued``/``started`` answers sets ``polls_before_finish`` itself.
    """
    server = FakeCVAT()
    server.polls_before_finish = 0
    server.start()
    try:
        yield server
    finally:
        server.stop()
