"""`vinspect cvat setup` with the real cvat-sdk client against the CVAT test server (grown for it)."""

from __future__ import annotations

import secrets
import uuid

import numpy as np
import pytest
from cvat_server import Project
from typer.testing import CliRunner

from components.data import CVATError, DatasetError
from components.data.cvat_pull import make_client
from components.data.cvat_setup import ensure_project, label_ids, setup
from vinspect.cli import app

runner = CliRunner()


@pytest.fixture
def cvat(cvat):
    """The shared CVAT test server (tests/loop/conftest.py), answering one 'started' poll per request:
    the set-up's waits on CVAT's request queue are exercised, not skipped."""
    cvat.polls_before_finish = 1
    return cvat


@pytest.fixture
def client(cvat):
    c = make_client(cvat.url, token=cvat.pat)
    yield c
    c.close()


@pytest.fixture(scope="module")
def nuts(tmp_path_factory):
    """Six synthetic nuts (PNG) and their YOLO labels (scratch 0, bent 1), rendered once."""
    from components.data.synth import render_nut

    root = tmp_path_factory.mktemp("nuts")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    boxes = {}
    for i, kind in enumerate(["scratch", "bent", "both", "good", "scratch", "bent"]):
        img, b = render_nut(np.random.default_rng([5, i]), 64, kind)
        img.save(root / "images" / f"nut_{i}.png")
        (root / "labels" / f"nut_{i}.txt").write_text(
            "".join(
                f"{c} {(x0 + x1) / 128:.6f} {(y0 + y1) / 128:.6f} {(x1 - x0) / 64:.6f} {(y1 - y0) / 64:.6f}\n"
                for c, (x0, y0, x1, y1) in b
            )
        )
        boxes[f"nut_{i}.png"] = [(("scratch", "bent")[c], *bb) for c, bb in b]
    return root, boxes


def test_setup_creates_project_task_preannotations_and_annotator(cvat, client, nuts):
    root, truth = nuts
    report = setup(
        client,
        images=root / "images",
        task_name="line-1",
        annotations=root / "labels",
        annotator="labeller",
        annotator_password=secrets.token_urlsafe(12),
        segment_size=4,
        poll=0.01,
    )
    assert report.project_created and report.task_created and report.annotator_created
    [project] = cvat.projects.values()
    assert project.name == "metal-nuts" and project.labels == ["scratch", "bent"]
    task = cvat.tasks[report.task_id]
    assert task.project_id == project.id and [f.name for f in task.frames] == sorted(truth)
    assert [len(j.frames) for j in task.jobs] == [4, 2] and {j.state for j in task.jobs} == {"new"}
    assert report.task_url == f"{cvat.url}/tasks/{report.task_id}"
    assert report.frames == 6 and report.boxes == sum(len(b) for b in truth.values())
    for f in task.frames:  # boxes came back in pixels, on the right frame, with the right label
        got = sorted((lab, round(x0), round(y0), round(x1), round(y1)) for lab, x0, y0, x1, y1 in f.boxes)
        want = sorted((lab, round(x0), round(y0), round(x1), round(y1)) for lab, x0, y0, x1, y1 in truth[f.name])
        assert got == want, f.name
    assert all(s["source"] == "auto" for s in cvat.shapes[task.id])
    uid = cvat.users["labeller"]["id"]
    assert report.jobs_assigned == sorted(j.id for j in task.jobs)
    assert all(cvat.assignees[j.id] == uid for j in task.jobs)


def test_setup_is_idempotent(cvat, client, nuts):
    root, _ = nuts
    first = setup(client, images=root / "images", task_name="line-1", annotations=root / "labels", poll=0.01)
    posts = len([c for c in cvat.calls if c[0] in ("POST", "PUT", "PATCH")])
    again = setup(client, images=root / "images", task_name="line-1", annotations=root / "labels", poll=0.01)
    assert (again.project_id, again.task_id) == (first.project_id, first.task_id)
    assert not again.project_created and not again.task_created and again.boxes == 0
    assert len(cvat.projects) == 1 and len(cvat.tasks) == 1
    writes = [c for c in cvat.calls if c[0] in ("POST", "PUT", "PATCH")][posts:]
    assert writes == [], "a second run writes nothing"


def test_an_existing_project_gets_missing_labels_without_renumbering(cvat, client):
    cvat.projects[3] = Project(3, "metal-nuts", ["bent", "dent"])
    pid, created, added = ensure_project(client)
    assert (pid, created, added) == (3, False, ["scratch"])
    ids = label_ids(client, 3)
    assert list(ids) == ["bent", "dent", "scratch"] and ids["bent"] == 3001  # kept its id


def test_two_projects_with_the_name_are_refused(cvat, client):
    cvat.projects[3] = Project(3, "metal-nuts", ["scratch", "bent"])
    cvat.projects[4] = Project(4, "metal-nuts", ["scratch", "bent"])
    with pytest.raises(CVATError, match=r"2 CVAT projects are named 'metal-nuts' \(ids \[3, 4\]\)"):
        ensure_project(client)


def test_preannotations_from_the_model(cvat, client, nuts):
    root, truth = nuts
    seen = []

    def predict(image: bytes) -> list[dict]:
        seen.append(image[:8])
        return [
            {"class_name": "bent", "score": 0.9, "box": [1.0, 2.0, 20.0, 30.0]},
            {"class_name": "scratch", "score": 0.1, "box": [5.0, 5.0, 9.0, 9.0]},
        ]

    report = setup(client, images=root / "images", predict=predict, min_score=0.25, poll=0.01)
    assert len(seen) == 6 and report.boxes == 6
    assert all(f.boxes == [("bent", 1.0, 2.0, 20.0, 30.0)] for f in cvat.tasks[report.task_id].frames)


def test_images_from_a_zip_and_from_s3(cvat, client, nuts, tmp_path, local_stack):
    import zipfile

    root, _ = nuts
    archive = tmp_path / "batch-7.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted((root / "images").iterdir()):
            z.write(p, f"frames/{p.name}")
        z.writestr("README.txt", "not an image")
    r1 = setup(client, images=archive, poll=0.01)
    assert cvat.tasks[r1.task_id].name == "batch-7" and r1.frames == 6
    s3, bucket = local_stack.s3, local_stack.env["VINSPECT_DATA_BUCKET"]
    prefix = f"cvat-setup-{uuid.uuid4().hex[:6]}/line-2/"
    for p in sorted((root / "images").iterdir())[:3]:
        s3.put_object(Bucket=bucket, Key=prefix + p.name, Body=p.read_bytes())
    r2 = setup(client, images=f"s3://{bucket}/{prefix}", s3_client=s3, poll=0.01)
    assert cvat.tasks[r2.task_id].name == "line-2" and r2.frames == 3


def test_bad_labels_fail_before_anything_is_created(cvat, client, nuts, tmp_path):
    root, _ = nuts
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "nut_0.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"nut_0.txt:1: class id 7 is not one of \['scratch', 'bent'\]"):
        setup(client, images=root / "images", annotations=labels, poll=0.01)
    assert cvat.tasks == {}


def test_unknown_annotator_without_password_is_named(cvat, client):
    with pytest.raises(CVATError, match="user 'labeller' does not exist; set CVAT_ANNOTATOR_PASSWORD"):
        setup(client, annotator="labeller")


def test_cli_prints_the_task_url_and_no_secret(cvat, nuts, monkeypatch):
    root, _ = nuts
    monkeypatch.setenv("CVAT_TOKEN", cvat.pat)
    monkeypatch.setenv("CVAT_ANNOTATOR_PASSWORD", "annotator-pw-for-test")
    r = runner.invoke(
        app,
        [
            "cvat",
            "setup",
            "--cvat-url",
            cvat.url,
            "--images",
            str(root / "images"),
            "--annotations",
            str(root / "labels"),
            "--annotator",
            "labeller",
            "--task-name",
            "line-9",
        ],
    )
    assert r.exit_code == 0, r.output
    [task] = cvat.tasks.values()
    assert f"task: {cvat.url}/tasks/{task.id}" in r.output
    assert "annotator-pw-for-test" not in r.output and cvat.pat not in r.output
    r = runner.invoke(app, ["cvat", "setup", "--cvat-url", cvat.url, "--images", str(root / "missing")])
    assert r.exit_code == 2 and "image source does not exist" in r.output


def test_yolo_class_names_come_from_the_folder(nuts, tmp_path):
    from components.data.cvat_setup import read_yolo_annotations

    root, truth = nuts
    images = sorted((root / "images").iterdir())
    labels = tmp_path / "export"
    labels.mkdir()
    (labels / "obj.names").write_text("bent\nscratch\n")  # another order than ours: names decide
    for p in (root / "labels").iterdir():
        (labels / p.name).write_text(
            "".join(f"{1 - int(ln.split()[0])} {ln.split(' ', 1)[1]}\n" for ln in p.read_text().splitlines())
        )
    boxes = read_yolo_annotations(labels, images)
    assert {n: sorted(b[0] for b in bs) for n, bs in boxes.items()} == {
        n: sorted(b[0] for b in bs) for n, bs in truth.items()
    }
