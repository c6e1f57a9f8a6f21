"""Tests of refavs_ros.node.pipeline: the one message pipeline of refavs_node and refavs-replay.

ROS-free: messages are built with the rosbags factory (the node uses rclpy's classes through the
same :class:`~refavs_ros.rosio.conversions.MessageFactory`; ``test/test_node.py`` runs it in a
real ROS graph).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from refavs_ros.errors import InputError
from refavs_ros.node.inputs import TIME_JUMP_BACK_NS, Batch, Stamped
from refavs_ros.node.pipeline import (
    MessagePipeline,
    PipelineOptions,
    decode_image,
    overlay_caption,
)
from refavs_ros.predictor import PredictorConfig, StreamingPredictor
from refavs_ros.rosio import conversions

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


@pytest.fixture
def pipeline(tiny_weights) -> MessagePipeline:
    predictor = StreamingPredictor.from_pretrained(
        tiny_weights, config=PredictorConfig(num_frames=3, mask_threshold=0.01, score_threshold=0.0)
    )
    return MessagePipeline(predictor)


def image(stamp_ns: int, seed: int = 0, h: int = 30, w: int = 40, encoding: str = "rgb8"):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return conversions.array_to_image(pixels, encoding, stamp_ns=stamp_ns, frame_id="camera_optical")


def audio(stamp_ns: int, n: int = 8000, rate: int = 16000):
    samples = (np.random.default_rng(stamp_ns % 97).standard_normal(n) * 3000).astype(np.int16)
    return conversions.array_to_audio_stamped(samples, rate, stamp_ns, "mic")


def test_outputs_carry_the_source_header_and_size(pipeline) -> None:
    pipeline.handle_command("the dog", T0)
    pipeline.handle_audio(audio(T0 - SEC))
    frame = pipeline.handle_image(image(T0), overlay=True)
    assert frame is not None and frame.stamp_ns == T0
    for msg in (frame.mask, frame.detections, frame.overlay):
        assert conversions.stamp_to_ns(msg.header.stamp) == T0 and msg.header.frame_id == "camera_optical"
    assert (frame.mask.height, frame.mask.width, frame.mask.encoding) == (30, 40, "mono8")
    assert (frame.overlay.height, frame.overlay.width, frame.overlay.encoding) == (30, 40, "bgr8")
    assert frame.detections.detections[0].results[0].hypothesis.class_id == "the dog"
    np.testing.assert_array_equal(conversions.image_to_array(frame.mask), frame.prediction.mask * 255)
    assert frame.latency_ms > 0 and pipeline.av_skew_sec(T0) == pytest.approx(0.5)


def test_no_command_no_output_and_overlay_only_on_request(pipeline) -> None:
    assert pipeline.handle_image(image(T0)) is None
    pipeline.handle_command("the dog", T0)
    assert pipeline.handle_image(image(T0 + SEC)).overlay is None


def test_command_rule_empty_clears_blank_is_rejected(pipeline) -> None:
    change = pipeline.handle_command("  the red car ", T0)
    assert change.text == "the red car" and change.message.data == "the red car" and change.cause == "received"
    assert pipeline.handle_command("the red car", T0 + SEC) is None  # same command: timeout restarts only
    with pytest.raises(InputError, match="blank") as info:
        pipeline.handle_command(" \t ", T0)
    assert info.value.reason == "blank command"
    assert pipeline.command == "the red car"  # the command in force stays
    assert pipeline.handle_command("", T0).text == ""  # the empty string clears
    assert pipeline.command == ""
    with pytest.raises(InputError):
        pipeline.handle_command("x" * 10_000, T0)
    with pytest.raises(InputError):
        pipeline.handle_command("a\x00b", T0)
    assert pipeline.rejections == {"command: blank command": 1, "command: too long": 1,
                                   "command: control characters": 1}


def test_command_timeout_expires_on_the_ros_clock(pipeline) -> None:
    pipeline.handle_command("the dog", T0)
    assert pipeline.expire_command(T0 + SEC, timeout_sec=2.0) is None
    change = pipeline.expire_command(T0 + 3 * SEC, timeout_sec=2.0)
    assert change.text == "" and change.cause == "expired" and pipeline.command == ""


def test_stale_stamps_rejected_time_jump_resets(pipeline) -> None:
    pipeline.handle_command("the dog", T0)
    assert pipeline.handle_image(image(T0)) is not None
    for stale in (T0, T0 - SEC // 2):  # duplicate; a lagging second publisher
        with pytest.raises(InputError, match="not newer") as info:
            pipeline.handle_image(image(stale))
        assert info.value.reason == "stale stamp"
    pipeline.handle_audio(audio(T0))
    looped = pipeline.handle_image(image(T0 - TIME_JUMP_BACK_NS))  # a bag played in a loop
    assert looped is not None and looped.time_jump and pipeline.time_jumps == 1
    assert pipeline.audio_end_ns is None  # audio buffer reset with the memory
    assert not pipeline.handle_image(image(T0 - TIME_JUMP_BACK_NS + SEC)).time_jump
    assert pipeline.rejections == {"image: stale stamp": 2}


def test_bad_messages_rejected_by_reason_and_pipeline_keeps_working(pipeline) -> None:
    pipeline.handle_command("the dog", T0)
    bad = image(T0)
    bad.encoding = "32FC7"
    with pytest.raises(InputError):
        pipeline.handle_image(bad)
    short = image(T0)
    short.data = short.data[:-1]
    with pytest.raises(InputError):
        pipeline.handle_image(short)
    empty = audio(T0, n=0)
    with pytest.raises(InputError, match="no samples"):
        pipeline.handle_audio(empty)
    nan = conversions.array_to_audio_stamped(np.full(160, np.nan, np.float32), 16000, T0, "mic")
    with pytest.raises(InputError):
        pipeline.handle_audio(nan)
    assert pipeline.handle_image(image(T0 + SEC)) is not None
    assert pipeline.rejections == {
        "image: unsupported encoding": 1, "image: data length": 1, "audio: empty audio": 1,
        "audio: non-finite samples": 1,
    }


def test_audio_without_header_needs_a_stamp(pipeline) -> None:
    headerless = SimpleNamespace(data=np.zeros(320, np.uint8).tobytes())
    with pytest.raises(InputError) as info:
        pipeline.handle_audio(headerless)
    assert info.value.reason == "bad stamp"
    raw = MessagePipeline(pipeline.predictor, options=PipelineOptions(audio_sample_rate=16000, audio_channels=1))
    raw.handle_audio(headerless, stamp_ns=T0)
    assert raw.audio_end_ns == T0 + 160 * SEC // 16000


class ExplodingPredictor:
    """Follows the predictor contract but its step fails once (an engine error)."""

    def __init__(self, inner: StreamingPredictor) -> None:
        self.inner, self.fail = inner, True

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def step(self):
        if self.fail:
            self.fail = False
            raise RuntimeError("CUDA error: an illegal memory access")
        return self.inner.step()


def test_process_never_raises_and_reports_failures(pipeline) -> None:
    p = MessagePipeline(ExplodingPredictor(pipeline.predictor))
    batch = Batch(image=Stamped(T0, image(T0)), audio=[Stamped(T0 - SEC, audio(T0 - SEC))], command="the dog")
    out = p.process(batch, T0)
    assert out.command.text == "the dog" and out.frame is None
    (failure,) = out.rejections
    assert failure.key == "image: unexpected RuntimeError" and "illegal memory" in failure.detail
    assert "Traceback" in failure.trace
    bad_cmd = Batch(image=Stamped(T0 + SEC, image(T0 + SEC)), audio=[Stamped(0, object())], command="  ")
    out = p.process(bad_cmd, T0 + SEC)
    assert out.frame is not None and out.command is None
    assert {r.key for r in out.rejections} == {"command: blank command", "audio: unknown audio type"}
    disabled = p.process(Batch(image=Stamped(T0 + 2 * SEC, image(T0 + 2 * SEC)), audio=[], command=None),
                         T0 + 2 * SEC, enabled=False)
    assert disabled.frame is None and not disabled.rejections


def test_compressed_and_raw_images_decode_alike() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    raw = conversions.array_to_image(rgb, "rgb8", stamp_ns=T0)
    png = conversions.compressed_rgb8(rgb, fmt="png", stamp_ns=T0)
    np.testing.assert_array_equal(decode_image(raw), rgb)
    np.testing.assert_array_equal(decode_image(png), rgb)


def test_overlay_caption() -> None:
    assert overlay_caption("", None, None) == "no command"
    assert overlay_caption("dog", None, None) == '"dog"'
    assert overlay_caption("dog", 0.91, True) == '"dog" score 0.91'
    assert overlay_caption("dog", 0.1, False).endswith("(absent)")


def test_stale_stamps_in_a_row_resync(pipeline) -> None:
    """A bag shorter than 1 s looped without /clock goes back < TIME_JUMP_BACK_NS: its frames
    were stale forever; the STALE_RESYNC_FRAMES-th stale one in a row is now a time jump."""
    from refavs_ros.node.pipeline import STALE_RESYNC_FRAMES

    pipeline.handle_command("the dog", T0)
    for k in range(5):
        assert pipeline.handle_image(image(T0 + k * SEC // 10)) is not None
    for k in range(STALE_RESYNC_FRAMES - 1):  # the loop: 0.4 s back
        with pytest.raises(InputError, match="not newer"):
            pipeline.handle_image(image(T0 + k * SEC // 10))
    frame = pipeline.handle_image(image(T0 + (STALE_RESYNC_FRAMES - 1) * SEC // 10))
    assert frame is not None and frame.time_jump and pipeline.time_jumps == 1
    # a lagging second publisher never resyncs: the leading one's frames reset the count
    lead = T0 + SEC
    for k in range(3 * STALE_RESYNC_FRAMES):
        assert pipeline.handle_image(image(lead + k * SEC // 10)) is not None
        with pytest.raises(InputError, match="not newer"):
            pipeline.handle_image(image(lead + k * SEC // 10 - SEC // 4))
    assert pipeline.time_jumps == 1


def test_clock_jump_back_resets_and_flags_the_next_frame(pipeline) -> None:
    pipeline.handle_command("the dog", T0)
    pipeline.handle_audio(audio(T0 - SEC // 2))
    assert pipeline.handle_image(image(T0 + SEC // 2)) is not None
    pipeline.clock_jumped_back()  # /clock went back 0.2 s: a short bag looped with --clock
    assert pipeline.time_jumps == 1 and pipeline.audio_end_ns is None and pipeline.last_image_ns is None
    frame = pipeline.handle_image(image(T0 + SEC // 2 - SEC // 5))
    assert frame is not None and frame.time_jump
    assert not pipeline.handle_image(image(T0 + SEC // 2)).time_jump


def test_image_jump_keeps_audio_that_already_jumped(pipeline) -> None:
    """Without /clock the looped audio chunk may arrive (and restart the audio buffer) before
    the looped image: the image's time jump keeps that audio instead of discarding it."""
    pipeline.handle_command("the dog", T0)
    pipeline.handle_audio(audio(T0 + SEC, n=16000))
    assert pipeline.handle_image(image(T0 + 2 * SEC)) is not None
    pipeline.handle_audio(audio(T0 - SEC, n=16000))  # the loop's audio: 3 s back, a jump
    assert pipeline.predictor.audio_time_jumps == 1
    frame = pipeline.handle_image(image(T0))
    assert frame.time_jump and frame.prediction.audio_ok and pipeline.audio_end_ns == T0
    pipeline.handle_audio(audio(T0, n=16000))
    assert pipeline.handle_image(image(T0 - 2 * SEC)).time_jump  # no new audio jump: audio reset
    assert pipeline.audio_end_ns is None
