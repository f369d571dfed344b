"""The detector core against hand-computed boxes, both YOLO layouts, and a real ONNX session."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving import detector as det
from serving.images import decode_bgr, decode_image

REPO = Path(__file__).resolve().parents[2]

# A 700 (h) x 500 (w) image into 320x320: r = 320/700, content 229 x 320, dw = 91 -> left 45, right 46.
H, W, S = 700, 500, 320
R = S / H


def test_letterbox_geometry_hand_computed():
    img = np.full((H, W, 3), 7, np.uint8)
    out, info = det.letterbox(img, S)
    assert out.shape == (S, S, 3)
    assert info.ratio == pytest.approx(R)
    assert info.pad == (45, 0)
    assert info.orig_shape == (H, W) and info.new_shape == (S, S)
    assert (out[:, :45] == 114).all() and (out[:, 45 + 229 :] == 114).all()
    assert (out[:, 45 : 45 + 229] == 7).all()


def test_letterbox_auto_pads_to_the_stride_and_checks_alignment():
    out, info = det.letterbox(np.zeros((H, W, 3), np.uint8), S, stride=32, auto=True)
    # dw = 91 % 32 = 27 -> 13 left, 14 right: 229 + 27 = 256, a multiple of 32.
    assert out.shape == (S, 256, 3) and info.pad == (13, 0)
    with pytest.raises(ValueError, match="multiple of the model stride"):
        det.letterbox(np.zeros((10, 10, 3), np.uint8), 100)


def test_preprocess_keeps_rgb_order_and_scales_to_unit_range():
    img = np.zeros((64, 32, 3), np.uint8)
    img[..., 0] = 255  # pure red
    tensor, info = det.preprocess(img, 64)
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, 64, 64)
    left = info.pad[0]
    content = tensor[0, :, :, left : left + 32]
    assert np.allclose(content[0], 1.0) and np.allclose(content[1:], 0.0)  # R plane is channel 0
    assert np.allclose(tensor[0, :, :, :left], 114 / 255)


def test_preprocess_equals_letterbox_then_scale():
    rng = np.random.default_rng(0)
    for h, w in [(700, 500), (333, 517), (64, 64)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tensor, info = det.preprocess(img, 320)
        boxed, ref_info = det.letterbox(img, 320)
        assert info == ref_info
        np.testing.assert_allclose(tensor[0], boxed.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_jpeg_fast_path_matches_the_full_decode():
    """Detector.prepare(bytes) decodes JPEG at a reduced DCT scale; geometry must be identical."""
    yy, xx = np.mgrid[0:700, 0:500]
    img = np.stack([(xx * 255 // 500), (yy * 255 // 700), np.full_like(xx, 90)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    d = det.Detector(None, imgsz=320)
    fast, info_fast = d.prepare(buf.getvalue())
    full, info_full = d.prepare(decode_image(buf.getvalue()))
    assert info_fast == info_full and info_fast.orig_shape == (700, 500)
    assert np.abs(fast - full).mean() < 2 / 255  # smooth image: only resampling noise differs


def test_every_input_form_gives_rgb_planes():
    """Bytes and BGRImage go through OpenCV's BGR; the tensor is RGB all the same."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[..., 0] = 255  # pure red
    img[:8, :, 2] = 200  # a blue stripe on top
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    d = det.Detector(None, imgsz=64)
    reference, ref_info = d.prepare(img)
    # r = 1, content 64 x 48 with 8 rows of padding on top: R everywhere, B only in the stripe.
    assert np.allclose(reference[0, 0, 8:56], 1.0) and np.allclose(reference[0, 1, 8:56], 0.0)
    assert np.allclose(reference[0, 2, 8:16], 200 / 255) and np.allclose(reference[0, 2, 16:56], 0.0)
    for form in (png.getvalue(), decode_bgr(png.getvalue()), Image.fromarray(img)):
        tensor, info = d.prepare(form)
        assert info == ref_info, type(form)
        np.testing.assert_array_equal(tensor, reference)
    assert decode_bgr(png.getvalue()).rgb().tolist() == img.tolist()


def test_detect_many_equals_detect_in_input_order():
    """Several images in flight; each result still belongs to its own image, in order."""

    class Brightness(det.Detector):
        # One box whose x follows the image's mean brightness: results tell images apart.
        def infer(self, tensor):
            out = np.zeros((1, 6, 4), np.float32)
            out[0, :4, 0] = [float(tensor.mean()) * 60, 32, 4, 4]
            out[0, 4, 0] = 0.9
            return out

    d = Brightness(None, imgsz=64, names=("scratch", "bent"))
    images = [np.full((40, 40, 3), v, np.uint8) for v in range(0, 250, 10)]
    expected = [d.detect(img) for img in images]
    assert len({dets[0].box for dets in expected}) == len(images)
    assert list(d.detect_many(iter(images), workers=3)) == expected
    assert list(d.detect_many(images, workers=1)) == expected


def test_timings_come_with_each_result_not_with_the_detector():
    """One Detector serves several threads: each call's timings are its own, none kept on it."""
    import threading
    import time

    def infer(tensor):
        if tensor.mean() > 0.5:  # the bright image takes 50 ms; the dark one returns at once
            time.sleep(0.05)
        return np.zeros((1, 6, 4), np.float32)

    d = det.Detector(None, imgsz=64, names=("scratch", "bent"))
    results = {}
    bright = threading.Thread(target=lambda: results.update(bright=d.run(np.full((64, 64, 3), 250, np.uint8), infer)))
    bright.start()
    results["dark"] = d.run(np.zeros((64, 64, 3), np.uint8), infer)
    bright.join(10)
    assert results["bright"].timings["inference"] > results["dark"].timings["inference"]
    assert not hasattr(d, "timings")
    assert results["dark"] == det.DetectionResult([], {"other": 1.0})  # timings do not take part in ==


def test_a_bad_file_is_named(tmp_path):
    bad = tmp_path / "frame-007.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ValueError, match="frame-007.jpg: cannot decode image"):
        list(det.Detector(None, imgsz=64).detect_many([bad], workers=2))


def _v8_output(n: int = 10) -> np.ndarray:
    """[1, 6, N]: box 0 = scratch 0.9 at (160, 160, 100x50); box 1 = bent 0.6 at (60, 80, 20x40)."""
    out = np.zeros((1, 6, n), np.float32)
    out[0, :4, 0] = [160, 160, 100, 50]
    out[0, 4, 0] = 0.9
    out[0, :4, 1] = [60, 80, 20, 40]
    out[0, 5, 1] = 0.6
    out[0, 4:, 2:] = 0.01  # background noise below any sensible threshold
    return out


def test_decode_yolov8_layout_hand_computed():
    boxes, scores, cls = det.decode(_v8_output(), num_classes=2)
    assert boxes.shape == (10, 4)
    np.testing.assert_allclose(boxes[0], [110, 135, 210, 185])
    np.testing.assert_allclose(boxes[1], [50, 60, 70, 100])
    assert scores[:2].tolist() == pytest.approx([0.9, 0.6])
    assert cls[:2].tolist() == [0, 1]


def test_decode_yolov5_layout_multiplies_objectness():
    out = np.zeros((1, 8, 7), np.float32)  # [1, N, 5+nc]
    out[0, 0] = [160, 160, 100, 50, 0.8, 0.9, 0.1]
    out[0, 1] = [60, 80, 20, 40, 0.5, 0.2, 0.6]
    boxes, scores, cls = det.decode(out, num_classes=2)
    np.testing.assert_allclose(boxes[0], [110, 135, 210, 185])
    assert scores[:2].tolist() == pytest.approx([0.72, 0.3])
    assert cls[:2].tolist() == [0, 1]


def test_decode_refuses_a_shape_that_fits_no_layout():
    with pytest.raises(ValueError, match="matches neither"):
        det.decode(np.zeros((1, 9, 100), np.float32), num_classes=2)


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    cls = np.array([0, 0, 1, 0])
    keep = det.nms(boxes, scores, cls, iou_threshold=0.5)
    assert keep.tolist() == [0, 2, 3]  # 1 overlaps 0 (IoU 0.81); 2 is another class
    assert det.nms(boxes, scores, cls, iou_threshold=0.9).tolist() == [0, 1, 2, 3]


def test_postprocess_maps_boxes_back_to_the_original_image():
    info = det.LetterboxInfo(ratio=R, pad=(45, 0), orig_shape=(H, W), new_shape=(S, S))
    dets = det.postprocess(_v8_output(), info, (H, W), conf=0.25, iou=0.45)
    assert [d.class_name for d in dets] == ["scratch", "bent"]
    # (110 - 45) / r, 135 / r, (210 - 45) / r, 185 / r with r = 320 / 700
    np.testing.assert_allclose(dets[0].box, [142.1875, 295.3125, 360.9375, 404.6875], rtol=1e-5)
    # x1 = (50 - 45) / r = 10.9375; y2 = 100 / r = 218.75
    np.testing.assert_allclose(dets[1].box, [10.9375, 131.25, 54.6875, 218.75], rtol=1e-5)
    assert det.postprocess(_v8_output(), info, conf=0.7) == dets[:1]
    d = json.loads(json.dumps(dets[0].to_dict()))
    assert d["class_id"] == 0 and d["class_name"] == "scratch" and len(d["box"]) == 4


def test_boxes_are_clipped_to_the_image():
    out = np.zeros((1, 6, 1), np.float32)
    out[0, :4, 0] = [40, 40, 100, 100]
    out[0, 4, 0] = 0.9
    _, info = det.letterbox(np.zeros((64, 64, 3), np.uint8), 64)
    (d,) = det.postprocess(out, info)
    assert d.box == (0.0, 0.0, 64.0, 64.0)


def test_geometry_matches_ultralytics():
    """Same pad offsets as Ultralytics' LetterBox, same box un-mapping as its scale_boxes.

    scale_boxes gets the real (ratio, pad) as Ultralytics' val passes it: without it, it
    recomputes the pad from the unrounded content width and can be a pixel off the letterbox.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ops

    rng = np.random.default_rng(3)
    for h, w in [(700, 500), (480, 640), (333, 517), (64, 64), (700, 700)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours, info = det.letterbox(img, 320)
        theirs = LetterBox((320, 320), auto=False, stride=32)(image=img)
        # Same resize (cv2.INTER_LINEAR), same padding: the very same pixels as Ultralytics.
        np.testing.assert_array_equal(ours, theirs)
        boxes = np.array([[10.0, 20.0, 200.0, 300.0], [0, 0, 320, 320]], np.float32)
        ratio_pad = ((info.ratio, info.ratio), info.pad)
        expected = ops.scale_boxes((320, 320), torch.tensor(boxes), (h, w), ratio_pad=ratio_pad).numpy()
        np.testing.assert_allclose(det.scale_boxes(boxes, info), expected, atol=1e-3)


def test_parse_metadata_reads_ours_and_ultralytics_formats():
    ours = det.parse_metadata(
        {"names": '{"0": "scratch", "1": "bent"}', "imgsz": "[320, 320]", "stride": "32", "dataset_id": "abc"}
    )
    assert ours == {"names": ["scratch", "bent"], "imgsz": (320, 320), "stride": 32, "dataset_id": "abc"}
    ultra = det.parse_metadata({"names": "{0: 'scratch', 1: 'bent'}", "imgsz": "[640, 480]", "stride": "32"})
    assert ultra["names"] == ["scratch", "bent"] and ultra["imgsz"] == (640, 480)


def _constant_model(path: Path, output: np.ndarray, imgsz: int = 64, metadata: dict | None = None) -> Path:
    """An ONNX graph `images` -> `output0` that returns ``output`` (plus 0 * mean(images))."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[
            numpy_helper.from_array(output.astype(np.float32), "const"),
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_detector_reads_metadata_and_detects_locally_and_remotely(tmp_path):
    pytest.importorskip("onnxruntime")
    out = np.zeros((1, 6, 84), np.float32)
    out[0, :4, 0] = [32, 32, 16, 8]
    out[0, 5, 0] = 0.95
    path = _constant_model(
        tmp_path / "m.onnx",
        out,
        64,
        {"names": '{"0": "scratch", "1": "bent"}', "imgsz": "[64, 64]", "stride": "32", "dataset_id": "d1"},
    )
    d = det.Detector(path, conf=0.2, iou=0.4)
    assert d.names == ["scratch", "bent"] and d.imgsz == (64, 64) and d.stride == 32
    assert d.metadata["dataset_id"] == "d1"
    assert (d.input_name, d.output_name) == ("images", "output0")
    img = np.zeros((128, 256, 3), np.uint8)  # r = 0.25, content 64 x 32, pad top 16
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    result = d.run(buf.getvalue())
    local = result.detections
    assert d.detect(buf.getvalue()) == local
    assert [x.class_name for x in local] == ["bent"]
    # (32 +- 8, 32 +- 4) in the letterbox -> x: (24..40)/0.25, y: (28-16..36-16)/0.25
    np.testing.assert_allclose(local[0].box, [96, 48, 160, 80])
    assert set(result.timings) == {"preprocess", "inference", "postprocess"}
    assert all(ms >= 0 for ms in result.timings.values())
    assert det.Detector(path, threads=1, engine="onnxruntime").session.get_session_options().intra_op_num_threads == 1
    seen = []

    def remote(tensor):
        seen.append(tensor.shape)
        return out

    remote_only = det.Detector(None, conf=0.2, iou=0.4, names=("scratch", "bent"), imgsz=64)
    assert remote_only.run(img, remote).detections == local
    assert seen == [(1, 3, 64, 64)]
    with pytest.raises(RuntimeError, match="no local model"):
        det.Detector(None, imgsz=64).detect(img)
    with pytest.raises(FileNotFoundError):
        det.Detector(tmp_path / "missing.onnx")


def test_module_imports_only_numpy_and_pillow():
    code = (
        "import sys, serving.detector\n"
        "bad = [m for m in ('torch', 'ultralytics', 'onnxruntime', 'cv2') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --------------------------------------------------------------------------------------------
# Engines: backend selection, IR loading, declared precision
# --------------------------------------------------------------------------------------------

_META = {"names": '{"0": "scratch", "1": "bent"}', "imgsz": "[64, 64]", "stride": "32", "dataset_id": "d1"}


def _bent_output() -> np.ndarray:
    out = np.zeros((1, 6, 84), np.float32)
    out[0, :4, 0] = [32, 32, 16, 8]
    out[0, 5, 0] = 0.95
    return out


def test_engine_selection_setting_default_and_errors(monkeypatch):
    monkeypatch.delenv(det.ENGINE_ENV, raising=False)
    monkeypatch.delenv(det.PRECISION_ENV, raising=False)
    pytest.importorskip("openvino")
    assert det.resolve_engine() == "openvino"  # the default where it is installed
    monkeypatch.setenv(det.ENGINE_ENV, "onnxruntime")
    assert det.resolve_engine() == "onnxruntime"
    assert det.resolve_engine("ov") == "openvino"  # an argument beats the setting
    with pytest.raises(ValueError, match="did you mean 'openvino'"):
        det.resolve_engine("openvno")
    monkeypatch.delenv(det.ENGINE_ENV)
    monkeypatch.setattr(det, "openvino_available", lambda: False)
    assert det.resolve_engine() == "onnxruntime"  # the fallback where OpenVINO is absent
    with pytest.raises(ValueError, match="not installed"):
        det.resolve_engine("openvino")
    monkeypatch.setenv(det.PRECISION_ENV, "FP32")
    assert det.resolve_precision() == "f32"
    with pytest.raises(ValueError, match="did you mean 'bf16'"):
        det.resolve_precision("bf61")


def test_both_engines_give_the_same_detections_through_one_core(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv(det.ENGINE_ENV, raising=False)
    path = _constant_model(tmp_path / "m.onnx", _bent_output(), 64, _META)
    img = np.zeros((128, 256, 3), np.uint8)
    default = det.Detector(path, conf=0.2, iou=0.4)
    ort = det.Detector(path, conf=0.2, iou=0.4, engine="onnxruntime")
    assert default.engine.backend == "openvino" and ort.engine.backend == "onnxruntime"
    assert ort.engine.label == "onnxruntime f32"
    assert default.engine.precision in ("f32", "bf16")  # the runtime's choice on this CPU
    assert default.names == ort.names == ["scratch", "bent"] and default.metadata["dataset_id"] == "d1"
    assert default.detect(img) == ort.detect(img)
    np.testing.assert_allclose(det.Detector(path, threads=1).detect(img)[0].box, [96, 48, 160, 80])
    with pytest.raises(ValueError, match="runs the model's own precision"):
        det.Detector(path, engine="onnxruntime", precision="bf16")


def test_ir_loads_with_metadata_and_its_declared_precision(tmp_path):
    ov = pytest.importorskip("openvino")
    path = _constant_model(tmp_path / "m.onnx", _bent_output(), 64, _META)
    model = ov.Core().read_model(str(path))
    model.set_rt_info("f32", list(det.PRECISION_RT_KEY))
    ov.save_model(model, str(tmp_path / "ir" / "model.xml"), compress_to_fp16=False)
    d = det.Detector(tmp_path / "ir" / "model.xml", conf=0.2, iou=0.4)
    assert d.engine.backend == "openvino" and d.engine.precision == "f32"  # declared, not the CPU's default
    assert d.names == ["scratch", "bent"] and d.imgsz == (64, 64) and d.metadata["dataset_id"] == "d1"
    assert [x.class_name for x in d.detect(np.zeros((64, 64, 3), np.uint8))] == ["bent"]
    assert det.Detector(tmp_path / "ir" / "model.xml", precision="auto").engine.precision == (
        det.open_engine(path, engine="openvino").precision
    )  # "auto" overrides the declaration
    with pytest.raises(ValueError, match="needs engine 'openvino'"):
        det.open_engine(tmp_path / "ir" / "model.xml", engine="onnxruntime")
    (tmp_path / "ir" / "model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file model.bin"):
        det.Detector(tmp_path / "ir" / "model.xml")
