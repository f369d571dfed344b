"""``vinspect model train|export|evaluate`` through the real Typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.model.conftest import IMGSZ, MIN_MAP50

runner = CliRunner()


def _app():
    from vinspect.cli import app

    return app


def test_model_help_lists_the_commands():
    result = runner.invoke(_app(), ["model", "--help"])
    assert result.exit_code == 0, result.output
    for cmd in ("train", "export", "evaluate"):
        assert cmd in result.output


def test_cli_train_one_epoch(dataset, yolo_config, tmp_path):
    result = runner.invoke(
        _app(),
        ["model", "train", str(dataset), "--out", str(tmp_path), "--epochs", "1", "--imgsz", str(IMGSZ), "--json"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["device"] == "cpu"
    assert payload["best_weights"].startswith(str(tmp_path))


def test_cli_train_rejects_a_folder_without_data_yaml(tmp_path):
    result = runner.invoke(_app(), ["model", "train", str(tmp_path)])
    assert result.exit_code != 0
    assert "data.yaml" in result.output


def test_cli_export_with_parity(trained, dataset, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(
        _app(),
        [
            "model",
            "export",
            str(trained.best_weights),
            "--out",
            str(out),
            "--imgsz",
            str(IMGSZ),
            "--dataset-id",
            "xyz",
            "--parity",
            str(dataset),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "parity: ok on 16 images" in result.output


def test_cli_evaluate_with_gate(onnx_model, dataset, tmp_path):
    ok = runner.invoke(
        _app(),
        [
            "model",
            "evaluate",
            str(onnx_model),
            str(dataset),
            "--out",
            str(tmp_path),
            "--floors",
            json.dumps({"map50": MIN_MAP50}),
            "--json",
            "--strict",
        ],
    )
    assert ok.exit_code == 0, ok.output
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["gate"]["passed"] is True and set(saved["per_class"]) == {"scratch", "bent"}
    assert (tmp_path / "PR_curve.png").is_file() and (tmp_path / "confusion_matrix.png").is_file()
    rejected = runner.invoke(
        _app(), ["model", "evaluate", str(onnx_model), str(dataset), "--floors", '{"map50": 1.01}', "--strict"]
    )
    assert rejected.exit_code == 1
    assert "REJECTED" in rejected.output and "map50" in rejected.output
    bad = runner.invoke(_app(), ["model", "evaluate", str(onnx_model), str(dataset), "--floors", '{"mAP": 1}'])
    assert bad.exit_code == 2 and "unknown gate floor" in bad.output


def test_cli_export_variants_and_evaluate_an_ir_with_its_engine(onnx_model, trained, dataset, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(
        _app(),
        [
            "model",
            "export",
            str(trained.best_weights),
            "--out",
            str(out),
            "--imgsz",
            str(IMGSZ),
            "--variants",
            str(tmp_path / "v"),
            "--calibration",
            str(dataset),
            "--calibration-images",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "variants: onnx, fp32, auto, int8" in result.output
    ev = runner.invoke(
        _app(), ["model", "evaluate", str(tmp_path / "v" / "fp32" / "1" / "model.xml"), str(dataset), "--json"]
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout[ev.stdout.index("{") :])["engine"] == "openvino f32"
    bad = runner.invoke(_app(), ["model", "evaluate", str(onnx_model), str(dataset), "--engine", "tensorrt"])
    assert bad.exit_code != 0 and "unknown engine 'tensorrt'" in bad.output
    missing = runner.invoke(
        _app(),
        [
            "model",
            "export",
            str(trained.best_weights),
            "--out",
            str(tmp_path / "n.onnx"),
            "--imgsz",
            str(IMGSZ),
            "--variants",
            str(tmp_path / "w"),
        ],
    )
    assert missing.exit_code != 0 and "--variants needs --calibration" in missing.output
