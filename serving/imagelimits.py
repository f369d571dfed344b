"""Size limits checked on an image's header before anything decodes it.

A compressed image can be tiny and decode huge: a 450 KB PNG of 12000 x 12000 pixels takes a
decoder to ~430 MB of pixels (1.5 GB of process memory in the processor). Pillow guards
itself with ``Image.MAX_IMAGE_PIXELS``; OpenCV's ``imdecode`` (the processor's decoder) does
not. The processor, the camera and the importer therefore read only the header (Pillow's
``Image.open`` parses it lazily and decodes nothing) and refuse an image above a pixel limit
before any decoder sees it. One module, so the three agree on the limit and its message.
"""

from __future__ import annotations

import io
import warnings

from vinspect.errors import VinspectError

# 40 MP: above the 24-36 MP of high-resolution line-scan and inspection cameras, and at 3 bytes
# a pixel (120 MB decoded) still safe with the processor's default of 4 images in flight.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageTooLarge(VinspectError, ValueError):
    """The image's header announces more pixels than the limit (or it has no readable header)."""


def image_size(data: bytes) -> tuple[int, int, str]:
    """Width, height and format from an encoded image's header, without decoding pixels.

    Args:
        data: Encoded image bytes (JPEG, PNG, ...).

    Returns:
        ``(width, height, format)``, e.g. ``(700, 700, "PNG")``.

    Raises:
        ImageTooLarge: When there is no header Pillow recognises, or the header is past
            Pillow's own hard limit (twice ``MAX_IMAGE_PIXELS``).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Our own limit decides; Pillow's warning would only add noise to the logs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return int(im.width), int(im.height), str(im.format or "?")
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image header announces too many pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageTooLarge(f"cannot read image header: {exc}") from None
    except ImportError:
        # Once ``ultralytics`` is imported in the process (pipeline steps, notebooks), it wraps
        # PIL.Image.open and answers an unidentifiable image by importing an optional HEIF plugin,
        # which raises ModuleNotFoundError offline (ultralytics/utils/patches.py::image_open).
        raise ImageTooLarge("cannot read image header: not an image format Pillow knows") from None


def check_pixels(width: int, height: int, max_pixels: int | None = None, what: str = "image") -> None:
    """Refuse a size above the pixel limit.

    Args:
        width / height: The size the header announces.
        max_pixels: The limit (default :data:`DEFAULT_MAX_PIXELS`); 0 or less turns it off.
        what: What the message calls the image (a file name, an event id).

    Raises:
        ImageTooLarge: With both sizes and the limit in the message.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if width <= 0 or height <= 0:
        raise ImageTooLarge(f"{what}: header says {width}x{height} pixels")
    if limit > 0 and width * height > limit:
        raise ImageTooLarge(
            f"{what}: {width}x{height} = {width * height:,} pixels is over the limit of {limit:,} "
            "(VINSPECT_MAX_IMAGE_PIXELS); not decoded"
        )


def check_image_header(data: bytes, max_pixels: int | None = None, what: str = "image") -> tuple[int, int]:
    """Read the header of ``data`` and refuse it above the pixel limit; returns ``(width, height)``.

    Raises:
        ImageTooLarge: Header unreadable or over the limit (the message names ``what``).
    """
    try:
        width, height, _fmt = image_size(data)
    except ImageTooLarge as exc:
        raise ImageTooLarge(f"{what}: {exc}") from None
    check_pixels(width, height, max_pixels, what)
    return width, height
