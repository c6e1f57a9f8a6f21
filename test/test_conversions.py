"""Round-trip and error tests of refavs_ros.rosio.conversions (images, audio, stamps, detections)."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from refavs_ros.errors import ConfigError, InputError
from refavs_ros.rosio import conversions as conv
from refavs_ros.rosio import msgs

RNG = np.random.default_rng(1234)
STORE = msgs.typestore()


def cdr_round_trip(msg, typename):
    """Serialize with rosbags and deserialize again (what a bag does to a message)."""
    return STORE.deserialize_cdr(STORE.serialize_cdr(msg, typename), typename)


def random_pixels(encoding, height=5, width=6):
    channels, dtype, _ = conv._ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    high = 65536 if dtype == np.uint16 else 256
    return RNG.integers(0, high, shape).astype(dtype)


# --------------------------------------------------------------------------- images

RAW_ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "mono16", "16UC1", "8UC3", "8UC4"]


@pytest.mark.parametrize("encoding", RAW_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("bigendian", [False, True])
def test_image_round_trip_with_padding_and_endianness(encoding, pad, bigendian):
    pixels = random_pixels(encoding)
    bpp = pixels.itemsize * (1 if pixels.ndim == 2 else pixels.shape[2])
    step = pixels.shape[1] * bpp + pad
    msg = conv.array_to_image(pixels, encoding, stamp_ns=1_500_000_001, frame_id="cam", step=step,
                              is_bigendian=bigendian)
    assert msg.step == step and len(msg.data) == step * pixels.shape[0]
    back = conv.image_to_array(cdr_round_trip(msg, msgs.IMAGE))
    assert back.dtype == pixels.dtype and back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)
    assert conv.stamp_to_ns(msg.header.stamp) == 1_500_000_001 and msg.header.frame_id == "cam"


def test_padding_bytes_are_ignored_not_decoded():
    """Row padding filled with garbage must not leak into pixels (a decoder ignoring step would)."""
    pixels = random_pixels("rgb8", 4, 3)
    rows = pixels.reshape(4, 9)
    padded = np.concatenate([rows, np.full((4, 7), 77, np.uint8)], axis=1)
    msg = SimpleNamespace(height=4, width=3, encoding="rgb8", is_bigendian=0, step=16,
                          data=padded.tobytes())
    np.testing.assert_array_equal(conv.image_to_array(msg), pixels)


def test_mono16_byte_order_from_hand_built_bytes():
    values = np.array([[0x0102, 0xA0B0], [0xFFEE, 0x0001]], dtype=np.uint16)
    big = SimpleNamespace(height=2, width=2, encoding="mono16", is_bigendian=1, step=4,
                          data=values.astype(">u2").tobytes())
    little = SimpleNamespace(height=2, width=2, encoding="mono16", is_bigendian=0, step=4,
                             data=values.astype("<u2").tobytes())
    np.testing.assert_array_equal(conv.image_to_array(big), values)
    np.testing.assert_array_equal(conv.image_to_array(little), values)
    assert conv.image_to_array(big).dtype == np.dtype(np.uint16)  # native order
    # mono16 -> rgb8 keeps the high byte
    np.testing.assert_array_equal(conv.image_to_rgb8(big)[..., 1], values >> 8)


@pytest.mark.parametrize("data_kind", ["bytes", "array", "list"])
def test_rclpy_style_sequences_decode(data_kind):
    pixels = random_pixels("bgr8", 2, 3)
    raw = pixels.tobytes()
    data = {"bytes": raw, "array": array.array("B", raw), "list": list(raw)}[data_kind]
    msg = SimpleNamespace(height=2, width=3, encoding="bgr8", is_bigendian=0, step=9, data=data)
    np.testing.assert_array_equal(conv.image_to_rgb8(msg), pixels[..., ::-1])


def test_image_to_rgb8_channel_handling():
    rgb = random_pixels("rgb8")
    alpha = random_pixels("mono8")
    rgba = np.dstack([rgb, alpha])
    bgra = np.dstack([rgb[..., ::-1], alpha])
    mono = random_pixels("mono8")
    cases = {
        "rgb8": (rgb, rgb),
        "bgr8": (rgb[..., ::-1].copy(), rgb),
        "rgba8": (rgba, rgb),
        "bgra8": (bgra, rgb),
        "mono8": (mono, np.dstack([mono] * 3)),
    }
    for encoding, (pixels, expected) in cases.items():
        out = conv.image_to_rgb8(conv.array_to_image(pixels, encoding))
        assert out.dtype == np.uint8 and out.shape == rgb.shape[:2] + (3,) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected, err_msg=encoding)


def _pack_422(y, u, v, order):
    """Pack per-pixel Y (H, W) and per-pair U, V (H, W/2) into UYVY or YUYV bytes (H, W, 2)."""
    h, w = y.shape
    out = np.empty((h, w // 2, 4), np.uint8)
    if order == "uyvy":
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    return out.reshape(h, w, 2)


@pytest.mark.parametrize("pad", [0, 4])
def test_yuv422_orders_decode_to_the_same_rgb(pad):
    h, w = 4, 6
    y = RNG.integers(16, 236, (h, w)).astype(np.uint8)
    u = RNG.integers(16, 241, (h, w // 2)).astype(np.uint8)
    v = RNG.integers(16, 241, (h, w // 2)).astype(np.uint8)
    uyvy = _pack_422(y, u, v, "uyvy")
    yuyv = _pack_422(y, u, v, "yuyv")
    outs = {}
    for encoding, packed in [("yuv422", uyvy), ("uyvy", uyvy), ("yuv422_yuy2", yuyv), ("yuyv", yuyv)]:
        msg = cdr_round_trip(conv.array_to_image(packed, encoding, step=w * 2 + pad), msgs.IMAGE)
        outs[encoding] = conv.image_to_rgb8(msg)
        assert outs[encoding].shape == (h, w, 3) and outs[encoding].dtype == np.uint8
    for encoding in ("uyvy", "yuv422_yuy2", "yuyv"):
        np.testing.assert_array_equal(outs[encoding], outs["yuv422"])
    # BT.601 limited range, per pixel using its pair's chroma
    uu = np.repeat(u, 2, axis=1).astype(float) - 128
    vv = np.repeat(v, 2, axis=1).astype(float) - 128
    yy = 1.164 * (y.astype(float) - 16)
    expected = np.stack([yy + 1.596 * vv, yy - 0.391 * uu - 0.813 * vv, yy + 2.018 * uu], axis=-1)
    np.testing.assert_allclose(outs["yuv422"], np.clip(expected, 0, 255), atol=3)
    # reading UYVY bytes as YUYV gives a different image (the byte order matters)
    wrong = conv.image_to_rgb8(conv.array_to_image(uyvy, "yuyv"))
    assert np.abs(wrong.astype(int) - outs["yuv422"]).max() > 20


@pytest.mark.skipif(not hasattr(cv2, "COLOR_RGB2YUV_UYVY"), reason="OpenCV without RGB->UYVY")
def test_yuv422_from_rgb_approximates_the_rgb():
    rgb = np.repeat(np.repeat(RNG.integers(30, 220, (3, 4, 3)).astype(np.uint8), 2, 0), 2, 1)
    packed = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY)
    out = conv.image_to_rgb8(conv.array_to_image(packed, "uyvy"))
    assert np.abs(out.astype(int) - rgb).max() <= 4


def test_image_errors_name_the_problem():
    good = conv.array_to_image(random_pixels("rgb8", 2, 2), "rgb8")
    with pytest.raises(InputError, match="unsupported image encoding 'bayer_rggb8'"):
        conv.image_to_array(SimpleNamespace(**{**vars(good), "encoding": "bayer_rggb8"}))
    with pytest.raises(InputError, match="expected step\\*height"):
        conv.image_to_array(SimpleNamespace(**{**vars(good), "data": good.data[:-1]}))
    with pytest.raises(InputError, match="step 5 < width"):
        conv.image_to_array(SimpleNamespace(**{**vars(good), "step": 5, "data": good.data[:10]}))
    with pytest.raises(InputError, match="even width"):
        conv.image_to_array(SimpleNamespace(height=1, width=3, encoding="yuyv", is_bigendian=0,
                                            step=6, data=bytes(6)))
    with pytest.raises(InputError, match="uint8 array of shape \\(H, W, 3\\)"):
        conv.array_to_image(np.zeros((2, 2, 3), np.float32), "rgb8")
    with pytest.raises(InputError, match="uint16"):
        conv.array_to_image(np.zeros((2, 2), np.uint8), "mono16")
    with pytest.raises(InputError):
        conv.image_to_array(SimpleNamespace(**{**vars(good), "height": 0, "data": b""}))


def test_mask_to_image_is_mono8_0_255_with_the_given_header():
    header = conv.make_header(42, "camera")
    mask = np.array([[True, False], [False, True]])
    msg = cdr_round_trip(conv.mask_to_image(mask, header), msgs.IMAGE)
    assert msg.encoding == "mono8" and conv.stamp_to_ns(msg.header.stamp) == 42
    np.testing.assert_array_equal(conv.image_to_array(msg), np.where(mask, 255, 0))
    with pytest.raises(InputError):
        conv.mask_to_image(np.zeros((2, 2, 1), bool), header)


# --------------------------------------------------------------------------- stamps


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000, 1_712_345_678_901_234_567, -1])
def test_stamp_round_trip(ns):
    stamp = conv.ns_to_stamp(ns)
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert conv.stamp_to_ns(stamp) == ns


def test_stamp_errors_and_custom_class():
    with pytest.raises(InputError):
        conv.stamp_to_ns(SimpleNamespace(sec=1, nanosec=2_000_000_000))
    with pytest.raises(InputError):
        conv.stamp_to_ns(object())
    stamp = conv.ns_to_stamp(3_000_000_004, SimpleNamespace)
    assert (stamp.sec, stamp.nanosec) == (3, 4)


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    "dtype,fmt",
    [(np.int16, 8), (np.int32, 2), (np.float32, 1), (np.int8, 16), (np.uint8, 32)],
)
@pytest.mark.parametrize("channels", [1, 2])
def test_audio_stamped_round_trip(dtype, fmt, channels):
    frames = 12
    if np.dtype(dtype).kind == "f":
        samples = RNG.uniform(-1, 1, (frames, channels)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        samples = RNG.integers(info.min, info.max, (frames, channels), endpoint=True).astype(dtype)
    if channels == 1:
        samples = samples[:, 0]
    msg = conv.array_to_audio_stamped(samples, 16000, 5_000_000_007, "mic", chunk=512)
    assert msg.audio.info.format == fmt and msg.audio.info.chunk == 512
    assert msg.audio.info.channels == channels
    back, rate = conv.audio_to_array(cdr_round_trip(msg, msgs.AUDIO_STAMPED))
    assert rate == 16000 and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, samples)
    assert conv.stamp_to_ns(msg.header.stamp) == 5_000_000_007


def _mgonzs13(fmt, channels=1, rate=16000, **arrays):
    fields = {f: arrays.get(f, np.zeros(0, dt)) for f, dt in conv._PA_FIELDS.values()}
    data = SimpleNamespace(**fields)
    return SimpleNamespace(header=None, audio=SimpleNamespace(
        audio_data=data, info=SimpleNamespace(format=fmt, channels=channels, rate=rate, chunk=0)))


def test_audio_int24_packed_in_uint8_data_is_scaled_to_int32_full_range():
    values = np.array([2**23 - 1, -(2**23), 1, -1], np.int32)
    packed = values.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].reshape(-1)  # 3-byte LE
    samples, _ = conv.audio_to_array(_mgonzs13(msgs.PA_INT24, uint8_data=packed))
    np.testing.assert_array_equal(samples, values.astype(np.int64) * 256)
    assert samples.dtype == np.int32
    with pytest.raises(InputError, match="multiple of 3"):
        conv.audio_to_array(_mgonzs13(msgs.PA_INT24, uint8_data=packed[:-1]))


def test_audio_rclpy_array_sequences_decode():
    msg = _mgonzs13(msgs.PA_INT16, channels=2, rate=48000, int16_data=array.array("h", [1, -2, 3, -4]))
    samples, rate = conv.audio_to_array(msg)
    assert rate == 48000
    np.testing.assert_array_equal(samples, [[1, -2], [3, -4]])


def test_audio_mgonzs13_errors():
    with pytest.raises(InputError, match="selects int16_data, which is empty; but .*float32_data"):
        conv.audio_to_array(_mgonzs13(msgs.PA_INT16, float32_data=np.ones(4, np.float32)))
    with pytest.raises(InputError, match="not a PortAudio PCM format"):
        conv.audio_to_array(_mgonzs13(3, int16_data=np.ones(4, np.int16)))
    with pytest.raises(InputError, match="multiple of 3 channels"):
        conv.audio_to_array(_mgonzs13(msgs.PA_INT16, channels=3, int16_data=np.ones(4, np.int16)))
    with pytest.raises(InputError, match="rate"):
        conv.audio_to_array(_mgonzs13(msgs.PA_INT16, rate=0, int16_data=np.ones(4, np.int16)))
    with pytest.raises(InputError, match="unrecognised audio message"):
        conv.audio_to_array(SimpleNamespace(foo=1))
    with pytest.raises(InputError, match="no samples"):
        conv.audio_to_array(_mgonzs13(msgs.PA_INT16))
    with pytest.raises(InputError, match="dtype"):
        conv.array_to_audio_stamped(np.zeros(4, np.float64), 16000, 0)


def test_ros_drivers_audio_data_bytes():
    store = msgs.typestore(msgs.AUDIO_ROS_DRIVERS)
    T = store.types
    frames = np.array([[100, -100], [32767, -32768], [1, 2]], np.int16)
    header = T[msgs.HEADER](stamp=T[msgs.TIME](sec=1, nanosec=0), frame_id="")
    payload = np.frombuffer(frames.astype("<i2").tobytes(), np.uint8)
    msg = T[msgs.AUDIO_DATA_STAMPED](header=header, audio=T[msgs.AUDIO_DATA](data=payload))
    msg = store.deserialize_cdr(store.serialize_cdr(msg, msgs.AUDIO_DATA_STAMPED), msgs.AUDIO_DATA_STAMPED)
    samples, rate = conv.audio_to_array(msg, sample_rate=44100, channels=2, sample_format="S16LE")
    assert rate == 44100
    np.testing.assert_array_equal(samples, frames)
    big = SimpleNamespace(data=frames.astype(">i2").tobytes())  # bare AudioData, big endian
    samples, _ = conv.audio_to_array(big, sample_rate=8000, channels=2, sample_format="S16BE")
    np.testing.assert_array_equal(samples, frames)
    with pytest.raises(InputError, match="compressed"):
        conv.audio_to_array(msg, sample_rate=44100, channels=2, coding_format="mp3")
    with pytest.raises(InputError, match="pass sample_rate and channels"):
        conv.audio_to_array(msg)
    with pytest.raises(InputError, match="sample_format"):
        conv.audio_to_array(msg, sample_rate=44100, channels=2, sample_format="S24_32LE")
    with pytest.raises(InputError, match="whole number"):
        conv.audio_to_array(SimpleNamespace(data=b"\x00\x01\x02"), sample_rate=8000, channels=1)


# --------------------------------------------------------------------------- detections


def test_detections_found_and_absent():
    header = conv.make_header(7_000_000_000, "camera")
    found = SimpleNamespace(found=True, bbox=(2, 3, 5, 9), score=0.75, command="the barking dog")
    arr = cdr_round_trip(conv.detections_from_prediction(found, header), msgs.DETECTION2D_ARRAY)
    assert conv.stamp_to_ns(arr.header.stamp) == 7_000_000_000 and arr.header.frame_id == "camera"
    (det,) = arr.detections
    assert (det.bbox.center.position.x, det.bbox.center.position.y) == (3.5, 6.0)
    assert (det.bbox.size_x, det.bbox.size_y) == (4.0, 7.0)  # inclusive pixel box
    assert det.results[0].hypothesis.class_id == "the barking dog"
    assert det.results[0].hypothesis.score == pytest.approx(0.75)
    region = SimpleNamespace(found=True, bbox=(2, 3, 5, 9), score=0.75, region_score=0.6, command="x")
    assert conv.detections_from_prediction(region, header).detections[0].results[0].hypothesis.score == pytest.approx(0.6)
    absent = SimpleNamespace(found=False, bbox=None, score=0.1, command="the cat")
    assert cdr_round_trip(conv.detections_from_prediction(absent, header), msgs.DETECTION2D_ARRAY).detections == []


# --------------------------------------------------------------------------- factories


class _FakeRosidl:
    """Mimics a rosidl-generated class: defaults for all fields, strict sequence setters."""

    FIELDS: dict = {}

    @classmethod
    def get_fields_and_field_types(cls):
        return dict(cls.FIELDS)

    def __init__(self, **kwargs):
        for name, kind in self.FIELDS.items():
            value = kwargs.pop(name, None)
            if kind.startswith("sequence<") and value is not None:
                assert isinstance(value, array.array), f"{name} must be array.array"
            setattr(self, name, value if value is not None else (array.array("B") if kind.startswith("sequence") else 0))
        if kwargs:
            raise TypeError(f"unexpected {sorted(kwargs)}")


class _Image(_FakeRosidl):
    FIELDS = {"header": "std_msgs/Header", "height": "uint32", "width": "uint32", "encoding": "string",
              "is_bigendian": "uint8", "step": "uint32", "data": "sequence<uint8>"}


class _Header(_FakeRosidl):
    FIELDS = {"stamp": "builtin_interfaces/Time", "frame_id": "string"}


class _Time(_FakeRosidl):
    FIELDS = {"sec": "int32", "nanosec": "uint32"}


def test_class_factory_adapts_numpy_to_rosidl_sequences():
    factory = conv.ClassFactory({msgs.IMAGE: _Image, msgs.HEADER: _Header, msgs.TIME: _Time})
    pixels = random_pixels("rgb8", 2, 2)
    msg = conv.array_to_image(pixels, "rgb8", stamp_ns=2_000_000_001, frame_id="cam", factory=factory)
    assert isinstance(msg, _Image) and isinstance(msg.data, array.array)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (2, 1)
    np.testing.assert_array_equal(conv.image_to_array(msg), pixels)
    with pytest.raises(InputError, match="cannot resolve"):
        factory.new(msgs.STRING, data="x")


def test_rosbags_factory_fills_defaults_and_rejects_unknown_fields():
    factory = conv.RosbagsFactory()
    det = factory.new(msgs.OBJECT_HYPOTHESIS_WITH_POSE)
    assert det.hypothesis.class_id == "" and det.pose.covariance.shape == (36,)
    cdr_round_trip(det, msgs.OBJECT_HYPOTHESIS_WITH_POSE)
    with pytest.raises(InputError, match="no field"):
        factory.new(msgs.STRING, text="x")
    with pytest.raises(InputError, match="not in the rosbags type store"):
        factory.new("foo_msgs/msg/Bar")


def test_compressed_image_png_round_trip_and_errors():
    rgb = random_pixels("rgb8", 5, 7)
    msg = cdr_round_trip(conv.compressed_rgb8(rgb, stamp_ns=9, frame_id="cam"), msgs.COMPRESSED_IMAGE)
    assert msg.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(conv.compressed_image_to_rgb8(msg), rgb)  # png is lossless
    jpeg = conv.compressed_rgb8(np.full((8, 8, 3), (200, 40, 10), np.uint8), fmt="jpeg")
    assert np.abs(conv.compressed_image_to_rgb8(jpeg).astype(int) - (200, 40, 10)).max() < 8
    with pytest.raises(InputError, match="depth"):
        conv.compressed_image_to_rgb8(SimpleNamespace(format="16UC1; compressedDepth", data=b"x"))
    with pytest.raises(InputError, match="no data"):
        conv.compressed_image_to_rgb8(SimpleNamespace(format="jpeg", data=b""))
    with pytest.raises(InputError, match="neither PNG nor JPEG"):
        conv.compressed_image_to_rgb8(SimpleNamespace(format="jpeg", data=b"not a jpeg"))


def test_compressed_image_decode() -> None:
    import array
    from types import SimpleNamespace

    import cv2
    import numpy as np

    from refavs_ros.errors import InputError
    from refavs_ros.rosio.conversions import compressed_image_to_rgb8

    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[:, :5] = (255, 0, 0)  # left half red
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    for data in (png.tobytes(), array.array("B", png.tobytes()), png.reshape(-1)):
        out = compressed_image_to_rgb8(SimpleNamespace(format="png", data=data))
        np.testing.assert_array_equal(out, rgb)
    with pytest.raises(InputError, match="neither PNG nor JPEG"):
        compressed_image_to_rgb8(SimpleNamespace(format="jpeg", data=b"notanimage"))
    with pytest.raises(InputError, match="no data"):
        compressed_image_to_rgb8(SimpleNamespace(format="jpeg", data=b""))
    with pytest.raises(InputError, match="depth"):
        compressed_image_to_rgb8(SimpleNamespace(format="16UC1; compressedDepth", data=png.tobytes()))


def test_import_audio_class_errors_name_the_provider() -> None:
    import importlib.util

    from refavs_ros.rosio.conversions import import_audio_class

    with pytest.raises(ConfigError, match="not one of"):
        import_audio_class("Audio")
    if importlib.util.find_spec("audio_common_msgs") is None:
        with pytest.raises(ConfigError, match="mgonzs13/audio_common"):
            import_audio_class("AudioStamped")
        with pytest.raises(ConfigError, match="ros-drivers/audio_common"):
            import_audio_class("AudioDataStamped")
