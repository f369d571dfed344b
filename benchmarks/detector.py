"""Detector core end to end per image, side by side with its references, in one run.

Three ways to get detections for the same JPEG files with the same ONNX model (YOLO11n, nc=2):

* ``ours``: :meth:`serving.detector.Detector.detect` on the file: JPEG decode, letterbox, ONNX
  Runtime, decode, NMS, boxes mapped back;
* ``bare_ort``: ``session.run`` alone on the already prepared tensor (the floor: inference only);
* ``ultralytics``: ``YOLO(onnx).predict`` on the same file (its own decode, letterbox, NMS, and
  its own ONNX Runtime session with default options, i.e. as a user of Ultralytics gets it).

Ours and the bare call are interleaved image by image, Ultralytics runs in alternating blocks
(its session busy-waits between runs and would slow the next call otherwise); medians compared.
Keys: ``ratio_vs_ort`` = ours / bare (target <= 1.10), ``speedup_vs_ultralytics`` =
ultralytics / ours (target >= 1.5).

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: untrained YOLO11n)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--spinning", action="store_true", help="let our ONNX Runtime threads busy-wait too")
    args = ap.parse_args()

    from serving.detector import Detector, preprocess

    with tempfile.TemporaryDirectory(prefix="vinspect-bench-det-") as tmp:
        work = Path(tmp)
        images = _images(work, args.images)
        model_path = args.model or _untrained_onnx(work, args.imgsz)
        # Same ONNX Runtime session for ours and the bare call: identical inference cost.
        ours = Detector(model_path, conf=args.conf, iou=args.iou, providers=["CPUExecutionProvider"],
                        spinning=args.spinning)
        session = ours.session
        tensors = [preprocess(p, ours.imgsz)[0] for p in images]

        from vinspect.yolo_env import prepare_ultralytics

        prepare_ultralytics(work / "ultralytics")
        from ultralytics import YOLO

        ultra = YOLO(str(model_path), task="detect")

        def run_ultra(p: Path):
            return ultra.predict(str(p), imgsz=ours.imgsz[0], conf=args.conf, iou=args.iou, device="cpu",
                                 verbose=False)

        for p, t in zip(images[:3], tensors[:3]):  # warm-up: first-call allocations, lazy init
            ours.detect(p)
            session.run([ours.output_name], {ours.input_name: t})
            run_ultra(p)

        t_ours, t_bare, t_ultra = [], [], []
        stages: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
        for _ in range(args.rounds):
            # Ours and the bare call interleaved image by image (same session); Ultralytics in its
            # own block right after: its session busy-waits between runs, which would otherwise
            # slow whichever call follows it and blur the comparison.
            for p, t in zip(images, tensors):
                s = time.perf_counter()
                ours.detect(p)
                t_ours.append(time.perf_counter() - s)
                for k, v in ours.timings.items():
                    stages[k].append(v)
                s = time.perf_counter()
                session.run([ours.output_name], {ours.input_name: t})
                t_bare.append(time.perf_counter() - s)
            for p in images:
                s = time.perf_counter()
                run_ultra(p)
                t_ultra.append(time.perf_counter() - s)

    med = {k: statistics.median(v) * 1e3 for k, v in (("ours", t_ours), ("bare", t_bare), ("ultra", t_ultra))}
    print(json.dumps({
        "bench": "detector",
        "images": len(images),
        "calls_each": len(t_ours),
        "imgsz": list(ours.imgsz),
        "image_source": "metal_nut" if METAL_NUT.is_dir() else "synthetic",
        "ours_spinning": args.spinning,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ms_ours_end_to_end": round(med["ours"], 3),
        "ms_bare_session_run": round(med["bare"], 3),
        "ms_ultralytics_predict": round(med["ultra"], 3),
        "ms_ours_stages": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "ratio_vs_ort": round(med["ours"] / med["bare"], 3),
        "speedup_vs_ultralytics": round(med["ultra"] / med["ours"], 3),
        "targets": {"ratio_vs_ort": "<= 1.10", "speedup_vs_ultralytics": ">= 1.5"},
    }))


if __name__ == "__main__":
    main()
