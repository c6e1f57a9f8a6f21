"""Tests of refavs_ros.eval.metrics against values derived by hand from metrics.md on 4x4 masks."""

from __future__ import annotations

import numpy as np
import pytest

from refavs_ros.errors import InputError
from refavs_ros.eval import metrics as M

B2 = 0.3


def fmeasure(precision, recall):
    """F-measure from its definition (beta^2 = 0.3), 0 when P = R = 0."""
    if precision == 0 and recall == 0:
        return 0.0
    return (1 + B2) * precision * recall / (B2 * precision + recall)


def logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p)).astype(np.float32)


# GT: top-left 2x2 block (4 pixels)
GT = np.zeros((4, 4), bool)
GT[:2, :2] = True
EMPTY = np.zeros((4, 4), bool)


def test_jaccard_by_hand():
    prob = np.zeros((4, 4), np.float32)
    prob[0, :3] = 0.9  # 2 inside GT, 1 outside
    prob[1, 0] = 0.41  # inside, just above 0.4
    prob[1, 1] = 0.40  # inside, exactly 0.4: NOT positive (strict >)
    prob[3, 3] = 0.8  # outside
    # positives: (0,0) (0,1) (0,2) (1,0) (3,3) = 5; inter = 3; union = 4 + 5 - 3 = 6
    assert M.jaccard(prob, GT) == pytest.approx(3 / 6, abs=1e-6)
    assert M.jaccard(GT.astype(np.float32), GT) == pytest.approx(1.0, abs=1e-6)
    assert M.jaccard(np.zeros((4, 4), np.float32), GT) == 0.0


def test_jaccard_on_empty_gt_is_true_negative_fraction():
    prob = np.zeros((4, 4), np.float32)
    assert M.jaccard(prob, EMPTY) == pytest.approx(1.0, abs=1e-6)
    prob[:1, :] = 0.9  # 4 false positives -> TN = 12 of 16
    assert M.jaccard(prob, EMPTY) == pytest.approx(12 / 16, abs=1e-6)


def test_f_curve_by_hand():
    prob = np.zeros((4, 4), np.float32)
    prob[0, 0] = prob[0, 1] = 0.9  # GT pixels
    prob[1, 0] = prob[1, 1] = 0.6  # GT pixels
    prob[2, 2] = prob[3, 3] = 0.8  # background
    curve = M.f_curve(prob, GT)
    th = M.F_THRESHOLDS
    assert curve.shape == (255,)
    # th = 0: every pixel positive -> P = 4/16, R = 1
    assert curve[0] == pytest.approx(fmeasure(4 / 16, 1.0))
    k = np.flatnonzero((th > 0) & (th <= 0.6))
    assert np.allclose(curve[k], fmeasure(4 / 6, 1.0))
    k = np.flatnonzero((th > 0.6) & (th <= 0.8))
    assert np.allclose(curve[k], fmeasure(2 / 4, 2 / 4))
    k = np.flatnonzero((th > 0.8) & (th <= 0.9))
    assert k.size and np.allclose(curve[k], fmeasure(2 / 2, 2 / 4))
    assert np.all(curve[th > 0.9] == 0.0)  # nothing predicted: NaN -> 0
    scores = M.frame_scores(prob, GT)
    assert scores.f == pytest.approx(max(fmeasure(4 / 6, 1), fmeasure(1, 0.5)))
    assert scores.s is None and not scores.gt_empty


def test_f_curve_matches_brute_force_definition_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        prob = rng.random((9, 7)).astype(np.float32)
        prob[rng.random((9, 7)) < 0.2] = 1.0  # saturated pixels meet the last threshold (1.0)
        gt = rng.random((9, 7)) < 0.3
        expected = []
        for th in M.F_THRESHOLDS:
            pos = prob >= th
            tp = np.count_nonzero(pos & gt)
            expected.append(fmeasure(tp / (pos.sum() + 1e-20), tp / (gt.sum() + 1e-20)))
        np.testing.assert_allclose(M.f_curve(prob, gt), expected, rtol=1e-9, atol=1e-12)
    assert M.F_THRESHOLDS[-1] == np.float32(1.0)


def test_s_score_and_empty_gt_frame():
    prob = np.zeros((4, 4), np.float32)
    prob[0, :] = 0.51  # 4 pixels > 0.5
    prob[1, 0] = 0.5  # exactly 0.5: not counted by S (strict >), but > 0.4 for J
    scores = M.frame_scores(prob, EMPTY)
    assert scores.gt_empty and scores.f is None
    assert scores.s == pytest.approx(np.sqrt(4 / 16))
    assert scores.j == pytest.approx(11 / 16, abs=1e-6)  # 5 false positives for J
    assert M.s_score(np.zeros((4, 4))) == 0.0


def test_s_and_j_thresholds_differ_on_empty_gt():
    prob = np.zeros((4, 4), np.float32)
    prob[0, :] = 0.51  # 4 pixels > 0.5 (and > 0.4)
    prob[1, 0] = 0.45  # > 0.4 but not > 0.5
    scores = M.frame_scores(prob, EMPTY)
    assert scores.s == pytest.approx(np.sqrt(4 / 16))
    assert scores.j == pytest.approx(11 / 16, abs=1e-6)


def test_accumulator_groups_and_modes():
    perfect = GT.astype(np.float32)
    half = np.zeros((4, 4), np.float32)
    half[0, :2] = 1.0  # 2 of 4 GT pixels, no false positive: J = 0.5
    null_fp = np.zeros((4, 4), np.float32)
    null_fp[0, 0] = 1.0  # one false positive on an empty GT: J = 15/16, S = sqrt(1/16)
    acc = M.MetricAccumulator()
    acc.process(perfect, GT, groups=["seen", "all"], clip="a")
    acc.process(half, GT, groups=["seen", "all"], clip="a")
    acc.process(null_fp, EMPTY, groups=["null", "all"], clip="b")
    res = acc.evaluate()
    f_half = max(fmeasure(1.0, 0.5), 0.0)
    assert res["seen"]["J"] == pytest.approx((1.0 + 0.5) / 2, abs=1e-6)
    assert res["seen"]["F"] == pytest.approx((1.0 + f_half) / 2)
    assert res["seen"]["S"] is None and res["seen"]["frames"] == 2 and res["seen"]["s_frames"] == 0
    assert res["null"]["J"] == pytest.approx(15 / 16, abs=1e-6)
    assert res["null"]["S"] == pytest.approx(0.25) and res["null"]["F"] is None
    assert res["all"]["J"] == pytest.approx((1.0 + 0.5 + 15 / 16) / 3, abs=1e-6)
    assert (res["all"]["frames"], res["all"]["f_frames"], res["all"]["s_frames"]) == (3, 2, 1)
    # clip mode: mean of clip means, clip a = (1 + 0.5) / 2, clip b = 15/16
    clip_acc = M.MetricAccumulator(mode="clip")
    for prob, gt, clip in [(perfect, GT, "a"), (half, GT, "a"), (null_fp, EMPTY, "b")]:
        clip_acc.process(prob, gt, clip=clip)
    assert clip_acc.evaluate()["all"]["J"] == pytest.approx((0.75 + 15 / 16) / 2, abs=1e-6)
    assert clip_acc.evaluate()["all"]["clips"] == 2
    acc.reset()
    assert acc.evaluate() == {}


def test_benchmark_batch_grouping_by_hand():
    # 5 frames, batches of 2: [f0, f1], [f2, f3], [f4]
    probs = np.zeros((5, 4, 4), np.float32)
    gts = np.zeros((5, 4, 4), bool)
    gts[0] = GT
    probs[0] = GT  # IoU 1, F-curve 1 for th in (0, 1)
    gts[1] = GT
    probs[1, 0, :2] = 0.9  # IoU 0.5
    # batch 2: both GT empty; frame 2 perfect (IoU 1), frame 3 with 8 false positives
    probs[3, :2, :] = 0.9  # IoU = 8/16, S positives 8
    gts[4] = GT
    probs[4, 2:, 2:] = 0.9  # disjoint: IoU 0, F = 0 everywhere except th=0 (P=4/16, R=1)
    res = M.benchmark_metrics(logit(probs), gts, frames_per_batch=2)

    batch_j = [(1.0 + 0.5) / 2, (1.0 + 0.5) / 2, 0.0]
    assert res["J"] == pytest.approx(np.mean(batch_j), abs=1e-6)
    # batch 1: mean F-curve of the perfect frame and the half frame. th in (0, 0.9]: (1 + F(1, 0.5)) / 2;
    # th = 0 (all pixels positive): F(4/16, 1) for both; th > 0.9: (1 + 0) / 2. The max is the first.
    b1 = max((1.0 + fmeasure(1.0, 0.5)) / 2, fmeasure(4 / 16, 1), 0.5)
    b2 = 0.0  # no non-empty frame: scores 0 and still counts
    b3 = fmeasure(4 / 16, 1.0)  # only th = 0 has TP
    assert res["F"] == pytest.approx(np.mean([b1, b2, b3]), abs=1e-6)
    s = [np.sqrt((4 + 2) / 32), np.sqrt(8 / 32), np.sqrt(4 / 16)]
    assert res["S"] == pytest.approx(np.mean(s), abs=1e-6)
    # one batch of everything gives a different (frame-weighted) J: grouping matters
    whole = M.benchmark_metrics(logit(probs), gts, frames_per_batch=40)
    assert whole["J"] == pytest.approx((1 + 0.5 + 1 + 0.5 + 0) / 5, abs=1e-6)
    assert whole["J"] != pytest.approx(res["J"], abs=1e-3)


def test_bad_inputs():
    with pytest.raises(InputError, match="same"):
        M.frame_scores(np.zeros((4, 4)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="within"):
        M.frame_scores(np.full((4, 4), 2.0), GT)
    with pytest.raises(InputError, match="within"):
        M.jaccard(np.full((4, 4), np.nan), GT)
    with pytest.raises(InputError):
        M.benchmark_metrics(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    with pytest.raises(InputError, match="frames_per_batch"):
        M.benchmark_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), frames_per_batch=0)
    with pytest.raises(InputError, match="mode"):
        M.MetricAccumulator(mode="batch")
