"""One source of defaults: the pipeline, the CLI and the cores read ``vinspect.defaults``."""

from __future__ import annotations

import inspect

import pytest

from vinspect.defaults import DEMO_TRAIN, EVAL, GATE, SERVE, TRAIN, DefaultsError, override


def _cli_defaults(*path: str) -> dict:
    """``{param name: default}`` of a ``vinspect`` command, read from the Click command Typer builds."""
    import typer

    from vinspect.cli import app

    group = typer.main.get_command(app)
    cmd = group
    for name in path:
        cmd = cmd.commands[name]
    return {p.name: p.default for p in cmd.params}


def test_override_checks_keys_and_types():
    changed = override(TRAIN, {"epochs": 3, "imgsz": None}, lr0=1)
    assert changed.epochs == 3 and changed.imgsz == TRAIN.imgsz and changed.lr0 == 1.0
    assert TRAIN.epochs == 50  # frozen: the shared defaults never change
    with pytest.raises(DefaultsError, match=r"unknown TrainDefaults setting 'imgz'; did you mean 'imgsz'\?"):
        override(TRAIN, {"imgz": 320})
    with pytest.raises(DefaultsError, match="conf='high': expected float"):
        override(EVAL, conf="high")
    with pytest.raises(DefaultsError, match="expected bool"):
        override(GATE, allow_missing_champion=1)
    assert DefaultsError.exit_code == 2 and issubclass(DefaultsError, ValueError)


def test_training_imgsz_is_one_value_and_the_demo_profile_is_its_own():
    from components.model import train_model
    from pipelines.params import pipeline_parameters

    params = pipeline_parameters()
    core = inspect.signature(train_model).parameters
    assert TRAIN.imgsz == 640
    assert params["imgsz"]["default"] == core["imgsz"].default == TRAIN.imgsz
    assert _cli_defaults("model", "train")["imgsz"] == TRAIN.imgsz
    assert _cli_defaults("model", "export")["imgsz"] == TRAIN.imgsz
    for key in ("epochs", "batch", "lr0", "patience", "seed"):
        assert params[key]["default"] == core[key].default == getattr(TRAIN, key), key
    assert params["model_yaml"]["default"] == core["model"].default == TRAIN.model
    demo = _cli_defaults("demo")
    assert (demo["imgsz"], demo["epochs"]) == (DEMO_TRAIN.imgsz, DEMO_TRAIN.epochs) == (256, 40)


def test_evaluation_gate_and_serving_defaults_have_one_source():
    from components.model import evaluate_onnx, evaluate_variants
    from components.model.champion import champion_metrics_on
    from components.model.export import parity_check
    from components.model.gate import DEFAULT_FLOORS, decide_gate
    from pipelines.params import pipeline_parameters
    from serving import detector

    params = pipeline_parameters()
    cli = _cli_defaults("model", "evaluate")
    for func in (evaluate_onnx, evaluate_variants, champion_metrics_on):
        sig = inspect.signature(func).parameters
        assert (sig["conf"].default, sig["iou"].default) == (EVAL.conf, EVAL.iou), func.__name__
    assert (params["eval_conf"]["default"], params["eval_iou"]["default"]) == (EVAL.conf, EVAL.iou)
    assert (cli["conf"], cli["iou"]) == (EVAL.conf, EVAL.iou)

    assert params["max_regression"]["default"] == cli["max_regression"] == GATE.max_regression
    assert inspect.signature(decide_gate).parameters["max_regression"].default == GATE.max_regression
    assert DEFAULT_FLOORS == {
        "map50": params["min_map50"]["default"],
        "map50_95": params["min_map50_95"]["default"],
        "per_class_map50": params["min_class_map50"]["default"],
    }
    assert params["allow_missing_champion"]["default"] is GATE.allow_missing_champion
    assert params["variant_tolerance"]["default"] == GATE.variant_tolerance

    parity = inspect.signature(parity_check).parameters
    det = inspect.signature(detector.Detector).parameters
    assert (parity["conf"].default, parity["iou"].default) == (SERVE.conf, SERVE.iou) == (0.25, 0.45)
    assert (det["conf"].default, det["iou"].default) == (SERVE.conf, SERVE.iou)
    assert detector.DEFAULT_IMGSZ == SERVE.imgsz


def test_the_line_inspection_thresholds_have_one_source():
    from serving import drift
    from serving.processor import InspectConfig

    cli = _cli_defaults("serve", "processor")
    ref = inspect.signature(drift.compute_reference_for_dataset).parameters
    assert (SERVE.inspect_conf, SERVE.inspect_iou) == (0.2, 0.4)
    assert (InspectConfig().conf, InspectConfig().iou) == (SERVE.inspect_conf, SERVE.inspect_iou)
    assert (cli["conf"], cli["iou"]) == (ref["conf"].default, ref["iou"].default) == (0.2, 0.4)
