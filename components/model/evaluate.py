"""Evaluate core: detection metrics of an ONNX model through the detector core.

The model runs exactly as it is served (:class:`serving.detector.Detector`: same letterbox, same
decode, same NMS), and the metrics are computed here in numpy.

Metric definitions follow Ultralytics' ``val`` so numbers are comparable with training logs and
with the original demo's reported figures:

* predictions are matched to ground truth of the same class per image, greedily in descending
  confidence order, each taking the best still-unclaimed box, at IoU 0.50, 0.55, ..., 0.95;
* AP per class and IoU threshold: the precision envelope integrated over recall with 101-point
  interpolation and the trapezoidal rule (Ultralytics' ``compute_ap``; COCO uses the same 101
  recall points but a plain mean, which differs by well under 0.01);
* mAP is the mean over classes that have ground truth in the split; mAP50-95 the mean over the
  ten thresholds;
* precision and recall are read at the confidence that maximises the (smoothed) mean F1 over
  classes, as Ultralytics reports them.

Given the same predictions, these functions reproduce Ultralytics' ``match_predictions`` and
``ap_per_class`` to 1e-9 (``tests/model/test_model_metrics.py``). End to end, the numbers differ
from ``YOLO(model).val`` only where we deliberately evaluate the served path instead: one label
per box (Ultralytics' val NMS is multi-label), Pillow's antialiased bilinear resize (Ultralytics'
val shrinks with OpenCV INTER_AREA, its training and predict paths with INTER_LINEAR), and JPEG
decoded at a reduced DCT scale. The resize filter dominates for a barely trained model: on the
real metal-nut split (yolo11n, 104 CPU epochs) we measured mAP50 0.224 against Ultralytics' 0.254;
resizing with INTER_AREA inside our pipeline gave 0.2525, i.e. the arithmetic agrees and the gap
is the filter. The tests allow 0.05.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serving import detector as det
from vinspect.defaults import EVAL, SERVE

log = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_AP_X = np.linspace(0.0, 1.0, 101)
_CURVE_X = np.linspace(0.0, 1.0, 1000)
_TRAPZ = getattr(np, "trapezoid", None) or getattr(np, "trapz")


# --------------------------------------------------------------------------------------------
# Dataset reading
# --------------------------------------------------------------------------------------------


def split_images(dataset_dir: Path, split: str = "val") -> list[Path]:
    """Images of one split of a dataset directory (``data.yaml`` if present, else ``images/<split>``).

    Raises:
        FileNotFoundError: If the split's image directory does not exist or is empty.
    """
    dataset_dir = Path(dataset_dir)
    img_dir = dataset_dir / "images" / split
    data_yaml = dataset_dir / "data.yaml"
    if data_yaml.is_file():
        cfg = yaml.safe_load(data_yaml.read_text()) or {}
        rel = cfg.get(split)
        if isinstance(rel, str):
            # The dataset may have moved since data.yaml was written: resolve against the directory
            # we were given, not the absolute ``path`` recorded inside.
            img_dir = dataset_dir / rel
    if not img_dir.is_dir():
        raise FileNotFoundError(f"no '{split}' split in {dataset_dir}: {img_dir} is not a directory")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images in {img_dir}")
    return images


def label_path(image: Path) -> Path:
    """YOLO convention: ``.../images/<split>/x.png`` -> ``.../labels/<split>/x.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_labels(path: Path, width: int, height: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a YOLO label file into pixel ``xyxy`` boxes and class ids (missing file = no objects).

    Raises:
        ValueError: Naming the file and line of a malformed row or an out-of-range class id.
    """
    boxes: list[list[float]] = []
    classes: list[int] = []
    if path.is_file():
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                raise ValueError(f"{path}:{lineno}: expected 'class cx cy w h', got {line!r}")
            try:
                cls = int(fields[0])
                cx, cy, w, h = (float(v) for v in fields[1:])
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not numbers: {line!r}") from exc
            if not 0 <= cls < num_classes:
                raise ValueError(f"{path}:{lineno}: class id {cls} outside 0..{num_classes - 1}")
            boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
            classes.append(cls)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(classes, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Metric core (pure numpy)
# --------------------------------------------------------------------------------------------


def match_predictions(
    pred_boxes: np.ndarray,
    pred_classes: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    iou_thresholds: np.ndarray = IOU_THRESHOLDS,
) -> np.ndarray:
    """Mark each prediction of one image as a true positive per IoU threshold.

    Greedy in descending confidence: each prediction claims the unclaimed same-class ground-truth
    box with the highest IoU, separately for every threshold.

    Returns:
        Boolean ``(n_pred, n_thresholds)`` in the order of the inputs.
    """
    n_pred = len(pred_classes)
    correct = np.zeros((n_pred, len(iou_thresholds)), dtype=bool)
    if n_pred == 0 or len(gt_classes) == 0:
        return correct
    iou = det.box_iou(gt_boxes, pred_boxes)  # (n_gt, n_pred)
    iou = iou * (np.asarray(gt_classes)[:, None] == np.asarray(pred_classes)[None, :])
    order = np.argsort(-np.asarray(pred_scores), kind="stable")
    claimed = np.zeros((len(gt_classes), len(iou_thresholds)), dtype=bool)
    cols = np.arange(len(iou_thresholds))
    for j in order:
        if iou[:, j].max(initial=0.0) < iou_thresholds.min():
            continue
        available = np.where(claimed, 0.0, iou[:, j, None])  # (n_gt, n_thr)
        k = available.argmax(axis=0)
        hit = available[k, cols] >= iou_thresholds
        correct[j] = hit
        claimed[k, cols] |= hit
    return correct


def _smooth(y: np.ndarray, fraction: float) -> np.ndarray:
    """Box filter whose width is ``fraction`` of the length, edges padded (as Ultralytics)."""
    nf = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def average_precision(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP from one recall/precision curve: envelope, 101-point interpolation, trapezoidal rule.

    Returns:
        ``(ap, envelope_precision, recall_with_sentinels)``.
    """
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    ap = float(_TRAPZ(np.interp(_AP_X, mrec, mpre), _AP_X))
    return ap, mpre, mrec


def compute_metrics(
    tp: np.ndarray,
    scores: np.ndarray,
    pred_classes: np.ndarray,
    gt_classes: np.ndarray,
    num_classes: int,
    eps: float = 1e-16,
) -> dict[str, Any]:
    """Detection metrics from matched predictions pooled over a split.

    Args:
        tp: ``(n_pred, n_thresholds)`` booleans from :func:`match_predictions`.
        scores: ``(n_pred,)`` confidences.
        pred_classes: ``(n_pred,)`` predicted class ids.
        gt_classes: ``(n_gt,)`` ground-truth class ids of all images.
        num_classes: Number of classes of the model.

    Returns:
        ``{"map50", "map50_95", "precision", "recall", "classes": {id: {"ap": (n_thr,), "precision",
        "recall", "support"}}, "curves": {"x", "precision_at_map50": {id: (1000,)}, ...}}`` where
        only classes with ground truth are in ``classes``.
    """
    tp = np.asarray(tp, dtype=np.float64).reshape(len(scores), -1)
    scores = np.asarray(scores, dtype=np.float64)
    pred_classes = np.asarray(pred_classes, dtype=np.int64)
    gt_classes = np.asarray(gt_classes, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    tp, scores, pred_classes = tp[order], scores[order], pred_classes[order]
    present, support = np.unique(gt_classes, return_counts=True)
    n_thr = tp.shape[1] if tp.ndim == 2 and tp.shape[1] else len(IOU_THRESHOLDS)
    ap = np.zeros((len(present), n_thr))
    p_curve = np.zeros((len(present), len(_CURVE_X)))
    r_curve = np.zeros((len(present), len(_CURVE_X)))
    pr_curves: dict[int, np.ndarray] = {}
    for ci, c in enumerate(present):
        sel = pred_classes == c
        n_gt = support[ci]
        if not sel.any():
            pr_curves[int(c)] = np.zeros_like(_CURVE_X)
            continue
        tpc = tp[sel].cumsum(axis=0)
        fpc = (1.0 - tp[sel]).cumsum(axis=0)
        recall = tpc / (n_gt + eps)
        precision = tpc / (tpc + fpc)
        # Confidence decreases along the arrays; np.interp needs increasing x, hence the negations.
        r_curve[ci] = np.interp(-_CURVE_X, -scores[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-_CURVE_X, -scores[sel], precision[:, 0], left=1)
        for j in range(n_thr):
            ap[ci, j], mpre, mrec = average_precision(recall[:, j], precision[:, j])
            if j == 0:
                pr_curves[int(c)] = np.interp(_CURVE_X, mrec, mpre)
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(_smooth(f1.mean(axis=0), 0.1).argmax()) if len(present) else 0
    p_at, r_at = p_curve[:, best], r_curve[:, best]
    classes = {
        int(c): {
            "ap": ap[ci],
            "precision": float(p_at[ci]),
            "recall": float(r_at[ci]),
            "support": int(support[ci]),
        }
        for ci, c in enumerate(present)
        if 0 <= c < num_classes
    }
    return {
        "map50": float(ap[:, 0].mean()) if len(present) else 0.0,
        "map50_95": float(ap.mean()) if len(present) else 0.0,
        "precision": float(p_at.mean()) if len(present) else 0.0,
        "recall": float(r_at.mean()) if len(present) else 0.0,
        "best_conf": float(_CURVE_X[best]),
        "classes": classes,
        "curves": {"x": _CURVE_X, "precision_at_map50": pr_curves},
    }


def confusion_matrix(
    pred_boxes: np.ndarray,
    pred_classes: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    num_classes: int,
    conf: float = SERVE.conf,
    iou_threshold: float = SERVE.iou,
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """Accumulate one image into a ``(nc+1, nc+1)`` confusion matrix (rows predicted, columns true).

    The last row/column is background: a missed object counts in the background row of its true
    class column; a prediction matching nothing counts in its class row, background column.
    Matching is one-to-one by IoU (highest first), class-agnostic, at ``iou_threshold``.
    """
    if matrix is None:
        matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    keep = np.asarray(pred_scores) > conf
    pb, pc = np.asarray(pred_boxes).reshape(-1, 4)[keep], np.asarray(pred_classes)[keep]
    gc = np.asarray(gt_classes)
    bg = num_classes
    if len(gc) == 0:
        for c in pc:
            matrix[c, bg] += 1
        return matrix
    if len(pc) == 0:
        for c in gc:
            matrix[bg, c] += 1
        return matrix
    iou = det.box_iou(gt_boxes, pb)
    gi, pi = np.nonzero(iou > iou_threshold)
    pairs = sorted(zip(iou[gi, pi], gi, pi), key=lambda t: -t[0])
    used_g: set[int] = set()
    used_p: set[int] = set()
    for _, g, p in pairs:
        if g in used_g or p in used_p:
            continue
        used_g.add(int(g))
        used_p.add(int(p))
        matrix[pc[p], gc[g]] += 1
    for g, c in enumerate(gc):
        if g not in used_g:
            matrix[bg, c] += 1
    for p, c in enumerate(pc):
        if p not in used_p:
            matrix[c, bg] += 1
    return matrix


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: pipeline pods and CI have no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".part.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_pr_curve(result: dict[str, Any], names: Sequence[str], path: Path) -> Path:
    """Precision-recall curve at IoU 0.5 per class and their mean, as a PNG."""
    plt = _plt()
    x = result["curves"]["x"]
    curves = result["curves"]["precision_at_map50"]
    fig, ax = plt.subplots(figsize=(7, 5))
    try:
        for c, y in sorted(curves.items()):
            ap50 = result["classes"][c]["ap"][0] if c in result["classes"] else 0.0
            ax.plot(x, y, linewidth=1, label=f"{names[c]} {ap50:.3f}")
        if curves:
            ax.plot(
                x,
                np.mean(list(curves.values()), axis=0),
                linewidth=3,
                color="blue",
                label=f"all classes {result['map50']:.3f} mAP@0.5",
            )
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title("Precision-Recall (ONNX model, detector core)")
        ax.legend(loc="lower left")
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: Path) -> Path:
    """Confusion matrix (counts; rows predicted, columns true, last = background) as a PNG."""
    plt = _plt()
    labels = list(names) + ["background"]
    fig, ax = plt.subplots(figsize=(6, 5))
    try:
        im = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(im, ax=ax)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("True")
        ax.set_ylabel("Predicted")
        vmax = matrix.max() if matrix.size else 0
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    color="white" if matrix[i, j] > vmax / 2 else "black",
                )
        ax.set_title(f"Confusion matrix (conf {SERVE.conf:g}, IoU {SERVE.iou:g})")
        return _save(fig, path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# The evaluation entry point
# --------------------------------------------------------------------------------------------


def _image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the image header (reads the header only, decodes nothing)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # not an image, truncated, too large
        raise ValueError(f"{path}: unreadable image: {exc}") from exc
    return h, w


def evaluate_onnx(
    onnx_path: Path,
    dataset_dir: Path,
    *,
    split: str = EVAL.split,
    out_dir: Path | None = None,
    conf: float = EVAL.conf,
    iou: float = EVAL.iou,
    progress: Callable[[int, int], None] | None = None,
    engine: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Evaluate a detector (ONNX or OpenVINO IR) on one split of a YOLO dataset, through the detector core.

    Args:
        onnx_path: Exported model, ``.onnx`` or IR ``.xml`` (names and input size read from its
            metadata).
        dataset_dir: Dataset directory (CONTRACTS.md layout).
        split: Split to evaluate (``val`` by default).
        out_dir: If given, ``PR_curve.png`` and ``confusion_matrix.png`` are written there.
        conf: Confidence threshold for mAP (low, as for any mAP computation).
        iou: NMS IoU threshold. 0.6 by default; Ultralytics ``val`` uses 0.7, pass ``iou=0.7``
            to compare like for like.
        progress: Optional ``callback(done, total)`` per image.
        engine: Inference engine (default ``serving.detector.resolve_engine``: OpenVINO where
            installed, as it will be served).
        precision: OpenVINO precision (default: what the model declares, else the runtime's).

    Returns:
        ``{"map50", "map50_95", "precision", "recall", "per_class": {name: {"map50", "map50_95",
        "precision", "recall", "support"}}, "images", "instances", "split", "conf", "iou",
        "model_dataset_id", "eval_dataset_id", "engine", "confusion_matrix", "plots": [paths]}``;
        ``engine`` says backend and precision (e.g. ``openvino bf16``). Classes without ground truth in the split have
        ``support`` 0 and ``None`` for their metrics (the gate skips them).

    Raises:
        components.data.DatasetError: ``dataset_dir`` has no valid ``manifest.json`` (naming it):
            every evaluation records the id of the data it was measured on.
    """
    from components.data.manifest import read_manifest

    # First, so that a folder without a manifest fails before the model is loaded.
    eval_dataset_id = read_manifest(Path(dataset_dir)).dataset_id
    # One image per core, one thread per inference: the faster layout for a small model on
    # CPU (benchmarks/detector.py); results come back in order.
    detector = det.Detector(onnx_path, conf=conf, iou=iou, threads=1, engine=engine, precision=precision)
    names = detector.names
    nc = len(names)
    images = split_images(Path(dataset_dir), split)
    all_tp, all_scores, all_pred_cls, all_gt_cls = [], [], [], []
    cm = np.zeros((nc + 1, nc + 1), dtype=np.int64)
    # Files are handed over as encoded bytes, exactly as the image processor gets them, so a
    # JPEG split is decoded the way it will be served (see Detector.prepare).
    for n, (image, dets) in enumerate(zip(images, detector.detect_many(images)), start=1):
        h, w = _image_size(image)
        gt_boxes, gt_cls = read_labels(label_path(image), w, h, nc)
        pb = np.array([d.box for d in dets], dtype=np.float64).reshape(-1, 4)
        pc = np.array([d.class_id for d in dets], dtype=np.int64)
        ps = np.array([d.score for d in dets], dtype=np.float64)
        all_tp.append(match_predictions(pb, pc, ps, gt_boxes, gt_cls))
        all_scores.append(ps)
        all_pred_cls.append(pc)
        all_gt_cls.append(gt_cls)
        confusion_matrix(pb, pc, ps, gt_boxes, gt_cls, nc, matrix=cm)
        if progress is not None:
            progress(n, len(images))
    result = compute_metrics(
        np.concatenate(all_tp) if all_tp else np.zeros((0, len(IOU_THRESHOLDS)), bool),
        np.concatenate(all_scores),
        np.concatenate(all_pred_cls),
        np.concatenate(all_gt_cls),
        nc,
    )
    gt_all = np.concatenate(all_gt_cls)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        stats = result["classes"].get(c)
        if stats is None:
            per_class[name] = {
                "map50": None,
                "map50_95": None,
                "precision": None,
                "recall": None,
                "support": int((gt_all == c).sum()),
            }
        else:
            per_class[name] = {
                "map50": float(stats["ap"][0]),
                "map50_95": float(np.mean(stats["ap"])),
                "precision": stats["precision"],
                "recall": stats["recall"],
                "support": stats["support"],
            }
    metrics: dict[str, Any] = {
        "map50": result["map50"],
        "map50_95": result["map50_95"],
        "precision": result["precision"],
        "recall": result["recall"],
        "per_class": per_class,
        "images": len(images),
        "instances": int(len(gt_all)),
        "split": split,
        "conf": conf,
        "iou": iou,
        "model_dataset_id": detector.metadata.get("dataset_id") or "",
        "engine": detector.engine.label,
        "eval_dataset_id": eval_dataset_id,
        "confusion_matrix": cm.tolist(),
        "plots": [],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        metrics["plots"] = [
            str(plot_pr_curve(result, names, out / "PR_curve.png")),
            str(plot_confusion_matrix(cm, names, out / "confusion_matrix.png")),
        ]
    log.info(
        "evaluated %s (%s) on %s/%s: mAP50 %.3f mAP50-95 %.3f",
        onnx_path,
        detector.engine.label,
        dataset_dir,
        split,
        metrics["map50"],
        metrics["map50_95"],
    )
    return metrics


def engine_latency_ms(
    model_path: Path,
    images: Sequence[Path],
    *,
    engine: str | None = None,
    precision: str | None = None,
    runs: int = 20,
    warmup: int = 3,
) -> dict[str, Any]:
    """Median latency of the bare engine call, one image at a time, as the model will be served.

    The engine is opened as the model server opens it by default (all cores for one inference,
    the model's declared precision else the runtime's); the tensors are the detector core's.

    Args:
        model_path: ``.onnx`` or IR ``.xml``.
        images: Images to make input tensors from (cycled).
        engine: Backend (default as for serving).
        precision: OpenVINO precision (default: the model's declared one, else the runtime's).
        runs: Timed inferences (median reported).
        warmup: Untimed inferences first.

    Returns:
        ``{"latency_ms": median, "latency_ms_p90": ..., "runs", "engine": label}``.
    """
    import time

    eng = det.open_engine(model_path, engine=engine, precision=precision)
    core = det.Detector(eng)
    tensors = [core.prepare(p)[0] for p in list(images)[: max(1, min(len(images), 8))]]
    if not tensors:
        raise ValueError("engine_latency_ms needs at least one image")
    for i in range(max(0, warmup)):
        eng(tensors[i % len(tensors)])
    times = []
    for i in range(max(1, runs)):
        t0 = time.perf_counter()
        eng(tensors[i % len(tensors)])
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "latency_ms": float(np.median(times)),
        "latency_ms_p90": float(np.percentile(times, 90)),
        "runs": len(times),
        "engine": eng.label,
    }


def evaluate_variants(
    variants_dir: Path,
    dataset_dir: Path,
    *,
    split: str = EVAL.split,
    conf: float = EVAL.conf,
    iou: float = EVAL.iou,
    latency_runs: int = 20,
    out_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate every precision variant with the engine and precision that will serve it.

    The serving candidates (``components.model.export.VARIANT_SPECS``) run on OpenVINO at their
    declared precision, else the runtime's choice, exactly as OVMS and the local model server
    run them; the FP32 ONNX reference runs on ONNX Runtime (f32) for the record. Each gets its
    mAP figures (:func:`evaluate_onnx`) and the median bare-engine latency on the same machine
    (:func:`engine_latency_ms`).

    Args:
        variants_dir: Folder written by ``components.model.export.export_variants``.
        dataset_dir: Dataset directory.
        split: Split evaluated.
        conf: Confidence threshold for mAP.
        iou: NMS IoU threshold.
        latency_runs: Timed inferences per variant.
        out_dir: If given, the PR / confusion plots of each variant go to ``out_dir/<variant>/``.

    Returns:
        ``{variant: {**evaluate_onnx metrics, "latency_ms", "latency_ms_p90", "declared_precision",
        "quantized"}}`` (``precision`` stays the detection metric; ``engine`` says what ran).
    """
    from components.model.export import ONNX_VARIANT, read_variants

    index = read_variants(Path(variants_dir))
    images = split_images(Path(dataset_dir), split)
    results: dict[str, dict[str, Any]] = {}
    for name, entry in index.items():
        engine = "onnxruntime" if name == ONNX_VARIANT else "openvino"
        metrics = evaluate_onnx(
            entry["path"],
            dataset_dir,
            split=split,
            conf=conf,
            iou=iou,
            engine=engine,
            out_dir=(Path(out_dir) / name) if out_dir is not None else None,
        )
        timing = engine_latency_ms(entry["path"], images, engine=engine, runs=latency_runs)
        metrics.update(
            latency_ms=timing["latency_ms"],
            latency_ms_p90=timing["latency_ms_p90"],
            declared_precision=entry.get("precision"),
            quantized=bool(entry.get("quantized")),
        )
        results[name] = metrics
        log.info(
            "variant %s (%s): mAP50-95 %.4f, %.2f ms",
            name,
            metrics["engine"],
            metrics["map50_95"],
            metrics["latency_ms"],
        )
    return results
