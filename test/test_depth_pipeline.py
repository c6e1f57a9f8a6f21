"""The 3-D target in the message pipeline and in refavs-replay (issue 10, part 3; ROS-free)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from refavs_ros.errors import InputError
from refavs_ros.geometry import CameraIntrinsics, UnknownReason
from refavs_ros.node.depth import KNOWN, TargetLocator
from refavs_ros.node.pipeline import MessagePipeline
from refavs_ros.predictor import mask_bbox
from refavs_ros.rosio import bagio, msgs, rgbd
from refavs_ros.rosio.conversions import make_header
from refavs_ros.scenes import SceneConfig, generate_scene
from refavs_ros.tools import replay as R

CAM = CameraIntrinsics.from_fov(320, 240, 60.0)
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def _prediction(mask, found=True):
    return SimpleNamespace(found=found, region_mask=mask, mask=mask, region_score=0.7, score=0.9, command="the cup")


def _depth_msg(stamp_ns, value_mm=2500):
    depth = np.full((240, 320), value_mm, np.uint16)
    return rgbd.depth_to_image(depth, make_header(stamp_ns, "camera"))


def _info_msg(stamp_ns, camera=CAM):
    return rgbd.camera_info_message(camera, make_header(stamp_ns, "camera"))


MASK = np.zeros((240, 320), bool)
MASK[100:140, 150:200] = True


def test_locator_pairs_by_stamp_and_reports_every_reason():
    loc = TargetLocator(max_depth_skew_sec=0.02)
    h = make_header(T0, "camera")
    assert loc.locate(T0, _prediction(MASK), h, class_id="x").target.reason is UnknownReason.NO_DEPTH
    loc.inputs.offer_depth(T0 - 50_000_000, _depth_msg(T0 - 50_000_000))
    old = loc.locate(T0, _prediction(MASK), h, class_id="x")
    assert old.target.reason is UnknownReason.DEPTH_TOO_OLD and old.depth_skew_sec == pytest.approx(-0.05)
    assert old.target_point is None and "0.02" in old.target.detail
    loc.inputs.offer_depth(T0 + 10_000_000, _depth_msg(T0 + 10_000_000, 2000))
    assert loc.locate(T0, _prediction(MASK), h, class_id="x").target.reason is UnknownReason.NO_CAMERA_INFO
    loc.inputs.offer_camera_info(T0 - 5 * SEC, _info_msg(T0 - 5 * SEC))  # any age: latched once
    out = loc.locate(T0, _prediction(MASK), h, class_id="the cup")
    assert out.status == KNOWN and out.target.point[2] == pytest.approx(2.0)  # the newer, in-skew depth
    assert out.depth_skew_sec == pytest.approx(0.01)
    assert out.target_point.header.stamp.sec == T0 // SEC  # the COLOUR header
    assert out.detections_3d.detections[0].results[0].hypothesis.score == pytest.approx(0.7)
    assert out.goal_pose is not None and out.marker is not None
    # absent target, uncalibrated camera, a bad depth message
    assert loc.locate(T0, _prediction(np.zeros_like(MASK), False), h, class_id="x").target.reason is UnknownReason.NO_TARGET
    zero_k = _info_msg(T0)
    zero_k.k[:] = 0.0
    loc.inputs.offer_camera_info(T0 + 10_000_000, zero_k)
    assert loc.locate(T0, _prediction(MASK), h, class_id="x").target.reason is UnknownReason.UNCALIBRATED
    loc.inputs.offer_camera_info(T0 + 10_000_000, _info_msg(T0))
    bad = _depth_msg(T0 + 20_000_000)
    bad.encoding = "rgb8"
    loc.inputs.offer_depth(T0 + 20_000_000, bad)
    out = loc.locate(T0 + 20_000_000, _prediction(MASK), h, class_id="x")
    assert out.target.reason is UnknownReason.BAD_DEPTH and out.rejection[0] == "depth"
    assert loc.statuses == {"no_depth": 1, "depth_too_old": 1, "no_camera_info": 1, KNOWN: 1, "no_target": 1,
                            "uncalibrated": 1, "bad_depth_message": 1}


def test_pipeline_depth_inputs_need_a_locator():
    pipe = MessagePipeline(SimpleNamespace(command=""))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="disabled"):
        pipe.handle_depth(_depth_msg(T0))
    assert pipe.rejections["depth: depth disabled"] == 1


class OraclePredictor:
    """Returns the GT mask (+ optional stray corner pixels) of the frame with the pushed stamp;
    ``gt_by_bag[k]`` maps stamps to masks for the k-th bag (the replay resets memory per bag)."""

    def __init__(self, gt_by_bag, stray=False):
        self.bags = gt_by_bag
        self.bag = -1
        self.stray = stray
        self.command = ""
        self.pending = None

    def reset_memory(self):
        self.pending = None
        self.bag += 1
        self.gt = self.bags[self.bag]

    def set_command(self, text):
        self.command = text

    def push_audio(self, stamp_ns, samples, rate):
        pass

    def push_image(self, stamp_ns, image):
        self.pending = stamp_ns

    def step(self):
        stamp, self.pending = self.pending, None
        main = self.gt[stamp].copy()
        mask = main.copy()
        if self.stray and main.any():
            mask[:3, :3] = True
        found = bool(main.any())
        return SimpleNamespace(
            stamp_ns=stamp, mask=mask, probability=mask.astype(np.float32), score=0.9 if found else 0.1,
            found=found, bbox=mask_bbox(main), unfiltered_bbox=mask_bbox(mask), region_mask=main,
            region_score=0.8, command=self.command,
        )


def test_replay_with_depth_reports_3d_error_and_writes_outputs(tmp_path):
    cfg = SceneConfig(width=320, height=240, fps=2.0, duration_sec=4.0, depth=True)
    scenes = [generate_scene("test-seen", i, 3, cfg) for i in range(4)]
    scenes = [s for s in scenes if s.target is not None][:2]
    gt = []
    for k, s in enumerate(scenes):
        bagio.write_scene_bag(s, tmp_path / "bags" / f"b{k}")
        gt.append({int(t): m for t, m in zip(s.frame_stamps_ns, s.gt_masks)})
    summary, reports = R.replay(tmp_path / "bags", OraclePredictor(gt, stray=True), output=tmp_path / "out",
                                warn=lambda text: None)
    assert all(r.depth for r in reports)
    geo = summary["geometry"]
    found = geo["3d"]["found"]
    assert found["frames"] == sum(int(m.any()) for s in scenes for m in s.gt_masks)
    assert found["known"] == found["frames"] and found["median_m"] < 0.05 and found["success_rate"] == 1.0
    assert geo["3d"]["iou>=0.5"]["frames"] == found["frames"]
    assert geo["bbox"]["iou_main"] == pytest.approx(1.0) and geo["bbox"]["iou_all"] < 0.9  # strays stretch it
    assert "3-D target (found" in R.format_summary(summary)
    order = bagio.read_sorted(tmp_path / "out" / "b0", [bagio.TOPIC_TARGET_POINT, bagio.TOPIC_GOAL_POSE,
                                                        bagio.TOPIC_DETECTIONS_3D, bagio.TOPIC_MARKER])
    topics = {m.topic for m in order.messages}
    assert topics == {bagio.TOPIC_TARGET_POINT, bagio.TOPIC_GOAL_POSE, bagio.TOPIC_DETECTIONS_3D, bagio.TOPIC_MARKER}
    stamps = {m.stamp_ns for m in order.messages if m.topic == bagio.TOPIC_TARGET_POINT}
    assert stamps <= {int(t) for t in scenes[0].frame_stamps_ns}
    # --no-depth: no 3-D figures
    summary, _ = R.replay(tmp_path / "bags", OraclePredictor(gt), options=R.ReplayOptions(depth=False),
                          warn=lambda text: None)
    assert "3d" not in summary["geometry"] and summary["geometry"]["depth_frames"] == 0
    assert msgs.DETECTION3D_ARRAY == "vision_msgs/msg/Detection3DArray"
