"""The loop's runtime modules stay lean: the processor image has no torch, Ultralytics, MLflow or KFP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CHECK = r"""
import sys
import serving.review, serving.drift, serving.metrics, serving.notify
from serving.review import ReviewSelector
from serving.drift import DriftMonitor, compute_reference
from serving.metrics import InspectionMetrics
from serving.notify import Notifier
ReviewSelector().select({"camera": "c", "detections": [{"class_name": "scratch", "score": 0.3}]}, b"x")
DriftMonitor(compute_reference([({"brightness": 0.5, "contrast": 0.1, "sharpness": 0.01}, [])])).scores("c")
InspectionMetrics().render()
Notifier(None).promoted("m", 1)
heavy = sorted(m for m in ("torch", "ultralytics", "torchvision", "mlflow", "kfp", "cvat_sdk") if m in sys.modules)
print(",".join(heavy))
"""


def test_loop_runtime_modules_import_nothing_heavy():
    proc = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
