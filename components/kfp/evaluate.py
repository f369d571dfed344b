"""KFP step 5: evaluate every precision variant with its serving engine, choose one, decide the gate."""

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
    model_name: str,
    champion_version: str,
    allow_missing_champion: bool,
    eval_metrics: Output[Metrics],
    eval_report: Output[Artifact],
    variants: Input[Model] = None,
    variant_tolerance: float = 0.01,
    latency_runs: int = 20,
) -> NamedTuple(
    "GateOutputs", [("gate", str), ("reasons", str), ("map50", float), ("map50_95", float), ("variant", str)]
):
    """Evaluate on the validation split, choose the serving variant, and decide the gate.

    Every variant (FP32 / runtime-precision / INT8 OpenVINO IR, and the FP32 ONNX on ONNX
    Runtime for the record) is measured with the engine and precision that will serve it: mAP on
    the validation split and the bare engine's median latency. The fastest variant within
    ``variant_tolerance`` mAP50-95 of FP32 is chosen; the quality gate (floors, non-regression)
    then judges that variant, since it is what will serve.

    Args:
        onnx_model: The exported FP32 ONNX model (evaluated alone when ``variants`` is absent).
        dataset: The dataset it was trained on (its ``val`` split is evaluated).
        conf: Confidence threshold for mAP (low, e.g. 0.001).
        iou: NMS IoU threshold.
        min_map50: Floor on overall mAP50.
        min_map50_95: Floor on overall mAP50-95.
        min_class_map50: Floor on every class's mAP50 (classes present in the split).
        max_regression: Largest allowed drop below the champion on the same data.
        model_name: Registered model name.
        champion_version: The champion ``check_dataset`` found (empty when there is none). An
            input, so a changed champion changes this step's cache key. Its recorded metrics are
            used when it was evaluated on this very dataset; otherwise its ONNX is fetched from
            S3 and evaluated on this validation split (non-regression needs the same data).
        allow_missing_champion: When a champion exists but cannot be evaluated (ONNX missing
            from S3, other classes, ...), gate on the floors only instead of rejecting. Off by
            default: a silent fallback would let a worse model replace the champion.
        eval_metrics: Output: the overall and per-class figures of the chosen variant, and
            every variant's mAP and latency (``variant_<name>_map50_95``, ``..._latency_ms``).
        eval_report: Output folder: ``metrics.json``, ``gate.json``, ``variant.json``,
            ``champion.json`` and the PR / confusion plots.
        variants: The export step's variant folder (``variants.json`` + OVMS-layout folders).
        variant_tolerance: Largest mAP50-95 drop below FP32 a faster variant may have.
        latency_runs: Timed inferences per variant.

    Returns:
        ``gate`` (``passed`` or ``rejected``), the reasons as one string, mAP50 and mAP50-95 of
        the chosen variant, and its name.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from components.model import EvalMetrics, choose_variant, evaluate_onnx, evaluate_variants, gate_model

    report = Path(eval_report.path)
    report.mkdir(parents=True, exist_ok=True)
    choice = None
    if variants is not None and Path(variants.path).is_dir():
        results = evaluate_variants(
            Path(variants.path),
            Path(dataset.path),
            split="val",
            conf=conf,
            iou=iou,
            latency_runs=latency_runs,
            out_dir=report / "variants",
        )
        choice = choose_variant(results, tolerance=variant_tolerance).to_dict()
        chosen = choice["variant"]
        metrics = results[chosen]
        # The chosen variant's plots are the run's plots.
        for plot in (report / "variants" / chosen).glob("*.png"):
            shutil.copyfile(plot, report / plot.name)
        for line in choice["reasons"]:
            print(f"variant {line}")
    else:
        chosen, results = "onnx", None
        metrics = evaluate_onnx(
            Path(onnx_model.path), Path(dataset.path), split="val", out_dir=report, conf=conf, iou=iou
        )
    from vinspect.defaults import GATE, override

    # The run's floors over the one set of gate defaults (types checked, as every override is).
    floors = override(GATE, min_map50=min_map50, min_map50_95=min_map50_95, min_class_map50=min_class_map50).floors()
    champion = None
    if champion_version:
        from functools import partial

        from components.model.champion import champion_metrics_on
        from vinspect.settings import MLflowSettings, S3Settings

        # Re-evaluated on this split (or its figures recorded on this very dataset, same thresholds).
        champion = partial(
            champion_metrics_on,
            Path(dataset.path),
            mlflow_client=MLflowSettings.from_env().client(),
            s3_client=S3Settings.from_env().client(),
            model_name=model_name,
            version=champion_version,
            split="val",
            conf=conf,
            iou=iou,
        )
    result = gate_model(
        EvalMetrics.from_dict(metrics),
        floors=floors,
        champion=champion,
        max_regression=max_regression,
        allow_missing_champion=allow_missing_champion,
    )
    if result.champion_unavailable is not None:
        unavailable = result.champion_unavailable
        (report / "champion.json").write_text(json.dumps({"version": champion_version, "unavailable": unavailable}))
    elif result.champion is not None:
        found = result.champion
        (report / "champion.json").write_text(json.dumps(found.to_dict(), indent=2, sort_keys=True, default=str))
        figures = found.metrics
        print(f"{found.label}: mAP50 {figures.get('map50') or 0.0:.4f}, mAP50-95 {figures.get('map50_95') or 0.0:.4f}")
    decision = result.decision.to_dict()

    # Flat, numeric figures: what the registry logs on the MLflow run and the gate later
    # compares a challenger against.
    flat = {k: float(metrics[k]) for k in ("map50", "map50_95", "precision", "recall") if metrics.get(k) is not None}
    for name, per in (metrics.get("per_class") or {}).items():
        for key in ("map50", "map50_95", "precision", "recall"):
            if per.get(key) is not None:
                flat[f"{name}_{key}"] = float(per[key])
    for name, figures in (results or {}).items():
        for key in ("map50", "map50_95", "latency_ms"):
            if figures.get(key) is not None:
                flat[f"variant_{name}_{key}"] = float(figures[key])
    if choice is not None:
        flat["variant_tolerance"] = float(variant_tolerance)
    # How the figures were measured (thresholds, detector core): the gate only reuses recorded
    # champion figures measured the same way (components.model.champion).
    from serving.detector import CORE_VERSION

    flat["eval_conf"], flat["eval_iou"] = float(conf), float(iou)
    flat["eval_core"] = float(CORE_VERSION)
    for key, value in flat.items():
        eval_metrics.log_metric(key, value)
    # Also as the artifact's file (kfp.local's cache treats a Metrics artifact without one as missing).
    Path(eval_metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(eval_metrics.path).write_text(json.dumps(flat, indent=2, sort_keys=True))
    (report / "metrics.json").write_text(json.dumps(flat, indent=2, sort_keys=True))
    (report / "evaluation.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    (report / "gate.json").write_text(json.dumps(decision, indent=2, sort_keys=True, default=str))
    (report / "variant.json").write_text(
        json.dumps(
            {
                "variant": chosen,
                "engine": metrics.get("engine"),
                "declared_precision": metrics.get("declared_precision"),
                "choice": choice,
            },
            indent=2,
            sort_keys=True,
            default=str,
        )
    )

    gate = "passed" if decision["passed"] else "rejected"
    reasons = "; ".join(decision["reasons"])
    print(f"quality gate {gate.upper()} for variant {chosen} ({metrics.get('engine')}): {reasons}")
    from components.data.manifest import read_manifest

    dataset_id = read_manifest(Path(dataset.path)).dataset_id
    if gate == "passed":
        # The drift reference the processor compares live frames with (serving.drift): the FP32
        # model on this validation split, at the processor's thresholds (conf 0.2, IoU 0.4), not
        # the evaluation's. The register step stores it next to the version.
        from serving.drift import REFERENCE_FILE, DriftError, compute_reference_for_dataset, write_reference

        try:
            ref = compute_reference_for_dataset(
                Path(onnx_model.path), Path(dataset.path), model={"name": model_name, "dataset_id": dataset_id}
            )
            write_reference(ref, report / REFERENCE_FILE)
            print(f"drift reference: {ref['n_images']} images, {len(ref['signals'])} signals")
        except (DriftError, OSError, ValueError) as exc:  # drift off for this version, said here
            print(
                f"[vinspect] warning: no drift reference for this model ({exc}); the processor "
                "will run without drift scores for it"
            )
    else:
        from serving.notify import notify

        notify("gate_rejected", model_name, reasons=decision["reasons"], dataset_id=dataset_id, metrics=flat)
    return namedtuple("GateOutputs", ["gate", "reasons", "map50", "map50_95", "variant"])(
        gate, reasons, flat.get("map50", 0.0), flat.get("map50_95", 0.0), chosen
    )
