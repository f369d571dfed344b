"""Session fixtures for the model tests: a synthetic dataset, a tiny trained model, its ONNX export.

Training happens once per session (YOLO11n from its YAML, 64 px, 3 epochs on 48 synthetic nut
images: about 15 s on two CPU cores) and every test shares the artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IMGSZ = 64
EPOCHS = 3


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
    """A validated synthetic dataset (CONTRACTS.md layout): 48 train / 16 val nut images, 128 px."""
    from components.data import import_dataset, synthesize

    root = tmp_path_factory.mktemp("synthetic")
    export = synthesize(root / "export", 64, seed=0, size=128)
    import_dataset(export, root / "dataset", val=0.25, seed=0)
    return root / "dataset"


@pytest.fixture(scope="session")
def trained(dataset, yolo_config, tmp_path_factory):
    """A :class:`components.model.TrainResult` of a tiny 3-epoch YOLO11n run."""
    from components.model import train_model

    out = tmp_path_factory.mktemp("runs")
    epochs_seen: list[tuple[int, int]] = []
    result = train_model(
        dataset / "data.yaml", out, model="yolo11n.yaml", epochs=EPOCHS, imgsz=IMGSZ, batch=16,
        seed=0, workers=0, progress=lambda done, total: epochs_seen.append((done, total)),
    )
    result.progress_calls = epochs_seen  # type: ignore[attr-defined]
    return result


@pytest.fixture(scope="session")
def onnx_model(trained, dataset, tmp_path_factory) -> Path:
    """The tiny model exported to ONNX (static 64 px, opset 17) with the dataset id."""
    import json

    from components.model import export_onnx

    dataset_id = json.loads((dataset / "manifest.json").read_text())["dataset_id"]
    return export_onnx(trained.best_weights, tmp_path_factory.mktemp("onnx") / "model.onnx",
                       imgsz=IMGSZ, dataset_id=dataset_id)


@pytest.fixture(scope="session")
def val_images(dataset) -> list[Path]:
    """The validation images of the synthetic dataset."""
    return sorted((dataset / "images" / "val").iterdir())
