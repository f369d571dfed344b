"""Offline-safe Ultralytics set-up.

Ultralytics fetches fonts, checks for updates, syncs settings and installs missing packages on its
own when it is first imported or used. In a pipeline pod or on an air-gapped node each of those is
a hang or a failure, so this module prepares a config directory and the environment *before*
``ultralytics`` is imported.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def _dejavu() -> Path | None:
    try:
        import matplotlib

        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return font if font.is_file() else None
    except ImportError:  # the serving extra has no matplotlib and no Ultralytics either
        return None


def prepare_ultralytics(config_dir: Path | str | None = None, *, runs_dir: Path | str | None = None) -> Path:
    """Make Ultralytics run offline and return its config directory.

    Sets ``YOLO_CONFIG_DIR``, ``YOLO_OFFLINE`` and ``YOLO_AUTOINSTALL``, writes a settings file
    with sync and Ultralytics' own MLflow callback switched off (vinspect logs to MLflow itself,
    once, in the register step), and places a TrueType font where Ultralytics looks for
    ``Arial.ttf`` so that plotting never tries to download one.

    Args:
        config_dir: Directory for Ultralytics' settings. Defaults to ``$YOLO_CONFIG_DIR`` or
            ``<state dir>/ultralytics``.
        runs_dir: Where Ultralytics may write runs by default (vinspect always passes an explicit
            project directory, so this is only a fallback).

    Returns:
        The config directory.
    """
    if config_dir is None:
        from vinspect.settings import state_dir

        config_dir = os.environ.get("YOLO_CONFIG_DIR") or (state_dir() / "ultralytics")
    config_dir = Path(config_dir).resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_VERBOSE", "false")

    font = _dejavu()
    for target_dir in (config_dir, config_dir / "Ultralytics"):
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in _FONTS:
            target = target_dir / name
            if font is not None and not target.exists():
                shutil.copyfile(font, target)

    runs = Path(runs_dir).resolve() if runs_dir else config_dir / "runs"
    settings = {
        "sync": False,
        "mlflow": False,
        "clearml": False,
        "comet": False,
        "dvc": False,
        "hub": False,
        "neptune": False,
        "raytune": False,
        "tensorboard": False,
        "wandb": False,
        "runs_dir": str(runs),
        "weights_dir": str(config_dir / "weights"),
        "datasets_dir": str(config_dir / "datasets"),
    }
    for path in (config_dir / "settings.json", config_dir / "Ultralytics" / "settings.json"):
        current = {}
        if path.is_file():
            try:
                current = json.loads(path.read_text())
            except json.JSONDecodeError:
                current = {}
        current.update(settings)
        path.write_text(json.dumps(current, indent=2))
    return config_dir
