"""Synthetic metal nuts: one renderer for the training data and the camera simulator.

Each image shows a grey nut (hexagonal or round, with a dark centre hole) on a dark background,
with zero or more defects:

- ``scratch`` (class 0): a thin bright or dark line across the nut's face;
- ``bent`` (class 1): a notch pushed into the rim, with a bright crease along its edge.

Every defect is drawn into its own mask, and its box is that mask's bounding box, so labels are
exact. Only numpy and Pillow: the runtime (``serving.camera``) uses it without the training
stack, and ``components.data.synth`` writes datasets with it.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vinspect.errors import VinspectError

KINDS = ("good", "scratch", "bent", "both")
"""What :func:`render_nut` can draw: no defect, one of each class, or both."""


class SyntheticError(VinspectError, ValueError):
    """An unknown kind of synthetic nut."""


def _nut_outline(cx: float, cy: float, r: float, hexagonal: bool, rot: float) -> list[tuple[float, float]]:
    n = 6 if hexagonal else 72
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)
    ]


def render_nut(
    rng: np.random.Generator, size: int, kind: str, defect_scale: float = 1.0
) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    """Render one nut image; return it and its boxes as ``(class_id, (x0, y0, x1, y1))`` pixels.

    ``defect_scale`` (> 1: easier) widens scratches and the bent notch's crease and deepens the
    notch; 1.0 gives the default look. The random draws are the same for any scale, so one
    ``rng`` state gives the same nut and defect positions at every scale.
    """
    if kind not in KINDS:
        raise SyntheticError(f"unknown nut kind {kind!r}; expected one of {KINDS}")
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
        pts = [
            (cx + (r + 2) * math.cos(theta - half), cy + (r + 2) * math.sin(theta - half)),
            (cx + (r - depth) * math.cos(theta), cy + (r - depth) * math.sin(theta)),
            (cx + (r + 2) * math.cos(theta + half), cy + (r + 2) * math.sin(theta + half)),
        ]
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
