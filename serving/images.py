"""Image decoding: encoded bytes (JPEG, PNG, ...) to pixels, with the colour order explicit.

One module for everything that turns bytes into pixels, apart from the detector that turns pixels
into detections (:mod:`serving.detector`), so the processor, evaluation, drift and the notebooks
decode the same way:

* :func:`decode_image` gives an RGB ``uint8`` array ``(H, W, 3)``, the project's convention;
* :func:`decode_bgr` keeps OpenCV's BGR order in a :class:`BGRImage`, so the detector can write
  the tensor's RGB planes straight from it without a full-size channel-swapped copy;
* :func:`decode_reduced` decodes a JPEG at the smallest libjpeg DCT scale that still covers a
  model's input (several times faster than a full decode);
* ``max_pixels`` checks the header against the pixel limit (:mod:`serving.imagelimits`) before
  any decoder runs: OpenCV's ``imdecode`` has no decompression-bomb guard of its own.

Only numpy and Pillow are imported at module level; OpenCV on first use (:func:`opencv`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vinspect.errors import VinspectError

_CV2: Any = None
_JPEG_SCALES = ((8, "IMREAD_REDUCED_COLOR_8"), (4, "IMREAD_REDUCED_COLOR_4"), (2, "IMREAD_REDUCED_COLOR_2"))


class ImageDecodeError(VinspectError, ValueError):
    """Bytes that are not an image any decoder here reads (the message says how many bytes)."""


def opencv() -> Any:
    """OpenCV, imported on first use (the modules that decode stay importable without it)."""
    global _CV2
    if _CV2 is None:
        import cv2

        # Single-threaded like Ultralytics does it: resizes here are small, and OpenCV's pool
        # would compete with the inference engine's threads for the same cores.
        cv2.setNumThreads(0)
        _CV2 = cv2
    return _CV2


def _imdecode(data: bytes, flags: int) -> np.ndarray:
    cv2 = opencv()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): not an image format OpenCV reads")
    return arr


class BGRImage:
    """A decoded image still in OpenCV's BGR order (see :func:`decode_bgr`).

    Passing this instead of an RGB array lets :meth:`serving.detector.Detector.run` write the
    tensor's RGB planes straight from BGR, without a full-size channel-swapped copy. ``.rgb()``
    makes the RGB array when one is needed (e.g. to draw on).
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def rgb(self) -> np.ndarray:
        """The same pixels as a contiguous RGB array."""
        return np.ascontiguousarray(self.array[:, :, ::-1])


def decode_bgr(data: bytes, max_pixels: int | None = None, what: str = "image") -> BGRImage:
    """Decode encoded image bytes as OpenCV does (BGR, 3 channels); see :func:`decode_image`.

    Args:
        data: The encoded image.
        max_pixels: When given, the header is checked against this pixel limit first
            (:func:`serving.imagelimits.check_image_header`; 0 or less turns it off), so a
            decompression bomb never reaches the decoder.
        what: How the image is named in the limit's message (e.g. ``event <id>``).

    Raises:
        serving.imagelimits.ImageTooLarge: The header is unreadable or over ``max_pixels``.
        ImageDecodeError: The bytes are not a readable image.
    """
    if not data:
        raise ImageDecodeError("cannot decode image: no bytes given")
    if max_pixels is not None:
        from serving.imagelimits import check_image_header

        check_image_header(bytes(data), max_pixels, what)
    return BGRImage(_imdecode(bytes(data), opencv().IMREAD_COLOR))


def decode_image(data: bytes) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to an RGB ``uint8`` array.

    Greyscale, palette and alpha images become 3-channel RGB (alpha dropped). EXIF orientation
    is ignored: pixels come out as stored, the same everywhere in this project.

    Args:
        data: The encoded image.

    Returns:
        Array of shape ``(H, W, 3)``, dtype ``uint8``, channels in RGB order.

    Raises:
        ImageDecodeError: If the bytes are not a readable image.
    """
    return decode_bgr(data).rgb()  # OpenCV decodes to BGR: made RGB here, explicitly


def decode_reduced(
    data: bytes, min_hw: Callable[[tuple[int, int]], tuple[int, int]]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode no more pixels than needed: returns ``(BGR array, original (h, w))``.

    JPEG is decoded at the smallest libjpeg DCT scale (1/2, 1/4, 1/8) whose result still has
    ``min_hw((h, w))`` pixels (the letterboxed content a model needs), which is several times
    faster than a full decode and amounts to an area pre-shrink before the bilinear resize. Other
    formats decode in full. The array stays in OpenCV's BGR order.

    Args:
        data: The encoded image.
        min_hw: Maps the original ``(height, width)`` (from the header) to the ``(height, width)``
            the decoded array must at least have.

    Raises:
        ImageDecodeError: If the bytes are not a readable image.
    """
    if not data:
        raise ImageDecodeError("cannot decode image: no bytes given")
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: size and format, no pixels
            orig_w, orig_h = im.size
            fmt = im.format
    except Exception as exc:  # noqa: BLE001 - PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {exc}") from exc
    cv2 = opencv()
    flags = cv2.IMREAD_COLOR
    if fmt == "JPEG":
        need_h, need_w = min_hw((orig_h, orig_w))
        for k, name in _JPEG_SCALES:
            if -(-orig_w // k) >= need_w and -(-orig_h // k) >= need_h:
                flags = getattr(cv2, name)
                break
    return _imdecode(data, flags), (orig_h, orig_w)


def as_rgb_array(img: Any) -> np.ndarray:
    """Accept bytes, a file path, a PIL image or an array; return an RGB ``uint8`` ``(H, W, 3)`` array.

    Raises:
        ImageDecodeError: Bytes (or a file) that are not a readable image.
        ValueError: An array that is not ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``.
    """
    if isinstance(img, (bytes, bytearray, memoryview)):
        return decode_image(bytes(img))
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if isinstance(img, (str, Path)):
        return decode_image(Path(img).read_bytes())
    arr = np.asarray(img)
    if arr.ndim == 2:  # greyscale -> RGB
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr
