"""Detector core end to end per image, side by side with its references, at 640 and 320 px, in one run.

For each input size, the same JPEG files and the same model (YOLO11n, nc=2):

* ``ours``: :class:`serving.detector.Detector` on the file: JPEG decode (OpenCV, reduced DCT
  scale), letterbox, the engine (OpenVINO by default, at the runtime's precision: what OVMS
  serves), decode, NMS, boxes mapped back;
* ``bare``: the same engine object called alone on the already prepared tensor (the floor:
  inference only, same engine, same precision);
* ``ultra``: ``YOLO("model.onnx").predict`` on the same file (its own decode, letterbox, NMS, and
  its own ONNX Runtime session with default options, i.e. as a user of Ultralytics gets it);
* ``ultra_ov`` (reference only): ``YOLO(<its own OpenVINO export>).predict``.

Two modes: ``latency`` (one image at a time, the engine's default threads) and ``stream`` (as
many images in flight as CPUs: ``Detector(threads=1).detect_many``, i.e. one OpenVINO stream per
core; bare is the same engine called from that many threads; Ultralytics gets one model per
thread, as its docs prescribe). Every measurement runs in its own block, blocks alternate each
round, and medians over rounds are compared.

Accuracy on the same validation images (``--data``, default: the real metal nuts, 18 images of
a seeded split): mAP50 / mAP50-95 of ours (through the detector core, with the benchmarked
engine and precision) and of ``YOLO("model.onnx").predict``, both scored by the same metric code
(``components.model.evaluate``), conf 0.001 / IoU 0.6. With an untrained model (no ``--weights``)
both are ~0 and the difference says nothing: pass trained weights for the real figure.

Last line, one JSON object; headline keys are the 640 px figures: ``engine`` (backend and
precision), ``ratio_vs_engine`` (ours / bare, worse mode; goal <= 1.10),
``speedup_vs_ultralytics`` (Ultralytics' best mode / ours' best mode; goal >= 2.0),
``map50_95_diff_vs_ultralytics`` (goal <= 0.01); ``sizes`` has everything per size.

Usage (the integrator's full run on a quiet machine)::

    .venv/bin/python benchmarks/detector.py --weights runs/best.pt --images 24 --rounds 5
    .venv/bin/python benchmarks/detector.py --images 4 --rounds 1 --map-images 6   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
METAL_NUT_ROOT = REPO / ".." / "shared" / "data" / "metal_nut" / "yolo_1.1"
METAL_NUT = METAL_NUT_ROOT / "obj_train_data"


def _images(work: Path, n: int) -> list[Path]:
    from PIL import Image

    sources = sorted(METAL_NUT.glob("*.png")) if METAL_NUT.is_dir() else []
    if not sources:
        from components.data import synthesize

        sources = sorted((synthesize(work / "synth", n, seed=0, size=700) / "obj_train_data").glob("*.png"))
    out = []
    for src in sources[:n]:
        dst = work / "jpeg" / (src.stem + ".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.convert("RGB").save(dst, format="JPEG", quality=90)
        out.append(dst)
    return out


@contextlib.contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _exports(work: Path, imgsz: int, weights: Path | None) -> tuple[Path, Path]:
    """``(model.onnx, Ultralytics' OpenVINO export folder)`` of the same network at ``imgsz``."""
    from vinspect.yolo_env import prepare_ultralytics

    prepare_ultralytics(work / "ultralytics")
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    out = work / f"model-{imgsz}"
    out.mkdir(parents=True, exist_ok=True)
    with _cwd(out):  # a model built from a YAML is exported into the current directory
        if weights is None:
            cfg = yaml_model_load("yolo11n.yaml")
            cfg["nc"] = 2
            (out / "yolo11n-nut.yaml").write_text(yaml.safe_dump(cfg))
            source = out / "yolo11n-nut.yaml"
        else:
            source = out / "model.pt"
            shutil.copyfile(weights, source)

        def fresh():
            model = YOLO(str(source))
            if weights is None:
                model.model.names = {0: "scratch", 1: "bent"}
            return model

        onnx = Path(fresh().export(format="onnx", imgsz=imgsz, opset=17, simplify=True, verbose=False)).resolve()
        ov_dir = Path(fresh().export(format="openvino", imgsz=imgsz, half=False, verbose=False)).resolve()
    if onnx != out / "model.onnx":
        onnx = Path(shutil.move(str(onnx), out / "model.onnx"))
    return onnx, ov_dir


def _dataset(work: Path, data: Path | None) -> Path | None:
    if data is not None:
        return data
    if not METAL_NUT_ROOT.is_dir():
        return None
    from components.data import import_dataset

    out = work / "metal-nut"
    import_dataset(METAL_NUT_ROOT, out, val=0.33, seed=0)  # ~18 validation images, as the original demo
    return out


def _map(predict, images: list[Path], num_classes: int) -> dict[str, float]:
    """mAP50 / mAP50-95 of ``predict(path) -> (boxes xyxy, classes, scores)`` with our metric code."""
    import numpy as np

    from components.model.evaluate import (
        IOU_THRESHOLDS,
        _image_size,
        compute_metrics,
        label_path,
        match_predictions,
        read_labels,
    )

    tps, scores, classes, gts = [], [], [], []
    for image in images:
        h, w = _image_size(image)
        gt_boxes, gt_cls = read_labels(label_path(image), w, h, num_classes)
        pb, pc, ps = predict(image)
        tps.append(match_predictions(pb, pc, ps, gt_boxes, gt_cls))
        scores.append(ps)
        classes.append(pc)
        gts.append(gt_cls)
    result = compute_metrics(
        np.concatenate(tps) if tps else np.zeros((0, len(IOU_THRESHOLDS)), bool),
        np.concatenate(scores),
        np.concatenate(classes),
        np.concatenate(gts),
        num_classes,
    )
    return {"map50": round(result["map50"], 4), "map50_95": round(result["map50_95"], 4)}


def _per_image_ms(run, items: list, workers: int) -> float:
    """Wall milliseconds per item for ``run(item)`` over ``items`` with ``workers`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    if workers == 1:
        for item in items:
            run(item)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, items))
    return (time.perf_counter() - start) * 1e3 / len(items)


def _one_size(args, work: Path, imgsz: int, images: list[Path], val: list[Path], workers: int) -> dict:
    import numpy as np

    from serving.detector import Detector, open_engine

    onnx, ov_dir = _exports(work, imgsz, args.weights)
    lat = Detector(onnx, conf=args.conf, iou=args.iou, engine=args.engine, precision=args.precision)
    thr = Detector(onnx, conf=args.conf, iou=args.iou, engine=args.engine, precision=args.precision, threads=1)
    tensors = [lat.prepare(p)[0] for p in images]

    from ultralytics import YOLO

    def ultra_model(path: Path = onnx):
        return YOLO(str(path), task="detect")

    ultra, ultra_ov = ultra_model(), ultra_model(ov_dir)
    local = threading.local()

    def run_ultra(p: Path, model=None, **kw):
        model = model or getattr(local, "model", None)
        if model is None:
            model = local.model = ultra_model()
        return model.predict(
            str(p),
            imgsz=imgsz,
            conf=kw.get("conf", args.conf),
            iou=kw.get("iou", args.iou),
            device="cpu",
            verbose=False,
        )

    blocks = {
        "ours_latency": lambda: _per_image_ms(lat.detect, images, 1),
        "bare_latency": lambda: _per_image_ms(lat.engine, tensors, 1),
        "ultra_latency": lambda: _per_image_ms(lambda p: run_ultra(p, ultra), images, 1),
        "ultra_ov_latency": lambda: _per_image_ms(lambda p: run_ultra(p, ultra_ov), images, 1),
        "ours_stream": lambda: _per_image_ms(lambda ps: list(thr.detect_many(ps, workers)), [images], 1),
        "bare_stream": lambda: _per_image_ms(thr.engine, tensors, workers),
        "ultra_stream": lambda: _per_image_ms(run_ultra, images, workers),
    }
    for fn in blocks.values():  # warm-up: first-call allocations, lazy init, per-thread models
        fn()
    samples: dict[str, list[float]] = {k: [] for k in blocks}
    for _ in range(args.rounds):
        for name, fn in blocks.items():
            samples[name].append(fn())
    samples["ours_stream"] = [v / len(images) for v in samples["ours_stream"]]  # one call, all images
    stages: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
    for p in images:
        for k, v in lat.run(p).timings.items():
            stages[k].append(v)
    ms = {k: statistics.median(v) for k, v in samples.items()}

    accuracy = None
    if val:
        nc = len(lat.names)
        ours_map = Detector(onnx, conf=0.001, iou=0.6, engine=args.engine, precision=args.precision)

        def ours(p):
            dets = ours_map.detect(p)
            return (
                np.array([d.box for d in dets], np.float64).reshape(-1, 4),
                np.array([d.class_id for d in dets], np.int64),
                np.array([d.score for d in dets], np.float64),
            )

        def theirs(p):
            boxes = run_ultra(p, ultra, conf=0.001, iou=0.6)[0].boxes
            return (
                boxes.xyxy.numpy().astype(np.float64),
                boxes.cls.numpy().astype(np.int64),
                boxes.conf.numpy().astype(np.float64),
            )

        accuracy = {
            "images": len(val),
            "ours": _map(ours, val, nc),
            "ultralytics_onnx": _map(theirs, val, nc),
            "trained": args.weights is not None,
        }
        accuracy["map50_95_diff"] = round(
            abs(accuracy["ours"]["map50_95"] - accuracy["ultralytics_onnx"]["map50_95"]), 4
        )

    ultra_best = min(ms["ultra_latency"], ms["ultra_stream"])
    ours_best = min(ms["ours_latency"], ms["ours_stream"])
    bare_engine = open_engine(onnx, engine="onnxruntime")  # for the record: what ORT gives on this CPU
    ort_ms = _per_image_ms(bare_engine, tensors, 1)
    return {
        "imgsz": imgsz,
        "engine": lat.engine.label,
        "stream_engine": thr.engine.label,
        "ms_per_image": {k: round(v, 3) for k, v in ms.items()},
        "ms_bare_onnxruntime_f32_latency": round(ort_ms, 3),
        "ms_ours_latency_stages": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "ratio_vs_engine_latency": round(ms["ours_latency"] / ms["bare_latency"], 3),
        "ratio_vs_engine_stream": round(ms["ours_stream"] / ms["bare_stream"], 3),
        "ratio_vs_engine": round(
            max(ms["ours_latency"] / ms["bare_latency"], ms["ours_stream"] / ms["bare_stream"]), 3
        ),
        "speedup_vs_ultralytics_latency": round(ms["ultra_latency"] / ms["ours_latency"], 3),
        "speedup_vs_ultralytics_stream": round(ms["ultra_stream"] / ms["ours_stream"], 3),
        "speedup_vs_ultralytics": round(ultra_best / ours_best, 3),
        "speedup_vs_ultralytics_openvino_latency": round(ms["ultra_ov_latency"] / ms["ours_latency"], 3),
        "accuracy": accuracy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=None, help="trained .pt (default: an untrained YOLO11n)")
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset dir with a labelled val split (default: the real metal nuts, split here)",
    )
    ap.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    ap.add_argument("--images", type=int, default=24, help="timed images per block")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--map-images", type=int, default=0, help="validation images for mAP (0: the whole split)")
    ap.add_argument("--engine", default=None, help="openvino (default where installed) or onnxruntime")
    ap.add_argument("--precision", default=None, help="OpenVINO precision (default: the runtime's choice)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--workers", type=int, default=None, help="stream mode: images in flight (default: CPUs)")
    args = ap.parse_args()

    from components.model.evaluate import split_images
    from serving.detector import _usable_cpus

    workers = args.workers or _usable_cpus()
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="vinspect-bench-det-") as tmp:
        work = Path(tmp)
        images = _images(work, args.images)
        data = _dataset(work, args.data)
        val = split_images(data, "val") if data is not None else []
        if args.map_images:
            val = val[: args.map_images]
        for imgsz in args.imgsz:
            sizes[str(imgsz)] = _one_size(args, work, imgsz, images, val, workers)
            print(json.dumps({"imgsz": imgsz, **sizes[str(imgsz)]}), file=sys.stderr)

    head = sizes.get("640") or next(iter(sizes.values()))
    acc = head["accuracy"] or {}
    print(
        json.dumps(
            {
                "bench": "detector",
                "headline_imgsz": head["imgsz"],
                "engine": head["engine"],
                "ratio_vs_engine": head["ratio_vs_engine"],
                "speedup_vs_ultralytics": head["speedup_vs_ultralytics"],
                "map50_95_diff_vs_ultralytics": acc.get("map50_95_diff"),
                "model_trained": args.weights is not None,
                "images": len(images),
                "rounds": args.rounds,
                "image_source": "metal_nut" if METAL_NUT.is_dir() else "synthetic",
                "stream_workers": workers,
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "sizes": sizes,
                "targets": {
                    "ratio_vs_engine": "<= 1.10",
                    "speedup_vs_ultralytics": ">= 2.0",
                    "map50_95_diff_vs_ultralytics": "<= 0.01",
                },
            }
        )
    )


if __name__ == "__main__":
    main()
