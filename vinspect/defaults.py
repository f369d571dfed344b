"""One source of defaults: training, evaluation, the quality gate and serving thresholds.

Every entry point reads its defaults from here: the training pipeline's signature
(``pipelines/training.py``), the CLI options (``vinspect model ...``, ``vinspect demo``) and the
cores (``components.model``, ``serving.detector``). Changing a default is a one-line change here,
and the pipeline, the CLI and the cores move together (``tests/model/test_defaults.py`` holds them
to it).

One frozen dataclass per concern, as Ultralytics keeps one ``cfg/default.yaml``:

* :data:`TRAIN`: what ``vinspect model train`` and the pipeline's train step use. ``imgsz`` is 640:
  what the pipeline trains at on the GPU node (thin scratches on 700 px nuts need it).
* :data:`DEMO_TRAIN`: the demo's own fast profile (``vinspect demo``, ``make demo``): small images
  and fewer epochs, so the whole loop runs on a laptop CPU in minutes. Named apart on purpose: it
  is not the training default.
* :data:`EVAL`: the thresholds mAP is measured at (a low ``conf``, as for any mAP computation).
* :data:`GATE`: the quality gate's floors and the allowed regression below the champion.
* :data:`SERVE`: the thresholds detections are served at (model server, processor, the export's
  parity check and the rollout's smoke test compare detections at them).

:func:`override` applies overrides and refuses an unknown key with the closest known one, as
Ultralytics' ``cfg/__init__.py`` does.

This module imports nothing from the project but :mod:`vinspect.errors` and nothing heavy: every
layer (``serving`` included) may import it.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from vinspect.errors import VinspectError

T = TypeVar("T")


class DefaultsError(VinspectError, ValueError):
    """An override names an unknown setting or gives it a value of the wrong type (bad input: exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class TrainDefaults:
    """Training hyper-parameters (``components.model.train_model``).

    Attributes:
        model: Model definition, built offline from its YAML.
        epochs: Training epochs.
        imgsz: Square input size, a multiple of 32 (the YOLO stride).
        batch: Batch size.
        lr0: Initial learning rate.
        optimizer: Ultralytics optimizer name (``auto`` lets Ultralytics choose).
        patience: Epochs without improvement before early stopping.
        seed: Seed for Ultralytics' RNGs.
    """

    model: str = "yolo11n.yaml"
    epochs: int = 50
    imgsz: int = 640
    batch: int = 16
    lr0: float = 0.01
    optimizer: str = "SGD"
    patience: int = 20
    seed: int = 0


@dataclass(frozen=True)
class EvalDefaults:
    """How evaluation measures mAP (``components.model.evaluate_onnx``).

    Attributes:
        conf: Confidence threshold: low, so the precision-recall curve is complete.
        iou: NMS IoU threshold (Ultralytics' ``val`` uses 0.7; pass it to compare like for like).
        split: The dataset split evaluated and gated on.
    """

    conf: float = 0.001
    iou: float = 0.6
    split: str = "val"


@dataclass(frozen=True)
class GateDefaults:
    """The quality gate (``components.model.gate``).

    Attributes:
        min_map50: Floor on the overall mAP50.
        min_map50_95: Floor on the overall mAP50-95.
        min_class_map50: Floor on every class's mAP50 (classes with ground truth in the split).
        max_regression: Largest allowed drop (absolute) below the champion on the same data.
        allow_missing_champion: Gate on the floors only when a champion exists but cannot be
            evaluated (off: a silent fallback would let a worse model replace the champion).
        variant_tolerance: Largest mAP50-95 drop below FP32 a faster precision variant may have.
    """

    min_map50: float = 0.5
    min_map50_95: float = 0.0
    min_class_map50: float = 0.3
    max_regression: float = 0.02
    allow_missing_champion: bool = False
    variant_tolerance: float = 0.01

    def floors(self) -> dict[str, float]:
        """The floors as :func:`components.model.decide_gate` reads them."""
        return {"map50": self.min_map50, "map50_95": self.min_map50_95, "per_class_map50": self.min_class_map50}


@dataclass(frozen=True)
class ServeDefaults:
    """Serving thresholds.

    Attributes:
        conf: Confidence threshold of the detector core (``serving.detector``), as the model server,
            the export's parity check and the rollout's smoke test use it.
        iou: NMS IoU threshold of the detector core.
        imgsz: Input size assumed for a model that declares none (no metadata, dynamic input);
            every model vinspect exports records its own.
        inspect_conf: Confidence threshold of the image processor's inspection on the line (the
            original demo's), which the drift reference is computed at too.
        inspect_iou: NMS IoU threshold of the inspection.
    """

    conf: float = 0.25
    iou: float = 0.45
    imgsz: int = 320
    inspect_conf: float = 0.2
    inspect_iou: float = 0.4


TRAIN = TrainDefaults()
DEMO_TRAIN = TrainDefaults(epochs=40, imgsz=256)
EVAL = EvalDefaults()
GATE = GateDefaults()
SERVE = ServeDefaults()


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def override(defaults: T, overrides: Mapping[str, Any] | None = None, /, **kwargs: Any) -> T:
    """A copy of ``defaults`` with some settings changed, every key and type checked.

    Args:
        defaults: One of :data:`TRAIN`, :data:`EVAL`, :data:`GATE`, :data:`SERVE` (any of the
            dataclasses here).
        overrides: ``{setting: value}``; ``None`` values are skipped (an option not given).
        **kwargs: More overrides, as keywords.

    Returns:
        A new frozen instance.

    Raises:
        DefaultsError: An unknown setting (naming the closest known one) or a value of the wrong type.
    """
    values = {**(overrides or {}), **kwargs}
    fields = {f.name: f for f in dataclasses.fields(defaults)}  # type: ignore[arg-type]
    what = type(defaults).__name__
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            raise DefaultsError(
                f"unknown {what} setting {key!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" (known: {', '.join(fields)})"
            )
        kind = type(getattr(defaults, key))
        if not _fits(value, kind):
            raise DefaultsError(f"{what} setting {key}={value!r}: expected {kind.__name__}")
        changes[key] = float(value) if kind is float else value
    return dataclasses.replace(defaults, **changes)  # type: ignore[type-var]
