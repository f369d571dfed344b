"""Every image the cluster is asked to run exists: built here, or pinned to a published one.

The rule, checked over rendered overlays and the compiled training pipeline:

- an image in the internal registry (``image-registry.openshift-image-registry.svc:5000/<ns>/<stream>:<tag>``)
  in one of our namespaces must be built by a ``BuildConfig`` of the same overlay in ``<ns>``
  whose output is the ``ImageStreamTag`` ``<stream>:<tag>``, and ``ImageStream`` ``<stream>``
  must be there too (OpenShift resolves the pull through it);
- any other image must be listed in ``infra/images.yaml`` (``upstream``: published images;
  ``platform``: image streams OpenShift AI keeps), pinned by digest or by a release tag,
  never ``latest``, ``stable`` or no tag at all;
- an image listed there that nothing references is an error (the list stays true).

The list lives in one file so that upgrading an upstream image is one edit, reviewed in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from infra.render import object_ref

IMAGES_FILE = Path(__file__).resolve().parent / "images.yaml"
INTERNAL_REGISTRY = "image-registry.openshift-image-registry.svc:5000"
# Tags that move: an image by one of these names is not the image that was reviewed.
FLOATING_TAGS = {"", "latest", "stable", "main", "master", "nightly", "dev"}
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    """One image reference: where it is (object and field path) and the image."""

    where: str
    path: str
    image: str


def load_allowed(path: Path = IMAGES_FILE) -> dict[str, set[str]]:
    """The listed images: ``{"upstream": {...}, "platform": {...}}``.

    Raises:
        ValueError: The file is malformed; the message names the file and the entry.
    """
    data = yaml.safe_load(path.read_text()) or {}
    out: dict[str, set[str]] = {"upstream": set(), "platform": set()}
    for section in out:
        for index, entry in enumerate(data.get(section) or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                raise ValueError(f"{path}: {section}[{index}] needs an `image:` string")
            out[section].add(entry["image"])
    unknown = set(data) - set(out)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; use upstream or platform")
    return out


def split_image(image: str) -> tuple[str, str, str]:
    """``(repository, tag, digest)`` of an image reference (tag or digest may be empty)."""
    digest = ""
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, ""
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    return name, tag, digest


def is_pinned(image: str) -> bool:
    """Pinned by a digest, or by a tag that does not move."""
    _, tag, digest = split_image(image)
    if digest:
        return bool(_DIGEST.search("@" + digest))
    return tag not in FLOATING_TAGS


def _walk(value: Any, path: list[str]) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "image" and isinstance(item, str):
                yield ".".join(path + [key]), item
            else:
                yield from _walk(item, path + [str(key)])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, path[:-1] + [f"{path[-1]}[{index}]"] if path else [f"[{index}]"])


def manifest_images(objects: Iterable[dict[str, Any]]) -> list[ImageRef]:
    """Every ``image:`` field in the objects' specs (containers, init containers, runtimes...)."""
    refs = []
    for obj in objects:
        if obj["kind"] in ("ImageStream", "BuildConfig"):
            continue  # they define images, they do not run one
        for path, image in _walk(obj.get("spec") or {}, ["spec"]):
            refs.append(ImageRef(object_ref(obj), path, image))
    return refs


def pipeline_images(compiled_docs: list[dict[str, Any]]) -> list[ImageRef]:
    """The container image of every executor of a compiled KFP pipeline (IR YAML documents)."""
    refs = []
    spec = compiled_docs[0]
    for name, executor in (spec.get("deploymentSpec") or {}).get("executors", {}).items():
        image = (executor.get("container") or {}).get("image")
        if image:
            refs.append(ImageRef(f"pipeline executor {name}", "container.image", image))
    return refs


def built_in_cluster(objects: Iterable[dict[str, Any]]) -> set[str]:
    """Internal-registry references of the images the overlay's BuildConfigs produce."""
    objects = list(objects)
    streams = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects if o["kind"] == "ImageStream"}
    built = set()
    for bc in objects:
        if bc["kind"] != "BuildConfig":
            continue
        to = ((bc.get("spec") or {}).get("output") or {}).get("to") or {}
        if to.get("kind") != "ImageStreamTag":
            continue
        namespace = to.get("namespace") or bc["metadata"].get("namespace")
        stream, _, tag = to["name"].partition(":")
        if (namespace, stream) in streams:
            built.add(f"{INTERNAL_REGISTRY}/{namespace}/{stream}:{tag or 'latest'}")
    return built


def check_images(
    refs: Iterable[ImageRef],
    objects: Iterable[dict[str, Any]],
    allowed: dict[str, set[str]] | None = None,
    *,
    require_all_used: bool = True,
) -> list[str]:
    """Problems with ``refs`` under the rule above; empty when every image is accounted for.

    Args:
        refs: The image references to check.
        objects: The rendered overlay (for its BuildConfigs and ImageStreams).
        allowed: The listed images (default: :func:`load_allowed`).
        require_all_used: Also report listed images that no reference uses.
    """
    refs = list(refs)
    allowed = allowed if allowed is not None else load_allowed()
    built = built_in_cluster(objects)
    listed = allowed["upstream"] | allowed["platform"]
    problems = []
    for ref in refs:
        where = f"{ref.where} at {ref.path}: image {ref.image!r}"
        if ref.image in built:
            continue
        if ref.image in listed:
            if not is_pinned(ref.image):
                problems.append(
                    f"{where} is listed in {IMAGES_FILE.name} but not pinned (use a digest or a release tag)"
                )
            continue
        if ref.image.startswith(INTERNAL_REGISTRY + "/"):
            problems.append(
                f"{where} is in the internal registry, but no BuildConfig of this overlay builds it "
                f"(and it is not a platform image listed in {IMAGES_FILE.name})"
            )
        else:
            problems.append(f"{where} is neither built in the cluster nor listed in {IMAGES_FILE.name}")
    if require_all_used:
        used = {ref.image for ref in refs}
        for image in sorted(listed - used):
            problems.append(f"{IMAGES_FILE.name} lists {image!r}, which nothing references any more")
    return problems
