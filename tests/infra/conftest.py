"""Fixtures for the infra tests: rendered overlays and the schema store (both rendered once)."""

from __future__ import annotations

import shutil

import pytest

from infra.render import list_overlays, render
from infra.validate import SchemasMissingError, default_store


@pytest.fixture(scope="session")
def kubectl() -> str:
    """kubectl (it carries kustomize).

    A missing kubectl fails rather than skips: every manifest test depends on rendering, and a
    silently skipped infra suite would let broken manifests through CI.
    """
    found = shutil.which("kubectl") or shutil.which("oc")
    if not found:
        pytest.fail("kubectl (with kustomize) is not installed: the infra tests need it to render "
                    "the overlays (see docs/infra.md)")
    return found


@pytest.fixture(scope="session")
def store():
    """The schema store over ../shared/schemas/crds; skip with the reason when it is absent."""
    try:
        return default_store()
    except SchemasMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def rendered(kubectl) -> dict[str, list[dict]]:
    """Every overlay rendered once: name -> objects."""
    return {name: render(name) for name in list_overlays()}


def find(objects: list[dict], kind: str, name: str, api_prefix: str | None = None) -> dict:
    """The object of that kind and name (optionally of an apiVersion starting with api_prefix)."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            if api_prefix is None or obj["apiVersion"].startswith(api_prefix):
                return obj
    raise AssertionError(f"no {kind} {name} in the rendered objects")
