"""A tiny YOLO-shaped ONNX model built with the ``onnx`` helper API (no training).

Input ``images`` ``[1,3,64,64]`` float32, output ``output0`` ``[1,6,N]`` (xywh + scores for
``scratch``, ``bent``), like an Ultralytics export for two classes. The output is a constant
(plus ``0 * sum(images)`` so the input is really consumed): it "detects" whatever the test asks,
which lets a smoke test pass or fail on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMGSZ = 64
NUM_ANCHORS = 8
NAMES = {"0": "scratch", "1": "bent"}


def build_tiny_onnx(
    path: Path,
    detections: Sequence[tuple[int, float, float, float, float, float]] = (),
    *,
    tag: str = "",
) -> Path:
    """Write the tiny model.

    Args:
        path: Output file.
        detections: ``(class_id, score, cx, cy, w, h)`` in 64x64 input pixels, one per anchor.
        tag: Stored in the metadata so two models with the same detections differ by sha256.

    Returns:
        ``path``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    const = np.zeros((1, 4 + len(NAMES), NUM_ANCHORS), dtype=np.float32)
    for i, (cls, score, cx, cy, w, h) in enumerate(detections):
        const[0, :4, i] = (cx, cy, w, h)
        const[0, 4 + cls, i] = score
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["base", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + len(NAMES), NUM_ANCHORS])],
        initializer=[
            numpy_helper.from_array(const, "base"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="vinspect-tests")
    model.ir_version = 8
    for key, value in {
        "names": json.dumps(NAMES),
        "imgsz": json.dumps([IMGSZ, IMGSZ]),
        "stride": "32",
        "dataset_id": "tiny",
        "tag": tag,
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# One "bent" box in the middle of the image: what a good model finds on a bent nut.
BENT_IN_THE_MIDDLE = [(1, 0.9, 32.0, 32.0, 20.0, 20.0)]
