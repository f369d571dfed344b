"""Issue 18.6 in the importer: an image whose header announces too many pixels is refused, not decoded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from components.data import DatasetError, import_dataset
from components.data.qa import check_image


def _bomb(side: int = 12000) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_check_image_refuses_a_decompression_bomb():
    with pytest.raises(DatasetError, match=r"bomb.png.*12000x12000 = 144,000,000 pixels is over the limit"):
        check_image(_bomb(), "bomb.png")
    assert check_image(_bomb(64), "small.png") == (64, 64)


def test_import_names_the_bomb_and_writes_nothing(export_copy, tmp_path):
    image = sorted((export_copy / "obj_train_data").glob("*.png"))[0]
    image.write_bytes(_bomb())
    out = tmp_path / "dataset"
    with pytest.raises(DatasetError, match=f"{image.name}.*over the limit"):
        import_dataset(export_copy, out)
    assert not out.exists()


def test_unreadable_header_is_named_even_after_ultralytics_wraps_pil(monkeypatch):
    """Ultralytics replaces PIL.Image.open with a wrapper that tries to import a HEIF plugin."""
    from PIL import Image

    from serving.imagelimits import ImageTooLarge, image_size

    original = Image.open

    def ultralytics_like_open(fp, *args, **kwargs):
        try:
            return original(fp, *args, **kwargs)
        except Image.UnidentifiedImageError:
            import pi_heif_that_is_not_installed  # noqa: F401  (what the real wrapper does offline)

    monkeypatch.setattr(Image, "open", ultralytics_like_open)
    with pytest.raises(ImageTooLarge, match="cannot read image header"):
        image_size(b"definitely not an image")
