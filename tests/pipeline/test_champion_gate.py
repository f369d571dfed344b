"""The gate's non-regression check on new data: the champion is re-evaluated on the candidate's split.

Real local stack (MLflow registry, S3). The models are tiny constant-output ONNX graphs
(``tests/registry/tiny_model.py``) so their metrics on a hand-made dataset are known exactly: every
validation image holds one ``bent`` box of 20x20 px in the middle of a 64x64 image. The champion
finds it exactly (mAP50-95 near 1); the "worse" candidate finds it 3 px off (IoU 0.74: mAP50 1.0,
so it clears every floor, but mAP50-95 about 0.5).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.registry.tiny_model import BENT_IN_THE_MIDDLE, build_tiny_onnx

DATASET_A = "a" * 16  # the champion's training data: nothing of it is on disk here
SHIFTED = [(1, 0.9, 35.0, 32.0, 20.0, 20.0)]
FLOORS = {"min_map50": 0.5, "min_map50_95": 0.0, "min_class_map50": 0.3}


def _dataset(root: Path, images: int = 4) -> tuple[Path, str]:
    """A dataset directory (CONTRACTS.md layout) whose val images each hold one bent box, centred."""
    from PIL import Image

    from components.data.manifest import SCHEMA, dataset_id, sha256_file

    files = {}
    for i in range(images):
        img = root / "images" / "val" / f"nut{i}.png"
        label = root / "labels" / "val" / f"nut{i}.txt"
        img.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (90 + 10 * i, 90, 90)).save(img)  # distinct files, distinct id
        label.write_text("1 0.5 0.5 0.3125 0.3125\n")
        for path in (img, label):
            files[path.relative_to(root).as_posix()] = sha256_file(path)
    classes = ["scratch", "bent"]
    ds_id = dataset_id(classes, files)
    (root / "data.yaml").write_text(
        f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n  0: scratch\n  1: bent\n"
    )
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "schema": SCHEMA,
                "dataset_id": ds_id,
                "classes": classes,
                "files": files,
                "counts": {"val": images},
                "source": {},
            }
        )
    )
    return root, ds_id


@pytest.fixture(scope="module")
def stack(local_stack, tmp_path_factory):
    """MLflow client, S3 client and bucket of the local stack, a dataset B, a registering helper."""
    from mlflow import MlflowClient

    from components.registry import promote, register_model

    client = MlflowClient(tracking_uri=local_stack.mlflow_uri, registry_uri=local_stack.mlflow_uri)
    s3 = local_stack.s3
    bucket = local_stack.env.get("AWS_S3_BUCKET", "models")
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("champion-gate")
    dataset_b, dataset_b_id = _dataset(root / "dataset-b")

    def champion(detections, *, dataset_id: str, metrics: dict) -> tuple[str, dict]:
        """A fresh registered model whose champion is a tiny model trained (nominally) on ``dataset_id``."""
        name = f"gate-{uuid.uuid4().hex[:8]}"
        onnx = build_tiny_onnx(root / name / "champion.onnx", detections, tag=name)
        info = register_model(
            client,
            s3,
            onnx_path=onnx,
            model_name=name,
            bucket=bucket,
            params={"epochs": 1},
            metrics=metrics,
            epoch_metrics_csv=None,
            plots=[],
            dataset_id=dataset_id,
            dataset_uri=None,
            git_revision=None,
            pipeline_run_id=f"run-{name}",
        )
        promote(client, name, info.version)
        return name, info

    return {
        "client": client,
        "s3": s3,
        "bucket": bucket,
        "root": root,
        "dataset": dataset_b,
        "dataset_id": dataset_b_id,
        "champion": champion,
    }


class _Artifact:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.uri = ""
        self.metrics: dict[str, float] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.metrics[key] = value


def _evaluate(stack, tmp_path, detections, *, model_name: str, version: str, allow: bool = False):
    """The pipeline's evaluate component, called as the KFP executor calls it."""
    from components.kfp.evaluate import evaluate

    onnx = build_tiny_onnx(tmp_path / "candidate.onnx", detections, tag=f"candidate-{tmp_path.name}")
    report = _Artifact(tmp_path / "eval_report")
    out = evaluate(
        onnx_model=_Artifact(onnx),
        dataset=_Artifact(stack["dataset"]),
        conf=0.001,
        iou=0.6,
        min_map50=FLOORS["min_map50"],
        min_map50_95=FLOORS["min_map50_95"],
        min_class_map50=FLOORS["min_class_map50"],
        max_regression=0.02,
        model_name=model_name,
        champion_version=version,
        allow_missing_champion=allow,
        eval_metrics=_Artifact(tmp_path / "eval_metrics" / "metrics"),
        eval_report=report,
    )
    gate = json.loads((Path(report.path) / "gate.json").read_text())
    return out, gate, Path(report.path)


def test_worse_model_on_new_data_is_rejected_against_the_champion_re_evaluated_there(
    stack, local_stack, tmp_path, monkeypatch
):
    from components.registry import champion_metrics

    local_stack.apply_env(monkeypatch)
    # The champion's recorded figures were on dataset A and are poor: comparing with them, or
    # with nothing, would let the worse candidate through.
    name, info = stack["champion"](BENT_IN_THE_MIDDLE, dataset_id=DATASET_A, metrics={"map50": 0.1, "map50_95": 0.05})
    assert champion_metrics(stack["client"], name, stack["dataset_id"]) is None

    out, gate, report = _evaluate(stack, tmp_path, SHIFTED, model_name=name, version=info.version)
    assert out.gate == "rejected", gate
    assert out.map50 == pytest.approx(1.0, abs=0.01) and out.map50_95 == pytest.approx(0.5, abs=0.05)
    champ = json.loads((report / "champion.json").read_text())
    assert champ["source"] == "re-evaluated" and champ["dataset_id"] == stack["dataset_id"]
    assert champ["trained_on"] == DATASET_A and champ["s3_uri"] == info.s3_uri
    assert champ["metrics"]["map50_95"] > 0.95
    # Rejected for the regression only: every floor held.
    failed = [c for c in gate["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["no_regression_map50_95"], failed
    assert all(c["ok"] for c in gate["checks"] if not c["check"].startswith("no_regression"))
    label = f"champion v{info.version} (re-evaluated on this data)"
    assert out.reasons.startswith(f"map50_95 {out.map50_95:.4f} < {label} {champ['metrics']['map50_95']:.4f}")

    # A candidate as good as the champion passes, and the reasons name the comparison made.
    good, good_gate, _ = _evaluate(stack, tmp_path / "good", BENT_IN_THE_MIDDLE, model_name=name, version=info.version)
    assert good.gate == "passed", good_gate
    assert f"map50_95 {good.map50_95:.4f} >= {label}" in good.reasons


def test_champion_on_the_same_data_uses_its_recorded_metrics(stack, tmp_path):
    from components.model.champion import RE_EVALUATED, RECORDED, ChampionUnavailable, champion_metrics_on
    from serving.detector import CORE_VERSION

    name, info = stack["champion"](
        BENT_IN_THE_MIDDLE,
        dataset_id=stack["dataset_id"],
        metrics={
            "map50": 0.97,
            "map50_95": 0.91,
            "precision": 0.9,
            "recall": 0.8,
            "eval_conf": 0.001,
            "eval_iou": 0.6,
            "eval_core": CORE_VERSION,
        },
    )
    # The figures were measured with other thresholds: not comparable, the ONNX is evaluated again.
    found = champion_metrics_on(
        stack["dataset"], mlflow_client=stack["client"], s3_client=stack["s3"], model_name=name, conf=0.25, iou=0.6
    )
    assert found.source == RE_EVALUATED and found.metrics["conf"] == 0.25
    # Same thresholds: no download on the fast path; it works even with the ONNX gone from S3.
    stack["s3"].delete_object(Bucket=stack["bucket"], Key=f"{name}/{info.version}/1/model.onnx")
    found = champion_metrics_on(stack["dataset"], mlflow_client=stack["client"], s3_client=stack["s3"], model_name=name)
    assert found.source == RECORDED and found.version == info.version
    assert found.metrics["map50"] == pytest.approx(0.97) and found.metrics["map50_95"] == pytest.approx(0.91)
    # Figures recorded without their thresholds (an older registration), or measured by another
    # detector core, are not trusted either: the fast path is not taken (here the ONNX is gone, so
    # the re-evaluation it falls back to reports that).
    for recorded in (
        {"map50": 0.97, "map50_95": 0.91},
        {"map50": 0.97, "map50_95": 0.91, "eval_conf": 0.001, "eval_iou": 0.6, "eval_core": CORE_VERSION - 1},
    ):
        old, old_info = stack["champion"](BENT_IN_THE_MIDDLE, dataset_id=stack["dataset_id"], metrics=recorded)
        stack["s3"].delete_object(Bucket=stack["bucket"], Key=f"{old}/{old_info.version}/1/model.onnx")
        with pytest.raises(ChampionUnavailable, match="missing from S3"):
            champion_metrics_on(stack["dataset"], mlflow_client=stack["client"], s3_client=stack["s3"], model_name=old)
    assert (
        champion_metrics_on(
            stack["dataset"],
            mlflow_client=stack["client"],
            s3_client=stack["s3"],
            model_name=f"never-registered-{uuid.uuid4().hex[:6]}",
        )
        is None
    )


def test_unfetchable_champion_fails_the_gate_closed_unless_allowed(stack, local_stack, tmp_path, monkeypatch):
    local_stack.apply_env(monkeypatch)
    name, info = stack["champion"](BENT_IN_THE_MIDDLE, dataset_id=DATASET_A, metrics={"map50": 0.9, "map50_95": 0.8})
    stack["s3"].delete_object(Bucket=stack["bucket"], Key=f"{name}/{info.version}/1/model.onnx")

    # Even a candidate as good as the champion: without the champion's figures, no verdict.
    out, gate, report = _evaluate(stack, tmp_path / "strict", BENT_IN_THE_MIDDLE, model_name=name, version=info.version)
    assert out.gate == "rejected", gate
    assert f"champion v{info.version}: its ONNX {info.s3_uri} is missing from S3" in out.reasons
    assert "set allow_missing_champion" in out.reasons
    assert json.loads((report / "champion.json").read_text())["version"] == info.version

    allowed, allowed_gate, _ = _evaluate(
        stack, tmp_path / "allowed", BENT_IN_THE_MIDDLE, model_name=name, version=info.version, allow=True
    )
    assert allowed.gate == "passed", allowed_gate
    assert "floors only, as allow_missing_champion is set" in allowed.reasons
    assert "no champion yet" not in allowed.reasons


def test_cli_evaluate_applies_the_pipelines_gate_to_the_champion_measured_on_the_same_data(
    stack, local_stack, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from vinspect.cli import app

    local_stack.apply_env(monkeypatch)
    name, info = stack["champion"](BENT_IN_THE_MIDDLE, dataset_id=DATASET_A, metrics={"map50": 0.1, "map50_95": 0.05})
    out, pipeline_gate, _ = _evaluate(stack, tmp_path / "pipeline", SHIFTED, model_name=name, version=info.version)
    assert out.gate == "rejected"

    candidate = build_tiny_onnx(tmp_path / "cli" / "candidate.onnx", SHIFTED, tag=f"candidate-cli-{name}")
    floors = {"map50": FLOORS["min_map50"], "map50_95": FLOORS["min_map50_95"], "per_class_map50": 0.3}
    args = ["model", "evaluate", str(candidate), str(stack["dataset"]), "--model-name", name, "--json", "--strict"]
    result = CliRunner().invoke(app, [*args, "--floors", json.dumps(floors)])
    assert result.exit_code == 1, result.output
    cli_gate = json.loads(result.stdout[result.stdout.index("{") :])["gate"]
    # The same checks, values and verdict as the pipeline's evaluate step: one gate.
    assert cli_gate == pipeline_gate
    assert [c["check"] for c in cli_gate["checks"] if not c["ok"]] == ["no_regression_map50_95"]
    # Without --floors the pipeline's default floors apply; the verdict is the same.
    default_floors = CliRunner().invoke(app, args)
    assert json.loads(default_floors.stdout[default_floors.stdout.index("{") :])["gate"] == pipeline_gate

    # A champion that cannot be measured fails the gate closed, unless allowed, as in the pipeline.
    stack["s3"].delete_object(Bucket=stack["bucket"], Key=f"{name}/{info.version}/1/model.onnx")
    closed = CliRunner().invoke(app, args)
    assert closed.exit_code == 1 and "is missing from S3" in closed.output
    allowed = CliRunner().invoke(app, [*args, "--allow-missing-champion"])
    assert allowed.exit_code == 0 and "floors only, as allow_missing_champion is set" in allowed.output
