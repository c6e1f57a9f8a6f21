"""voice_command_node in a real rclpy graph (issue 9): espeak-ng speech published as
audio_common_msgs/AudioStamped becomes a std_msgs/String command; noise does not; bad audio is
counted, never fatal; lifecycle transitions; refavs_node's in-process mode."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (scripts/install.sh installs it)")
_audio_msgs = pytest.importorskip("audio_common_msgs.msg", reason="audio_common_msgs is not built")
if not hasattr(_audio_msgs, "AudioStamped"):
    pytest.skip("audio_common_msgs is the ros-drivers variant", allow_module_level=True)

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import String

from refavs_ros.ros.voice_command_node import VoiceCommandNode
from refavs_ros.rosio import conversions

RATE = 16000
T0 = 1_700_000_000 * 10**9
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def _spin_until(executor, done, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not done():
        executor.spin_once(timeout_sec=0.05)
    return done()


class Graph:
    """A voice node and a peer that publishes audio and listens to the outputs."""

    def __init__(self, **params: Any) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        ns = f"/voice_test_{uuid.uuid4().hex[:8]}"
        self.node = VoiceCommandNode(namespace=ns, context=self.context,
                                     parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.peer = rclpy.create_node("peer", namespace=ns, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.peer)
        self.commands: list[str] = []
        self.transcripts: list[dict] = []
        self.diagnostics: list[Any] = []
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.peer.create_subscription(String, "command", lambda m: self.commands.append(m.data), reliable)
        self.peer.create_subscription(String, "voice/transcript", lambda m: self.transcripts.append(json.loads(m.data)),
                                      reliable)
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, reliable)
        self.audio_pub = self.peer.create_publisher(_audio_msgs.AudioStamped, "audio", qos_profile_sensor_data)

    def publish_audio(self, x: np.ndarray, t0: int = T0) -> None:
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        for i in range(0, pcm.size, 512):
            msg = conversions.array_to_audio_stamped(pcm[i : i + 512], RATE, t0 + round(i * 1e9 / RATE), "mic",
                                                     chunk=512, factory=conversions.ClassFactory.importing())
            self.audio_pub.publish(msg)
            self.executor.spin_once(timeout_sec=0.0)
            self.executor.spin_once(timeout_sec=0.0)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def graph():
    made: list[Graph] = []

    def make(**params):
        made.append(Graph(**params))
        return made[-1]

    yield make
    for g in made:
        g.close()


def _wait_matched(g: Graph) -> None:
    assert _spin_until(g.executor, lambda: g.audio_pub.get_subscription_count() > 0, 10.0)


@needs_espeak
def test_spoken_command_is_published_and_noise_is_not(graph):
    from refavs_ros.scenes.speech import synthesize

    g = graph()
    assert g.node.bring_up()
    _wait_matched(g)
    speech = synthesize("the object that keeps making a sound", "en-us", 160, 50)
    rng = np.random.default_rng(0)
    x = 0.003 * rng.standard_normal(4 * RATE).astype(np.float32)
    x[RATE : RATE + speech.size] += speech
    g.publish_audio(x)
    assert _spin_until(g.executor, lambda: g.commands, 30.0), g.transcripts
    assert g.commands == ["the object that keeps making a sound"]
    assert g.transcripts and g.transcripts[-1]["accepted"] and 0.0 <= g.transcripts[-1]["confidence"] <= 1.0
    # music-like tones and noise: no command
    t = np.arange(6 * RATE) / RATE
    noise = np.concatenate([0.1 * rng.standard_normal(3 * RATE), 0.3 * np.sin(2 * np.pi * 440 * t[: 3 * RATE])])
    g.publish_audio(noise.astype(np.float32), T0 + 10 * 10**9)
    _spin_until(g.executor, lambda: False, 1.0)
    assert g.commands == ["the object that keeps making a sound"]
    assert _spin_until(g.executor, lambda: any(
        any(kv.key == "commands" for kv in s.values) for d in g.diagnostics for s in d.status), 5.0)


def test_bad_audio_is_counted_and_the_node_lives(graph):
    g = graph()
    assert g.node.bring_up()
    _wait_matched(g)
    bad = _audio_msgs.AudioStamped()
    bad.audio.info.format = 8
    bad.audio.info.rate = 16000
    bad.audio.info.channels = 1
    bad.audio.audio_data.int16_data = []  # no samples
    for _ in range(5):
        g.audio_pub.publish(bad)
    nan = conversions.array_to_audio_stamped(np.full(512, np.nan, np.float32), RATE, T0, "mic", chunk=512,
                                             factory=conversions.ClassFactory.importing())
    g.audio_pub.publish(nan)
    assert _spin_until(g.executor, lambda: sum(g.node._rejections.values()) >= 6, 10.0), g.node._rejections
    g.publish_audio(np.zeros(RATE, np.float32), T0 + 10**9)  # still accepts good audio
    assert g.node._recognizer.stats["chunks"] > 0


def test_lifecycle_and_configure_errors(graph, tmp_path):
    g = graph(autostart=False, vocabulary_path=str(tmp_path / "missing.yaml"))
    assert g.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "missing.yaml" in g.node.configure_error
    g2 = graph(autostart=False, backend="whisper", whisper_dir=str(tmp_path / "no-whisper"))
    assert g2.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "no-whisper" in g2.node.configure_error
    g3 = graph()
    assert g3.node.bring_up()
    result = g3.node.set_parameters([Parameter("backend", value="pocketsphinx")])[0]
    assert not result.successful and "configure" in result.reason
    assert g3.node.set_parameters([Parameter("confidence_threshold", value=0.7)])[0].successful
    assert g3.node._recognizer.config.confidence_threshold == 0.7
    assert g3.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert g3.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert g3.node._recognizer is None


@needs_espeak
def test_refavs_node_in_process_voice_commands():
    from rclpy.qos import DurabilityPolicy

    from refavs_ros.ros.node import RefAvsNode
    from refavs_ros.scenes.speech import synthesize

    context = Context()
    rclpy.init(context=context)
    ns = f"/voice_inproc_{uuid.uuid4().hex[:8]}"
    node = RefAvsNode(namespace=ns, context=context, parameter_overrides=[
        Parameter("voice_commands", value=True), Parameter("voice_suppression", value="attenuate")])
    peer = rclpy.create_node("peer", namespace=ns, context=context)
    executor = SingleThreadedExecutor(context=context)
    try:
        executor.add_node(node)
        executor.add_node(peer)
        assert node.bring_up(), node.configure_error
        active: list[str] = []
        transcripts: list[dict] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        peer.create_subscription(String, "active_command", lambda m: active.append(m.data), latched)
        peer.create_subscription(String, "voice/transcript", lambda m: transcripts.append(json.loads(m.data)),
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        pub = peer.create_publisher(_audio_msgs.AudioStamped, "audio", qos_profile_sensor_data)
        assert _spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0)
        speech = synthesize("the object that keeps making a sound", "en-us", 160, 50)
        x = 0.003 * np.random.default_rng(0).standard_normal(4 * RATE).astype(np.float32)
        x[RATE // 2 : RATE // 2 + speech.size] += speech
        pcm = (x * 32767).astype(np.int16)
        factory = conversions.ClassFactory.importing()
        for i in range(0, pcm.size, 512):
            pub.publish(conversions.array_to_audio_stamped(pcm[i : i + 512], RATE, T0 + round(i * 1e9 / RATE), "mic",
                                                           chunk=512, factory=factory))
            executor.spin_once(timeout_sec=0.0)
        assert _spin_until(executor, lambda: "the object that keeps making a sound" in active, 30.0), (active, transcripts)
        assert _spin_until(executor, lambda: transcripts, 10.0)
        assert transcripts[-1]["text"] == "the object that keeps making a sound"
        assert node._pipeline.predictor.command == "the object that keeps making a sound"
        emitted = node._pipeline.voice.emitted[-1]
        assert emitted.suppressed_samples > 0  # the utterance was attenuated in the audio memory
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()
        rclpy.shutdown(context=context)
