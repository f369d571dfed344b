"""Detector core: the one place that turns images into YOLO inputs and YOLO outputs into detections.

Used by evaluation, the ONNX parity check, the image processor and the notebooks, so a model is
validated exactly the way it is served. Bytes become pixels in :mod:`serving.images` (decoding,
colour order, the pixel limit); this module starts from pixels. Only numpy and Pillow are imported
at module level; OpenCV (resizing: the same ``cv2.INTER_LINEAR`` as Ultralytics) is imported on
first use, and the inference engine (OpenVINO by default, ONNX Runtime as the alternative, see
:func:`open_engine`) is imported when a model is loaded.

Conventions (kept explicit because the original demo got them wrong by accident):

* images are RGB ``uint8`` arrays of shape ``(H, W, 3)``; OpenCV decodes to BGR
  (:class:`serving.images.BGRImage`), and the one place that reads its output (``_to_tensor``)
  writes the tensor planes as R, G, B (tested with a pure-red image);
* model input is ``float32 [1, 3, H, W]`` in ``0..1``, letterboxed with pad value 114 the way
  Ultralytics does it (centred padding, same rounding), so boxes map back identically;
* boxes are ``(x1, y1, x2, y2)`` in pixels of the original image.

Two raw output layouts are decoded:

* ``[1, 4 + nc, N]`` (YOLOv8 / YOLO11): ``cx, cy, w, h`` then one score per class;
* ``[1, N, 5 + nc]`` (YOLOv5, e.g. the original demo's ``manu-vi-best-yolov5m.onnx``):
  ``cx, cy, w, h, objectness`` then class probabilities; score = objectness * class probability.
"""

from __future__ import annotations

import ast
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.images import BGRImage, as_rgb_array, decode_reduced, opencv
from vinspect.defaults import SERVE
from vinspect.errors import VinspectError


class DetectorError(VinspectError, ValueError):
    """A model, engine setting, input size or raw output the detector cannot work with."""


CLASS_NAMES: tuple[str, ...] = ("scratch", "bent")
"""Default class names, index = class id (the demo's ``obj.names``)."""

DEFAULT_IMGSZ = SERVE.imgsz
PAD_VALUE = 114

CORE_VERSION = 3
"""Bumped whenever a change here moves pixels or boxes (2: OpenCV decode and INTER_LINEAR resize,
was Pillow; 3: evaluation runs on the serving engine, OpenVINO at the variant's precision, was
ONNX Runtime f32). Metrics are logged with it, and the quality gate only compares figures
measured by the same core."""
MAX_NMS_CANDIDATES = 30000  # boxes kept (by score) before NMS, as Ultralytics does
MAX_DETECTIONS = 300
_MAX_WH = 7680.0  # class offset for class-aware NMS; larger than any image side we will see


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was letterboxed, so boxes can be mapped back.

    Attributes:
        ratio: Scale applied to the original image (same for both axes).
        pad: ``(left, top)`` padding in pixels of the letterboxed image.
        orig_shape: ``(height, width)`` of the original image.
        new_shape: ``(height, width)`` of the letterboxed image.
    """

    ratio: float
    pad: tuple[int, int]
    orig_shape: tuple[int, int]
    new_shape: tuple[int, int]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    return h, w


def letterbox(
    img: np.ndarray,
    new_shape: int | Sequence[int] = DEFAULT_IMGSZ,
    stride: int = 32,
    auto: bool = False,
    pad_value: int = PAD_VALUE,
    scaleup: bool = True,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (Ultralytics' ``LetterBox``).

    Args:
        img: RGB ``uint8`` array ``(H, W, 3)``.
        new_shape: Target ``(height, width)`` or a single side.
        stride: Model stride. With ``auto=False`` the target must be a multiple of it;
            with ``auto=True`` padding is the minimum that makes each side a multiple of it.
        auto: Minimum-rectangle padding instead of padding to the full ``new_shape``.
        pad_value: Grey level of the padding (114 like Ultralytics).
        scaleup: Allow enlarging small images (off gives better recall for tiny inputs).

    Returns:
        The letterboxed RGB ``uint8`` image and the :class:`LetterboxInfo` to undo it.

    Raises:
        DetectorError: If the image is not ``(H, W, 3)`` or the target is not stride-aligned.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise DetectorError(f"letterbox expects an RGB image of shape (H, W, 3), got {img.shape}")
    nh, nw = _pair(new_shape)
    if stride > 0 and not auto and (nh % stride or nw % stride):
        raise DetectorError(f"letterbox size {nh}x{nw} is not a multiple of the model stride {stride}")
    h, w = img.shape[:2]
    r = min(nh / h, nw / w)
    if not scaleup:
        r = min(r, 1.0)
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    dw, dh = nw - unpad_w, nh - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw /= 2
    dh /= 2
    if (w, h) != (unpad_w, unpad_h):
        img = _resize(img, unpad_w, unpad_h)
    # Same rounding as Ultralytics so that box un-mapping is identical.
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out_h, out_w = unpad_h + top + bottom, unpad_w + left + right
    out = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    out[top : top + unpad_h, left : left + unpad_w] = img
    info = LetterboxInfo(ratio=r, pad=(left, top), orig_shape=(h, w), new_shape=(out_h, out_w))
    return out, info


def _geometry(orig_hw: tuple[int, int], new_hw: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """Ultralytics' letterbox arithmetic: ``(ratio, content_w, content_h, left, top)``."""
    h, w = orig_hw
    nh, nw = new_hw
    r = min(nh / h, nw / w)
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    left = int(round((nw - unpad_w) / 2 - 0.1))
    top = int(round((nh - unpad_h) / 2 - 0.1))
    return r, unpad_w, unpad_h, left, top


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize exactly as Ultralytics' ``LetterBox`` does it (``cv2.INTER_LINEAR``).

    Channel order is untouched; same pixels as Ultralytics means evaluation through this core and
    Ultralytics' own ``val`` see the same inputs.
    """
    cv2 = opencv()
    return cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=cv2.INTER_LINEAR)


def _to_tensor(
    img: np.ndarray, orig_hw: tuple[int, int], new_hw: tuple[int, int], stride: int, *, bgr: bool = False
) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox an image of ``orig_hw`` content (maybe already reduced) into a tensor.

    Same pixels as ``letterbox()`` followed by CHW/255, but resized and scaled straight into a
    pre-filled float32 tensor, which saves full-size temporaries on every call. ``bgr=True`` says
    the array is in OpenCV's order; the tensor is RGB either way (plane 0 is R).
    """
    nh, nw = new_hw
    if stride > 0 and (nh % stride or nw % stride):
        raise DetectorError(f"input size {nh}x{nw} is not a multiple of the model stride {stride}")
    r, unpad_w, unpad_h, left, top = _geometry(orig_hw, new_hw)
    arr = img if (img.shape[1], img.shape[0]) == (unpad_w, unpad_h) else _resize(img, unpad_w, unpad_h)
    tensor = np.empty((1, 3, nh, nw), dtype=np.float32)
    pad = np.float32(PAD_VALUE / 255.0)
    tensor[0, :, :top] = pad
    tensor[0, :, top + unpad_h :] = pad
    tensor[0, :, top : top + unpad_h, :left] = pad
    tensor[0, :, top : top + unpad_h, left + unpad_w :] = pad
    # Contiguous planes first (OpenCV's split), then one scaled copy each: twice as fast as a
    # strided HWC -> CHW copy. Plane 0 of the tensor is R whatever order the array is in.
    planes = opencv().split(np.ascontiguousarray(arr))
    for channel, plane in enumerate(planes[::-1] if bgr else planes):
        np.multiply(
            plane,
            np.float32(1.0 / 255.0),
            out=tensor[0, channel, top : top + unpad_h, left : left + unpad_w],
            casting="unsafe",
        )
    info = LetterboxInfo(ratio=r, pad=(left, top), orig_shape=(int(orig_hw[0]), int(orig_hw[1])), new_shape=(nh, nw))
    return tensor, info


def preprocess(
    img: Any, imgsz: int | Sequence[int] = DEFAULT_IMGSZ, stride: int = 32
) -> tuple[np.ndarray, LetterboxInfo]:
    """Turn an image into the model input tensor.

    Args:
        img: RGB array ``(H, W, 3)`` (also accepted: encoded bytes, a PIL image, a file path).
        imgsz: Model input size (square side or ``(height, width)``).
        stride: Model stride (the input size must be a multiple of it).

    Returns:
        ``float32`` tensor ``[1, 3, H, W]`` in ``0..1`` (RGB planes, letterboxed as
        :func:`letterbox` does) and the letterbox info.
    """
    arr = as_rgb_array(img)
    return _to_tensor(arr, arr.shape[:2], _pair(imgsz), stride)


# --------------------------------------------------------------------------------------------
# Raw output -> boxes
# --------------------------------------------------------------------------------------------


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half_w = xywh[:, 2] / 2
    half_h = xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def _layout(shape: tuple[int, int], num_classes: int) -> str:
    """Tell the two YOLO layouts apart from a batch-less ``(a, b)`` shape."""
    v8 = shape[0] == 4 + num_classes
    v5 = shape[1] == 5 + num_classes
    if v8 and v5:
        # Only possible when N equals the other dimension; N (anchors) is the larger side.
        return "v8" if shape[1] >= shape[0] else "v5"
    if v8:
        return "v8"
    if v5:
        return "v5"
    raise DetectorError(
        f"output shape {shape} matches neither YOLOv8/11 [1, 4+nc, N] nor YOLOv5 [1, N, 5+nc] "
        f"for nc={num_classes}; check the class names in the model metadata"
    )


def decode(output: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a raw YOLO output into candidate boxes (before thresholds and NMS).

    Args:
        output: ``[1, 4+nc, N]`` (YOLOv8/11) or ``[1, N, 5+nc]`` (YOLOv5); the batch axis may be
            omitted.
        num_classes: Number of classes ``nc``.

    Returns:
        ``boxes_xyxy`` ``float32 (N, 4)`` in model-input pixels, ``scores`` ``float32 (N,)`` (best
        class score; for YOLOv5 objectness times class probability) and ``class_ids``
        ``int64 (N,)``.

    Raises:
        DetectorError: If the shape fits neither layout or the batch size is not 1.
    """
    arr = np.asarray(output, dtype=np.float32)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise DetectorError(f"decode handles one image at a time, got batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim != 2:
        raise DetectorError(f"expected a [1, C, N] or [1, N, C] YOLO output, got shape {np.shape(output)}")
    if num_classes < 1:
        raise DetectorError(f"num_classes must be at least 1, got {num_classes}")
    if _layout(arr.shape, num_classes) == "v8":
        preds = arr.T  # (N, 4+nc)
        cls_scores = preds[:, 4:]
    else:
        preds = arr  # (N, 5+nc)
        cls_scores = preds[:, 5:] * preds[:, 4:5]
    class_ids = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(len(cls_scores)), class_ids]
    boxes = _xywh_to_xyxy(np.ascontiguousarray(preds[:, :4]))
    return boxes.astype(np.float32, copy=False), scores.astype(np.float32), class_ids.astype(np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``xyxy`` boxes: ``a (N, 4)``, ``b (M, 4)`` -> ``(N, M)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float = SERVE.iou,
    max_det: int = MAX_DETECTIONS,
) -> np.ndarray:
    """Class-aware non-maximum suppression.

    Boxes of different classes never suppress each other: each class is shifted by its own
    offset so one vectorised greedy pass handles all classes (the trick Ultralytics uses).

    Args:
        boxes: ``(N, 4)`` ``xyxy`` boxes.
        scores: ``(N,)`` scores.
        class_ids: ``(N,)`` integer class ids.
        iou_threshold: A box is dropped when its IoU with a kept, higher-scoring box of the same
            class is above this.
        max_det: Stop after this many kept boxes.

    Returns:
        Indices into the inputs of the kept boxes, highest score first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = np.asarray(class_ids, dtype=np.float64).reshape(-1, 1) * _MAX_WH
    b = boxes + offset
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map ``xyxy`` boxes from letterboxed-input pixels back to the original image (clipped)."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    left, top = info.pad
    out[:, [0, 2]] -= left
    out[:, [1, 3]] -= top
    out /= info.ratio
    h, w = info.orig_shape
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


# --------------------------------------------------------------------------------------------
# Detections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One detected object.

    Attributes:
        class_id: Class index (0 = scratch, 1 = bent for the metal-nut model).
        class_name: Class name from the model metadata.
        score: Confidence in ``0..1``.
        box: ``(x1, y1, x2, y2)`` in pixels of the original image.
    """

    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"class_id", "class_name", "score", "box": [x1, y1, x2, y2]}``."""
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": self.score,
            "box": [float(v) for v in self.box],
        }


@dataclass(frozen=True)
class DetectionResult:
    """What :meth:`Detector.run` returns for one image.

    Attributes:
        detections: In original-image pixels, highest score first.
        timings: Milliseconds spent in ``preprocess`` (decode and letterbox), ``inference`` and
            ``postprocess`` (decode, NMS, box mapping) on this image.
    """

    detections: list[Detection]
    timings: dict[str, float] = field(default_factory=dict, compare=False)


def _names_list(names: Sequence[str] | Mapping[Any, str]) -> list[str]:
    if isinstance(names, Mapping):
        items = sorted(((int(k), str(v)) for k, v in names.items()), key=lambda kv: kv[0])
        if [k for k, _ in items] != list(range(len(items))):
            raise DetectorError(f"class names must be keyed 0..n-1, got keys {[k for k, _ in items]}")
        return [v for _, v in items]
    return [str(n) for n in names]


def postprocess(
    output: np.ndarray,
    info: LetterboxInfo,
    orig_shape: tuple[int, int] | None = None,
    conf: float = SERVE.conf,
    iou: float = SERVE.iou,
    names: Sequence[str] | Mapping[Any, str] = CLASS_NAMES,
    max_det: int = MAX_DETECTIONS,
) -> list[Detection]:
    """Raw model output -> detections in original-image pixels.

    Args:
        output: Raw YOLO output in either layout (see :func:`decode`).
        info: Letterbox info from :func:`preprocess`.
        orig_shape: ``(height, width)`` of the original image; defaults to ``info.orig_shape``.
        conf: Minimum score kept (the original demo used 0.2).
        iou: NMS IoU threshold (the original demo used 0.4).
        names: Class names (sequence indexed by id, or ``{id: name}``).
        max_det: Maximum detections returned.

    Returns:
        Detections, highest score first.
    """
    names_l = _names_list(names)
    boxes, scores, class_ids = decode(output, len(names_l))
    mask = scores > conf
    boxes, scores, class_ids = boxes[mask], scores[mask], class_ids[mask]
    if len(scores) > MAX_NMS_CANDIDATES:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    keep = nms(boxes, scores, class_ids, iou, max_det=max_det)
    if orig_shape is not None and tuple(orig_shape[:2]) != info.orig_shape:
        info = LetterboxInfo(info.ratio, info.pad, (int(orig_shape[0]), int(orig_shape[1])), info.new_shape)
    scaled = scale_boxes(boxes[keep], info)
    return [
        Detection(
            class_id=int(class_ids[k]),
            class_name=names_l[int(class_ids[k])],
            score=float(scores[k]),
            box=tuple(float(v) for v in scaled[j]),  # type: ignore[arg-type]
        )
        for j, k in enumerate(keep)
    ]


# --------------------------------------------------------------------------------------------
# Model metadata and the Detector
# --------------------------------------------------------------------------------------------


def _parse_literal(value: str) -> Any:
    """Metadata values are JSON (ours) or Python literals (Ultralytics writes ``str(dict)``)."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def parse_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """Read ``names``, ``imgsz``, ``stride`` and ``dataset_id`` from ONNX custom metadata.

    Accepts both this project's JSON values and Ultralytics' Python-literal values.

    Returns:
        ``{"names": list[str] | None, "imgsz": (h, w) | None, "stride": int | None,
        "dataset_id": str | None}``.
    """
    out: dict[str, Any] = {"names": None, "imgsz": None, "stride": None, "dataset_id": None}
    if "names" in meta:
        names = _parse_literal(meta["names"])
        if isinstance(names, (Mapping, list, tuple)):
            out["names"] = _names_list(names)
    if "imgsz" in meta:
        sz = _parse_literal(meta["imgsz"])
        if isinstance(sz, (int, float)):
            out["imgsz"] = (int(sz), int(sz))
        elif isinstance(sz, (list, tuple)) and len(sz) in (1, 2):
            out["imgsz"] = (int(sz[0]), int(sz[-1]))
    if "stride" in meta:
        st = _parse_literal(meta["stride"])
        if isinstance(st, (int, float)):
            out["stride"] = int(st)
    if meta.get("dataset_id"):
        out["dataset_id"] = str(meta["dataset_id"])
    return out


# --------------------------------------------------------------------------------------------
# Engines: one interface, two backends (OpenVINO, ONNX Runtime)
# --------------------------------------------------------------------------------------------

ENGINES = ("openvino", "onnxruntime")
"""Inference backends. OpenVINO is what OpenVINO Model Server runs on the cluster; ONNX Runtime is
the alternative (and the fallback where ``openvino`` is not installed)."""

PRECISIONS = ("auto", "f32", "bf16", "f16")
"""Inference precision of an OpenVINO engine: ``auto`` is the runtime's own choice (bf16 on a CPU
with ``avx512_bf16`` or AMX, f32 otherwise), what OVMS does unless told otherwise. ONNX Runtime
always computes in the model's precision (f32 for our exports)."""

ENGINE_ENV = "VINSPECT_ENGINE"
PRECISION_ENV = "VINSPECT_PRECISION"
PRECISION_RT_KEY = ("vinspect", "inference_precision")
"""Where an OpenVINO IR variant declares the precision it was evaluated (and must be served) at.
OpenVINO itself does not read this key; :func:`open_engine` and the local model server do, and
the rollout passes the same value to OVMS as ``--plugin_config`` (components/rollout)."""


def _suggest(value: str, known: Sequence[str], what: str, setting: str) -> DetectorError:
    import difflib

    hint = difflib.get_close_matches(value, known, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    return DetectorError(f"unknown {what} {value!r} (known: {', '.join(known)}; set by {setting}){extra}")


def openvino_available() -> bool:
    """True when the ``openvino`` package can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def resolve_engine(engine: str | None = None) -> str:
    """The backend to use: ``engine``, else ``$VINSPECT_ENGINE``, else OpenVINO where installed.

    Raises:
        DetectorError: For an unknown name (with a suggestion), or ``openvino`` asked for but not
            installed.
    """
    name = (engine or os.environ.get(ENGINE_ENV) or "").strip().lower()
    if not name:
        return "openvino" if openvino_available() else "onnxruntime"
    aliases = {"ov": "openvino", "ort": "onnxruntime", "onnx": "onnxruntime"}
    name = aliases.get(name, name)
    if name not in ENGINES:
        raise _suggest(name, ENGINES, "engine", f"{ENGINE_ENV} or --engine")
    if name == "openvino" and not openvino_available():
        raise DetectorError(
            "engine 'openvino' asked for, but the openvino package is not installed "
            "(pip install 'vinspect[serving]', or set VINSPECT_ENGINE=onnxruntime)"
        )
    return name


def resolve_precision(precision: str | None = None) -> str | None:
    """The inference precision asked for: ``precision``, else ``$VINSPECT_PRECISION``, else None.

    None means "not asked": a model that declares its precision gets it, any other the runtime's
    choice. ``auto`` forces the runtime's choice even on a model that declares one.

    Raises:
        DetectorError: For an unknown precision (with a suggestion).
    """
    name = (precision or os.environ.get(PRECISION_ENV) or "").strip().lower()
    if not name:
        return None
    name = {"fp32": "f32", "float32": "f32", "fp16": "f16", "bfloat16": "bf16"}.get(name, name)
    if name not in PRECISIONS:
        raise _suggest(name, PRECISIONS, "precision", f"{PRECISION_ENV} or --precision")
    return name


_NUMPY_TO_V2 = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
    "object": "BYTES",
    "bfloat16": "BF16",
}


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, v2 datatype (``FP32``, ...) and shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class Engine:
    """One loaded model behind one backend: ``engine(tensor) -> raw output``.

    Thread-safe: several threads may call :meth:`run` at once (ONNX Runtime sessions are; the
    OpenVINO engine hands each call its own infer request from a pool).

    Attributes:
        backend: ``openvino`` or ``onnxruntime``.
        precision: The precision inference really runs at (``f32``, ``bf16``, ``f16``), read back
            from the compiled model, not the one asked for.
        quantized: True for an INT8 (NNCF) model: its quantized layers run in int8, the rest at
            ``precision``.
        inputs / outputs: :class:`TensorInfo` of each tensor, in model order.
        metadata: The model's custom metadata (ONNX ``metadata_props``, which OpenVINO keeps in
            ``rt_info["framework"]`` when it converts ONNX to IR).
        raw: The backend object (``onnxruntime.InferenceSession`` or ``openvino.CompiledModel``).
    """

    backend = ""

    def __init__(self) -> None:
        self.precision = "f32"
        self.quantized = False
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        self.metadata: dict[str, str] = {}
        self.raw: Any = None

    @property
    def label(self) -> str:
        """E.g. ``openvino bf16``, ``openvino int8+bf16``, ``onnxruntime f32``: how figures are labelled."""
        return f"{self.backend} {'int8+' if self.quantized else ''}{self.precision}"

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run once; returns the outputs named (default: all), in that order."""
        raise NotImplementedError

    def __call__(self, tensor: np.ndarray) -> np.ndarray:
        """The first output for one input tensor (the detector's case)."""
        return self.run({self.inputs[0].name: tensor}, [self.outputs[0].name])[0]


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime on CPU (CUDA when present), f32."""

    backend = "onnxruntime"

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.raw = session
        types = {
            "tensor(float)": "FP32",
            "tensor(float16)": "FP16",
            "tensor(double)": "FP64",
            "tensor(uint8)": "UINT8",
            "tensor(int8)": "INT8",
            "tensor(int32)": "INT32",
            "tensor(int64)": "INT64",
            "tensor(bool)": "BOOL",
            "tensor(string)": "BYTES",
            "tensor(uint16)": "UINT16",
            "tensor(uint32)": "UINT32",
            "tensor(uint64)": "UINT64",
            "tensor(int16)": "INT16",
        }

        def info(node: Any) -> TensorInfo:
            shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
            return TensorInfo(node.name, types.get(node.type, node.type), shape)

        self.inputs = [info(n) for n in session.get_inputs()]
        self.outputs = [info(n) for n in session.get_outputs()]
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        self.precision = "f16" if any(t.datatype == "FP16" for t in self.inputs) else "f32"

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run the session (it releases the GIL and is thread-safe)."""
        names = list(output_names) if output_names is not None else [t.name for t in self.outputs]
        return self.raw.run(names, dict(feeds))


def _ort_session(
    model: str | Path | bytes, threads: int | None, spinning: bool, providers: Sequence[str] | None
) -> Any:
    import onnxruntime as ort  # lazy: the module itself stays numpy + Pillow

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    if not spinning:
        # No busy-waiting between and inside runs: a spinning ONNX Runtime pool steals the cores
        # that JPEG decoding and NMS need in the same process, and burns CPU quota in a limited
        # pod. On a contended 2-core machine this halved the per-image latency; on an idle one
        # spinning is ~3 ms faster per image (benchmarks/detector.py).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available
    source = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else str(model)
    return ort.InferenceSession(source, opts, providers=list(providers))


class OpenVinoEngine(Engine):
    """OpenVINO on CPU: OVMS's engine, at the runtime's precision unless one is asked or declared.

    Args:
        model: An ``openvino.Model`` (read from ONNX or IR).
        precision: ``f32``/``bf16``/``f16``/``auto``, or None for what the model declares
            (:data:`PRECISION_RT_KEY`), else the runtime's choice.
        threads: Threads per inference (None/0: all cores, OpenVINO's LATENCY hint).
        streams: Inferences that run at once, each on its own ``threads`` (an infer-request
            pool of that size serves concurrent callers). 1 by default.
        pinning: Pin inference threads to cores (OpenVINO's default on Linux): right on dedicated
            cores, wrong on a CPU shared with the processor or other pods, where a pinned thread
            waits for its core instead of moving to an idle one. None keeps OpenVINO's default.
    """

    backend = "openvino"

    def __init__(
        self,
        model: Any,
        *,
        precision: str | None = None,
        threads: int | None = None,
        streams: int | None = None,
        pinning: bool | None = None,
    ) -> None:
        import queue

        import openvino as ov

        super().__init__()
        declared = declared_precision(model)
        asked = precision or declared
        config: dict[str, Any] = {}
        streams = max(1, int(streams or 1))
        if asked and asked != "auto":
            config["INFERENCE_PRECISION_HINT"] = asked
        if pinning is not None:
            config["ENABLE_CPU_PINNING"] = bool(pinning)
        if streams == 1 and not threads:
            config["PERFORMANCE_HINT"] = "LATENCY"
        else:
            config["NUM_STREAMS"] = str(streams)
            if threads:
                config["INFERENCE_NUM_THREADS"] = str(int(threads) * streams)
        core = ov.Core()
        try:
            self.raw = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise DetectorError(f"OpenVINO cannot compile the model with {config}: {exc}") from exc
        self.precision = self.raw.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.metadata = _ov_metadata(model)

        def info(port: Any) -> TensorInfo:
            pshape = port.get_partial_shape()
            shape = tuple(d.get_length() if d.is_static else -1 for d in pshape)
            dtype = port.get_element_type().to_dtype().name
            return TensorInfo(port.get_any_name(), _NUMPY_TO_V2.get(dtype, dtype.upper()), shape)

        self.inputs = [info(p) for p in self.raw.inputs]
        self.outputs = [info(p) for p in self.raw.outputs]
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(streams):
            self._requests.put(self.raw.create_infer_request())

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run on a free infer request (waits for one when all are busy); outputs are copies."""
        names = list(output_names) if output_names is not None else [t.name for t in self.outputs]
        request = self._requests.get()
        try:
            # share_inputs: the tensor is read in place, no copy; infer() releases the GIL.
            request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
            return [np.array(request.get_tensor(n).data, copy=True) for n in names]
        finally:
            self._requests.put(request)


def declared_precision(model: Any) -> str | None:
    """The precision an OpenVINO model declares in its ``rt_info`` (:data:`PRECISION_RT_KEY`), or None."""
    if model.has_rt_info(list(PRECISION_RT_KEY)):
        value = str(model.get_rt_info(list(PRECISION_RT_KEY)).astype(str)).strip().lower()
        return value if value in PRECISIONS else None
    return None


def _ov_metadata(model: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if model.has_rt_info(["framework"]):
        for key in model.get_rt_info(["framework"]).value:
            out[str(key)] = str(model.get_rt_info(["framework", str(key)]).astype(str))
    return out


def read_openvino_model(model: str | Path | bytes, weights: bytes | None = None) -> Any:
    """An ``openvino.Model`` from an ``.onnx`` or ``.xml`` path, ONNX bytes, or IR XML + weights bytes.

    Raises:
        FileNotFoundError: A path that does not exist (or an IR without its ``.bin``).
        DetectorError: Bytes or a file OpenVINO cannot read.
    """
    import openvino as ov

    core = ov.Core()
    try:
        if isinstance(model, (bytes, bytearray, memoryview)):
            if weights is not None:
                return core.read_model(bytes(model), ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
            return core.read_model(bytes(model))
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model not found: {path}")
        if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"OpenVINO IR {path} has no weights file {path.with_suffix('.bin').name}")
        return core.read_model(str(path))
    except RuntimeError as exc:  # OpenVINO reports unreadable models as RuntimeError
        raise DetectorError(f"OpenVINO cannot read the model: {exc}") from None


def open_engine(
    model: str | Path | bytes,
    *,
    engine: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    streams: int | None = None,
    spinning: bool = False,
    providers: Sequence[str] | None = None,
    weights: bytes | None = None,
) -> Engine:
    """Load a model on the chosen backend.

    Args:
        model: ``.onnx`` or OpenVINO ``.xml`` path, or the model's bytes (ONNX, or IR XML with
            ``weights``).
        engine: ``openvino`` or ``onnxruntime`` (default: :func:`resolve_engine`). An IR needs
            OpenVINO.
        precision: OpenVINO inference precision (default :func:`resolve_precision`); ONNX
            Runtime refuses anything but ``f32``/``auto``.
        threads: Threads per inference (None/0: the backend's default, all cores).
        streams: Inferences at once (OpenVINO streams; ONNX Runtime sessions are thread-safe,
            so this only sizes OpenVINO's request pool).
        spinning: The engine may assume dedicated cores: ONNX Runtime's threads busy-wait,
            OpenVINO pins its threads to cores. Off (the default) suits a shared CPU.
        providers: ONNX Runtime execution providers.
        weights: IR weights when ``model`` is IR XML bytes.

    Returns:
        An :class:`Engine`.

    Raises:
        FileNotFoundError: A missing file.
        DetectorError: An unknown engine/precision, a precision the backend cannot honour, or a
            model the backend cannot read.
    """
    is_ir = weights is not None or (isinstance(model, (str, Path)) and Path(model).suffix == ".xml")
    name = resolve_engine(engine)
    precision = resolve_precision(precision)
    if is_ir and name != "openvino":
        if engine:
            raise DetectorError(
                f"{model if not isinstance(model, bytes) else 'IR'}: "
                f"an OpenVINO IR needs engine 'openvino', not {name!r}"
            )
        name = resolve_engine("openvino")
    if isinstance(model, (str, Path)) and not Path(model).is_file():
        raise FileNotFoundError(f"model not found: {model}")
    if name == "onnxruntime":
        if precision not in (None, "auto", "f32"):
            raise DetectorError(f"engine 'onnxruntime' runs the model's own precision (f32), not {precision!r}")
        try:
            return OnnxRuntimeEngine(_ort_session(model, threads, spinning, providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class: told apart by module
            if type(exc).__module__.startswith("onnxruntime"):
                raise DetectorError(f"ONNX Runtime cannot load the model: {exc}") from None
            raise
    return OpenVinoEngine(
        read_openvino_model(model, weights),
        precision=precision,
        threads=threads,
        streams=streams,
        pinning=bool(spinning),
    )


def _as_engine(obj: Any) -> Engine:
    """Wrap what a caller handed the Detector: an Engine, or an ``onnxruntime.InferenceSession``."""
    if isinstance(obj, Engine):
        return obj
    if hasattr(obj, "get_modelmeta") and hasattr(obj, "run"):
        return OnnxRuntimeEngine(obj)
    raise TypeError(f"expected a model path, an Engine or an onnxruntime.InferenceSession, got {type(obj).__name__}")


class Detector:
    """A YOLO model on an inference engine plus the detector core: image in, detections out.

    Pre- and post-processing are the same code whatever the engine; only the inference call
    differs (:class:`Engine`).

    Args:
        path_or_session: Path to an ``.onnx`` file or an OpenVINO IR ``.xml``, an :class:`Engine`,
            an ``onnxruntime.InferenceSession``, or ``None`` for remote-only use through
            :meth:`run` with an ``infer`` function (then give ``names`` and ``imgsz``).
        conf: Minimum score kept (the original demo used 0.2).
        iou: NMS IoU threshold (the original demo used 0.4).
        names: Override the class names from the metadata.
        imgsz: Override the input size from the metadata / input shape.
        engine: ``openvino`` or ``onnxruntime`` (default :func:`resolve_engine`: ``$VINSPECT_ENGINE``,
            else OpenVINO where it is installed).
        precision: OpenVINO inference precision (``f32``, ``bf16``, ``auto``; default what the
            model declares, else the runtime's choice: bf16 on CPUs with bf16 support).
        providers: ONNX Runtime execution providers (default: CUDA if present, else CPU).
        spinning: Let ONNX Runtime's threads busy-wait (faster on an idle, dedicated CPU; off by
            default because it hurts on shared or CPU-limited nodes).
        threads: Threads per inference (default: the engine's, all cores). For a stream of
            images, ``threads=1`` with :meth:`detect_many` running one image per core is the
            faster layout on CPU: a small model splits poorly across cores (see
            ``benchmarks/detector.py``); OpenVINO then gets one stream per core.

    Attributes:
        engine: The :class:`Engine` (None for remote-only use); ``engine.label`` says backend and
            precision.
        session: The backend object (``engine.raw``), kept for callers that want it.
        names: Class names, index = class id.
        imgsz: ``(height, width)`` of the model input.
        stride: Model stride.
        metadata: Parsed model metadata (see :func:`parse_metadata`).
        input_name / output_name: Tensor names (``images`` / ``output0`` for our exports).

    A Detector keeps no per-call state (each :meth:`run` returns its own timings), so one
    instance serves many threads at once.
    """

    def __init__(
        self,
        path_or_session: str | Path | Any | None,
        conf: float = SERVE.conf,
        iou: float = SERVE.iou,
        *,
        names: Sequence[str] | Mapping[Any, str] | None = None,
        imgsz: int | Sequence[int] | None = None,
        engine: str | None = None,
        precision: str | None = None,
        providers: Sequence[str] | None = None,
        spinning: bool = False,
        threads: int | None = None,
    ) -> None:
        self.conf = float(conf)
        self.iou = float(iou)
        self.engine: Engine | None = None
        self.input_name = "images"
        self.output_name = "output0"
        self.metadata: dict[str, Any] = {"names": None, "imgsz": None, "stride": None, "dataset_id": None}
        self.path: Path | None = None
        shape_hw: tuple[int, int] | None = None
        if isinstance(path_or_session, (str, Path)):
            self.path = Path(path_or_session)
            if not self.path.is_file():
                raise FileNotFoundError(f"model not found: {self.path}")
            streams = _usable_cpus() if threads == 1 else None
            self.engine = open_engine(
                self.path,
                engine=engine,
                precision=precision,
                threads=threads,
                streams=streams,
                spinning=spinning,
                providers=providers,
            )
        elif path_or_session is not None:
            self.engine = _as_engine(path_or_session)
        if self.engine is not None:
            inp = self.engine.inputs[0]
            self.input_name = inp.name
            self.output_name = self.engine.outputs[0].name
            if len(inp.shape) == 4 and all(d > 0 for d in inp.shape[2:]):
                shape_hw = (int(inp.shape[2]), int(inp.shape[3]))
            self.metadata = parse_metadata(self.engine.metadata)
        self.names: list[str] = (
            _names_list(names) if names is not None else (self.metadata["names"] or list(CLASS_NAMES))
        )
        if imgsz is not None:
            self.imgsz = _pair(imgsz)
        else:
            self.imgsz = self.metadata["imgsz"] or shape_hw or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
        self.stride: int = self.metadata["stride"] or 32

    @property
    def session(self) -> Any:
        """The backend object: an ``onnxruntime.InferenceSession`` or an ``openvino.CompiledModel``."""
        return self.engine.raw if self.engine is not None else None

    def prepare(self, img: Any) -> tuple[np.ndarray, LetterboxInfo]:
        """Input tensor and letterbox info for one image, as :meth:`detect` makes them.

        Encoded bytes (and file paths) take the fast path: JPEG is decoded directly at a reduced
        DCT scale that is still at least the model's input size (:func:`serving.images.decode_reduced`);
        arrays and PIL images go through :func:`preprocess`.
        """
        if isinstance(img, (str, Path)):
            try:
                return self.prepare(Path(img).read_bytes())
            except ValueError as exc:
                raise DetectorError(f"{img}: {exc}") from None
        if isinstance(img, (bytes, bytearray, memoryview)):
            arr, orig = decode_reduced(bytes(img), self._content_hw)
            return _to_tensor(arr, orig, self.imgsz, self.stride, bgr=True)
        if isinstance(img, BGRImage):
            return _to_tensor(img.array, img.array.shape[:2], self.imgsz, self.stride, bgr=True)
        return preprocess(img, self.imgsz, stride=self.stride)

    def _content_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` an image of ``orig_hw`` is resized to inside the letterbox."""
        _, unpad_w, unpad_h, _, _ = _geometry(orig_hw, self.imgsz)
        return unpad_h, unpad_w

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the local engine on a prepared input tensor."""
        if self.engine is None:
            raise RuntimeError(
                "this Detector has no local model (no ONNX session or OpenVINO engine); use run(img, infer)"
            )
        return self.engine(tensor)

    def detect(self, img: Any) -> list[Detection]:
        """Detect objects in one image with the local engine (:meth:`run` without the timings).

        Args:
            img: RGB array ``(H, W, 3)``, encoded image bytes, PIL image or file path.

        Returns:
            Detections in original-image pixels, highest score first.
        """
        return self.run(img).detections

    def run(self, img: Any, infer: Callable[[np.ndarray], np.ndarray] | None = None) -> DetectionResult:
        """Detect objects in one image and say how long each stage took.

        Args:
            img: RGB array ``(H, W, 3)``, :class:`serving.images.BGRImage`, encoded image bytes,
                PIL image or file path.
            infer: Takes the ``float32 [1, 3, H, W]`` input tensor, returns the raw output (e.g. a
                remote v2 call); default the local engine (:meth:`infer`).

        Returns:
            The detections in original-image pixels, highest score first, and the timings.
        """
        infer = infer or self.infer
        t0 = time.perf_counter()
        tensor, info = self.prepare(img)
        t1 = time.perf_counter()
        output = np.asarray(infer(tensor))
        t2 = time.perf_counter()
        dets = postprocess(output, info, conf=self.conf, iou=self.iou, names=self.names)
        t3 = time.perf_counter()
        return DetectionResult(
            dets,
            {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3},
        )

    def detect_many(self, images: Iterable[Any], workers: int | None = None) -> Iterator[list[Detection]]:
        """Detect objects in a stream of images, ``workers`` images at a time, results in order.

        Each worker decodes, letterboxes, runs the (thread-safe) engine and post-processes one
        image; OpenCV, NumPy, ONNX Runtime and OpenVINO release the GIL, so the workers use separate
        cores. Pair with ``Detector(..., threads=1)`` for the best throughput on CPU.

        Args:
            images: Images as :meth:`detect` takes them (file paths, bytes, arrays).
            workers: Images in flight (default: the CPUs this process may use).

        Yields:
            The detections of each image, in input order.
        """
        workers = max(1, int(workers or _usable_cpus()))
        if workers == 1:
            for img in images:
                yield self.detect(img)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detector") as pool:
            pending: deque[Future[DetectionResult]] = deque()
            for img in images:
                pending.append(pool.submit(self.run, img))
                if len(pending) >= 2 * workers:  # bounded: a long stream is never all in memory
                    yield pending.popleft().result().detections
            while pending:
                yield pending.popleft().result().detections


def _usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return cpus
