"""The pipeline passes "map labels by name" to the pull step (issue 15).

Compiled-pipeline level: the ``map_labels_by_name`` run parameter exists, defaults to on, and is
wired into the pull task's ``map_by_name`` input. Component level: the pull component's own
function, given a CVAT project whose labels were created as ``bent, dent, scratch``, writes
``scratch`` 0 and ``bent`` 1 (and fails with the flag off, as the pipeline did before).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.pipeline import ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from cvat_server import FakeCVAT, Frame, Job, Project, Task  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "training.yaml")
    doc = ir.load(path)
    return {**doc, "tasks": ir.tasks(doc["spec"])}


def test_compiled_pipeline_wires_map_labels_by_name_into_the_pull(compiled):
    params = compiled["spec"]["root"]["inputDefinitions"]["parameters"]
    assert params["map_labels_by_name"]["parameterType"] == "BOOLEAN"
    assert params["map_labels_by_name"]["defaultValue"] is True
    pull = compiled["tasks"]["pull-annotations"].spec
    assert pull["inputs"]["parameters"]["map_by_name"] == {"componentInputParameter": "map_labels_by_name"}


def test_a_run_argument_can_turn_it_off():
    from pipelines.params import parse_params

    assert parse_params(["map_labels_by_name=false"]) == {"map_labels_by_name": False}


@pytest.fixture
def reordered_cvat():
    """A CVAT test server with project 7: labels bent, dent, scratch; one completed job."""
    import io

    import numpy as np

    from components.data.synth import render_nut

    frames = []
    for i, kind in enumerate(["scratch", "bent", "both", "good"]):
        img, boxes = render_nut(np.random.default_rng([9, i]), 64, kind)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        frames.append(Frame(f"f{i}.png", buf.getvalue(), 64, 64, [(("scratch", "bent")[c], *b) for c, b in boxes]))
    server = FakeCVAT()
    server.polls_before_finish = 0
    labels = ["bent", "dent", "scratch"]
    server.projects[7] = Project(7, "reordered", labels)
    server.tasks[70] = Task(70, "t", labels, frames, [Job(701, 70, range(0, 4))], "", 7)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _run_pull(cvat, out: Path, **kw):
    from components.kfp.pull_annotations import pull_annotations

    artifact = SimpleNamespace(path=str(out), metadata={})
    result = pull_annotations(
        source="",
        data_format="",
        cvat_task_id=0,
        cvat_project_id=7,
        include_all_jobs=False,
        source_version="",
        raw_dataset=artifact,
        **kw,
    )
    return result, artifact


def test_pull_component_maps_a_reordered_project_by_name(reordered_cvat, tmp_path, monkeypatch):
    from components.data import DatasetError

    monkeypatch.setenv("CVAT_URL", reordered_cvat.url)
    monkeypatch.setenv("CVAT_TOKEN", reordered_cvat.pat)
    with pytest.raises(DatasetError, match="never renumbered silently"):
        _run_pull(reordered_cvat, tmp_path / "off", map_by_name=False)
    result, artifact = _run_pull(reordered_cvat, tmp_path / "raw")  # the default: by name
    assert result.images == 4 and artifact.metadata["classes"] == ["scratch", "bent"]
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["class_map"] == {"scratch": 0, "bent": 1}
    ids = {
        line.split()[0]
        for item in manifest["items"]
        for line in (tmp_path / "raw" / item["label"]).read_text().splitlines()
    }
    assert ids == {"0", "1"}
