"""Bad-input classes found by the node stress runs (issue 8 part 4), each rejected with a reason
or handled, at the level where the fix lives (ROS-free).

Each test fails on the code before its fix:

* a PNG / JPEG header may declare a huge image (a decompression bomb): OpenCV decoded it, up to
  2**30 pixels (3 GiB as BGR); now refused from the header, before decoding (``too large``);
* any codec OpenCV reads (TIFF, BMP...) was decoded from a ``CompressedImage``; now only PNG and
  JPEG (``unsupported format``);
* ``is_bigendian`` values other than 0/1 were read as big-endian (cv_bridge reads them as
  little-endian): now ``bad endianness``;
* float audio near the float32 maximum turned into NaN in the downmix + resampler;
* odd sample rates (44101 Hz, 383999 Hz) made scipy design a filter of up to 7.7 million taps
  per chunk (2.3 s each);
* control characters (ESC...), U+FFFD (rclpy's replacement of invalid UTF-8) and texts without
  a letter or digit (U+200B alone) were accepted as commands;
* audio: one chunk stamped far in the future made every later chunk "out-of-order audio"; a
  regular 44.1 kHz stream lost a chunk every ~20 s to rounding drift.
"""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from refavs_ros import audio
from refavs_ros.errors import InputError
from refavs_ros.models.text import check_command
from refavs_ros.predictor import AudioRing
from refavs_ros.rosio import conversions as conv

SEC = 1_000_000_000


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    return info.value.reason


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of ``width`` x ``height`` black pixels (a few hundred kB)."""
    compressor = zlib.compressobj(1)
    row = bytes(width + 1)  # filter byte 0 + pixels
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts += [compressor.compress(row * (height % 1000)), compressor.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


@pytest.fixture
def no_imdecode(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("cv2.imdecode was called on an image that is too large")

    monkeypatch.setattr(conv.cv2, "imdecode", fail)


def test_png_bomb_is_refused_from_its_header(no_imdecode) -> None:
    data = png_bomb(9000, 8000)  # 72 MP: 216 MB once decoded to BGR, from this many bytes:
    assert len(data) < 400_000
    msg = SimpleNamespace(format="png", data=data)
    assert _reason(conv.compressed_image_to_rgb8, msg) == "too large"


def test_jpeg_header_size_is_checked_before_decoding(no_imdecode) -> None:
    ok, jpeg = cv2.imencode(".jpg", np.full((16, 24, 3), 90, np.uint8))
    assert ok
    data = bytearray(jpeg.tobytes())
    assert conv._jpeg_size(np.frombuffer(bytes(data), np.uint8)) == (24, 16)
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in conv._JPEG_SOF)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 9000, 9000)  # 81 MP declared
    msg = SimpleNamespace(format="jpeg", data=bytes(data))
    assert _reason(conv.compressed_image_to_rgb8, msg) == "too large"


def test_png_and_jpeg_below_the_limit_still_decode() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for fmt in ("png", "jpeg"):
        out = conv.compressed_image_to_rgb8(conv.compressed_rgb8(rgb, fmt=fmt))
        assert out.shape == (20, 30, 3)
    assert conv.compressed_image_to_rgb8(SimpleNamespace(format="png", data=png_bomb(64, 48))).shape == (48, 64, 3)


@pytest.mark.parametrize("ext", [".bmp", ".tiff", ".ppm", ".webp"])
def test_codecs_other_than_png_and_jpeg_are_refused(ext: str) -> None:
    ok, data = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))
    assert ok and cv2.imdecode(data, cv2.IMREAD_COLOR) is not None  # OpenCV would decode it
    assert _reason(conv.compressed_image_to_rgb8, SimpleNamespace(format="rgb8; jpeg compressed bgr8",
                                                                    data=data.tobytes())) == "unsupported format"


@pytest.mark.parametrize("data, reason", [
    (b"\x89PNG\r\n\x1a\n", "undecodable"),  # signature only
    (b"\xff\xd8\xff\xda\x00\x08", "undecodable"),  # scan before any frame header
    (b"\xff\xd8\xff\xe0\x00\x01", "undecodable"),  # segment length < 2
])
def test_truncated_headers_are_undecodable(data: bytes, reason: str) -> None:
    assert _reason(conv.compressed_image_to_rgb8, SimpleNamespace(format="png", data=data)) == reason


def test_raw_image_too_large_is_refused_before_its_data_is_read() -> None:
    msg = SimpleNamespace(height=10_000, width=10_000, encoding="mono8", is_bigendian=0, step=10_000, data=b"")
    assert _reason(conv.image_to_array, msg) == "too large"


@pytest.mark.parametrize("value", [2, 7, 255])
def test_is_bigendian_must_be_0_or_1(value: int) -> None:
    data = np.arange(4, dtype="<u2").tobytes()
    msg = SimpleNamespace(height=2, width=2, encoding="mono16", is_bigendian=value, step=4, data=data)
    assert _reason(conv.image_to_array, msg) == "bad endianness"
    msg.is_bigendian = 0
    np.testing.assert_array_equal(conv.image_to_array(msg), [[0, 1], [2, 3]])


def test_huge_finite_float_audio_does_not_become_nan() -> None:
    samples = np.full((1024, 2), 3e38, np.float32)  # finite, but the channel sum overflows
    out = audio.to_mono_16k(samples, 44100)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


@pytest.mark.parametrize("rate", [44101, 99991, 383999, 1009, 320163])
def test_odd_rates_use_a_bounded_filter(rate: int) -> None:
    up, down = audio.resample_ratio(rate)
    assert max(up, down) <= audio.MAX_POLYPHASE
    assert abs(up / down - 16000 / rate) / (16000 / rate) <= 5.1e-4
    n = 4096
    out = audio.to_mono_16k(np.zeros(n, np.float32), rate)
    assert abs(out.size - n * 16000 / rate) <= 1 + n * 16000 / rate * 5.1e-4


@pytest.mark.parametrize("rate, ratio", [(44100, (160, 441)), (48000, (1, 3)), (11025, (640, 441)),
                                         (8000, (2, 1)), (384000, (1, 24)), (37800, (80, 189))])
def test_common_rates_keep_their_exact_ratio(rate: int, ratio: tuple[int, int]) -> None:
    assert audio.resample_ratio(rate) == ratio


@pytest.mark.parametrize("text, reason", [
    ("the dog\x1b[2J", "control characters"),
    ("the \x07dog", "control characters"),
    ("the dog\x7f", "control characters"),
    ("the \x85dog", "control characters"),  # C1 (NEL)
    ("a\x00b", "control characters"),
    ("the d\ufffd\ufffdg", "invalid utf-8"),
    ("the \ud800dog", "invalid utf-8"),
])
def test_commands_with_control_characters_or_invalid_utf8_are_rejected(text: str, reason: str) -> None:
    assert _reason(check_command, text) == reason


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200d", "?!", "...", "\U0001f436"])
def test_commands_without_a_letter_or_digit_are_rejected(text: str) -> None:
    assert _reason(check_command, text) == "no words"


def test_commands_with_tabs_newlines_and_unicode_are_accepted() -> None:
    assert check_command(" the dog\tthat\nbarks\r ") == "the dog\tthat\nbarks"
    assert check_command("le chien qui aboie \u00e9 \u72ac") == "le chien qui aboie \u00e9 \u72ac"
    assert check_command("7") == "7" and check_command("the \U0001f436!") == "the \U0001f436!"


def test_regular_44k_audio_is_never_dropped_as_out_of_order() -> None:
    ring = AudioRing()
    chunk = audio.to_mono_16k(np.zeros(1024, np.int16), 44100)  # 372 samples for 371.5
    for k in range(2000):  # 46 s: the rounding drift passed the 20 ms tolerance after ~15 s
        ring.push(k * 1024 * SEC // 44100, chunk)
    assert abs(ring.end_ns() - (2000 * 1024 * SEC // 44100 + 62_500 // 2)) <= 62_500  # on the stamps


def test_one_future_audio_stamp_does_not_block_later_audio() -> None:
    ring = AudioRing()
    ring.push(0, np.zeros(16000, np.float32))
    ring.push(10**6 * SEC, np.zeros(1600, np.float32))  # a chunk stamped 11 days ahead
    for k in range(1, 5):
        ring.push(k * SEC, np.ones(16000, np.float32))  # accepted: the first one restarts the ring
    assert ring.jumps == 1 and ring.end_ns() == 5 * SEC
    assert ring.window(ring.index_at(5 * SEC), 100).min() == 1.0
    with pytest.raises(InputError) as info:  # 0.5 s back: out of order, not a jump
        ring.push(5 * SEC - SEC // 2, np.zeros(1600, np.float32))
    assert info.value.reason == "out-of-order audio" and ring.jumps == 1


def test_small_overlap_places_the_chunk_at_its_stamp() -> None:
    ring = AudioRing()
    ring.push(0, np.zeros(1000, np.float32))
    ring.push(990 * 62_500, np.ones(100, np.float32))  # starts 10 samples before the end
    assert ring.end == 1090 and ring.window(1090, 100).min() == 1.0 and ring.window(990, 990).max() == 0.0
