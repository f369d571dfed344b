"""Quality on the real metal nuts: yolo11n, 320 px, CPU, within a wall-clock budget.

Side by side in one run:

* this project's evaluation of the exported ONNX model through the detector core
  (``components.model.evaluate_onnx``),
* Ultralytics' own ``val`` on the same ONNX file and the same validation split (the agreement
  check of the evaluate core; same IoU 0.7 / conf 0.001 on both sides),
* the precision variants as the pipeline makes and judges them (``export_variants``,
  ``evaluate_variants``, ``choose_variant``): FP32 (OpenVINO f32) and the variant the gate
  chooses (the fastest within 0.01 mAP50-95 of FP32), each with its engine and precision,
* the original demo's reported figures (YOLOv5m, 640 px, GPU, 413 epochs, 18 validation images):
  mAP50 0.84, mAP50-95 0.654, mAP50 per class scratch 0.795, bent 0.884.

Needs ``../shared/data/metal_nut/yolo_1.1`` (56 images). Prints one JSON object on its last line.

Usage::

    .venv/bin/python benchmarks/metal_nut_quality.py [--train-minutes 12] [--seed 0]
    .venv/bin/python benchmarks/metal_nut_quality.py --imgsz 640 --device 0 --epochs 50 --batch 16 \
        --train-minutes 600     # the pipeline's defaults, on a GPU
    .venv/bin/python benchmarks/metal_nut_quality.py --epochs 1 --imgsz 64 --calibration-images 4   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO / ".." / "shared"
DATA = SHARED / "data" / "metal_nut" / "yolo_1.1"
DEMO = {
    "model": "yolov5m",
    "imgsz": 640,
    "device": "gpu",
    "epochs": 413,
    "val_images": 18,
    "map50": 0.84,
    "map50_95": 0.654,
    "per_class": {"scratch": {"map50": 0.795}, "bent": {"map50": 0.884}},
}


def _ultralytics_val(onnx_path: Path, data_yaml: Path, imgsz: int, work: Path) -> dict:
    from vinspect.yolo_env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    m = YOLO(str(onnx_path), task="detect").val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=1,
        conf=0.001,
        iou=0.7,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(work),
        name="uval",
    )
    box = m.box
    names = m.names
    per_class = {}
    for i, c in enumerate(box.ap_class_index):
        per_class[names[int(c)]] = {"map50": float(box.ap50[i]), "map50_95": float(box.ap[i])}
    return {
        "map50": float(box.map50),
        "map50_95": float(box.map),
        "precision": float(box.mp),
        "recall": float(box.mr),
        "per_class": per_class,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-minutes", type=float, default=12.0, help="training wall-clock budget")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4, help="small batches: more optimizer steps per CPU minute")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--optimizer", default="SGD", help="SGD, AdamW, or auto (Ultralytics chooses)")
    ap.add_argument("--lr0", type=float, default=0.01, help="ignored with --optimizer auto")
    ap.add_argument("--val", type=float, default=0.3, help="validation fraction (0.3 -> 17 images)")
    ap.add_argument("--keep", type=Path, default=None, help="keep artifacts in this folder")
    ap.add_argument("--epochs", type=int, default=300, help="epoch cap (the wall-clock budget usually ends first)")
    ap.add_argument("--device", default="cpu", help="cpu, or a CUDA device index such as 0")
    ap.add_argument("--calibration-images", type=int, default=300, help="INT8 calibration images (training split)")
    ap.add_argument("--variant-tolerance", type=float, default=0.01)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(json.dumps({"bench": "metal_nut_quality", "skipped": f"{DATA} not found"}))
        return

    from components.data import import_dataset
    from components.model import (
        choose_variant,
        evaluate_onnx,
        evaluate_variants,
        export_onnx,
        export_variants,
        parity_check,
        train_model,
    )
    from components.model.evaluate import split_images

    tmp_ctx = tempfile.TemporaryDirectory(prefix="vinspect-bench-") if args.keep is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        manifest = import_dataset(DATA, work / "dataset", val=args.val, seed=args.seed, overwrite=True)
        t0 = time.perf_counter()
        result = train_model(
            work / "dataset" / "data.yaml",
            work / "runs",
            model="yolo11n.yaml",
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            patience=1000,
            seed=args.seed,
            device=args.device,
            optimizer=args.optimizer,
            lr0=args.lr0,
            time_hours=args.train_minutes / 60.0,
        )
        train_s = time.perf_counter() - t0
        onnx_path = export_onnx(
            result.best_weights, work / "model.onnx", imgsz=args.imgsz, dataset_id=manifest.dataset_id
        )
        val_images = sorted((work / "dataset" / "images" / "val").iterdir())
        parity = parity_check(result.best_weights, onnx_path, val_images, imgsz=args.imgsz)
        t1 = time.perf_counter()
        # ONNX Runtime f32, as Ultralytics' val runs the same file: the metric agreement check.
        ours = evaluate_onnx(onnx_path, work / "dataset", iou=0.7, out_dir=work / "eval", engine="onnxruntime")
        ours_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        theirs = _ultralytics_val(onnx_path, work / "dataset" / "data.yaml", args.imgsz, work)
        theirs_s = time.perf_counter() - t2
        export_variants(
            onnx_path,
            work / "variants",
            calibration=split_images(work / "dataset", "train"),
            calibration_images=args.calibration_images,
        )
        variants = evaluate_variants(work / "variants", work / "dataset", iou=0.7)
        choice = choose_variant(variants, tolerance=args.variant_tolerance)
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()

    def brief(m: dict) -> dict:
        return {
            "map50": round(m["map50"], 4),
            "map50_95": round(m["map50_95"], 4),
            "per_class": {
                k: {
                    "map50": None if v.get("map50") is None else round(v["map50"], 4),
                    "map50_95": None if v.get("map50_95") is None else round(v["map50_95"], 4),
                }
                for k, v in m["per_class"].items()
            },
        }

    out = {
        "bench": "metal_nut_quality",
        "model": "yolo11n",
        "imgsz": args.imgsz,
        "device": result.device,
        "epochs_run": len(result.epochs),
        "batch": args.batch,
        "optimizer": result.params.get("effective_optimizer"),
        "lr0": result.params.get("effective_lr0"),
        "train_s": round(train_s, 1),
        "dataset_id": manifest.dataset_id,
        "val_images": ours["images"],
        "val_instances": ours["instances"],
        "ours_onnx_detector_core": brief(ours),
        "ultralytics_val_onnx": brief(theirs),
        "abs_diff_map50_vs_ultralytics": round(abs(ours["map50"] - theirs["map50"]), 4),
        "abs_diff_map50_95_vs_ultralytics": round(abs(ours["map50_95"] - theirs["map50_95"]), 4),
        "eval_s_ours": round(ours_s, 2),
        "eval_s_ultralytics": round(theirs_s, 2),
        "parity_max_abs_diff": parity["max_abs_diff"],
        "demo_reference": DEMO,
        "ratio_map50_vs_demo": round(ours["map50"] / DEMO["map50"], 3),
        "ratio_map50_95_vs_demo": round(ours["map50_95"] / DEMO["map50_95"], 3),
        "fp32": {
            "engine": variants["fp32"]["engine"],
            **brief(variants["fp32"]),
            "latency_ms": round(variants["fp32"]["latency_ms"], 2),
        },
        "chosen_variant": choice.variant,
        "chosen": {
            "engine": variants[choice.variant]["engine"],
            **brief(variants[choice.variant]),
            "latency_ms": round(variants[choice.variant]["latency_ms"], 2),
        },
        "variants": {
            name: {
                "engine": v["engine"],
                "map50": round(v["map50"], 4),
                "map50_95": round(v["map50_95"], 4),
                "latency_ms": round(v["latency_ms"], 2),
            }
            for name, v in variants.items()
        },
        "variant_choice": choice.reasons,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
