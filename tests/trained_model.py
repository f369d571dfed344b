"""Session fixtures for the model tests: a synthetic dataset, a tiny trained model, its ONNX export.

``tests/conftest.py`` imports the fixtures, so ``tests/model`` and ``tests/cli`` (the ``vinspect
model`` commands) share one training per session; the constants are imported from here.

Training happens once per session and every test shares the artifacts. The model must really
detect, or the evaluation and parity tests compare nothing with nothing: YOLO11n from its YAML,
128 px, 50 epochs of AdamW (lr0 0.003, batch 8) on 48 synthetic nut images with enlarged defects
(``defect_scale=3``). Measured on two CPU cores: 66 s of training; on the 16 val images ONNX
mAP50 0.37 (bent 0.72, scratch 0.01), Ultralytics' val 0.38; 7 detections at conf 0.1 on the
first 6 val images. At the default defect size (20-30 epochs, SGD or AdamW) and with 25 epochs
at ``defect_scale=3`` mAP50 stayed at about 0: the detector starts to fire only after about 25
epochs here; 40 epochs gave 0.25, 60 epochs 0.54 but about 80 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IMGSZ = 128
EPOCHS = 50
BATCH = 8
OPTIMIZER = "AdamW"
LR0 = 0.003
DEFECT_SCALE = 3.0
# The session model's ONNX mAP50 on the val split must beat this: a model that detects nothing
# scores 0, and the measured score is several times higher, so it has room for machine-to-machine
# variation.
MIN_MAP50 = 0.1


@pytest.fixture(scope="session")
def yolo_config(tmp_path_factory) -> Path:
    """An offline Ultralytics config dir for the session (restores YOLO_* env vars afterwards)."""
    from vinspect.yolo_env import prepare_ultralytics

    saved = {k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_VERBOSE")}
    cfg = prepare_ultralytics(tmp_path_factory.mktemp("ultralytics"))
    yield cfg
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A validated synthetic dataset (CONTRACTS.md layout): 48 train / 16 val nut images, 128 px,
    with defects enlarged (``DEFECT_SCALE``) so a tiny model learns them in about a minute."""
    from components.data import import_dataset, synthesize

    root = tmp_path_factory.mktemp("synthetic")
    export = synthesize(root / "export", 64, seed=0, size=128, defect_scale=DEFECT_SCALE)
    import_dataset(export, root / "dataset", val=0.25, seed=0)
    return root / "dataset"


@pytest.fixture(scope="session")
def trained(dataset, yolo_config, tmp_path_factory):
    """A :class:`components.model.TrainResult` of a tiny YOLO11n run that detects (see the module doc)."""
    from components.model import train_model

    out = tmp_path_factory.mktemp("runs")
    epochs_seen: list[tuple[int, int]] = []
    result = train_model(
        dataset / "data.yaml",
        out,
        model="yolo11n.yaml",
        epochs=EPOCHS,
        imgsz=IMGSZ,
        batch=BATCH,
        optimizer=OPTIMIZER,
        lr0=LR0,
        seed=0,
        workers=0,
        progress=lambda done, total: epochs_seen.append((done, total)),
    )
    result.progress_calls = epochs_seen  # type: ignore[attr-defined]
    return result


@pytest.fixture(scope="session")
def onnx_model(trained, dataset, tmp_path_factory) -> Path:
    """The tiny model exported to ONNX (static ``IMGSZ`` px, opset 17) with the dataset id."""
    import json

    from components.model import export_onnx

    dataset_id = json.loads((dataset / "manifest.json").read_text())["dataset_id"]
    return export_onnx(
        trained.best_weights, tmp_path_factory.mktemp("onnx") / "model.onnx", imgsz=IMGSZ, dataset_id=dataset_id
    )


@pytest.fixture(scope="session")
def val_images(dataset) -> list[Path]:
    """The validation images of the synthetic dataset."""
    return sorted((dataset / "images" / "val").iterdir())
