"""Synthetic metal nuts with exact boxes, written as a CVAT "YOLO 1.1" export.

Each image shows a grey nut (hexagonal or round, with a dark centre hole) on a dark background,
with zero or more defects:

- ``scratch`` (class 0): a thin bright or dark line across the nut's face;
- ``bent`` (class 1): a notch pushed into the rim, with a bright crease along its edge.

Every defect is drawn into its own mask, and its box is that mask's bounding box, so labels are
exact. The same ``(n, seed, size)`` gives the same files on any machine with the same Pillow.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from components.data.errors import DatasetError
from components.data.qa import format_label_line

CLASSES = ("scratch", "bent")
# Share of images per kind: good, scratch only, bent only, both.
_KINDS = (("good", 0.15), ("scratch", 0.4), ("bent", 0.35), ("both", 0.10))


def _nut_outline(cx: float, cy: float, r: float, hexagonal: bool, rot: float) -> list[tuple[float, float]]:
    n = 6 if hexagonal else 72
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


def render_nut(rng: np.random.Generator, size: int, kind: str,
               defect_scale: float = 1.0) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    """Render one nut image; return it and its boxes as ``(class_id, (x0, y0, x1, y1))`` pixels.

    ``defect_scale`` (> 1: easier) widens scratches and the bent notch's crease and deepens the
    notch; 1.0 gives the default look. The random draws are the same for any scale, so one
    ``rng`` state gives the same nut and defect positions at every scale.
    """
    bg = int(rng.integers(20, 60))
    img = Image.new("L", (size, size), bg)
    d = ImageDraw.Draw(img)
    cx = size / 2 + rng.uniform(-0.05, 0.05) * size
    cy = size / 2 + rng.uniform(-0.05, 0.05) * size
    r = size * rng.uniform(0.30, 0.38)
    hexagonal = bool(rng.random() < 0.6)
    rot = rng.uniform(0, math.pi)
    body = int(rng.integers(120, 180))
    d.polygon(_nut_outline(cx, cy, r, hexagonal, rot), fill=body)
    # Bevel ring and shading give the metal look.
    d.ellipse([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=min(255, body + 25))
    hole = r * rng.uniform(0.32, 0.42)
    d.ellipse([cx - hole * 1.15, cy - hole * 1.15, cx + hole * 1.15, cy + hole * 1.15], fill=max(0, body - 40))
    d.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=bg // 2)

    boxes: list[tuple[int, tuple[int, int, int, int]]] = []
    if kind in ("bent", "both"):
        mask = Image.new("L", (size, size), 0)
        md = ImageDraw.Draw(mask)
        theta = rng.uniform(0, 2 * math.pi)
        depth = r * min(0.6, rng.uniform(0.18, 0.32) * defect_scale)
        half = rng.uniform(0.25, 0.45)
        # A notch: a wedge of the rim pushed towards the centre.
        pts = [(cx + (r + 2) * math.cos(theta - half), cy + (r + 2) * math.sin(theta - half)),
               (cx + (r - depth) * math.cos(theta), cy + (r - depth) * math.sin(theta)),
               (cx + (r + 2) * math.cos(theta + half), cy + (r + 2) * math.sin(theta + half))]
        md.polygon(pts, fill=255)
        d.polygon(pts, fill=bg)
        crease = max(1, int(round(size // 128 * defect_scale)))
        d.line(pts, fill=min(255, body + 70), width=crease)
        md.line(pts, fill=255, width=crease)
        # Only the part over the nut is a defect; the mask outside the disc is background.
        disc = Image.new("L", (size, size), 0)
        ImageDraw.Draw(disc).ellipse([cx - r - 3, cy - r - 3, cx + r + 3, cy + r + 3], fill=255)
        bbox = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(disc))).getbbox()
        if bbox:
            boxes.append((1, bbox))
    if kind in ("scratch", "both"):
        mask = Image.new("L", (size, size), 0)
        md = ImageDraw.Draw(mask)
        ang = rng.uniform(0, 2 * math.pi)
        rad = rng.uniform(hole * 1.3, r * 0.75)
        length = r * min(0.9, rng.uniform(0.25, 0.5) * defect_scale)
        dir_ = ang + math.pi / 2 + rng.uniform(-0.6, 0.6)
        x0, y0 = cx + rad * math.cos(ang), cy + rad * math.sin(ang)
        x1, y1 = x0 + length * math.cos(dir_), y0 + length * math.sin(dir_)
        width = max(2, int(round((round(size / 128) + rng.integers(0, 2)) * defect_scale)))
        # Bright (light catching the groove) or dark (a deep groove), always against the bevel.
        surface = min(255, body + 25)
        colour = min(255, surface + 80) if rng.random() < 0.5 else max(0, surface - 110)
        d.line([(x0, y0), (x1, y1)], fill=colour, width=width)
        md.line([(x0, y0), (x1, y1)], fill=255, width=width)
        bbox = mask.getbbox()
        if bbox:
            boxes.append((0, bbox))
    arr = np.asarray(img.filter(ImageFilter.SMOOTH), dtype=np.int16)
    noise = rng.normal(0, 6, arr.shape).astype(np.int16)
    grey = np.clip(arr + noise, 0, 255).astype(np.uint8)
    tint = rng.uniform(0.92, 1.0, 3)
    rgb = np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
    # Boxes get one pixel of margin (smoothing spreads the edge), clipped to the image.
    out = []
    for cls, (bx0, by0, bx1, by1) in boxes:
        out.append((cls, (max(0, bx0 - 1), max(0, by0 - 1), min(size, bx1 + 1), min(size, by1 + 1))))
    return Image.fromarray(rgb, "RGB"), out


def synthesize(out_dir: Path, n: int, seed: int = 0, size: int = 256, image_format: str = "png",
               progress: bool = False, defect_scale: float = 1.0) -> Path:
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
            lines = [format_label_line(c, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size,
                                       (y1 - y0) / size) for c, (x0, y0, x1, y1) in boxes]
            (data / name).with_suffix(".txt").write_text("".join(ln + "\n" for ln in lines))
            listing.append(f"data/obj_train_data/{name}")
        (stage / "obj.names").write_text("".join(c + "\n" for c in CLASSES))
        (stage / "obj.data").write_text(
            f"classes = {len(CLASSES)}\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n")
        (stage / "train.txt").write_text("".join(p + "\n" for p in listing))
        if out_dir.exists():
            out_dir.rmdir()
        stage.replace(out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir
