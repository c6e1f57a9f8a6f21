"""refavs_node under stress in a real ROS 2 graph (issue 8 part 4), the fast part.

* generated bad messages on every subscribed topic (``bench/malformed.py``, hypothesis): each is
  rejected with its reason, counted in ``/diagnostics``, and nothing is published for it, while
  good frames sent between them are answered;
* time (``use_sim_time`` with ``/clock``): a bag played in a loop, a camera stall of 5 s, audio
  dropping out for 3 s, audio 0.5 s late, two publishers on one image topic, each as
  ``docs/ros.md`` ("Time") says; ``/clock`` is driven by the test, nothing sleeps for sim time;
* lifecycle transitions through the lifecycle services while images stream: no exception, no
  output while inactive, the model freed on cleanup and no memory growth over cycles.

The long runs (>= 1,000 bad messages per topic, 30 Hz for 5 minutes, a 1-hour soak) are
``bench/node_stress.py``; figures in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip(
    "rclpy", reason="rclpy is not installed: run scripts/install.sh or source a ROS 2 Humble/Jazzy"
)
pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not installed (ros-$ROS_DISTRO-vision-msgs)")
_audio_msgs = pytest.importorskip("audio_common_msgs.msg", reason="audio_common_msgs is not installed")
if not hasattr(_audio_msgs, "AudioStamped"):
    pytest.skip("audio_common_msgs is the ros-drivers variant (no AudioStamped)", allow_module_level=True)
pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e .[test])")

from lifecycle_msgs.msg import Transition  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from bench import malformed  # noqa: E402
from bench.graph import NodeGraph, rss_bytes, ros_context, stamp_of, wait_until  # noqa: E402

SEC = 1_000_000_000
H, W = 48, 64


@pytest.fixture
def context():
    with ros_context() as ctx:
        yield ctx


@pytest.fixture
def make_graph(context, tiny_weights):
    created: list[NodeGraph] = []

    def make(*, compressed: bool = False, **overrides: Any) -> NodeGraph:
        params = {"weights_path": str(tiny_weights), "device": "cpu", "mask_threshold": 0.01,
                  "score_threshold": 0.0, "publish_debug": False}
        if compressed:
            params["image_transport"] = "compressed"
        params.update(overrides)
        graph = NodeGraph(context, params, compressed=compressed)
        created.append(graph)
        return graph

    yield make
    for graph in created:
        graph.close()


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _tone(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 3000).astype(np.int16)


class GoodFrames:
    """Sends good frames (1 s of 16 kHz audio ending at the stamp, then the image) between bad
    messages and checks that each is answered."""

    def __init__(self, graph: NodeGraph, clock: malformed.StampClock) -> None:
        self.graph, self.clock = graph, clock
        self.sent: list[int] = []
        self.audio_end_ns: int | None = None

    def send(self) -> int:
        g = self.graph
        stamp = self.clock.next()
        start = stamp - SEC if self.audio_end_ns is None else self.audio_end_ns
        n = max(1, (stamp - start) * 16000 // SEC)
        received = g.node._buffer.counters().audio_received
        g.audio_pub.publish(g.audio_message(start, _tone(n, stamp % 1000)))
        assert wait_until(lambda: g.node._buffer.counters().audio_received > received), "audio not received"
        self.audio_end_ns = start + n * SEC // 16000
        g.image_pub.publish(g.image_message(stamp, _pixels(stamp % 1000)))
        assert g.masks.wait_for(lambda items: any(stamp_of(m) == stamp for m in items)), f"good frame {stamp} not answered"
        # NodeGraph records the frame after the node's publish() returns, which can be after the
        # mask reached this process: wait for the record too
        assert wait_until(lambda: stamp in g.published), f"good frame {stamp} published but not recorded"
        self.sent.append(stamp)
        return stamp


def _check_reports(reports: list[malformed.TopicReport]) -> None:
    for r in reports:
        assert r.sent > 0 and r.lost == 0, f"{r.topic}: {r.lost} of {r.sent} messages never reached the node"
        assert not r.unexpected, f"{r.topic}: rejected for other reasons than expected: {r.unexpected[:5]}"
        assert sum(r.rejections.values()) == r.sent


def _check_diagnostics(graph: NodeGraph) -> None:
    counts = graph.rejections()
    values = graph.wait_diagnostics(lambda v: all(v.get(f"rejected {k}") == str(n) for k, n in counts.items()))
    assert values, f"/diagnostics never showed the rejection counts {counts}"
    assert values["bad messages dropped"] == str(sum(counts.values()))
    assert values["lifecycle state"] == "active"


def test_generated_bad_messages_are_rejected_by_reason_and_good_frames_answered(make_graph) -> None:
    g = make_graph()
    g.start()
    g.send_command("the dog")
    clock = malformed.StampClock(1_700_000_000 * SEC)
    good = GoodFrames(g, clock)
    good.send()
    counts = {malformed.IMAGE: 120, malformed.AUDIO: 120, malformed.COMMAND: 100}
    reports = []
    for k, (topic, n) in enumerate(counts.items()):
        reports.append(malformed.publish_bad(
            g, topic, n, clock, seed=k, audio_end_ns=lambda: good.audio_end_ns,
            between=lambda sent: sent % 30 or good.send()))
        good.send()
    _check_reports(reports)
    for r in reports:  # every class of the topic was generated
        assert len(r.by_label) >= 5, (r.topic, r.by_label)
    assert g.node._pipeline.command == "the dog"  # no bad command replaced it
    assert sorted(g.published) == good.sent  # outputs only for the good frames
    assert sorted({stamp_of(m) for m in g.masks.items}) == good.sent
    assert sorted({stamp_of(m) for m in g.detections.items}) == good.sent
    _check_diagnostics(g)

    # the empty command is not bad: it clears (and images are then not processed)
    g.send_command("")
    assert g.node._pipeline.command == ""
    g.send_command("the dog")

    # random bytes as raw CDR: dropped by the middleware, never seen by the node's callbacks
    before = g.node._buffer.counters()
    rejected = sum(g.rejections().values())
    rng = np.random.default_rng(0)
    for pub in (g.image_pub, g.audio_pub, g.command_pub):
        for raw in malformed.garbage_cdr(rng, 10):
            pub.publish(raw)
    good.send()
    after = g.node._buffer.counters()
    assert after.images_received == before.images_received + 1  # the good frame only
    assert after.audio_received == before.audio_received + 1
    assert sum(g.rejections().values()) == rejected
    assert g.node._pipeline.command == "the dog"


def test_generated_bad_compressed_images_are_rejected_by_reason(make_graph) -> None:
    g = make_graph(compressed=True)
    g.start()
    g.send_command("the dog")
    clock = malformed.StampClock(1_700_000_000 * SEC)
    good = GoodFrames(g, clock)
    good.send()
    report = malformed.publish_bad(g, malformed.COMPRESSED, 100, clock, seed=7,
                                   between=lambda sent: sent % 30 or good.send())
    good.send()
    _check_reports([report])
    assert len(report.by_label) >= 6, report.by_label
    assert sorted(g.published) == good.sent
    _check_diagnostics(g)


# ------------------------------------------------------------------------------------ time
class Sim:
    """Drives a node with ``use_sim_time``: publishes ``/clock``, audio and frames, and ticks the
    clock until the node has dealt with each frame (its inference timer runs on ``/clock``)."""

    TICK_NS = 6_000_000  # > the inference timer's 5 ms period

    def __init__(self, graph: NodeGraph, start_ns: int) -> None:
        self.g, self.now = graph, start_ns
        graph.publish_clock(start_ns)
        self.audio_end_ns: int | None = None

    def clock(self, stamp_ns: int) -> None:
        """Set /clock (may jump back)."""
        self.now = stamp_ns
        self.g.publish_clock(stamp_ns)

    def tick_until(self, predicate, timeout: float = 30.0) -> bool:
        """Advance /clock by TICK_NS until ``predicate()`` (True) or ``timeout`` s of wall time."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.clock(self.now + self.TICK_NS)
            wait_until(predicate, 0.05)
        return True

    def audio(self, start_ns: int, end_ns: int) -> None:
        """Publish one chunk [start, end) of 16 kHz audio and wait until the node has it."""
        g = self.g
        n = (end_ns - start_ns) * 16000 // SEC
        before = g.node._buffer.counters().audio_received
        g.audio_pub.publish(g.audio_message(start_ns, _tone(n, start_ns % 1000)))
        assert wait_until(lambda: g.node._buffer.counters().audio_received > before)
        self.audio_end_ns = start_ns + n * SEC // 16000

    def frame(self, stamp_ns: int, *, pub: Any = None, clock: bool = True) -> str:
        """Publish an image stamped ``stamp_ns`` (/clock set to it first) and tick until the node
        answered it (``"answered"``), rejected it (``"rejected"``) or dropped it in its buffer
        (``"dropped"``), or took it without a command in force (``"ignored"``)."""
        g = self.g
        if clock and stamp_ns > self.now:
            self.clock(stamp_ns)
        counters = g.node._buffer.counters()
        rejected = sum(g.rejections().values())
        (pub or g.image_pub).publish(g.image_message(stamp_ns, _pixels(stamp_ns % 1000)))
        assert wait_until(lambda: g.node._buffer.counters().images_received > counters.images_received)

        def outcome() -> str | None:
            if stamp_ns in g.published:
                return "answered"
            if sum(g.rejections().values()) > rejected:
                return "rejected"
            now = g.node._buffer.counters()
            if now.images_stale > counters.images_stale or now.images_dropped > counters.images_dropped:
                return "dropped"
            if not g.node._pipeline.command and g.node._buffer._image is None:
                return "ignored"  # taken by the timer, not processed: no command in force
            return None

        assert self.tick_until(lambda: outcome() is not None), f"frame {stamp_ns} was never handled"
        return outcome()  # type: ignore[return-value]

    def diagnostics(self, predicate) -> dict[str, str]:
        """Tick /clock (the diagnostics timer runs on it) until a status satisfies ``predicate``."""
        found: dict[str, str] = {}

        def check() -> bool:
            nonlocal found
            values = self.g.diagnostics_values()
            if values and predicate(values):
                found = values
                return True
            return False

        assert self.tick_until(check), f"no /diagnostics status as expected; last: {self.g.diagnostics_values()}"
        return found


T0 = 1_700_000_000 * SEC
STEP = SEC // 10  # a 10 Hz camera


@pytest.mark.parametrize("sim_time, seconds", [(True, 1), (False, 1), (False, 2)],
                         ids=["clock-1s-bag", "no-clock-1s-bag", "no-clock-2s-bag"])
def test_bag_played_in_a_loop(make_graph, sim_time: bool, seconds: int) -> None:
    """docs/ros.md, Time: a bag played in a loop is a time jump: the memory and the audio buffer
    are reset and the frames of the new loop are processed. With use_sim_time the backward jump of
    /clock says so at once, whatever the bag's length; without /clock, image stamps 1 s or more
    back are a jump at once (a 2 s bag loops back 1.9 s), and stamps less than 1 s back (a 1 s bag
    loops back 0.9 s) are stale until the 5th in a row. The command timeout follows /clock and
    restarts when the clock jumps back."""
    g = make_graph(use_sim_time=sim_time, command_timeout_sec=3.0 if sim_time else 0.0)
    g.start()
    sim = Sim(g, T0 - SEC)
    sim.tick_until(lambda: True)
    stamps = [T0 + k * STEP for k in range(10 * seconds)]  # the bag: frames and their audio

    def play(first_loop: bool) -> list[str]:
        out = []
        for k, stamp in enumerate(stamps):
            sim.clock(stamp)
            sim.audio(stamp - STEP, stamp)
            out.append(sim.frame(stamp))
            if first_loop and k == len(stamps) - 3:  # the command arrives late in the first loop
                g.command_pub.publish(String(data="the dog"))
                assert sim.tick_until(lambda: g.node._pipeline.command == "the dog")
        return out

    assert play(True)[-2:] == ["answered"] * 2  # before the command nothing is processed
    loop = play(False)  # /clock and every stamp jump back to T0
    pipeline = g.node._pipeline
    skipped = 4 if not sim_time and seconds == 1 else 0  # the 5th stale stamp in a row is a time jump
    assert loop == ["rejected"] * skipped + ["answered"] * (len(stamps) - skipped)
    answered = stamps[skipped:]
    assert g.frames[answered[0]]["time_jump"] and not any(g.frames[s]["time_jump"] for s in answered[1:])
    assert pipeline.time_jumps == 1
    assert all(g.frames[s]["audio_ok"] for s in answered)  # the looped audio is used at once
    assert g.rejections() == ({"image: stale stamp": skipped} if skipped else {})
    # without /clock the audio buffer restarts on its own: the looped chunks start >= 1 s back
    assert pipeline.predictor.audio_time_jumps == (0 if sim_time else 1)
    values = sim.diagnostics(lambda v: v.get("time jumps (memory reset)") == "1")
    assert values["audio time jumps"] == str(pipeline.predictor.audio_time_jumps)
    if sim_time:  # the command, received at T0 + 0.7 s before the jump, restarted its timeout at T0
        assert pipeline.command == "the dog"
        sim.clock(T0 + 2 * SEC + SEC // 2)
        sim.tick_until(lambda: True)
        assert pipeline.command == "the dog"  # 2.5 s of /clock since the restart
        assert sim.tick_until(lambda: bool(g.commands.items) and g.commands.items[-1].data == "")
        assert T0 + 3 * SEC < sim.now < T0 + 3 * SEC + SEC // 2  # expired 3 s of /clock after it


def test_stall_dropout_and_late_audio_with_sim_time(make_graph) -> None:
    """docs/ros.md, Time: audio that stops is silence for the frames after it (beyond
    max_av_skew_sec) and is used again when it returns, the memory is not reset; a camera stall
    is not a time jump; audio up to max_av_skew_sec late is used (aligned with the newest
    buffered audio), later than that is silence and a warning."""
    g = make_graph(use_sim_time=True, max_av_skew_sec=1.0)
    g.start()
    sim = Sim(g, T0 - SEC)
    g.command_pub.publish(String(data="the dog"))
    assert sim.tick_until(lambda: g.node._pipeline is not None and g.node._pipeline.command == "the dog")
    t = T0
    sim.audio(t - SEC, t)

    lags: dict[int, int] = {}

    def run(seconds: float, *, audio_lag_ns: int | None) -> list[int]:
        """Frames at 10 Hz; audio (if any) up to ``audio_lag_ns`` before each frame, in 0.1 s
        chunks (a gap after a dropout, contiguous otherwise)."""
        nonlocal t
        out = []
        for _ in range(round(seconds * 10)):
            t += STEP
            sim.clock(t)
            if audio_lag_ns is not None and t - audio_lag_ns > sim.audio_end_ns:
                sim.audio(max(sim.audio_end_ns, t - audio_lag_ns - STEP), t - audio_lag_ns)
            assert sim.frame(t) == "answered"
            lags[t] = t - sim.audio_end_ns
            out.append(t)
        return out

    def audio_used(frames: list[int]) -> list[bool]:
        return [g.frames[s]["audio_ok"] for s in frames]

    def within_skew(frames: list[int]) -> list[bool]:
        return [lags[s] <= SEC for s in frames]  # max_av_skew_sec = 1 s

    normal = run(2.0, audio_lag_ns=0)
    dropout = run(3.0, audio_lag_ns=None)  # audio drops out for 3 s
    back = run(2.0, audio_lag_ns=0)  # and returns
    assert audio_used(normal) == audio_used(back) == [True] * 20
    # the newest audio is used up to max_av_skew_sec, then silence: 10 frames, then 20
    assert audio_used(dropout) == within_skew(dropout) == [True] * 10 + [False] * 20

    # camera stall: 5 s of /clock with audio but no image
    stall_end = t + 5 * SEC
    while sim.audio_end_ns < stall_end:
        sim.clock(sim.audio_end_ns + STEP)
        sim.audio(sim.audio_end_ns, sim.audio_end_ns + STEP)
    t = stall_end
    after_stall = run(1.0, audio_lag_ns=0)
    assert audio_used(after_stall) == [True] * 10
    assert not any(g.frames[s]["time_jump"] for s in g.frames)

    # audio arriving 0.5 s late: used, A/V skew 0.5 s, no warning
    late = run(2.0, audio_lag_ns=SEC // 2)
    assert audio_used(late) == within_skew(late) == [True] * 20
    values = sim.diagnostics(lambda v: v.get("A/V skew") == "0.500 s")
    assert values["_level"] == "0", values["_message"]
    # then 1.5 s late (the audio source paused 1 s): silence once beyond 1 s, and a warning
    later = run(2.0, audio_lag_ns=3 * SEC // 2)
    assert audio_used(later) == within_skew(later)
    assert audio_used(later)[-10:] == [False] * 10
    values = sim.diagnostics(lambda v: v.get("A/V skew") == "1.500 s")
    assert values["_level"] == "1" and "A/V skew 1.50 s exceeds 1.00 s" in values["_message"]
    assert g.node._pipeline.time_jumps == 0 and g.node._pipeline.predictor.audio_time_jumps == 0
    assert g.rejections() == {}


def test_two_publishers_on_one_image_topic(make_graph) -> None:
    """docs/ros.md, Time: an image not newer than the last processed one is rejected as a stale
    stamp (a second publisher lagging behind by less than 1 s: its frames are never processed);
    a publisher lagging 1 s or more is a time jump at every switch (memory reset each time)."""
    g = make_graph(use_sim_time=True)
    g.start()
    second = g.peer.create_publisher(type(g.image_message(0, _pixels(0))), "image",
                                     rclpy.qos.qos_profile_sensor_data)
    assert wait_until(lambda: g.peer.count_publishers(f"{g.ns}/image") == 2)
    sim = Sim(g, T0 - SEC)
    g.command_pub.publish(String(data="the dog"))
    assert sim.tick_until(lambda: g.node._pipeline is not None and g.node._pipeline.command == "the dog")
    lagging = []
    for k in range(10):
        t = T0 + k * STEP
        assert sim.frame(t) == "answered"
        lagging.append(sim.frame(t - SEC // 4, pub=second, clock=False))  # 0.25 s behind
    assert set(lagging) <= {"rejected", "dropped"} and lagging.count("rejected") >= 1
    assert g.rejections().get("image: stale stamp", 0) == lagging.count("rejected")
    assert g.node._pipeline.time_jumps == 0

    jumps = g.node._pipeline.time_jumps
    far = []
    for k in range(10, 16):
        t = T0 + k * STEP
        assert sim.frame(t) == "answered"
        far.append(t - 5 * SEC)
        assert sim.frame(t - 5 * SEC, pub=second, clock=False) == "answered"  # 5 s behind
    assert [g.frames[s]["time_jump"] for s in far] == [True] * len(far)
    assert g.node._pipeline.time_jumps == jumps + len(far)
    values = sim.diagnostics(lambda v: v.get("time jumps (memory reset)") == str(jumps + len(far)))
    assert values["rejected image: stale stamp"] == str(lagging.count("rejected"))


# ------------------------------------------------------------------------------- lifecycle
class Camera:
    """Publishes frames (and their audio) at ``rate_hz`` from a thread, stamped with wall time."""

    def __init__(self, graph: NodeGraph, rate_hz: float = 30.0) -> None:
        self.g, self.period = graph, 1.0 / rate_hz
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        g = self.g
        chunk = SEC // 30
        while not self._stop.is_set():
            stamp = time.time_ns()
            g.audio_pub.publish(g.audio_message(stamp - chunk, _tone(16000 // 30, self.sent)))
            g.image_pub.publish(g.image_message(stamp, _pixels(self.sent % 7)))
            self.sent += 1
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _change_state(g: NodeGraph, transition: int) -> bool:
    return g.change_state(transition, timeout=60)


def test_lifecycle_transitions_while_images_stream(make_graph, capfd) -> None:
    """deactivate / activate / cleanup / configure through the lifecycle services while a 30 Hz
    camera streams: every transition succeeds, nothing is published while inactive (or
    unconfigured), the predictor is freed by cleanup, and the process's memory does not grow
    over configure/cleanup cycles."""
    g = make_graph()
    g.start()
    g.send_command("the dog")
    camera = Camera(g)
    try:
        assert g.masks.wait_for(lambda items: len(items) >= 5)
        rss_after_cleanup = []
        for cycle in range(4):
            assert _change_state(g, Transition.TRANSITION_DEACTIVATE)
            time.sleep(0.3)  # outputs published before the transition may still be on the way
            n = len(g.masks)
            time.sleep(1.0)
            assert len(g.masks) == n, "published while inactive"
            assert _change_state(g, Transition.TRANSITION_ACTIVATE)
            assert g.masks.wait_for(lambda items, n=n: len(items) > n + 3), "no output after activate"

            predictor = weakref.ref(g.node._pipeline.predictor)
            assert _change_state(g, Transition.TRANSITION_DEACTIVATE)
            assert _change_state(g, Transition.TRANSITION_CLEANUP)
            time.sleep(0.3)
            n = len(g.masks)
            gc.collect()
            assert g.node._pipeline is None and predictor() is None, "cleanup kept the predictor"
            rss_after_cleanup.append(rss_bytes())
            time.sleep(0.5)
            assert len(g.masks) == n, "published while unconfigured"
            assert _change_state(g, Transition.TRANSITION_CONFIGURE)
            assert _change_state(g, Transition.TRANSITION_ACTIVATE)
            assert g.node._pipeline.command == ""  # cleanup freed the pipeline with its command
            g.send_command("the dog")
            assert g.masks.wait_for(lambda items, n=n: len(items) > n + 3), f"no output after cycle {cycle}"
        growth = rss_after_cleanup[-1] - rss_after_cleanup[0]
        assert growth < 40 * 2**20, f"RSS after cleanup grew {growth / 2**20:.1f} MiB over cycles: {rss_after_cleanup}"
        assert g.node._status.last_error == ""
    finally:
        camera.stop()
    err = capfd.readouterr().err
    assert "[ERROR]" not in err and "Traceback" not in err, err[-3000:]
