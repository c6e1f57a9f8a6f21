"""Tests of refavs_ros.overlay.render_overlay (ROS-free)."""

from __future__ import annotations

import numpy as np
import pytest

from refavs_ros.errors import InputError
from refavs_ros.overlay import BOX_COLOR_BGR, MASK_ALPHA, MASK_COLOR_BGR, render_overlay


def _image(h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_no_mask_no_box_no_text_is_bgr_copy() -> None:
    rgb = _image()
    out = render_overlay(rgb, np.zeros(rgb.shape[:2], bool), None, "")
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb[:, :, ::-1])
    assert not np.shares_memory(out, rgb)


def test_mask_interior_is_blended_and_outside_untouched() -> None:
    rgb = _image()
    mask = np.zeros(rgb.shape[:2], bool)
    mask[40:80, 50:110] = True
    out = render_overlay(rgb, mask, None, "")
    bgr = rgb[:, :, ::-1].astype(np.float32)
    expect = np.rint(bgr * (1 - MASK_ALPHA) + np.asarray(MASK_COLOR_BGR, np.float32) * MASK_ALPHA)
    # interior (away from the 1-px contour) is the alpha blend
    np.testing.assert_array_equal(out[45:75, 55:105], expect[45:75, 55:105].astype(np.uint8))
    # far outside the mask nothing changes
    np.testing.assert_array_equal(out[100:, :], rgb[100:, :, ::-1])
    # the contour is drawn in the solid mask colour on the mask border
    assert tuple(out[40, 80]) == MASK_COLOR_BGR


def test_box_drawn_and_clipped() -> None:
    rgb = np.zeros((60, 80, 3), np.uint8)
    out = render_overlay(rgb, np.zeros((60, 80), bool), (10, 20, 500, 40), "")
    assert tuple(out[20, 30]) == BOX_COLOR_BGR  # top edge
    assert tuple(out[30, 79]) == BOX_COLOR_BGR  # right edge clipped to the last column
    assert tuple(out[30, 40]) == (0, 0, 0)  # inside the box untouched


def test_caption_darkens_band_and_draws_white() -> None:
    rgb = np.full((100, 200, 3), 90, np.uint8)
    out = render_overlay(rgb, np.zeros((100, 200), bool), None, "the dog ? \u00e9")
    band = out[:12, :40]
    assert (band > 200).any()  # text pixels (anti-aliased white)
    assert (band == 30).any()  # darkened background (90 // 3)
    np.testing.assert_array_equal(out[60:, :], rgb[60:, :])


def test_very_long_caption_is_cut_not_failing() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    out = render_overlay(rgb, np.zeros((20, 30), bool), None, "x" * 500)
    assert out.shape == (20, 30, 3)


@pytest.mark.parametrize(
    "rgb, mask, bbox",
    [
        (np.zeros((10, 10), np.uint8), np.zeros((10, 10), bool), None),
        (np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), bool), None),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), bool), None),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool), (5, 5, 1, 1)),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool), (1, 2, 3)),
    ],
)
def test_bad_inputs_raise_input_error(rgb, mask, bbox) -> None:
    with pytest.raises(InputError):
        render_overlay(rgb, mask, bbox, "")
