"""Image decoding (serving.images): colour order, any mode to RGB, reduced-scale JPEG, the pixel limit."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving import images
from serving.imagelimits import ImageTooLarge
from vinspect.errors import VinspectError


def _encoded(img: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_image_converts_any_mode_to_rgb_and_names_bad_bytes():
    buf = io.BytesIO()
    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(buf, format="PNG")
    arr = images.decode_image(buf.getvalue())
    assert arr.shape == (4, 5, 3) and arr[0, 0].tolist() == [10, 20, 30]
    buf = io.BytesIO()
    Image.new("L", (3, 3), 99).save(buf, format="JPEG")
    assert images.decode_image(buf.getvalue()).shape == (3, 3, 3)
    with pytest.raises(images.ImageDecodeError, match=r"cannot decode image \(12 bytes\)") as caught:
        images.decode_image(b"not an image")
    assert isinstance(caught.value, VinspectError) and isinstance(caught.value, ValueError)
    with pytest.raises(ValueError, match="no bytes given"):
        images.decode_bgr(b"")


def test_bgr_keeps_opencv_order_and_rgb_swaps_it():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255  # pure red
    decoded = images.decode_bgr(_encoded(img, "PNG"))
    assert decoded.shape == (2, 3, 3)
    assert decoded.array[0, 0].tolist() == [0, 0, 255]  # B, G, R
    assert decoded.rgb()[0, 0].tolist() == [255, 0, 0]


def test_pixel_limit_is_checked_before_any_decoder_runs(monkeypatch):
    data = _encoded(np.zeros((120, 160, 3), np.uint8), "PNG")
    ran = []
    monkeypatch.setattr(images, "_imdecode", lambda *a: ran.append(a))
    with pytest.raises(ImageTooLarge, match=r"frame 7: 160x120 = 19,200 pixels is over the limit of 10,000"):
        images.decode_bgr(data, max_pixels=100 * 100, what="frame 7")
    assert ran == []
    monkeypatch.undo()
    assert images.decode_bgr(data, max_pixels=0).shape == (120, 160, 3)  # 0 turns the limit off
    assert images.decode_bgr(data, max_pixels=160 * 120).shape == (120, 160, 3)


def test_reduced_decode_picks_the_smallest_scale_that_still_covers_the_need():
    yy, xx = np.mgrid[0:640, 0:480]
    img = np.stack([xx * 255 // 480, yy * 255 // 640, np.full_like(xx, 90)], -1).astype(np.uint8)
    jpeg = _encoded(img, "JPEG", quality=95)
    asked = []

    def need(orig_hw):
        asked.append(orig_hw)
        return (160, 120)

    arr, orig = images.decode_reduced(jpeg, need)
    assert orig == (640, 480) and asked == [(640, 480)]
    assert arr.shape == (160, 120, 3)  # 1/4 scale: exactly the need, 1/8 would be too small
    arr, _ = images.decode_reduced(jpeg, lambda hw: (161, 120))
    assert arr.shape == (320, 240, 3)  # one row more than 1/4 gives: 1/2
    png = _encoded(img, "PNG")
    arr, orig = images.decode_reduced(png, need)
    assert arr.shape == (640, 480, 3) and orig == (640, 480)  # only JPEG has reduced scales
    with pytest.raises(images.ImageDecodeError, match=r"cannot decode image \(5 bytes\)"):
        images.decode_reduced(b"\x00\x01abc", need)


def test_as_rgb_array_accepts_every_form_and_refuses_bad_shapes(tmp_path):
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    png = _encoded(img, "PNG")
    (tmp_path / "f.png").write_bytes(png)
    for form in (png, tmp_path / "f.png", str(tmp_path / "f.png"), Image.fromarray(img), img):
        assert images.as_rgb_array(form).tolist() == img.tolist(), type(form)
    assert images.as_rgb_array(img[..., 0]).shape == (2, 3, 3)  # greyscale
    assert images.as_rgb_array(np.zeros((2, 3, 4), np.uint8)).shape == (2, 3, 3)  # alpha dropped
    assert images.as_rgb_array(np.full((1, 1, 3), 300.0))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 2\)"):
        images.as_rgb_array(np.zeros((2, 3, 2)))


def test_module_imports_no_opencv_until_first_use():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, serving.images\nassert 'cv2' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], check=True)
