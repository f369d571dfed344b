"""Bad inputs: each gives a clear error naming the file (and line) and leaves nothing behind."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from components.data import DatasetError, import_dataset, pull_annotations


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _first_label(export: Path) -> tuple[Path, str]:
    """A label file with at least one box, and the train.txt line of its image."""
    for label in sorted((export / "obj_train_data").glob("*.txt")):
        if label.read_text().strip():
            return label, label.with_suffix(".png").name
    raise AssertionError("no labelled image in the synthetic export")


def _import_fails(source, out_parent: Path, match: str, **kw) -> DatasetError:
    out = out_parent / "dataset"
    with pytest.raises(DatasetError, match=match) as e:
        import_dataset(source, out, **kw)
    assert not out.exists(), "a failed import must not create its output"
    assert _hidden(out_parent) == [], "a failed import must not leave temp folders"
    return e.value


@pytest.fixture
def out_parent(tmp_path) -> Path:
    d = tmp_path / "outputs"
    d.mkdir()
    return d


def test_corrupt_zip(export_copy, tmp_path, out_parent):
    archive = tmp_path / "export.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", export_copy)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    err = _import_fails(archive, out_parent, "not a valid zip archive")
    assert err.file == str(archive)


def test_zip_round_trip_matches_folder(export_copy, tmp_path, out_parent):
    archive = tmp_path / "export.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", export_copy)
    a = import_dataset(archive, out_parent / "from_zip")
    b = import_dataset(export_copy, out_parent / "from_dir")
    assert a.dataset_id == b.dataset_id
    assert a.source["type"] == "archive" and len(a.source["sha256"]) == 64


def test_missing_image(export_copy, out_parent):
    lines = (export_copy / "train.txt").read_text().splitlines()
    victim = lines[4].split("/")[-1]
    (export_copy / "obj_train_data" / victim).unlink()
    err = _import_fails(export_copy, out_parent, "missing from the export")
    assert (err.file, err.line) == ("train.txt", 5)
    assert f"train.txt:5: listed image 'data/obj_train_data/{victim}'" in str(err)


def test_unreadable_image(export_copy, out_parent):
    label, image = _first_label(export_copy)
    path = export_copy / "obj_train_data" / image
    path.write_bytes(path.read_bytes()[:200])  # truncated PNG
    err = _import_fails(export_copy, out_parent, "unreadable image")
    assert err.file == f"obj_train_data/{image}"


def test_unparsable_line(export_copy, out_parent):
    label, _ = _first_label(export_copy)
    label.write_text(label.read_text() + "1 0.5 zero 0.1 0.1\n")
    n = len(label.read_text().splitlines())
    err = _import_fails(export_copy, out_parent, "cannot parse")
    assert (err.file, err.line) == (f"obj_train_data/{label.name}", n)


def test_wrong_field_count(export_copy, out_parent):
    label, _ = _first_label(export_copy)
    label.write_text("0 0.5 0.5 0.1\n")
    err = _import_fails(export_copy, out_parent, "5 fields")
    assert err.line == 1


def test_class_id_out_of_range(export_copy, out_parent):
    label, _ = _first_label(export_copy)
    label.write_text(label.read_text() + "2 0.5 0.5 0.1 0.1\n")
    err = _import_fails(export_copy, out_parent, r"class id 2 out of range 0\.\.1")
    assert err.file == f"obj_train_data/{label.name}" and err.line == len(label.read_text().splitlines())


def test_box_outside_image(export_copy, out_parent):
    label, _ = _first_label(export_copy)
    label.write_text("0 0.95 0.5 0.2 0.2\n")
    err = _import_fails(export_copy, out_parent, "outside the 64x64 image")
    assert (err.file, err.line) == (f"obj_train_data/{label.name}", 1)


def test_zero_size_box(export_copy, out_parent):
    label, _ = _first_label(export_copy)
    label.write_text("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.0 0.2\n")
    err = _import_fails(export_copy, out_parent, "zero size")
    assert err.line == 2


def test_unknown_label(export_copy, out_parent):
    (export_copy / "obj.names").write_text("scratch\nbent\ndent\n")
    (export_copy / "obj.data").write_text((export_copy / "obj.data").read_text().replace("classes = 2", "classes = 3"))
    label, _ = _first_label(export_copy)
    label.write_text("2 0.5 0.5 0.1 0.1\n")
    err = _import_fails(export_copy, out_parent, "unknown label 'dent'")
    assert "['scratch', 'bent', 'dent']" in str(err) and "['scratch', 'bent']" in str(err)
    assert (err.file, err.line) == (f"obj_train_data/{label.name}", 1)


def test_different_class_order_is_refused_then_mapped_by_name(export_copy, out_parent):
    (export_copy / "obj.names").write_text("bent\nscratch\n")
    err = _import_fails(export_copy, out_parent, "never renumbered silently")
    assert "['bent', 'scratch']" in str(err) and "['scratch', 'bent']" in str(err)
    # Mapped by name on request: source id 0 (bent) becomes 1, and the reverse.
    label, image = _first_label(export_copy)
    src_ids = [ln.split()[0] for ln in label.read_text().splitlines()]
    m = pull_annotations(export_copy, out_parent / "mapped", map_by_name=True)
    assert m.class_map == {"bent": 1, "scratch": 0}
    out_label = out_parent / "mapped" / "labels" / label.name
    assert [ln.split()[0] for ln in out_label.read_text().splitlines()] == [str(1 - int(i)) for i in src_ids]


def test_empty_export_folder(tmp_path, out_parent):
    empty = tmp_path / "empty"
    empty.mkdir()
    _import_fails(empty, out_parent, "empty")


def test_empty_zip(tmp_path, out_parent):
    archive = tmp_path / "empty.zip"
    zipfile.ZipFile(archive, "w").close()
    _import_fails(archive, out_parent, "archive is empty")


def test_export_without_images(tmp_path, out_parent):
    export = tmp_path / "no_images"
    (export / "obj_train_data").mkdir(parents=True)
    (export / "obj.names").write_text("scratch\nbent\n")
    (export / "obj.data").write_text("classes = 2\ntrain = data/train.txt\nnames = data/obj.names\n")
    (export / "train.txt").write_text("")
    _import_fails(export, out_parent, "has no images")


def test_unknown_layout(tmp_path, out_parent):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "readme.md").write_text("hello")
    _import_fails(odd, out_parent, "cannot tell the export format")


def test_not_enough_images_of_a_class_for_every_split(export_copy, out_parent):
    for label in (export_copy / "obj_train_data").glob("*.txt"):
        lines = [ln for ln in label.read_text().splitlines() if not ln.startswith("1 ")]
        label.write_text("".join(ln + "\n" for ln in lines))
    label, _ = _first_label(export_copy)
    label.write_text(label.read_text() + "1 0.5 0.5 0.1 0.1\n")
    _import_fails(export_copy, out_parent, "class 'bent' is in only 1 distinct image")


def test_existing_output_is_kept(export_copy, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        import_dataset(export_copy, out)
    assert (out / "keep.txt").read_text() == "mine"
    m = import_dataset(export_copy, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert m.counts["images"]["total"] == 24


def test_data_errors_derive_from_the_vinspect_root_and_keep_their_builtin():
    """The CLI catches VinspectError once; code written against ValueError/RuntimeError keeps working."""
    from components.data import CVATError
    from vinspect.errors import VinspectError

    assert issubclass(DatasetError, VinspectError) and issubclass(DatasetError, ValueError)
    assert issubclass(CVATError, VinspectError) and issubclass(CVATError, RuntimeError)
