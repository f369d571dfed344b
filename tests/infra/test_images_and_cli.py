"""Containerfiles and BuildConfigs agree with the repository; the `vinspect infra` commands work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "infra" / "images"
SERVING_IMAGES = {"processor": "processor", "camera": "camera", "dashboard": "dashboard", "modelserver": "model"}
TRAIN_ONLY = ("torch", "ultralytics", "mlflow", "kfp", "onnxslim", "cvat")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


@pytest.mark.parametrize("image", sorted(SERVING_IMAGES))
def test_serving_images_install_only_the_serving_extra(image):
    steps = _instructions(IMAGES / f"{image}.Containerfile")
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert re.search(r'pip install "/tmp/src\[serving\]"', runs)
    assert "[train]" not in runs and not any(dep in runs for dep in TRAIN_ONLY)
    entry = [args for word, args in steps if word == "ENTRYPOINT"]
    # The model server binds loopback unless told otherwise; its image must say 0.0.0.0.
    host = ', "--host=0.0.0.0"' if image == "modelserver" else ""
    assert entry == [f'["vinspect", "serve", "{SERVING_IMAGES[image]}"{host}]']
    assert not any("pip" in args for word, args in steps if word in ("ENTRYPOINT", "CMD"))
    assert ("USER", "1001") in steps


def test_pipeline_image_installs_the_train_extra_and_stays_offline():
    steps = _instructions(IMAGES / "pipeline.Containerfile")
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert 'pip install "/tmp/src[train]"' in runs
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "YOLO_OFFLINE=1" in env and "YOLO_AUTOINSTALL=false" in env
    assert "prepare_ultralytics" in runs
    assert not any("pip" in args for word, args in steps if word in ("ENTRYPOINT", "CMD"))


@pytest.mark.parametrize("path", sorted(IMAGES.glob("*.Containerfile")), ids=lambda p: p.stem)
def test_containerfiles_copy_what_exists(path):
    for word, args in _instructions(path):
        if word == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{path.name} copies {source}, which is not in the repository"


def test_buildconfigs_point_at_existing_containerfiles():
    docs = yaml.safe_load_all((REPO / "infra/manifests/base/builds/buildconfigs.yaml").read_text())
    names = set()
    for bc in docs:
        dockerfile = bc["spec"]["strategy"]["dockerStrategy"]["dockerfilePath"]
        assert (REPO / dockerfile).is_file(), dockerfile
        names.add(Path(dockerfile).stem)
    assert names == {p.stem for p in IMAGES.glob("*.Containerfile")}


def test_serving_commands_start_without_the_train_dependencies():
    """What the serving images run imports nothing from .[train] (blocked here to prove it)."""
    script = r"""
import importlib, importlib.abc, sys
BLOCK = {"torch", "torchvision", "ultralytics", "mlflow", "kfp", "onnx", "onnxslim", "cvat_sdk", "matplotlib"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"{name} is not in .[serving]", name=name)
for name in [m for m in sys.modules if m.split(".")[0] in BLOCK]:
    del sys.modules[name]
sys.meta_path.insert(0, Block())
for module in ("serving.processor", "serving.model_client", "serving.camera", "serving.dashboard.app",
               "serving.modelserver", "vinspect.settings", "vinspect.cli"):
    importlib.import_module(module)
from typer.testing import CliRunner
from vinspect.cli import app
for command in ("processor", "camera", "dashboard", "model"):
    result = CliRunner().invoke(app, ["serve", command, "--help"])
    assert result.exit_code == 0, (command, result.output, result.exception)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


@pytest.fixture()
def cli() -> Callable[[list[str]], Result]:
    """Runs ``vinspect infra ARGS`` through the real entry point, whose root group reports a VinspectError."""
    from vinspect.cli import app

    return lambda args: CliRunner().invoke(app, ["infra", *args])


def test_cli_render_prints_the_overlay(cli, kubectl):
    result = cli(["render", "--overlay", "sno"])
    assert result.exit_code == 0, result.output
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert any(o["kind"] == "KafkaNodePool" and o["spec"]["replicas"] == 1 for o in objects)


def test_cli_validate_passes_every_overlay(cli, kubectl, store):
    result = cli(["validate"])
    assert result.exit_code == 0, result.output
    for overlay in ("default", "gpu", "sno"):
        assert re.search(rf"overlay {overlay}: \d+ objects valid", result.stdout)


def test_cli_validate_without_schemas_says_where_to_put_them(cli, kubectl, tmp_path, monkeypatch):
    monkeypatch.setenv("VINSPECT_SHARED_DIR", str(tmp_path))
    result = cli(["validate"])
    assert result.exit_code == 1
    assert "CRD schemas folder not found" in result.output and "VINSPECT_SHARED_DIR" in result.output


def test_cli_bootstrap_dry_run_prints_the_plan(cli, kubectl, store):
    result = cli(["bootstrap", "--dry-run", "--overlay", "gpu"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("phase 1/20: namespaces") < out.index("phase 2/20: operators") < out.index("phase 10/20: triggers")
    assert (
        out.index("phase 10/20: triggers")
        < out.index("phase 15/20: cvat: services")
        < out.index("phase 20/20: gpu: services")
    )
    assert "generate Secret vinspect/minio-root" in out and "build    BuildConfig vinspect/vinspect-pipeline" in out
    assert "ClusterPolicy gpu-cluster-policy  -> wait: CRD clusterpolicies.nvidia.com Established; state ready" in out


def test_cli_bootstrap_dry_run_works_without_the_schemas(cli, kubectl, tmp_path, monkeypatch):
    monkeypatch.setenv("VINSPECT_SHARED_DIR", str(tmp_path))
    result = cli(["bootstrap", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "warning: not validated offline" in result.output and "phase 1/15: namespaces" in result.output
