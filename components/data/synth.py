"""Synthetic metal nuts with exact boxes, written as a CVAT "YOLO 1.1" export.

Each image shows a grey nut (hexagonal or round, with a dark centre hole) on a dark background,
with zero or more defects:

- ``scratch`` (class 0): a thin bright or dark line across the nut's face;
- ``bent`` (class 1): a notch pushed into the rim, with a bright crease along its edge.

Every defect is drawn into its own mask, and its box is that mask's bounding box, so labels are
exact (the renderer is :func:`serving.synthetic.render_nut`, shared with the camera simulator).
The same ``(n, seed, size)`` gives the same files on any machine with the same Pillow.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.data.errors import DatasetError
from components.data.qa import format_label_line
from serving.synthetic import render_nut

__all__ = ["CLASSES", "render_nut", "synthesize"]

CLASSES = ("scratch", "bent")
# Share of images per kind: good, scratch only, bent only, both.
_KINDS = (("good", 0.15), ("scratch", 0.4), ("bent", 0.35), ("both", 0.10))


def synthesize(
    out_dir: Path,
    n: int,
    seed: int = 0,
    size: int = 256,
    image_format: str = "png",
    progress: bool = False,
    defect_scale: float = 1.0,
) -> Path:
    """Write ``n`` synthetic nut images as a CVAT "YOLO 1.1" export into ``out_dir``.

    Args:
        out_dir: Export folder to create (absent or empty).
        n: Number of images.
        seed: Seed; image ``i`` depends only on ``(seed, i)``.
        size: Image side in pixels.
        image_format: ``png`` or ``jpg``.
        progress: Show a progress bar.
        defect_scale: Defect size factor (see :func:`render_nut`); above 1 gives bigger, easier
            defects, e.g. for a tiny model trained in about a minute in tests.

    Returns:
        ``out_dir``, ready for ``import_dataset``.
    """
    if n < 1:
        raise DatasetError(f"n must be at least 1, got {n}")
    if not defect_scale > 0:
        raise DatasetError(f"defect_scale must be positive, got {defect_scale}")
    if size < 32:
        raise DatasetError(f"size must be at least 32 px, got {size}")
    ext = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}.get(image_format.lower())
    if ext is None:
        raise DatasetError(f"image_format must be png or jpg, got {image_format!r}")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError("output folder is not empty", file=out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        data = stage / "obj_train_data"
        data.mkdir()
        kinds = [k for k, _ in _KINDS]
        probs = [p for _, p in _KINDS]
        listing = []
        for i in tqdm(range(n), desc="synth", unit="img", disable=not progress):
            rng = np.random.default_rng([seed, i])
            kind = kinds[int(rng.choice(len(kinds), p=probs))]
            img, boxes = render_nut(rng, size, kind, defect_scale)
            name = f"{kind}_{i:06d}.{ext}"
            buf = io.BytesIO()
            if ext == "png":
                img.save(buf, format="PNG", compress_level=1)
            else:
                img.save(buf, format="JPEG", quality=92)
            (data / name).write_bytes(buf.getvalue())
            lines = [
                format_label_line(c, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size)
                for c, (x0, y0, x1, y1) in boxes
            ]
            (data / name).with_suffix(".txt").write_text("".join(ln + "\n" for ln in lines))
            listing.append(f"data/obj_train_data/{name}")
        (stage / "obj.names").write_text("".join(c + "\n" for c in CLASSES))
        (stage / "obj.data").write_text(
            f"classes = {len(CLASSES)}\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n"
        )
        (stage / "train.txt").write_text("".join(p + "\n" for p in listing))
        if out_dir.exists():
            out_dir.rmdir()
        stage.replace(out_dir)
    except BaseException:  # even Ctrl-C: no half-written export left behind; it re-raises
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir
