"""audio_capture_node in a real rclpy graph, with a fake PortAudio (no microphone needed).

The fake sounddevice module hands the node's PortAudio callback int16 blocks; a peer node
subscribes to ``audio`` and receives real ``audio_common_msgs/AudioStamped`` messages, which
must decode back to the blocks and, as serialised by rmw, be readable with a type store built
from mgonzs13/audio_common's own texts (``test_msgs_upstream.upstream_store``).
"""

from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (scripts/install.sh installs it)")
_audio_msgs = pytest.importorskip("audio_common_msgs.msg", reason="audio_common_msgs is not built")
if not hasattr(_audio_msgs, "AudioStamped"):
    pytest.skip("audio_common_msgs is the ros-drivers variant", allow_module_level=True)

from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import serialize_message
from test_msgs_upstream import upstream_store

from refavs_ros.ros.audio_capture_node import AudioCaptureNode
from refavs_ros.rosio import conversions, msgs

TIMEOUT = 30.0


class FakeStream:
    """Stands in for sounddevice.InputStream; the test calls the node's callback itself."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.latency = 0.0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def fake_sounddevice(streams: list[FakeStream]) -> SimpleNamespace:
    def input_stream(**kwargs: Any) -> FakeStream:
        streams.append(FakeStream(**kwargs))
        return streams[-1]

    return SimpleNamespace(
        query_devices=lambda: [{"name": "Fake Mic", "max_input_channels": 2}],
        default=SimpleNamespace(device=[0, -1]),
        InputStream=input_stream,
        PortAudioError=RuntimeError,
    )


def test_capture_node_publishes_upstream_audio_stamped() -> None:
    context = Context()
    rclpy.init(context=context)
    streams: list[FakeStream] = []
    ns = f"/capture_test_{uuid.uuid4().hex[:8]}"
    node = peer = None
    executor = SingleThreadedExecutor(context=context)
    try:
        node = AudioCaptureNode(
            sounddevice_module=fake_sounddevice(streams), namespace=ns, context=context,
            parameter_overrides=[Parameter("chunk", value=64), Parameter("channels", value=2)],
        )
        peer = rclpy.create_node("peer", namespace=ns, context=context)
        received: list[Any] = []
        got = threading.Condition()

        def sink(msg: Any) -> None:
            with got:
                received.append(msg)
                got.notify_all()

        peer.create_subscription(_audio_msgs.AudioStamped, "audio", sink, qos_profile_sensor_data)
        executor.add_node(node)
        executor.add_node(peer)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        deadline = threading.Event()
        for _ in range(int(TIMEOUT / 0.05)):  # graph discovery before publishing best-effort data
            if node.count_subscribers(f"{ns}/audio") > 0:
                break
            deadline.wait(0.05)
        assert node.count_subscribers(f"{ns}/audio") > 0
        (stream,) = streams
        assert stream.kwargs["dtype"] == "int16" and stream.kwargs["channels"] == 2
        rng = np.random.default_rng(0)
        blocks = [rng.integers(-32768, 32767, (64, 2), dtype=np.int16, endpoint=True) for _ in range(4)]
        for k, block in enumerate(blocks):
            stream.kwargs["callback"](block, 64, SimpleNamespace(inputBufferAdcTime=k * 0.004, currentTime=k * 0.004), None)
        with got:
            assert got.wait_for(lambda: len(received) >= len(blocks), TIMEOUT), f"{len(received)} of {len(blocks)} chunks"
    finally:
        executor.shutdown()
        for n in (node, peer):
            if n is not None:
                n.destroy_node()
        rclpy.shutdown(context=context)
    store = upstream_store()
    for block, msg in zip(blocks, received):
        samples, rate = conversions.audio_to_array(msg)
        assert rate == 16000 and samples.dtype == np.int16
        np.testing.assert_array_equal(samples, block)
        theirs = store.deserialize_cdr(serialize_message(msg), msgs.AUDIO_STAMPED)  # upstream's view
        assert (theirs.audio.info.format, theirs.audio.info.channels, theirs.audio.info.chunk) == (8, 2, 64)
        np.testing.assert_array_equal(np.asarray(theirs.audio.audio_data.int16_data).reshape(-1, 2), block)
