"""launch_testing test of the installed package: refavs.launch.py brings refavs_node to active and
it answers a command + audio + image with a mask stamped like the image.

Runs where launch_testing, rclpy and the installed refavs_ros package (colcon build, sourced
workspace) with its shipped weights are available (``colcon test`` or ``launch_test``); skipped
elsewhere with the reason.
"""

from __future__ import annotations

import os
import threading
import unittest

import pytest

pytest.importorskip("launch_testing", reason="launch_testing is not installed (needs a ROS 2 environment)")
pytest.importorskip("launch_ros", reason="launch_ros is not installed (needs a ROS 2 environment)")
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (needs a ROS 2 environment)")
_audio_msgs = pytest.importorskip("audio_common_msgs.msg", reason="audio_common_msgs is not installed")
if not hasattr(_audio_msgs, "AudioStamped"):
    pytest.skip("audio_common_msgs lacks AudioStamped (ros-drivers variant)", allow_module_level=True)

from ament_index_python.packages import (  # noqa: E402
    PackageNotFoundError,
    get_package_share_directory,
)

try:
    SHARE = get_package_share_directory("refavs_ros")
except PackageNotFoundError:
    pytest.skip("refavs_ros is not installed in a sourced colcon workspace", allow_module_level=True)
if not os.path.isfile(os.path.join(SHARE, "models", "refavs_tiny.safetensors")):
    pytest.skip("the shipped weights share/refavs_ros/models/refavs_tiny.safetensors are missing",
                allow_module_level=True)

import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

import launch  # noqa: E402
from refavs_ros.rosio import conversions  # noqa: E402

NAMESPACE = "refavs_launch_test"
STAMP_NS = 1_234_000_000_000


@pytest.mark.launch_test
def generate_test_description():
    """Include refavs.launch.py (autostart, CPU) in a test namespace."""
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", "refavs.launch.py")),
        launch_arguments={
            "namespace": NAMESPACE,
            "image_topic": "image",
            "audio_topic": "audio",
            "log_level": "info",
        }.items(),
    )
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


class TestRefavsLaunch(unittest.TestCase):
    """While the launch runs."""

    def test_node_becomes_active_and_answers(self, proc_output):
        proc_output.assertWaitFor("active:", timeout=120)
        rclpy.init()
        node = rclpy.create_node("launch_test_peer", namespace=NAMESPACE)
        factory = conversions.ClassFactory.importing()
        got = threading.Event()
        stamps = []

        def on_mask(msg):
            stamps.append(conversions.stamp_to_ns(msg.header.stamp))
            got.set()

        node.create_subscription(Image, "mask", on_mask, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        command = node.create_publisher(String, "command", 10)
        audio = node.create_publisher(_audio_msgs.AudioStamped, "audio", qos_profile_sensor_data)
        image = node.create_publisher(Image, "image", qos_profile_sensor_data)
        spin = threading.Thread(target=rclpy.spin, args=(node,), daemon=True)
        spin.start()
        try:
            stamp = STAMP_NS
            for _ in range(60):  # ~30 s: command and frames until the node answers
                command.publish(String(data="the dog"))
                audio.publish(conversions.array_to_audio_stamped(
                    np.zeros(8000, np.int16), 16000, stamp - 500_000_000, factory=factory))
                pixels = np.full((40, 56, 3), 128, np.uint8)
                image.publish(conversions.array_to_image(pixels, "rgb8", stamp_ns=stamp, frame_id="cam", factory=factory))
                if got.wait(0.5):
                    break
                stamp += 500_000_000
            self.assertTrue(got.is_set(), "refavs_node published no mask")
            self.assertGreaterEqual(stamps[0], STAMP_NS)
            self.assertEqual((stamps[0] - STAMP_NS) % 500_000_000, 0)  # a stamp we sent, not now()
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestRefavsShutdown(unittest.TestCase):
    """After the launch is shut down (SIGINT)."""

    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
