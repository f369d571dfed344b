"""End-to-end stream throughput and latency vs the bare engine's throughput, same machine, 640 and 320 px.

camera -> Kafka -> processor (child process) -> model server (child process) -> results.
The broker is the local stack's (``--broker stack``, the default): tansu storing its log in the
stack's rclone S3 on disk, behind the stack's Kafka front (``vinspect.local``), so the figures
include what durability costs; ``--broker memory`` runs tansu alone with its in-memory engine.
Phase 1 sends a burst and measures sustained images/s; phase 2 sends at half that rate
and measures per-image latency (camera `ce_time` to the result arriving here). The reference is
the bare engine the model server runs (OpenVINO by default, at the runtime's precision; the same
engine and precision as the server, ``--engine`` / ``--precision``) called on ready tensors,
same model and input size: the best of its layouts (one inference at a time over all cores,
and one single-threaded inference per core at once; for ONNX Runtime also without spinning),
measured before and after the burst. The model server runs the one-per-core layout by default.
Peak RSS of the processor and the model server is read from /proc; CPU ms per image is reported
for every process, the broker and this script's camera and result sink included (all of them
share the same cores as the reference had to itself), the durable broker's split by process
(``broker_cpu_ms_per_image_by_process``: tansu, the Kafka front, the S3 server under the log).
Most of the broker's CPU is idle polling, not records: tansu answers an empty fetch only when
the consumer's ``fetch.wait.max.ms`` has passed (it does not wake on a produce), and each fetch
lists the partition's objects in S3; so the result sink polls as the dashboard does (100 ms).

    .venv/bin/python benchmarks/stream.py --images 120 --latency-images 40     # the full run
    .venv/bin/python benchmarks/stream.py --images 12 --latency-images 6 --imgsz 320   # smoke run

Last line: {"bench": "stream", "ratio_vs_engine_throughput": ..., "engine": ..., "sizes": {...}}
(headline keys from 640 px when it was run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._runtime import (  # noqa: E402
    PYTHON,
    cpu_seconds,
    free_port,
    peak_rss_mb,
    start,
    stop,
    wait_http,
    yolo_onnx,
)
from serving.detector import _usable_cpus  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "metal_nut" / "yolo_1.1" / "obj_train_data"


def _engine_throughput(
    model: Path,
    seconds: float,
    threads: int,
    spin: bool = True,
    parallel: int = 1,
    engine: str | None = None,
    precision: str | None = None,
) -> float:
    """Images/s of bare engine calls, ``parallel`` of them at once from as many threads."""
    from serving.detector import open_engine

    eng = open_engine(
        model, engine=engine, precision=precision, threads=threads or None, streams=parallel, spinning=spin
    )
    _ENGINE_LABEL.append(eng.label)
    x = np.random.default_rng(0).random(eng.inputs[0].shape, dtype=np.float32)
    eng(x)
    counts = [0] * parallel
    t0, c0 = time.perf_counter(), time.process_time()

    def loop(k: int) -> None:
        while time.perf_counter() - t0 < seconds:
            eng(x)
            counts[k] += 1

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(parallel)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    n = sum(counts)
    _ORT_CPU_MS.append((time.process_time() - c0) * 1e3 / n)
    return n / (time.perf_counter() - t0)


def _engine_best(model: Path, seconds: float, engine: str | None, precision: str | None) -> tuple[float, str]:
    """The best bare-engine throughput on this machine, and the layout that gave it.

    Tried: the engine's defaults (one run at a time over all cores), one single-threaded run per
    core at once (usually the fastest for a small model on few cores), and for ONNX Runtime its
    defaults without spinning. The ratio is never flattered by a slow reference.
    """
    from serving.detector import resolve_engine

    cores = _usable_cpus()
    layouts = {
        "default": lambda: _engine_throughput(model, seconds, 0, engine=engine, precision=precision),
        f"{cores}x1-thread": lambda: _engine_throughput(
            model, seconds, 1, parallel=cores, engine=engine, precision=precision
        ),
    }
    if resolve_engine(engine) == "onnxruntime":
        layouts["no-spin"] = lambda: _engine_throughput(model, seconds, 0, spin=False, engine=engine)
    measured = {name: fn() for name, fn in layouts.items()}
    best = max(measured, key=measured.__getitem__)
    return measured[best], best


_ORT_CPU_MS: list[float] = []  # CPU ms per image of each bare-engine measurement
_ENGINE_LABEL: list[str] = []  # backend and precision of the bare engine (e.g. "openvino bf16")


class _Results:
    """Consume the results topic; record arrival time per image id."""

    def __init__(self, bootstrap: str, topic: str):
        from confluent_kafka import Consumer

        self.arrivals: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                # As the dashboard it stands in for (serving/dashboard/app.py): an idle fetch
                # costs the durable broker a listing of the partition in S3, so 20 ms here
                # charged the stream for five times the polling a real viewer causes.
                "fetch.wait.max.ms": 100,
            }
        )
        self._consumer.subscribe([topic])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            now = time.time()
            # The result's CloudEvent id is "result-<image id>" (a ce_id header in binary mode):
            # the sink stands in for the dashboard and need not parse the JSON body.
            ce_id = dict(msg.headers() or []).get("ce_id", b"").decode()
            self.arrivals.setdefault(ce_id.removeprefix("result-"), now)
        self._consumer.close()

    def wait(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= set(self.arrivals):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids - set(self.arrivals))} results missing")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _send(bootstrap: str, topic: str, jpegs: list[bytes], count: int, fps: float, sent: dict) -> list[str]:
    """Produce `count` image events (2 cameras) at `fps` (0: at once), cycling over `jpegs`.

    The JPEGs are encoded once, before any clock starts (see `main`): on the real system the
    camera is another machine, so its encoding cost is not the pipeline's.
    """
    from confluent_kafka import Producer

    from serving.events import image_event, to_kafka

    records = []
    for i in range(count):
        event = image_event(jpegs[i % len(jpegs)], f"camera-{i % 2}")
        records.append((event["id"], to_kafka(event)))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    start_at = time.monotonic()
    for i, (event_id, (key, value, headers)) in enumerate(records):
        if fps:
            delay = start_at + i / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.produce(topic, value=value, key=key, headers=headers)
        producer.poll(0)
        sent[event_id] = time.time()
    producer.flush(30)
    return [event_id for event_id, _ in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--imgsz",
        type=int,
        nargs="+",
        default=[640, 320],
        help="model input sizes, each run in turn (default: the pipeline's 640, and 320)",
    )
    parser.add_argument(
        "--engine",
        default=None,
        help="model server and reference engine: openvino (default where installed) or onnxruntime",
    )
    parser.add_argument("--precision", default=None, help="OpenVINO precision (default: the runtime's choice)")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument(
        "--broker",
        choices=("stack", "memory"),
        default="stack",
        help="stack: the local stack's durable broker (tansu on rclone S3, Kafka front); "
        "memory: tansu with its in-memory engine",
    )
    parser.add_argument("--latency-images", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="model server threads per inference (0: one per core)")
    parser.add_argument("--server-threads", type=int, default=None, help="alias of --threads")
    parser.add_argument(
        "--server-parallel",
        type=int,
        default=None,
        help="model server runs at once (default: one per CPU, as the fastest bare engine layout on a small CPU)",
    )
    parser.add_argument(
        "--server-spin",
        action="store_true",
        help="let the server's ORT threads spin (off: all processes share the CPU)",
    )
    args = parser.parse_args()
    if args.server_parallel is None:
        args.server_parallel = _usable_cpus()
    sizes = {}
    for imgsz in args.imgsz:
        sizes[str(imgsz)] = _run(args, imgsz)
        print(json.dumps(sizes[str(imgsz)]), file=sys.stderr)
    head = sizes.get("640") or next(iter(sizes.values()))
    print(
        json.dumps(
            {
                "bench": "stream",
                "headline_imgsz": head["imgsz"],
                "engine": head["engine"],
                "ratio_vs_engine_throughput": head["ratio_vs_engine_throughput"],
                "model_server_peak_rss_mb": head["model_server_peak_rss_mb"],
                "processor_peak_rss_mb": head["processor_peak_rss_mb"],
                "target_ratio_min": 0.8,
                "rss_target_mb": 500,
                "sizes": sizes,
                "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )
    )


def _run(args, imgsz: int) -> dict:
    """One end-to-end run at one input size."""
    import os

    _ORT_CPU_MS.clear()  # per-size figures
    _ENGINE_LABEL.clear()

    from confluent_kafka.admin import AdminClient, NewTopic

    from serving.camera import encode_jpeg, load_frames
    from vinspect.local import tansu_binary

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = yolo_onnx(work, imgsz)
        frames = load_frames(SHARED if SHARED.is_dir() else "synthetic:32")
        jpegs = [encode_jpeg(f.data) for f in frames]  # the camera's work, done before any clock
        kafka_port, model_port, health_port = free_port(), free_port(), free_port()
        bootstrap = f"127.0.0.1:{kafka_port}"
        url = f"tcp://{bootstrap}"
        stack = None
        if args.broker == "stack":
            from vinspect.local import StackConfig, stack_pids, up

            stack = StackConfig(
                state=work / "stack", s3_port=free_port(), mlflow_port=free_port(), kafka_port=kafka_port
            )
            up(stack, log=lambda _m: None)
            pids = stack_pids(stack)
            # What the durable broker costs: tansu, the Kafka front and the S3 server under its log.
            broker_pids = {name: pids[name] for name in ("tansu", "kafka", "s3") if name in pids}
            procs = []
        else:
            procs = [
                start(
                    [
                        str(tansu_binary()),
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                        "--storage-engine",
                        "memory://tansu/",
                    ],
                    work / "tansu.log",
                )
            ]
            broker_pids = {"tansu": procs[0].pid}
        results = None
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            deadline = time.monotonic() + 30
            while True:
                try:
                    admin.list_topics(timeout=2)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            topics = {
                "VINSPECT_IMAGES_TOPIC": "b-images",
                "VINSPECT_RESULTS_TOPIC": "b-results",
                "VINSPECT_DLQ_TOPIC": "b-dlq",
            }
            for fut in admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()]).values():
                fut.result(15)
            env = {
                **topics,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                **({"VINSPECT_ENGINE": args.engine} if args.engine else {}),
                **({"VINSPECT_PRECISION": args.precision} if args.precision else {}),
                "VINSPECT_MODEL_URL": f"http://127.0.0.1:{model_port}",
                "VINSPECT_MODEL_NAME": "metal-nut",
                "VINSPECT_KAFKA_GROUP": "bench",
            }
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
                    "metal-nut",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(model_port),
                    "--threads",
                    str(args.threads if args.server_threads is None else args.server_threads),
                    "--parallel",
                    str(args.server_parallel),
                    "--spin" if args.server_spin else "--no-spin",
                    "--log-level",
                    "warning",
                ],
                work / "model.log",
                env,
            )
            procs.append(server)
            wait_http(f"http://127.0.0.1:{model_port}/v2/health/ready")  # open even with a token set
            processor = start(
                [
                    PYTHON,
                    "-m",
                    "vinspect",
                    "serve",
                    "processor",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(health_port),
                    "--concurrency",
                    str(args.concurrency),
                    "--log-level",
                    "warning",
                ],
                work / "processor.log",
                env,
            )
            procs.append(processor)
            wait_http(f"http://127.0.0.1:{health_port}/healthz")
            results = _Results(bootstrap, topics["VINSPECT_RESULTS_TOPIC"])

            # Warm-up: consumer groups joined, sessions hot.
            warm = _send(bootstrap, topics["VINSPECT_IMAGES_TOPIC"], jpegs, 6, 0, results.sent_at)
            results.wait(set(warm), 120)

            # Reference: the better of ORT's defaults and ORT without spinning (what the
            # model server uses), so the ratio is never flattered by a slow reference.
            ort_before, layout_before = _engine_best(model, 4.0, args.engine, args.precision)
            # Phase 1: burst -> sustained throughput.
            cpu0 = {p: cpu_seconds(p.pid) for p in (processor, server)}
            broker0 = {name: cpu_seconds(pid) for name, pid in broker_pids.items()}
            own0 = time.process_time()
            t0 = time.time()
            burst = _send(bootstrap, topics["VINSPECT_IMAGES_TOPIC"], jpegs, args.images, 0, results.sent_at)
            camera_ms = (time.process_time() - own0) * 1e3 / args.images
            results.wait(set(burst), 600)
            stream_ips = len(burst) / (max(results.arrivals[i] for i in burst) - t0)
            cpu_ms = {p: (cpu_seconds(p.pid) - cpu0[p]) * 1e3 / len(burst) for p in cpu0}
            broker_ms = {
                name: (cpu_seconds(pid) - broker0[name]) * 1e3 / len(burst) for name, pid in broker_pids.items()
            }
            own_ms = (time.process_time() - own0) * 1e3 / len(burst)

            # Raw ORT on the same machine, same model, while the services idle; measured
            # before and after the burst too, as the machine is shared and noisy.
            ort_after, layout_after = _engine_best(model, 4.0, args.engine, args.precision)
            ort_ips = (ort_before + ort_after) / 2

            # Phase 2: steady rate at half the measured throughput -> latency.
            paced = _send(
                bootstrap,
                topics["VINSPECT_IMAGES_TOPIC"],
                jpegs,
                args.latency_images,
                max(1.0, stream_ips / 2),
                results.sent_at,
            )
            results.wait(set(paced), 300)
            lat = sorted((results.arrivals[i] - results.sent_at[i]) * 1e3 for i in paced)
            rss_processor = peak_rss_mb(processor.pid)
            rss_model = peak_rss_mb(server.pid)
        finally:
            if results is not None:
                results.close()
            for proc in reversed(procs):
                stop(proc)
            if stack is not None:
                from vinspect.local import down

                down(stack, log=lambda _m: None)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))], 1)

    return {
        "imgsz": imgsz,
        "engine": _ENGINE_LABEL[-1] if _ENGINE_LABEL else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "images": args.images,
        "concurrency": args.concurrency,
        "server_threads": args.threads if args.server_threads is None else args.server_threads,
        "server_parallel": args.server_parallel,
        "server_spin": args.server_spin,
        "stream_images_per_s": round(stream_ips, 2),
        "engine_images_per_s": round(ort_ips, 2),
        "engine_best_layout": sorted({layout_before, layout_after}),
        "ratio_vs_engine_throughput": round(stream_ips / ort_ips, 3),
        "latency_ms_p50": pct(50),
        "latency_ms_p99": pct(99),
        "latency_rate_per_s": round(max(1.0, stream_ips / 2), 2),
        "engine_cpu_ms_per_image_min": round(min(_ORT_CPU_MS), 1),
        "processor_cpu_ms_per_image": round(cpu_ms[processor], 1),
        "model_server_cpu_ms_per_image": round(cpu_ms[server], 1),
        "broker": args.broker,
        "broker_cpu_ms_per_image": round(sum(broker_ms.values()), 1),
        # Which part of the broker costs what: tansu, the Kafka front ("kafka"), the S3 under its log.
        "broker_cpu_ms_per_image_by_process": {name: round(ms, 2) for name, ms in broker_ms.items()},
        "camera_cpu_ms_per_image": round(camera_ms, 1),
        "camera_and_sink_cpu_ms_per_image": round(own_ms, 1),
        "processor_peak_rss_mb": rss_processor,
        "model_server_peak_rss_mb": rss_model,
    }


if __name__ == "__main__":
    main()
