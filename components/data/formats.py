"""Readers for the annotation export formats CVAT writes.

Every reader turns an unpacked export folder into an :class:`Export`: the label names in the
export's own order, and one :class:`Item` per image with its rectangles in normalized
``(cx, cy, w, h)`` coordinates and the file/line each came from, so later checks can name them.
Readers never touch pixels; the importer reads each image once while copying it.

Supported (names as CVAT's export menu shows them):

- ``YOLO 1.1``: ``obj.names``, ``obj.data``, ``<subset>.txt``, ``obj_<subset>_data/``.
- ``Ultralytics YOLO Detection 1.0``: ``data.yaml`` with ``names`` and subsets given either as
  image folders (``images/train``) or as list files (``train.txt``).
- ``CVAT for images 1.1``: ``annotations.xml`` of a task, job or project (project exports carry a
  ``subset`` per image and keep images under ``images/<subset>/``); Datumaro's per-subset
  ``<subset>.xml`` too. Rectangles are used; every other shape is counted and reported.
- ``COCO 1.0``: ``annotations/instances_<subset>.json``; annotations without a segmentation are
  rectangles, polygons and masks are counted and reported.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.data import qa
from components.data.errors import DatasetError

YOLO11 = "YOLO 1.1"
ULTRALYTICS = "Ultralytics YOLO Detection 1.0"
CVAT_IMAGES = "CVAT for images 1.1"
COCO = "COCO 1.0"
FORMATS = (YOLO11, ULTRALYTICS, CVAT_IMAGES, COCO)

_ALIASES = {
    "yolo": YOLO11,
    "yolo 1.1": YOLO11,
    "yolo11": YOLO11,
    "ultralytics": ULTRALYTICS,
    "ultralytics yolo detection 1.0": ULTRALYTICS,
    "ultralytics yolo detection": ULTRALYTICS,
    "yolov8": ULTRALYTICS,
    "cvat": CVAT_IMAGES,
    "cvat for images 1.1": CVAT_IMAGES,
    "cvat for images": CVAT_IMAGES,
    "coco": COCO,
    "coco 1.0": COCO,
}

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Subset names CVAT/Datumaro use for "no subset".
_DEFAULT_SUBSETS = {"", "default"}


@dataclass(frozen=True, slots=True)
class Box:
    """One rectangle, normalized to the image size the export declares (or the real one for YOLO).

    Attributes:
        label: Label name as the export calls it.
        cx: Box centre x, 0..1.
        cy: Box centre y, 0..1.
        w: Box width, 0..1.
        h: Box height, 0..1.
        file: Annotation file the box came from (relative to the export root).
        line: 1-based line in ``file`` (None where the format has no lines, e.g. COCO JSON).
    """

    label: str
    cx: float
    cy: float
    w: float
    h: float
    file: str
    line: int | None = None


@dataclass(slots=True)
class Item:
    """One image of the export.

    Attributes:
        name: Path of the image inside the dataset (posix, with extension), unique in the export.
        image: The image file on disk (a plain string: Path objects cost time and memory per item).
        boxes: Its rectangles.
        subset: CVAT subset (``train``, ``Validation``...), None when the export has none.
        size: ``(width, height)`` the annotation file declares, if it declares one.
        ann_file: Annotation file describing the item (for error messages).
        ann_line: Line of the item in ``ann_file``.
    """

    name: str
    image: str
    boxes: list[Box] = field(default_factory=list)
    subset: str | None = None
    size: tuple[int, int] | None = None
    ann_file: str = ""
    ann_line: int | None = None


@dataclass
class Export:
    """A parsed export.

    Attributes:
        format: Canonical format name.
        root: The export folder.
        labels: Label names in the export's order (for YOLO formats: index = class id).
        items: One entry per image.
        other_shapes: Non-rectangle annotations counted by kind (polygon, mask, points...).
        orphan_labels: Label files (relative to ``root``) that belong to no image of the export:
            ignored, and reported as a warning by the QA.
    """

    format: str
    root: Path
    labels: list[str]
    items: list[Item]
    other_shapes: Counter = field(default_factory=Counter)
    orphan_labels: list[str] = field(default_factory=list)


def _orphans(root: str, folders: list[str], used: set[str]) -> list[str]:
    """``.txt`` files under ``folders`` that no image's label path claims (relative to ``root``)."""
    out = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for d, _, files in os.walk(folder):
            for f in files:
                path = os.path.join(d, f)
                if f.endswith(".txt") and path not in used:
                    out.append(_rel(root, path))
    return sorted(set(out))


def canonical_format(name: str) -> str:
    """Return the canonical format name for ``name`` (case-insensitive; short aliases allowed).

    Raises:
        DatasetError: If the format is not one this importer reads.
    """
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise DatasetError(
        f"unknown export format {name!r}; use one of: {', '.join(FORMATS)} "
        f"(or the short names yolo, ultralytics, cvat, coco)"
    )


def export_root(path: Path) -> Path:
    """Descend through single wrapping folders (zips made by hand often have one)."""
    while True:
        entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir() and not _looks_like_export(path):
            path = entries[0]
        else:
            return path


def _looks_like_export(path: Path) -> bool:
    try:
        detect_format(path)
    except DatasetError:
        return False
    return True


def detect_format(root: Path) -> str:
    """Guess the export format from the files at the export root.

    Raises:
        DatasetError: If nothing recognisable is there (e.g. an empty export).
    """
    if (root / "obj.names").is_file():
        return YOLO11
    if (root / "data.yaml").is_file():
        return ULTRALYTICS
    if (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*.json")):
        return COCO
    for xml_file in sorted(root.glob("*.xml")):
        if _xml_root_tag(xml_file) == "annotations":
            return CVAT_IMAGES
    present = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else []
    raise DatasetError(
        "cannot tell the export format: expected obj.names (YOLO 1.1), data.yaml (Ultralytics YOLO "
        "Detection 1.0), annotations.xml (CVAT for images 1.1) or annotations/instances_*.json "
        f"(COCO 1.0) at the export root; found {present or 'nothing'}. An empty export has no "
        "annotations to import; pass --format if the layout is unusual",
        file=root,
    )


def read_export(root: Path, fmt: str | None = None) -> Export:
    """Parse the export at ``root`` (format detected unless given).

    Raises:
        DatasetError: Naming the file and line of the first problem found.
    """
    fmt = canonical_format(fmt) if fmt else detect_format(root)
    reader = {YOLO11: _read_yolo11, ULTRALYTICS: _read_ultralytics, CVAT_IMAGES: _read_cvat, COCO: _read_coco}[fmt]
    export = reader(root)
    _make_names_unique(export.items)
    return export


# --------------------------------------------------------------------------- helpers


def _rel(root: Path | str, path: Path | str) -> str:
    """``path`` relative to ``root`` (posix), or unchanged when outside it; plain strings, no Path
    objects, because this runs per file and pathlib interns every name it parses."""
    prefix = os.path.join(str(root), "")
    path = str(path)
    return path[len(prefix) :].replace(os.sep, "/") if path.startswith(prefix) else path


def _stem(name: str) -> str:
    return posixpath.splitext(name)[0]


def _norm_subset(subset: str | None) -> str | None:
    if subset is None or subset.strip().lower() in _DEFAULT_SUBSETS:
        return None
    return subset.strip()


def _make_names_unique(items: list[Item]) -> None:
    """Project exports repeat frame names across subsets; prefix those names with the subset."""
    counts = Counter(it.name for it in items)
    seen: set[str] = set()
    for it in items:
        if counts[it.name] > 1:
            it.name = f"{it.subset or 'default'}/{it.name}"
        if it.name in seen:
            raise DatasetError(f"image {it.name!r} appears twice in the export", file=it.ann_file, line=it.ann_line)
        seen.add(it.name)
    stems = Counter(_stem(it.name) for it in items)
    for it in items:
        stem = _stem(it.name)
        if stems[stem] > 1:
            raise DatasetError(
                f"two images share the name {stem!r} with different extensions; their label files "
                "would collide. Rename one in CVAT",
                file=it.ann_file,
                line=it.ann_line,
            )


def _parse_yolo_labels(label_file: str, rel: str, names: list[str]) -> list[Box]:
    """Parse a YOLO label file (class cx cy w h per line) against the class list ``names``.

    A missing label file means an image without boxes (CVAT omits them in some versions).
    """
    try:
        with open(label_file, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return []
    text = qa.decode_label(raw, rel)
    return [
        Box(names[cls], cx, cy, w, h, rel, line) for cls, cx, cy, w, h, line in qa.parse_label_text(text, rel, names)
    ]


_OUTSIDE = "every path an export names must lie inside the export"


def _check_named(named: str, file: str | Path | None, line: int | None) -> str:
    """Refuse a path named by an export that is absolute or climbs out (``..``), from its text alone.

    Returns:
        The name with forward slashes.

    Raises:
        DatasetError: Naming ``file:line``; nothing outside the export has been looked at.
    """
    p = named.strip().replace("\\", "/")
    parts = p.split("/")
    if p.startswith("/") or re.match(r"^[A-Za-z]:", p) or ".." in parts:
        raise DatasetError(f"path {named.strip()!r} points outside the export; {_OUTSIDE}", file=file, line=line)
    return p


def _check_real(root: str | Path, path: str | Path, named: str, file: str | Path | None, line: int | None) -> None:
    """Refuse ``path`` when it resolves (through symlinks) outside ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(os.path.join(real_root, "")):
        raise DatasetError(
            f"path {named.strip()!r} resolves outside the export (a symlink?); {_OUTSIDE}", file=file, line=line
        )


def _first_file(root: str | Path, candidates: list, named: str, file: str | Path | None, line: int | None):
    """The first candidate that is a file, each confined to ``root`` before it is looked at."""
    for c in candidates:
        _check_real(root, c, named, file, line)
        if os.path.isfile(c):
            return c
    return candidates[0]


def _resolve_listed(root: str, listed: str, file: str | Path | None = None, line: int | None = None) -> str:
    """Resolve a path from a YOLO list file; CVAT writes them as ``data/<path inside export>``.

    Raises:
        DatasetError: The path is absolute, climbs out with ``..`` or resolves outside the
            export; the message names ``file:line``.
    """
    p = _check_named(listed, file, line)
    candidates = []
    # The common case first: CVAT's "data/" prefix stands for the export root.
    if p.startswith("data/"):
        candidates.append(os.path.join(root, p[len("data/") :]))
    if p.startswith("./"):
        candidates.append(os.path.join(root, p[2:]))
    candidates.append(os.path.join(root, p))
    return _first_file(root, candidates, listed, file, line)


def _check_label(root: str, label: str, file: str | Path | None, line: int | None) -> None:
    """A label file beside a confined image is inside too, unless it is itself a symlink."""
    if os.path.islink(label):
        _check_real(root, label, _rel(root, label), file, line)


def _label_for_image(image: str) -> str:
    """Ultralytics convention: the last ``images`` folder in the path becomes ``labels``."""
    parts = image.split(os.sep)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return os.path.splitext(os.sep.join(parts))[0] + ".txt"


def _name_under(base: str, image: str) -> str:
    """The image's path below ``base`` (posix), or its file name when it lies elsewhere."""
    rel = _rel(base, image)
    return rel if rel != image else os.path.basename(image)


# --------------------------------------------------------------------------- YOLO 1.1


def _read_yolo11(root: Path) -> Export:
    names_file = root / "obj.names"
    if not names_file.is_file():
        raise DatasetError("YOLO 1.1 export without obj.names", file=root)
    names = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    subsets: dict[str, Path] = {}
    data_file = root / "obj.data"
    if data_file.is_file():
        for lineno, raw in enumerate(data_file.read_text(encoding="utf-8").splitlines(), start=1):
            if "=" not in raw:
                continue
            key, value = (s.strip() for s in raw.split("=", 1))
            if key in ("classes", "names", "backup"):
                if key == "classes" and not value.isdigit():
                    raise DatasetError(f"classes = {value!r} is not a number", file="obj.data", line=lineno)
                if key == "classes" and int(value) != len(names):
                    raise DatasetError(
                        f"classes = {value} but obj.names lists {len(names)} names", file="obj.data", line=lineno
                    )
                continue
            subset = "val" if key == "valid" else key
            subsets[subset] = Path(_resolve_listed(str(root), value, "obj.data", lineno))
    else:
        # obj.data is optional for Datumaro: fall back to the <subset>.txt list files.
        for d in sorted(root.glob("obj_*_data")):
            subset = d.name[len("obj_") : -len("_data")]
            subsets[subset] = root / f"{subset}.txt"
    items: list[Item] = []
    used_labels: set[str] = set()
    data_dirs: list[str] = []
    for subset, list_file in subsets.items():
        rel_list = _rel(root, list_file)
        if not list_file.is_file():
            raise DatasetError(f"subset list for {subset!r} is missing", file=rel_list)
        data_dir = root / f"obj_{subset if subset != 'val' else 'valid'}_data"
        if not data_dir.is_dir():
            data_dir = root / f"obj_{subset}_data"
        root_s, data_s = str(root), str(data_dir)
        data_dirs.append(data_s)
        for lineno, raw in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not raw.strip():
                continue
            image = _resolve_listed(root_s, raw, rel_list, lineno)
            if not os.path.isfile(image):
                raise DatasetError(
                    f"listed image {raw.strip()!r} is missing from the export", file=rel_list, line=lineno
                )
            label = os.path.splitext(image)[0] + ".txt"
            _check_label(root_s, label, rel_list, lineno)
            used_labels.add(label)
            boxes = _parse_yolo_labels(label, _rel(root_s, label), names)
            items.append(Item(_name_under(data_s, image), image, boxes, _norm_subset(subset), None, rel_list, lineno))
    return Export(YOLO11, root, names, items, orphan_labels=_orphans(str(root), data_dirs, used_labels))


# --------------------------------------------------------------------------- Ultralytics


def _read_ultralytics(root: Path) -> Export:
    data_file = root / "data.yaml"
    try:
        data = yaml.safe_load(data_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DatasetError(
            f"data.yaml is not valid YAML: {e}", file="data.yaml", line=mark.line + 1 if mark else None
        ) from e
    raw_names = data.get("names")
    if isinstance(raw_names, dict):
        ids = sorted(int(k) for k in raw_names)
        if ids != list(range(len(ids))):
            raise DatasetError(f"names must have ids 0..{len(ids) - 1}, got {ids}", file="data.yaml")
        names = [str(raw_names[k] if k in raw_names else raw_names[str(k)]) for k in ids]
    elif isinstance(raw_names, list):
        names = [str(n) for n in raw_names]
    else:
        raise DatasetError("data.yaml has no 'names' list", file="data.yaml")
    root_s = str(root)
    items: list[Item] = []
    used_labels: set[str] = set()
    for subset, value in data.items():
        if subset in ("path", "names", "nc", "download") or not isinstance(value, str):
            continue
        target = root / _check_named(value, "data.yaml", None)
        _check_real(root, target, value, "data.yaml", None)
        if target.is_dir():
            images = sorted(
                os.path.join(d, f)
                for d, _, fs in os.walk(target)
                for f in fs
                if os.path.splitext(f)[1].lower() in IMAGE_EXTS
            )
            listing = [(img, "data.yaml", None) for img in images]
            img_base = str(target)
        elif target.is_file():
            listing = []
            for lineno, raw in enumerate(target.read_text(encoding="utf-8").splitlines(), start=1):
                if raw.strip():
                    listing.append((_resolve_listed(root_s, raw, value, lineno), value, lineno))
            img_base = os.path.join(root_s, "images", subset)
        else:
            raise DatasetError(f"subset {subset!r} points at {value!r}, which is not in the export", file="data.yaml")
        for image, ann_file, lineno in listing:
            if not os.path.isfile(image):
                raise DatasetError(
                    f"listed image {_rel(root_s, image)!r} is missing from the export", file=ann_file, line=lineno
                )
            _check_real(root_s, image, _rel(root_s, image), ann_file, lineno)  # a symlink in a folder
            label = _label_for_image(image)
            _check_label(root_s, label, ann_file, lineno)
            used_labels.add(label)
            boxes = _parse_yolo_labels(label, _rel(root_s, label), names)
            items.append(Item(_name_under(img_base, image), image, boxes, _norm_subset(subset), None, ann_file, lineno))
    orphans = _orphans(root_s, [os.path.join(root_s, "labels")], used_labels)
    return Export(ULTRALYTICS, root, names, items, orphan_labels=orphans)


# --------------------------------------------------------------------------- CVAT for images 1.1

# Label types that can never carry a rectangle, so they are not candidates for class names.
_NON_BOX_LABEL_TYPES = {"skeleton", "points", "polyline", "polygon", "mask", "ellipse", "cuboid", "tag", "tags"}
_SHAPES = {"polygon", "polyline", "points", "mask", "skeleton", "cuboid", "ellipse", "tag"}


def _xml_root_tag(path: Path) -> str | None:
    try:
        for _event, elem in ET.iterparse(path, events=("start",)):
            return elem.tag
    except ET.ParseError:
        return None
    return None


def _parse_xml_with_lines(path: Path, rel: str) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Parse XML keeping each element's line number, so errors can point at the line."""
    builder = ET.TreeBuilder()
    parser = xml.parsers.expat.ParserCreate()
    lines: dict[ET.Element, int] = {}

    def start(tag, attrs):
        lines[builder.start(tag, attrs)] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        with path.open("rb") as f:
            parser.ParseFile(f)
    except xml.parsers.expat.ExpatError as e:
        raise DatasetError(
            f"not well-formed XML: {xml.parsers.expat.ErrorString(e.code)}", file=rel, line=e.lineno
        ) from e
    return builder.close(), lines


def _float_attr(el: ET.Element, name: str, rel: str, line: int | None) -> float:
    value = el.get(name)
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DatasetError(f"<{el.tag}> has no numeric {name!r} (got {value!r})", file=rel, line=line) from None
    if not math.isfinite(v):
        raise DatasetError(f"<{el.tag}> {name}={value!r} is not finite", file=rel, line=line)
    return v


def _read_cvat(root: Path) -> Export:
    xml_files = [p for p in sorted(root.glob("*.xml")) if _xml_root_tag(p) == "annotations"]
    if not xml_files:
        raise DatasetError("no annotations.xml in the export", file=root)
    labels: list[str] = []
    items: list[Item] = []
    other: Counter = Counter()
    for xml_file in xml_files:
        rel = _rel(root, xml_file)
        tree, lines = _parse_xml_with_lines(xml_file, rel)
        file_subset = None if xml_file.stem == "annotations" else xml_file.stem
        meta_labels = tree.findall("./meta/*/labels/label")
        for lab in meta_labels:
            name = (lab.findtext("name") or "").strip()
            ltype = (lab.findtext("type") or "any").strip().lower()
            if lab.find("parent") is not None or ltype in _NON_BOX_LABEL_TYPES:
                continue
            if name and name not in labels:
                labels.append(name)
        by_frame: dict[int, Item] = {}
        for img in tree.iter("image"):
            line = lines.get(img)
            name = img.get("name")
            if not name:
                raise DatasetError("<image> without a name", file=rel, line=line)
            subset = _norm_subset(img.get("subset") or file_subset)
            width = int(_float_attr(img, "width", rel, line))
            height = int(_float_attr(img, "height", rel, line))
            _check_named(name, rel, line)
            candidates = []
            if img.get("subset"):
                candidates.append(root / "images" / _check_named(img.get("subset"), rel, line) / name)
            candidates += [root / "images" / name, root / name]
            image = _first_file(root, candidates, name, rel, line)
            if not image.is_file():
                raise DatasetError(
                    f"image {name!r} is missing from the export (looked for {_rel(root, candidates[0])})",
                    file=rel,
                    line=line,
                )
            item = Item(name, str(image), [], subset, (width, height), rel, line)
            for child in img:
                if child.tag == "box":
                    box = _cvat_box(child, width, height, rel, lines.get(child), labels, other)
                    if box is not None:
                        item.boxes.append(box)
                elif child.tag in _SHAPES:
                    other[child.tag] += 1
            if img.get("id") is not None:
                by_frame[int(img.get("id"))] = item
            items.append(item)
        # Track mode (annotations made with tracking) stores boxes per frame under <track>.
        for track in tree.iter("track"):
            label = track.get("label", "")
            for child in track:
                if child.tag != "box":
                    other[child.tag] += 1
                    continue
                if child.get("outside") == "1":
                    continue
                frame = int(_float_attr(child, "frame", rel, lines.get(child)))
                item = by_frame.get(frame)
                if item is None:
                    raise DatasetError(
                        f"track box on frame {frame}, which has no <image>", file=rel, line=lines.get(child)
                    )
                child.set("label", label)
                box = _cvat_box(child, item.size[0], item.size[1], rel, lines.get(child), labels, other)
                if box is not None:
                    item.boxes.append(box)
    return Export(CVAT_IMAGES, root, labels, items, other)


def _cvat_box(el, width, height, rel, line, labels, other) -> Box | None:
    if float(el.get("rotation", "0") or 0) != 0.0:
        other["rotated box"] += 1
        return None
    label = el.get("label", "")
    if label not in labels:
        raise DatasetError(f"box label {label!r} is not a declared rectangle label {labels}", file=rel, line=line)
    xtl, ytl, xbr, ybr = (_float_attr(el, a, rel, line) for a in ("xtl", "ytl", "xbr", "ybr"))
    if width <= 0 or height <= 0:
        raise DatasetError(f"image size {width}x{height} is not positive", file=rel, line=line)
    return Box(
        label, (xtl + xbr) / 2 / width, (ytl + ybr) / 2 / height, (xbr - xtl) / width, (ybr - ytl) / height, rel, line
    )


# --------------------------------------------------------------------------- COCO 1.0


def _read_coco(root: Path) -> Export:
    ann_dir = root / "annotations"
    files = sorted(ann_dir.glob("instances_*.json"))
    if not files:
        raise DatasetError("no annotations/instances_*.json in the export", file=root)
    labels: list[str] = []
    items: list[Item] = []
    other: Counter = Counter()
    for f in files:
        rel = _rel(root, f)
        subset_raw = f.stem[len("instances_") :]
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"not valid JSON: {e.msg}", file=rel, line=e.lineno) from e
        if not isinstance(doc, dict):
            raise DatasetError("top level is not a JSON object", file=rel)
        cats: dict[int, str] = {}
        for c in doc.get("categories", []):
            try:
                cats[int(c["id"])] = str(c["name"])
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"category {c!r} lacks an integer id and a name", file=rel) from None
            if cats[int(c["id"])] not in labels:
                labels.append(cats[int(c["id"])])
        by_id: dict[int, Item] = {}
        for im in doc.get("images", []):
            try:
                iid, fname = int(im["id"]), str(im["file_name"])
                size = (int(im["width"]), int(im["height"]))
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"image record {im!r} lacks id, file_name, width or height", file=rel) from None
            # COCO JSON has no useful line numbers: the image id names the record.
            where = f"{rel} (image id {iid})"
            _check_named(fname, where, None)
            candidates = [root / "images" / subset_raw / fname, root / "images" / fname]
            image = _first_file(root, candidates, fname, where, None)
            if not image.is_file():
                raise DatasetError(f"image id {iid} ({fname!r}) is missing from the export", file=rel)
            item = Item(fname, str(image), [], _norm_subset(subset_raw), size, rel, None)
            by_id[iid] = item
            items.append(item)
        for ann in doc.get("annotations", []):
            aid = ann.get("id")
            item = by_id.get(ann.get("image_id"))
            if item is None:
                raise DatasetError(f"annotation id {aid} refers to unknown image id {ann.get('image_id')}", file=rel)
            if ann.get("category_id") not in cats:
                raise DatasetError(
                    f"annotation id {aid} has unknown category id {ann.get('category_id')} (categories: {cats})",
                    file=rel,
                )
            seg = ann.get("segmentation")
            if seg:
                other["mask" if isinstance(seg, dict) else "polygon"] += 1
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise DatasetError(f"annotation id {aid} has no [x, y, w, h] bbox: {bbox!r}", file=rel)
            x, y, w, h = (float(v) for v in bbox)
            width, height = item.size  # type: ignore[misc]
            if width <= 0 or height <= 0:
                raise DatasetError(f"image {item.name!r} declares size {width}x{height}", file=rel)
            box = Box(
                cats[ann["category_id"]],
                (x + w / 2) / width,
                (y + h / 2) / height,
                w / width,
                h / height,
                f"{rel} (annotation id {aid})",
                None,
            )
            item.boxes.append(box)
    return Export(COCO, root, labels, items, other)
