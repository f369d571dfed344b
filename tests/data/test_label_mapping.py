"""Label ids follow names: projects with labels in another order or with extra labels (issue 15).

At the core (``pull_annotations(map_by_name=True)``) and in the CLI (``vinspect data pull
--map-by-name`` against the CVAT test server's project). The pipeline side is in
``tests/pipeline/test_map_by_name.py``.
"""

from __future__ import annotations

import json

import pytest
from cvat_server import Job, Project, Task
from typer.testing import CliRunner

from components.data import DatasetError, pull_annotations, read_manifest
from vinspect.cli import app

runner = CliRunner()


def _relabel(export, names: list[str]) -> dict[str, int]:
    """Rewrite a YOLO 1.1 export's obj.names to ``names``, keeping each box's *name*.

    Returns the number of boxes per name, as the original ids meant them (0 scratch, 1 bent).
    """
    old = ["scratch", "bent"]
    (export / "obj.names").write_text("".join(n + "\n" for n in names))
    data = (export / "obj.data").read_text()
    (export / "obj.data").write_text(data.replace("classes = 2", f"classes = {len(names)}"))
    counts: dict[str, int] = {}
    for label in sorted((export / "obj_train_data").glob("*.txt")):
        lines = []
        for line in label.read_text().splitlines():
            cid, rest = line.split(" ", 1)
            name = old[int(cid)]
            counts[name] = counts.get(name, 0) + 1
            lines.append(f"{names.index(name)} {rest}")
        label.write_text("".join(ln + "\n" for ln in lines))
    return counts


def _ids_by_name(out, manifest) -> dict[str, int]:
    """Boxes per class name in the written dataset (through the manifest's classes)."""
    counts: dict[str, int] = {}
    for item in manifest.items:
        for line in (out / item["label"]).read_text().splitlines():
            name = manifest.classes[int(line.split()[0])]
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_other_order_and_extra_labels_map_by_name(export_copy, tmp_path):
    before = _relabel(export_copy, ["dent", "bent", "rust", "scratch"])
    # One box of an extra label: left out and counted, not an error.
    first = sorted((export_copy / "obj_train_data").glob("*.txt"))[0]
    first.write_text(first.read_text() + "0 0.5 0.5 0.1 0.1\n")
    m = pull_annotations(export_copy, tmp_path / "ds", map_by_name=True)
    assert m.classes == ["scratch", "bent"]
    assert m.class_map == {"bent": 1, "scratch": 0}
    assert m.ignored_labels == ["dent", "rust"]
    assert m.ignored_boxes == {"dent": 1}
    assert _ids_by_name(tmp_path / "ds", m) == before


def test_without_map_by_name_the_extra_label_is_still_refused(export_copy, tmp_path):
    _relabel(export_copy, ["scratch", "bent", "dent"])
    first = sorted((export_copy / "obj_train_data").glob("*.txt"))[0]
    first.write_text(first.read_text() + "2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match="unknown label 'dent'.*--map-by-name"):
        pull_annotations(export_copy, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_a_missing_required_class_is_an_error(export_copy, tmp_path):
    (export_copy / "obj.names").write_text("scratch\n")
    data = (export_copy / "obj.data").read_text()
    (export_copy / "obj.data").write_text(data.replace("classes = 2", "classes = 1"))
    for label in (export_copy / "obj_train_data").glob("*.txt"):
        label.write_text("".join(ln + "\n" for ln in label.read_text().splitlines() if ln.startswith("0 ")))
    with pytest.raises(DatasetError, match=r"required class\(es\) \['bent'\] are not labels of the export"):
        pull_annotations(export_copy, tmp_path / "ds", map_by_name=True)
    assert not (tmp_path / "ds").exists()


def test_an_unknown_required_class_is_an_error(export_copy, tmp_path):
    with pytest.raises(DatasetError, match=r"\['dent'\] are not labels"):
        pull_annotations(export_copy, tmp_path / "ds", classes=["scratch", "bent", "dent"], map_by_name=True)


@pytest.fixture
def reordered_project(cvat, cvat_frames):
    """Project 7 on the CVAT test server, labels created as bent, dent, scratch (ids 0, 1, 2)."""
    labels = ["bent", "dent", "scratch"]
    cvat.projects[7] = Project(7, "reordered", labels)
    cvat.tasks[70] = Task(70, "reordered-1", labels, list(cvat_frames[2]), [Job(701, 70, range(0, 8))], "", 7)
    cvat.polls_before_finish = 0
    return cvat


def test_cli_pull_of_a_reordered_project_maps_by_name(reordered_project, tmp_path, monkeypatch):
    cvat = reordered_project
    monkeypatch.setenv("CVAT_TOKEN", cvat.pat)
    args = ["data", "pull", "--cvat-url", cvat.url, "--project", "7", "--out", str(tmp_path / "ds")]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "never renumbered silently" in refused.output
    r = runner.invoke(app, [*args, "--map-by-name"])
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "ds")
    assert m.class_map == {"bent": 1, "scratch": 0} and m.source_labels == ["bent", "dent", "scratch"]
    assert json.loads((tmp_path / "ds" / "qa_report.json").read_text())["ignored_labels"] == ["dent"]
    # Task 2's frames: the fixture draws 4 scratches and 4 bent notches on them.
    assert _ids_by_name(tmp_path / "ds", m) == {"scratch": 4, "bent": 4}
