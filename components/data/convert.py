"""Converting a CVAT export into a normalized, unsplit dataset: :func:`pull_annotations`.

``pull_annotations`` reads a CVAT export (folder, zip, ``s3://`` archive through
:mod:`components.data.sources`, or a live CVAT server through :mod:`components.data.cvat_pull`),
maps its labels onto the dataset's classes (:func:`map_classes`), checks every image and box,
and writes::

    DIR/images/<name>   DIR/labels/<name>.txt   DIR/manifest.json (kind "annotations")

through :func:`components.data.staging.staging`, so a failure leaves ``DIR`` untouched.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from components.data import qa
from components.data.errors import DatasetError
from components.data.formats import Export, read_export
from components.data.manifest import Manifest, dataset_id, sha256_bytes, write_manifest
from components.data.sources import extract_zip, merge_exports, resolve_source
from components.data.staging import check_target, staging, temp_dir

log = logging.getLogger(__name__)

DEFAULT_CLASSES = ("scratch", "bent")


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
) -> Manifest:
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
    check_target(out_dir, overwrite)
    with temp_dir(out_dir, "work") as work:
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
            export = parts[0][0] if len(parts) == 1 else merge_exports(parts)
        else:
            if source is None:
                raise DatasetError("no source: give an export folder, zip or s3:// URI, or a CVAT task/project")
            root, source_info = resolve_source(source, work, s3_client)
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
) -> Manifest:
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
    with staging(out_dir, overwrite) as stage:
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
        manifest = Manifest(
            kind="annotations",
            dataset_id=dataset_id(classes, files),
            classes=classes,
            source=source_info,
            source_labels=export.labels,
            class_map=dict(class_ids),
            ignored_labels=[lab for lab in export.labels if lab not in class_ids],
            ignored_boxes=dict(sorted(ignored_boxes.items())),
            other_shapes=dict(sorted(export.other_shapes.items())),
            orphan_labels=export.orphan_labels,
            subsets=subsets,
            counts=stats.counts(),
            files=files,
            items=items_out,
        )
        write_manifest(stage, manifest)
    if export.other_shapes:
        log.info("ignored non-rectangle annotations: %s", dict(export.other_shapes))
    if ignored_boxes:
        log.warning("left out boxes of labels that are not classes %s: %s", classes, ignored_boxes)
    return manifest
