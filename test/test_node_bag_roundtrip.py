"""Issue 3: a bag written with the node's conversion code, read back by the replay tool, gives
the same masks as the node's own path (conversions -> StreamingPredictor -> mask_to_image).

The node (``refavs_ros.ros.node``) decodes images with ``conversions.image_to_rgb8``, audio with
``conversions.audio_to_array``, runs the predictor on each frame and publishes
``conversions.mask_to_image(prediction.mask, source_header)``. This test runs exactly that path
in-process (no rclpy needed) on messages built by ``conversions`` (BGR frames with row padding,
stereo 44.1 kHz audio, a real scene and the shipped model), writes the same messages to a bag, replays the bag with
``refavs-replay --output`` and compares the published masks byte for byte.
"""

from __future__ import annotations

import numpy as np

from refavs_ros.predictor import PredictorConfig, StreamingPredictor
from refavs_ros.resources import default_weights_path
from refavs_ros.rosio import bagio, conversions, msgs
from refavs_ros.scenes import SceneConfig, generate_scene
from refavs_ros.tools import replay

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
H, W = 120, 160


def _messages():
    """A real scene (shipped model, semantic expression) as node-style messages: BGR frames with
    row padding, stereo 44.1 kHz audio in odd-sized chunks."""
    from scipy.signal import resample_poly

    cfg = SceneConfig(width=W, height=H, fps=2.0, duration_sec=4.0, start_ns=T0)
    scene = next(s for s in (generate_scene("test-seen", i, 11, cfg) for i in range(60)) if s.kind == "semantic")
    rate, chunk = 44100, 1411
    mono = resample_poly(scene.audio.astype(np.float32), 441, 160)
    wave = np.clip(np.stack([mono, mono * 0.5], axis=1), -32768, 32767).astype(np.int16)
    audio = []
    for k in range(0, wave.shape[0] - chunk, chunk):
        stamp = T0 + k * SEC // rate
        audio.append((stamp, conversions.array_to_audio_stamped(wave[k : k + chunk], rate, stamp, "mic")))
    images = []
    for stamp, rgb in zip(scene.frame_stamps_ns.tolist(), scene.frames):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        images.append((stamp, conversions.array_to_image(bgr, "bgr8", stamp_ns=stamp, frame_id="camera", step=W * 3 + 4)))
    return scene.expression, images, audio


def _node_path(weights, command, images, audio):
    """What refavs_node does with these messages (callbacks -> timer step -> publish)."""
    predictor = StreamingPredictor.from_pretrained(weights, config=PredictorConfig(num_frames=4))
    predictor.set_command(command)
    published = []
    pending = sorted(audio, key=lambda a: a[0])
    for stamp, img in images:
        while pending and pending[0][0] <= stamp:
            a_stamp, a_msg = pending.pop(0)
            samples, rate = conversions.audio_to_array(a_msg)
            predictor.push_audio(conversions.stamp_to_ns(a_msg.header.stamp), samples, rate)
        predictor.push_image(conversions.stamp_to_ns(img.header.stamp), conversions.image_to_rgb8(img))
        result = predictor.step()
        published.append(conversions.mask_to_image(result.mask, img.header))
    return published


def test_node_conversions_bag_replay_gives_identical_masks(tmp_path):
    weights = default_weights_path()
    command, images, audio = _messages()
    with bagio.BagWriter(tmp_path / "in", storage="mcap") as bag:
        bag.write(bagio.TOPIC_COMMAND, msgs.STRING, conversions.string_message(command), T0)
        for stamp, msg in sorted(audio + images, key=lambda m: m[0]):
            typename = msgs.IMAGE if hasattr(msg, "encoding") else msgs.AUDIO_STAMPED
            topic = bagio.TOPIC_IMAGE if typename == msgs.IMAGE else bagio.TOPIC_AUDIO
            bag.write(topic, typename, msg, stamp)
    expected = _node_path(weights, command, images, audio)

    code = replay.main([str(tmp_path / "in"), "--weights", str(weights), "--num-frames", "4",
                        "--output", str(tmp_path / "out"), "--no-progress", "--gt-topic", "/none"])
    assert code == 0
    with bagio.BagReader(tmp_path / "out") as bag:
        got = [m.message for m in bag.read_sorted([bagio.TOPIC_MASK]).messages]
    assert len(got) == len(expected) == len(images)
    for mine, theirs, (stamp, _) in zip(expected, got, images):
        assert conversions.stamp_to_ns(theirs.header.stamp) == stamp and theirs.header.frame_id == "camera"
        assert (theirs.height, theirs.width, theirs.encoding) == (H, W, "mono8")
        a, b = conversions.image_to_array(mine), conversions.image_to_array(theirs)
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(b)) <= {0, 255}
    assert sum(bool(conversions.image_to_array(m).any()) for m in got) >= len(got) // 2  # the target is found
