"""The notebooks run, top to bottom, against the real local stack and the project's own code.

What each notebook needs is prepared here, small: a synthetic dataset imported by
``components.data``; two real training runs (YOLO11n, 64 px, 2 epochs) exported to ONNX,
evaluated and registered in the local MLflow + S3 by ``components.model`` and
``components.registry``; and the local KServe v2 model server serving the registered version
from S3. Endpoints reach the notebook kernels through the same environment variables the
settings read. Any cell error fails the test; each notebook's last cell prints a JSON summary
that is checked against what the test prepared.

The committed notebooks themselves must carry no outputs (checked without running anything).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nbformat
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = {"01_dataset_exploration.ipynb", "02_training_and_runs.ipynb", "03_inference_over_rest.ipynb"}
CELL_TIMEOUT_S = 120
IMGSZ = 64
EPOCHS = 2  # two points per training curve; one epoch would draw a single dot


# --------------------------------------------------------------------------------------------
# Committed state
# --------------------------------------------------------------------------------------------


def test_expected_notebooks_are_present():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}, f"missing notebooks in {NOTEBOOKS_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel is not python3"
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; strip them before committing"
    assert any("summary" in c.metadata.get("tags", []) for c in nb.cells), f"{path.name}: no summary cell"


# --------------------------------------------------------------------------------------------
# Running notebooks
# --------------------------------------------------------------------------------------------


def _kernel_manager():
    """A kernel manager for the ``python3`` kernel of *this* interpreter (the project's venv).

    Only the venv's own kernelspec folder is searched, so a user-level ``python3`` kernelspec
    pointing at another interpreter can never be picked up. The spec is installed there with
    ipykernel if it is missing.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kernels = Path(sys.prefix) / "share" / "jupyter" / "kernels"
    if not (kernels / "python3" / "kernel.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--sys-prefix"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    spec_manager = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=spec_manager)


def run_notebook(name: str, monkeypatch, env: dict[str, str]) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` in a fresh kernel with ``env`` set; fail on any cell error."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=CELL_TIMEOUT_S,
        # Jupyter starts a kernel in the notebook's folder; so do we (for `import _support`).
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    try:
        # The kernel manager is ours, so nbclient would leave the kernel running: ask it to stop it.
        client.execute(cleanup_kc=True)
    except CellExecutionError as exc:
        pytest.fail(f"{name} failed:\n{exc}", pytrace=False)
    return nb


def summary_of(nb: nbformat.NotebookNode) -> dict:
    """The JSON object printed by the notebook's cell tagged ``summary``."""
    cell = next(c for c in nb.cells if "summary" in c.metadata.get("tags", []))
    text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
    return json.loads(text.strip().splitlines()[-1])


def images_shown(nb: nbformat.NotebookNode) -> int:
    """How many images (PNG or JPEG) the executed notebook displayed."""
    return sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") in ("display_data", "execute_result")
        and ({"image/png", "image/jpeg"} & set(o.get("data", {})))
    )


# --------------------------------------------------------------------------------------------
# What the notebooks need
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset imported by ``components.data`` (CVAT YOLO 1.1 -> dataset)."""
    from components.data import import_dataset, synthesize

    root = tmp_path_factory.mktemp("nb-data")
    synthesize(root / "export", n=16, seed=0, size=128)
    import_dataset(root / "export", root / "dataset", val=0.25, seed=0)
    return root / "dataset"


# Runs in a child process: torch and Ultralytics stay out of the test process, and the steps run
# with the stack's environment exactly as a pipeline pod would get it.
_TRAIN_AND_REGISTER = r"""
import json, sys
from pathlib import Path
from vinspect.yolo_env import prepare_ultralytics
work, dataset, imgsz, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prepare_ultralytics(work / "ultralytics")
from components.data.manifest import read_manifest
from components.model.evaluate import evaluate_onnx
from components.model.export import export_onnx
from components.model.train import train_model
from components.registry import register_model
from vinspect.settings import MLflowSettings, S3Settings

manifest = read_manifest(dataset)
ml, s3 = MLflowSettings.from_env(), S3Settings.from_env()
registered = []
for i, lr0 in enumerate((0.01, 0.02), start=1):
    result = train_model(dataset / "data.yaml", work / f"runs{i}", epochs=epochs, imgsz=imgsz, batch=8,
                         lr0=lr0, seed=i, device="cpu", workers=0)
    onnx_path = export_onnx(result.best_weights, work / f"model{i}.onnx", imgsz=imgsz,
                            dataset_id=manifest.dataset_id)
    metrics = evaluate_onnx(onnx_path, dataset)
    info = register_model(
        ml.client(), s3.client(), onnx_path=onnx_path, model_name=ml.model_name, bucket=s3.bucket,
        params=result.params, metrics={k: metrics[k] for k in ("map50", "map50_95", "precision", "recall")},
        epoch_metrics_csv=result.results_csv, plots=result.plots[:2], dataset_id=manifest.dataset_id,
        dataset_uri=str(dataset), git_revision=None, pipeline_run_id=f"notebook-test-{i}",
        experiment=ml.experiment,
    )
    registered.append({**info.to_dict(), "onnx": str(onnx_path)})
print(json.dumps(registered))
"""


@pytest.fixture(scope="module")
def stack_env(local_stack) -> dict[str, str]:
    """The local stack's client environment, with an experiment and model name of our own."""
    return {
        **local_stack.env,
        "VINSPECT_HOME": str(local_stack.config.state),
        "VINSPECT_EXPERIMENT": "notebook-tests",
        "VINSPECT_MODEL_NAME": "nb-metal-nut",
        # The model server needs a token for its repository API; the notebook sends it too.
        "VINSPECT_MODEL_TOKEN": local_stack.env.get("VINSPECT_MODEL_TOKEN") or "notebook-test-model-token",
    }


@pytest.fixture(scope="module")
def registered(stack_env, dataset, tmp_path_factory) -> list[dict]:
    """Two tiny trained models, exported, evaluated and registered (MLflow + S3)."""
    work = tmp_path_factory.mktemp("nb-train")
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN_AND_REGISTER, str(work), str(dataset), str(IMGSZ), str(EPOCHS)],
        cwd=work,
        env={**os.environ, **stack_env},
        capture_output=True,
        text=True,
        timeout=420,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"training/registering failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_server(stack_env, registered, tmp_path_factory):
    """The local v2 model server serving the newest registered version from S3; stopped after."""
    tmp_path = tmp_path_factory.mktemp("nb-modelserver")
    port = free_port()
    newest = registered[-1]
    log = open(tmp_path / "modelserver.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vinspect",
            "serve",
            "model",
            "--uri",
            newest["storage_uri"],
            "--name",
            newest["name"],
            "--version",
            newest["version"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "1",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env={**os.environ, **stack_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"model server exited with {proc.returncode}:\n{(tmp_path / 'modelserver.log').read_text()[-3000:]}"
                )
            try:
                auth = {"Authorization": f"Bearer {stack_env['VINSPECT_MODEL_TOKEN']}"}
                if httpx.get(f"{url}/v2/models/{newest['name']}/ready", timeout=2, headers=auth).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"model server at {url} not ready in 60 s:\n{(tmp_path / 'modelserver.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        # Load the version through the repository extension, as the rollout step does: the
        # server then reports the MLflow version (a start-up load alone reports the OVMS
        # folder name under the storage URI, "1").
        from serving.model_client import ModelClient

        with ModelClient(url, newest["name"], token=stack_env["VINSPECT_MODEL_TOKEN"]) as client:
            client.load(newest["storage_uri"], newest["version"])
        yield {"url": url, **newest}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


# --------------------------------------------------------------------------------------------
# The notebooks
# --------------------------------------------------------------------------------------------


def test_01_dataset_exploration(dataset, monkeypatch):
    from components.data.manifest import read_manifest

    manifest = read_manifest(dataset)
    nb = run_notebook("01_dataset_exploration.ipynb", monkeypatch, {"VINSPECT_DATASET_DIR": str(dataset)})
    summary = summary_of(nb)
    assert summary["dataset_dir"] == str(dataset.resolve())
    assert summary["dataset_id"] == manifest.dataset_id
    assert summary["boxes"] == manifest.counts["boxes"]["total"]
    assert summary["boxes_measured"] == sum(manifest.counts["boxes"]["total"].values())
    assert summary["samples_drawn"], "no sample image drawn"
    assert images_shown(nb) >= 3  # class counts, box sizes, samples


def test_01_dataset_exploration_synthesizes_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("VINSPECT_DATASET_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's temporary dataset lands here
    nb = run_notebook("01_dataset_exploration.ipynb", monkeypatch, {"VINSPECT_SYNTH_N": "8"})
    summary = summary_of(nb)
    assert Path(summary["dataset_dir"]).is_relative_to(tmp_path)
    assert summary["images"] == 8
    assert sum(summary["boxes"].values()) == summary["boxes_measured"] > 0


def test_02_training_and_runs(stack_env, registered, monkeypatch, tmp_path):
    nb = run_notebook("02_training_and_runs.ipynb", monkeypatch, {**stack_env, "VINSPECT_NOTEBOOK_OUT": str(tmp_path)})
    summary = summary_of(nb)
    assert summary["tracking_uri"] == stack_env["MLFLOW_TRACKING_URI"]
    assert {r["run_id"] for r in registered} <= set(summary["runs"])
    assert {r["version"] for r in registered} <= set(summary["versions"])
    assert summary["curve_run"] == registered[-1]["run_id"]  # the newest run by default
    assert summary["curve_epochs"] == list(range(1, EPOCHS + 1))
    assert {"train/box_loss", "metrics/mAP50-95B"} <= set(summary["curve_metrics"])
    assert Path(summary["plot"]) == tmp_path / "runs_compare.png" and Path(summary["plot"]).stat().st_size > 0
    assert images_shown(nb) >= 2  # training curves, comparison plot


def test_03_inference_over_rest(stack_env, model_server, dataset, monkeypatch):
    import numpy as np

    from serving.detector import Detector, decode, preprocess
    from serving.images import decode_image

    image = sorted((dataset / "images" / "val").iterdir())[0]
    # The same ONNX file run locally through the same detector core is the reference.
    local = Detector(model_server["onnx"], iou=0.45)
    tensor, _ = preprocess(decode_image(image.read_bytes()), local.imgsz)
    _, scores, _ = decode(local.infer(tensor), len(local.names))
    # A barely trained model scores low: pick a threshold that keeps a handful of candidates,
    # so there are detections to compare and to draw.
    local.conf = float(np.sort(scores)[-5]) * 0.999
    expected = [d.to_dict() for d in local.detect(image.read_bytes())]
    assert expected, "reference produced no detections; the comparison would be empty"

    nb = run_notebook(
        "03_inference_over_rest.ipynb",
        monkeypatch,
        {
            **stack_env,
            "VINSPECT_MODEL_URL": model_server["url"],
            "VINSPECT_SAMPLE_IMAGE": str(image),
            "VINSPECT_CONF": repr(local.conf),
        },
    )
    summary = summary_of(nb)
    assert summary["model"] == model_server["name"]
    assert summary["model_version"] == model_server["version"]
    assert summary["output_shape"] == [1, 6, sum((IMGSZ // s) ** 2 for s in (8, 16, 32))]
    # Served over v2 with binary tensors = run locally: same boxes, same scores, same order.
    remote = summary["detections"]
    assert [d["class_id"] for d in remote] == [d["class_id"] for d in expected]
    for got, want in zip(remote, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["box"] == pytest.approx(want["box"], abs=1e-3)
    assert images_shown(nb) >= 1  # the annotated image


def test_03_inference_over_rest_sends_a_camera_frame_by_default(stack_env, model_server, monkeypatch):
    monkeypatch.delenv("VINSPECT_SAMPLE_IMAGE", raising=False)
    nb = run_notebook(
        "03_inference_over_rest.ipynb",
        monkeypatch,
        {**stack_env, "VINSPECT_MODEL_URL": model_server["url"], "VINSPECT_CONF": "0.25"},
    )
    summary = summary_of(nb)
    assert summary["image"].startswith("synthetic_") and summary["image"].endswith(".jpg")
    assert summary["model_version"] == model_server["version"]
    assert all(d["score"] > 0.25 for d in summary["detections"])
