"""In-process tests of refavs_node with a real rclpy context.

They publish and subscribe through ROS (a peer node in the same context, the node's NodeExecutor
spinning in a thread) against a tiny random EEMC saved by the ``tiny_weights`` fixture
(``test/conftest.py``). rclpy, vision_msgs and mgonzs13's audio_common_msgs come from a sourced
ROS 2 or from what ``scripts/install.sh`` puts into the venv (ROS 2 Jazzy wheels, interfaces built
from ``msg/``); the module is skipped only where they are not importable (and ``REFAVS_ROS=1``
turns that into an error). Waits use conditions with deadlines, never bare sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip(
    "rclpy", reason="rclpy is not installed: run scripts/install.sh or source a ROS 2 Humble/Jazzy"
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

from refavs_ros.ros.common import BackgroundSpin, NodeExecutor  # noqa: E402
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
    """refavs_node + a peer node in one context, spun in a thread (BackgroundSpin)."""

    def __init__(self, context: Any, overrides: dict[str, Any]) -> None:
        self.ns = f"/refavs_test_{uuid.uuid4().hex[:8]}"
        self.node = RefAvsNode(
            namespace=self.ns, context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
        )
        self.peer = rclpy.create_node("peer", namespace=self.ns, context=context)
        self._spin = BackgroundSpin(context, self.node, self.peer)
        self.image_pub = self.peer.create_publisher(Image, "image", qos_profile_sensor_data)
        self.audio_pub = self.peer.create_publisher(_audio_msgs.AudioStamped, "audio", qos_profile_sensor_data)
        self.command_pub = self.peer.create_publisher(String, "command", 10)
        self.masks, self.detections, self.diagnostics = Collector(), Collector(), Collector()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.peer.create_subscription(Image, "mask", self.masks, reliable)
        self.peer.create_subscription(Detection2DArray, "detections", self.detections, reliable)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, 10)

    def close(self) -> None:
        self._spin.close()

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
    # the node keeps only the newest image: let it take the bad one before a good one replaces it
    assert h.diagnostics.wait_for(
        lambda items: any(kv.key == "bad messages dropped" and int(kv.value) >= 1
                          for arr in items for st in arr.status for kv in st.values)
    )
    broken_audio = conversions.array_to_audio_stamped(np.zeros(160, np.int16), 16000, 3_999_000_000_000, factory=FACTORY)
    broken_audio.audio.info.format = 99  # not a PortAudio format
    h.audio_pub.publish(broken_audio)
    h.send_frame(4_001_000_000_000)
    assert h.masks.wait_for(lambda items: any(_stamp(m) == 4_001_000_000_000 for m in items))
    assert h.diagnostics.wait_for(
        lambda items: any(kv.key == "bad messages dropped" and int(kv.value) >= 2
                          for arr in items for st in arr.status for kv in st.values)
    )
    values = {kv.key: kv.value for arr in h.diagnostics.items for st in arr.status for kv in st.values}
    assert values.get("rejected image: unsupported encoding") == "1"
    assert values.get("rejected audio: unsupported format") == "1"


def test_blank_command_is_rejected_and_the_command_in_force_stays(make_harness) -> None:
    h = make_harness()
    assert h.node.bring_up()
    h.send_command("the dog")
    h.command_pub.publish(String(data="   \t "))
    assert h.diagnostics.wait_for(
        lambda items: any(kv.key == "rejected command: blank command" for arr in items for st in arr.status
                          for kv in st.values)
    )
    assert h.node._pipeline.command == "the dog"
    h.send_command("")  # the empty string clears
    assert h.node._pipeline.command == ""


def test_node_and_replay_publish_identical_masks(make_harness, tmp_path) -> None:
    """refavs_node (real rclpy graph) and refavs-replay run one pipeline: the same messages give the
    same masks byte for byte (shipped model, a real scene, BGR frames with row padding, stereo
    44.1 kHz audio in odd-sized chunks)."""
    from scipy.signal import resample_poly

    from refavs_ros.resources import default_weights_path
    from refavs_ros.rosio import bagio, msgs
    from refavs_ros.scenes import SceneConfig, generate_scene
    from refavs_ros.tools import replay

    sec, t0, height, width = 1_000_000_000, 1_700_000_000 * 1_000_000_000, 120, 160
    cfg = SceneConfig(width=width, height=height, fps=2.0, duration_sec=4.0, start_ns=t0)
    scene = next(s for s in (generate_scene("test-seen", i, 11, cfg) for i in range(60)) if s.kind == "semantic")
    rate, chunk = 44100, 1411
    mono = resample_poly(scene.audio.astype(np.float32), 441, 160)
    wave = np.clip(np.stack([mono, mono * 0.5], axis=1), -32768, 32767).astype(np.int16)
    audio = [(t0 + k * sec // rate, wave[k : k + chunk]) for k in range(0, wave.shape[0] - chunk, chunk)]
    frames = [(stamp, np.ascontiguousarray(rgb[:, :, ::-1])) for stamp, rgb in
              zip(scene.frame_stamps_ns.tolist(), scene.frames)]

    def image_msg(stamp: int, bgr: np.ndarray, factory: Any = None) -> Any:
        return conversions.array_to_image(bgr, "bgr8", stamp_ns=stamp, frame_id="camera", step=width * 3 + 4,
                                          factory=factory)

    def audio_msg(stamp: int, samples: np.ndarray, factory: Any = None) -> Any:
        return conversions.array_to_audio_stamped(samples, rate, stamp, "mic", factory=factory)

    weights = default_weights_path()
    with bagio.BagWriter(tmp_path / "in", storage="mcap") as bag:
        bag.write(bagio.TOPIC_COMMAND, msgs.STRING, conversions.string_message(scene.expression), t0)
        for stamp, samples in audio:
            bag.write(bagio.TOPIC_AUDIO, msgs.AUDIO_STAMPED, audio_msg(stamp, samples), stamp)
        for stamp, bgr in frames:
            bag.write(bagio.TOPIC_IMAGE, msgs.IMAGE, image_msg(stamp, bgr), stamp)
    assert replay.main([str(tmp_path / "in"), "--weights", str(weights), "--num-frames", "4", "--output",
                        str(tmp_path / "out"), "--no-progress", "--gt-topic", "/none"]) == 0
    with bagio.BagReader(tmp_path / "out") as bag:
        replayed = [m.message for m in bag.read_sorted([bagio.TOPIC_MASK]).messages]

    h = make_harness(weights_path=str(weights), num_frames=4, mask_threshold=0.4, score_threshold=0.5)
    assert h.node.bring_up()
    h.send_command(scene.expression)
    assert h.wait_subscribed("image") and h.wait_subscribed("audio")
    sent = 0
    pending = list(audio)
    for stamp, bgr in frames:
        while pending and pending[0][0] <= stamp:
            a_stamp, samples = pending.pop(0)
            h.audio_pub.publish(audio_msg(a_stamp, samples, FACTORY))
            sent += 1
        deadline = threading.Event()
        for _ in range(int(TIMEOUT / 0.01)):  # every chunk of this frame reached the node before the image
            if h.node._buffer.counters().audio_received >= sent:
                break
            deadline.wait(0.01)
        h.image_pub.publish(image_msg(stamp, bgr, FACTORY))
        assert h.masks.wait_for(lambda items, s=stamp: any(_stamp(m) == s for m in items)), f"no mask for {stamp}"
    live = {_stamp(m): m for m in h.masks.items}
    assert len(replayed) == len(frames)
    for theirs in replayed:
        mine = live[conversions.stamp_to_ns(theirs.header.stamp)]
        assert mine.header.frame_id == theirs.header.frame_id == "camera"
        assert (mine.height, mine.width, mine.encoding) == (theirs.height, theirs.width, theirs.encoding)
        np.testing.assert_array_equal(conversions.image_to_array(mine), conversions.image_to_array(theirs))
    assert sum(bool(conversions.image_to_array(m).any()) for m in replayed) >= len(replayed) // 2  # target found


def test_empty_and_24_bit_audio_do_not_stop_the_node(make_harness) -> None:
    """Issue 8: a 0-sample AudioStamped or one with info.format = paInt24 (4) used to end the
    process (AttributeError: 'AudioData' object has no attribute 'int24_data')."""
    h = make_harness()
    assert h.node.bring_up()
    h.send_command("the dog")
    assert h.wait_subscribed("audio")
    stamp = 5_000_000_000_000
    start = stamp - 3_000_000_000  # before the audio send_frame publishes (stamp - 1 s .. stamp)
    empty = conversions.array_to_audio_stamped(np.zeros(0, np.int16), 16000, start, factory=FACTORY)
    h.audio_pub.publish(empty)  # 0 samples: dropped with a reason
    ragged = conversions.array_to_audio_stamped(np.zeros(100, np.uint8), 16000, start + 100_000_000, factory=FACTORY)
    ragged.audio.info.format = 4  # paInt24, 100 bytes: not whole 3-byte samples
    h.audio_pub.publish(ragged)
    packed = conversions.array_to_audio_stamped(np.zeros(300, np.uint8), 16000, start + 200_000_000, factory=FACTORY)
    packed.audio.info.format = 4  # paInt24, 100 packed samples: accepted
    h.audio_pub.publish(packed)
    h.send_frame(stamp)
    assert h.masks.wait_for(lambda items: any(_stamp(m) == stamp for m in items)), "node stopped"
    assert h.diagnostics.wait_for(
        lambda items: any(kv.key == "bad messages dropped" and int(kv.value) >= 2
                          for arr in items for st in arr.status for kv in st.values)
    )
    values = {kv.key: kv.value for arr in h.diagnostics.items for st in arr.status for kv in st.values}
    assert values.get("rejected audio: empty audio") == "1"
    assert values.get("rejected audio: data length") == "1"
    assert values.get("bad messages dropped") == "2"  # the packed 24-bit chunk was accepted


def test_lifecycle_transitions_create_and_drop_entities(make_harness) -> None:
    h = make_harness(autostart=False)
    assert h.node.bring_up()  # autostart off: nothing happens
    image_topic = f"{h.ns}/image"
    assert h.peer.count_subscribers(image_topic) == 0
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node._pipeline is not None and h.peer.count_subscribers(image_topic) == 0
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.wait_subscribed("image")
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node._pipeline is not None  # model kept
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert h.node._pipeline is None  # model freed
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
    assert h.node._pipeline is None


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


def test_node_executor_survives_an_entity_destroyed_while_collecting(context, monkeypatch) -> None:
    """rclpy 7.1.x raises InvalidHandle from spin_once when another thread destroys an entity
    while the wait set is collected (ros2/rclpy#1284); refavs_node's executor counts it and keeps
    spinning, and any other error still propagates."""
    from rclpy.exceptions import InvalidHandle
    from rclpy.executors import SingleThreadedExecutor

    executor = NodeExecutor(context=context)
    errors = [InvalidHandle("cannot use Destroyable because destruction was requested"), RuntimeError("other")]

    def failing_spin_once(self, timeout_sec=None):
        raise errors.pop(0)

    monkeypatch.setattr(SingleThreadedExecutor, "spin_once", failing_spin_once)
    executor.spin_once(0.0)
    assert executor.destroy_races == 1
    with pytest.raises(RuntimeError, match="other"):
        executor.spin_once(0.0)
    executor.shutdown()
