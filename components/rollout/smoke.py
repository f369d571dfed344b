"""Smoke test of a served model over the v2 protocol with golden images.

The pre- and post-processing are the detector core's (``serving.detector``), the wire format is
``serving.v2`` with binary tensors, so a model is checked exactly the way the image processor
will call it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vinspect.errors import VinspectError


class SmokeTestError(VinspectError, RuntimeError):
    """The served model did not answer, or did not find what the golden images show."""


@dataclass(frozen=True)
class GoldenImage:
    """An image and the classes a working model must find in it.

    Attributes:
        path: Image file (JPEG or PNG).
        expected: Class names that must each be detected at least once.
    """

    path: Path
    expected: frozenset[str] = field(default_factory=frozenset)


def load_golden(spec: Path) -> list[GoldenImage]:
    """Read golden images from a JSON file ``{"<image path>": ["bent", ...], ...}``.

    Relative image paths are resolved next to the JSON file.

    Raises:
        SmokeTestError: When the file is malformed or an image is missing (named).
    """
    spec = Path(spec)
    try:
        raw = json.loads(spec.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SmokeTestError(f"golden image list {spec}: {exc}") from None
    if not isinstance(raw, dict):
        raise SmokeTestError(f"golden image list {spec}: expected an object image -> [class names]")
    out = []
    for name, classes in raw.items():
        path = (spec.parent / name).resolve()
        if not path.is_file():
            raise SmokeTestError(f"golden image list {spec}: image {name!r} not found at {path}")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise SmokeTestError(f"golden image list {spec}: {name!r} must map to a list of class names")
        out.append(GoldenImage(path, frozenset(classes)))
    return out


def golden_from_split(
    dataset_dir: Path,
    classes: Sequence[str],
    *,
    per_class: int = 2,
    split: str = "val",
) -> list[GoldenImage]:
    """Golden images from a dataset split: for each class, the first ``per_class`` images with it.

    Images are taken in file-name order (deterministic across runs); an image showing several
    classes counts for each of them and is listed once. Its ``expected`` set is every class its
    label file names. Images and labels are read with the evaluate core's loaders
    (:func:`components.model.evaluate.split_images`, ``label_path``, ``read_labels``).

    Args:
        dataset_dir: Dataset directory (``data.yaml``, ``images/<split>``, ``labels/<split>``).
        classes: Class names by id (the dataset manifest's ``classes``).
        per_class: Images per class (at least 1).
        split: Split to take them from.

    Returns:
        The golden images; empty when no image of the split has a box.

    Raises:
        FileNotFoundError: When the split has no images.
        ValueError: When a label file is malformed (file and line named).
    """
    from components.model.evaluate import label_path, read_labels, split_images

    per_class = max(1, int(per_class))
    wanted = {name: per_class for name in classes}
    chosen: list[GoldenImage] = []
    for image in split_images(Path(dataset_dir), split):
        if not any(wanted.values()):
            break
        # Only the class ids matter here: a unit size keeps read_labels from opening the image.
        _, ids = read_labels(label_path(image), 1, 1, len(classes))
        present = frozenset(classes[i] for i in ids.tolist())
        if any(wanted[name] for name in present):
            chosen.append(GoldenImage(image, present))
            for name in present:
                wanted[name] = max(0, wanted[name] - 1)
    return chosen


SERVICE_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt")


def cluster_tls_verify(service_ca: Path | None = None):
    """TLS verification for in-cluster predictor URLs: the system bundle plus the service CA.

    OpenShift signs ``*.svc`` serving certificates (KServe RawDeployment predictors with auth)
    with its service CA, which it mounts into every pod at ``service_ca``; public routes are
    signed by CAs in the system bundle. Trusting both keeps verification on for either URL.

    Args:
        service_ca: The service-CA bundle (default :data:`SERVICE_CA`); ignored when the file is
            absent (not on OpenShift).

    Returns:
        An ``ssl.SSLContext`` for ``httpx`` (``verify=``); never one that skips verification.
    """
    import ssl

    ctx = ssl.create_default_context()  # system bundle, hostname checks, CERT_REQUIRED
    service_ca = Path(service_ca or SERVICE_CA)
    if service_ca.is_file():
        ctx.load_verify_locations(cafile=str(service_ca))
    return ctx


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def model_metadata(client, base_url: str, model: str, *, token: str | None = None) -> dict:
    """``GET /v2/models/{model}`` as a dict.

    Raises:
        SmokeTestError: On a non-200 answer.
    """
    resp = client.get(f"{base_url.rstrip('/')}/v2/models/{model}", headers=_headers(token))
    if resp.status_code != 200:
        raise SmokeTestError(f"GET /v2/models/{model}: HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def infer_v2(
    client,
    base_url: str,
    model: str,
    tensor: np.ndarray,
    *,
    input_name: str = "images",
    output_name: str = "output0",
    token: str | None = None,
) -> tuple[np.ndarray, str | None]:
    """One v2 inference with binary input and output tensors.

    Args:
        client: ``httpx.Client`` (or anything with the same ``post``).
        base_url: Server root (``http://host:port``).
        model: Model name in ``/v2/models/<model>/infer``.
        tensor: The input tensor.
        input_name: Model input name.
        output_name: Model output name.
        token: Bearer token, when the endpoint requires one.

    Returns:
        (output array, model version the server reported).

    Raises:
        SmokeTestError: On an HTTP error or a response without the output.
    """
    from serving import v2

    body, headers = v2.encode_request({input_name: tensor}, [output_name])
    resp = client.post(
        f"{base_url.rstrip('/')}/v2/models/{model}/infer",
        content=body,
        headers={**headers, **_headers(token)},
    )
    if resp.status_code != 200:
        raise SmokeTestError(f"POST /v2/models/{model}/infer: HTTP {resp.status_code}: {resp.text[:300]}")
    length = resp.headers.get(v2.HEADER_LENGTH)
    try:
        decoded = v2.decode_response(resp.content, int(length) if length is not None else None)
    except (v2.V2ProtocolError, ValueError) as exc:
        raise SmokeTestError(f"model {model}: malformed v2 response: {exc}") from None
    if output_name not in decoded.outputs:
        raise SmokeTestError(f"model {model}: response has no output {output_name!r} (got {sorted(decoded.outputs)})")
    return np.asarray(decoded.outputs[output_name].array), decoded.model_version


def make_v2_smoke(
    golden: Sequence[GoldenImage],
    *,
    client=None,
    token: str | None = None,
    names: Sequence[str] | Mapping[Any, str] | None = None,
    imgsz: int | tuple[int, int] | None = None,
    conf: float = 0.25,
    iou: float = 0.45,
    expect_version: str | None = None,
    timeout_s: float = 30.0,
    verify: Any = True,
    min_classes: int | None = None,
) -> Callable[[str, str], dict]:
    """A smoke test for :func:`components.rollout.roll_out` (either target).

    The returned callable ``smoke(base_url, model) -> report`` reads the model's metadata (input
    shape gives the image size when ``imgsz`` is None), sends each golden image over v2 with
    binary tensors, post-processes with ``serving.detector`` and checks that every expected class
    is found.

    Args:
        golden: Images and their expected classes (at least one).
        client: ``httpx.Client`` to use; one is made (TLS verified) when None.
        token: Bearer token for protected endpoints (OpenShift AI with auth enabled).
        names: Class names; the detector core's defaults (scratch, bent) when None.
        imgsz: Model input size; read from the model metadata when None.
        conf: Score threshold.
        iou: NMS IoU threshold.
        expect_version: When set, the server must report this model version.
        timeout_s: HTTP timeout per request.
        verify: TLS verification (True, a CA bundle path or an ``ssl.SSLContext`` such as
            :func:`cluster_tls_verify`'s); never disabled.
        min_classes: How the expected classes are judged. ``None``: every golden image must show
            each of its expected classes (strict; for curated golden sets). An ``int`` selects the
            per-class rule for golden images taken from a validation split and a model that may
            be weak: a class counts as found when it is detected on at least one golden image that
            expects it, and at least ``min_classes`` of the expected classes must be found
            (a negative value: all of them; more than there are: all of them; ``0``: only that
            the model answers every image with a well-formed output).

    Returns:
        ``smoke(base_url, model)`` returning ``{"images": [...], "latency_ms": ...}`` and raising
        :class:`SmokeTestError` on any failure.
    """
    if not golden:
        raise SmokeTestError("a smoke test needs at least one golden image")
    if verify is False:
        raise ValueError("TLS verification stays on: pass a CA bundle path or SSL context instead of False")
    strict = min_classes is None
    expected_all = sorted(set().union(*(g.expected for g in golden)))
    if strict:
        required = 0
    elif min_classes < 0 or min_classes > len(expected_all):
        required = len(expected_all)
    else:
        required = int(min_classes)

    def smoke(base_url: str, model: str) -> dict:
        import httpx

        from serving import detector
        from serving.images import decode_image

        own = client is None
        http = client or httpx.Client(timeout=timeout_s, verify=verify)
        try:
            meta = model_metadata(http, base_url, model, token=token)
            inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
            # As the image processor does: the first (only) input and the first output, by the
            # names the model declares (`images`/`output0` from Ultralytics, `output` from YOLOv5).
            if (
                len(inputs) != 1
                or not outputs
                or not all(isinstance(t, dict) and t.get("name") for t in inputs + outputs)
            ):
                raise SmokeTestError(
                    f"model {model}: expected one image input and an output, metadata has inputs "
                    f"{[t.get('name') for t in inputs if isinstance(t, dict)]} outputs "
                    f"{[t.get('name') for t in outputs if isinstance(t, dict)]}"
                )
            input_name, output_name = inputs[0]["name"], outputs[0]["name"]
            size = imgsz
            if size is None:
                shape = inputs[0].get("shape") or []
                if len(shape) != 4 or min(shape[2:]) <= 0:
                    raise SmokeTestError(f"model {model}: input shape {shape} is not static; pass imgsz explicitly")
                size = (int(shape[2]), int(shape[3]))
            report = []
            started = time.perf_counter()
            for item in golden:
                img = decode_image(Path(item.path).read_bytes())
                tensor, info = detector.preprocess(img, size)
                output, served_version = infer_v2(
                    http, base_url, model, tensor, token=token, input_name=input_name, output_name=output_name
                )
                if expect_version is not None and served_version is not None and served_version != expect_version:
                    raise SmokeTestError(
                        f"model {model}: server answered with version {served_version}, expected {expect_version}"
                    )
                dets = detector.postprocess(
                    output, info, img.shape[:2], conf=conf, iou=iou, names=names or detector.CLASS_NAMES
                )
                found = {d.class_name for d in dets}
                missing = sorted(item.expected - found)
                report.append(
                    {"image": Path(item.path).name, "expected": sorted(item.expected), "found": sorted(found)}
                )
                if strict and missing:
                    raise SmokeTestError(
                        f"model {model}: golden image {Path(item.path).name}: expected {sorted(item.expected)}, "
                        f"found {sorted(found) or 'nothing'} (conf {conf})"
                    )
            out = {
                "images": report,
                "latency_ms": round(1000 * (time.perf_counter() - started) / len(golden), 2),
            }
            if not strict:
                # A class is found when some image that shows it got it detected (not any image:
                # a box of the right class on the wrong image proves nothing).
                hit = sorted({c for r in report for c in r["expected"] if c in r["found"]})
                out["classes"] = {"expected": expected_all, "found": hit, "required": required}
                if len(hit) < required:
                    per_image = "; ".join(
                        f"{r['image']}: expected {r['expected']}, found {r['found'] or 'nothing'}" for r in report
                    )
                    raise SmokeTestError(
                        f"model {model}: found {len(hit)} of the {len(expected_all)} expected classes "
                        f"{expected_all} on the golden images at conf {conf}, {required} required "
                        f"({per_image})"
                    )
            return out
        except SmokeTestError:
            raise
        except Exception as exc:  # noqa: BLE001 - connection errors, timeouts, undecodable images: all a failed smoke test
            raise SmokeTestError(f"model {model} at {base_url}: {type(exc).__name__}: {exc}") from exc
        finally:
            if own:
                http.close()

    return smoke


def processor_endpoint() -> tuple[str | None, str | None]:
    """The (URL, model name) the image processor calls, as the pipeline maps them into the rollout.

    The pipeline maps ``VINSPECT_MODEL_URL`` and ``VINSPECT_MODEL_NAME`` of the processor's
    ConfigMap (``vinspect-runtime``) into the rollout step as ``VINSPECT_PROCESSOR_MODEL_URL`` and
    ``VINSPECT_PROCESSOR_MODEL_NAME``, so the smoke test calls the model exactly where the
    processor will (on a headless predictor Service that is the pod's port, which
    ``status.address.url`` states but a port-less processor URL misses).

    Returns:
        ``(url or None, model name or None)``.
    """
    import os

    url = (os.environ.get("VINSPECT_PROCESSOR_MODEL_URL") or "").strip() or None
    name = (os.environ.get("VINSPECT_PROCESSOR_MODEL_NAME") or "").strip() or None
    return url, name


def smoke_as(smoke: Callable[[str, str], Any], model: str) -> Callable[[str, str], Any]:
    """``smoke`` run under the processor's model name, whatever the InferenceService is called."""

    def run(url: str, _served_name: str) -> Any:
        return smoke(url, model)

    return run
