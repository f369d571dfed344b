"""KFP step 2: label QA and a seeded, stratified split -> the training dataset."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Output


def validate_and_split(
    raw_dataset: Input[Dataset],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    dataset: Output[Dataset],
) -> NamedTuple("SplitOutputs", [("dataset_id", str), ("counts", dict)]):
    """QA ``raw_dataset`` and write the split dataset (``data.yaml``, ``manifest.json``).

    Args:
        raw_dataset: Output of ``pull_annotations``.
        val_fraction: Validation fraction.
        test_fraction: Test fraction (0: no test split).
        split_seed: Split seed.
        dataset: The training dataset folder (see CONTRACTS.md, "Dataset directory").

    Returns:
        The dataset id of the split dataset (the id models are tagged with) and the counts.
    """
    from collections import namedtuple
    from pathlib import Path

    from components.data import validate_and_split as split

    manifest = split(Path(raw_dataset.path), Path(dataset.path), val=val_fraction, test=test_fraction, seed=split_seed)
    dataset.metadata["dataset_id"] = manifest.dataset_id
    dataset.metadata["classes"] = list(manifest.classes)
    counts = manifest.counts
    print(f"dataset {manifest.dataset_id}: {counts}")
    return namedtuple("SplitOutputs", ["dataset_id", "counts"])(manifest.dataset_id, counts)
