"""Detections drawn on an image: the annotated JPEG the dashboard shows, and the demo's thumbnail."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from serving import detector as det

# One colour per class id (scratch red, bent orange); other classes blue.
_COLORS = {0: (230, 40, 40), 1: (255, 160, 0)}


def draw(img: np.ndarray, detections: list[det.Detection]) -> Any:
    """Boxes and labels drawn on an RGB image; returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img)
    draw_ = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    width = max(2, round(max(img.shape[:2]) / 250))
    for d in detections:
        color = _COLORS.get(d.class_id, (40, 120, 255))
        x1, y1, x2, y2 = d.box
        draw_.rectangle((x1, y1, x2, y2), outline=color, width=width)
        text = f"{d.class_name} {d.score:.2f}"
        tx, ty = x1, max(0, y1 - 12)
        bbox = draw_.textbbox((tx, ty), text, font=font)
        draw_.rectangle(bbox, fill=color)
        draw_.text((tx, ty), text, fill=(0, 0, 0), font=font)
    return pil


def annotate(img: np.ndarray, detections: list[det.Detection], quality: int = 85) -> bytes:
    """Draw boxes and labels on an RGB image and return JPEG bytes."""
    buf = io.BytesIO()
    draw(img, detections).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def thumbnail_data_url(pil: Any, limit: int) -> str:
    """A JPEG data URL of at most `limit` characters (smaller and coarser until it fits)."""
    side, quality = 640, 80
    while True:
        thumb = pil.copy()
        thumb.thumbnail((side, side))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=quality)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        if len(url) <= limit or side <= 32:
            return url
        if quality > 40:
            quality -= 20
        else:
            side //= 2
