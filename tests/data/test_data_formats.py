"""Every CVAT export sample imports; the real metal-nut export imports to the known counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.data import DatasetError, import_dataset, pull_annotations, validate_dataset
from components.data.formats import COCO, CVAT_IMAGES, ULTRALYTICS, YOLO11, detect_format

# sample folder -> (format, labels, {image name: [(label, x0, y0, x1, y1) in pixels]}, other shapes, subsets)
_YOLO_BOXES = {"1.jpg": [("label_2", 0, 2, 4, 4), ("label_4", 3, 3, 5, 6)]}
SAMPLES = {
    "cvat-ai-datumaro_yolo-1.1": (YOLO11, [f"label_{i}" for i in range(10)], _YOLO_BOXES, {}, ["train"]),
    "cvat-ai-datumaro_ultralytics-yolo-detection-1.0_images-dir": (
        ULTRALYTICS,
        [f"label_{i}" for i in range(10)],
        _YOLO_BOXES,
        {},
        ["train"],
    ),
    "cvat-ai-datumaro_ultralytics-yolo-detection-1.0_subset-txt": (
        ULTRALYTICS,
        [f"label_{i}" for i in range(10)],
        _YOLO_BOXES,
        {},
        ["train"],
    ),
    "cvat-ai-datumaro_cvat-for-images-1.1": (
        CVAT_IMAGES,
        ["label1", "label2"],
        {"img0.jpg": [("label1", 0, 2, 4, 4)], "img1.jpg": []},
        {"points": 1, "polygon": 1, "polyline": 1, "skeleton": 2},
        ["train"],
    ),
    "openvinotoolkit-datumaro_cvat-for-images-1.1_task-export": (
        CVAT_IMAGES,
        ["label1", "label2"],
        {"img0.jpg": [("label1", 0, 2, 4, 4)], "img1.jpg": []},
        {"points": 1, "polygon": 1, "polyline": 1},
        ["train"],
    ),
    "openvinotoolkit-datumaro_cvat-for-images-1.1_project-export": (
        CVAT_IMAGES,
        ["label1", "label2"],
        {f"{s}/img0.jpg": [("label1", 0, 2, 4, 4)] for s in ("Test", "Train", "Validation")}
        | {f"{s}/img1.jpg": [] for s in ("Test", "Train", "Validation")},
        {"points": 3, "polygon": 3, "polyline": 3},
        ["Test", "Train", "Validation"],
    ),
    "cvat-ai-datumaro_coco-1.0-instances": (
        COCO,
        ["a", "b", "c"],
        {"a.jpg": [("b", 2, 2, 5, 3)], "b.jpg": []},
        {"mask": 1, "polygon": 1},
        ["train", "val"],
    ),
}


@pytest.fixture(scope="module")
def samples_dir(shared_dir) -> Path:
    d = shared_dir / "data" / "cvat_samples"
    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    return d


def test_every_sample_is_covered(samples_dir):
    assert sorted(p.name for p in samples_dir.iterdir() if p.is_dir()) == sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_imports_with_exact_boxes(samples_dir, tmp_path, name):
    fmt, labels, boxes, other, subsets = SAMPLES[name]
    src = samples_dir / name
    assert detect_format(src) == fmt
    manifest = pull_annotations(src, tmp_path / "out", classes=labels)
    out = tmp_path / "out"
    assert manifest.source["format"] == fmt
    assert manifest.source_labels == labels
    assert manifest.other_shapes == other
    assert manifest.subsets == subsets
    from PIL import Image

    got = {}
    for item in manifest.items:
        w, h = Image.open(out / item["image"]).size
        rows = []
        for line in (out / item["label"]).read_text().splitlines():
            c, cx, cy, bw, bh = line.split()
            cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
            rows.append(
                (
                    labels[int(c)],
                    round(cx - bw / 2, 3),
                    round(cy - bh / 2, 3),
                    round(cx + bw / 2, 3),
                    round(cy + bh / 2, 3),
                )
            )
        got[item["name"]] = rows
    assert got == {k: [(lab, *map(float, b)) for lab, *b in v] for k, v in boxes.items()}
    # Every file listed with its digest, and the same id when read again.
    assert set(manifest.files) == {i["image"] for i in manifest.items} | {i["label"] for i in manifest.items}
    again = pull_annotations(src, tmp_path / "again", classes=labels)
    assert again.dataset_id == manifest.dataset_id


def test_coco_sample_keeps_its_subsets(samples_dir, tmp_path):
    manifest = import_dataset(
        samples_dir / "cvat-ai-datumaro_coco-1.0-instances", tmp_path / "ds", classes=["a", "b", "c"]
    )
    assert manifest.split["method"] == "cvat_subsets"
    assert manifest.counts["images"] == {"train": 1, "val": 1, "total": 2}
    report = json.loads((tmp_path / "ds" / "qa_report.json").read_text())
    assert any("'b' has no boxes in the 'val' split" in w for w in report["warnings"])


def test_project_sample_with_the_same_image_in_three_subsets_is_refused(samples_dir, tmp_path):
    with pytest.raises(DatasetError, match="identical images in two splits"):
        import_dataset(
            samples_dir / "openvinotoolkit-datumaro_cvat-for-images-1.1_project-export",
            tmp_path / "ds",
            classes=["label1", "label2"],
        )
    assert not (tmp_path / "ds").exists()


@pytest.fixture(scope="module")
def metal_nut(shared_dir) -> Path:
    d = shared_dir / "data" / "metal_nut" / "yolo_1.1"
    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    return d


def test_metal_nut_imports_to_known_counts_and_stable_id(metal_nut, tmp_path):
    a = import_dataset(metal_nut, tmp_path / "a")
    b = import_dataset(str(metal_nut), tmp_path / "b", seed=0)
    assert a.counts["images"]["total"] == 56
    assert a.counts["boxes"]["total"] == {"scratch": 44, "bent": 31}
    assert a.counts["background_images"]["total"] == 8
    assert a.dataset_id == b.dataset_id
    assert a.files == b.files
    assert a.classes == ["scratch", "bent"]
    for split in ("train", "val"):
        assert all(a.counts["boxes"][split][c] > 0 for c in ("scratch", "bent")), split
    data = yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())
    assert data == {
        "path": str((tmp_path / "a").resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "scratch", 1: "bent"},
    }
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk == a.to_dict()
    assert (tmp_path / "a" / "qa_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert validate_dataset(tmp_path / "a")["status"] == "passed"
    # A different seed gives a different split, hence a different id.
    c = import_dataset(metal_nut, tmp_path / "c", seed=1)
    assert c.dataset_id != a.dataset_id
    assert c.parent_id == a.parent_id


def test_metal_nut_with_a_test_split(metal_nut, tmp_path):
    m = import_dataset(metal_nut, tmp_path / "ds", val=0.2, test=0.2, seed=3)
    assert set(m.splits) == {"train", "val", "test"}
    for split in m.splits:
        assert all(m.counts["boxes"][split][c] > 0 for c in ("scratch", "bent")), split
    assert sum(m.counts["images"][s] for s in m.splits) == 56


def test_validate_detects_tampering(small_export, tmp_path):
    import_dataset(small_export, tmp_path / "ds")
    label = next((tmp_path / "ds" / "labels" / "train").glob("*.txt"))
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match="label file changed") as e:
        validate_dataset(tmp_path / "ds")
    assert e.value.file.endswith(label.name)


def _png(path: Path, w: int, h: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 90, 90)).save(path)


_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><labels>
    <label><name>scratch</name><type>rectangle</type></label>
    <label><name>bent</name><type>any</type></label>
    <label><name>contour</name><type>polygon</type></label>
  </labels></task></meta>
  <image id="0" name="a.png" width="40" height="20">
    <box label="scratch" xtl="1" ytl="2" xbr="11" ybr="12"/>
    <box label="bent" xtl="5" ytl="5" xbr="9" ybr="9" rotation="30"/>
    <polygon label="contour" points="1,1;5,5;1,5"/>
  </image>
  <image id="1" name="b.png" width="40" height="20">
  </image>
  <track id="0" label="bent">
    <box frame="0" outside="0" xtl="20" ytl="0" xbr="40" ybr="20"/>
    <box frame="1" outside="0" xtl="0" ytl="0" xbr="10" ybr="10"/>
    <box frame="1" outside="1" xtl="0" ytl="0" xbr="10" ybr="10"/>
  </track>
</annotations>
"""


def test_cvat_xml_tracks_rotated_boxes_and_other_shapes(tmp_path):
    export = tmp_path / "export"
    _png(export / "images" / "a.png", 40, 20)
    _png(export / "images" / "b.png", 40, 20)
    (export / "annotations.xml").write_text(_XML)
    m = pull_annotations(export, tmp_path / "ds")
    assert m.source["format"] == CVAT_IMAGES
    assert m.source_labels == ["scratch", "bent"], "polygon-only labels are not classes"
    assert m.other_shapes == {"polygon": 1, "rotated box": 1}
    labels = {i["name"]: (tmp_path / "ds" / i["label"]).read_text().splitlines() for i in m.items}
    assert labels == {
        "a.png": ["0 0.150000 0.350000 0.250000 0.500000", "1 0.750000 0.500000 0.500000 1.000000"],
        "b.png": ["1 0.125000 0.250000 0.250000 0.500000"],
    }


def test_cvat_xml_errors_name_the_line(tmp_path):
    export = tmp_path / "export"
    _png(export / "images" / "a.png", 40, 20)
    _png(export / "images" / "b.png", 40, 20)
    (export / "annotations.xml").write_text(_XML.replace('<box label="scratch"', '<box label="dent"'))
    with pytest.raises(DatasetError, match="box label 'dent' is not a declared rectangle label") as e:
        pull_annotations(export, tmp_path / "ds")
    assert (e.value.file, e.value.line) == ("annotations.xml", 10)
    (export / "annotations.xml").write_text(_XML.replace('name="b.png" width="40"', 'name="b.png" width="41"'))
    with pytest.raises(DatasetError, match="annotation says 'b.png' is 41x20 but the image is 40x20") as e:
        pull_annotations(export, tmp_path / "ds")
    assert e.value.line == 14
    (export / "annotations.xml").write_text(_XML.replace("</annotations>", ""))
    with pytest.raises(DatasetError, match="not well-formed XML"):
        pull_annotations(export, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_coco_unknown_category(samples_dir, tmp_path):
    import shutil

    export = tmp_path / "coco"
    shutil.copytree(samples_dir / "cvat-ai-datumaro_coco-1.0-instances", export)
    doc = json.loads((export / "annotations" / "instances_train.json").read_text())
    doc["annotations"][0]["category_id"] = 9
    (export / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="annotation id 1 has unknown category id 9"):
        pull_annotations(export, tmp_path / "ds", classes=["a", "b", "c"])


def test_into_an_existing_empty_folder(small_export, tmp_path):
    (tmp_path / "ds").mkdir()
    m = import_dataset(small_export, tmp_path / "ds")
    assert (tmp_path / "ds" / "data.yaml").is_file() and m.counts["images"]["total"] == 24


def test_two_steps_equal_one(small_export, tmp_path):
    """The pipeline's two steps (pull, then validate_and_split) give what `data import` gives."""
    from components.data import validate_and_split

    pulled = pull_annotations(small_export, tmp_path / "pulled")
    assert pulled.kind == "annotations"
    final = validate_and_split(tmp_path / "pulled", tmp_path / "final", val=0.25, seed=2)
    one = import_dataset(small_export, tmp_path / "one", val=0.25, seed=2)
    assert final.dataset_id == one.dataset_id and final.parent_id == pulled.dataset_id
    assert (tmp_path / "pulled" / "manifest.json").is_file(), "the input folder is left as it was"
    assert validate_dataset(tmp_path / "pulled")["status"] == "passed"
    with pytest.raises(DatasetError, match="already split"):
        validate_and_split(tmp_path / "final", tmp_path / "again")
    # QA in the second step names the file and line of the normalized input.
    label = next(i["label"] for i in pulled.items if (tmp_path / "pulled" / i["label"]).read_text())
    (tmp_path / "pulled" / label).write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"class id 7 out of range 0\.\.1 \(classes: \['scratch', 'bent'\]\)") as e:
        validate_and_split(tmp_path / "pulled", tmp_path / "bad")
    assert (e.value.file, e.value.line) == (label, 2)
    assert not (tmp_path / "bad").exists()
    # The same parser as for an export: a non-finite number is refused by the parser, file and line named.
    (tmp_path / "pulled" / label).write_text("0 0.5 0.5 0.1 0.1\n0 nan 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match="non-finite coordinate in '0 nan 0.5 0.1 0.1'") as e:
        validate_and_split(tmp_path / "pulled", tmp_path / "bad")
    assert (e.value.file, e.value.line) == (label, 2)
