"""Feedback-loop code that calls the real model (issue 15): pre-annotation through the v2 server,
and the drift reference through the detector core, on the tiny exported YOLO model."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from cvat_server import FakeCVAT  # noqa: E402


def _jpegs(n: int) -> list[bytes]:
    from components.data.synth import render_nut

    out = []
    for i in range(n):
        img, _ = render_nut(np.random.default_rng([21, i]), 96, "both")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def test_champion_predictor_matches_the_detector_core_and_preannotates_cvat(model_server, onnx_model, tmp_path):
    from components.data.cvat_pull import make_client
    from components.data.cvat_setup import champion_predictor, setup
    from serving.detector import Detector
    from serving.model_client import ModelClient

    frames = _jpegs(3)
    for i, data in enumerate(frames):
        (tmp_path / f"frame_{i}.jpg").write_bytes(data)
    # An untrained model scores low: a low threshold gives boxes to compare.
    predict = champion_predictor(ModelClient(model_server.url, "metal-nut", retries=0), conf=1e-5, iou=0.4)
    local = Detector(str(onnx_model), conf=1e-5, iou=0.4, names=["scratch", "bent"])
    for data in frames:
        remote = predict(data)
        here = [d.to_dict() for d in local.detect(data)]
        assert [(d["class_name"], round(d["score"], 4)) for d in remote] == [
            (d["class_name"], round(d["score"], 4)) for d in here
        ]
        assert np.allclose([d["box"] for d in remote], [d["box"] for d in here], atol=0.5) if here else remote == []
    cvat = FakeCVAT()
    cvat.polls_before_finish = 0
    cvat.start()
    try:
        with make_client(cvat.url, token=cvat.pat) as client:
            report = setup(client, images=tmp_path, task_name="champion", predict=predict, min_score=0.0, poll=0.01)
        expected = sum(len(predict(d)) for d in frames)
        assert expected > 0, "the comparison above needs boxes"
        assert report.boxes == expected
        assert sum(len(f.boxes) for f in cvat.tasks[report.task_id].frames) == expected
    finally:
        cvat.stop()


def test_drift_reference_of_a_dataset_through_the_detector_core(onnx_model, tmp_path):
    from components.data import import_dataset, synthesize
    from serving.drift import DriftMonitor, compute_reference_for_dataset

    export = synthesize(tmp_path / "export", 16, seed=2, size=96)
    import_dataset(export, tmp_path / "ds", val=0.5, seed=0)
    ref = compute_reference_for_dataset(onnx_model, tmp_path / "ds", conf=0.01, model={"name": "metal-nut"})
    assert ref["n_images"] == 8
    assert ref["signals"]["detections_per_image"]["n"] == 8
    assert 0.0 < ref["signals"]["brightness"]["sample"][0] < 1.0
    DriftMonitor(ref)  # a reference the comparator accepts
