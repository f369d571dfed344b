"""Plotting glue for the notebooks, and nothing else.

The notebooks call the project's own code for every real step (dataset import and manifest,
label parsing, MLflow queries, the v2 client, pre/post-processing, drawing detections). What
lives here only turns those results into tables and matplotlib figures, so the notebook cells
stay short. Ground-truth boxes are drawn with matplotlib patches on an axes; detections are
drawn by :func:`serving.processor.annotate`, the same rendering the dashboard shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from components.data.manifest import Manifest

# One colour per class id, the same hues serving.processor uses for detections (red, orange).
_CLASS_COLOURS = ("#e62828", "#ffa000", "#3c6edc", "#3caa5a")


def class_colour(class_id: int) -> str:
    """The matplotlib colour used for a class id throughout the notebooks."""
    return _CLASS_COLOURS[class_id % len(_CLASS_COLOURS)]


def box_rows(dataset_dir: Path, manifest: Manifest) -> list[dict[str, Any]]:
    """One row per labelled box of a dataset, with its size in pixels.

    Labels are parsed by :func:`components.data.qa.parse_label_text` (the parser the import
    step validated them with); image sizes come from the image headers.

    Args:
        dataset_dir: A dataset folder written by ``components.data.import_dataset``.
        manifest: Its ``manifest.json`` (``components.data.manifest.read_manifest``).

    Returns:
        Dicts with ``split, image, class_id, class_name, cx, cy, w, h`` (normalized) and
        ``w_px, h_px, area_px, image_w, image_h``.
    """
    from PIL import Image

    from components.data.qa import parse_label_text

    dataset_dir = Path(dataset_dir)
    classes = list(manifest.classes)
    rows: list[dict[str, Any]] = []
    for item in manifest.items:
        label = dataset_dir / item["label"]
        with Image.open(dataset_dir / item["image"]) as im:  # reads the header only
            width, height = im.size
        for cls, cx, cy, w, h, _line in parse_label_text(label.read_text(), item["label"], classes):
            rows.append(
                {
                    "split": item["split"],
                    "image": item["image"],
                    "class_id": cls,
                    "class_name": classes[cls],
                    "cx": cx,
                    "cy": cy,
                    "w": w,
                    "h": h,
                    "w_px": w * width,
                    "h_px": h * height,
                    "area_px": w * width * h * height,
                    "image_w": width,
                    "image_h": height,
                }
            )
    return rows


def plot_class_counts(counts: Mapping[str, Any], classes: Sequence[str]):
    """Grouped bars of boxes and images per class for each split (from the manifest's counts)."""
    import matplotlib.pyplot as plt

    splits = [s for s in counts["boxes"] if s != "total"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    width = 0.8 / max(1, len(classes))
    for ax, key, title in (
        (axes[0], "boxes", "boxes per class"),
        (axes[1], "images_with_class", "images containing the class"),
    ):
        for i, name in enumerate(classes):
            xs = [j + i * width for j in range(len(splits))]
            ys = [counts[key][s].get(name, 0) for s in splits]
            bars = ax.bar(xs, ys, width=width, label=name, color=class_colour(i))
            ax.bar_label(bars, fontsize=8)
        ax.set_xticks([j + width * (len(classes) - 1) / 2 for j in range(len(splits))])
        ax.set_xticklabels(splits)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_box_sizes(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]):
    """Box width against height in pixels, and the distribution of relative box area, per class."""
    import matplotlib.pyplot as plt

    fig, (ax_wh, ax_area) = plt.subplots(1, 2, figsize=(10, 4))
    for i, name in enumerate(classes):
        mine = [r for r in rows if r["class_id"] == i]
        if not mine:
            continue
        ax_wh.scatter([r["w_px"] for r in mine], [r["h_px"] for r in mine], s=14, alpha=0.7,
                      label=f"{name} ({len(mine)})", color=class_colour(i))
        rel_area = [r["w"] * r["h"] for r in mine]
        ax_area.hist(rel_area, bins=20, range=(0, max(0.05, max(rel_area))), alpha=0.6, label=name,
                     color=class_colour(i))
    ax_wh.set_xlabel("box width (px)")
    ax_wh.set_ylabel("box height (px)")
    ax_wh.set_title("box sizes")
    ax_wh.legend(fontsize=8)
    ax_area.set_xlabel("box area / image area")
    ax_area.set_ylabel("boxes")
    ax_area.set_title("relative box area")
    ax_area.legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_labelled(ax, img: np.ndarray, boxes: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """Draw an RGB image with its ground-truth boxes (rows from :func:`box_rows`) on ``ax``."""
    from matplotlib.patches import Rectangle

    ax.imshow(img)  # matplotlib takes RGB, which is what decode_image returns
    for box in boxes:
        x1 = (box["cx"] - box["w"] / 2) * box["image_w"]
        y1 = (box["cy"] - box["h"] / 2) * box["image_h"]
        colour = class_colour(box["class_id"])
        ax.add_patch(Rectangle((x1, y1), box["w_px"], box["h_px"], fill=False, edgecolor=colour, linewidth=1.5))
        ax.text(x1, y1 - 2, box["class_name"], color="black", fontsize=7,
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 1})
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_curves(histories: Mapping[str, Sequence[Any]], title: str = ""):
    """Training curves: one panel per metric, value against epoch.

    Args:
        histories: Metric key -> MLflow ``Metric`` entries (``MlflowClient.get_metric_history``).
        title: Figure title (e.g. the run name).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = [k for k, v in histories.items() if v]
    cols = min(4, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = sorted(histories[key], key=lambda m: m.step)
        ax.plot([m.step for m in points], [m.value for m in points], marker="o")
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
