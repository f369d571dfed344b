"""The runtime runs without torch or Ultralytics (small images, lean processes)."""

from __future__ import annotations

import subprocess

from .conftest import PYTHON, REPO

_CHECK = r"""
import sys
{imports}
heavy = sorted(m for m in ("torch", "ultralytics", "torchvision", "mlflow", "kfp") if m in sys.modules)
print(",".join(heavy))
"""


def _heavy_after(imports: str) -> str:
    proc = subprocess.run(
        [PYTHON, "-c", _CHECK.format(imports=imports)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_runtime_modules_do_not_import_torch_or_ultralytics():
    imports = """
import serving.v2, serving.events, serving.detector, serving.model_client
import serving.modelserver, serving.processor, serving.camera, serving.dashboard.app
from serving.modelserver import ModelRepository, create_app
from serving.processor import ProcessorMetrics, create_http_app, Inspector
from serving.model_client import ModelClient
from serving.dashboard.app import create_app as dashboard_app
create_app(ModelRepository())
m = ProcessorMetrics()
create_http_app(Inspector(ModelClient("http://127.0.0.1:1", "m")), m)
dashboard_app()
import onnxruntime, confluent_kafka, fastapi, uvicorn
"""
    assert _heavy_after(imports) == ""


def test_the_serve_cli_does_not_import_torch_or_ultralytics():
    # `vinspect serve ...` loads every part's CLI module; none may pull torch in at import.
    assert _heavy_after("import vinspect.cli, vinspect.cli.serve") == ""
