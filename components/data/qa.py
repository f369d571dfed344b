"""Label QA: image readability, label syntax, class range, box geometry, and the QA report.

Checks run on bytes and text already in memory, so the importer reads each file once.
Every failure raises :class:`DatasetError` naming the file and, for labels, the line.
"""

from __future__ import annotations

import io
import math
import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from components.data.errors import DatasetError
from serving.imagelimits import ImageTooLarge, check_pixels

# Boxes may poke out of the image by rounding (CVAT writes 6 decimals, annotators drag to the
# edge); up to half a pixel is clipped, anything more is a labelling error.
EDGE_TOLERANCE_PX = 0.5
_SIZE_SAMPLE = 4000  # box sizes kept for the report plot: a fixed-size sample keeps memory flat
# Largest image accepted, in pixels (Pillow's own decompression-bomb threshold, ~9459 x 9459):
# the size comes from the header, so a small file that would decode to gigabytes (a PNG bomb)
# is refused before anything downstream (training, evaluation) decodes it.
MAX_IMAGE_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def check_image(data: bytes, where: str | Path) -> tuple[int, int]:
    """Check that ``data`` is a complete, readable image and return its ``(width, height)``.

    Uses Pillow's header parse and ``verify()`` (PNG chunk CRCs) plus an end-marker check for JPEG,
    which together catch truncated and corrupted files without decoding every pixel.

    Raises:
        DatasetError: If the image cannot be read.
    """
    if not data:
        raise DatasetError("image file is empty", file=where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                fmt = im.format
                im.verify()
    except Exception as e:  # Pillow raises many types for bad files
        raise DatasetError(f"unreadable image ({type(e).__name__}: {e})", file=where) from e
    if fmt == "JPEG" and b"\xff\xd9" not in data[-1024:]:
        raise DatasetError("truncated JPEG (no end-of-image marker)", file=where)
    if size[0] <= 0 or size[1] <= 0:
        raise DatasetError(f"image has size {size[0]}x{size[1]}", file=where)
    try:  # the header's size, before anything decodes it (decompression bombs)
        check_pixels(size[0], size[1], what="image")  # DatasetError names the file
    except ImageTooLarge as e:
        raise DatasetError(str(e), file=where) from None
    return size


def check_box(
    cx: float, cy: float, w: float, h: float, width: int, height: int, file: str, line: int | None
) -> tuple[float, float, float, float]:
    """Validate a normalized box against an image size; return it clipped to the image.

    Raises:
        DatasetError: If the box has zero (or negative) size or lies outside the image by more
            than :data:`EDGE_TOLERANCE_PX`.
    """
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise DatasetError(f"non-finite box ({cx}, {cy}, {w}, {h})", file=file, line=line)
    if w <= 0 or h <= 0 or w * width < 1e-3 or h * height < 1e-3:
        raise DatasetError(f"box has zero size ({w * width:.2f} x {h * height:.2f} px)", file=file, line=line)
    x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
    x2, y2 = (cx + w / 2) * width, (cy + h / 2) * height
    tol = EDGE_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise DatasetError(
            f"box ({x1:.1f}, {y1:.1f})-({x2:.1f}, {y2:.1f}) px lies outside the {width}x{height} image",
            file=file,
            line=line,
        )
    x1, y1 = max(0.0, x1), max(0.0, y1)
    x2, y2 = min(float(width), x2), min(float(height), y2)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise DatasetError("box has zero size inside the image", file=file, line=line)
    return ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)


def format_label_line(cls: int, cx: float, cy: float, w: float, h: float) -> str:
    """One YOLO label line, with fixed precision so the same boxes give the same bytes."""
    return f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def decode_label(raw: bytes, file: str | Path) -> str:
    """The text of a YOLO label file.

    Raises:
        DatasetError: If it is not UTF-8, naming ``file``.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"label file is not UTF-8 text ({e.reason})", file=file) from e


def parse_label_text(
    text: str, file: str | Path, classes: Sequence[str]
) -> list[tuple[int, float, float, float, float, int]]:
    """Parse YOLO label text (``class cx cy w h`` per line): ``(class, cx, cy, w, h, line)`` per box.

    The one YOLO label parser: an export's label files (:mod:`components.data.formats`) and a
    dataset's (:mod:`components.data.validate`) both go through it.

    Args:
        text: The label file's text.
        file: The file, for the error (relative to the export or dataset root).
        classes: Class names in id order (the range of valid ids, and shown in the error).

    Raises:
        DatasetError: For a line that does not parse, a non-finite number, or a class id out of
            range, naming the file and line.
    """
    out = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 5:
            raise DatasetError(
                f"expected 'class cx cy w h' (5 fields), got {len(parts)}: {line!r}", file=file, line=lineno
            )
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise DatasetError(f"cannot parse {line!r} as 'class cx cy w h'", file=file, line=lineno) from None
        if not all(math.isfinite(v) for v in (cx, cy, w, h)):
            raise DatasetError(f"non-finite coordinate in {line!r}", file=file, line=lineno)
        if not 0 <= cls < len(classes):
            raise DatasetError(
                f"class id {cls} out of range 0..{len(classes) - 1} (classes: {list(classes)})", file=file, line=lineno
            )
        out.append((cls, cx, cy, w, h, lineno))
    return out


class QAStats:
    """Accumulates counts and a bounded sample of box sizes for the report."""

    def __init__(self, classes: list[str], seed: int = 0):
        self.classes = list(classes)
        self.images: Counter = Counter()
        self.background: Counter = Counter()
        self.boxes: dict[str, Counter] = defaultdict(Counter)
        self.images_with: dict[str, Counter] = defaultdict(Counter)
        self.sizes: list[tuple[int, float, float]] = []
        self._seen_sizes = 0
        self._rng = random.Random(seed)

    def add(self, split: str, class_ids: list[int], sizes: list[tuple[float, float]]) -> None:
        """Record one image of ``split`` with its boxes' class ids and normalized ``(w, h)``."""
        self.images[split] += 1
        if not class_ids:
            self.background[split] += 1
        for c in class_ids:
            self.boxes[split][self.classes[c]] += 1
        for c in set(class_ids):
            self.images_with[split][self.classes[c]] += 1
        for c, (w, h) in zip(class_ids, sizes):
            # Reservoir sampling: a fair sample of box sizes in constant memory.
            self._seen_sizes += 1
            if len(self.sizes) < _SIZE_SAMPLE:
                self.sizes.append((c, w, h))
            else:
                j = self._rng.randrange(self._seen_sizes)
                if j < _SIZE_SAMPLE:
                    self.sizes[j] = (c, w, h)

    def counts(self) -> dict:
        """Counts of images and boxes per class and split, with totals."""
        splits = sorted(self.images)
        total_boxes = Counter()
        total_with = Counter()
        for s in splits:
            total_boxes.update(self.boxes[s])
            total_with.update(self.images_with[s])
        return {
            "images": {**{s: self.images[s] for s in splits}, "total": sum(self.images.values())},
            "background_images": {**{s: self.background[s] for s in splits}, "total": sum(self.background.values())},
            "boxes": {
                **{s: {c: self.boxes[s][c] for c in self.classes} for s in splits},
                "total": {c: total_boxes[c] for c in self.classes},
            },
            "images_with_class": {
                **{s: {c: self.images_with[s][c] for c in self.classes} for s in splits},
                "total": {c: total_with[c] for c in self.classes},
            },
        }

    def size_summary(self) -> dict:
        """Quantiles of box width/height (normalized) per class, from the sample."""
        out = {}
        for ci, name in enumerate(self.classes):
            ws = sorted(w for c, w, _ in self.sizes if c == ci)
            hs = sorted(h for c, _, h in self.sizes if c == ci)
            if not ws:
                continue
            q = lambda xs, p: round(xs[min(len(xs) - 1, int(p * len(xs)))], 4)  # noqa: E731
            out[name] = {
                "w": {"min": q(ws, 0), "median": q(ws, 0.5), "max": q(ws, 1)},
                "h": {"min": q(hs, 0), "median": q(hs, 0.5), "max": q(hs, 1)},
            }
        return out


_COLOURS = [(220, 60, 60), (60, 110, 220), (60, 170, 90), (230, 150, 40), (150, 80, 200), (40, 170, 190)]


def write_report_png(stats: QAStats, path: Path, title: str = "") -> None:
    """Draw per-class box counts per split and a box-size scatter to a PNG (Pillow only, fast)."""
    W, H, pad = 960, 420, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((pad, 8), f"vinspect dataset QA {title}".strip(), fill="black", font=font)
    # Left: grouped bars, boxes per class for each split.
    left = (pad, 40, W // 2 - pad // 2, H - pad)
    splits = sorted(stats.images)
    counts = [[stats.boxes[s][c] for c in stats.classes] for s in splits]
    peak = max([max(row, default=0) for row in counts] + [1])
    x0, y0, x1, y1 = left
    d.line([(x0, y1), (x1, y1)], fill="black")
    d.line([(x0, y0), (x0, y1)], fill="black")
    d.text((x0 + 4, y0 - 14), f"boxes per class and split (max {peak})", fill="black", font=font)
    group_w = (x1 - x0) / max(len(splits), 1)
    bar_w = group_w * 0.8 / max(len(stats.classes), 1)
    for si, s in enumerate(splits):
        gx = x0 + si * group_w + group_w * 0.1
        for ci, _c in enumerate(stats.classes):
            v = counts[si][ci]
            bh = (y1 - y0 - 20) * v / peak
            bx = gx + ci * bar_w
            d.rectangle([bx, y1 - bh, bx + bar_w - 2, y1], fill=_COLOURS[ci % len(_COLOURS)])
            d.text((bx, y1 - bh - 12), str(v), fill="black", font=font)
        d.text((gx, y1 + 4), f"{s} ({stats.images[s]} img)", fill="black", font=font)
    # Right: box width vs height (normalized), coloured by class.
    x0, y0, x1, y1 = W // 2 + pad // 2, 40, W - pad, H - pad
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text((x0 + 4, y0 - 14), "box width (x) vs height (y), fraction of image", fill="black", font=font)
    for text, pos in (
        ("0", (x0 - 10, y1 - 10)),
        ("1", (x1 - 6, y1 + 4)),
        ("1", (x0 - 10, y0)),
        ("0.5", ((x0 + x1) // 2 - 8, y1 + 4)),
        ("0.5", (x0 - 22, (y0 + y1) // 2)),
    ):
        d.text(pos, text, fill="black", font=font)
    for c, w, h in stats.sizes:
        px = x0 + min(max(w, 0.0), 1.0) * (x1 - x0)
        py = y1 - min(max(h, 0.0), 1.0) * (y1 - y0)
        d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=_COLOURS[c % len(_COLOURS)])
    for ci, c in enumerate(stats.classes):
        d.rectangle([x1 - 110, y0 + 6 + ci * 14, x1 - 100, y0 + 16 + ci * 14], fill=_COLOURS[ci % len(_COLOURS)])
        d.text((x1 - 95, y0 + 5 + ci * 14), c, fill="black", font=font)
    img.save(path, format="PNG")
