"""Bring an existing ONNX detector into the registry (``vinspect model register --onnx FILE``).

The original demo shipped a trained YOLOv5m as ONNX (``[1, 3, 640, 640]`` in, ``[1, 25200, 7]``
out: ``cx, cy, w, h, objectness`` and two class probabilities). Such a file did not come out of
our pipeline, so before it is registered it is checked the way it will be served: ONNX Runtime
runs it once on a blank image at its input size, the output must decode in one of the layouts of
the detector core (YOLOv8/11 ``[1, 4+nc, N]`` or YOLOv5 ``[1, N, 5+nc]``) for the given class
names, and the names and input size are written into the file's metadata so every consumer
(evaluation, the processor's detector, a notebook) reads them from the model itself.
Optionally it is evaluated on a dataset and put through the quality gate first.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.registry.core import RegistryError, sha256_file
from components.registry.register import register_model
from vinspect.defaults import GATE

log = logging.getLogger(__name__)


def inspect_onnx(path: Path, names: Sequence[str] | None = None, imgsz: int | None = None) -> dict[str, Any]:
    """Check that an ONNX file is a detector the serving path can use, and describe it.

    Args:
        path: The ONNX file.
        names: Class names in id order; default: the file's ``names`` metadata.
        imgsz: Input size for a model whose input is dynamic; default: its static input size,
            else its ``imgsz`` metadata.

    Returns:
        ``{"names", "imgsz": (h, w), "layout": "v5" | "v8", "input", "output", "output_shape",
        "metadata"}``.

    Raises:
        RegistryError: Naming the file and what is wrong (unreadable, not one image input and
            one output, no class names, an output that matches no YOLO layout).
    """
    import numpy as np
    import onnxruntime as ort

    from serving import detector as det

    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: no such ONNX file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise RegistryError(f"{path}: not a loadable ONNX model: {exc}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise RegistryError(
            f"{path}: expected one image input and one output, got inputs {[i.name for i in inputs]} "
            f"and outputs {[o.name for o in outputs]}"
        )
    inp, out = inputs[0], outputs[0]
    if inp.type != "tensor(float)" or len(inp.shape) != 4:
        raise RegistryError(f"{path}: input {inp.name!r} is {inp.type} {inp.shape}; expected float [1, 3, H, W]")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    parsed = det.parse_metadata(meta)
    class_names = [str(n).strip() for n in names] if names else parsed["names"]
    if not class_names:
        raise RegistryError(
            f"{path}: the model's metadata has no class names; pass them in id order, e.g. --names scratch,bent"
        )
    if len(set(class_names)) != len(class_names) or not all(class_names):
        raise RegistryError(f"{path}: class names must be distinct and non-empty, got {class_names}")
    if names and parsed["names"] and list(parsed["names"]) != class_names:
        log.warning("%s: --names %s replace the metadata's %s", path, class_names, parsed["names"])
    h, w = inp.shape[2], inp.shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        size = (h, w)
        if imgsz is not None and (imgsz, imgsz) != size:
            raise RegistryError(f"{path}: input {inp.name!r} is fixed at {h}x{w}; --imgsz {imgsz} does not fit")
    elif imgsz is not None:
        size = (int(imgsz), int(imgsz))
    elif parsed["imgsz"]:
        size = parsed["imgsz"]
    else:
        raise RegistryError(f"{path}: input {inp.name!r} has a dynamic size and no imgsz metadata; pass --imgsz")
    try:
        raw = session.run([out.name], {inp.name: np.zeros((1, 3, *size), dtype=np.float32)})[0]
    except Exception as exc:  # noqa: BLE001 - ORT's runtime errors are the model's problem
        raise RegistryError(f"{path}: running the model on a blank {size[0]}x{size[1]} image failed: {exc}") from None
    arr = np.asarray(raw)
    try:
        if arr.ndim != 3 or arr.shape[0] != 1:
            raise ValueError(f"output shape {list(arr.shape)} is not [1, a, b]")
        layout = det._layout(arr.shape[1:], len(class_names))
        det.decode(arr, len(class_names))
    except ValueError as exc:
        raise RegistryError(
            f"{path}: output {out.name!r} {list(arr.shape)} does not fit {len(class_names)} class(es) "
            f"{class_names}: {exc}"
        ) from None
    return {
        "names": class_names,
        "imgsz": tuple(int(v) for v in size),
        "layout": layout,
        "input": inp.name,
        "output": out.name,
        "output_shape": list(arr.shape),
        "metadata": meta,
    }


def _with_metadata(src: Path, dest: Path, names: list[str], imgsz: tuple[int, int], extra: dict[str, str]) -> Path:
    """Copy the ONNX with ``names`` / ``imgsz`` (and ``extra``) in its metadata, as ours carry them."""
    import onnx

    model = onnx.load(str(src))
    values = {
        "names": json.dumps({str(i): n for i, n in enumerate(names)}),
        "imgsz": json.dumps(list(imgsz)),
        **extra,
    }
    from components.model.export import set_metadata

    set_metadata(model, values)
    onnx.save(model, str(dest))
    return dest


def import_onnx(
    mlflow_client,
    s3_client,
    *,
    onnx_path: Path,
    model_name: str,
    bucket: str,
    names: Sequence[str] | None = None,
    imgsz: int | None = None,
    data: Path | None = None,
    floors: dict | None = None,
    gate: bool = False,
    max_regression: float = GATE.max_regression,
    experiment: str = "vinspect",
) -> dict[str, Any]:
    """Check, optionally evaluate and gate, and register an existing ONNX detector.

    Args:
        mlflow_client: ``MlflowClient``.
        s3_client: boto3 S3 client.
        onnx_path: The ONNX file (e.g. the original demo's ``manu-vi-best-yolov5m.onnx``).
        model_name: Registered model name.
        bucket: Models bucket.
        names: Class names in id order (default: the file's metadata).
        imgsz: Input size for a dynamic-input model.
        data: A vinspect dataset folder: evaluate the model on its validation split and record
            the metrics (and its dataset id) with the version.
        floors: Gate floors (``map50``, ``per_class_map50``, ...); implies ``gate``.
        gate: Apply the quality gate (:func:`components.model.gate_model`, the pipeline's: floors,
            and non-regression against the current champion's figures recorded on the same
            dataset) and refuse to register a rejected model. Needs ``data``.
        max_regression: Allowed drop below the champion.
        experiment: MLflow experiment of the import run.

    Returns:
        :func:`register_model`'s result plus ``names``, ``imgsz``, ``layout``, ``metrics`` and
        ``gate`` (None when not applied).

    Raises:
        RegistryError: The file is not a servable detector, or the gate rejected it.
    """
    onnx_path = Path(onnx_path)
    gate = gate or floors is not None
    if gate and data is None:
        raise RegistryError("the quality gate needs a dataset to evaluate on: pass --data DIR")
    info = inspect_onnx(onnx_path, names, imgsz)
    original_sha = sha256_file(onnx_path)
    with tempfile.TemporaryDirectory(prefix="vinspect-onnx-import-") as tmp:
        prepared = _with_metadata(
            onnx_path,
            Path(tmp) / "model.onnx",
            info["names"],
            info["imgsz"],
            {"vinspect.imported_from": onnx_path.name, "vinspect.source_sha256": original_sha},
        )
        metrics: dict[str, Any] = {}
        dataset_id = ""
        decision = None
        if data is not None:
            from components.model import EvalMetrics, evaluate_onnx, gate_model

            result = evaluate_onnx(prepared, Path(data), split="val")
            dataset_id = str(result.get("eval_dataset_id") or "")
            metrics = _flat_metrics(result)
            if gate:
                decision = gate_model(
                    EvalMetrics.from_dict(result),
                    floors=floors,
                    champion=_recorded_champion(mlflow_client, model_name, dataset_id) if dataset_id else None,
                    max_regression=max_regression,
                ).decision
                if not decision.passed:
                    raise RegistryError(
                        f"{onnx_path}: the quality gate rejected the model: {'; '.join(decision.reasons)}"
                    )
        registered = register_model(
            mlflow_client,
            s3_client,
            onnx_path=prepared,
            model_name=model_name,
            bucket=bucket,
            params={
                "source": "onnx-import",
                "onnx_file": onnx_path.name,
                "layout": info["layout"],
                "imgsz": info["imgsz"][0],
                "names": ",".join(info["names"]),
            },
            metrics=metrics,
            epoch_metrics_csv=None,
            plots=[],
            dataset_id=dataset_id,
            dataset_uri=str(Path(data).resolve()) if data is not None else None,
            git_revision=None,
            # One import run per source file: importing the same file again returns its version.
            pipeline_run_id=f"onnx-import-{original_sha[:16]}",
            experiment=experiment,
        )
    return {
        **registered.to_dict(),
        "names": info["names"],
        "imgsz": list(info["imgsz"]),
        "layout": info["layout"],
        "output_shape": info["output_shape"],
        "metrics": metrics,
        "gate": decision.to_dict() if decision is not None else None,
    }


def _recorded_champion(mlflow_client, model_name: str, dataset_id: str):
    """The champion's figures recorded when it was registered on this same dataset, for the gate.

    Returns:
        A :class:`components.model.champion.ChampionMetrics` (source ``recorded``), or None when
        there is no champion or its figures were measured on other data: an import then gates on
        the floors only (it does not re-evaluate the champion, as the pipeline's evaluate step does).
    """
    from components.model.champion import RECORDED, ChampionMetrics
    from components.registry.queries import champion_metrics, get_champion

    recorded = champion_metrics(mlflow_client, model_name, dataset_id)
    if recorded is None:
        return None
    version = get_champion(mlflow_client, model_name) or ""
    return ChampionMetrics(version, dataset_id, RECORDED, {**recorded, "eval_dataset_id": dataset_id})


def _flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The evaluation's figures as the pipeline's evaluate step records them (what the gate compares)."""
    from serving.detector import CORE_VERSION

    flat = {k: float(result[k]) for k in ("map50", "map50_95", "precision", "recall") if result.get(k) is not None}
    for name, per in (result.get("per_class") or {}).items():
        for key in ("map50", "map50_95", "precision", "recall"):
            if per.get(key) is not None:
                flat[f"{name}_{key}"] = float(per[key])
    flat["eval_conf"], flat["eval_iou"] = float(result["conf"]), float(result["iou"])
    flat["eval_core"] = float(CORE_VERSION)
    return flat
