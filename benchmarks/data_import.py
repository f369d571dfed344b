"""Benchmark: importing a synthetic CVAT export vs a plain recursive copy of the same files.

Measured side by side in one run (ratios, not absolute times: machines are shared and noisy):

- ``ratio_vs_copy``: ``import_dataset`` (parse, QA, hash, split, write, manifest, report) on a
  2,000-image "YOLO 1.1" export, divided by ``shutil.copytree`` of the same export. Target <= 2.
- ``upload_ratio_vs_copy``: ``upload_dataset`` of the imported 2,000-image dataset to the local
  stack's S3 (``rclone serve s3``, objects written as files under its state directory, SigV4
  checked), divided by ``shutil.copytree`` of the same dataset folder: what going through S3
  costs over a plain copy. Target <= 2. The dataset goes as one object, ``dataset.tar`` (built
  while it streams, multipart, every file checked against the manifest's sha256), plus its
  manifest and QA report. Measured on the 2-core development machine (load ~4): one PUT per
  file took 28.5 s against a 0.54 s copy (52.9x; 8 parallel PUTs still 11.6 s), the archive
  1.18 s against 0.64 s (1.85x).
  ``reupload_s`` is the same call again, where the dataset is already there (one listing and
  no PUT). With ``moto`` installed, the same upload to an in-process moto server (the previous
  local S3, objects in memory) is measured beside it.
- peak memory of the import at 500 and 2,000 images, two ways: the peak RSS of a fresh process
  doing only the import (what a pipeline pod needs; should stay flat), and the peak Python heap
  (tracemalloc), whose growth per image is the manifest's bookkeeping (paths, digests, boxes).
  Image bytes are never accumulated.

Usage: ``python benchmarks/data_import.py [--n 2000] [--small 500] [--size 128] [--repeat 3] [--no-upload]``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data import import_dataset, synthesize, upload_dataset  # noqa: E402


def _timed(fn) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _peak_mb(export: Path, out: Path) -> float:
    gc.collect()
    tracemalloc.start()
    import_dataset(export, out)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def _peak_rss_mb(export: Path, out: Path) -> float:
    """Peak RSS of a fresh interpreter that imports ``export`` (and nothing else)."""
    code = (
        "import resource, sys; from components.data import import_dataset; "
        "import_dataset(sys.argv[1], sys.argv[2]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-c", code, str(export), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    return int(res.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is KiB on Linux


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _upload_figures(dataset: Path, tmp: Path, repeat: int) -> dict:
    """Upload ``dataset`` to a fresh local stack's S3 (and to moto when installed) vs copying it."""
    from vinspect.local import StackConfig, _s3_client, down, up

    copies = []
    for i in range(repeat):
        copies.append(_timed(lambda: shutil.copytree(dataset, tmp / f"dscopy{i}")))
        shutil.rmtree(tmp / f"dscopy{i}")
    cfg = StackConfig(state=tmp / "stack", s3_port=_free_port(), mlflow_port=_free_port(), kafka_port=_free_port())
    env = up(cfg, log=lambda _m: None)
    try:
        s3 = _s3_client(env)
        uploads, reuploads = [], []
        for i in range(repeat):
            s3.create_bucket(Bucket=f"bench{i}")
            uploads.append(_timed(lambda: upload_dataset(s3, f"bench{i}", dataset)))
            reuploads.append(_timed(lambda: upload_dataset(s3, f"bench{i}", dataset)))
        on_disk = sum(p.stat().st_size for p in (cfg.s3_root / "bench0").rglob("*") if p.is_file())
    finally:
        down(cfg, log=lambda _m: None)
    out = {
        "dataset_copy_s": round(min(copies), 3),
        "upload_s": round(min(uploads), 3),
        "upload_ratio_vs_copy": round(min(uploads) / min(copies), 2),
        "upload_target_ratio": 2.0,
        "reupload_s": round(min(reuploads), 3),
        "uploaded_mb_on_disk": round(on_disk / 2**20, 1),
    }
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return out
    import boto3

    port = _free_port()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        # moto takes any key pair: these are made up for the run.
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=os.urandom(6).hex(),
            aws_secret_access_key=os.urandom(12).hex(),
        )
        moto_uploads = []
        for i in range(repeat):
            client.create_bucket(Bucket=f"bench{i}")
            moto_uploads.append(_timed(lambda: upload_dataset(client, f"bench{i}", dataset)))
    finally:
        moto.stop()
    out["upload_s_moto"] = round(min(moto_uploads), 3)
    out["upload_ratio_vs_moto"] = round(min(uploads) / min(moto_uploads), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-upload", action="store_true", help="skip the S3 upload figures (no local stack)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vinspect-bench-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        big = synthesize(tmp / "export_big", args.n, seed=0, size=args.size)
        synth_s = time.perf_counter() - t0
        small = synthesize(tmp / "export_small", args.small, seed=0, size=args.size)
        copies, imports = [], []
        for i in range(args.repeat):
            # Alternate the two so drift in machine load hits both alike.
            copies.append(_timed(lambda: shutil.copytree(big, tmp / f"copy{i}")))
            imports.append(_timed(lambda: import_dataset(big, tmp / f"ds{i}")))
            shutil.rmtree(tmp / f"copy{i}")
            shutil.rmtree(tmp / f"ds{i}")
        mem_small = _peak_mb(small, tmp / "mem_small")
        mem_big = _peak_mb(big, tmp / "mem_big")
        rss_small = _peak_rss_mb(small, tmp / "rss_small")
        rss_big = _peak_rss_mb(big, tmp / "rss_big")
        export_mb = sum(p.stat().st_size for p in big.rglob("*") if p.is_file()) / 2**20
        upload = {}
        if not args.no_upload:
            import_dataset(big, tmp / "ds_upload")
            upload = _upload_figures(tmp / "ds_upload", tmp, args.repeat)
    copy_s, import_s = min(copies), min(imports)
    result = {
        "bench": "data_import",
        "images": args.n,
        "image_px": args.size,
        "export_mb": round(export_mb, 1),
        "copy_s": round(copy_s, 3),
        "import_s": round(import_s, 3),
        "ratio_vs_copy": round(import_s / copy_s, 2),
        "target_ratio": 2.0,
        "images_per_s": round(args.n / import_s, 1),
        f"peak_rss_mb_{args.small}": round(rss_small, 1),
        f"peak_rss_mb_{args.n}": round(rss_big, 1),
        "rss_ratio": round(rss_big / rss_small, 3),
        f"peak_heap_mb_{args.small}": round(mem_small, 2),
        f"peak_heap_mb_{args.n}": round(mem_big, 2),
        "heap_kb_per_image": round((mem_big - mem_small) * 1024 / (args.n - args.small), 2),
        "synth_s": round(synth_s, 2),
        "synth_images_per_s": round(args.n / synth_s, 1),
        **upload,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "repeat": args.repeat,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
