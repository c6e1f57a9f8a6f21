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
from lifecycle_msgs.srv import ChangeState  # noqa: E402
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
