"""KFP step 4: export to ONNX and the OpenVINO precision variants, checked against the PyTorch model."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def export_onnx(
    weights: Input[Model],
    dataset: Input[Dataset],
    imgsz: int,
    opset: int,
    parity_atol: float,
    parity_images: int,
    onnx_model: Output[Model],
    parity: Output[Metrics],
    variants: Output[Model],
    calibration_images: int = 300,
) -> NamedTuple("ExportOutputs", [("max_abs_diff", float), ("onnx_sha256", str)]):
    """Export ``weights`` to ONNX (metadata: names, imgsz, dataset id), check parity, write the variants.

    The parity check runs PyTorch, ONNX Runtime and OpenVINO (f32) on the same tensors. The
    variants (OVMS layout, ``components.model.export.export_variants``) are the FP32 ONNX, the
    OpenVINO IR at FP32 and at the runtime's precision, and an INT8 IR quantized by NNCF,
    calibrated on the training split.

    Args:
        weights: ``best.pt`` from the train step.
        dataset: The training dataset (class names, dataset id, validation images for parity).
        imgsz: Input size the model was trained at.
        opset: ONNX opset.
        parity_atol: Largest allowed absolute difference between PyTorch and ONNX outputs.
        parity_images: Number of validation images the parity check uses.
        onnx_model: Output: the ONNX file.
        parity: Output: the parity figures.
        variants: Output folder: ``variants.json`` and one OVMS model folder per variant.
        calibration_images: Training images used for INT8 calibration (at most).

    Returns:
        The largest absolute output difference seen, and the ONNX file's sha256 (the pipeline
        compares it with the champion's: an identical model is neither registered nor deployed
        again).

    Raises:
        ParityError: When ONNX and PyTorch disagree beyond ``parity_atol`` (the step fails).
    """
    import hashlib
    import json
    import os
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from components.data.manifest import read_manifest
    from components.model import export_onnx as _export
    from components.model import export_variants, parity_check
    from components.model.evaluate import split_images

    data_dir = Path(dataset.path)
    manifest = read_manifest(data_dir)
    out = Path(onnx_model.path)
    images = split_images(data_dir, "val")[: max(1, parity_images)]
    with tempfile.TemporaryDirectory(prefix="vinspect-export-") as work:
        # Ultralytics recognises weights by their ".pt" suffix; KFP artifact paths have none.
        pt = Path(work) / "best.pt"
        os.symlink(Path(weights.path).resolve(), pt)
        _export(pt, out, imgsz=imgsz, opset=opset, dataset_id=manifest.dataset_id, names=list(manifest.classes))
        report = parity_check(pt, out, images, imgsz=imgsz, atol=parity_atol)
    index = export_variants(
        out, Path(variants.path), calibration=split_images(data_dir, "train"), calibration_images=calibration_images
    )
    variants.metadata.update({name: entry["sha256"] for name, entry in index.items()})
    figures = {
        key: float(report[key])
        for key in (
            "images",
            "max_abs_diff",
            "mean_abs_diff",
            "detections_torch",
            "detections_onnx",
            "matched",
            "max_abs_diff_openvino",
            "detections_openvino",
            "matched_openvino",
            "max_abs_diff_openvino_auto",
        )
        if isinstance(report.get(key), (int, float))
    }
    for key, value in figures.items():
        parity.log_metric(key, value)
    # Also as the artifact's file (kfp.local's cache treats a Metrics artifact without one as missing).
    Path(parity.path).parent.mkdir(parents=True, exist_ok=True)
    Path(parity.path).write_text(json.dumps(figures, indent=2, sort_keys=True))
    onnx_model.metadata.update({"imgsz": imgsz, "opset": opset, "dataset_id": manifest.dataset_id})
    print(
        f"exported ONNX (opset {opset}); parity on {report.get('images')} images: "
        f"max |torch - onnxruntime| {report.get('max_abs_diff')}, max |torch - openvino f32| "
        f"{report.get('max_abs_diff_openvino')}, max |torch - openvino {report.get('openvino_auto_precision')}| "
        f"{report.get('max_abs_diff_openvino_auto')}; variants: {', '.join(index)}"
    )
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    onnx_model.metadata["sha256"] = sha
    return namedtuple("ExportOutputs", ["max_abs_diff", "onnx_sha256"])(float(report.get("max_abs_diff", 0.0)), sha)
