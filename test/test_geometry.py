"""refavs_ros.geometry: back-projection, robust point, unknown reasons, regions, stamp pairing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refavs_ros.errors import ConfigError, InputError
from refavs_ros.geometry import (
    CameraIntrinsics,
    GeometryConfig,
    StampPairer,
    UnknownReason,
    bbox_iou,
    depth_in_metres,
    goal_pose,
    locate_target,
    main_region,
)

# A 640x480 camera with a principal point away from the centre and non-square pixels.
INTR = CameraIntrinsics.from_k([500.0, 0, 300.5, 0, 520.0, 260.5, 0, 0, 1], 640, 480)


def _rect_mask(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_scaled_intrinsics_half_resolution_by_hand():
    half = INTR.scaled_to(320, 240)
    # fx' = fx / 2; cx' = (cx + 0.5) / 2 - 0.5 (pixel centres at integers)
    assert (half.fx, half.fy, half.cx, half.cy) == (250.0, 260.0, 150.0, 130.0)
    assert INTR.scaled_to(640, 480) is INTR


def test_back_projection_half_resolution_depth_by_hand():
    # Object: colour rows 200..279, cols 400..479 at 2.000 m; wall at 5 m; depth at 320x240.
    depth = np.full((240, 320), 5000, np.uint16)
    depth[100:140, 200:240] = 2000
    mask = _rect_mask((480, 640), (200, 280), (400, 480))
    t = locate_target(mask, depth, INTR, GeometryConfig(erode_px=0))
    assert t.known and t.reason is None
    # depth grid: u = 200..239 (mean 219.5), v = 100..139 (mean 119.5); fx' 250, cx' 150, fy' 260, cy' 130
    x = (219.5 - 150.0) / 250.0 * 2.0  # 0.556
    y = (119.5 - 130.0) / 260.0 * 2.0  # -0.0807692...
    np.testing.assert_allclose(t.point, [x, y, 2.0], atol=1e-9)
    assert t.valid_pixels == 40 * 40 and t.inlier_pixels == 40 * 40
    assert t.spread_m == 0.0
    # 2nd-98th percentile box of the object's pixel centres
    us = (np.arange(200, 240) - 150.0) / 250.0 * 2.0
    np.testing.assert_allclose(t.extent_m[2], 0.0, atol=1e-9)
    assert t.extent_m[0] == pytest.approx(np.percentile(np.repeat(us, 40), 98) - np.percentile(np.repeat(us, 40), 2))


def test_same_point_from_full_and_half_resolution_depth():
    full = np.full((480, 640), 4000, np.uint16)
    full[200:280, 400:480] = 2500
    half = full[::2, ::2].copy()
    mask = _rect_mask((480, 640), (200, 280), (400, 480))
    a = locate_target(mask, full, INTR)
    b = locate_target(mask, half, INTR)
    # x, y: pixel-centre scaling keeps the region's centroid; half-res differs only by sampling
    np.testing.assert_allclose(a.point, b.point, atol=2e-3)
    assert a.point[2] == b.point[2] == pytest.approx(2.5)


def test_float_depth_metres_and_nan_no_return():
    depth = np.full((480, 640), np.nan, np.float32)
    depth[200:280, 400:480] = 1.5
    depth[200:210, 400:480] = 0.0  # no return
    mask = _rect_mask((480, 640), (200, 280), (400, 480))
    t = locate_target(mask, depth, INTR, GeometryConfig(erode_px=0))
    assert t.valid_pixels == 70 * 80
    # rows 210..279 only (mean 244.5)
    np.testing.assert_allclose(t.point, [(439.5 - 300.5) / 500 * 1.5, (244.5 - 260.5) / 520 * 1.5, 1.5], atol=1e-6)


def test_outliers_and_edge_bleed_rejected():
    rng = np.random.default_rng(0)
    depth = np.full((480, 640), 6000, np.uint16)
    depth[200:280, 400:480] = 3000 + rng.normal(0, 20, (80, 80)).astype(np.int16)
    depth[240, 440] = 60000  # spike
    # the mask spills 6 px onto the wall on every side
    mask = _rect_mask((480, 640), (194, 286), (394, 486))
    t = locate_target(mask, depth, INTR)
    assert t.point[2] == pytest.approx(3.0, abs=0.01)
    assert t.point[0] == pytest.approx((439.5 - 300.5) / 500 * 3.0, abs=0.01)
    assert 0.01 < t.spread_m < 0.04
    # extent of the object only (wall pixels outside the inlier band)
    assert t.extent_m[0] == pytest.approx(80 / 500 * 3.0, rel=0.1)
    assert t.extent_m[2] < 0.2


def test_erosion_falls_back_to_whole_mask_for_thin_targets():
    depth = np.full((480, 640), 2000, np.uint16)
    mask = _rect_mask((480, 640), (100, 300), (300, 302))  # 2 px wide
    t = locate_target(mask, depth, INTR, GeometryConfig(erode_px=3))
    assert t.known and not t.used_core


def test_distortion_undistorts_sampled_pixels():
    intr = CameraIntrinsics.from_k([500.0, 0, 320, 0, 500, 240, 0, 0, 1], 640, 480,
                                   distortion_model="plumb_bob", d=[-0.25, 0.08, 0.001, -0.001, 0.0])
    pts = np.array([[0.5, -0.3, 2.0], [-0.8, 0.4, 3.0], [0.0, 0.0, 1.0]])
    uv = intr.project(pts)
    rays = intr.normalized_rays(uv[:, 0], uv[:, 1])
    np.testing.assert_allclose(rays, pts[:, :2] / pts[:, 2:], atol=1e-5)
    # zero coefficients: the plain pinhole formula, no OpenCV call
    zero = CameraIntrinsics.from_k(intr.k.ravel(), 640, 480, d=[0, 0, 0, 0, 0])
    assert not zero.has_distortion
    np.testing.assert_allclose(zero.normalized_rays(np.array([420.0]), np.array([140.0])), [[0.2, -0.2]])
    fish = CameraIntrinsics.from_k(intr.k.ravel(), 640, 480, distortion_model="equidistant", d=[0.1, 0.01, 0, 0])
    uv = fish.project(pts)
    np.testing.assert_allclose(fish.normalized_rays(uv[:, 0], uv[:, 1]), pts[:, :2] / pts[:, 2:], atol=1e-4)
    bad = CameraIntrinsics.from_k(intr.k.ravel(), 640, 480, distortion_model="weird", d=[0.1])
    with pytest.raises(InputError, match="weird"):
        bad.normalized_rays(np.array([1.0]), np.array([1.0]))


def test_distorted_depth_point():
    intr = CameraIntrinsics.from_k([400.0, 0, 320, 0, 400, 240, 0, 0, 1], 640, 480,
                                   distortion_model="plumb_bob", d=[-0.3, 0.1, 0, 0, 0])
    # the target: x in [1.0, 1.4] m, y in [0.6, 0.8] m on a plane at 2 m; mark the pixels whose
    # true (undistorted) ray hits it
    vv, uu = np.mgrid[0:480, 0:640]
    rays = intr.normalized_rays(uu.ravel().astype(float), vv.ravel().astype(float)).reshape(480, 640, 2) * 2.0
    mask = (rays[..., 0] >= 1.0) & (rays[..., 0] <= 1.4) & (rays[..., 1] >= 0.6) & (rays[..., 1] <= 0.8)
    depth = np.where(mask, 2000, 0).astype(np.uint16)
    t = locate_target(mask, depth, intr, GeometryConfig(erode_px=0))
    assert t.point[0] == pytest.approx(1.2, abs=0.01) and t.point[1] == pytest.approx(0.7, abs=0.01)
    naive = locate_target(mask, depth, CameraIntrinsics.from_k(intr.k.ravel(), 640, 480), GeometryConfig(erode_px=0))
    assert abs(naive.point[0] - 1.2) > 0.1  # ignoring the distortion would be wrong here


def test_unknown_reasons():
    mask = _rect_mask((480, 640), (200, 280), (400, 480))
    depth = np.full((480, 640), 2000, np.uint16)
    assert locate_target(np.zeros((480, 640), bool), depth, INTR).reason is UnknownReason.NO_TARGET
    assert locate_target(mask, None, INTR).reason is UnknownReason.NO_DEPTH
    assert locate_target(mask, depth, None).reason is UnknownReason.NO_CAMERA_INFO
    zeros = locate_target(mask, np.zeros_like(depth), INTR)
    assert zeros.reason is UnknownReason.TOO_FEW_VALID and zeros.point is None and zeros.goal is None
    assert "0 valid depth pixels" in zeros.detail
    sparse = np.zeros_like(depth)
    sparse[240, 440:460] = 2000  # 20 valid pixels < 30
    t = locate_target(mask, sparse, INTR)
    assert t.reason is UnknownReason.TOO_FEW_VALID and t.valid_pixels == 20
    far = np.full((480, 640), 30.0, np.float32)  # beyond max_range_m
    assert locate_target(mask, far, INTR).reason is UnknownReason.TOO_FEW_VALID
    assert not CameraIntrinsics.is_calibrated([0.0] * 9) and CameraIntrinsics.is_calibrated(INTR.k.ravel())
    assert UnknownReason.UNCALIBRATED.value == "uncalibrated"
    # depth too old: from the stamp pairing
    pairer: StampPairer[str] = StampPairer(max_skew_sec=0.05)
    assert pairer.match(10**9).reason is UnknownReason.NO_DEPTH
    pairer.push(10**9, "old")
    late = pairer.match(10**9 + 200_000_000)
    assert late.reason is UnknownReason.DEPTH_TOO_OLD and late.item is None
    assert late.skew_sec == pytest.approx(-0.2)


def test_bad_inputs_named():
    mask = _rect_mask((480, 640), (200, 280), (400, 480))
    with pytest.raises(InputError, match="aspect"):
        locate_target(mask, np.full((480, 480), 1000, np.uint16), INTR)
    with pytest.raises(InputError, match="uint16"):
        locate_target(mask, np.full((480, 640), 1000, np.int32), INTR)
    with pytest.raises(InputError, match="bool"):
        locate_target(mask.astype(np.uint8), np.full((480, 640), 1000, np.uint16), INTR)
    with pytest.raises(InputError, match="9 values"):
        CameraIntrinsics.from_k([1, 2, 3], 640, 480)
    with pytest.raises(InputError, match="focal"):
        CameraIntrinsics.from_k([0.0] * 9, 640, 480)
    with pytest.raises(ConfigError):
        GeometryConfig(standoff_m=-1)
    with pytest.raises(InputError):
        goal_pose(np.zeros(3), 1.0)


def test_depth_in_metres():
    d = depth_in_metres(np.array([[0, 1500]], np.uint16))
    assert math.isnan(d[0, 0]) and d[0, 1] == pytest.approx(1.5)
    f = depth_in_metres(np.array([[0.0, -1.0, np.inf, 2.0]], np.float32))
    assert np.isnan(f[0, :3]).all() and f[0, 3] == 2.0


def _optical_to_body(v):
    """Optical (x right, y down, z forward) -> REP 103 body (x forward, y left, z up)."""
    return np.array([v[2], -v[0], -v[1]])


def _rotate(q, v):
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat(q).apply(v)


def test_goal_pose_standoff_and_heading():
    g = goal_pose(np.array([0.0, 0.0, 3.0]), 1.0)
    np.testing.assert_allclose(g.position, [0, 0, 2.0])
    np.testing.assert_allclose(_rotate(g.orientation, [1, 0, 0]), [0, 0, 1], atol=1e-12)  # faces forward
    np.testing.assert_allclose(_rotate(g.orientation, [0, 0, 1]), [0, -1, 0], atol=1e-12)  # up
    # target 45 deg to the right and 0.5 m below the camera: heading yaw -45 deg in body terms
    p = np.array([2.0, 0.5, 2.0])
    g = goal_pose(p, 1.0)
    assert np.linalg.norm(p - g.position) == pytest.approx(1.0)
    np.testing.assert_allclose(np.cross(g.position, p), 0, atol=1e-12)  # on the ray
    fwd = _optical_to_body(_rotate(g.orientation, [1, 0, 0]))
    assert math.degrees(math.atan2(fwd[1], fwd[0])) == pytest.approx(-45.0)
    assert fwd[2] == pytest.approx(0.0, abs=1e-12)  # level
    assert np.linalg.norm(g.orientation) == pytest.approx(1.0)
    behind = goal_pose(np.array([0.0, 0.0, 0.5]), 1.0)  # nearer than the standoff: back off
    np.testing.assert_allclose(behind.position, [0, 0, -0.5])


def test_main_region_drops_stray_pixels_and_picks_probability_mass():
    mask = np.zeros((60, 80), bool)
    prob = np.zeros((60, 80), np.float32)
    mask[30:50, 40:70] = True
    prob[30:50, 40:70] = 0.7  # target: 600 px x 0.7
    mask[0:2, 0:2] = True
    prob[0:2, 0:2] = 0.99  # stray corner pixels
    mask[5:25, 5:15] = True
    prob[5:25, 5:15] = 0.45  # a second, weaker blob: 200 px x 0.45
    r = main_region(mask, prob, min_area=10)
    assert r.bbox == (40, 30, 69, 49)
    assert r.components == 3 and r.dropped == 1 and r.main_area == 600
    assert r.mean_probability == pytest.approx(0.7)
    assert not r.kept[0:2, 0:2].any() and r.kept[5:25, 5:15].all() and r.main[30:50, 40:70].all()
    assert not r.main[5:25, 5:15].any()
    # probability mass, not area: a smaller confident blob beats a larger faint one
    prob[30:50, 40:70] = 0.1  # 60 < 90
    assert main_region(mask, prob, min_area=10).bbox == (5, 5, 14, 24)
    empty = main_region(np.zeros((4, 4), bool), np.zeros((4, 4)), 3)
    assert empty.bbox is None and not empty.kept.any()
    with pytest.raises(InputError, match="shapes"):
        main_region(mask, prob[:10], 3)


def test_stray_pixels_do_not_move_the_point():
    depth = np.full((480, 640), 5000, np.uint16)
    depth[200:280, 400:480] = 2000
    mask = _rect_mask((480, 640), (200, 280), (400, 480))
    mask[0:3, 0:3] = True  # stray, on the wall at 5 m
    prob = mask.astype(np.float32)
    r = main_region(mask, prob, min_area=20)
    t = locate_target(r.main, depth, INTR)
    assert r.bbox == (400, 200, 479, 279)
    assert t.point[2] == pytest.approx(2.0)
    assert t.point[0] == pytest.approx((439.5 - 300.5) / 500 * 2.0, abs=1e-3)


def test_stamp_pairer_nearest_within_skew_and_time_jump():
    p: StampPairer[int] = StampPairer(max_skew_sec=0.02, capacity=3)
    for i in range(5):
        p.push(1_000_000_000 + i * 33_000_000, i)
    assert len(p) == 3 and p.latest() == 4
    m = p.match(1_000_000_000 + 3 * 33_000_000 + 5_000_000)
    assert m.item == 3 and m.skew_sec == pytest.approx(-0.005)
    assert p.match(1_000_000_000).reason is UnknownReason.DEPTH_TOO_OLD  # evicted
    assert p.match(1_000_000_000 + 4 * 33_000_000 + 15_000_000).item == 4  # lead of 15 ms
    p.push(5, 99)  # stamps went backwards (bag loop): the buffer restarts
    assert len(p) == 1 and p.match(5).item == 99
    with pytest.raises(ConfigError):
        StampPairer(max_skew_sec=-1)


def test_bbox_iou():
    assert bbox_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert bbox_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    assert bbox_iou(None, (0, 0, 1, 1)) == 0.0 and bbox_iou(None, None) == 1.0


def test_from_fov():
    c = CameraIntrinsics.from_fov(640, 480, 90.0)
    assert c.fx == pytest.approx(320.0) and c.cx == 319.5 and c.cy == 239.5
    with pytest.raises(InputError):
        CameraIntrinsics.from_fov(640, 480, 180.0)
