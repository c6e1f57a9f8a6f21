"""refavs_node with depth_enabled, in a real rclpy graph (issue 10): 3-D outputs and diagnostics.

Same harness as ``test_node.py`` (a peer node publishing colour, audio, depth and camera info, a
tiny random EEMC with thresholds that always report the target found). Skipped where rclpy or the
vision_msgs 3-D messages are not importable.
"""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed: node tests need ROS 2 (see README)")
_vision = pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed")
if not hasattr(_vision, "Detection3DArray"):
    pytest.skip("vision_msgs was built without Detection3DArray (rebuild from msg/)", allow_module_level=True)

from geometry_msgs.msg import PointStamped, PoseStamped
from rclpy.context import Context
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from test_node import FACTORY, HEIGHT, WIDTH, Collector, Harness, _stamp
from visualization_msgs.msg import Marker

from refavs_ros.geometry import CameraIntrinsics
from refavs_ros.rosio import conversions, rgbd

CAMERA = CameraIntrinsics.from_fov(WIDTH, HEIGHT, 60.0)


class DepthHarness(Harness):
    """The test_node harness plus depth/camera-info publishers and 3-D output collectors."""

    def __init__(self, ctx, overrides):
        super().__init__(ctx, overrides)
        self.depth_pub = self.peer.create_publisher(Image, "depth/image", qos_profile_sensor_data)
        self.info_pub = self.peer.create_publisher(CameraInfo, "depth/camera_info", qos_profile_sensor_data)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.points, self.goals, self.det3d, self.markers = Collector(), Collector(), Collector(), Collector()
        self.peer.create_subscription(PointStamped, "target_point", self.points, reliable)
        self.peer.create_subscription(PoseStamped, "goal_pose", self.goals, reliable)
        self.peer.create_subscription(_vision.Detection3DArray, "detections_3d", self.det3d, reliable)
        self.peer.create_subscription(Marker, "debug/marker", self.markers, reliable)

    def send_depth(self, stamp_ns: int, metres: float, *, scale: int = 1) -> None:
        """Publish camera info + a uniform 16UC1 depth image (1/scale of the colour size)."""
        header = conversions.make_header(stamp_ns, "camera_optical", factory=FACTORY)
        depth = np.full((HEIGHT // scale, WIDTH // scale), int(metres * 1000), np.uint16)
        self.info_pub.publish(rgbd.camera_info_message(CAMERA, header, factory=FACTORY))
        self.depth_pub.publish(rgbd.depth_to_image(depth, header, factory=FACTORY))


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture
def make_depth_harness(context, tiny_weights):
    created = []

    def make(**overrides):
        params = {"weights_path": str(tiny_weights), "device": "cpu", "mask_threshold": 0.01, "score_threshold": 0.0,
                  "depth_enabled": True, "min_valid_depth_pixels": 5, "standoff_m": 1.0}
        params.update(overrides)
        h = DepthHarness(context, params)
        created.append(h)
        return h

    yield make
    for h in created:
        h.close()


def test_depth_outputs_carry_the_colour_header_and_nothing_without_fresh_depth(make_depth_harness):
    h = make_depth_harness()
    assert h.node.bring_up()
    h.send_command("the dog")
    assert h.wait_subscribed("image") and h.wait_subscribed("depth/image") and h.wait_subscribed("depth/camera_info")
    stamp = 1_700_000_000_000_000_000
    h.send_depth(stamp, 2.5, scale=2)  # half-resolution depth: intrinsics scaled
    h.send_frame(stamp)
    assert h.points.wait_for(), "no target_point published"
    point = h.points.items[-1]
    assert _stamp(point) == stamp and point.header.frame_id == "camera_optical"
    assert point.point.z == pytest.approx(2.5, abs=1e-6)
    assert h.goals.wait_for() and h.det3d.wait_for() and h.markers.wait_for()
    goal = h.goals.items[-1]
    p = np.array([point.point.x, point.point.y, point.point.z])
    g = np.array([goal.pose.position.x, goal.pose.position.y, goal.pose.position.z])
    assert _stamp(goal) == stamp and np.linalg.norm(p - g) == pytest.approx(1.0, abs=1e-6)
    det = h.det3d.items[-1]
    assert len(det.detections) == 1 and det.detections[0].results[0].hypothesis.class_id == "the dog"
    assert det.detections[0].bbox.center.position.z == pytest.approx(2.5, abs=1e-6)
    # a frame whose newest depth is 1 s old: the 2-D outputs go on, no 3-D output, diagnostics say why
    late = stamp + 1_000_000_000
    h.send_frame(late)
    assert h.masks.wait_for(lambda items: any(_stamp(m) == late for m in items))
    assert h.diagnostics.wait_for(lambda items: any(
        any(kv.key == "3-D target" and kv.value.startswith("depth_too_old") for kv in s.values)
        and "depth_too_old" in s.message and s.level == bytes([1])
        for a in items for s in a.status))
    assert not any(_stamp(m) == late for m in h.points.items + h.goals.items + h.det3d.items + h.markers.items)


def test_depth_disabled_by_default_creates_no_depth_entities(make_depth_harness):
    h = make_depth_harness(depth_enabled=False)
    assert h.node.bring_up()
    names = {name for name, _ in h.peer.get_topic_names_and_types()}
    assert f"{h.ns}/target_point" not in names or h.peer.count_publishers(f"{h.ns}/target_point") == 0
    assert h.peer.count_subscribers(f"{h.ns}/depth/image") == 0
