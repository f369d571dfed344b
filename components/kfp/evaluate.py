"""KFP step 5: evaluate the ONNX model through the detector core and decide the quality gate."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def evaluate(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    conf: float,
    iou: float,
    min_map50: float,
    min_map50_95: float,
    min_class_map50: float,
    max_regression: float,
    champion_metrics: dict,
    eval_metrics: Output[Metrics],
    eval_report: Output[Artifact],
) -> NamedTuple("GateOutputs", [("gate", str), ("reasons", str), ("map50", float), ("map50_95", float)]):
    """Evaluate on the validation split and decide the gate (floors + non-regression).

    Args:
        onnx_model: The exported model.
        dataset: The dataset it was trained on (its ``val`` split is evaluated).
        conf: Confidence threshold for mAP (low, e.g. 0.001).
        iou: NMS IoU threshold.
        min_map50: Floor on overall mAP50.
        min_map50_95: Floor on overall mAP50-95.
        min_class_map50: Floor on every class's mAP50 (classes present in the split).
        max_regression: Largest allowed drop below the champion on the same data.
        champion_metrics: The champion's metrics on this dataset (from ``check_dataset``; empty
            when there is no comparable champion). An input, so a changed champion changes
            this step's cache key.
        eval_metrics: Output: the overall and per-class figures.
        eval_report: Output folder: ``metrics.json``, ``gate.json`` and the PR / confusion plots.

    Returns:
        ``gate`` (``passed`` or ``rejected``), the reasons as one string, mAP50 and mAP50-95.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from components.model import decide_gate, evaluate_onnx

    report = Path(eval_report.path)
    report.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_onnx(Path(onnx_model.path), Path(dataset.path), split="val", out_dir=report, conf=conf, iou=iou)
    floors = {"map50": min_map50, "map50_95": min_map50_95, "per_class_map50": min_class_map50}
    decision = decide_gate(
        metrics, floors=floors, champion=champion_metrics or None, max_regression=max_regression
    ).to_dict()

    # Flat, numeric figures: what the registry logs on the MLflow run and the gate later
    # compares a challenger against.
    flat = {k: float(metrics[k]) for k in ("map50", "map50_95", "precision", "recall") if metrics.get(k) is not None}
    for name, per in (metrics.get("per_class") or {}).items():
        for key in ("map50", "map50_95", "precision", "recall"):
            if per.get(key) is not None:
                flat[f"{name}_{key}"] = float(per[key])
    for key, value in flat.items():
        eval_metrics.log_metric(key, value)
    # Also as the artifact's file (kfp.local's cache treats a Metrics artifact without one as missing).
    Path(eval_metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(eval_metrics.path).write_text(json.dumps(flat, indent=2, sort_keys=True))
    (report / "metrics.json").write_text(json.dumps(flat, indent=2, sort_keys=True))
    (report / "evaluation.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    (report / "gate.json").write_text(json.dumps(decision, indent=2, sort_keys=True, default=str))

    gate = "passed" if decision["passed"] else "rejected"
    reasons = "; ".join(decision["reasons"])
    print(f"quality gate {gate.upper()}: {reasons}")
    return namedtuple("GateOutputs", ["gate", "reasons", "map50", "map50_95"])(
        gate, reasons, flat.get("map50", 0.0), flat.get("map50_95", 0.0)
    )
