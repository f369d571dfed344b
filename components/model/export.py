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
from serving.images import decode_image
from vinspect.defaults import SERVE
from vinspect.errors import VinspectError

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


class ParityError(VinspectError, RuntimeError):
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
    conf: float = SERVE.conf,
    iou: float = SERVE.iou,
    min_box_iou: float = 0.95,
) -> dict[str, Any]:
    """Check that the ONNX model reproduces the PyTorch model on the same input tensors, on both engines.

    Each image goes through :func:`serving.detector.preprocess` once; the same tensor is fed to
    the fused PyTorch model, to ONNX Runtime and (where installed) to OpenVINO at f32. For each
    engine two things must hold:

    * raw outputs: ``max |torch - engine| <= atol`` over every element;
    * detections (after :func:`serving.detector.postprocess` at ``conf``/``iou``): every
      detection on either side has a same-class partner with box IoU ``>= min_box_iou``.
      Detections whose score lies within ``atol`` of ``conf`` are ignored, since rounding may
      legitimately put them on either side of the threshold.

    OpenVINO at the runtime's own precision (bf16 on CPUs that have it) is compared too, for the
    record only (``max_abs_diff_openvino_auto``): reduced precision moves outputs by design, and
    whether it costs accuracy is the evaluate step's mAP comparison of the variants.

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
        "detections_torch": n, "detections_onnx": n, "matched": n, "per_image": [...]}`` with
        ONNX Runtime's figures, plus ``max_abs_diff_openvino``, ``detections_openvino``,
        ``matched_openvino`` (OpenVINO f32), ``max_abs_diff_openvino_auto`` and
        ``openvino_auto_precision`` when OpenVINO is installed.

    Raises:
        ValueError: If no images are given.
        ParityError: Naming the first image and the figure that is out of tolerance.
    """
    if not images:
        raise ValueError("parity_check needs at least one image")
    d = det.Detector(onnx_path, conf=conf, iou=iou, imgsz=imgsz, engine="onnxruntime")
    ov_f32 = ov_auto = None
    if det.openvino_available():
        ov_f32 = det.open_engine(onnx_path, engine="openvino", precision="f32")
        ov_auto = det.open_engine(onnx_path, engine="openvino", precision="auto")
    ov_totals = {"max": 0.0, "max_auto": 0.0, "do": 0, "m": 0}
    model, torch = _torch_model(Path(weights))
    names = d.names
    per_image: list[dict[str, Any]] = []
    failures: list[str] = []
    totals = {"max": 0.0, "sum": 0.0, "n": 0, "dt": 0, "do": 0, "m": 0}
    for path in images:
        arr = decode_image(Path(path).read_bytes())
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
        if ov_f32 is not None:
            out_v = np.asarray(ov_f32(tensor), dtype=np.float32)
            diff_v = float(np.abs(out_t - out_v).max()) if out_v.size else 0.0
            dets_v = det.postprocess(out_v, info, arr.shape[:2], conf=conf, iou=iou, names=names)
            firm_v = [x for x in dets_v if x.score > conf + atol]
            m_tv, m_vt = _match(firm_t, dets_v, min_box_iou), _match(firm_v, dets_t, min_box_iou)
            row.update(max_abs_diff_openvino=diff_v, detections_openvino=len(dets_v))
            ov_totals["max"] = max(ov_totals["max"], diff_v)
            ov_totals["do"] += len(dets_v)
            ov_totals["m"] += min(m_tv, m_vt)
            ov_totals["max_auto"] = max(
                ov_totals["max_auto"], float(np.abs(out_t - np.asarray(ov_auto(tensor), np.float32)).max())
            )
            if diff_v > atol:
                failures.append(f"{path}: max |torch - openvino f32| = {diff_v:.3g} > atol {atol:g}")
            if m_tv < len(firm_t) or m_vt < len(firm_v):
                failures.append(
                    f"{path}: openvino f32 detections disagree (torch {len(dets_t)}, "
                    f"openvino {len(dets_v)}, matched: {min(m_tv, m_vt)})"
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
    if ov_f32 is not None:
        report.update(
            max_abs_diff_openvino=ov_totals["max"],
            detections_openvino=ov_totals["do"],
            matched_openvino=ov_totals["m"],
            max_abs_diff_openvino_auto=ov_totals["max_auto"],
            openvino_auto_precision=ov_auto.precision,
        )
    if failures:
        raise ParityError(
            f"ONNX model {onnx_path} (ONNX Runtime, OpenVINO f32) does not match {weights} "
            f"on {len(failures)} check(s): " + "; ".join(failures[:5])
        )
    return report


# --------------------------------------------------------------------------------------------
# Precision variants: OpenVINO IR at FP32, at the runtime's precision, and INT8 (NNCF PTQ)
# --------------------------------------------------------------------------------------------

VARIANTS_FILE = "variants.json"
ONNX_VARIANT = "onnx"
"""The FP32 ONNX reference (``<version>/1/model.onnx``, the registered MLflow model). Evaluated
with ONNX Runtime f32 for the record; not a serving candidate of its own, since OVMS would run it
exactly as the ``auto`` variant."""

VARIANT_SPECS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "f32", "quantized": False},
    "auto": {"precision": None, "quantized": False},
    "int8": {"precision": None, "quantized": True},
}
"""The serving candidates, each an OVMS model folder ``<variant>/1/model.xml`` + ``model.bin``:

* ``fp32``: full precision, declared in the IR (``serving.detector.PRECISION_RT_KEY``) and passed
  to OVMS as ``INFERENCE_PRECISION_HINT=f32``: the reference the others are held to;
* ``auto``: the same weights at the runtime's choice (bf16 on CPUs with ``avx512_bf16``/AMX,
  f32 elsewhere), what OVMS does by default;
* ``int8``: NNCF post-training quantization calibrated on the training split, the unquantized
  rest at the runtime's choice.
"""

DEFAULT_CALIBRATION_IMAGES = 300
"""NNCF's own default subset size; capped by the training split's size."""


def _head_scope(model: Any) -> Any:
    """Layers NNCF leaves in floating point: the YOLO Detect head's box arithmetic and sigmoid.

    The last ``/model.N/`` block of an Ultralytics ONNX graph is the Detect head; quantizing its
    DFL decode and the Add/Sub/Mul/Div that turn distances into pixel boxes costs accuracy for no
    speed (Ultralytics' own INT8 OpenVINO export ignores the same ops).
    """
    import re

    import nncf

    blocks = [int(m.group(1)) for op in model.get_ops() if (m := re.search(r"/model\.(\d+)/", op.get_friendly_name()))]
    patterns = []
    if blocks:
        head = max(blocks)
        patterns = [rf".*/model\.{head}/(?:.*/)?(?:Add|Sub|Mul|Div)[^/]*$", rf".*/model\.{head}/dfl/.*"]
    return nncf.IgnoredScope(types=["Sigmoid"], patterns=patterns, validate=False)


def quantize_int8(
    model: Any,
    calibration: Sequence[Path],
    *,
    imgsz: int | Sequence[int],
    stride: int = 32,
    subset_size: int = DEFAULT_CALIBRATION_IMAGES,
) -> Any:
    """NNCF post-training INT8 quantization of an OpenVINO model.

    Calibration inputs are made by the detector core (``Detector.prepare``: the served decode and
    letterbox), one image at a time, so memory stays flat however many images are used.

    Args:
        model: ``openvino.Model`` (FP32).
        calibration: Image files, typically the training split.
        imgsz: Model input size.
        stride: Model stride.
        subset_size: Images used (at most ``len(calibration)``).

    Returns:
        The quantized ``openvino.Model``.

    Raises:
        ValueError: When no calibration image is given.
    """
    import nncf

    images = list(calibration)
    if not images:
        raise ValueError("INT8 calibration needs at least one image (the training split is empty)")
    core = det.Detector(None, imgsz=imgsz)
    core.stride = int(stride)
    n = max(1, min(int(subset_size), len(images)))
    step = len(images) / n
    chosen = [images[int(i * step)] for i in range(n)]  # spread over the split, deterministic

    def transform(path: Path) -> np.ndarray:
        return core.prepare(path)[0]

    return nncf.quantize(
        model,
        nncf.Dataset(chosen, transform),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=n,
        ignored_scope=_head_scope(model),
    )


def _save_ir(model: Any, folder: Path, precision: str | None) -> Path:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    if precision:
        model.set_rt_info(precision, list(det.PRECISION_RT_KEY))
    # FP32 weights on disk (no FP16 compression): the precision is the runtime's business.
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return folder / "model.xml"


def export_variants(
    onnx_path: Path,
    out_dir: Path,
    *,
    calibration: Sequence[Path],
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    variants: Sequence[str] = tuple(VARIANT_SPECS),
) -> dict[str, Any]:
    """Write the precision variants of an ONNX model, each in the OVMS layout, plus an index.

    ``out_dir/onnx/1/model.onnx`` (the FP32 ONNX, copied), ``out_dir/<variant>/1/model.xml`` and
    ``.bin`` for each of :data:`VARIANT_SPECS`, and ``out_dir/variants.json``:
    ``{name: {"path", "precision", "quantized", "sha256"}}`` (paths relative to ``out_dir``;
    ``precision`` is the declared one, None = the runtime's choice). The ONNX metadata (names,
    imgsz, stride, dataset id) is kept in every IR. Written to a temporary folder first, so an
    interrupted export leaves no half variant set.

    Args:
        onnx_path: The exported FP32 ONNX model.
        out_dir: Where the variants go (created; must be empty or absent).
        calibration: Images for INT8 calibration (the training split).
        calibration_images: At most this many of them are used.
        variants: Which of :data:`VARIANT_SPECS` to write.

    Returns:
        The index, as written to ``variants.json``.

    Raises:
        ValueError: An unknown variant name, or ``out_dir`` not empty.
    """
    import openvino as ov

    from components.registry.core import sha256_file

    unknown = [v for v in variants if v not in VARIANT_SPECS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANT_SPECS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty: variants are written to a fresh folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    meta = det.parse_metadata(_onnx_metadata(Path(onnx_path)))
    imgsz = meta["imgsz"] or (det.DEFAULT_IMGSZ, det.DEFAULT_IMGSZ)
    index: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=".variants-", dir=out_dir.parent) as tmp:
        staged = Path(tmp) / "v"
        onnx_dest = staged / ONNX_VARIANT / "1" / "model.onnx"
        onnx_dest.parent.mkdir(parents=True)
        shutil.copyfile(onnx_path, onnx_dest)
        index[ONNX_VARIANT] = {"path": f"{ONNX_VARIANT}/1/model.onnx", "precision": "f32", "quantized": False}
        core = ov.Core()
        for name in variants:
            spec = VARIANT_SPECS[name]
            model = core.read_model(str(onnx_path))
            if spec["quantized"]:
                model = quantize_int8(
                    model, calibration, imgsz=imgsz, stride=meta["stride"] or 32, subset_size=calibration_images
                )
            _save_ir(model, staged / name / "1", spec["precision"])
            index[name] = {
                "path": f"{name}/1/model.xml",
                "precision": spec["precision"],
                "quantized": spec["quantized"],
            }
        for entry in index.values():
            entry["sha256"] = sha256_file(staged / entry["path"])
        (staged / VARIANTS_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
        if out_dir.exists():
            out_dir.rmdir()
        staged.replace(out_dir)
    log.info("wrote variants %s of %s to %s", ", ".join(index), onnx_path, out_dir)
    return index


def read_variants(variants_dir: Path) -> dict[str, Any]:
    """The index :func:`export_variants` wrote, with each ``path`` made absolute.

    Raises:
        FileNotFoundError: No ``variants.json``, or a file it lists is missing.
        ValueError: An unreadable index.
    """
    variants_dir = Path(variants_dir)
    index_path = variants_dir / VARIANTS_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: no variant index (was the model exported by export_variants?)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{index_path}: not JSON: {exc}") from None
    out = {}
    for name, entry in index.items():
        path = variants_dir / str(entry.get("path", ""))
        if not path.is_file():
            raise FileNotFoundError(f"{index_path}: variant {name!r} lists {path}, which is missing")
        out[name] = {**entry, "path": path}
    return out


def _onnx_metadata(onnx_path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
