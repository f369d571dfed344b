"""Where models come from: reading a model folder (local or S3) as OVMS does, and the model roots.

A source is found the way OpenVINO Model Server finds one in its model repository: a file
(``.onnx``, or an IR ``.xml`` with its ``.bin`` beside it), a folder holding one, or a folder of
numeric version folders (``1/model.onnx``, IR first; the highest version wins); the same under
``s3://bucket/prefix``. :class:`ModelRoots` confines what the repository API may load to named
folders and bucket prefixes, decided from the URI's text before anything is opened.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from serving.modelserver.errors import Forbidden, ModelLoadError


@dataclass
class ModelSource:
    """Where a model came from and its bytes (ONNX, or OpenVINO IR XML plus ``weights``)."""

    uri: str
    location: str  # the exact file read (path or s3 key)
    content: bytes
    version_folder: str | None  # OVMS-style numeric folder the file sat in, if any
    weights: bytes | None = None  # the IR's .bin when `location` is a model.xml

    @property
    def is_ir(self) -> bool:
        """True for an OpenVINO IR (``.xml`` + ``.bin``)."""
        return self.location.endswith(".xml")


def _model_file(names: list[str]) -> str | None:
    """The file OVMS would load from one folder's file names: IR first, then ONNX."""
    for preferred in ("model.xml", "model.onnx"):
        if preferred in names:
            return preferred
    for suffix in (".xml", ".onnx"):
        found = sorted(n for n in names if n.endswith(suffix))
        if found:
            return found[0]
    return None


def _ir_weights(xml: str) -> str:
    return xml[: -len(".xml")] + ".bin"


def _pick_version(candidates: dict[str, str], where: str) -> tuple[str, str]:
    """Pick the highest numeric version folder, as OVMS serves the latest version."""
    numeric = {k: v for k, v in candidates.items() if k.isdigit() and int(k) > 0}
    if not numeric:
        raise ModelLoadError(f"no model.onnx or model.xml and no numeric version folder holding one under {where}")
    best = max(numeric, key=int)
    return best, numeric[best]


def _local_source(uri: str, file: Path, folder: str | None) -> ModelSource:
    if file.suffix == ".xml":
        weights = file.with_suffix(".bin")
        if not weights.is_file():
            raise ModelLoadError(f"OpenVINO IR {file} has no weights file {weights.name} beside it")
        return ModelSource(uri, str(file), file.read_bytes(), folder, weights.read_bytes())
    return ModelSource(uri, str(file), file.read_bytes(), folder)


def _read_local(uri: str) -> ModelSource:
    path = Path(urlparse(uri).path if uri.startswith("file://") else uri)
    if path.is_file():
        return _local_source(uri, path, None)
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} does not exist")
    direct = _model_file([p.name for p in path.iterdir() if p.is_file()])
    if direct:
        return _local_source(uri, path / direct, None)
    candidates = {}
    for sub in path.iterdir():
        chosen = _model_file([p.name for p in sub.iterdir() if p.is_file()]) if sub.is_dir() else None
        if chosen:
            candidates[sub.name] = str(sub / chosen)
    folder, file = _pick_version(candidates, str(path))
    return _local_source(uri, Path(file), folder)


def _read_s3(uri: str, s3_client: Any) -> ModelSource:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise ModelLoadError(f"{uri!r} names no bucket")
    if key.endswith((".onnx", ".xml")):
        chosen, folder = key, None
    else:
        prefix = key.rstrip("/") + "/" if key else ""
        paginator = s3_client.get_paginator("list_objects_v2")
        keys = [
            obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])
        ]
        rel = {k[len(prefix) :]: k for k in keys}
        direct = _model_file([r for r in rel if "/" not in r])
        if direct:
            chosen, folder = rel[direct], None
        else:
            by_folder: dict[str, list[str]] = {}
            for r in rel:
                m = re.fullmatch(r"([^/]+)/([^/]+)", r)
                if m:
                    by_folder.setdefault(m.group(1), []).append(m.group(2))
            candidates = {}
            for sub, names in by_folder.items():
                picked = _model_file(names)
                if picked:
                    candidates[sub] = rel[f"{sub}/{picked}"]
            folder, chosen = _pick_version(candidates, uri)

    def get(key: str) -> bytes:
        try:
            return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        # Must catch everything: botocore's errors are classes made at run time (s3.exceptions.NoSuchKey)
        # and the client is the caller's; any failure to read the object means "cannot load".
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot read s3://{bucket}/{key}: {exc}") from None

    weights = get(_ir_weights(chosen)) if chosen.endswith(".xml") else None
    return ModelSource(uri, f"s3://{bucket}/{chosen}", get(chosen), folder, weights)


def read_model_source(uri: str, s3_client_factory: Callable[[], Any] | None = None) -> ModelSource:
    """Find and read the model a URI points at, as OVMS does.

    Accepts a file (`.onnx`, or an IR `.xml` with its `.bin` beside it), a directory holding
    one, or an OVMS repository directory with numeric version folders (`1/model.onnx` or
    `1/model.xml` + `1/model.bin`, IR first; the latest version is taken); the same for `s3://`.

    Args:
        uri: Local path, `file://` URI or `s3://bucket/prefix`.
        s3_client_factory: Builds a boto3 S3 client; required for `s3://` URIs.

    Raises:
        ModelLoadError: When nothing loadable is found.
    """
    if uri.startswith("s3://"):
        if s3_client_factory is None:
            raise ModelLoadError(f"{uri}: no S3 client configured (set AWS_S3_ENDPOINT etc.)")
        return _read_s3(uri, s3_client_factory())
    return _read_local(uri)


@dataclass(frozen=True)
class ModelRoots:
    """Where the repository API may load models from: local folders and S3 bucket/prefixes.

    A ``load`` names a URI; it is accepted only when it lies under one of these roots, decided
    from the URI's text (local paths with symlinks resolved) before anything is opened, so a
    refusal reads the same whether or not the path exists.

    Args:
        local: Absolute folders (resolved).
        s3: ``(bucket, prefix)`` pairs; an empty prefix allows the whole bucket.
    """

    local: tuple[Path, ...] = ()
    s3: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, roots: list[str] | tuple[str, ...] | None) -> "ModelRoots":
        """Build from strings: ``/models``, ``file:///models`` or ``s3://bucket[/prefix]``.

        Raises:
            ValueError: For a relative path, another scheme or an S3 root without a bucket.
        """
        local: list[Path] = []
        s3: list[tuple[str, str]] = []
        for root in roots or ():
            if root.startswith("s3://"):
                parsed = urlparse(root)
                prefix = parsed.path.strip("/")
                if not parsed.netloc or ".." in prefix.split("/"):
                    raise ValueError(f"model root {root!r}: expected s3://bucket[/prefix]")
                s3.append((parsed.netloc, prefix + "/" if prefix else ""))
                continue
            path = urlparse(root).path if root.startswith("file://") else root
            if "://" in path or not os.path.isabs(path):
                raise ValueError(f"model root {root!r}: expected an absolute folder or s3://bucket[/prefix]")
            local.append(Path(os.path.realpath(path)))
        return cls(tuple(local), tuple(s3))

    def describe(self) -> str:
        """The roots as a human reads them (for error messages)."""
        items = [str(p) for p in self.local] + [f"s3://{b}/{p}" for b, p in self.s3]
        return ", ".join(items) if items else "none configured"

    def check(self, uri: str) -> str:
        """Return ``uri`` if it lies under a root.

        Raises:
            Forbidden: Otherwise, with a message that never depends on what exists outside.
        """
        if uri.startswith("s3://"):
            parsed = urlparse(uri)
            key = parsed.path.lstrip("/")
            parts = key.split("/")
            # S3 keys are literal, but some servers normalise dot segments: refuse them outright.
            if "." not in parts and ".." not in parts:
                for bucket, prefix in self.s3:
                    if parsed.netloc == bucket and (key + "/").startswith(prefix):
                        return uri
        elif "://" not in uri or uri.startswith("file://"):
            raw = urlparse(uri).path if uri.startswith("file://") else uri
            if os.path.isabs(raw):
                resolved = Path(os.path.realpath(raw))
                if any(resolved == root or resolved.is_relative_to(root) for root in self.local):
                    return uri
        raise Forbidden(
            f"load refused: {uri!r} is not under this server's model roots ({self.describe()}); "
            "give the server another root with --model-root"
        )

    def check_file(self, uri: str, location: str) -> None:
        """Check the file a local load picked (a symlink inside a root may point outside it)."""
        if location.startswith("s3://"):
            return
        resolved = Path(os.path.realpath(location))
        if not any(resolved.is_relative_to(root) for root in self.local):
            raise Forbidden(f"load refused: {uri!r} resolves outside this server's model roots")


def s3_client_factory_from_env() -> Callable[[], Any]:
    """Return a factory building the S3 client from `vinspect.settings.S3Settings`."""

    def factory() -> Any:
        from vinspect.settings import S3Settings

        return S3Settings.from_env().client()

    return factory


def default_model_roots(extra: list[str] | None = None) -> list[str]:
    """The roots a server allows loads from when none are given: the models bucket and ``extra``.

    The configured S3 models bucket (``AWS_S3_BUCKET``) is where the registry writes every
    version, so rollouts load from it; local folders must be named (``--model-root``). The
    URIs served at start-up are not added: reloading them needs no root.
    """
    roots = list(extra or [])
    try:
        from vinspect.settings import S3Settings

        bucket = S3Settings.from_env().bucket
    except (
        ValueError,
        OSError,
    ):  # invalid S3 settings (pydantic's ValidationError) or unreadable dotenv: local roots only
        bucket = None
    if bucket:
        roots.append(f"s3://{bucket}")
    return roots
