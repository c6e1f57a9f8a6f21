"""refavs_node in a real ROS 2 graph, in one process: the harness of the node stress runs.

:class:`NodeGraph` starts ``refavs_node`` (the real rclpy lifecycle node,
:class:`refavs_ros.ros.node.RefAvsNode`) and a peer node in one rclpy context, spun by a
``NodeExecutor`` (the node's single-threaded executor) in a thread, as ``test/test_node.py`` does. The peer publishes on the
node's inputs (``image`` or ``image/compressed``, ``audio``, ``command``, ``/clock``) and
collects its outputs (``mask``, ``detections``, ``active_command``, ``/diagnostics``) with their
arrival times. Used by ``test/test_node_stress.py`` (fast checks) and the ``bench/node_*.py``
scripts (long runs); needs rclpy, vision_msgs and mgonzs13's audio_common_msgs (what
``scripts/install.sh`` installs).

Instrumentation: :class:`NodeGraph` records, per image stamp, the monotonic time the node's
image callback received it (:attr:`NodeGraph.received`) and the monotonic and system times the
node published its mask (:attr:`NodeGraph.published`), by wrapping the node's callback and the
mask publisher; nothing else of the node is changed.

Times: ``*_ns`` integer nanoseconds (ROS stamps, ``time.time_ns``); ``*_mono`` float seconds of
``time.monotonic``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(101 + os.getpid() % 100))  # tests use 1-100 (conftest)

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from audio_common_msgs.msg import AudioStamped  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from refavs_ros.ros.common import BackgroundSpin  # noqa: E402
from refavs_ros.ros.node import RefAvsNode  # noqa: E402
from refavs_ros.rosio import conversions  # noqa: E402

FACTORY = conversions.ClassFactory.importing()
"""Builds rclpy messages (``refavs_ros.rosio.conversions`` writers)."""
TIMEOUT = 30.0
"""Default wait (s) for anything the graph should do."""


class Collector:
    """Thread-safe message sink with a condition to wait on; keeps (arrival monotonic s, msg).

    Args:
        keep: keep the messages (else only count them: long runs would hold every mask).
        maxlen: keep only the newest this many (None = all).
    """

    def __init__(self, keep: bool = True, maxlen: int | None = None) -> None:
        self.maxlen = maxlen
        self.items: list[Any] = []
        self.times: list[float] = []
        self.count = 0
        self.keep = keep
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        with self._cond:
            self.count += 1
            if self.keep:
                self.items.append(msg)
                self.times.append(time.monotonic())
                if self.maxlen is not None and len(self.items) > self.maxlen:
                    del self.items[: len(self.items) - self.maxlen], self.times[: len(self.times) - self.maxlen]
            self._cond.notify_all()

    def __len__(self) -> int:
        """Messages received (kept or not)."""
        with self._cond:
            return self.count

    def wait_for(self, predicate: Callable[[list[Any]], bool] = bool, timeout: float = TIMEOUT) -> bool:
        """Wait until ``predicate(items)`` holds (True) or ``timeout`` s passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout)

    def clear(self) -> None:
        """Forget what was collected (the count stays)."""
        with self._cond:
            self.items.clear()
            self.times.clear()


def stamp_of(msg: Any) -> int:
    """Header stamp (ns) of a message."""
    return conversions.stamp_to_ns(msg.header.stamp)


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, period: float = 0.002) -> bool:
    """Poll ``predicate`` every ``period`` s until it holds (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(period)
    return True


@contextmanager
def ros_context() -> Iterator[Context]:
    """An initialised rclpy context of its own, shut down on exit."""
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.shutdown(context=ctx)


def rss_bytes() -> int:
    """Resident set size of this process (bytes, ``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15-minute load averages (``os.getloadavg``)."""
    return os.getloadavg()


def machine_line() -> str:
    """CPU count and load average now, for bench output."""
    one, five, fifteen = load_average()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)"


class NodeGraph:
    """refavs_node + a peer node in one context, spun in a thread (:class:`~refavs_ros.ros.common.BackgroundSpin`).

    Args:
        context: an initialised rclpy context (:func:`ros_context`).
        overrides: refavs_node parameters (name -> value), e.g. ``weights_path``, ``use_sim_time``.
        compressed: the peer publishes ``sensor_msgs/CompressedImage`` on ``image/compressed``
            (set the node's ``image_transport`` to ``compressed`` too).
        keep_outputs: keep every received mask and detections message (tests); False only
            counts them (long runs).
    """

    def __init__(self, context: Context, overrides: dict[str, Any], *, compressed: bool = False,
                 keep_outputs: bool = True) -> None:
        self.ns = f"/refavs_stress_{uuid.uuid4().hex[:8]}"
        self.node = RefAvsNode(
            namespace=self.ns, context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
        )
        self.received: dict[int, float] = {}
        """image stamp (ns) -> monotonic s when the node's image callback got it."""
        self._lifecycle_client: Any = None
        self.published: dict[int, tuple[float, int]] = {}
        """image stamp (ns) -> (monotonic s, system ns) when the node published its mask."""
        self.frames: dict[int, dict[str, Any]] = {}
        """image stamp (ns) -> what the pipeline said of the frame: ``audio_ok`` (audio within
        ``max_av_skew_sec``, else silence), ``time_jump`` (memory reset first), ``found``,
        ``latency_ms`` (decode to last output message)."""
        self.record_frames = True
        """Keep :attr:`received`, :attr:`published` and :attr:`frames` (long runs may turn it off
        and read :attr:`on_frame` instead)."""
        self.on_frame: Callable[[int, float | None, float, int, Any], None] | None = None
        """Called after each published frame with (stamp ns, receive monotonic s or None,
        publish monotonic s, publish system ns, the pipeline's FrameOutput)."""
        self._received_lock = threading.Lock()
        self._instrument()
        self.peer = rclpy.create_node("stress_peer", namespace=self.ns, context=context)
        self._spin = BackgroundSpin(context, self.node, self.peer)
        self.image_topic = "image/compressed" if compressed else "image"
        self.image_pub = self.peer.create_publisher(CompressedImage if compressed else Image, self.image_topic,
                                                    qos_profile_sensor_data)
        self.audio_pub = self.peer.create_publisher(AudioStamped, "audio", qos_profile_sensor_data)
        self.command_pub = self.peer.create_publisher(String, "command", 10)
        self.clock_pub = self.peer.create_publisher(Clock, "/clock", 10)
        self.masks, self.detections = Collector(keep_outputs), Collector(keep_outputs)
        self.diagnostics, self.commands = Collector(maxlen=100), Collector(maxlen=100)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.peer.create_subscription(Image, "mask", self.masks, reliable)
        self.peer.create_subscription(Detection2DArray, "detections", self.detections, reliable)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.peer.create_subscription(String, "active_command", self.commands, latched)

    def _instrument(self) -> None:
        node, received, published = self.node, self.received, self.published
        on_image = node._on_image  # the subscription is created at activate from this attribute

        def timed_on_image(msg: Any) -> None:
            try:
                stamp = conversions.stamp_to_ns(msg.header.stamp)
                with self._received_lock:
                    received[stamp] = time.monotonic()
            except Exception:  # noqa: BLE001 - a bad stamp is the node's to reject
                pass
            on_image(msg)

        node._on_image = timed_on_image
        publish = node._publish

        def timed_publish(outcome: Any) -> None:
            publish(outcome)
            frame = outcome.frame
            if frame is None:
                return
            mono, wall = time.monotonic(), time.time_ns()
            with self._received_lock:
                got = received.get(frame.stamp_ns)
                if not self.record_frames:  # forget this frame and the dropped ones before it
                    for stamp in [k for k in received if k <= frame.stamp_ns]:
                        del received[stamp]
            if self.record_frames:
                published[frame.stamp_ns] = (mono, wall)
                self.frames[frame.stamp_ns] = {
                    "audio_ok": bool(frame.prediction.audio_ok), "time_jump": bool(frame.time_jump),
                    "found": bool(frame.prediction.found), "latency_ms": frame.latency_ms,
                }
            if self.on_frame is not None:
                self.on_frame(frame.stamp_ns, got, mono, wall, frame)

        node._publish = timed_publish

    # -------------------------------------------------------------------------------- setup
    def close(self) -> None:
        """Stop spinning, then destroy both nodes (:meth:`BackgroundSpin.close`)."""
        self._spin.close()

    def wait_subscribed(self, topic: str, timeout: float = TIMEOUT) -> bool:
        """Wait until refavs_node subscribes to ``topic`` (relative to its namespace)."""
        name = topic if topic.startswith("/") else f"{self.ns}/{topic}"
        return wait_until(lambda: self.peer.count_subscribers(name) > 0, timeout, 0.02)

    def start(self) -> None:
        """Configure + activate the node and wait until its inputs are matched.

        Raises:
            RuntimeError: a transition failed (the node's ``configure_error`` is in the message).
        """
        if not self.node.bring_up():
            raise RuntimeError(f"refavs_node did not start: {self.node.configure_error}")
        for topic in (self.image_topic, "audio", "command"):
            if not self.wait_subscribed(topic):
                raise RuntimeError(f"refavs_node never subscribed to {topic}")

    # ------------------------------------------------------------------------------- inputs
    def send_command(self, text: str, timeout: float = TIMEOUT) -> None:
        """Publish a command and wait until ``active_command`` says it is in force.

        Raises:
            RuntimeError: it was not applied within ``timeout`` s.
        """
        self.command_pub.publish(String(data=text))
        if not self.commands.wait_for(lambda items: bool(items) and items[-1].data == text.strip(), timeout):
            raise RuntimeError(f"command {text!r} was not applied")

    def change_state(self, transition: int, timeout: float = TIMEOUT) -> bool:
        """Ask refavs_node for a lifecycle transition through its ``change_state`` service
        (``lifecycle_msgs/Transition`` id, e.g. ``Transition.TRANSITION_DEACTIVATE``).

        One client per graph, created on first use and kept: a client created per call can
        send its request before the service has matched the client's response reader, and
        the answer is then lost (seen once in CI: the node made the transition, the caller
        waited 60 s for the answer).

        Returns:
            the service's ``success``; False when no answer came within ``timeout`` s.
        """
        if self._lifecycle_client is None:
            self._lifecycle_client = self.peer.create_client(
                ChangeState, f"{self.ns}/{self.node.get_name()}/change_state")
            if not self._lifecycle_client.wait_for_service(timeout_sec=timeout):
                return False
        done = threading.Event()
        future = self._lifecycle_client.call_async(ChangeState.Request(transition=Transition(id=transition)))
        future.add_done_callback(lambda _: done.set())
        return bool(done.wait(timeout) and future.result().success)

    def publish_clock(self, stamp_ns: int) -> None:
        """Publish ``/clock`` (use the node's ``use_sim_time``)."""
        self.clock_pub.publish(Clock(clock=conversions.ns_to_stamp(stamp_ns, cls=_time_class())))

    def image_message(self, stamp_ns: int, pixels: np.ndarray, *, encoding: str = "rgb8", frame_id: str = "camera") -> Any:
        """An rclpy ``Image`` (or ``CompressedImage`` PNG when the graph is compressed)."""
        if self.image_topic.endswith("compressed"):
            return conversions.compressed_rgb8(pixels, stamp_ns=stamp_ns, frame_id=frame_id, factory=FACTORY)
        return conversions.array_to_image(pixels, encoding, stamp_ns=stamp_ns, frame_id=frame_id, factory=FACTORY)

    def audio_message(self, stamp_ns: int, samples: np.ndarray, rate: int = 16000) -> Any:
        """An rclpy mgonzs13 ``AudioStamped`` whose first sample is at ``stamp_ns``."""
        return conversions.array_to_audio_stamped(samples, rate, stamp_ns, "mic", factory=FACTORY)

    # ---------------------------------------------------------------------------- counters
    def rejections(self) -> dict[str, int]:
        """Messages the node rejected so far by ``"<kind>: <reason>"`` (its pipeline and its
        callbacks; what ``/diagnostics`` shows as ``rejected <kind>: <reason>``)."""
        node = self.node
        pipeline = node._pipeline
        counts = dict(node._callback_rejections)
        if pipeline is not None:
            for key, n in list(pipeline.rejections.items()):
                counts[key] = counts.get(key, 0) + n
        return counts

    def diagnostics_status(self) -> Any | None:
        """The node's newest ``diagnostic_msgs/DiagnosticStatus`` (None before any)."""
        prefix = f"{self.ns}/{self.node.get_name()}"
        for array in reversed(list(self.diagnostics.items)):
            for status in array.status:
                if status.name.startswith(prefix):
                    return status
        return None

    def diagnostics_values(self) -> dict[str, str]:
        """Key/values of the node's newest ``/diagnostics`` status ({} before any), plus
        ``"_level"`` (0 OK, 1 WARN, 2 ERROR) and ``"_message"``."""
        status = self.diagnostics_status()
        if status is None:
            return {}
        level = status.level[0] if isinstance(status.level, (bytes, bytearray)) else int.from_bytes(status.level, "little")
        return {kv.key: kv.value for kv in status.values} | {"_level": str(level), "_message": status.message}

    def wait_diagnostics(self, predicate: Callable[[dict[str, str]], bool], timeout: float = TIMEOUT) -> dict[str, str]:
        """Wait for a ``/diagnostics`` status of the node satisfying ``predicate``; returns its
        values ({} on timeout)."""
        found: dict[str, str] = {}

        def check(_items: list[Any]) -> bool:
            nonlocal found
            values = self.diagnostics_values()
            if values and predicate(values):
                found = values
                return True
            return False

        self.diagnostics.wait_for(check, timeout)
        return found


def _time_class() -> type:
    from builtin_interfaces.msg import Time

    return Time


def make_weights(profile: str, directory: Path) -> Path | None:
    """Weights for the node: None = the shipped tiny model; ``"base"`` = a random EEMC of the
    base profile (the paper's size; same graph and cost as trained weights) with a random
    6-layer, 768-wide BERT as its text encoder (DistilRoBERTa is not available offline), saved
    under ``directory``.

    Raises:
        ValueError: unknown profile.
    """
    if profile == "tiny":
        return None
    if profile != "base":
        raise ValueError(f"profile must be tiny or base, got {profile!r}")
    import dataclasses

    import torch

    from bench.backend_latency import make_text_dir
    from refavs_ros.models.checkpoint import save_eemc
    from refavs_ros.models.config import EEMCConfig
    from refavs_ros.models.eemc import EEMC

    directory.mkdir(parents=True, exist_ok=True)
    cfg = EEMCConfig.profile_named("base")
    cfg = dataclasses.replace(cfg, text_model=make_text_dir("base", cfg, directory))
    torch.manual_seed(0)
    return save_eemc(EEMC(cfg).eval(), directory / "base_random.safetensors")
