"""The CVAT pull with the real cvat-sdk client against a local CVAT 2.x test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.data import CVATError, DatasetError, import_dataset, pull_annotations
from components.data.cvat_pull import make_client

FAST = {"cvat_poll": 0.02, "cvat_timeout": 10}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def client(cvat):
    c = make_client(cvat.url, token=cvat.pat)
    yield c
    c.close()


def _exports(cvat) -> list[str]:
    return [p for m, p in cvat.calls if m == "POST" and p.endswith("/dataset/export")]


def test_task_with_all_jobs_completed_is_one_export(cvat, client, tmp_path):
    m = import_dataset(None, tmp_path / "ds", cvat_client=client, task_id=2, **FAST)
    assert _exports(cvat) == ["/api/tasks/2/dataset/export"]
    polls = [p for meth, p in cvat.calls if p.startswith("/api/requests/")]
    assert len(polls) == cvat.polls_before_finish + 1, "polled until finished"
    assert any(p == "/api/tasks/2/dataset/download" for _, p in cvat.calls), "downloaded result_url"
    assert m.counts["images"]["total"] == 8
    assert m.source == {
        "type": "cvat",
        "host": cvat.url,
        "task_id": 2,
        "format": "Ultralytics YOLO Detection 1.0",
        "include_all_jobs": False,
        "jobs": [21, 22],
    }
    assert m.counts["boxes"]["total"] == {"scratch": 4, "bent": 4}


def test_only_completed_jobs_are_pulled(cvat, client, tmp_path):
    m = pull_annotations(None, tmp_path / "done", cvat_client=client, task_id=1, **FAST)
    assert _exports(cvat) == ["/api/jobs/11/dataset/export"]
    assert sorted(i["name"] for i in m.items) == [f"t1_{i:03d}.png" for i in range(6)]
    assert m.source["jobs"] == [11] and m.source["skipped_jobs"] == [12]
    cvat.calls.clear()
    m = pull_annotations(None, tmp_path / "all", cvat_client=client, task_id=1, include_all_jobs=True, **FAST)
    assert _exports(cvat) == ["/api/tasks/1/dataset/export"]
    assert len(m.items) == 12


def test_several_completed_jobs_are_merged(cvat, client, tmp_path):
    from cvat_server import Job

    cvat.tasks[1].jobs[1].frames = range(6, 9)
    cvat.tasks[1].jobs.append(Job(13, 1, range(9, 12), "completed"))
    m = pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=1, **FAST)
    assert _exports(cvat) == ["/api/jobs/11/dataset/export", "/api/jobs/13/dataset/export"]
    assert sorted(i["name"] for i in m.items) == [f"t1_{i:03d}.png" for i in (*range(6), 9, 10, 11)]


def test_project_keeps_cvat_subsets(cvat, client, tmp_path):
    m = import_dataset(None, tmp_path / "ds", cvat_client=client, project_id=5, fmt="YOLO 1.1", **FAST)
    assert _exports(cvat) == ["/api/projects/5/dataset/export"]
    assert m.split["method"] == "cvat_subsets"
    assert m.split["subsets"] == {"Train": "train", "Validation": "val"}
    assert m.counts["images"] == {"train": 8, "val": 8, "total": 16}
    assert all(i["name"].startswith("t3_") for i in m.items if i["split"] == "train")


def test_password_login_uses_session_and_csrf(cvat, tmp_path):
    with make_client(cvat.url, username=cvat.username, password=cvat.password) as c:
        m = pull_annotations(None, tmp_path / "ds", cvat_client=c, task_id=2, fmt="CVAT for images 1.1", **FAST)
    assert ("POST", "/api/auth/login") in cvat.calls
    assert m.source["format"] == "CVAT for images 1.1" and len(m.items) == 8


def test_wrong_password(cvat):
    with pytest.raises(CVATError, match="cannot log in .*400.*Unable to log in"):
        make_client(cvat.url, username=cvat.username, password="wrong")


def test_missing_credentials(cvat):
    with pytest.raises(CVATError, match="no CVAT credentials"):
        make_client(cvat.url)


def test_bad_token_is_401(cvat, tmp_path):
    c = make_client(cvat.url, token="not-a-token")
    with pytest.raises(CVATError, match=r"HTTP 401.*Invalid token.*CVAT_TOKEN"):
        pull_annotations(None, tmp_path / "ds", cvat_client=c, task_id=2, **FAST)
    assert not (tmp_path / "ds").exists() and _hidden(tmp_path) == []


def test_unknown_task_is_404(cvat, client, tmp_path):
    with pytest.raises(CVATError, match=r"reading task 99 failed: HTTP 404.*does not exist"):
        pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=99, **FAST)
    assert not (tmp_path / "ds").exists() and _hidden(tmp_path) == []


def test_unknown_format_is_405(cvat, client, tmp_path):
    with pytest.raises(CVATError, match=r"HTTP 405.*format"):
        pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=2, fmt="COCO 1.0", **FAST)


def test_failed_export(cvat, client, tmp_path):
    cvat.fail_exports.add(("task", 2))
    with pytest.raises(CVATError, match="CVAT failed to export task 2.*disk full"):
        pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=2, **FAST)
    assert not (tmp_path / "ds").exists() and _hidden(tmp_path) == []


def test_export_timeout(cvat, client, tmp_path):
    cvat.stuck_exports.add(("task", 2))
    with pytest.raises(CVATError, match=r"not ready after 0s .*'started'"):
        pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=2, cvat_poll=0.05, cvat_timeout=0.3)
    assert sum(1 for _, p in cvat.calls if p.startswith("/api/requests/")) >= 3
    assert not (tmp_path / "ds").exists() and _hidden(tmp_path) == []


def test_no_completed_jobs(cvat, client, tmp_path):
    for j in cvat.tasks[1].jobs:
        j.state = "in progress"
    with pytest.raises(
        DatasetError,
        match=r"task 1 has no completed annotation jobs \(job 11: acceptance/in progress; "
        r"job 12: annotation/in progress\).*--include-all-jobs",
    ):
        pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=1, **FAST)
    assert _exports(cvat) == []


@pytest.mark.parametrize("stage", ["annotation", "validation", "acceptance"])
def test_completed_in_any_stage_counts(cvat, client, tmp_path, stage):
    """State "completed" is done whatever the stage; acceptance/completed is CVAT's "accepted"."""
    cvat.tasks[1].jobs[1].stage, cvat.tasks[1].jobs[1].state = stage, "completed"
    m = pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=1, **FAST)
    assert _exports(cvat) == ["/api/tasks/1/dataset/export"]
    assert m.source["jobs"] == [11, 12] and "skipped_jobs" not in m.source
    assert len(m.items) == 12


@pytest.mark.parametrize("stage", ["annotation", "validation", "acceptance"])
@pytest.mark.parametrize("state", ["new", "in progress", "rejected"])
def test_unfinished_or_rejected_jobs_do_not_count(cvat, client, tmp_path, stage, state):
    cvat.tasks[2].jobs[1].stage, cvat.tasks[2].jobs[1].state = stage, state
    m = pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=2, **FAST)
    assert _exports(cvat) == ["/api/jobs/21/dataset/export"]
    assert m.source["jobs"] == [21] and m.source["skipped_jobs"] == [22]
    assert sorted(i["name"] for i in m.items) == [f"t2_{i:03d}.png" for i in range(4)]


def test_accepted_is_not_a_job_state():
    """The fake server refuses what CVAT would never send, so a test cannot lean on it."""
    from cvat_server import Job

    with pytest.raises(ValueError, match="state 'accepted'"):
        Job(1, 1, range(1), "accepted")


@pytest.mark.parametrize("gt_state", ["new", "in progress", "rejected"])
def test_unfinished_ground_truth_job_does_not_block_the_task_export(cvat, client, tmp_path, gt_state):
    from cvat_server import Job

    # CVAT's GT job: a sample of frames the annotation jobs also cover, still being annotated.
    cvat.tasks[2].jobs.append(Job(23, 2, range(0, 8, 3), gt_state, "annotation", "ground_truth"))
    m = pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=2, **FAST)
    assert _exports(cvat) == ["/api/tasks/2/dataset/export"]
    assert m.source["jobs"] == [21, 22] and m.source["ignored_jobs"] == [23]
    assert "skipped_jobs" not in m.source
    assert sorted(i["name"] for i in m.items) == [f"t2_{i:03d}.png" for i in range(8)]


@pytest.mark.parametrize("job_type", ["ground_truth", "replica"])
def test_completed_ground_truth_job_frames_are_not_exported_twice(cvat, client, tmp_path, job_type):
    from cvat_server import Job

    # Job 13 covers frames 0, 3, 6, 9: two of them belong to the completed job 11 as well.
    cvat.tasks[1].jobs.append(Job(13, 1, range(0, 12, 3), "completed", "acceptance", job_type))
    m = pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=1, **FAST)
    assert _exports(cvat) == ["/api/jobs/11/dataset/export"]
    assert m.source["jobs"] == [11] and m.source["skipped_jobs"] == [12]
    assert m.source["ignored_jobs"] == [13]
    names = [i["name"] for i in m.items]
    assert sorted(names) == [f"t1_{i:03d}.png" for i in range(6)]


def test_only_ground_truth_jobs_completed(cvat, client, tmp_path):
    from cvat_server import Job

    for j in cvat.tasks[1].jobs:
        j.state = "new"
    cvat.tasks[1].jobs.append(Job(13, 1, range(0, 12, 3), "completed", "acceptance", "ground_truth"))
    with pytest.raises(
        DatasetError,
        match=r"task 1 has no completed annotation jobs \(job 11: acceptance/new; "
        r"job 12: annotation/new\)",
    ):
        pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=1, **FAST)
    assert _exports(cvat) == []


def test_sdk_calls_stay_within_the_cvat_api(cvat, client, tmp_path, shared_dir):
    """Every endpoint the pull used is in CVAT's schema excerpt (or is the job list / result download)."""
    import re

    import yaml

    spec = yaml.safe_load((shared_dir / "specs" / "cvat_api_excerpt.yaml").read_text())
    templates = [
        (m.lower(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"))
        for p, ops in spec["paths"].items()
        for m in ops
    ]
    pull_annotations(None, tmp_path / "a", cvat_client=client, task_id=1, **FAST)
    pull_annotations(None, tmp_path / "b", cvat_client=client, project_id=5, **FAST)
    with make_client(cvat.url, username=cvat.username, password=cvat.password):
        pass
    extra = {("GET", "/api/jobs")}  # CVAT's job list, outside the excerpt
    for method, path in cvat.calls:
        if (method, path) in extra or re.fullmatch(r"/api/(tasks|projects|jobs)/\d+/dataset/download", path):
            continue
        assert any(m == method.lower() and t.match(path) for m, t in templates), (method, path)


# CVAT behind its own traefik, reached from inside the cluster by the Service name (issue 13, defect 5)

ROUTE_HOST = "cvat-vinspect.apps.example.test"


@pytest.fixture
def routed_cvat(cvat):
    """The same server, but only the Route's host name is routed (CVAT's compose traefik rule)."""
    cvat.hosts = [ROUTE_HOST]
    yield cvat
    cvat.hosts = None


def test_a_pull_by_service_url_without_the_host_gets_traefiks_404(routed_cvat, tmp_path):
    with pytest.raises(CVATError, match="404"):
        with make_client(routed_cvat.url, token=routed_cvat.pat) as client:
            pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=2, **FAST)


def test_a_pull_by_service_url_sends_cvat_host_and_works(routed_cvat, tmp_path):
    with make_client(routed_cvat.url, token=routed_cvat.pat, host=ROUTE_HOST) as client:
        m = pull_annotations(None, tmp_path / "ds", cvat_client=client, task_id=2, **FAST)
    assert m.counts["images"]["total"] == 8
    assert not [p for _, p in routed_cvat.calls if p.startswith("404 ")], "a request went out without the Host header"
