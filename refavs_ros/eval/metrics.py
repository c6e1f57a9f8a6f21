"""Ref-AVS metrics J (Jaccard / mIoU), F (F-measure) and S (null-subset false-positive score).

Definitions follow the released evaluation code of Ref-AVS (GeWu-Lab/Ref-AVS
``utils/metric/utility.py``: ``mask_iou``, ``Eval_Fmeasure`` / ``_eval_pr``,
``metric_s_for_null``), summarised in ``/work/shared/design/metrics.md``:

* J, per frame: ``p = prob > 0.4``; non-empty GT: ``|p & g| / (|p | g| + 1e-7)``; empty GT:
  ``(true-negative pixels) / (H * W + 1e-7)``.
* F, per frame with non-empty GT: for 255 thresholds ``th = linspace(0, 1 - 1e-10, 255)``
  (float32, as torch builds them, so the last one is exactly 1.0), ``pos = prob >= th``,
  ``P = TP / (|pos| + 1e-20)``, ``R = TP / (|g| + 1e-20)``, ``F = 1.3 P R / (0.3 P + R)`` with
  NaN -> 0. Frames with empty GT have no F.
* S, over frames: ``sqrt(sum(prob > 0.5) / (frames * H * W))``; lower is better; the benchmark
  reports it on the null subset (every GT empty).

Two modes (metrics.md "Two modes"):

* :func:`benchmark_metrics`: benchmark-compatible batch grouping (consecutive batches of 40
  frames = 4 clips x 10 frames): J = mean of per-batch mean IoU; F = mean over batches of
  ``max_th`` of the batch's mean F-curve over its non-empty frames (0 for a batch without one,
  still counted); S = mean over batches of the batch S.
* :class:`MetricAccumulator`: per-frame mode for streaming / bag evaluation, no batch grouping:
  each frame is scored alone (a batch of one) and the scores are averaged over frames (or over
  clips): J over all frames, F over frames with non-empty GT (``max_th`` of the frame's own
  curve), S over frames with EMPTY GT (``sqrt(positive fraction)`` of the frame).

J and F are fractions in [0, 1]; the paper prints J in percent (34.20 = 0.3420) and F as a
fraction. Inputs here are per-pixel probabilities (``sigmoid(logit)``), except
:func:`benchmark_metrics`, which takes logits like the released code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from refavs_ros.errors import InputError

J_THRESHOLD = 0.4
"""Probability threshold of the J mask (strict ``>``), released ``mask_iou``."""
S_THRESHOLD = 0.5
"""Probability threshold of the S mask (strict ``>``), released ``metric_s_for_null``."""
F_BETA2 = 0.3
"""beta^2 of the F-measure."""
NUM_F_THRESHOLDS = 255
F_THRESHOLDS = np.linspace(0.0, 1.0 - 1e-10, NUM_F_THRESHOLDS).astype(np.float32)
"""The 255 F thresholds in float32 (the last rounds to exactly 1.0, as in torch float32)."""
IOU_EPS = 1e-7
PR_EPS = 1e-20
BENCHMARK_FRAMES_PER_BATCH = 40
"""Benchmark test batch: 4 clips x 10 frames in ``metadata.csv`` order."""


@dataclass(frozen=True)
class FrameScores:
    """Metric values of one frame (per-frame mode).

    Attributes:
        j: Jaccard in [0, 1] (true-negative fraction when the GT is empty).
        f: max over thresholds of the frame's F-curve in [0, 1]; None when the GT is empty.
        s: ``sqrt(fraction of pixels with prob > 0.5)`` in [0, 1]; None when the GT is not empty.
        gt_empty: the GT mask has no foreground pixel.
    """

    j: float
    f: float | None
    s: float | None
    gt_empty: bool


def _check_pair(probability: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(probability)
    g = np.asarray(gt)
    if prob.ndim != 2 or prob.shape != g.shape:
        raise InputError(f"probability {prob.shape} and gt {g.shape} must be the same (H, W) shape")
    if prob.size == 0:
        raise InputError("empty probability map")
    prob = prob.astype(np.float32, copy=False)
    if not np.all(np.isfinite(prob)) or prob.min() < 0.0 or prob.max() > 1.0:
        raise InputError("probability must be finite and within [0, 1] (pass sigmoid(logits))")
    return prob, g != 0


def jaccard(probability: np.ndarray, gt: np.ndarray) -> float:
    """Per-frame J (released ``mask_iou`` for one frame).

    Args:
        probability: float (H, W) in [0, 1].
        gt: (H, W), nonzero = foreground.

    Returns:
        IoU of ``probability > 0.4`` with the GT, with ``+1e-7`` in the denominator; for an
        empty GT the true-negative fraction ``TN / (H * W + 1e-7)``.

    Raises:
        InputError: shape mismatch, empty map, or probabilities outside [0, 1] / non-finite.
    """
    prob, g = _check_pair(probability, gt)
    pred = prob > J_THRESHOLD
    if not g.any():
        return float(np.count_nonzero(~pred) / (g.size + IOU_EPS))
    inter = np.count_nonzero(pred & g)
    union = np.count_nonzero(pred | g)
    return float(inter / (union + IOU_EPS))


def f_curve(probability: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """F-measure of one frame at each of the 255 thresholds (released ``_eval_pr``).

    Args:
        probability: float (H, W) in [0, 1].
        gt: (H, W), nonzero = foreground; should be non-empty (an empty GT gives all zeros).

    Returns:
        float64 (255,) F values in [0, 1], NaN replaced by 0.

    Raises:
        InputError: as :func:`jaccard`.
    """
    prob, g = _check_pair(probability, gt)
    return _f_curve(prob, g)


def _f_curve(prob: np.ndarray, g: np.ndarray) -> np.ndarray:
    # counts of prob >= th for every threshold, via sorted values (O(HW log HW), not 255 passes)
    all_sorted = np.sort(prob, axis=None)
    fg_sorted = np.sort(prob[g], axis=None)
    num_pos = all_sorted.size - np.searchsorted(all_sorted, F_THRESHOLDS, side="left")
    tp = fg_sorted.size - np.searchsorted(fg_sorted, F_THRESHOLDS, side="left")
    precision = tp / (num_pos + PR_EPS)
    recall = tp / (fg_sorted.size + PR_EPS)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1.0 + F_BETA2) * precision * recall / (F_BETA2 * precision + recall)
    return np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)


def s_score(probability: np.ndarray) -> float:
    """Per-frame S: ``sqrt(count(prob > 0.5) / (H * W))`` (released ``metric_s_for_null``).

    Args:
        probability: float (H, W) in [0, 1].

    Returns:
        S in [0, 1]; 0 for an empty prediction.
    """
    prob = np.asarray(probability, dtype=np.float32)
    if prob.ndim != 2 or prob.size == 0:
        raise InputError(f"probability must be a non-empty (H, W) map, got shape {prob.shape}")
    return float(np.sqrt(np.count_nonzero(prob > S_THRESHOLD) / prob.size))


def frame_scores(probability: np.ndarray, gt: np.ndarray) -> FrameScores:
    """Score one frame in per-frame mode (J always, F if the GT is non-empty, S if empty).

    Args:
        probability: float (H, W) in [0, 1] (e.g. ``Prediction.probability``).
        gt: (H, W) mask, nonzero = foreground, same size as ``probability``.

    Returns:
        :class:`FrameScores`.

    Raises:
        InputError: shape mismatch, empty map, or probabilities outside [0, 1].
    """
    prob, g = _check_pair(probability, gt)
    empty = not g.any()
    j = jaccard(prob, g)
    if empty:
        return FrameScores(j=j, f=None, s=s_score(prob), gt_empty=True)
    return FrameScores(j=j, f=float(_f_curve(prob, g).max()), s=None, gt_empty=False)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class MetricAccumulator:
    """Per-frame-mode evaluator with the detectron2 protocol ``reset / process / evaluate``.

    Each processed frame is scored with :func:`frame_scores` and added to every named group
    (e.g. its subset, its expression kind and ``"all"``).

    Args:
        mode: ``"frame"`` (default): average over frames; ``"clip"``: average per clip first, then
            over clips (frames processed with ``clip=None`` count as their own clip).
    """

    def __init__(self, *, mode: str = "frame") -> None:
        if mode not in ("frame", "clip"):
            raise InputError(f"mode must be 'frame' or 'clip', got {mode!r}")
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        """Forget every processed frame."""
        # group -> clip -> lists of per-frame values
        self._scores: dict[str, dict[object, dict[str, list[float]]]] = {}
        self._anon = 0

    def process(
        self,
        probability: np.ndarray,
        gt: np.ndarray,
        *,
        groups: Iterable[str] = ("all",),
        clip: str | None = None,
    ) -> FrameScores:
        """Score one frame and add it to ``groups``.

        Args:
            probability: float (H, W) in [0, 1].
            gt: (H, W) mask, nonzero = foreground.
            groups: names of the groups (subsets) the frame belongs to.
            clip: clip identifier (used in ``"clip"`` mode).

        Returns:
            The frame's :class:`FrameScores`.

        Raises:
            InputError: as :func:`frame_scores`.
        """
        scores = frame_scores(probability, gt)
        if clip is None:
            self._anon += 1
            key: object = ("frame", self._anon)
        else:
            key = clip
        for group in dict.fromkeys(groups):
            lists = self._scores.setdefault(group, {}).setdefault(key, {"J": [], "F": [], "S": []})
            lists["J"].append(scores.j)
            if scores.f is not None:
                lists["F"].append(scores.f)
            if scores.s is not None:
                lists["S"].append(scores.s)
        return scores

    def evaluate(self) -> dict[str, dict[str, float | int | None]]:
        """Aggregate per group.

        Returns:
            ``{group: {"J", "F", "S", "frames", "f_frames", "s_frames", "clips"}}``: J over all
            frames, F over frames with non-empty GT, S over frames with empty GT (None when the
            group has no such frame), the frame counts behind each, and the number of clips.
            In ``"clip"`` mode each metric is the mean over clips of the clip means (clips
            without a frame for that metric are left out).
        """
        out: dict[str, dict[str, float | int | None]] = {}
        for group, clips in self._scores.items():
            result: dict[str, float | int | None] = {}
            for name in ("J", "F", "S"):
                if self.mode == "frame":
                    result[name] = _mean([v for lists in clips.values() for v in lists[name]])
                else:
                    result[name] = _mean([m for lists in clips.values() if (m := _mean(lists[name])) is not None])
            result["frames"] = sum(len(lists["J"]) for lists in clips.values())
            result["f_frames"] = sum(len(lists["F"]) for lists in clips.values())
            result["s_frames"] = sum(len(lists["S"]) for lists in clips.values())
            result["clips"] = len(clips)
            out[group] = result
        return out


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def benchmark_metrics(
    logits: np.ndarray, gt: np.ndarray, frames_per_batch: int = BENCHMARK_FRAMES_PER_BATCH
) -> dict[str, float]:
    """Benchmark-compatible J, F, S with the released batch grouping.

    Frames are grouped into consecutive batches of ``frames_per_batch`` in the given order (the
    last batch may be shorter); each metric is the unweighted mean of per-batch values:
    batch J = mean frame IoU (:func:`jaccard`); batch F = max over thresholds of the mean
    :func:`f_curve` of the batch's non-empty-GT frames, 0 if it has none; batch S =
    ``sqrt(sum(sigmoid > 0.5) / (frames * H * W))``.

    Args:
        logits: mask logits (N, H, W) (the benchmark uses 256 x 256).
        gt: GT masks (N, H, W), nonzero = foreground.
        frames_per_batch: batch size in frames (benchmark: 40 = 4 clips x 10 frames).

    Returns:
        ``{"J": float, "F": float, "S": float}``, J and F fractions in [0, 1]. S is meaningful
        for the null subset only (the benchmark reports it there).

    Raises:
        InputError: shape mismatch, N = 0, non-finite logits or ``frames_per_batch < 1``.
    """
    x = np.asarray(logits)
    g = np.asarray(gt) != 0
    if x.ndim != 3 or x.shape != g.shape or x.shape[0] == 0:
        raise InputError(f"logits {x.shape} and gt {g.shape} must be the same non-empty (N, H, W)")
    if frames_per_batch < 1:
        raise InputError(f"frames_per_batch must be >= 1, got {frames_per_batch}")
    if not np.all(np.isfinite(x)):
        raise InputError("logits contain NaN or inf")
    prob = _sigmoid(x)
    js, fs, ss = [], [], []
    for start in range(0, x.shape[0], frames_per_batch):
        p, t = prob[start : start + frames_per_batch], g[start : start + frames_per_batch]
        js.append(float(np.mean([jaccard(p[i], t[i]) for i in range(len(p))])))
        curves = [_f_curve(p[i], t[i]) for i in range(len(p)) if t[i].any()]
        fs.append(float(np.mean(curves, axis=0).max()) if curves else 0.0)
        ss.append(float(np.sqrt(np.count_nonzero(p > S_THRESHOLD) / p.size)))
    return {"J": float(np.mean(js)), "F": float(np.mean(fs)), "S": float(np.mean(ss))}
