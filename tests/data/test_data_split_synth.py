"""The seeded stratified split and the synthetic nut generator."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from components.data import DatasetError, import_dataset, synthesize
from components.data.split import stratified_split, subset_to_split

NAMES = ["scratch", "bent"]


def _groups(n_scratch, n_bent, n_both, n_bg):
    g = []
    for kind, k, classes in (("s", n_scratch, {0}), ("b", n_bent, {1}), ("sb", n_both, {0, 1}), ("g", n_bg, set())):
        g += [(f"{kind}{i}", frozenset(classes)) for i in range(k)]
    return g


def test_split_is_seeded_sized_and_stratified():
    groups = _groups(40, 30, 10, 20)
    a = stratified_split(groups, val=0.2, test=0.1, seed=0, class_names=NAMES)
    b = stratified_split(list(reversed(groups)), val=0.2, test=0.1, seed=0, class_names=NAMES)
    c = stratified_split(groups, val=0.2, test=0.1, seed=1, class_names=NAMES)
    assert a == b, "input order must not matter"
    assert a != c, "the seed must matter"
    sizes = Counter(a.values())
    assert sizes == {"train": 70, "val": 20, "test": 10}
    # Each stratum is split in proportion (within one image).
    for prefix, total in (("s", 40), ("b", 30), ("g", 20)):
        val = sum(1 for g, s in a.items() if g.startswith(prefix) and not g.startswith("sb") and s == "val")
        assert abs(val - total * 0.2) <= 1, prefix


def test_rare_class_still_reaches_every_split():
    # bent only in 3 images out of 50: proportional rounding would leave val/test without it.
    groups = _groups(40, 3, 0, 7)
    for seed in range(10):
        a = stratified_split(groups, val=0.1, test=0.05, seed=seed, class_names=NAMES)
        for split in ("train", "val", "test"):
            assert any(g.startswith("b") and s == split for g, s in a.items()), (seed, split)


def test_too_few_images_of_a_class():
    with pytest.raises(DatasetError, match="class 'bent' is in only 2 distinct image"):
        stratified_split(_groups(20, 2, 0, 0), val=0.2, test=0.2, seed=0, class_names=NAMES)
    with pytest.raises(DatasetError, match="cannot be split"):
        stratified_split(_groups(1, 0, 0, 0), val=0.2, test=0.0, seed=0, class_names=NAMES)
    with pytest.raises(DatasetError, match="fractions"):
        stratified_split(_groups(5, 5, 0, 0), val=0.6, test=0.4, seed=0, class_names=NAMES)


def test_subset_names():
    assert [subset_to_split(s) for s in ("Train", "Validation", "valid", "Test", "batch7", None)] == [
        "train",
        "val",
        "val",
        "test",
        None,
        None,
    ]


def test_duplicates_stay_in_one_split(export_copy, tmp_path):
    # Copy three images under new names: identical content must land in the same split.
    data = export_copy / "obj_train_data"
    originals = sorted(data.glob("*.png"))[:3]
    listing = (export_copy / "train.txt").read_text()
    for p in originals:
        dup = data / f"dup_{p.name}"
        dup.write_bytes(p.read_bytes())
        dup.with_suffix(".txt").write_text(p.with_suffix(".txt").read_text())
        listing += f"data/obj_train_data/{dup.name}\n"
    (export_copy / "train.txt").write_text(listing)
    for seed in range(5):
        m = import_dataset(export_copy, tmp_path / f"ds{seed}", seed=seed)
        split_of = {i["name"]: i["split"] for i in m.items}
        for p in originals:
            assert split_of[p.name] == split_of[f"dup_{p.name}"]


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_and_boxes_are_exact(tmp_path):
    a = synthesize(tmp_path / "a", 16, seed=5, size=96)
    b = synthesize(tmp_path / "b", 16, seed=5, size=96)
    c = synthesize(tmp_path / "c", 16, seed=6, size=96)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert (a / "obj.names").read_text() == "scratch\nbent\n"
    import numpy as np
    from PIL import Image

    kinds = Counter()
    for label in sorted((a / "obj_train_data").glob("*.txt")):
        kind = label.stem.split("_")[0]
        kinds[kind] += 1
        classes = sorted(int(ln.split()[0]) for ln in label.read_text().splitlines())
        assert classes == {"good": [], "scratch": [0], "bent": [1], "both": [0, 1]}[kind]
        img = np.asarray(Image.open(label.with_suffix(".png")).convert("L"), dtype=np.int16)
        for ln in label.read_text().splitlines():
            _, cx, cy, w, h = (float(v) for v in ln.split())
            assert 0 <= cx - w / 2 and cx + w / 2 <= 1 and 0 <= cy - h / 2 and cy + h / 2 <= 1
            x0, y0 = int(round((cx - w / 2) * 96)), int(round((cy - h / 2) * 96))
            x1, y1 = int(round((cx + w / 2) * 96)), int(round((cy + h / 2) * 96))
            assert x1 - x0 >= 2 and y1 - y0 >= 2
            # The defect is visible: the box holds more contrast than the image's noise.
            assert img[y0:y1, x0:x1].std() > 10
    assert kinds["scratch"] and kinds["bent"]


def test_synth_refuses_bad_arguments(tmp_path):
    with pytest.raises(DatasetError, match="at least 1"):
        synthesize(tmp_path / "x", 0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        synthesize(tmp_path / "full", 3)
