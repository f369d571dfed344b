"""Drift: per-image signals, the reference, PSI and KS with known distributions, storage."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest

from serving.drift import (
    PSI_ALERT,
    DriftError,
    DriftMonitor,
    compute_reference,
    compute_reference_for_dataset,
    image_stats,
    ks_statistic,
    load_reference,
    load_served_reference,
    psi,
    publish_served_reference,
    reference_key,
    save_reference,
    served_reference_etag,
    served_reference_key,
    write_reference,
)


def _stats(brightness: float) -> dict:
    return {"brightness": brightness, "contrast": 0.2, "sharpness": 0.01}


def _samples(rng, n, mean_conf, brightness=0.5, per_image=(1, 2)):
    out = []
    for _ in range(n):
        k = int(rng.integers(per_image[0], per_image[1] + 1))
        dets = [
            {"class_name": ("scratch", "bent")[i % 2], "score": float(np.clip(rng.normal(mean_conf, 0.08), 0, 1))}
            for i in range(k)
        ]
        out.append((_stats(float(rng.normal(brightness, 0.03))), dets))
    return out


@pytest.fixture(scope="module")
def reference():
    return compute_reference(_samples(np.random.default_rng(1), 2000, 0.6), model={"name": "m", "version": "3"})


def test_ks_and_psi_with_exact_values():
    assert ks_statistic([1, 2, 3], [4, 5, 6]) == 1.0
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    # Two bins split at 0.5, reference half and half, live all in the low bin.
    expected = (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi([0.5, 0.5], [0.1, 0.2, 0.3], [0.5]) == pytest.approx(expected)
    assert psi([0.5, 0.5], [0.1, 0.9], [0.5]) == pytest.approx(0.0)
    assert psi([0.5, 0.5], [0.5, 0.6], [0.5]) == pytest.approx(0.0)  # a value on an edge falls below it


def test_identical_distribution_scores_near_zero(reference):
    mon = DriftMonitor(reference, window=500, min_samples=50)
    for image, dets in _samples(np.random.default_rng(2), 400, 0.6):
        mon.observe("cam-1", dets, image)
    scores = mon.scores("cam-1")
    assert set(scores) == {
        "confidence/scratch",
        "confidence/bent",
        "detections_per_image",
        "brightness",
        "contrast",
        "sharpness",
    }
    for name, s in scores.items():
        assert s["psi"] < 0.1, (name, s)
        assert s["ks"] < 0.12, (name, s)
    assert mon.drifting("cam-1") == []


def test_shifted_confidence_and_brightness_score_above_threshold(reference):
    mon = DriftMonitor(reference, min_samples=50)
    for image, dets in _samples(np.random.default_rng(3), 400, 0.35, brightness=0.3, per_image=(2, 4)):
        mon.observe("cam-2", dets, image)
    scores = mon.scores("cam-2")
    for name in ("confidence/scratch", "confidence/bent", "brightness", "detections_per_image"):
        assert scores[name]["psi"] > PSI_ALERT, (name, scores[name])
        assert scores[name]["ks"] > 0.5, (name, scores[name])
    assert scores["contrast"]["psi"] < 0.1  # unchanged signal stays quiet
    assert {"confidence/scratch", "brightness"} <= set(mon.drifting("cam-2"))


def test_cameras_are_scored_apart_and_need_min_samples(reference):
    mon = DriftMonitor(reference, min_samples=50)
    for image, dets in _samples(np.random.default_rng(4), 10, 0.2):
        mon.observe("cam-3", dets, image)
    assert mon.scores("cam-3") == {} and mon.scores("nobody") == {}
    assert mon.cameras() == ["cam-3"]


def test_image_stats_on_known_images():
    flat = np.full((64, 64, 3), 128, np.uint8)
    s = image_stats(flat)
    assert s["brightness"] == pytest.approx(128 / 255, abs=1e-3) and s["contrast"] == 0 and s["sharpness"] == 0
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    sharp = image_stats(np.stack([checker] * 3, -1))
    blurred = image_stats(np.stack([np.full((64, 64), 127, np.uint8)] * 3, -1))
    assert sharp["sharpness"] > 1.0 > blurred["sharpness"]
    assert sharp["contrast"] == pytest.approx(0.5, abs=1e-3)
    # A large image is reduced to at most 256 px a side first: a 1024 px flat image reads the same.
    assert image_stats(np.full((1024, 768, 3), 128, np.uint8)) == s


def test_image_stats_from_jpeg_bytes():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 200, 200)).save(buf, format="JPEG")
    assert image_stats(buf.getvalue())["brightness"] == pytest.approx(200 / 255, abs=0.02)


def test_reference_document_shape(reference):
    assert reference["schema"] == "vinspect.drift-reference/v1" and reference["n_images"] == 2000
    sig = reference["signals"]["confidence/scratch"]
    assert len(sig["proportions"]) == len(sig["edges"]) + 1 and abs(sum(sig["proportions"]) - 1) < 1e-4
    assert len(sig["sample"]) == 2000  # sub-sampled from ~3000 scores
    counts = reference["signals"]["detections_per_image"]
    assert counts["edges"] == [1.0, 2.0]  # a discrete signal keeps its values as bins
    with pytest.raises(DriftError, match="no images"):
        compute_reference([])


def test_reference_is_stored_next_to_the_model_version(reference, local_stack):
    s3, bucket = local_stack.s3, local_stack.env["AWS_S3_BUCKET"]
    name = f"drift-{uuid.uuid4().hex[:6]}"
    uri = save_reference(s3, bucket, name, 7, reference)
    assert (
        uri == f"s3://{bucket}/{name}/7/drift-reference.json"
        and reference_key(name, 7) == f"{name}/7/drift-reference.json"
    )
    assert load_reference(s3, bucket, name, 7)["signals"].keys() == reference["signals"].keys()
    with pytest.raises(DriftError, match=f"no drift reference for {name} version 8"):
        load_reference(s3, bucket, name, 8)
    s3.put_object(Bucket=bucket, Key=reference_key(name, 9), Body=b'{"schema": "other"}')
    with pytest.raises(DriftError, match="not a drift reference"):
        load_reference(s3, bucket, name, 9)


def test_the_served_versions_reference_is_published_under_one_key(reference, local_stack):
    # KServe/OVMS answer as version 1 for every rollout: the rollout copies the served version's
    # reference to <model>/serving/, with the registry version inside, and the processor reads that.
    s3, bucket = local_stack.s3, local_stack.env["AWS_S3_BUCKET"]
    name = f"served-{uuid.uuid4().hex[:6]}"
    assert served_reference_etag(s3, bucket, name) is None
    with pytest.raises(DriftError, match=f"no served drift reference for {name}"):
        load_served_reference(s3, bucket, name)
    save_reference(s3, bucket, name, 7, dict(reference, model={"name": name, "version": "7"}))
    save_reference(s3, bucket, name, 8, dict(reference, model={"name": name}, n_images=99))
    assert publish_served_reference(s3, bucket, name, 7) == f"s3://{bucket}/{name}/serving/drift-reference.json"
    assert served_reference_key(name) == f"{name}/serving/drift-reference.json"
    ref7, etag7 = load_served_reference(s3, bucket, name)
    assert ref7["model"]["version"] == "7" and etag7 and served_reference_etag(s3, bucket, name) == etag7
    assert ref7["signals"] == load_reference(s3, bucket, name, 7)["signals"]
    # The next version: its own reference, its registry version written in, a new ETag.
    publish_served_reference(s3, bucket, name, 8)
    ref8, etag8 = load_served_reference(s3, bucket, name)
    assert ref8["model"] == {"name": name, "version": "8"} and ref8["n_images"] == 99 and etag8 != etag7
    # A version without a reference takes the old one away (no comparison with the wrong model).
    assert publish_served_reference(s3, bucket, name, 9) is None
    assert served_reference_etag(s3, bucket, name) is None
    # A malformed one is named, and leaves no served reference either.
    publish_served_reference(s3, bucket, name, 7)
    s3.put_object(Bucket=bucket, Key=reference_key(name, 10), Body=b"{not json")
    with pytest.raises(DriftError, match=f"{name}/10/drift-reference.json: not JSON"):
        publish_served_reference(s3, bucket, name, 10)
    assert served_reference_etag(s3, bucket, name) is None


def test_reference_for_a_dataset_split(tmp_path, reference):
    from components.data import import_dataset, synthesize

    export = synthesize(tmp_path / "export", 12, seed=3, size=64)
    import_dataset(export, tmp_path / "ds", val=0.25, seed=0)

    class FixedDetector:  # stands in for the ONNX session: what matters here is which images are read
        def __init__(self, path, conf, iou, names):
            self.args = (path, conf, iou, names)

        def detect(self, rgb):
            from serving.detector import Detection

            return [Detection(0, "scratch", 0.7, np.array([1.0, 1.0, 5.0, 5.0]))]

    ref = compute_reference_for_dataset(
        "model.onnx", tmp_path / "ds", detector_factory=FixedDetector, model={"name": "m"}
    )
    val = [it for it in json.loads((tmp_path / "ds" / "manifest.json").read_text())["items"] if it["split"] == "val"]
    assert ref["n_images"] == len(val) == 3
    assert ref["signals"]["confidence/scratch"]["sample"] == [0.7] * 3
    path = write_reference(ref, tmp_path / "drift-reference.json")
    assert json.loads(path.read_text())["model"] == {"name": "m"}


def test_reference_from_a_dataset_without_item_list_reads_the_split_folder(tmp_path):
    """A dataset in the minimal CONTRACTS.md layout (files, no items) still gets a reference."""
    import json

    from PIL import Image

    from serving.drift import DriftError, compute_reference_for_dataset

    class _NoDetections:
        def __init__(self, *_a, **_k):
            pass

        def detect(self, _rgb):
            return []

    for i in range(3):
        path = tmp_path / "images" / "val" / f"nut{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (80 + 20 * i, 90, 90)).save(path)
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["scratch", "bent"], "files": {}}))
    ref = compute_reference_for_dataset("unused.onnx", tmp_path, detector_factory=_NoDetections)
    assert ref["n_images"] == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"classes": ["scratch", "bent"], "files": {}}))
    with pytest.raises(DriftError, match="no images for the drift reference"):
        compute_reference_for_dataset("unused.onnx", empty, detector_factory=_NoDetections)
