"""v2 round trip with binary tensors vs in-process ONNX Runtime, and JSON vs binary tensors.

Same ONNX file, same input, same thread count; the model server runs as its own process
(as deployed) and the three variants are timed interleaved, so machine noise hits all alike.

    .venv/bin/python benchmarks/v2_roundtrip.py [--imgsz 640] [--iters 20]

Last line: {"bench": "v2_roundtrip", "ratio_vs_inprocess": ..., "json_vs_binary": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._runtime import PYTHON, free_port, peak_rss_mb, start, stop, wait_http, yolo_onnx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json-every", type=int, default=4, help="time a JSON call every N iters")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    parser.add_argument("--model", type=Path, help="ONNX file (default: export YOLO11n)")
    args = parser.parse_args()

    import onnxruntime as ort

    from serving.model_client import ModelClient

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or yolo_onnx(work, args.imgsz)
        port = free_port()
        server = start(
            [
                PYTHON,
                "-m",
                "vinspect",
                "serve",
                "model",
                "--uri",
                str(model),
                "--name",
                "m",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--threads",
                str(args.threads),
                "--log-level",
                "warning",
            ],
            work / "server.log",
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/health/ready")  # open even with a token set
            options = ort.SessionOptions()
            if args.threads:
                options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            inp = session.get_inputs()[0]
            x = np.random.default_rng(0).random(inp.shape, dtype=np.float32)
            # The server inherits VINSPECT_MODEL_TOKEN when one is set: send it.
            token = os.environ.get("VINSPECT_MODEL_TOKEN") or None
            binary = ModelClient(f"http://127.0.0.1:{port}", "m", timeout=120, token=token)
            as_json = ModelClient(f"http://127.0.0.1:{port}", "m", timeout=120, binary=False, token=token)
            ref = session.run(None, {inp.name: x})[0]
            out = binary.infer({inp.name: x}).outputs["output0"].array
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)  # same answer first
            as_json.infer({inp.name: x})  # warm-up

            t_ort, t_bin, t_json = [], [], []
            for i in range(args.iters):
                t0 = time.perf_counter()
                session.run(None, {inp.name: x})
                t1 = time.perf_counter()
                binary.infer({inp.name: x})
                t2 = time.perf_counter()
                t_ort.append(t1 - t0)
                t_bin.append(t2 - t1)
                if i % args.json_every == 0:
                    t3 = time.perf_counter()
                    as_json.infer({inp.name: x})
                    t_json.append(time.perf_counter() - t3)
            rss = peak_rss_mb(server.pid)
        finally:
            stop(server)

    ort_ms = statistics.median(t_ort) * 1e3
    bin_ms = statistics.median(t_bin) * 1e3
    json_ms = statistics.median(t_json) * 1e3
    print(
        json.dumps(
            {
                "bench": "v2_roundtrip",
                "imgsz": args.imgsz,
                "input_mb": round(x.nbytes / 2**20, 2),
                "iters": args.iters,
                "inprocess_ms_p50": round(ort_ms, 2),
                "v2_binary_ms_p50": round(bin_ms, 2),
                "v2_json_ms_p50": round(json_ms, 2),
                "ratio_vs_inprocess": round(bin_ms / ort_ms, 3),
                "json_vs_binary": round(json_ms / bin_ms, 3),
                "target_ratio_vs_inprocess_max": 1.3,
                "model_server_peak_rss_mb": rss,
            }
        )
    )


if __name__ == "__main__":
    main()
