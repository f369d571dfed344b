"""QA and split a normalized dataset (:func:`validate_and_split`), and re-check one (:func:`validate_dataset`).

``validate_and_split`` runs the label QA on the output of
:func:`components.data.convert.pull_annotations`, splits it (CVAT subsets when they map to
train/val/test, a seeded stratified split otherwise) and writes the Ultralytics-ready dataset::

    DIR/images/{train,val[,test]}/  DIR/labels/{...}/  DIR/data.yaml  DIR/manifest.json
    DIR/qa_report.json  DIR/qa_report.png

through :func:`components.data.staging.staging`, so a failure leaves ``DIR`` untouched.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from components.data import qa
from components.data.errors import DatasetError
from components.data.manifest import (
    MANIFEST,
    Manifest,
    dataset_id,
    read_manifest,
    sha256_bytes,
    sha256_file,
    write_json,
    write_manifest,
)
from components.data.split import stratified_split, subset_to_split
from components.data.staging import check_target, staging


@dataclass(slots=True)
class _Fact:
    """What QA learned about one item (slots: thousands of these are alive at once)."""

    name: str
    image: str
    label: str
    subset: str | None
    split: str | None
    sha256: str
    boxes: list[tuple[int, float, float, float, float]]
    label_bytes: bytes | None
    width: int
    height: int


def _scan(in_dir: Path, manifest: Manifest, progress: bool, trusted: bool = False) -> list[_Fact]:
    """QA every item of a dataset folder against its manifest; returns per-item facts.

    ``trusted`` is only for a folder this process has just written and checked (``import_dataset``):
    images are not read again, their digest and size come from the manifest.
    """
    classes = manifest.classes
    files = manifest.files
    out = []
    in_s = str(in_dir)
    for entry in tqdm(manifest.items, desc="validate", unit="img", disable=not progress):
        img_path = os.path.join(in_s, entry["image"])
        if trusted:
            sha, width, height = files[entry["image"]], entry["width"], entry["height"]
        else:
            try:
                with open(img_path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                raise DatasetError("image listed in manifest.json is missing", file=entry["image"]) from None
            sha = sha256_bytes(data)
            if files.get(entry["image"]) not in (None, sha):
                raise DatasetError("image changed since the manifest was written (sha256 differs)", file=entry["image"])
            width, height = qa.check_image(data, entry["image"])
            del data
        try:
            with open(os.path.join(in_s, entry["label"]), "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raise DatasetError("label file listed in manifest.json is missing", file=entry["label"]) from None
        text = qa.decode_label(raw, entry["label"])
        boxes = []
        for cls, cx, cy, w, h, line in qa.parse_label_text(text, entry["label"], classes):
            boxes.append((cls, *qa.check_box(cx, cy, w, h, width, height, entry["label"], line)))
        out.append(
            _Fact(
                entry["name"],
                entry["image"],
                entry["label"],
                entry.get("subset"),
                entry.get("split"),
                sha,
                boxes,
                raw if trusted else None,
                width,
                height,
            )
        )
    return out


def _assign_splits(
    facts: list[_Fact], classes: list[str], val: float, test: float, seed: int, warnings: list[str]
) -> tuple[dict[str, str], dict]:
    """Return ``name -> split`` and a description of how the split was made."""
    by_sha: dict[str, list[_Fact]] = defaultdict(list)
    for f in facts:
        by_sha[f.sha256].append(f)
    groups = {sha: frozenset(b[0] for f in fs for b in f.boxes) for sha, fs in by_sha.items()}
    subsets = {f.subset for f in facts}
    mapped = {s: subset_to_split(s) for s in subsets}
    keep = len(subsets) >= 2 and all(v is not None for v in mapped.values())
    if len(subsets) >= 2 and not keep:
        warnings.append(
            f"CVAT subsets {sorted(s or 'default' for s in subsets)} do not all map to "
            "train/val/test; made a seeded split instead"
        )
    if not keep:
        assign = stratified_split(sorted(groups.items()), val=val, test=test, seed=seed, class_names=classes)
        method = {"method": "stratified", "seed": seed, "val": val, "test": test}
    else:
        assign = {}
        for sha, fs in by_sha.items():
            splits = {mapped[f.subset] for f in fs}
            if len(splits) > 1:
                names = [f"{f.image} ({f.subset})" for f in fs]
                raise DatasetError(
                    f"identical images in two splits: {', '.join(names)}; delete the copy in CVAT", file=fs[0].image
                )
            assign[sha] = splits.pop()
        have = set(assign.values())
        carve_val = "val" not in have
        carve_test = test > 0 and "test" not in have
        method = {"method": "cvat_subsets", "subsets": {s: mapped[s] for s in sorted(subsets)}}
        if carve_val or carve_test:
            train = sorted((sha, groups[sha]) for sha, s in assign.items() if s == "train")
            if carve_val:
                sub = stratified_split(train, val=val, test=test if carve_test else 0.0, seed=seed, class_names=classes)
            else:
                # Only test is missing: carve it as the "val" part of a two-way split of train.
                sub = {
                    sha: ("test" if s == "val" else s)
                    for sha, s in stratified_split(train, val=test, test=0.0, seed=seed, class_names=classes).items()
                }
            assign.update(sub)
            method.update(
                {
                    "carved": [s for s, c in (("val", carve_val), ("test", carve_test)) if c],
                    "seed": seed,
                    "val": val,
                    "test": test,
                }
            )
        present = {c for g in groups.values() for c in g}
        for s in sorted(set(assign.values())):
            here = {c for sha, g in groups.items() if assign[sha] == s for c in g}
            for c in sorted(present - here):
                warnings.append(f"class {classes[c]!r} has no boxes in the {s!r} split (kept from CVAT subsets)")
    return {f.name: assign[f.sha256] for f in facts}, method


def validate_and_split(
    in_dir: Path,
    out_dir: Path,
    *,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    _move: bool = False,
) -> Manifest:
    """QA a normalized dataset (from :func:`pull_annotations`), split it, write the training dataset.

    Args:
        in_dir: Output folder of :func:`pull_annotations`.
        out_dir: Where to write the Ultralytics-ready dataset (absent or empty unless ``overwrite``).
        val: Validation fraction (used unless CVAT subsets provide a validation split).
        test: Test fraction (0: no test split, unless the export has a test subset).
        seed: Split seed.
        overwrite: Replace a non-empty ``out_dir``.
        progress: Show progress bars.

    Returns:
        The final manifest (also in ``out_dir/manifest.json``).

    Raises:
        DatasetError: The first QA failure, naming the file and line; ``out_dir`` is left untouched.
    """
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    manifest_in = read_manifest(in_dir)
    if manifest_in.kind != "annotations":
        raise DatasetError(
            "this folder is already split; run `vinspect data validate` on it instead", file=in_dir / MANIFEST
        )
    classes = list(manifest_in.classes)
    check_target(out_dir, overwrite)
    facts = _scan(in_dir, manifest_in, progress, trusted=_move)
    manifest_in.items, manifest_in.files = [], {}  # facts hold what is needed; keep memory flat
    warnings: list[str] = []
    orphans = list(manifest_in.orphan_labels)
    if orphans:
        shown = ", ".join(orphans[:10]) + (f" and {len(orphans) - 10} more" if len(orphans) > 10 else "")
        warnings.append(f"{len(orphans)} label file(s) in the export belong to no image and were ignored: {shown}")
    assign, method = _assign_splits(facts, classes, val, test, seed, warnings)
    split_names = [s for s in ("train", "val", "test") if s in set(assign.values())]

    dup_within = Counter(f.sha256 for f in facts)
    n_dup = sum(k - 1 for k in dup_within.values() if k > 1)
    if n_dup:
        warnings.append(f"{n_dup} image(s) are exact duplicates of another image in the same split")

    stats = qa.QAStats(classes, seed)
    files: dict[str, str] = {}
    items_out = []
    in_s = str(in_dir)
    with staging(out_dir, overwrite) as stage:
        stage_s = str(stage)
        for s in split_names:
            (stage / "images" / s).mkdir(parents=True)
            (stage / "labels" / s).mkdir(parents=True)
        for f in tqdm(facts, desc="write", unit="img", disable=not progress):
            split = assign[f.name]
            flat = f.name.replace("/", "__")
            img_rel = f"images/{split}/{flat}"
            lbl_rel = f"labels/{split}/{posixpath.splitext(flat)[0]}.txt"
            if img_rel in files:
                raise DatasetError(f"two images flatten to the same name {flat!r} in split {split!r}", file=f.image)
            src = os.path.join(in_s, f.image)
            label = "".join(qa.format_label_line(*b) + "\n" for b in f.boxes).encode()
            if _move:
                os.replace(src, os.path.join(stage_s, img_rel))
            else:
                shutil.copyfile(src, os.path.join(stage_s, img_rel))
            if _move and f.label_bytes == label:
                # Already canonical (pull_annotations wrote it): move instead of writing anew.
                os.replace(os.path.join(in_s, f.label), os.path.join(stage_s, lbl_rel))
            else:
                with open(os.path.join(stage_s, lbl_rel), "wb") as fh:
                    fh.write(label)
            files[img_rel] = f.sha256
            files[lbl_rel] = sha256_bytes(label)
            items_out.append(
                {
                    "name": f.name,
                    "image": img_rel,
                    "label": lbl_rel,
                    "split": split,
                    "subset": f.subset,
                    "width": f.width,
                    "height": f.height,
                }
            )
            stats.add(split, [b[0] for b in f.boxes], [(b[3], b[4]) for b in f.boxes])
        data_yaml: dict[str, Any] = {"path": str(out_dir)}
        for s in split_names:
            data_yaml[s] = f"images/{s}"
        data_yaml["names"] = dict(enumerate(classes))
        (stage / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False), encoding="utf-8")
        did = dataset_id(classes, files)
        counts = stats.counts()
        report = {
            "dataset_id": did,
            "status": "passed",
            "checks": [
                "images readable",
                "labels parse",
                "class ids in range",
                "boxes inside image",
                "boxes non-degenerate",
                "no identical images across splits",
            ],
            "counts": counts,
            "box_sizes": stats.size_summary(),
            "other_shapes": manifest_in.other_shapes,
            "ignored_labels": manifest_in.ignored_labels,
            "ignored_boxes": manifest_in.ignored_boxes,
            "orphan_labels": orphans,
            "warnings": warnings,
            "split": method,
        }
        write_json(stage / "qa_report.json", report)
        qa.write_report_png(stats, stage / "qa_report.png", title=did)
        manifest = Manifest(
            kind="dataset",
            dataset_id=did,
            parent_id=manifest_in.dataset_id,
            classes=classes,
            source=manifest_in.source,
            source_labels=manifest_in.source_labels,
            class_map=manifest_in.class_map,
            other_shapes=manifest_in.other_shapes,
            split=method,
            splits=split_names,
            counts=counts,
            files=files,
            items=items_out,
        )
        write_manifest(stage, manifest)
    return manifest


def validate_dataset(dataset_dir: Path, *, progress: bool = False) -> dict:
    """Re-check a dataset folder written by this module: hashes, labels, boxes, duplicates.

    Returns:
        A report: ``dataset_id``, ``kind``, ``counts`` and ``status`` ("passed").

    Raises:
        DatasetError: The first problem found, naming the file and line.
    """
    dataset_dir = Path(dataset_dir).resolve()
    manifest = read_manifest(dataset_dir)
    facts = _scan(dataset_dir, manifest, progress)
    for f in facts:
        if manifest.files.get(f.label) != sha256_file(os.path.join(dataset_dir, f.label)):
            raise DatasetError("label file changed since the manifest was written (sha256 differs)", file=f.label)
    listed = {f.image for f in facts} | {f.label for f in facts}
    if set(manifest.files) != listed:
        extra = sorted(set(manifest.files) ^ listed)[:5]
        raise DatasetError(f"manifest files and items disagree: {extra}", file=dataset_dir / MANIFEST)
    if dataset_id(manifest.classes, manifest.files) != manifest.dataset_id:
        raise DatasetError("dataset_id does not match the listed files", file=dataset_dir / MANIFEST)
    stats = qa.QAStats(manifest.classes)
    where: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    for f in facts:
        split = f.split or "all"
        where[f.sha256].add(split)
        if len(where[f.sha256]) > 1:
            raise DatasetError(
                f"identical images in two splits ({sorted(where[f.sha256])}): {first[f.sha256]} and {f.image}",
                file=f.image,
            )
        first.setdefault(f.sha256, f.image)
        stats.add(split, [b[0] for b in f.boxes], [(b[3], b[4]) for b in f.boxes])
    if manifest.kind == "dataset":
        data_yaml = yaml.safe_load((dataset_dir / "data.yaml").read_text(encoding="utf-8"))
        if Path(data_yaml.get("path", "")) != dataset_dir:
            raise DatasetError(
                f"data.yaml path is {data_yaml.get('path')!r}, not this folder; re-run the import here or fix 'path'",
                file=dataset_dir / "data.yaml",
            )
        if [data_yaml["names"][i] for i in range(len(data_yaml["names"]))] != manifest.classes:
            raise DatasetError("data.yaml names differ from the manifest classes", file=dataset_dir / "data.yaml")
    return {
        "dataset_id": manifest.dataset_id,
        "kind": manifest.kind,
        "status": "passed",
        "counts": stats.counts(),
    }
