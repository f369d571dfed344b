"""Drift: the champion's reference distributions, and the live window compared with them.

Signals (one distribution each):

* ``confidence/<class>``: the scores of that class's detections;
* ``detections_per_image``: how many detections an image has;
* ``brightness``, ``contrast``, ``sharpness``: mean and standard deviation of the grey image
  (0..1) and the variance of its Laplacian, computed on the image reduced to at most
  :data:`STATS_SIDE` pixels a side (the same reduction for reference and live, so camera
  resolution does not move the score).

The **reference** (:func:`compute_reference`) is built from a set of images and the model's
detections on them, with the thresholds the processor uses (conf 0.2, IoU 0.4), so reference and
live distributions are comparable. It is a JSON document: per signal, bin edges (deciles of the
reference values; repeated deciles merged, so a discrete signal gets its own values as bins), the
reference proportions per bin, and a sample of the values (for the KS test).

Stored next to the model version (S3, the models bucket)::

    s3://<bucket>/<model>/<version>/drift-reference.json

beside ``<version>/1/model.onnx``: OpenVINO Model Server loads only numeric version folders, so a
file at that level is not served, and it is deleted with the version. The rollout copies the
served version's reference to ``s3://<bucket>/<model>/serving/drift-reference.json``
(:func:`publish_served_reference`): on KServe/OVMS every version answers as ``1``, so a processor
there reads that key (``VINSPECT_DRIFT_REFERENCE=serving``) rather than the version's own.

The **comparator** (:class:`DriftMonitor`) keeps, per camera, the last ``window`` values of every
signal and scores each against the reference with the population stability index
(``PSI = sum((live - ref) * ln(live / ref))`` over the bins, proportions floored at 1e-4; below 0.1
"no shift", above 0.2 a shift worth acting on: :data:`PSI_ALERT`) and the two-sample
Kolmogorov-Smirnov statistic (the largest gap between the two empirical CDFs, 0..1). A signal with
fewer than ``min_samples`` live values has no score yet.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from vinspect.defaults import SERVE
from vinspect.errors import VinspectError

SCHEMA = "vinspect.drift-reference/v1"
REFERENCE_FILE = "drift-reference.json"
SERVED_FOLDER = "serving"
DEFAULT_CLASSES = ("scratch", "bent")
STATS_SIDE = 256
PSI_ALERT = 0.2
PSI_FLOOR = 1e-4
IMAGE_SIGNALS = ("brightness", "contrast", "sharpness")


class DriftError(VinspectError, ValueError):
    """A reference that cannot be used (names the field or key)."""


# --------------------------------------------------------------------------- per-image signals


def _grey(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    arr = arr.astype(np.float32)
    step = max(1, int(math.ceil(max(arr.shape[:2]) / STATS_SIDE)))
    return arr[::step, ::step] / 255.0


def image_stats(img: np.ndarray | bytes) -> dict[str, float]:
    """Brightness, contrast and sharpness of one image.

    Args:
        img: RGB ``uint8`` array ``(H, W, 3)`` (or grey ``(H, W)``), or encoded image bytes.
            Channel order barely matters here (the grey weights differ), but keep RGB.

    Returns:
        ``{"brightness": mean grey, "contrast": std grey, "sharpness": variance of the Laplacian}``,
        grey in 0..1.
    """
    if isinstance(img, (bytes, bytearray, memoryview)):
        import io

        from PIL import Image

        with Image.open(io.BytesIO(bytes(img))) as im:
            img = np.asarray(im.convert("RGB"))
    g = _grey(img)
    lap = (
        (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1])
        if min(g.shape) > 2
        else np.zeros(1, dtype=np.float32)
    )
    return {"brightness": float(g.mean()), "contrast": float(g.std()), "sharpness": float(lap.var())}


def signal_values(
    detections: Sequence[Mapping[str, Any]], stats: Mapping[str, float] | None, classes: Sequence[str] = DEFAULT_CLASSES
) -> dict[str, list[float]]:
    """The values one image contributes to each signal."""
    out: dict[str, list[float]] = {f"confidence/{c}": [] for c in classes}
    for d in detections:
        key = f"confidence/{d.get('class_name')}"
        if key in out:
            out[key].append(float(d.get("score", 0.0)))
    out["detections_per_image"] = [float(len(detections))]
    for name in IMAGE_SIGNALS:
        if stats is not None and name in stats:
            out[name] = [float(stats[name])]
    return out


# --------------------------------------------------------------------------- the reference


def _edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner bin edges: the reference's quantiles, repeated ones merged."""
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]) if values.size else np.array([])
    edges = sorted(set(float(q) for q in qs))
    if values.size and not edges:  # a constant signal: one edge at its value
        edges = [float(values[0])]
    return edges


def _proportions(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    # Bins (-inf, e1], (e1, e2], ..., (ek, inf): the index is how many edges lie strictly below.
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def compute_reference(
    samples: Iterable[tuple[Any, Sequence[Mapping[str, Any]]]],
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    model: Mapping[str, Any] | None = None,
    bins: int = 10,
    sample_size: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Reference distributions from images and the model's detections on them.

    Args:
        samples: ``(image, detections)`` pairs: the image as an RGB array or encoded bytes (or a
            precomputed :func:`image_stats` dict), detections as the processor writes them
            (``class_name``, ``score``).
        classes: Class names.
        model: ``{"name", "version", ...}`` recorded in the reference.
        bins: Bins per signal (deciles by default).
        sample_size: Values kept per signal for the KS test.
        seed: Sub-sampling seed.

    Returns:
        The reference document (JSON-ready).

    Raises:
        DriftError: No samples.
    """
    values: dict[str, list[float]] = {}
    n_images = 0
    for image, detections in samples:
        stats = image if isinstance(image, Mapping) else image_stats(image)
        for k, v in signal_values(detections, stats, classes).items():
            values.setdefault(k, []).extend(v)
        n_images += 1
    if not n_images:
        raise DriftError("no images to build a drift reference from")
    rng = np.random.default_rng(seed)
    signals = {}
    for name, vals in sorted(values.items()):
        arr = np.asarray(vals, dtype=np.float64)
        edges = _edges(arr, bins)
        sample = np.sort(rng.choice(arr, sample_size, replace=False) if arr.size > sample_size else arr)
        signals[name] = {
            "n": int(arr.size),
            "edges": edges,
            "proportions": [round(float(p), 6) for p in _proportions(arr, edges)] if arr.size else [],
            "sample": [float(v) for v in sample],
        }
    return {
        "schema": SCHEMA,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": dict(model or {}),
        "classes": list(classes),
        "n_images": n_images,
        "stats_side": STATS_SIDE,
        "signals": signals,
    }


def check_reference(ref: Mapping[str, Any], where: str = "reference") -> dict[str, Any]:
    """Check a reference document's shape.

    Raises:
        DriftError: Wrong schema or a malformed signal (named).
    """
    if not isinstance(ref, Mapping) or ref.get("schema") != SCHEMA:
        raise DriftError(f"{where}: not a drift reference (schema {SCHEMA!r} expected)")
    for name, sig in (ref.get("signals") or {}).items():
        if not isinstance(sig, Mapping) or not {"edges", "proportions", "sample"} <= set(sig):
            raise DriftError(f"{where}: signal {name!r} lacks edges, proportions or sample")
        if sig["n"] and len(sig["proportions"]) != len(sig["edges"]) + 1:
            raise DriftError(
                f"{where}: signal {name!r} has {len(sig['proportions'])} proportions for "
                f"{len(sig['edges'])} edges (expected edges + 1)"
            )
    return dict(ref)


def reference_key(model_name: str, version: str | int) -> str:
    """S3 key of a model version's reference: ``<model>/<version>/drift-reference.json``."""
    return f"{model_name}/{version}/{REFERENCE_FILE}"


def save_reference(s3, bucket: str, model_name: str, version: str | int, ref: Mapping[str, Any]) -> str:
    """Store a reference next to the model version; returns its ``s3://`` URI."""
    check_reference(ref)
    key = reference_key(model_name, version)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(ref, sort_keys=True).encode(), ContentType="application/json")
    return f"s3://{bucket}/{key}"


def _read_key(s3, bucket: str, key: str, missing: str) -> tuple[dict[str, Any], str]:
    """A reference document at ``key`` and its ETag.

    Raises:
        DriftError: Missing (``missing`` says what is missing) or malformed (the key is named).
    """
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
        body = response["Body"].read()
    except Exception as exc:  # noqa: BLE001 - botocore ClientError: a missing key -> DriftError, else re-raised
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise DriftError(f"s3://{bucket}/{key}: {missing}") from None
        raise
    try:
        return check_reference(json.loads(body), f"s3://{bucket}/{key}"), str(response.get("ETag") or "")
    except json.JSONDecodeError as exc:
        raise DriftError(f"s3://{bucket}/{key}: not JSON ({exc})") from None


def load_reference(s3, bucket: str, model_name: str, version: str | int) -> dict[str, Any]:
    """Read a model version's reference from S3.

    Raises:
        DriftError: Missing or malformed (the key is named).
    """
    return _read_key(
        s3, bucket, reference_key(model_name, version), f"no drift reference for {model_name} version {version}"
    )[0]


# --------------------------------------------------------------------------- the served version's reference
#
# KServe/OVMS report version "1" for every rollout (the numeric folder inside the storage path),
# so the version in a response does not name the registry version there. The rollout, when it
# moves the champion, copies the served version's reference to one stable key per model, with the
# registry version in its ``model`` field; a processor on the cluster reads that key instead.


def served_reference_key(model_name: str) -> str:
    """S3 key of the served version's reference: ``<model>/serving/drift-reference.json``.

    ``serving`` is never a version (registry versions are numbers), and OVMS loads only numeric
    folders, so the key is neither served nor mistaken for a version.
    """
    return f"{model_name}/{SERVED_FOLDER}/{REFERENCE_FILE}"


def publish_served_reference(s3, bucket: str, model_name: str, version: str | int) -> str | None:
    """Make ``version``'s reference the served one (call when ``version`` starts serving).

    The document is copied with ``model.name`` and ``model.version`` set to the registry's, in
    one PUT (a reader sees the old or the new document, never a mix). A version without a
    reference removes the served key, so the processor stops comparing the new model with the
    previous one's distributions (drift is then off for it, as for that version locally).

    Returns:
        The ``s3://`` URI written, or None when ``version`` has no reference.

    Raises:
        DriftError: The version's reference is malformed (the key is named; the served key is
            then removed too).
        Exception: S3 errors, as boto3 raises them.
    """
    key = served_reference_key(model_name)
    try:
        ref = load_reference(s3, bucket, model_name, version)
    except DriftError as exc:
        s3.delete_object(Bucket=bucket, Key=key)
        if "no drift reference" in str(exc):
            return None
        raise
    ref["model"] = {**(ref.get("model") or {}), "name": model_name, "version": str(version)}
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(ref, sort_keys=True).encode(), ContentType="application/json")
    return f"s3://{bucket}/{key}"


def load_served_reference(s3, bucket: str, model_name: str) -> tuple[dict[str, Any], str]:
    """The served version's reference and its ETag.

    Raises:
        DriftError: Missing or malformed (the key is named).
    """
    return _read_key(
        s3,
        bucket,
        served_reference_key(model_name),
        f"no served drift reference for {model_name} (the rollout writes it)",
    )


def served_reference_etag(s3, bucket: str, model_name: str) -> str | None:
    """ETag of the served reference (None: there is none), from a HEAD request."""
    try:
        return str(s3.head_object(Bucket=bucket, Key=served_reference_key(model_name)).get("ETag") or "")
    except Exception as exc:  # noqa: BLE001 - botocore ClientError: a missing key -> None, else re-raised
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def write_reference(ref: Mapping[str, Any], path: Path) -> Path:
    """Write a reference as JSON (atomically: a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(check_reference(ref), sort_keys=True))
    tmp.replace(path)
    return path


def compute_reference_for_dataset(
    onnx_model: str | Path,
    dataset_dir: str | Path,
    *,
    split: str = "val",
    conf: float = SERVE.inspect_conf,
    iou: float = SERVE.inspect_iou,
    model: Mapping[str, Any] | None = None,
    detector_factory: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """What the evaluate step calls: the ONNX model over a dataset split, through the detector core.

    Args:
        onnx_model: The model file.
        dataset_dir: A dataset written by ``validate_and_split`` (``manifest.json`` with ``items``).
        split: Which split's images (``val`` by default; all images when the split is empty).
        conf: Score threshold: the processor's (so live and reference compare).
        iou: NMS IoU threshold: the processor's.
        model: Recorded in the reference.
        detector_factory: Builds the detector (tests); default :class:`serving.detector.Detector`.

    Returns:
        The reference document.
    """
    from serving import detector as det
    from serving.images import decode_image

    dataset_dir = Path(dataset_dir)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    classes = list(manifest.get("classes") or DEFAULT_CLASSES)
    if manifest.get("items"):
        items = [it for it in manifest["items"] if it.get("split") == split] or list(manifest["items"])
    else:
        # The minimal dataset layout (docs/CONTRACTS.md) has no per-item list: the split's folder is it.
        folder = dataset_dir / "images" / split
        found = sorted(folder.rglob("*")) if folder.is_dir() else sorted((dataset_dir / "images").rglob("*"))
        items = [
            {"image": f.relative_to(dataset_dir).as_posix()}
            for f in found
            if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
        ]
        if not items:
            raise DriftError(
                f"{dataset_dir}: no images for the drift reference (no manifest items, nothing under images/{split}/)"
            )
    detector = (detector_factory or det.Detector)(str(onnx_model), conf=conf, iou=iou, names=classes)

    def samples():
        for it in items:
            data = (dataset_dir / it["image"]).read_bytes()
            rgb = decode_image(data)
            yield rgb, [d.to_dict() for d in detector.detect(rgb)]

    return compute_reference(samples(), classes=classes, model=model)


# --------------------------------------------------------------------------- the live comparison


def psi(ref_proportions: Sequence[float], live_values: Sequence[float], edges: Sequence[float]) -> float:
    """Population stability index of live values against the reference's bins."""
    live = _proportions(np.asarray(live_values, dtype=np.float64), edges)
    ref = np.maximum(np.asarray(ref_proportions, dtype=np.float64), PSI_FLOOR)
    live = np.maximum(live, PSI_FLOOR)
    return float(np.sum((live - ref) * np.log(live / ref)))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    if not a.size or not b.size:
        return 0.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


class DriftMonitor:
    """Live windows per camera and signal, scored against one reference (thread-safe).

    Args:
        reference: The reference document (:func:`compute_reference`).
        window: Values kept per camera and signal.
        min_samples: Fewest live values before a signal is scored.
    """

    def __init__(self, reference: Mapping[str, Any], *, window: int = 500, min_samples: int = 50):
        self.reference = check_reference(reference)
        self.classes = list(self.reference.get("classes") or DEFAULT_CLASSES)
        self.window, self.min_samples = window, min_samples
        self._live: dict[str, dict[str, deque]] = {}
        self._lock = threading.Lock()

    def observe(
        self,
        camera: str,
        detections: Sequence[Mapping[str, Any]],
        image: np.ndarray | bytes | Mapping[str, float] | None = None,
    ) -> None:
        """Add one inspected image (its detections, and the image or its :func:`image_stats`)."""
        stats = image if isinstance(image, Mapping) or image is None else image_stats(image)
        values = signal_values(detections, stats, self.classes)
        with self._lock:
            cam = self._live.setdefault(camera, {})
            for name, vals in values.items():
                cam.setdefault(name, deque(maxlen=self.window)).extend(vals)

    def scores(self, camera: str) -> dict[str, dict[str, float]]:
        """``{signal: {"psi", "ks", "n"}}`` for the camera's signals with enough live values."""
        with self._lock:
            live = {k: list(v) for k, v in self._live.get(camera, {}).items()}
        out = {}
        for name, vals in sorted(live.items()):
            sig = self.reference["signals"].get(name)
            if sig is None or not sig["n"] or len(vals) < self.min_samples:
                continue
            out[name] = {
                "psi": psi(sig["proportions"], vals, sig["edges"]),
                "ks": ks_statistic(sig["sample"], vals),
                "n": float(len(vals)),
            }
        return out

    def cameras(self) -> list[str]:
        """Cameras seen so far."""
        with self._lock:
            return sorted(self._live)

    def drifting(self, camera: str, threshold: float = PSI_ALERT) -> list[str]:
        """Signals of the camera whose PSI is above ``threshold``."""
        return [name for name, s in self.scores(camera).items() if s["psi"] > threshold]
