"""The data step's two pure cores: pull annotations into a normalized dataset, then QA and split it.

``pull_annotations`` reads a CVAT export (folder, zip, ``s3://`` archive, or a live CVAT server
through cvat-sdk) and writes an *unsplit* normalized dataset::

    DIR/images/<name>   DIR/labels/<name>.txt   DIR/manifest.json (kind "annotations")

``validate_and_split`` runs the label QA on such a folder, splits it, and writes the
Ultralytics-ready dataset of ``docs/CONTRACTS.md``::

    DIR/images/{train,val[,test]}/  DIR/labels/{...}/  DIR/data.yaml  DIR/manifest.json
    DIR/qa_report.json  DIR/qa_report.png

Both write into a temporary folder next to ``out_dir`` and rename it into place at the end, so a
failure leaves nothing behind. Without ``overwrite`` the rename itself is the check that
``out_dir`` is still absent or empty (rename(2) refuses a non-empty target), so of two imports
into the same new folder exactly one succeeds. Every hidden temporary folder has a sibling
``.lock`` file its owner holds an exclusive ``flock`` on; a process killed mid-import releases it,
and the next import in the same parent folder removes such stale folders (never one whose
lock is held, never a folder without our lock file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import posixpath
import re
import shutil
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from tqdm import tqdm

from components.data import qa
from components.data.errors import DatasetError
from components.data.formats import Export, Item, export_root, read_export
from components.data.manifest import (
    MANIFEST,
    SCHEMA,
    dataset_id,
    read_manifest,
    sha256_bytes,
    sha256_file,
    write_json,
)
from components.data.split import stratified_split, subset_to_split

log = logging.getLogger(__name__)

DEFAULT_CLASSES = ("scratch", "bent")


# --------------------------------------------------------------------------- atomic output


_TEMP_NAME = re.compile(r"^\..+\.(tmp|work|pull|old)-[A-Za-z0-9_]+$")
# A lock file this young may belong to a process that has created but not yet locked it.
_LOCK_GRACE_S = 60.0


@contextmanager
def _temp_dir(out_dir: Path, kind: str) -> Iterator[Path]:
    """A hidden folder beside ``out_dir``, locked while this process lives, removed on exit.

    The ``flock`` on ``<folder>.lock`` is taken before the folder exists and the kernel drops it
    when the process dies, however it dies: that is how a later import tells a stale folder
    from one in use.
    """
    parent = out_dir.parent
    fd, lock_s = tempfile.mkstemp(dir=parent, prefix=f".{out_dir.name}.{kind}-", suffix=".lock")
    lock = Path(lock_s)
    path = Path(lock_s[: -len(".lock")])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.mkdir(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def clean_stale_temp(parent: Path) -> list[Path]:
    """Remove hidden temp folders in ``parent`` left by imports that were killed.

    Only folders with our ``.lock`` sibling whose lock nobody holds (and that is older than a
    minute) are removed; anything else is left alone.

    Returns:
        The folders removed.
    """
    import time

    removed: list[Path] = []
    try:
        candidates = [e for e in os.scandir(parent) if e.name.startswith(".") and e.name.endswith(".lock")]
    except FileNotFoundError:
        return removed
    for entry in candidates:
        name = entry.name[: -len(".lock")]
        if not _TEMP_NAME.match(name):
            continue
        try:
            if time.time() - entry.stat().st_mtime < _LOCK_GRACE_S:
                continue
            fd = os.open(entry.path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            try:
                same = os.fstat(fd).st_ino == os.stat(entry.path).st_ino
            except FileNotFoundError:
                same = False  # the owner finished and removed it meanwhile
            if same:
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                os.unlink(entry.path)
                removed.append(Path(parent) / name)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d stale temp folder(s) of killed imports in %s", len(removed), parent)
    return removed


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DatasetError("output path exists and is not a folder", file=out_dir)
        if any(out_dir.iterdir()) and not overwrite:
            raise DatasetError("output folder is not empty; choose another --out or pass --overwrite", file=out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out_dir.parent)


@contextmanager
def _staging(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp folder beside ``out_dir``; on success it replaces ``out_dir``, else it is removed."""
    _check_target(out_dir, overwrite)
    with _temp_dir(out_dir, "tmp") as stage:
        yield stage
        _commit(stage, out_dir, overwrite)


def _commit(stage: Path, out_dir: Path, overwrite: bool) -> None:
    """Move ``stage`` to ``out_dir`` in one rename.

    Raises:
        DatasetError: Without ``overwrite``, when ``out_dir`` was filled since the start (by a
            concurrent import): the rename refuses, and the other import's result stands.
    """
    if overwrite and out_dir.exists() and any(out_dir.iterdir()):
        with _temp_dir(out_dir, "old") as trash:
            os.replace(out_dir, trash)  # onto the empty placeholder: atomic
            os.replace(stage, out_dir)
        return
    try:
        # rename(2) replaces a missing or empty folder atomically and refuses a non-empty one:
        # the check and the commit are this one step.
        os.rename(stage, out_dir)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise DatasetError(
                "output folder was filled by another import while this one ran; nothing was changed. "
                "Choose another --out or pass --overwrite",
                file=out_dir,
            ) from None
        raise


# --------------------------------------------------------------------------- sources


def extract_zip(archive: Path, dest: Path) -> Path:
    """Extract a CVAT export zip safely and return the export root inside ``dest``.

    Raises:
        DatasetError: For a corrupt or truncated archive, or a member escaping ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                p = PurePosixPath(member.filename)
                if p.is_absolute() or ".." in p.parts:
                    raise DatasetError(f"archive member {member.filename!r} escapes the export folder", file=archive)
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"not a valid zip archive (corrupt or truncated: {e})", file=archive) from e
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read zip archive ({e})", file=archive) from e
    if not any(dest.iterdir()):
        raise DatasetError("the archive is empty: an empty export has nothing to import", file=archive)
    return export_root(dest)


def _resolve_source(source: str | Path, work: Path, s3_client) -> tuple[Path, dict]:
    src = str(source)
    if src.startswith("s3://"):
        from components.data.s3 import download_archive

        if s3_client is None:
            raise DatasetError(f"{src} needs an S3 client (set AWS_S3_ENDPOINT and credentials)")
        archive = download_archive(s3_client, src, work / "export.zip")
        return extract_zip(archive, work / "export"), {"type": "archive", "uri": src, "sha256": sha256_file(archive)}
    path = Path(src).expanduser()
    if not path.exists():
        raise DatasetError("source does not exist", file=path)
    if path.is_file():
        root = extract_zip(path, work / "export")
        return root, {"type": "archive", "uri": str(path.resolve()), "sha256": sha256_file(path)}
    if not any(path.iterdir()):
        raise DatasetError("the export folder is empty: nothing to import", file=path)
    return export_root(path), {"type": "directory", "uri": str(path.resolve())}


def _merge(exports: list[tuple[Export, str]]) -> Export:
    """Merge per-job exports of one task/project; repeated frame names get the job as a prefix."""
    first = exports[0][0]
    counts = Counter(it.name for e, _ in exports for it in e.items)
    items: list[Item] = []
    for e, tag in exports:
        if e.labels != first.labels:
            raise DatasetError(f"job exports disagree on labels: {first.labels} vs {e.labels}")
        for it in e.items:
            if counts[it.name] > 1:
                it.name = f"{tag}/{it.name}"
            items.append(it)
    other = Counter()
    for e, _ in exports:
        other.update(e.other_shapes)
    return Export(first.format, first.root, first.labels, items, other)


# --------------------------------------------------------------------------- classes


def map_classes(export: Export, classes: Sequence[str], map_by_name: bool) -> dict[str, int]:
    """Map the export's label names to class ids of ``classes``.

    Ids are never renumbered silently: unless ``map_by_name``, the export's labels must be
    ``classes`` in the same order (or a prefix of it), and every box's label must be one of them.

    With ``map_by_name`` ids follow names: a CVAT project whose labels were created in another
    order, or that has extra labels, maps ``scratch`` -> 0 and ``bent`` -> 1 by name. Boxes of an
    extra label (not in ``classes``) are left out of the dataset and counted in the manifest
    (``ignored_boxes``); only a required class the export does not have is an error, because a
    class with no label in the source can never be annotated and the model would learn it as
    background.

    Raises:
        DatasetError: For a box whose label is not in ``classes`` (naming its file and line), or a
            different label list/order, showing both lists (without ``map_by_name``); for a
            required class missing from the export's labels (with it).
    """
    classes = list(classes)
    if map_by_name:
        missing = [c for c in classes if c not in export.labels]
        if missing:
            raise DatasetError(
                f"required class(es) {missing} are not labels of the export (its labels are {export.labels}); "
                f"add {'them' if len(missing) > 1 else 'it'} to the CVAT project/task (`vinspect cvat setup` "
                f"creates {classes}) or pass --classes with the classes it has",
                file=export.root,
            )
        return {name: classes.index(name) for name in export.labels if name in classes}
    for it in export.items:
        for b in it.boxes:
            if b.label not in classes:
                raise DatasetError(
                    f"unknown label {b.label!r}: the export's labels are {export.labels}, the dataset's "
                    f"classes are {classes}. Add it to --classes, relabel it in CVAT, or pass --map-by-name "
                    "to map by name and leave other labels out",
                    file=b.file,
                    line=b.line,
                )
    if export.labels != classes[: len(export.labels)]:
        raise DatasetError(
            f"the export's labels {export.labels} differ from the classes {classes} in names or order. "
            f"Class ids are never renumbered silently: pass --classes {','.join(export.labels)} to keep the "
            f"export's ids, or --map-by-name to map by name onto {classes}",
            file=export.root,
        )
    return {name: classes.index(name) for name in export.labels if name in classes}


# --------------------------------------------------------------------------- pull


def pull_annotations(
    source: str | Path | None,
    out_dir: Path,
    *,
    fmt: str | None = None,
    classes: Sequence[str] = DEFAULT_CLASSES,
    s3_client=None,
    cvat_client=None,
    task_id: int | None = None,
    project_id: int | None = None,
    include_all_jobs: bool = False,
    map_by_name: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    cvat_timeout: float = 600.0,
    cvat_poll: float = 2.0,
) -> dict:
    """Read a CVAT export (or pull one from CVAT) into a normalized, unsplit dataset.

    Args:
        source: Export folder, ``.zip`` or ``s3://bucket/key.zip``; ignored (may be None) when
            ``cvat_client`` and a task or project id are given.
        out_dir: Where to write ``images/``, ``labels/`` and ``manifest.json``; must be absent or empty
            unless ``overwrite``.
        fmt: Export format (detected when None); for CVAT, the format to export in
            (default "Ultralytics YOLO Detection 1.0").
        classes: Class names in id order.
        s3_client: boto3 S3 client, needed for ``s3://`` sources.
        cvat_client: A logged-in ``cvat_sdk.Client``.
        task_id: CVAT task to export.
        project_id: CVAT project to export.
        include_all_jobs: Also take jobs that are not yet completed (by default only completed annotation
            jobs, any stage).
        map_by_name: Map label names onto ``classes`` when the export's order differs.
        overwrite: Replace a non-empty ``out_dir``.
        progress: Show a progress bar.
        cvat_timeout: Seconds to wait for a CVAT export to be prepared.
        cvat_poll: Seconds between status polls.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        DatasetError: Bad input, naming the file and line; ``out_dir`` is left untouched.
        CVATError: The CVAT server refused or failed.
    """
    out_dir = Path(out_dir).resolve()
    classes = [c.strip() for c in classes if c.strip()]
    if len(set(classes)) != len(classes) or not classes:
        raise DatasetError(f"classes must be distinct, non-empty names, got {classes}")
    _check_target(out_dir, overwrite)
    with _temp_dir(out_dir, "work") as work:
        if cvat_client is not None and (task_id is not None or project_id is not None):
            from components.data.cvat_pull import ULTRALYTICS_FORMAT, export_from_cvat

            cvat_fmt = fmt or ULTRALYTICS_FORMAT
            archives, source_info = export_from_cvat(
                cvat_client,
                work,
                task_id=task_id,
                project_id=project_id,
                fmt=cvat_fmt,
                include_all_jobs=include_all_jobs,
                timeout=cvat_timeout,
                poll=cvat_poll,
            )
            parts = []
            for i, (archive, tag) in enumerate(archives):
                root = extract_zip(archive, work / f"export_{i}")
                parts.append((read_export(root, cvat_fmt), tag))
            export = parts[0][0] if len(parts) == 1 else _merge(parts)
        else:
            if source is None:
                raise DatasetError("no source: give an export folder, zip or s3:// URI, or a CVAT task/project")
            root, source_info = _resolve_source(source, work, s3_client)
            export = read_export(root, fmt)
        source_info["format"] = export.format
        return _write_normalized(export, out_dir, classes, map_by_name, source_info, overwrite, progress)


def _write_normalized(
    export: Export,
    out_dir: Path,
    classes: list[str],
    map_by_name: bool,
    source_info: dict,
    overwrite: bool,
    progress: bool,
) -> dict:
    if not export.items:
        raise DatasetError("the export has no images: an empty export has nothing to import", file=export.root)
    if not any(it.boxes for it in export.items):
        raise DatasetError(
            f"the export has {len(export.items)} image(s) but no rectangles"
            + (f" (only {dict(export.other_shapes)})" if export.other_shapes else "")
            + "; draw boxes in CVAT (detection needs rectangles)",
            file=export.root,
        )
    class_ids = map_classes(export, classes, map_by_name)
    subsets = sorted({it.subset for it in export.items if it.subset})
    stats = qa.QAStats(classes)
    files: dict[str, str] = {}
    ignored_boxes: dict[str, int] = {}
    items_out = []
    with _staging(out_dir, overwrite) as stage:
        (stage / "images").mkdir()
        (stage / "labels").mkdir()
        stage_s = str(stage)
        made = {os.path.join(stage_s, "images"), os.path.join(stage_s, "labels")}
        root_prefix = str(export.root) + os.sep
        items = export.items
        for idx in tqdm(range(len(items)), desc="import", unit="img", disable=not progress):
            it = items[idx]
            items[idx] = None  # release parsed annotations as we go: memory stays flat
            rel_img = it.image[len(root_prefix) :] if it.image.startswith(root_prefix) else it.image
            try:
                with open(it.image, "rb") as fh:
                    data = fh.read()
            except OSError as e:
                raise DatasetError(f"cannot read image ({e.strerror})", file=rel_img) from e
            width, height = qa.check_image(data, rel_img)
            if it.size is not None and tuple(it.size) != (width, height):
                raise DatasetError(
                    f"annotation says {it.name!r} is {it.size[0]}x{it.size[1]} but the image is {width}x{height}",
                    file=it.ann_file,
                    line=it.ann_line,
                )
            lines, ids, sizes = [], [], []
            for b in it.boxes:
                if b.label not in class_ids:  # an extra label, mapped by name: counted, not trained on
                    ignored_boxes[b.label] = ignored_boxes.get(b.label, 0) + 1
                    continue
                cx, cy, w, h = qa.check_box(b.cx, b.cy, b.w, b.h, width, height, b.file, b.line)
                cid = class_ids[b.label]
                lines.append(qa.format_label_line(cid, cx, cy, w, h))
                ids.append(cid)
                sizes.append((w, h))
            label_bytes = ("\n".join(lines) + "\n" if lines else "").encode()
            img_rel = f"images/{it.name}"
            lbl_rel = f"labels/{posixpath.splitext(it.name)[0]}.txt"
            for rel, payload in ((img_rel, data), (lbl_rel, label_bytes)):
                # Plain strings: per-file Path objects cost time, and pathlib interns every name.
                dest = os.path.join(stage_s, rel)
                parent = os.path.dirname(dest)
                if parent not in made:  # one mkdir per folder, not per file
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                with open(dest, "wb") as fh:
                    fh.write(payload)
                files[rel] = sha256_bytes(payload)
            del data
            items_out.append(
                {
                    "name": it.name,
                    "image": img_rel,
                    "label": lbl_rel,
                    "subset": it.subset,
                    "width": width,
                    "height": height,
                }
            )
            stats.add(it.subset or "all", ids, sizes)
        manifest = {
            "schema": SCHEMA,
            "kind": "annotations",
            "dataset_id": dataset_id(classes, files),
            "classes": classes,
            "source": source_info,
            "source_labels": export.labels,
            "class_map": {k: v for k, v in class_ids.items()},
            "ignored_labels": [lab for lab in export.labels if lab not in class_ids],
            "ignored_boxes": dict(sorted(ignored_boxes.items())),
            "other_shapes": dict(sorted(export.other_shapes.items())),
            "orphan_labels": export.orphan_labels,
            "subsets": subsets,
            "counts": stats.counts(),
            "files": files,
            "items": items_out,
        }
        write_json(stage / MANIFEST, manifest)
    if export.other_shapes:
        log.info("ignored non-rectangle annotations: %s", dict(export.other_shapes))
    if ignored_boxes:
        log.warning("left out boxes of labels that are not classes %s: %s", classes, ignored_boxes)
    return manifest


# --------------------------------------------------------------------------- validate and split


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


def _scan(in_dir: Path, manifest: dict, progress: bool, trusted: bool = False) -> list[_Fact]:
    """QA every item of a dataset folder against its manifest; returns per-item facts.

    ``trusted`` is only for a folder this process has just written and checked (``import_dataset``):
    images are not read again, their digest and size come from the manifest.
    """
    classes = manifest["classes"]
    files = manifest["files"]
    out = []
    in_s = str(in_dir)
    for entry in tqdm(manifest["items"], desc="validate", unit="img", disable=not progress):
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
            text = raw.decode("utf-8")
        except FileNotFoundError:
            raise DatasetError("label file listed in manifest.json is missing", file=entry["label"]) from None
        except UnicodeDecodeError as e:
            raise DatasetError(f"label file is not UTF-8 text ({e.reason})", file=entry["label"]) from e
        boxes = []
        for cls, cx, cy, w, h, line in qa.parse_label_text(text, entry["label"], len(classes)):
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
) -> dict:
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
    if manifest_in.get("kind") != "annotations":
        raise DatasetError(
            "this folder is already split; run `vinspect data validate` on it instead", file=in_dir / MANIFEST
        )
    classes = list(manifest_in["classes"])
    _check_target(out_dir, overwrite)
    facts = _scan(in_dir, manifest_in, progress, trusted=_move)
    manifest_in["items"] = manifest_in["files"] = None  # facts hold what is needed; keep memory flat
    warnings: list[str] = []
    orphans = list(manifest_in.get("orphan_labels") or [])
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
    with _staging(out_dir, overwrite) as stage:
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
            "other_shapes": manifest_in.get("other_shapes", {}),
            "ignored_labels": manifest_in.get("ignored_labels", []),
            "ignored_boxes": manifest_in.get("ignored_boxes", {}),
            "orphan_labels": orphans,
            "warnings": warnings,
            "split": method,
        }
        write_json(stage / "qa_report.json", report)
        qa.write_report_png(stats, stage / "qa_report.png", title=did)
        manifest = {
            "schema": SCHEMA,
            "kind": "dataset",
            "dataset_id": did,
            "parent_id": manifest_in["dataset_id"],
            "classes": classes,
            "source": manifest_in.get("source", {}),
            "source_labels": manifest_in.get("source_labels", []),
            "class_map": manifest_in.get("class_map", {}),
            "other_shapes": manifest_in.get("other_shapes", {}),
            "split": method,
            "splits": split_names,
            "counts": counts,
            "files": files,
            "items": items_out,
        }
        write_json(stage / MANIFEST, manifest)
    return manifest


def import_dataset(
    source: str | Path | None,
    out_dir: Path,
    *,
    val: float = 0.2,
    test: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    **kw,
) -> dict:
    """Pull and validate/split in one go (what ``vinspect data import`` does).

    Args:
        source: As for :func:`pull_annotations`.
        out_dir: Final dataset folder.
        val: Validation fraction.
        test: Test fraction.
        seed: Split seed.
        overwrite: Replace a non-empty ``out_dir``.
        progress: Show progress bars.
        **kw: Passed to :func:`pull_annotations` (fmt, classes, s3_client, cvat_client, ...).

    Returns:
        The final manifest.
    """
    out_dir = Path(out_dir).resolve()
    _check_target(out_dir, overwrite)
    with _temp_dir(out_dir, "pull") as tmp:
        stage1 = tmp / "annotations"
        pull_annotations(source, stage1, progress=progress, **kw)
        # The intermediate folder is ours, so its images are moved rather than copied again.
        return validate_and_split(
            stage1, out_dir, val=val, test=test, seed=seed, overwrite=overwrite, progress=progress, _move=True
        )


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
        if manifest["files"].get(f.label) != sha256_file(os.path.join(dataset_dir, f.label)):
            raise DatasetError("label file changed since the manifest was written (sha256 differs)", file=f.label)
    listed = {f.image for f in facts} | {f.label for f in facts}
    if set(manifest["files"]) != listed:
        extra = sorted(set(manifest["files"]) ^ listed)[:5]
        raise DatasetError(f"manifest files and items disagree: {extra}", file=dataset_dir / MANIFEST)
    if dataset_id(manifest["classes"], manifest["files"]) != manifest["dataset_id"]:
        raise DatasetError("dataset_id does not match the listed files", file=dataset_dir / MANIFEST)
    stats = qa.QAStats(manifest["classes"])
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
    if manifest["kind"] == "dataset":
        data_yaml = yaml.safe_load((dataset_dir / "data.yaml").read_text(encoding="utf-8"))
        if Path(data_yaml.get("path", "")) != dataset_dir:
            raise DatasetError(
                f"data.yaml path is {data_yaml.get('path')!r}, not this folder; re-run the import here or fix 'path'",
                file=dataset_dir / "data.yaml",
            )
        if [data_yaml["names"][i] for i in range(len(data_yaml["names"]))] != manifest["classes"]:
            raise DatasetError("data.yaml names differ from the manifest classes", file=dataset_dir / "data.yaml")
    return {
        "dataset_id": manifest["dataset_id"],
        "kind": manifest["kind"],
        "status": "passed",
        "counts": stats.counts(),
    }
