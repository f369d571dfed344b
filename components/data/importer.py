"""``vinspect data import``: pull annotations and validate/split them in one go.

The two halves are :func:`components.data.convert.pull_annotations` (an export -> a normalized
dataset) and :func:`components.data.validate.validate_and_split` (QA, split, the training
dataset); this module only chains them through a private intermediate folder.
"""

from __future__ import annotations

from pathlib import Path

from components.data.convert import pull_annotations
from components.data.manifest import Manifest
from components.data.staging import check_target, temp_dir
from components.data.validate import validate_and_split


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
) -> Manifest:
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
    check_target(out_dir, overwrite)
    with temp_dir(out_dir, "pull") as tmp:
        stage1 = tmp / "annotations"
        pull_annotations(source, stage1, progress=progress, **kw)
        # The intermediate folder is ours, so its images are moved rather than copied again.
        return validate_and_split(
            stage1, out_dir, val=val, test=test, seed=seed, overwrite=overwrite, progress=progress, _move=True
        )
