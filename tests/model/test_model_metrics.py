"""The numpy metric core: hand-computed cases, and Ultralytics' own functions on the same inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from components.model.evaluate import (
    IOU_THRESHOLDS,
    average_precision,
    compute_metrics,
    confusion_matrix,
    match_predictions,
)


def test_perfect_detection_scores_ultralytics_style_0_995():
    """101-point interpolation + trapezoid: the last step 0.99 -> 1.00 falls from 1 to 0, so 0.995."""
    tp = match_predictions(
        np.array([[10, 10, 50, 50.0]]), np.array([0]), np.array([0.9]), np.array([[10, 10, 50, 50.0]]), np.array([0])
    )
    assert tp.all()
    m = compute_metrics(tp, np.array([0.9]), np.array([0]), np.array([0]), num_classes=2)
    assert m["map50"] == pytest.approx(0.995)
    assert m["map50_95"] == pytest.approx(0.995)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)
    assert set(m["classes"]) == {0}  # class 1 has no ground truth: not part of the mean


def test_half_recall_hand_computed():
    # Two objects of class 0, one found (score 0.9) and one false positive (0.8) elsewhere.
    gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]])
    pred = np.array([[0, 0, 10, 10], [100, 100, 110, 110.0]])
    tp = match_predictions(pred, np.array([0, 0]), np.array([0.9, 0.8]), gt, np.array([0, 0]))
    assert tp[:, 0].tolist() == [True, False]
    # Envelope: precision 1 for recall below 0.5, 0 from recall 0.5 on (the sentinel recall points
    # repeat 0.5, and interpolation takes the last of them). 101-point trapezoid: 0.00 .. 0.49
    # at 1 (area 0.49), the step 0.49 -> 0.50 falls from 1 to 0 (area 0.005): AP = 0.495.
    ap, _, _ = average_precision(np.array([0.5, 0.5]), np.array([1.0, 0.5]))
    assert ap == pytest.approx(0.495)
    m = compute_metrics(tp, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0]), num_classes=2)
    assert m["map50"] == pytest.approx(0.495)


def test_matching_is_class_aware_and_one_to_one():
    gt = np.array([[0, 0, 10, 10.0]])
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10.0]])
    tp = match_predictions(pred, np.array([1, 0, 0]), np.array([0.99, 0.9, 0.8]), gt, np.array([0]))
    assert tp[:, 0].tolist() == [False, True, False]  # wrong class; match; duplicate


def test_iou_thresholds_split_a_loose_box():
    gt = np.array([[0, 0, 10, 10.0]])
    pred = np.array([[0, 0, 10, 7.0]])  # IoU 0.7
    tp = match_predictions(pred, np.array([0]), np.array([0.9]), gt, np.array([0]))
    assert tp[0].tolist() == [t <= 0.7 + 1e-9 for t in IOU_THRESHOLDS]


def test_confusion_matrix_counts_misses_false_alarms_and_confusions():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]])
    gt_cls = np.array([0, 1, 1])
    pred = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [80, 80, 90, 90], [40, 40, 50, 50.0]])
    pred_cls = np.array([0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.1])  # the last is below conf 0.25: a miss
    cm = confusion_matrix(pred, pred_cls, scores, gt, gt_cls, num_classes=2)
    # rows predicted, columns true, index 2 = background
    assert cm.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]


def _random_split(seed: int, n_images: int = 25):
    """Random ground truth, and predictions jittered around it plus false positives."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        n_gt = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (n_gt, 2))
        wh = rng.uniform(10, 60, (n_gt, 2))
        gt = np.hstack([xy, xy + wh])
        gt_cls = rng.integers(0, 3, n_gt)
        keep = rng.random(n_gt) < 0.8
        jitter = rng.normal(0, 4, (int(keep.sum()), 4))
        flip = rng.random(int(keep.sum())) < 0.1
        pc = np.where(flip, (gt_cls[keep] + 1) % 3, gt_cls[keep])
        n_fp = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 200, (n_fp, 2))
        fp = np.hstack([fxy, fxy + rng.uniform(10, 60, (n_fp, 2))])
        pb = np.vstack([gt[keep] + jitter, fp]) if n_gt or n_fp else np.zeros((0, 4))
        pc = np.concatenate([pc, rng.integers(0, 3, n_fp)]).astype(np.int64)
        ps = rng.uniform(0.001, 1.0, len(pc))
        images.append((pb, pc, ps, gt, gt_cls.astype(np.int64)))
    return images


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_and_ap_equal_ultralytics_on_the_same_predictions(seed):
    torch = pytest.importorskip("torch")
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    fake = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    tps, confs, pcls, tcls = [], [], [], []
    for pb, pc, ps, gt, gc in _random_split(seed):
        order = np.argsort(-ps)  # Ultralytics expects predictions sorted by confidence
        pb, pc, ps = pb[order], pc[order], ps[order]
        ours = match_predictions(pb, pc, ps, gt, gc)
        if len(pc) and len(gc):
            iou = box_iou(torch.tensor(gt, dtype=torch.float32), torch.tensor(pb, dtype=torch.float32))
            theirs = BaseValidator.match_predictions(fake, torch.tensor(pc), torch.tensor(gc), iou).numpy()
            np.testing.assert_array_equal(ours, theirs)
        tps.append(ours)
        confs.append(ps)
        pcls.append(pc)
        tcls.append(gc)
    tp, conf, pc, tc = (np.concatenate(x) for x in (tps, confs, pcls, tcls))
    ours = compute_metrics(tp, conf, pc, tc, num_classes=3)
    _, _, p, r, _, ap, classes, *_ = ap_per_class(tp, conf, pc, tc)
    assert ours["map50"] == pytest.approx(ap[:, 0].mean(), abs=1e-9)
    assert ours["map50_95"] == pytest.approx(ap.mean(), abs=1e-9)
    assert ours["precision"] == pytest.approx(p.mean(), abs=1e-9)
    assert ours["recall"] == pytest.approx(r.mean(), abs=1e-9)
    for i, c in enumerate(classes):
        np.testing.assert_allclose(ours["classes"][int(c)]["ap"], ap[i], atol=1e-9)
