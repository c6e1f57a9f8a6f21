"""In-process tests of refavs_node with a real rclpy context.

They publish and subscribe through ROS (a peer node in the same context, a MultiThreadedExecutor
spinning in a thread) against a tiny random EEMC saved by the ``tiny_weights`` fixture
(``test/conftest.py``). Skipped where rclpy, vision_msgs or mgonzs13's audio_common_msgs are not
importable (no sourced ROS 2 environment). Waits use conditions with deadlines, never bare sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip(
    "rclpy", reason="rclpy is not installed: node tests need a sourced ROS 2 Humble/Jazzy environment"
)
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed (ros-$ROS_DISTRO-vision-msgs)")
_audio_msgs = pytest.importorskip("audio_common_msgs.msg", reason="audio_common_msgs is not installed")
if not hasattr(_audio_msgs, "AudioStamped"):
    pytest.skip(
        "audio_common_msgs is the ros-drivers variant (no AudioStamped); build mgonzs13/audio_common",
        allow_module_level=True,
    )

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from refavs_ros.ros.node import RefAvsNode  # noqa: E402
from refavs_ros.rosio import conversions  # noqa: E402

FACTORY = conversions.ClassFactory.importing()
HEIGHT, WIDTH = 48, 64
TIMEOUT = 30.0


class Collector:
    """Thread-safe message sink with a condition to wait on."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        with self._cond:
            self.items.append(msg)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool] = bool, timeout: float = TIMEOUT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout)


class Harness:
    """refavs_node + a peer node in one context, spun by a MultiThreadedExecutor thread."""

    def __init__(self, context: Any, overrides: dict[str, Any]) -> None:
        self.ns = f"/refavs_test_{uuid.uuid4().hex[:8]}"
        self.node = RefAvsNode(
            namespace=self.ns, context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
        )
        self.peer = rclpy.create_node("peer", namespace=self.ns, context=context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.image_pub = self.peer.create_publisher(Image, "image", qos_profile_sensor_data)
        self.audio_pub = self.peer.create_publisher(_audio_msgs.AudioStamped, "audio", qos_profile_sensor_data)
        self.command_pub = self.peer.create_publisher(String, "command", 10)
        self.masks, self.detections, self.diagnostics = Collector(), Collector(), Collector()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.peer.create_subscription(Image, "mask", self.masks, reliable)
        self.peer.create_subscription(Detection2DArray, "detections", self.detections, reliable)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, 10)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()
        self.thread.join(timeout=5)

    def latched_command(self) -> Collector:
        """Subscribe late to active_command with transient-local QoS."""
        sink = Collector()
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.peer.create_subscription(String, "active_command", sink, qos)
        return sink

    def wait_subscribed(self, topic: str) -> bool:
        """Wait until refavs_node subscribes to ``topic`` (graph discovery)."""
        done = threading.Event()

        def poll() -> None:
            if self.peer.count_subscribers(f"{self.ns}/{topic}") > 0:
                done.set()

        timer = self.peer.create_timer(0.05, poll)
        ok = done.wait(TIMEOUT)
        self.peer.destroy_timer(timer)
        return ok

    def send_command(self, text: str) -> None:
        sink = self.latched_command()
        assert self.wait_subscribed("command")
        self.command_pub.publish(String(data=text))
        assert sink.wait_for(lambda items: any(m.data == text for m in items)), f"command {text!r} not applied"

    def send_frame(self, stamp_ns: int, *, encoding: str = "rgb8") -> Any:
        """Publish 1 s of audio ending at ``stamp_ns`` and one image stamped ``stamp_ns``."""
        rng = np.random.default_rng(stamp_ns % 1000)
        for k in range(2):
            samples = (rng.standard_normal(8000) * 3000).astype(np.int16)
            self.audio_pub.publish(conversions.array_to_audio_stamped(
                samples, 16000, stamp_ns - 1_000_000_000 + k * 500_000_000, "mic", factory=FACTORY))
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        header = conversions.make_header(stamp_ns, "camera_optical", factory=FACTORY)
        msg = conversions.array_to_image(pixels, encoding, header=header, factory=FACTORY)
        self.image_pub.publish(msg)
        return msg

    def call(self, srv_type: Any, name: str, request: Any) -> Any:
        client = self.peer.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=TIMEOUT)
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(TIMEOUT)
        self.peer.destroy_client(client)
        return future.result()


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.fixture
def make_harness(context, tiny_weights):
    created: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        params = {"weights_path": str(tiny_weights), "device": "cpu", "mask_threshold": 0.01, "score_threshold": 0.0}
        params.update(overrides)
        harness = Harness(context, params)
        created.append(harness)
        return harness

    yield make
    for harness in created:
        harness.close()


def _stamp(msg: Any) -> int:
    return conversions.stamp_to_ns(msg.header.stamp)


def test_autostart_outputs_carry_the_source_header_and_size(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    h.send_command("the dog")
    assert h.wait_subscribed("image")
    stamp = 1_700_000_000_123_456_789
    h.send_frame(stamp)
    assert h.masks.wait_for(), "no mask published"
    mask = h.masks.items[-1]
    assert _stamp(mask) == stamp and mask.header.frame_id == "camera_optical"  # source header, not now()
    assert (mask.height, mask.width, mask.encoding) == (HEIGHT, WIDTH, "mono8")  # source size
    values = set(np.frombuffer(bytes(mask.data), np.uint8).tolist())
    assert values <= {0, 255} and 255 in values  # mask threshold 0.01 + score threshold 0: found
    assert h.detections.wait_for()
    det = h.detections.items[-1]
    assert _stamp(det) == stamp and det.header.frame_id == "camera_optical"
    assert len(det.detections) == 1 and det.detections[0].results[0].hypothesis.class_id == "the dog"


def test_active_command_is_latched_for_late_joiners(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    h.send_command("the red car")
    late = h.latched_command()
    assert late.wait_for(lambda items: bool(items) and items[-1].data == "the red car")


def test_absent_target_gives_empty_detections_and_empty_mask(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    result = h.node.set_parameters([Parameter("score_threshold", value=1.0), Parameter("mask_threshold", value=0.99)])
    assert all(r.successful for r in result)
    h.send_command("nothing like this")
    assert h.wait_subscribed("image")
    h.send_frame(2_000_000_000_000)
    assert h.detections.wait_for()
    assert h.detections.items[-1].detections == []
    assert h.masks.wait_for()
    assert not np.frombuffer(bytes(h.masks.items[-1].data), np.uint8).any()


def test_enable_service_stops_and_resumes_inference(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    h.send_command("the dog")
    assert h.wait_subscribed("image")
    assert h.call(SetBool, f"{h.ns}/enable", SetBool.Request(data=False)).success
    h.send_frame(3_000_000_000_000)
    assert not h.masks.wait_for(timeout=1.5), "inference ran while disabled"
    assert h.call(SetBool, f"{h.ns}/enable", SetBool.Request(data=True)).success
    h.send_frame(3_001_000_000_000)
    assert h.masks.wait_for(lambda items: any(_stamp(m) == 3_001_000_000_000 for m in items))


def test_reset_memory_service(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    response = h.call(Trigger, f"{h.ns}/reset_memory", Trigger.Request())
    assert response.success and "cleared" in response.message


def test_bad_messages_are_dropped_and_the_node_keeps_working(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    h.send_command("the dog")
    assert h.wait_subscribed("image")
    bad = conversions.array_to_image(np.zeros((4, 4), np.uint8), "mono8", stamp_ns=4_000_000_000_000, factory=FACTORY)
    bad.encoding = "32FC7"  # unsupported
    h.image_pub.publish(bad)
    broken_audio = conversions.array_to_audio_stamped(np.zeros(160, np.int16), 16000, 3_999_000_000_000, factory=FACTORY)
    broken_audio.audio.info.format = 99  # not a PortAudio format
    h.audio_pub.publish(broken_audio)
    h.send_frame(4_001_000_000_000)
    assert h.masks.wait_for(lambda items: any(_stamp(m) == 4_001_000_000_000 for m in items))
    assert h.diagnostics.wait_for(
        lambda items: any(kv.key == "bad messages dropped" and int(kv.value) >= 2
                          for arr in items for st in arr.status for kv in st.values)
    )


def test_lifecycle_transitions_create_and_drop_entities(make_harness) -> None:
    h = make_harness(autostart=False)
    assert h.node.bring_up()  # autostart off: nothing happens
    image_topic = f"{h.ns}/image"
    assert h.peer.count_subscribers(image_topic) == 0
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node._predictor is not None and h.peer.count_subscribers(image_topic) == 0
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.wait_subscribed("image")
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node._predictor is not None  # model kept
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert h.node._predictor is None  # model freed
    # configure-time parameters can change while unconfigured, not while configured
    assert h.node.set_parameters([Parameter("image_transport", value="compressed")])[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    refused = h.node.set_parameters([Parameter("backend", value="onnxruntime")])[0]
    assert not refused.successful and "configure" in refused.reason


def test_missing_model_fails_configure_naming_the_file(make_harness, tmp_path) -> None:
    missing = tmp_path / "no_such_weights.safetensors"
    h = make_harness(weights_path=str(missing))
    assert not h.node.bring_up()
    assert str(missing) in h.node.configure_error
    assert h.node._predictor is None


def test_dynamic_parameters_validated(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    assert h.node.set_parameters([Parameter("mask_threshold", value=0.7)])[0].successful
    assert not h.node.set_parameters([Parameter("mask_threshold", value=1.5)])[0].successful  # range
    assert h.node.set_parameters([Parameter("inference_rate_hz", value=5.0)])[0].successful
    assert h.node._infer_timer.timer_period_ns == 200_000_000


def test_incompatible_qos_is_counted_in_diagnostics(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    h.peer.create_subscription(Image, "mask", lambda _: None, latched)  # mask is volatile: incompatible
    assert h.diagnostics.wait_for(
        lambda items: any(kv.key == "incompatible QoS events" and int(kv.value) > 0
                          for arr in items for st in arr.status for kv in st.values)
    )


def test_diagnostics_describe_the_node(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    assert h.diagnostics.wait_for(
        lambda items: any(st.name.startswith(f"{h.ns}/refavs_node") for arr in items for st in arr.status)
    )
    status = next(st for arr in h.diagnostics.items for st in arr.status if st.name.startswith(h.ns))
    keys = {kv.key for kv in status.values}
    assert {"image rate", "A/V skew", "inference latency mean", "end-to-end latency mean", "backend", "model"} <= keys
