"""Scenes with depth (refavs_ros.scenes.depth) and the RGB-D message conversions (rosio.rgbd)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from refavs_ros.errors import ConfigError, InputError
from refavs_ros.geometry import (
    CameraIntrinsics,
    GeometryConfig,
    UnknownReason,
    locate_target,
)
from refavs_ros.node.depth import camera_intrinsics
from refavs_ros.rosio import bagio, msgs, rgbd
from refavs_ros.rosio.conversions import make_header
from refavs_ros.scenes import SceneConfig, generate_scene
from refavs_ros.scenes.config import validate_config
from refavs_ros.scenes.depth import MAX_DEPTH_M, MIN_DEPTH_M, NOISE_K, background_depth

STORE = msgs.typestore()
CFG = SceneConfig(width=320, height=240, fps=2.0, depth=True)


def cdr(msg, typename):
    return STORE.deserialize_cdr(STORE.serialize_cdr(msg, typename), typename)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene("test-seen", i, 7, CFG) for i in range(6)]


def test_depth_does_not_change_the_scene(scenes):
    plain = generate_scene("test-seen", 0, 7, SceneConfig(width=320, height=240, fps=2.0))
    assert plain.depth is None
    np.testing.assert_array_equal(plain.frames, scenes[0].frames)
    np.testing.assert_array_equal(plain.audio, scenes[0].audio)
    assert plain.expression == scenes[0].expression
    d = scenes[0].depth
    assert d.depth_mm.shape == (plain.frames.shape[0], 240, 320) and d.depth_mm.dtype == np.uint16
    with pytest.raises(ConfigError, match="depth_scale"):
        validate_config(SceneConfig(depth=True, depth_scale=0.0))
    with pytest.raises(ConfigError, match="hfov_deg"):
        validate_config(SceneConfig(depth=True, hfov_deg=170.0))


def test_objects_consistent_with_apparent_size(scenes):
    for s in scenes:
        cam = s.depth.camera
        for obj in s.info()["objects"]:
            z = obj["depth_m"]
            assert MIN_DEPTH_M <= z <= MAX_DEPTH_M
            box = next(b for b in obj["bboxes"] if b is not None)
            # pinhole: pixel width = f * physical width / Z (the sprite's box; visible part <= it)
            assert box[2] - box[0] <= cam.fx * obj["size_m"][0] / z + 2
            i = obj["index"]
            vis = s.instance_map[0] == i
            if vis.sum() > 400:
                d = s.depth.depth_mm[0][vis]
                d = d[d > 0] / 1000.0
                relief = 0.2 * min(obj["size_m"]) / 2
                assert z - relief - 0.05 <= np.median(d) <= z + 4 * NOISE_K * z * z


def test_background_floor_and_wall():
    cam = CameraIntrinsics.from_fov(320, 240, 60.0)
    bg = background_depth(cam, 1.0, 8.0)
    assert (bg[: 120] == 8.0).all()  # above the horizon: the wall
    v = 230
    assert bg[v, 17] == pytest.approx(cam.fy * 1.0 / (v - cam.cy), rel=1e-6)  # the floor plane y = 1 m
    assert (np.diff(bg[140:, 0]) <= 0).all()  # nearer towards the image bottom


def test_noise_grows_with_distance_squared_and_holes_at_edges(scenes):
    s = scenes[0]
    info = s.info()["camera"]
    wall = info["wall_m"]
    rows = s.depth.depth_mm[:, :40, :]  # top rows: the wall, except objects
    owner = s.instance_map[:, :40, :]
    vals = rows[(owner < 0) & (rows > 0)] / 1000.0
    assert np.std(vals) == pytest.approx(NOISE_K * wall**2, rel=0.25)
    # holes: more at object silhouettes than inside
    from scipy import ndimage

    t = 0
    obj = s.instance_map[t] >= 0
    edge = ndimage.binary_dilation(obj) & ~ndimage.binary_erosion(obj)
    inner = ndimage.binary_erosion(obj, iterations=4)
    zero = s.depth.depth_mm[t] == 0
    assert zero[edge].mean() > 0.3 and zero[inner].mean() < zero[edge].mean() / 3


def test_target_centroid_recovered_from_the_gt_mask(scenes):
    errs = []
    for s in scenes:
        cents = s.info()["target_centroid_m"]
        for t in range(s.frames.shape[0]):
            if s.target is None:
                assert cents[t] is None
                continue
            r = locate_target(s.gt_masks[t], s.depth.depth_mm[t], s.depth.camera)
            errs.append(np.linalg.norm(r.point - np.asarray(cents[t])))
    assert errs and np.median(errs) < 0.05 and max(errs) < 0.2


def test_bag_has_depth_and_camera_info(tmp_path):
    scene = generate_scene("test-seen", 1, 7, SceneConfig(width=320, height=240, fps=2.0, depth=True, depth_scale=0.5))
    path = bagio.write_scene_bag(scene, tmp_path / "bag")
    order = bagio.read_sorted(path, [bagio.TOPIC_DEPTH, bagio.TOPIC_CAMERA_INFO, bagio.TOPIC_IMAGE])
    depth = [m for m in order.messages if m.topic == bagio.TOPIC_DEPTH]
    infos = [m for m in order.messages if m.topic == bagio.TOPIC_CAMERA_INFO]
    images = [m for m in order.messages if m.topic == bagio.TOPIC_IMAGE]
    assert len(depth) == len(infos) == len(images) == scene.frames.shape[0]
    assert [m.stamp_ns for m in depth] == [m.stamp_ns for m in images]
    assert depth[0].message.encoding == "16UC1" and depth[0].message.header.frame_id == bagio.CAMERA_FRAME
    arr = rgbd.depth_image_to_array(depth[3].message)
    assert arr.shape == (120, 160)
    np.testing.assert_array_equal(arr, scene.depth.depth_mm[3])
    cam = camera_intrinsics(infos[0].message)
    assert cam == scene.depth.camera and (cam.width, cam.height) == (320, 240)
    with bagio.BagReader(path) as reader:
        info = json.loads(reader.first_message(bagio.TOPIC_SCENE_INFO).message.data)
    assert len(info["target_centroid_m"]) == scene.frames.shape[0] and info["camera"]["depth_width"] == 160


def test_depth_image_conversions():
    h = make_header(5, "cam")
    mm = np.arange(12, dtype=np.uint16).reshape(3, 4) * 500
    np.testing.assert_array_equal(rgbd.depth_image_to_array(cdr(rgbd.depth_to_image(mm, h), msgs.IMAGE)), mm)
    m = np.array([[0.5, np.nan], [1.25, 7.0]], np.float32)
    back = rgbd.depth_image_to_array(cdr(rgbd.depth_to_image(m, h), msgs.IMAGE))
    np.testing.assert_array_equal(np.isnan(back), np.isnan(m))
    np.testing.assert_allclose(back[~np.isnan(m)], m[~np.isnan(m)])
    # big-endian 32FC1 with row padding
    be = m.astype(">f4").view(np.uint8).reshape(2, 8)
    padded = np.concatenate([be, np.zeros((2, 4), np.uint8)], axis=1).reshape(-1)
    msg = SimpleNamespace(encoding="32FC1", height=2, width=2, step=12, is_bigendian=1, data=padded)
    np.testing.assert_allclose(rgbd.depth_image_to_array(msg)[1], [1.25, 7.0])
    with pytest.raises(InputError, match="depth encoding"):
        rgbd.depth_image_to_array(SimpleNamespace(encoding="rgb8", height=1, width=1, step=3, is_bigendian=0, data=b"abc"))
    with pytest.raises(InputError, match="bytes"):
        rgbd.depth_image_to_array(SimpleNamespace(encoding="32FC1", height=2, width=2, step=8, is_bigendian=0, data=b"\0" * 12))


def test_camera_info_round_trip_binning_roi_uncalibrated():
    cam = CameraIntrinsics.from_k([600.0, 0, 330.0, 0, 610.0, 250.0, 0, 0, 1], 640, 480,
                                  distortion_model="plumb_bob", d=[0.1, -0.05, 0, 0, 0.01])
    info = cdr(rgbd.camera_info_message(cam, make_header(1, "cam")), msgs.CAMERA_INFO)
    assert camera_intrinsics(info) == cam
    assert list(info.p[:3]) == [600.0, 0.0, 330.0]
    binned = SimpleNamespace(k=info.k, d=info.d, distortion_model="plumb_bob", width=640, height=480,
                             binning_x=2, binning_y=2, roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0))
    b = camera_intrinsics(binned)
    assert (b.width, b.height, b.fx, b.cx) == (320, 240, 300.0, 165.0)
    roi = SimpleNamespace(k=info.k, d=[], distortion_model="plumb_bob", width=640, height=480, binning_x=0,
                          binning_y=0, roi=SimpleNamespace(x_offset=100, y_offset=50, width=200, height=150))
    r = camera_intrinsics(roi)
    assert (r.width, r.height, r.cx, r.cy) == (200, 150, 230.0, 200.0)
    zero = SimpleNamespace(k=[0.0] * 9, d=[], distortion_model="", width=640, height=480)
    assert camera_intrinsics(zero) is UnknownReason.UNCALIBRATED


def test_output_messages():
    cam = CameraIntrinsics.from_fov(320, 240, 60.0)
    depth = np.full((240, 320), 3000, np.uint16)
    mask = np.zeros((240, 320), bool)
    mask[100:140, 200:240] = True
    target = locate_target(mask, depth, cam, GeometryConfig(standoff_m=1.0))
    h = make_header(42, "camera")
    pt = cdr(rgbd.target_point_message(target, h), msgs.POINT_STAMPED)
    assert (pt.point.x, pt.point.y, pt.point.z) == pytest.approx(tuple(target.point))
    assert pt.header.frame_id == "camera" and pt.header.stamp.nanosec == 42
    goal = cdr(rgbd.goal_pose_message(target, h), msgs.POSE_STAMPED)
    gp = np.array([goal.pose.position.x, goal.pose.position.y, goal.pose.position.z])
    assert np.linalg.norm(target.point - gp) == pytest.approx(1.0)
    q = goal.pose.orientation
    assert np.linalg.norm([q.x, q.y, q.z, q.w]) == pytest.approx(1.0)
    det = cdr(rgbd.detections_3d_message(target, h, class_id="the cup", score=0.8), msgs.DETECTION3D_ARRAY)
    (d,) = det.detections
    assert d.results[0].hypothesis.class_id == "the cup" and d.results[0].hypothesis.score == pytest.approx(0.8)
    assert d.results[0].pose.pose.position.z == pytest.approx(3.0)
    assert d.bbox.size.x == pytest.approx(target.extent_m[0]) and d.bbox.center.position.z == pytest.approx(3.0)
    assert cdr(rgbd.detections_3d_message(None, h, class_id="x", score=0.0), msgs.DETECTION3D_ARRAY).detections == []
    mk = cdr(rgbd.marker_message(target, h), msgs.MARKER)
    assert mk.type == 2 and mk.lifetime.sec == 1 and mk.pose.position.z == pytest.approx(3.0)
    unknown = locate_target(mask, None, cam)
    for build in (rgbd.target_point_message, rgbd.goal_pose_message, rgbd.marker_message):
        with pytest.raises(InputError, match="unknown"):
            build(unknown, h)


def test_occluders_are_in_front_of_what_they_cover():
    from refavs_ros.scenes import plan_scene
    from refavs_ros.scenes.occlusion import bar_mask, occlude

    cfg = SceneConfig(width=160, height=120, fps=1.0, depth=True)
    seen = set()
    for i in range(12):
        s = generate_scene("test-occluded", i, 2026, cfg)
        occ = s.meta.get("occlusion")
        if occ is None:
            continue
        objects = s.info()["objects"]
        victim_z = objects[occ["object"]]["depth_m"]
        if occ["occluder"] == "object":
            (occluder,) = [o for o in objects if o["role"] == "occluder"]
            assert MIN_DEPTH_M <= occluder["depth_m"] < victim_z
        else:
            plan, _ = occlude(plan_scene("test-occluded", i, 2026, cfg), cfg)
            cover = bar_mask(plan.bars[0], cfg)[0]
            d = s.depth.depth_mm[0][cover]
            assert np.median(d[d > 0]) < victim_z * 1000  # the bar is nearer than what it covers
        seen.add(occ["occluder"])
    assert seen == {"object", "bar"}
