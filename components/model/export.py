"""Export core: PyTorch YOLO weights -> ONNX for OpenVINO Model Server, and the parity check.

Opset: :data:`DEFAULT_OPSET` = 17. OpenVINO's ONNX front end (what OVMS uses to read
``model.onnx``) has read opset 17 since OpenVINO 2022.3, so every OVMS image shipped as an
OpenShift AI / RHODS serving runtime loads it, and ONNX Runtime supports it too. A YOLOv8/11
detection graph needs nothing newer (Conv, Sigmoid, Mul, Concat, Split, Resize, Softmax, ...), so a
higher opset would only narrow the set of runtimes that can serve the model.

The exported graph keeps Ultralytics' tensor names: input ``images`` ``[1, 3, H, W]`` float32 RGB
``0..1``, output ``output0`` ``[1, 4 + nc, N]``. Metadata (CONTRACTS.md): ``names`` as JSON
``{"0": "scratch", "1": "bent"}``, ``imgsz`` as JSON ``[H, W]``, ``stride``, ``dataset_id``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving import detector as det

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""ONNX opset for OVMS; see the module docstring for why."""

DEFAULT_ATOL = 1e-2
"""Parity tolerance on raw outputs. Output units are input pixels for the 4 box rows and
probabilities for the class rows; float32 re-association after Conv+BN fusion and graph
simplification moves box coordinates by ~1e-3 px at 320 px, so 0.01 catches any real
divergence (a wrong op, a wrong opset lowering, swapped channels) without flagging rounding."""

_INPUT_NAME = "images"
_OUTPUT_NAME = "output0"


class ParityError(RuntimeError):
    """The ONNX model does not reproduce the PyTorch model within tolerance."""


def _load_yolo(weights: Path):
    from vinspect.yolo_env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    return YOLO(str(weights))


def _model_names(yolo) -> list[str]:
    names = yolo.names
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def set_metadata(model_proto: Any, values: dict[str, str]) -> None:
    """Replace (or add) ONNX ``metadata_props`` entries in place."""
    keep = [p for p in model_proto.metadata_props if p.key not in values]
    del model_proto.metadata_props[:]
    for prop in keep:
        model_proto.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in values.items():
        model_proto.metadata_props.add(key=key, value=value)


def export_onnx(
    weights: Path,
    out_path: Path,
    *,
    imgsz: int,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    dataset_id: str = "",
    names: Sequence[str] = det.CLASS_NAMES,
    simplify: bool = True,
) -> Path:
    """Export YOLO ``.pt`` weights to an ONNX file OVMS can serve.

    Args:
        weights: Trained Ultralytics weights (``best.pt``).
        out_path: Where to write the ``.onnx`` (written to a temp file, then moved).
        imgsz: Square input size the model was trained at (multiple of 32).
        opset: ONNX opset (default 17, see module docstring).
        dynamic: Dynamic batch and spatial axes instead of a fixed ``[1, 3, imgsz, imgsz]``.
        dataset_id: Manifest hash of the training dataset, stored in the metadata.
        names: Class names in id order; must match the names the model was trained with.
        simplify: Run the graph simplifier (onnxslim) as Ultralytics does.

    Returns:
        ``out_path``.

    Raises:
        FileNotFoundError: If ``weights`` is missing.
        ValueError: If ``names`` disagree with the model's classes, or ``imgsz`` is not a
            multiple of 32.
    """
    import onnx

    weights = Path(weights)
    out_path = Path(out_path)
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}")
    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32 (the YOLO stride), got {imgsz}")
    names = [str(n) for n in names]
    out_path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="vinspect-export-", dir=out_path.parent) as tmp:
        # Ultralytics writes next to the weights; export a copy so the run directory stays as
        # the trainer left it and concurrent exports cannot collide.
        local = Path(tmp) / "model.pt"
        shutil.copyfile(weights, local)
        yolo = _load_yolo(local)
        model_names = _model_names(yolo)
        if model_names != names:
            raise ValueError(
                f"class names {names} do not match the names {model_names} stored in {weights}; "
                "export with the names the model was trained on"
            )
        stride = int(max(getattr(yolo.model, "stride", [32])))
        produced = Path(
            yolo.export(
                format="onnx",
                imgsz=int(imgsz),
                opset=int(opset),
                dynamic=bool(dynamic),
                simplify=bool(simplify),
                half=False,
                nms=False,
                batch=1,
                device="cpu",
                verbose=False,
            )
        )
        proto = onnx.load(str(produced))
        inputs = [i.name for i in proto.graph.input]
        outputs = [o.name for o in proto.graph.output]
        if inputs != [_INPUT_NAME] or outputs != [_OUTPUT_NAME]:
            raise RuntimeError(
                f"unexpected tensor names in the exported graph: inputs {inputs}, outputs {outputs} "
                f"(expected [{_INPUT_NAME!r}] -> [{_OUTPUT_NAME!r}])"
            )
        set_metadata(
            proto,
            {
                "names": json.dumps({str(i): n for i, n in enumerate(names)}),
                "imgsz": json.dumps([int(imgsz), int(imgsz)]),
                "stride": str(stride),
                "dataset_id": dataset_id,
            },
        )
        onnx.checker.check_model(proto)
        staged = Path(tmp) / "out.onnx"
        onnx.save(proto, str(staged))
        staged.replace(out_path)
    log.info("exported %s -> %s (opset %d, imgsz %d)", weights, out_path, opset, imgsz)
    return out_path


def _torch_model(weights: Path):
    import torch

    yolo = _load_yolo(weights)
    model = yolo.model.float().eval()
    # Fuse Conv+BN like the exporter does, so both sides compute the same arithmetic.
    if hasattr(model, "fuse"):
        model = model.fuse(verbose=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, torch


def _match(a: list[det.Detection], b: list[det.Detection], min_iou: float) -> int:
    """Greedy count of detections in ``a`` with a same-class partner in ``b`` at IoU >= min_iou."""
    used: set[int] = set()
    matched = 0
    for da in a:
        best, best_iou = None, min_iou
        for j, db in enumerate(b):
            if j in used or db.class_id != da.class_id:
                continue
            iou = float(det.box_iou(np.array([da.box]), np.array([db.box]))[0, 0])
            if iou >= best_iou:
                best, best_iou = j, iou
        if best is not None:
            used.add(best)
            matched += 1
    return matched


def parity_check(
    weights: Path,
    onnx_path: Path,
    images: list[Path],
    *,
    imgsz: int,
    atol: float = DEFAULT_ATOL,
    conf: float = 0.25,
    iou: float = 0.45,
    min_box_iou: float = 0.95,
) -> dict[str, Any]:
    """Check that the ONNX model reproduces the PyTorch model on the same input tensors.

    Each image goes through :func:`serving.detector.preprocess` once; the same tensor is fed to
    the fused PyTorch model and to ONNX Runtime. Two things must hold:

    * raw outputs: ``max |torch - onnx| <= atol`` over every element;
    * detections (after :func:`serving.detector.postprocess` at ``conf``/``iou``): every
      detection on either side has a same-class partner with box IoU ``>= min_box_iou``.
      Detections whose score lies within ``atol`` of ``conf`` are ignored, since rounding may
      legitimately put them on either side of the threshold.

    Args:
        weights: The PyTorch weights the ONNX file was exported from.
        onnx_path: The exported ONNX file.
        images: Validation images (paths).
        imgsz: Input size.
        atol: Tolerance on raw outputs (default :data:`DEFAULT_ATOL`).
        conf: Confidence threshold for the detection comparison.
        iou: NMS IoU threshold for the detection comparison.
        min_box_iou: IoU for two detections to count as the same.

    Returns:
        ``{"passed": True, "images": n, "atol": atol, "max_abs_diff": x, "mean_abs_diff": x,
        "detections_torch": n, "detections_onnx": n, "matched": n, "per_image": [...]}``.

    Raises:
        ValueError: If no images are given.
        ParityError: Naming the first image and the figure that is out of tolerance.
    """
    if not images:
        raise ValueError("parity_check needs at least one image")
    d = det.Detector(onnx_path, conf=conf, iou=iou, imgsz=imgsz)
    model, torch = _torch_model(Path(weights))
    names = d.names
    per_image: list[dict[str, Any]] = []
    failures: list[str] = []
    totals = {"max": 0.0, "sum": 0.0, "n": 0, "dt": 0, "do": 0, "m": 0}
    for path in images:
        arr = det.decode_image(Path(path).read_bytes())
        tensor, info = det.preprocess(arr, imgsz)
        with torch.no_grad():
            out_t = model(torch.from_numpy(tensor))
        out_t = out_t[0] if isinstance(out_t, (tuple, list)) else out_t
        out_t = out_t.detach().cpu().numpy().astype(np.float32)
        out_o = np.asarray(d.infer(tensor), dtype=np.float32)
        if out_t.shape != out_o.shape:
            raise ParityError(f"{path}: output shapes differ: torch {out_t.shape} vs onnx {out_o.shape}")
        diff = np.abs(out_t - out_o)
        max_diff = float(diff.max()) if diff.size else 0.0
        dets_t = det.postprocess(out_t, info, arr.shape[:2], conf=conf, iou=iou, names=names)
        dets_o = det.postprocess(out_o, info, arr.shape[:2], conf=conf, iou=iou, names=names)
        firm_t = [x for x in dets_t if x.score > conf + atol]
        firm_o = [x for x in dets_o if x.score > conf + atol]
        m_to = _match(firm_t, dets_o, min_box_iou)
        m_ot = _match(firm_o, dets_t, min_box_iou)
        row = {
            "image": str(path),
            "max_abs_diff": max_diff,
            "detections_torch": len(dets_t),
            "detections_onnx": len(dets_o),
            "matched": min(m_to, m_ot),
        }
        per_image.append(row)
        totals["max"] = max(totals["max"], max_diff)
        totals["sum"] += float(diff.sum())
        totals["n"] += diff.size
        totals["dt"] += len(dets_t)
        totals["do"] += len(dets_o)
        totals["m"] += row["matched"]
        if max_diff > atol:
            failures.append(f"{path}: max |torch - onnx| = {max_diff:.3g} > atol {atol:g}")
        if m_to < len(firm_t) or m_ot < len(firm_o):
            failures.append(
                f"{path}: detections disagree (torch {len(dets_t)}, onnx {len(dets_o)}, "
                f"matched at IoU>={min_box_iou}: {min(m_to, m_ot)})"
            )
    report = {
        "passed": not failures,
        "images": len(images),
        "atol": atol,
        "max_abs_diff": totals["max"],
        "mean_abs_diff": totals["sum"] / max(totals["n"], 1),
        "detections_torch": totals["dt"],
        "detections_onnx": totals["do"],
        "matched": totals["m"],
        "per_image": per_image,
    }
    if failures:
        raise ParityError(
            f"ONNX model {onnx_path} does not match {weights} on {len(failures)} check(s): "
            + "; ".join(failures[:5])
        )
    return report
