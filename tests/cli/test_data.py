"""`vinspect data ...` (``vinspect/cli/data.py``) end to end through the Typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vinspect.cli import app

runner = CliRunner()


def test_synth_import_validate(tmp_path):
    r = runner.invoke(
        app, ["data", "synth", "--out", str(tmp_path / "export"), "-n", "20", "--seed", "4", "--size", "64"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "data",
            "import",
            str(tmp_path / "export"),
            "--out",
            str(tmp_path / "ds"),
            "--classes",
            "scratch,bent",
            "--val",
            "0.25",
            "--seed",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert f"dataset_id: {manifest['dataset_id']}" in r.output
    assert manifest["counts"]["images"] == {"train": 15, "val": 5, "total": 20}
    r = runner.invoke(app, ["data", "validate", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{") :])["dataset_id"] == manifest["dataset_id"]


def test_import_error_is_reported_with_file_and_line(export_copy, tmp_path):
    label = sorted((export_copy / "obj_train_data").glob("*.txt"))[0]
    label.write_text("0 0.5 0.5 0.1\n")
    r = runner.invoke(app, ["data", "import", str(export_copy), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2
    assert f"obj_train_data/{label.name}:1: expected 'class cx cy w h'" in r.output
    assert not (tmp_path / "ds").exists()


def test_pull_from_cvat_with_token_from_env(cvat, tmp_path, monkeypatch):
    monkeypatch.setenv("CVAT_TOKEN", cvat.pat)
    monkeypatch.delenv("CVAT_USERNAME", raising=False)
    monkeypatch.delenv("CVAT_PASSWORD", raising=False)
    cvat.polls_before_finish = 0
    r = runner.invoke(
        app,
        ["data", "pull", "--cvat-url", cvat.url, "--task", "1", "--out", str(tmp_path / "ds"), "--include-all-jobs"],
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["counts"]["images"]["total"] == 12
    assert manifest["source"]["host"] == cvat.url and "token" not in json.dumps(manifest).lower()
    assert cvat.pat not in r.output


def test_pull_needs_task_or_project(tmp_path):
    r = runner.invoke(app, ["data", "pull", "--cvat-url", "http://127.0.0.1:9", "--out", str(tmp_path / "ds")])
    assert r.exit_code != 0 and "exactly one of --task or --project" in r.output


def test_import_with_upload_uses_settings(local_stack, monkeypatch, small_export, tmp_path):
    local_stack.apply_env(monkeypatch)
    r = runner.invoke(app, ["data", "import", str(small_export), "--out", str(tmp_path / "ds"), "--upload"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    bucket = local_stack.env["VINSPECT_DATA_BUCKET"]
    assert f"uploaded: s3://{bucket}/datasets/{manifest['dataset_id']}/" in r.output
    key = f"datasets/{manifest['dataset_id']}/manifest.json"
    assert json.loads(local_stack.s3.get_object(Bucket=bucket, Key=key)["Body"].read()) == manifest
