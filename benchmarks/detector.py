"""Detector core end to end per image, side by side with its references, in one run.

Three ways to get detections for the same JPEG files with the same ONNX model (YOLO11n, nc=2):

* ``ours``: :class:`serving.detector.Detector` on the file: JPEG decode (OpenCV, reduced DCT
  scale), letterbox, ONNX Runtime, decode, NMS, boxes mapped back;
* ``bare``: ``session.run`` alone on the already prepared tensor (the floor: inference only);
* ``ultra``: ``YOLO(onnx).predict`` on the same file (its own decode, letterbox, NMS, and its
  own ONNX Runtime session with default options, i.e. as a user of Ultralytics gets it).

Each is measured in two modes:

* ``latency``: one image at a time, ONNX Runtime's default threads (one per core);
* ``stream``: as many images in flight as there are CPUs. Ours is ``Detector(threads=1)
  .detect_many``; bare is the same single-threaded session called from that many threads;
  Ultralytics gets one model per thread, as its docs prescribe for threaded inference.

Every measurement runs in its own block (Ultralytics' sessions busy-wait between runs and would
slow whatever runs next), blocks alternate each round, and medians over rounds are compared.
Keys: ``ratio_vs_ort`` = ours / bare in the same mode, the worse of the two modes (target
<= 1.10); ``speedup_vs_ultralytics`` = Ultralytics' best mode / our best mode (target >= 1.5).
Per-mode ratios are printed as well.

Images: the real metal nuts from ``../shared/data/metal_nut`` (700x700) re-encoded as JPEG (what
the camera sends), or synthetic nuts when the shared folder is absent. The model: ``--model
x.onnx``, else an untrained YOLO11n exported at ``--imgsz`` (inference cost does not depend on
the weights). Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
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
METAL_NUT = REPO / ".." / "shared" / "data" / "metal_nut" / "yolo_1.1" / "obj_train_data"


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


def _untrained_onnx(work: Path, imgsz: int) -> Path:
    from vinspect.yolo_env import prepare_ultralytics

    prepare_ultralytics(work / "ultralytics")
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolo11n.yaml")
    cfg["nc"] = 2
    (work / "yolo11n-nut.yaml").write_text(yaml.safe_dump(cfg))
    model = YOLO(str(work / "yolo11n-nut.yaml"))
    model.model.names = {0: "scratch", 1: "bent"}
    produced = Path(model.export(format="onnx", imgsz=imgsz, opset=17, simplify=True, verbose=False))
    # A model built from a YAML is exported into the current directory: move it out of the repo.
    return Path(shutil.move(str(produced), work / "model.onnx"))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: untrained YOLO11n)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--workers", type=int, default=None, help="stream mode: images in flight (default: CPUs)")
    args = ap.parse_args()

    from serving.detector import Detector, _usable_cpus

    workers = args.workers or _usable_cpus()
    with tempfile.TemporaryDirectory(prefix="vinspect-bench-det-") as tmp:
        work = Path(tmp)
        images = _images(work, args.images)
        model_path = args.model or _untrained_onnx(work, args.imgsz)
        # Latency mode: one image at a time, ONNX Runtime's default threads (one per core).
        lat = Detector(model_path, conf=args.conf, iou=args.iou, providers=["CPUExecutionProvider"])
        # Stream mode: one image per core, one thread per inference (Detector.detect_many).
        thr = Detector(model_path, conf=args.conf, iou=args.iou, providers=["CPUExecutionProvider"], threads=1)
        tensors = [lat.prepare(p)[0] for p in images]

        from vinspect.yolo_env import prepare_ultralytics

        prepare_ultralytics(work / "ultralytics")
        from ultralytics import YOLO

        def ultra_model():
            return YOLO(str(model_path), task="detect")

        ultra = ultra_model()
        # Ultralytics' documented way to predict from several threads: one model per thread.
        local = threading.local()

        def run_ultra(p: Path, model=None):
            model = model or getattr(local, "model", None)
            if model is None:
                model = local.model = ultra_model()
            return model.predict(str(p), imgsz=lat.imgsz[0], conf=args.conf, iou=args.iou, device="cpu",
                                 verbose=False)

        def bare(session):
            return lambda t: session.run([lat.output_name], {lat.input_name: t})

        # Ultralytics' sessions busy-wait between runs (ONNX Runtime's default), which would slow
        # whatever runs next: every measurement runs in its own block, blocks alternate each round,
        # and the medians over rounds are compared.
        blocks = {
            "ours_latency": lambda: _per_image_ms(lat.detect, images, 1),
            "bare_latency": lambda: _per_image_ms(bare(lat.session), tensors, 1),
            "ultra_latency": lambda: _per_image_ms(lambda p: run_ultra(p, ultra), images, 1),
            "ours_stream": lambda: _per_image_ms(lambda ps: list(thr.detect_many(ps, workers)), [images], 1),
            "bare_stream": lambda: _per_image_ms(bare(thr.session), tensors, workers),
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
            lat.detect(p)
            for k, v in lat.timings.items():
                stages[k].append(v)

    ms = {k: statistics.median(v) for k, v in samples.items()}
    ultra_best = min(ms["ultra_latency"], ms["ultra_stream"])
    ours_best = min(ms["ours_latency"], ms["ours_stream"])
    print(json.dumps({
        "bench": "detector",
        "images": len(images),
        "rounds": args.rounds,
        "imgsz": list(lat.imgsz),
        "image_source": "metal_nut" if METAL_NUT.is_dir() else "synthetic",
        "stream_workers": workers,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ms_per_image": {k: round(v, 3) for k, v in ms.items()},
        "ms_ours_latency_stages": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "ratio_vs_ort_latency": round(ms["ours_latency"] / ms["bare_latency"], 3),
        "ratio_vs_ort_stream": round(ms["ours_stream"] / ms["bare_stream"], 3),
        "speedup_vs_ultralytics_latency": round(ms["ultra_latency"] / ms["ours_latency"], 3),
        "speedup_vs_ultralytics_stream": round(ms["ultra_stream"] / ms["ours_stream"], 3),
        # Headline keys: each side in its own best mode; ours against bare ORT mode for mode.
        "ratio_vs_ort": round(max(ms["ours_latency"] / ms["bare_latency"], ms["ours_stream"] / ms["bare_stream"]), 3),
        "speedup_vs_ultralytics": round(ultra_best / ours_best, 3),
        "targets": {"ratio_vs_ort": "<= 1.10", "speedup_vs_ultralytics": ">= 1.5"},
    }))


if __name__ == "__main__":
    main()
