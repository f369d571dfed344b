"""Pieces of the local run and the CLI that need no stack: parameters, fingerprints, errors."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from pipelines.params import parse_params, pipeline_parameters
from pipelines.source import source_fingerprint


def test_parameters_are_typed_and_defaulted():
    params = pipeline_parameters()
    assert list(params)[0] == "data_source"
    assert params["epochs"] == {"type": int, "default": 50}
    assert params["gpu_tolerations"]["type"] is list and params["gpu_node_selector"]["type"] is dict
    assert parse_params(
        [
            "epochs=3",
            "min_map50=0.25",
            "skip_if_unchanged=yes",
            'gpu_tolerations=[{"key": "gpu", "operator": "Exists"}]',
        ]
    ) == {
        "epochs": 3,
        "min_map50": 0.25,
        "skip_if_unchanged": True,
        "gpu_tolerations": [{"key": "gpu", "operator": "Exists"}],
    }


@pytest.mark.parametrize(
    "pair,message",
    [
        ("epochs", "expected key=value"),
        ("epoch=3", "did you mean 'epochs'"),
        ("epochs=three", "not a valid int"),
        ("skip_if_unchanged=perhaps", "not a valid bool"),
        ("gpu_node_selector=[1]", "not a valid dict"),
    ],
)
def test_bad_parameters_are_refused(pair, message):
    with pytest.raises(ValueError, match=message):
        parse_params([pair])


def test_fingerprint_changes_with_content_not_with_location(tmp_path):
    export = tmp_path / "export"
    (export / "obj_train_data").mkdir(parents=True)
    label = export / "obj_train_data" / "a.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    first = source_fingerprint(str(export))
    assert first == source_fingerprint(str(export))
    label.write_text("1 0.5 0.5 0.1 0.1\n")
    os.utime(label, ns=(1, 2))
    assert source_fingerprint(str(export)) != first
    assert source_fingerprint("") == ""
    with pytest.raises(FileNotFoundError):
        source_fingerprint(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="S3 client"):
        source_fingerprint("s3://bucket/export.zip")


def test_fingerprint_of_s3_objects(local_stack):
    s3 = local_stack.s3
    s3.put_object(Bucket="vinspect-data", Key="fp/export.zip", Body=b"one")
    first = source_fingerprint("s3://vinspect-data/fp/export.zip", s3_client=s3)
    s3.put_object(Bucket="vinspect-data", Key="fp/export.zip", Body=b"two")
    assert source_fingerprint("s3://vinspect-data/fp/export.zip", s3_client=s3) != first
    with pytest.raises(ValueError, match="no object"):
        source_fingerprint("s3://vinspect-data/fp/nothing-here", s3_client=s3)


def test_run_without_a_stack_says_what_to_do(tmp_path, monkeypatch):
    from vinspect.cli import app

    monkeypatch.setenv("VINSPECT_HOME", str(tmp_path))
    for key in ("AWS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    result = CliRunner().invoke(app, ["pipeline", "run", "--local"])
    assert result.exit_code == 1 and "vinspect local up" in result.output
    no_local = CliRunner().invoke(app, ["pipeline", "run"])
    assert no_local.exit_code == 1 and "--local" in no_local.output


def test_run_without_a_model_server_fails_before_training(local_stack, tmp_path, monkeypatch):
    from pipelines.local import LocalRunError, run_local
    from tests.conftest import free_port

    local_stack.apply_env(monkeypatch)
    monkeypatch.setenv("VINSPECT_HOME", str(tmp_path))
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LocalRunError, match="no model server answers at " + url):
        run_local(str(tmp_path / "never-read"), model_url=url, pipeline_root=tmp_path / "root")
    assert not list((tmp_path / "root").glob("vinspect-training-*")), "a step ran although the run could not finish"


def test_run_with_a_missing_source_says_so(local_stack, model_server, tmp_path, monkeypatch):
    from pipelines.local import LocalRunError, run_local

    local_stack.apply_env(monkeypatch)
    monkeypatch.setenv("VINSPECT_HOME", str(tmp_path))
    with pytest.raises(LocalRunError, match="data source .* does not exist"):
        run_local(str(tmp_path / "no-such-export"), model_url=model_server, pipeline_root=tmp_path / "root")


def test_outcome_records_are_appended_as_json_lines(tmp_path, monkeypatch, capsys):
    import json

    from components.kfp.outcome import OUTCOME_ENV, record_outcome, report_outcome

    path = tmp_path / "outcome.jsonl"
    monkeypatch.setenv(OUTCOME_ENV, str(path))
    record_outcome("deployed", "v3 is serving", version="3")
    assert report_outcome("skipped", "same data", "abc123") == "skipped: same data"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"outcome": "deployed", "detail": "v3 is serving", "version": "3"},
        {"outcome": "skipped", "detail": "same data", "dataset_id": "abc123"},
    ]
    assert "[vinspect] outcome: skipped: same data" in capsys.readouterr().out
