"""Benchmark: the local pipeline's overhead around training, and a cached re-run.

One run, side by side, on a fresh local stack (rclone S3 on disk, MLflow, tansu; ports chosen free) and a local
model server:

1. a fresh run (empty cache) of the whole DAG on a small synthetic dataset: its wall time minus
   the train step's own training time is the pipeline's overhead (orchestration, subprocesses,
   data, export, evaluation, registry, rollout);
2. the identical run again: every cacheable step comes from kfp.local's cache, only the
   state-dependent steps (dataset check, register, rollout) run;
3. the same run data-aware (``skip_if_unchanged``): the dataset is the champion's, so training
   is skipped.

Targets (issue 6): overhead <= 60 s, cached re-run <= 20 s. Prints one JSON object on the last line.

    .venv/bin/python benchmarks/pipeline_overhead.py [--epochs 1] [--imgsz 64] [--images 16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_OVERHEAD_S = 60.0
TARGET_CACHED_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model_server():
    import secrets

    import uvicorn

    from serving.modelserver import (
        ModelRepository,
        create_app,
        default_model_roots,
        s3_client_factory_from_env,
    )

    # The repository API (the rollout's load) needs a token; the rollout step reads it from here.
    token = os.environ.setdefault("VINSPECT_MODEL_TOKEN", secrets.token_urlsafe(24))
    port = _free_port()
    app = create_app(ModelRepository(s3_client_factory_from_env()), token=token, model_roots=default_model_roots())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def _train_seconds(result) -> float:
    """The train step's own training time (recorded by the step in train_report/train.json)."""
    root = Path(result.pipeline_root)
    runs = sorted(
        p for p in root.glob("vinspect-training-*") if (p / "train" / "train_report" / "train.json").is_file()
    )
    return float(json.loads((runs[-1] / "train" / "train_report" / "train.json").read_text())["wall_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=64)
    parser.add_argument("--images", type=int, default=16)
    opts = parser.parse_args()

    from pipelines.local import run_local
    from vinspect.local import StackConfig, down, up

    quiet = lambda _m: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="vinspect-bench-") as tmp:
        state = Path(tmp)
        cfg = StackConfig(state=state, s3_port=_free_port(), mlflow_port=_free_port(), kafka_port=_free_port())
        env = up(cfg, log=quiet)
        os.environ["VINSPECT_HOME"] = str(state)
        os.environ.update(env)  # the model server reads S3 with the stack's settings
        server, thread, url = _model_server()
        args = {
            "epochs": opts.epochs,
            "imgsz": opts.imgsz,
            "batch": 8,
            "workers": 0,
            "parity_images": 2,
            "smoke_images": 1,
            "smoke_min_classes": 0,
            "min_map50": 0.0,
            "min_class_map50": 0.0,
        }
        common = dict(env=env, model_url=url, pipeline_root=state / "root", synth_images=opts.images, synth_size=96)
        try:
            fresh = run_local(None, arguments=args, **common)
            train_s = _train_seconds(fresh)
            cached = run_local(None, arguments=args, **common)
            skipped = run_local(None, arguments={**args, "skip_if_unchanged": True}, **common)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            down(cfg, log=quiet)

    def steps(result) -> dict:
        return {s["task"]: ("cached" if s["cached"] else s["seconds"]) for s in result.steps}

    overhead = fresh.wall_s - train_s
    out = {
        "bench": "pipeline_overhead",
        "settings": {"epochs": opts.epochs, "imgsz": opts.imgsz, "images": opts.images},
        "fresh_wall_s": round(fresh.wall_s, 2),
        "train_s": round(train_s, 2),
        "overhead_s": round(overhead, 2),
        "overhead_ratio_vs_train": round(overhead / train_s, 2) if train_s else None,
        "cached_rerun_s": round(cached.wall_s, 2),
        "cached_ratio_vs_fresh": round(cached.wall_s / fresh.wall_s, 3),
        "skip_rerun_s": round(skipped.wall_s, 2),
        "outcomes": [fresh.outcome, cached.outcome, skipped.outcome],
        "steps_fresh": steps(fresh),
        "steps_cached": steps(cached),
        "steps_skip": steps(skipped),
        "target_overhead_s": TARGET_OVERHEAD_S,
        "target_cached_s": TARGET_CACHED_S,
        "overhead_ok": overhead <= TARGET_OVERHEAD_S,
        "cached_ok": cached.wall_s <= TARGET_CACHED_S,
        "s3": "rclone serve s3 (on disk)",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
