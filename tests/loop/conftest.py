"""Fixtures for the feedback-loop tests (review queue, CVAT set-up, drift, metrics, notifications)."""

from __future__ import annotations

import sys
from pathlib import Path

# The CVAT test server lives beside the data tests; it is shared, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
