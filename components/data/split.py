"""Seeded, stratified train/val(/test) split that keeps every class in every split.

The unit of splitting is a *group*: images with identical content are one group, so a duplicate can
never land in two splits. Groups are stratified by the set of classes they contain (``{}``,
``{scratch}``, ``{bent}``, ``{scratch, bent}``), split per stratum by largest remainder, then
repaired by swaps until every class present in the data appears in every split.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from components.data.errors import DatasetError

SPLITS = ("train", "val", "test")
_SUBSET_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def subset_to_split(subset: str | None) -> str | None:
    """Map a CVAT subset name (``Train``, ``Validation``, ``valid``...) to a split, or None."""
    if subset is None:
        return None
    return _SUBSET_NAMES.get(subset.strip().lower())


def stratified_split(
    groups: Sequence[tuple[str, frozenset[int]]],
    *,
    val: float,
    test: float,
    seed: int,
    class_names: Sequence[str],
) -> dict[str, str]:
    """Assign each group to a split.

    Args:
        groups: ``(group_id, class ids in the group)``; ids must be unique.
        val: Fraction of groups for validation (0 < val < 1).
        test: Fraction for test (0 for none).
        seed: Seed: same groups and seed give the same assignment anywhere.
        class_names: Names for error messages.

    Returns:
        ``group_id -> split``.

    Raises:
        DatasetError: If the fractions leave a split empty or a class has too few images to
            appear in every split.
    """
    if not 0 < val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DatasetError(f"split fractions val={val}, test={test}: need 0 < val, 0 <= test, val + test < 1")
    splits = ["train", "val"] + (["test"] if test > 0 else [])
    n = len(groups)
    n_val = max(1, round(n * val))
    n_test = max(1, round(n * test)) if test > 0 else 0
    if n - n_val - n_test < 1:
        raise DatasetError(
            f"{n} distinct image(s) cannot be split into {', '.join(splits)} (val={val}, test={test}); "
            "add images or lower --val/--test"
        )
    per_class: dict[int, int] = defaultdict(int)
    for _, classes in groups:
        for c in classes:
            per_class[c] += 1
    for c, k in sorted(per_class.items()):
        if k < len(splits):
            raise DatasetError(
                f"class {class_names[c]!r} is in only {k} distinct image(s); every one of the "
                f"{len(splits)} splits ({', '.join(splits)}) needs at least one. Label more images "
                f"of {class_names[c]!r} or drop --test"
            )

    rng = random.Random(seed)
    strata: dict[frozenset[int], list[str]] = defaultdict(list)
    for gid, classes in sorted(groups, key=lambda g: g[0]):
        strata[classes].append(gid)
    keys = sorted(strata, key=lambda k: (len(k), sorted(k)))
    for k in keys:
        rng.shuffle(strata[k])

    assign: dict[str, str] = {}
    quotas = {"val": n_val, "test": n_test}
    remaining = {k: len(strata[k]) for k in keys}
    taken = {k: 0 for k in keys}
    for split in ("val", "test"):
        if not quotas[split]:
            continue
        ideal = {k: len(strata[k]) * quotas[split] / n for k in keys}
        alloc = {k: min(remaining[k], math.floor(ideal[k])) for k in keys}
        left = quotas[split] - sum(alloc.values())
        order = sorted(keys, key=lambda k: (-(ideal[k] - math.floor(ideal[k])), rng.random()))
        while left > 0:
            progressed = False
            for k in order:
                if left and alloc[k] < remaining[k]:
                    alloc[k] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                break
        for k in keys:
            for gid in strata[k][taken[k] : taken[k] + alloc[k]]:
                assign[gid] = split
            taken[k] += alloc[k]
            remaining[k] -= alloc[k]
    for k in keys:
        for gid in strata[k][taken[k] :]:
            assign[gid] = "train"

    _repair_coverage(assign, dict(groups), splits, sorted(per_class), rng)
    return assign


def _repair_coverage(
    assign: dict[str, str],
    classes_of: dict[str, frozenset[int]],
    splits: list[str],
    present: list[int],
    rng: random.Random,
) -> None:
    """Swap groups between splits until every present class is in every split."""
    for _ in range(4 * len(assign) + 10):
        members = {s: [g for g in sorted(assign) if assign[g] == s] for s in splits}
        cover = {s: defaultdict(int) for s in splits}
        for s in splits:
            for g in members[s]:
                for c in classes_of[g]:
                    cover[s][c] += 1
        missing = [(s, c) for s in splits for c in present if cover[s][c] == 0]
        if not missing:
            return
        target, c = missing[0]
        # Donor: the split with the most groups holding c.
        donor = max((s for s in splits if s != target), key=lambda s: cover[s][c])
        if cover[donor][c] < 2:
            break
        # Take from the donor a group with c whose classes the donor keeps elsewhere.
        cands = [g for g in members[donor] if c in classes_of[g] and all(cover[donor][x] > 1 for x in classes_of[g])]
        if not cands:
            break
        cands.sort(key=lambda g: (len(classes_of[g]), rng.random()))
        u = cands[0]
        # Give back a group the target can spare (background first), keeping split sizes.
        backs = [g for g in members[target] if all(cover[target][x] > 1 for x in classes_of[g])]
        backs.sort(key=lambda g: (len(classes_of[g]), rng.random()))
        assign[u] = target
        if backs:
            assign[backs[0]] = donor
    raise DatasetError(
        "cannot place every class in every split with these images; label more images of the rare class or lower --test"
    )
