"""predictor.decode_mask: post-processing at network resolution (issue 10, part 2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from refavs_ros.engines.eemc import preprocess_image
from refavs_ros.errors import ConfigError
from refavs_ros.predictor import (
    Prediction,
    PredictorConfig,
    StreamingPredictor,
    decode_mask,
    mask_bbox,
)

CFG = PredictorConfig()


def _smooth_logits(seed: int, n: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (cv2.GaussianBlur(rng.normal(0, 1, (n, n)).astype(np.float32), (0, 0), 2.0) * 12.0).astype(np.float32)


def _prediction(d, size) -> Prediction:
    return Prediction(stamp_ns=1, mask=d.mask, score=0.9, found=d.found, bbox=d.bbox, command="x",
                      region_score=d.region_score, regions=d.regions, dropped_regions=d.dropped,
                      logits=d.kept_logits, _decoded=d)


def _old_path(logits, size, thr=0.4):
    """The pre-issue-10 decode: sigmoid of the full-size upsampled logits, thresholded."""
    h, w = size
    up = cv2.resize(logits, (w, h), interpolation=cv2.INTER_LINEAR)
    return (0.5 * (1.0 + np.tanh(0.5 * up))).astype(np.float32)


@pytest.mark.parametrize("size", [(240, 320), (480, 640), (1080, 1920), (20, 30), (257, 101)])
def test_mask_matches_full_resolution_path_without_strays(size):
    for seed in range(6):
        logits = _smooth_logits(seed)
        d = decode_mask(logits, 0.9, size, PredictorConfig(min_region_fraction=0.0))
        old = _old_path(logits, size)
        if not d.found:
            assert not (old > 0.4).any() or not (logits > np.log(0.4 / 0.6)).any()
            continue
        # identical up to float rounding right at the threshold
        assert np.count_nonzero(d.mask != (old > 0.4)) <= 2
        p = _prediction(d, size)
        np.testing.assert_allclose(p.probability, old, atol=1e-6)
        # the windowed box of the main region equals the box of the full-size main-region mask
        assert p.bbox == mask_bbox(p.region_mask)


def test_stray_cell_dropped_from_mask_box_and_probability():
    logits = np.full((32, 32), -6.0, np.float32)
    logits[14:24, 18:28] = 4.0  # the target
    logits[0, 0] = 3.0  # one confident stray cell in the corner
    size = (720, 1280)
    d = decode_mask(logits, 0.95, size, CFG)
    p = _prediction(d, size)
    assert d.found and d.regions == 2 and d.dropped == 1
    assert p.bbox[0] > 600 and p.bbox[1] > 250  # not stretched to the corner
    assert not p.mask[:60, :60].any()
    assert p.unfiltered_bbox[:2] == (0, 0)  # what the box used to be
    np.testing.assert_array_equal(p.probability > 0.4, p.mask)
    assert p.probability[:30, :30].max() < 0.01
    # the box matches the upsampled target cells: cells 18..27 -> pixels (17.5..27.5) * 40 - 0.5 +- interpolation
    assert abs(p.bbox[0] - 18 * 40) <= 40 and abs(p.bbox[2] - 28 * 40) <= 40
    assert 0.9 * 0.95 < d.region_score <= 0.95
    # min_region_fraction 0 keeps the stray, the box (main region) still excludes it
    keep = decode_mask(logits, 0.95, size, PredictorConfig(min_region_fraction=0.0))
    assert keep.dropped == 0 and keep.mask[:30, :30].any() and keep.bbox == d.bbox


def test_two_large_components_main_has_most_probability():
    logits = np.full((32, 32), -5.0, np.float32)
    logits[2:10, 2:10] = 1.0  # 64 cells, p ~0.73
    logits[16:30, 16:30] = 5.0  # 196 cells, p ~0.99: the main region
    size = (480, 640)
    d = decode_mask(logits, 0.9, size, CFG)
    p = _prediction(d, size)
    assert d.regions == 2 and d.dropped == 0
    assert p.mask[60:140, 60:180].any() and p.mask[300:460, 400:600].any()  # both in the mask
    assert not p.region_mask[:200, :220].any()  # the main region alone
    assert p.bbox == mask_bbox(p.region_mask) and p.bbox[0] > 300


def test_absent_results():
    logits = _smooth_logits(3)
    low = decode_mask(logits, 0.2, (240, 320), CFG)  # presence below score_threshold
    assert not low.found and low.bbox is None and not low.mask.any() and low.mask.shape == (240, 320)
    p = _prediction(low, (240, 320))
    assert not p.probability.any() and p.unfiltered_bbox is None
    empty = decode_mask(np.full((32, 32), -3.0, np.float32), 0.99, (240, 320), CFG)
    assert not empty.found and empty.region_score == 0.0
    with pytest.raises(ConfigError, match="min_region_fraction"):
        StreamingPredictor.__new__(StreamingPredictor).update_config(PredictorConfig(min_region_fraction=1.0))


def test_preprocess_large_images_close_to_single_area_resize():
    rng = np.random.default_rng(0)
    for w, h in [(1920, 1080), (1280, 720)]:
        img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), np.uint8), (0, 0), 3)
        ref = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        out = preprocess_image(img, 128).transpose(1, 2, 0)
        assert np.abs(out - ref).max() <= 4 / 255 and np.abs(out - ref).mean() < 1 / 255
    small = rng.integers(0, 255, (240, 320, 3), np.uint8)  # training size: exactly one area resize
    np.testing.assert_array_equal(
        preprocess_image(small, 128).transpose(1, 2, 0),
        cv2.resize(small, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0,
    )


@pytest.mark.parametrize("size", [(1080, 1920), (720, 1280), (481, 643), (32, 32)])
def test_small_target_mask_computed_in_its_window_equals_full_upsampling(size):
    """A target covering a few cells is upsampled only in its window: same mask, box and region."""
    rng = np.random.default_rng(size[0])
    for trial in range(5):
        logits = np.full((32, 32), -6.0, np.float32)
        y, x = rng.integers(0, 28, 2)
        logits[y : y + 4, x : x + 3] = rng.uniform(-1.0, 5.0, (4, 3)).astype(np.float32)
        if trial % 2:  # a second, large-enough component far away: the region mask differs from the mask
            logits[(y + 14) % 28 : (y + 14) % 28 + 3, (x + 14) % 28 : (x + 14) % 28 + 3] = 0.5
        d = decode_mask(logits, 0.9, size, PredictorConfig(min_region_fraction=0.0))
        full = cv2.resize(d.kept_logits, size[::-1], interpolation=cv2.INTER_LINEAR) > d.threshold_logit
        assert np.count_nonzero(d.mask != full) <= 2
        if not d.found:
            assert not full.any()
            continue
        p = _prediction(d, size)
        main = d.main_logits if d.main_logits is not None else d.kept_logits
        region = cv2.resize(main, size[::-1], interpolation=cv2.INTER_LINEAR) > d.threshold_logit
        assert np.count_nonzero(p.region_mask != region) <= 2
        assert p.bbox == mask_bbox(p.region_mask)


def test_window_upsampling_matches_cv2_on_random_windows():
    from refavs_ros.predictor import _upsample_window

    rng = np.random.default_rng(7)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(2, 40, 2))
        H, W = (int(v) for v in rng.integers(1, 1200, 2))
        logits = rng.normal(0, 5, (h, w)).astype(np.float32)
        ref = cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR)
        xa = int(rng.integers(0, W)); xb = int(rng.integers(xa + 1, W + 1))
        ya = int(rng.integers(0, H)); yb = int(rng.integers(ya + 1, H + 1))
        out = _upsample_window(logits, W, H, xa, xb, ya, yb)
        assert out.shape == (yb - ya, xb - xa) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref[ya:yb, xa:xb], atol=1e-4)
