"""Fixtures of the data tests: small synthetic exports and the fake CVAT server.

``tests/conftest.py`` imports the fixtures, so ``tests/data`` and ``tests/cli`` (the ``vinspect data``
commands) reach the same ones. ``cvat_server`` is imported as a top-level module from ``tests/data``,
as the data tests import it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))

from cvat_server import FakeCVAT, Frame, Job, Project, Task  # noqa: E402


@pytest.fixture(scope="session")
def small_export(tmp_path_factory) -> Path:
    """A 24-image synthetic CVAT "YOLO 1.1" export (read-only: copy before mutating)."""
    from components.data import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "export", 24, seed=7, size=64)


@pytest.fixture
def export_copy(small_export, tmp_path) -> Path:
    """A private, mutable copy of ``small_export``."""
    dest = tmp_path / "export"
    shutil.copytree(small_export, dest)
    return dest


def _frames(n: int, seed: int, prefix: str) -> list[Frame]:
    import io

    from components.data.synth import render_nut

    frames = []
    kinds = ["scratch", "bent", "both", "good"]
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img, boxes = render_nut(rng, 64, kinds[i % len(kinds)])
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        frames.append(
            Frame(f"{prefix}_{i:03d}.png", buf.getvalue(), 64, 64, [(("scratch", "bent")[c], *b) for c, b in boxes])
        )
    return frames


@pytest.fixture(scope="session")
def cvat_frames() -> dict[int, list[Frame]]:
    """Rendered frames per task (rendered once; the server copies the lists)."""
    return {1: _frames(12, 1, "t1"), 2: _frames(8, 2, "t2"), 3: _frames(8, 3, "t3"), 4: _frames(8, 4, "t4")}


@pytest.fixture
def cvat(cvat_frames) -> FakeCVAT:
    """A running fake CVAT with:

    - task 1: 12 frames, job 11 (frames 0-5) completed, job 12 (6-11) in progress;
    - task 2: 8 frames, jobs 21 and 22 both completed;
    - project 5 with task 3 (subset Train, 8 frames) and task 4 (subset Validation, 8 frames).
    """
    server = FakeCVAT()
    labels = ["scratch", "bent"]
    server.tasks[1] = Task(
        1,
        "line-1",
        labels,
        list(cvat_frames[1]),
        [Job(11, 1, range(0, 6), "completed"), Job(12, 1, range(6, 12), "in progress", "annotation")],
    )
    server.tasks[2] = Task(
        2, "line-2", labels, list(cvat_frames[2]), [Job(21, 2, range(0, 4)), Job(22, 2, range(4, 8))]
    )
    server.projects[5] = Project(5, "metal-nuts", labels)
    server.tasks[3] = Task(3, "batch-train", labels, list(cvat_frames[3]), [Job(31, 3, range(0, 8))], "Train", 5)
    server.tasks[4] = Task(4, "batch-val", labels, list(cvat_frames[4]), [Job(41, 4, range(0, 8))], "Validation", 5)
    server.start()
    try:
        yield server
    finally:
        server.stop()
