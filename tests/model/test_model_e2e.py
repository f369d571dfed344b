"""End to end on synthetic data: train a tiny YOLO, export ONNX, check parity, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trained_model import EPOCHS, IMGSZ, LR0, MIN_MAP50, OPTIMIZER


def test_train_result_points_into_the_trainers_real_save_dir(trained):
    assert trained.device == "cpu"  # no GPU on the test machines: auto-selection fell back to CPU
    assert trained.best_weights.is_file()
    assert trained.best_weights.parent == trained.save_dir / "weights"
    assert trained.results_csv == trained.save_dir / "results.csv"
    assert [int(r["epoch"]) for r in trained.epochs] == list(range(1, EPOCHS + 1))
    assert {"train/box_loss", "metrics/mAP50(B)", "metrics/mAP50-95(B)"} <= set(trained.epochs[0])
    assert set(trained.final_metrics) == {"precision", "recall", "map50", "map50_95"}
    names = {p.name for p in trained.plots}
    assert "results.png" in names and any("confusion_matrix" in n for n in names)
    assert trained.params["imgsz"] == IMGSZ and trained.params["seed"] == 0
    assert trained.params["effective_optimizer"] == OPTIMIZER
    assert trained.params["effective_lr0"] == pytest.approx(LR0)  # lr0 honoured, not overridden
    assert trained.progress_calls[-1] == (EPOCHS, EPOCHS)
    json.dumps(trained.to_dict())  # JSON-ready for the pipeline's Metrics output


def test_second_run_in_same_folder_is_found_not_assumed(trained, dataset, yolo_config):
    """Ultralytics renames the next run (train-2 / train2); the result must follow it, not a fixed path."""
    from components.model import train_model

    again = train_model(dataset / "data.yaml", trained.save_dir.parent, epochs=1, imgsz=IMGSZ, batch=16)
    assert again.save_dir != trained.save_dir
    assert again.save_dir.parent == trained.save_dir.parent
    assert again.save_dir.name.startswith("train") and again.save_dir.name != "train"
    assert again.best_weights.parent == again.save_dir / "weights"
    assert again.best_weights.is_file()


def test_train_rejects_missing_data_and_bad_weights(tmp_path, dataset):
    from components.model import train_model
    from components.model.train import resolve_weights

    with pytest.raises(FileNotFoundError, match="data.yaml"):
        train_model(tmp_path / "data.yaml", tmp_path / "out")
    with pytest.raises(ValueError, match="no S3 client"):
        resolve_weights("s3://models/base/best.pt", tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        resolve_weights(tmp_path / "nope.pt", tmp_path)


def test_onnx_export_has_contract_names_shapes_and_metadata(onnx_model, dataset):
    import onnx

    from serving.detector import parse_metadata

    proto = onnx.load(str(onnx_model))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["output0"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, IMGSZ, IMGSZ]
    out_dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[:2] == [1, 6]  # 4 box + 2 classes
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["names"]) == {"0": "scratch", "1": "bent"}
    assert json.loads(meta["imgsz"]) == [IMGSZ, IMGSZ]
    assert meta["stride"] == "32"
    assert meta["dataset_id"] == json.loads((dataset / "manifest.json").read_text())["dataset_id"]
    parsed = parse_metadata(meta)
    assert parsed["names"] == ["scratch", "bent"] and parsed["imgsz"] == (IMGSZ, IMGSZ)


def test_export_refuses_names_that_do_not_match_the_model(trained, tmp_path):
    from components.model import export_onnx

    with pytest.raises(ValueError, match="do not match"):
        export_onnx(trained.best_weights, tmp_path / "m.onnx", imgsz=IMGSZ, names=("bent", "scratch"))
    assert not (tmp_path / "m.onnx").exists()  # nothing half-written


def test_dynamic_export_runs_through_the_detector(trained, tmp_path, val_images):
    import onnx

    from components.model import export_onnx
    from serving.detector import Detector

    path = export_onnx(trained.best_weights, tmp_path / "dyn.onnx", imgsz=IMGSZ, dynamic=True)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3]))
    det = Detector(path, conf=0.001)
    assert det.imgsz == (IMGSZ, IMGSZ)  # from the metadata, since the input shape is symbolic
    dets = det.detect(val_images[0].read_bytes())
    assert all(d.class_name in ("scratch", "bent") for d in dets)


def test_parity_check_passes_for_the_real_export(trained, onnx_model, val_images):
    """Real detections on both sides, matched one to one (same class, box IoU >= 0.95)."""
    from components.model import parity_check

    report = parity_check(trained.best_weights, onnx_model, val_images[:6], imgsz=IMGSZ, conf=0.1)
    assert report["passed"] and report["images"] == 6
    assert report["max_abs_diff"] <= report["atol"]
    # The session model detects, so this compares detections, not two empty lists.
    # ("passed" already means every detection clear of the threshold has a partner; these say
    # that there were detections to pair, on more than one image.)
    assert report["detections_torch"] > 0 and report["matched"] > 0
    assert report["detections_torch"] == report["detections_onnx"]
    assert sum(1 for row in report["per_image"] if row["matched"]) >= 2
    # OpenVINO at f32 on the same tensors: the same figures (torch, ONNX Runtime and OpenVINO agree).
    pytest.importorskip("openvino")
    assert report["max_abs_diff_openvino"] <= report["atol"]
    assert report["detections_openvino"] == report["detections_torch"] and report["matched_openvino"] > 0
    assert report["openvino_auto_precision"] in ("f32", "bf16")  # recorded, judged by the variants' mAP


def test_parity_check_fails_for_a_tampered_model(trained, onnx_model, val_images, tmp_path):
    import onnx
    from onnx import numpy_helper

    from components.model import ParityError, parity_check

    proto = onnx.load(str(onnx_model))
    # Perturb every conv kernel by half its spread: a model that no longer computes what PyTorch
    # computes. (One deep layer alone is not enough: a barely trained net's saturated
    # activations can hide it.)
    rng = np.random.default_rng(0)
    for init in proto.graph.initializer:
        if len(init.dims) == 4:
            arr = numpy_helper.to_array(init).copy()
            arr += rng.normal(0, 0.5 * float(arr.std()) + 1e-3, arr.shape).astype(arr.dtype)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ParityError, match=r"max \|torch - onnx\|"):
        parity_check(trained.best_weights, bad, val_images[:2], imgsz=IMGSZ)


def test_evaluate_onnx_reports_metrics_and_plots(onnx_model, dataset, tmp_path):
    from components.model import evaluate_onnx

    m = evaluate_onnx(onnx_model, dataset, out_dir=tmp_path)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert m["images"] == manifest["counts"]["images"]["val"]
    val_boxes = manifest["counts"]["boxes"]["val"]
    assert m["instances"] == sum(val_boxes.values())
    assert set(m["per_class"]) == {"scratch", "bent"}
    for name, stats in m["per_class"].items():
        assert stats["support"] == val_boxes[name]
        assert 0.0 <= stats["map50_95"] <= stats["map50"] <= 1.0
    for key in ("map50", "map50_95", "precision", "recall"):
        assert 0.0 <= m[key] <= 1.0
    assert m["eval_dataset_id"] == manifest["dataset_id"] == m["model_dataset_id"]
    assert [p.rsplit("/", 1)[-1] for p in m["plots"]] == ["PR_curve.png", "confusion_matrix.png"]
    for p in m["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # The session model really detects: a model that finds nothing scores 0 here.
    assert m["map50"] > MIN_MAP50 and m["recall"] > 0 and m["precision"] > 0
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3)
    assert np.trace(cm[:2, :2]) > 0  # some defects found with the right class
    assert cm[:, :2].sum(axis=0).tolist() == [val_boxes["scratch"], val_boxes["bent"]]  # every object counted once
    json.dumps(m)


def test_evaluate_agrees_with_ultralytics_val(onnx_model, dataset, yolo_config, tmp_path):
    """Same ONNX file, same split, same thresholds: our numbers vs Ultralytics' own ``val``.

    Tolerance 0.05 absolute (mAP50, mAP50-95), on a model that detects (both sides must
    beat ``MIN_MAP50``, so 0 == 0 cannot pass). Known, deliberate differences: Ultralytics' val
    NMS is multi-label and it resizes with OpenCV's INTER_AREA, while we evaluate the served path
    (best class per box, Pillow bilinear). The metric arithmetic itself agrees to 1e-9
    (tests/model/test_model_metrics.py).
    """
    from ultralytics import YOLO

    from components.model import evaluate_onnx

    ours = evaluate_onnx(onnx_model, dataset, conf=0.001, iou=0.7)
    theirs = YOLO(str(onnx_model), task="detect").val(
        data=str(dataset / "data.yaml"),
        imgsz=IMGSZ,
        batch=1,
        conf=0.001,
        iou=0.7,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(tmp_path),
        name="val",
    )
    assert ours["map50"] > MIN_MAP50 and float(theirs.box.map50) > MIN_MAP50
    assert ours["map50_95"] > 0 and float(theirs.box.map) > 0
    assert abs(ours["map50"] - float(theirs.box.map50)) <= 0.05
    assert abs(ours["map50_95"] - float(theirs.box.map)) <= 0.05


def test_fine_tune_from_weights_on_s3(trained, dataset, yolo_config, local_stack, tmp_path):
    """Initial weights given as s3:// are fetched with the given client (real local S3 server)."""
    from components.model import train_model

    s3 = local_stack.s3
    bucket = "vinspect-test-weights"
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(trained.best_weights), bucket, "base/best.pt")
    result = train_model(
        dataset / "data.yaml",
        tmp_path / "runs",
        weights=f"s3://{bucket}/base/best.pt",
        epochs=1,
        imgsz=IMGSZ,
        batch=16,
        s3_client=s3,
    )
    fetched = tmp_path / "runs" / "init_weights" / "best.pt"
    assert fetched.read_bytes() == trained.best_weights.read_bytes()
    assert not list(fetched.parent.glob("*.part"))
    assert result.params["weights"] == f"s3://{bucket}/base/best.pt"
    assert result.best_weights.is_file()
    with pytest.raises(FileNotFoundError, match="not found on S3: s3://vinspect-test-weights/missing.pt"):
        train_model(
            dataset / "data.yaml",
            tmp_path / "runs2",
            weights=f"s3://{bucket}/missing.pt",
            epochs=1,
            imgsz=IMGSZ,
            s3_client=s3,
        )
