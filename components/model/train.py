"""Train core: Ultralytics YOLO on a YOLO dataset, offline-safe, GPU when there is one.

The best weights are taken from the trainer's own ``save_dir`` (Ultralytics renames later runs
``train2``, ``train3``, ... so a hard-coded ``runs/detect/train/weights/best.pt`` is wrong).
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vinspect.defaults import TRAIN

log = logging.getLogger(__name__)

# Keys of Ultralytics' results.csv that callers care about, renamed to plain metric names.
_METRIC_KEYS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
}


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        best_weights: ``best.pt`` from the trainer's real save directory (``last.pt`` if no best).
        last_weights: ``last.pt`` (may equal ``best_weights``).
        save_dir: The trainer's save directory.
        results_csv: Ultralytics' per-epoch ``results.csv``.
        epochs: Per-epoch rows of ``results.csv`` as ``{column: float}`` (columns stripped).
        final_metrics: ``{"precision", "recall", "map50", "map50_95"}`` of the final validation
            of the best weights (Ultralytics' own numbers on the validation split).
        plots: PNG/JPG files the trainer wrote (curves, confusion matrix, label stats, batches).
        device: The device string trained on (``"cpu"`` or ``"0"``...).
        params: The hyper-parameters used.
    """

    best_weights: Path
    last_weights: Path
    save_dir: Path
    results_csv: Path | None
    epochs: list[dict[str, float]] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    device: str = "cpu"
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        d = asdict(self)
        for key in ("best_weights", "last_weights", "save_dir", "results_csv"):
            d[key] = str(d[key]) if d[key] is not None else None
        d["plots"] = [str(p) for p in self.plots]
        return d


def select_device(device: str | None = None) -> str:
    """Pick the training device: the given one, else the first CUDA GPU, else ``"cpu"``."""
    if device:
        return str(device)
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def read_results_csv(path: Path) -> list[dict[str, float]]:
    """Parse Ultralytics' ``results.csv`` (its headers are padded with spaces) into float rows."""
    rows: list[dict[str, float]] = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, float] = {}
            for key, value in raw.items():
                if key is None:
                    continue
                try:
                    row[key.strip()] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def resolve_weights(weights: str | Path, work_dir: Path, s3_client: Any = None) -> Path:
    """Return a local path for initial weights given as a local path or ``s3://bucket/key``.

    Raises:
        ValueError: For an ``s3://`` URI without an S3 client, or a malformed URI.
        FileNotFoundError: If a local path or the S3 object does not exist.
    """
    from botocore.exceptions import ClientError

    text = str(weights)
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ValueError(f"malformed S3 URI for weights: {text!r} (expected s3://bucket/key)")
        if s3_client is None:
            raise ValueError(f"weights {text} are on S3 but no S3 client was given (pass s3_client=)")
        work_dir.mkdir(parents=True, exist_ok=True)
        target = work_dir / Path(key).name
        # Download to a temp name first so a failed transfer never leaves a truncated .pt behind.
        tmp = target.with_name(target.name + ".part")
        try:
            s3_client.download_file(bucket, key, str(tmp))
            tmp.replace(target)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NoSuchBucket"}:
                raise FileNotFoundError(f"initial weights not found on S3: {text}") from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return target
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"initial weights not found: {path}")
    return path


def _final_metrics(raw: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, name in _METRIC_KEYS.items():
        if raw and key in raw:
            value = float(raw[key])
            if not math.isnan(value):
                out[name] = value
    return out


def train_model(
    data_yaml: Path,
    out_dir: Path,
    *,
    model: str = TRAIN.model,
    weights: str | None = None,
    epochs: int = TRAIN.epochs,
    imgsz: int = TRAIN.imgsz,
    batch: int = TRAIN.batch,
    lr0: float = TRAIN.lr0,
    optimizer: str = TRAIN.optimizer,
    patience: int = TRAIN.patience,
    seed: int = TRAIN.seed,
    device: str | None = None,
    workers: int = 0,
    s3_client: Any = None,
    time_hours: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a YOLO detector with Ultralytics.

    Args:
        data_yaml: The dataset's ``data.yaml`` (see CONTRACTS.md, "Dataset directory").
        out_dir: Parent directory of the run; the trainer writes ``out_dir/train[N]/``.
        model: Model definition (a YAML such as ``yolo11n.yaml``, built from scratch offline).
        weights: Optional initial weights, a local ``.pt`` or ``s3://bucket/key``; transferred
            into the architecture of ``model``.
        epochs: Training epochs.
        imgsz: Square input size (multiple of 32).
        batch: Batch size.
        lr0: Initial learning rate (honoured unless ``optimizer="auto"``).
        optimizer: ``"SGD"`` (default, so ``lr0`` means what it says; on the real metal nuts it
            beat "auto" = AdamW in a 12.5-minute CPU budget, mAP50 0.28 vs 0.22, one run each
            on a shared machine), ``"AdamW"``, ... or ``"auto"``
            (Ultralytics picks optimizer and learning rate from the run length and ignores
            ``lr0``). What was used is recorded as ``params["effective_optimizer"]`` and
            ``params["effective_lr0"]``.
        patience: Early-stopping patience in epochs.
        seed: Random seed (training runs with ``deterministic=True``).
        device: ``"cpu"``, ``"0"``, ... ; default: CUDA if available, else CPU.
        workers: Data-loader workers (0 keeps memory use predictable in small pods).
        s3_client: boto3 S3 client, needed only for ``s3://`` weights.
        time_hours: Optional wall-clock budget; Ultralytics then fits the number of epochs (and
            the learning-rate schedule) to it, overriding ``epochs``.
        progress: Optional ``callback(epochs_done, epochs_total)`` after every epoch.

    Returns:
        A :class:`TrainResult`.

    Raises:
        FileNotFoundError: If ``data_yaml`` or local weights are missing.
        RuntimeError: If the trainer produced no weights.
    """
    data_yaml = Path(data_yaml).resolve()
    if not data_yaml.is_file():
        raise FileNotFoundError(f"dataset description not found: {data_yaml}")
    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32 (the YOLO stride), got {imgsz}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    from vinspect.yolo_env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO  # after prepare_ultralytics: no downloads, no settings sync

    dev = select_device(device)
    yolo = YOLO(model)
    if weights:
        init = resolve_weights(weights, out_dir / "init_weights", s3_client)
        yolo = yolo.load(str(init))
    params = {
        "model": model,
        "weights": str(weights) if weights else None,
        "epochs": int(epochs),
        "imgsz": int(imgsz),
        "batch": int(batch),
        "lr0": float(lr0),
        "optimizer": optimizer,
        "patience": int(patience),
        "seed": int(seed),
        "device": dev,
        "workers": int(workers),
        "time_hours": time_hours,
    }
    if progress is not None:
        # Ultralytics fires this once more after the final validation (epoch + 1): clamp it.
        yolo.add_callback("on_fit_epoch_end", lambda t: progress(min(int(t.epoch) + 1, int(t.epochs)), int(t.epochs)))
    log.info("training %s on %s with %s", model, data_yaml, params)
    yolo.train(
        data=str(data_yaml),
        epochs=int(epochs),
        imgsz=int(imgsz),
        batch=int(batch),
        lr0=float(lr0),
        optimizer=optimizer,
        patience=int(patience),
        seed=int(seed),
        deterministic=True,
        device=dev,
        workers=int(workers),
        project=str(out_dir),
        name="train",
        exist_ok=False,
        plots=True,
        verbose=False,
        amp=dev != "cpu",
        **({"time": float(time_hours)} if time_hours else {}),
    )
    trainer = yolo.trainer
    opt = getattr(trainer, "optimizer", None)
    if opt is not None and opt.param_groups:
        params["effective_optimizer"] = type(opt).__name__
        params["effective_lr0"] = float(opt.param_groups[0].get("initial_lr", opt.param_groups[0]["lr"]))
    save_dir = Path(trainer.save_dir).resolve()
    last = Path(trainer.last)
    best = Path(trainer.best) if Path(trainer.best).is_file() else last
    if not best.is_file():
        raise RuntimeError(f"training finished but wrote no weights under {save_dir / 'weights'}")
    results_csv = save_dir / "results.csv"
    rows = read_results_csv(results_csv) if results_csv.is_file() else []
    plots = sorted(p for p in save_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    return TrainResult(
        best_weights=best,
        last_weights=last if last.is_file() else best,
        save_dir=save_dir,
        results_csv=results_csv if results_csv.is_file() else None,
        epochs=rows,
        final_metrics=_final_metrics(getattr(trainer, "metrics", None)),
        plots=plots,
        device=dev,
        params=params,
    )


def copy_best(result: TrainResult, dest: Path) -> Path:
    """Copy the best weights to ``dest`` atomically (temp file, then rename)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(result.best_weights, tmp)
    tmp.replace(dest)
    return dest
