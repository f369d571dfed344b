"""Render the kustomize overlays under ``infra/manifests`` into Kubernetes objects.

Rendering goes through ``kubectl kustomize`` (the kustomize built into kubectl), so what is
validated and applied here is byte for byte what ``oc apply -k`` would send.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from vinspect.errors import VinspectError

MANIFESTS_DIR = Path(__file__).resolve().parent / "manifests"
OVERLAYS_DIR = MANIFESTS_DIR / "overlays"
DEFAULT_OVERLAY = "default"


class RenderError(VinspectError, RuntimeError):
    """An overlay could not be rendered (unknown overlay, kustomize error, bad YAML).

    (Not the rollout's :class:`components.rollout.render.ServingSpecError`, which is about one
    InferenceService's arguments.)
    """


def list_overlays(overlays_dir: Path = OVERLAYS_DIR) -> list[str]:
    """Names of the overlays that can be rendered, sorted.

    Args:
        overlays_dir: Folder holding one sub-folder per overlay.

    Returns:
        Overlay names (sub-folders that contain a ``kustomization.yaml``).
    """
    if not overlays_dir.is_dir():
        return []
    return sorted(p.name for p in overlays_dir.iterdir() if (p / "kustomization.yaml").is_file())


def overlay_path(name: str, overlays_dir: Path = OVERLAYS_DIR) -> Path:
    """Folder of the overlay ``name``.

    Raises:
        RenderError: The overlay does not exist; the message lists the ones that do.
    """
    path = overlays_dir / name
    if not (path / "kustomization.yaml").is_file():
        known = ", ".join(list_overlays(overlays_dir)) or "none"
        raise RenderError(f"unknown overlay {name!r} (no {path}/kustomization.yaml); known overlays: {known}")
    return path


def _kubectl() -> str:
    found = shutil.which("kubectl") or shutil.which("oc")
    if not found:
        raise RenderError(
            "neither kubectl nor oc is on PATH; install kubectl (it carries kustomize) to render manifests"
        )
    return found


def render_yaml(path: Path) -> str:
    """Run ``kubectl kustomize`` on a kustomization folder and return its YAML stream.

    Args:
        path: A folder with a ``kustomization.yaml`` (an overlay or a base).

    Raises:
        RenderError: kustomize failed; its error output is in the message.
    """
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def parse_objects(text: str, source: str = "<stream>") -> list[dict[str, Any]]:
    """Parse a multi-document YAML stream into objects, skipping empty documents.

    Raises:
        RenderError: A document is not a mapping with ``apiVersion``, ``kind`` and ``metadata.name``.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    objects = []
    for index, doc in enumerate(yaml.load_all(text, Loader=loader)):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            raise RenderError(f"{source}: document {index} is not a Kubernetes object (needs apiVersion and kind)")
        if not (doc.get("metadata") or {}).get("name"):
            raise RenderError(f"{source}: document {index} ({doc['kind']}) has no metadata.name")
        objects.append(doc)
    return objects


def render(overlay: str = DEFAULT_OVERLAY, overlays_dir: Path = OVERLAYS_DIR) -> list[dict[str, Any]]:
    """Render one overlay into a list of Kubernetes objects.

    Args:
        overlay: Overlay name (a folder under ``infra/manifests/overlays``).
        overlays_dir: Where the overlays live (tests point this elsewhere).

    Returns:
        The objects in the order kustomize emits them.
    """
    path = overlay_path(overlay, overlays_dir)
    return parse_objects(render_yaml(path), source=f"overlay {overlay}")


def dump_objects(objects: list[dict[str, Any]]) -> str:
    """Serialise objects back into one YAML stream (``---`` separated)."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def object_ref(obj: dict[str, Any]) -> str:
    """Human name of an object: ``Kind namespace/name`` (or ``Kind name`` when cluster-scoped)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "<unnamed>")
    namespace = meta.get("namespace")
    return f"{obj.get('kind', '<no kind>')} {namespace + '/' if namespace else ''}{name}"
