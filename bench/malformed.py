"""Generated bad messages for every topic refavs_node subscribes to, and the driver that
publishes them to the running node (issue 8 part 4, "malformed input").

Generation is property-based (hypothesis strategies): each draw is a :class:`Bad` that knows its
topic, its class (what is wrong) and the rejection reason(s) the node must count for it, and
builds the rclpy message (or raw CDR bytes) when it is published, with a fresh stamp.

Classes per topic (reason the node must give, as counted in ``/diagnostics`` under
``rejected <kind>: <reason>``):

* ``image`` (``sensor_msgs/Image``): unsupported encodings (``unsupported encoding``), zero
  width/height (``empty image``), over 67 MP declared (``too large``), ``is_bigendian`` not 0/1
  (``bad endianness``), ``step`` below a row (``bad step``), data length != step x height
  (``data length``), odd width in YUV 4:2:2 (``bad size``), stamp nanosec >= 1e9 (``bad stamp``);
* ``image/compressed`` (``sensor_msgs/CompressedImage``): random bytes (``unsupported
  format``), a PNG or JPEG signature followed by garbage (``undecodable``), truncated PNG / JPEG
  (``undecodable``), empty data (``empty image``), ``compressedDepth`` (``unsupported format``),
  BMP / TIFF / PPM / WebP (``unsupported format``), headers declaring over 67 MP (``too large``);
* ``audio`` (mgonzs13 ``AudioStamped``): unknown format codes over the whole int32 range
  (``unsupported format``), no samples (``empty audio``), samples in another array than the
  format selects (``format mismatch``), rate <= 0 (``bad rate``), rate outside 1000..384000 Hz
  (``bad rate``), channels <= 0 (``bad channels``), sample count not a multiple of the channels
  or paInt24 bytes not a multiple of 3 (``data length``), NaN/inf float samples (``non-finite
  samples``), stamp nanosec >= 1e9 (``bad stamp``), a chunk 50-900 ms before the buffered audio
  ends (``out-of-order audio``);
* ``command`` (``std_msgs/String``): whitespace only, ASCII and Unicode (``blank command``),
  513 to 12 000 characters (``too long``), control characters inside the text (``control
  characters``), invalid UTF-8 bytes sent as raw CDR, which rclpy decodes to U+FFFD (``invalid
  utf-8``), no letter or digit (``no words``).

What rclpy itself refuses or changes is not generated as "bad": fields out of their type's range
(rclpy's setters raise), strings with surrogates (the publisher raises UnicodeEncodeError), NUL
inside a string (ROS 2 strings are C strings: ``"dog\\x00xyz"`` arrives as ``"dog"``). Random
bytes published as raw CDR (:func:`garbage_cdr`) are dropped by the middleware (Fast CDR
cannot deserialise them) and never reach the node's callbacks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.graph import wait_until
from refavs_ros.rosio import conversions, msgs

FACTORY = conversions.ClassFactory.importing()

IMAGE, COMPRESSED, AUDIO, COMMAND = "image", "compressed", "audio", "command"
TOPICS = (IMAGE, COMPRESSED, AUDIO, COMMAND)
"""Generated input kinds (``compressed`` = ``image/compressed``, rejected as kind ``image``)."""
KIND = {IMAGE: "image", COMPRESSED: "image", AUDIO: "audio", COMMAND: "command"}
"""Rejection kind (first part of the counter key) per generated topic."""


@dataclass(frozen=True)
class Context:
    """What a bad message may depend on when it is built.

    Attributes:
        stamp_ns: a fresh stamp, newer than every image and audio chunk sent so far.
        audio_end_ns: end (ns) of the newest audio the node accepted, or None.
    """

    stamp_ns: int
    audio_end_ns: int | None


@dataclass(frozen=True)
class Bad:
    """One generated bad message.

    Attributes:
        topic: one of :data:`TOPICS`.
        label: its class (what is wrong), e.g. ``"bad step"``.
        reasons: the rejection reasons the node may count for it (usually one).
        make: builds the rclpy message, or raw CDR ``bytes``, for a :class:`Context`.
    """

    topic: str
    label: str
    reasons: frozenset[str]
    make: Callable[[Context], Any] = field(repr=False, compare=False)


def _header(stamp_ns: int, frame_id: str = "camera") -> Any:
    return conversions.make_header(stamp_ns, frame_id, factory=FACTORY)


def _bad_stamp_header(nanosec: int) -> Callable[[Context], Any]:
    def make(ctx: Context) -> Any:
        header = _header(ctx.stamp_ns)
        header.stamp.nanosec = nanosec
        return header
    return make


# ----------------------------------------------------------------------------------- images
ENCODINGS = conversions.SUPPORTED_ENCODINGS
_BYTES_PER_PIXEL = {e: c * np.dtype(d).itemsize for e, (c, d, _) in conversions._ENCODINGS.items()}
YUV = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")
KNOWN_BAD_ENCODINGS = ("32FC1", "16SC1", "8UC2", "bayer_rggb8", "bayer_grbg16", "RGB8", "Mono8", "rgb16",
                       "bgra16", "64FC1", "nv21", "jpeg", "rgb8 ", " mono8", "")
_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


def _image(encoding: str, height: int, width: int, step: int, data_len: int, *, is_bigendian: int = 0,
           header: Callable[[Context], Any] | None = None, seed: int = 0) -> Callable[[Context], Any]:
    def make(ctx: Context) -> Any:
        data = np.random.default_rng(seed).integers(0, 256, data_len, dtype=np.uint8)
        return FACTORY.new(msgs.IMAGE, header=(header or (lambda c: _header(c.stamp_ns)))(ctx), height=height,
                           width=width, encoding=encoding, is_bigendian=is_bigendian, step=step, data=data)
    return make


@st.composite
def _valid_geometry(draw, encodings=ENCODINGS, max_side: int = 24):
    encoding = draw(st.sampled_from(encodings))
    width = draw(st.integers(1, max_side))
    if encoding in YUV:
        width += width % 2
    height = draw(st.integers(1, max_side))
    row = width * _BYTES_PER_PIXEL[encoding]
    step = row + draw(st.integers(0, 8))
    return encoding, height, width, step


@st.composite
def _bad_images(draw) -> Bad:
    label = draw(st.sampled_from(["unsupported encoding", "empty image", "too large", "bad endianness",
                                  "bad step", "data length", "bad size", "bad stamp"]))
    seed = draw(st.integers(0, 2**31))
    encoding, height, width, step = draw(_valid_geometry())
    if label == "unsupported encoding":
        bad = draw(st.one_of(st.sampled_from(KNOWN_BAD_ENCODINGS), st.text(_TEXT, max_size=40))
                   .filter(lambda e: e not in ENCODINGS))
        make = _image(bad, height, width, step, step * height, seed=seed)
    elif label == "empty image":
        zero = draw(st.sampled_from(["width", "height", "both"]))
        w = 0 if zero in ("width", "both") else width
        h = 0 if zero in ("height", "both") else height
        make = _image(encoding, h, w, draw(st.integers(0, 4096)), draw(st.integers(0, 256)), seed=seed)
    elif label == "too large":
        w = draw(st.integers(1, 2**32 - 1))
        h = draw(st.integers(conversions.MAX_IMAGE_PIXELS // w + 1, 2**32 - 1))
        make = _image(encoding, h, w, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 64)), seed=seed)
    elif label == "bad endianness":
        make = _image(encoding, height, width, step, step * height, is_bigendian=draw(st.integers(2, 255)), seed=seed)
    elif label == "bad step":
        row = width * _BYTES_PER_PIXEL[encoding]
        bad_step = draw(st.integers(0, row - 1))
        make = _image(encoding, height, width, bad_step, bad_step * height, seed=seed)
    elif label == "data length":
        n = draw(st.integers(0, 2 * step * height).filter(lambda k: k != step * height))
        make = _image(encoding, height, width, step, n, seed=seed)
    elif label == "bad size":
        encoding = draw(st.sampled_from(YUV))
        w = 2 * draw(st.integers(0, 11)) + 1
        row = w * 2
        make = _image(encoding, height, w, row, row * height, seed=seed)
    else:  # bad stamp
        make = _image(encoding, height, width, step, step * height, seed=seed,
                      header=_bad_stamp_header(draw(st.integers(1_000_000_000, 2**32 - 1))))
    return Bad(IMAGE, label, frozenset({label}), make)


# ------------------------------------------------------------------------------ compressed
_PNG_SIG, _JPEG_SIG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def _encoded(ext: str, seed: int, height: int, width: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels)
    assert ok, ext
    return data.tobytes()


def _compressed(data: bytes, fmt: str = "png") -> Callable[[Context], Any]:
    def make(ctx: Context) -> Any:
        return FACTORY.new(msgs.COMPRESSED_IMAGE, header=_header(ctx.stamp_ns), format=fmt,
                           data=np.frombuffer(data, np.uint8))
    return make


@st.composite
def _bad_compressed(draw) -> Bad:
    label = draw(st.sampled_from(["garbage", "png signature + garbage", "jpeg signature + garbage", "truncated",
                                  "empty", "compressedDepth", "other codec", "size bomb header"]))
    fmt = draw(st.sampled_from(["png", "jpeg", "rgb8; png compressed bgr8", "rgb8; jpeg compressed bgr8", "", "bmp"]))
    seed = draw(st.integers(0, 2**31))
    reasons: set[str]
    if label == "garbage":
        data = draw(st.binary(min_size=1, max_size=2048).filter(
            lambda b: not b.startswith(_PNG_SIG) and not b.startswith(_JPEG_SIG)))
        reasons = {"unsupported format"}
    elif label in ("png signature + garbage", "jpeg signature + garbage"):
        sig = _PNG_SIG if label.startswith("png") else _JPEG_SIG
        data = sig + draw(st.binary(max_size=2048))
        reasons = {"undecodable", "too large", "empty image"}  # random bytes may form a header
    elif label == "truncated":
        ext = draw(st.sampled_from([".png", ".jpg"]))
        full = _encoded(ext, seed, draw(st.integers(1, 32)), draw(st.integers(1, 32)))
        cut = draw(st.integers(1, len(full) - 1))
        data = full[:cut]
        sig = _PNG_SIG if ext == ".png" else _JPEG_SIG
        reasons = {"unsupported format"} if cut < len(sig) else {"undecodable"}
    elif label == "empty":
        data, reasons = b"", {"empty image"}
    elif label == "compressedDepth":
        fmt = draw(st.sampled_from(["16UC1; compressedDepth", "32FC1; compressedDepth png"]))
        data = _encoded(".png", seed, 8, 8)
        reasons = {"unsupported format"}
    elif label == "other codec":
        data = _encoded(draw(st.sampled_from([".bmp", ".tiff", ".ppm", ".webp"])), seed,
                        draw(st.integers(1, 32)), draw(st.integers(1, 32)))
        reasons = {"unsupported format"}
    else:  # size bomb header
        big = conversions.MAX_IMAGE_PIXELS
        if draw(st.booleans()):
            w = draw(st.integers(1, 2**31 - 1))
            h = draw(st.integers(big // w + 1, 2**31 - 1))
            ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
            data = _PNG_SIG + (13).to_bytes(4, "big") + b"IHDR" + ihdr + b"\x00" * 4 + draw(st.binary(max_size=256))
        else:
            w = draw(st.integers(big // 65535 + 1, 65535))
            h = draw(st.integers(big // w + 1, 65535))
            sof = b"\xff\xc0\x00\x11\x08" + h.to_bytes(2, "big") + w.to_bytes(2, "big") + b"\x03" + b"\x01\x22\x00" * 3
            data = _JPEG_SIG + b"\xe0\x00\x02" + sof + draw(st.binary(max_size=256))
        reasons = {"too large"}
    return Bad(COMPRESSED, label, frozenset(reasons), _compressed(data, fmt))


# ----------------------------------------------------------------------------------- audio
PA_FORMATS = {msgs.PA_FLOAT32: ("float32_data", np.float32), msgs.PA_INT32: ("int32_data", np.int32),
              msgs.PA_INT16: ("int16_data", np.int16), msgs.PA_INT8: ("int8_data", np.int8),
              msgs.PA_UINT8: ("uint8_data", np.uint8)}
"""PortAudio code -> (AudioData field, dtype); paInt24 (4) is packed in uint8_data."""
_FIELDS = tuple(f for f, _ in PA_FORMATS.values())
INT32 = st.integers(-(2**31), 2**31 - 1)


def _audio(fmt: int, rate: int, channels: int, arrays: dict[str, np.ndarray], *,
           stamp: Callable[[Context], int] | None = None,
           header: Callable[[Context], Any] | None = None) -> Callable[[Context], Any]:
    def make(ctx: Context) -> Any:
        data = {f: arrays.get(f, np.zeros(0, dt)) for f, dt in PA_FORMATS.values()}
        audio_data = FACTORY.new(msgs.AUDIO_DATA, **data)
        info = FACTORY.new(msgs.AUDIO_INFO, format=fmt, channels=channels, rate=rate, chunk=0)
        hdr = header(ctx) if header else _header(stamp(ctx) if stamp else ctx.stamp_ns, "mic")
        return FACTORY.new(msgs.AUDIO_STAMPED, header=hdr, audio=FACTORY.new(msgs.AUDIO, audio_data=audio_data, info=info))
    return make


def _samples(seed: int, fmt: int, n: int) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if fmt == msgs.PA_INT24:
        return "uint8_data", rng.integers(0, 256, 3 * n, dtype=np.uint8)
    name, dtype = PA_FORMATS[fmt]
    if dtype == np.float32:
        return name, (rng.standard_normal(n) * 0.1).astype(np.float32)
    info = np.iinfo(dtype)
    return name, rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)


@st.composite
def _bad_audio(draw) -> Bad:
    label = draw(st.sampled_from(["unsupported format", "empty audio", "format mismatch", "bad rate",
                                  "rate out of range", "bad channels", "data length", "paInt24 length",
                                  "non-finite samples", "bad stamp", "out-of-order audio"]))
    seed = draw(st.integers(0, 2**31))
    fmt = draw(st.sampled_from(sorted([*PA_FORMATS, msgs.PA_INT24])))
    channels = draw(st.integers(1, 8))
    rate = draw(st.sampled_from([8000, 16000, 22050, 44100, 48000]))
    frames = draw(st.integers(1, 600))
    name, samples = _samples(seed, fmt, frames * channels)
    arrays = {name: samples}
    stamp = None
    header = None
    reason = label
    if label == "unsupported format":
        fmt = draw(INT32.filter(lambda f: f not in PA_FORMATS and f != msgs.PA_INT24))
        arrays = {"int16_data": samples.astype(np.int16)} if samples.dtype != np.uint8 else arrays
    elif label == "empty audio":
        arrays = {}
    elif label == "format mismatch":
        own = "uint8_data" if fmt == msgs.PA_INT24 else PA_FORMATS[fmt][0]
        other = draw(st.sampled_from([f for f in _FIELDS if f != own]))
        arrays = {other: np.ones(frames * channels, dict(PA_FORMATS.values())[other])}
    elif label == "bad rate":
        rate = draw(st.integers(-(2**31), 0))
    elif label == "rate out of range":
        rate = draw(st.one_of(st.integers(1, 999), st.integers(384_001, 2**31 - 1)))
        reason = "bad rate"
    elif label == "bad channels":
        channels = draw(st.integers(-(2**31), 0))
    elif label == "data length":
        channels = draw(st.integers(2, 2**31 - 1))
        n = draw(st.integers(1, 600).filter(lambda k: k % channels))
        name, samples = _samples(seed, fmt, n)
        arrays = {name: samples}
    elif label == "paInt24 length":
        fmt = msgs.PA_INT24
        n = draw(st.integers(1, 1800).filter(lambda k: k % 3))
        arrays = {"uint8_data": np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)}
        reason = "data length"
    elif label == "non-finite samples":
        fmt = msgs.PA_FLOAT32
        values = (np.random.default_rng(seed).standard_normal(frames * channels) * 0.1).astype(np.float32)
        k = draw(st.integers(1, min(values.size, 16)))
        positions = np.random.default_rng(seed + 1).choice(values.size, k, replace=False)
        values[positions] = np.array(draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=k, max_size=k)),
                                     np.float32)
        arrays = {"float32_data": values}
    elif label == "bad stamp":
        header = _bad_stamp_header(draw(st.integers(1_000_000_000, 2**32 - 1)))
    else:  # out-of-order audio: 50-900 ms before the end of the buffered audio
        back = draw(st.integers(50_000_000, 900_000_000))

        def stamp(ctx: Context, back: int = back) -> int:
            assert ctx.audio_end_ns is not None, "out-of-order audio needs accepted audio first"
            return ctx.audio_end_ns - back
    return Bad(AUDIO, label, frozenset({reason}), _audio(fmt, rate, channels, arrays, stamp=stamp, header=header))


# --------------------------------------------------------------------------------- commands
_WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2003\u2028\u2029\u202f\u205f\u3000"
_CONTROL = [chr(c) for c in (*range(1, 32), *range(127, 160)) if chr(c) not in "\t\n\r"]
_WORDS = st.text(st.characters(categories=("Ll", "Lu", "Nd")), min_size=1, max_size=40)


def _string(text: str) -> Callable[[Context], Any]:
    return lambda ctx: FACTORY.new(msgs.STRING, data=text)


def raw_string_cdr(data: bytes) -> bytes:
    """CDR (little-endian, XCDR1) of a ``std_msgs/String`` holding ``data`` as it is, valid
    UTF-8 or not: what ``Publisher.publish(bytes)`` sends unchanged."""
    payload = data + b"\x00"
    return b"\x00\x01\x00\x00" + len(payload).to_bytes(4, "little") + payload


@st.composite
def _bad_commands(draw) -> Bad:
    label = draw(st.sampled_from(["blank command", "too long", "control characters", "invalid utf-8", "no words"]))
    if label == "blank command":
        make = _string(draw(st.text(st.sampled_from(_WHITESPACE), min_size=1, max_size=300)))
    elif label == "too long":
        n = draw(st.integers(513, 12_000))
        make = _string(("the dog that barks " * (n // 19 + 1))[: n - 1] + "x")
    elif label == "control characters":
        make = _string(draw(_WORDS) + draw(st.text(st.sampled_from(_CONTROL), min_size=1, max_size=5)) + draw(_WORDS))
    elif label == "invalid utf-8":
        bad = draw(st.one_of(
            st.integers(0x80, 0xFF).map(lambda b: bytes([b])),  # lone continuation / lead byte
            st.sampled_from([b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff\xfe"]),
        ))
        text = draw(_WORDS).encode() + b" " + bad + b" " + draw(_WORDS).encode()
        make = lambda ctx, text=text: raw_string_cdr(text)  # noqa: E731
    else:  # no words
        chars = st.characters(categories=("P", "S", "Cf", "Zs"), exclude_characters="\x00\ufffd")
        make = _string(draw(st.text(chars, min_size=1, max_size=60).filter(lambda t: t.strip())))
    return Bad(COMMAND, label, frozenset({label}), make)


STRATEGIES = {IMAGE: _bad_images(), COMPRESSED: _bad_compressed(), AUDIO: _bad_audio(), COMMAND: _bad_commands()}
"""hypothesis strategy of :class:`Bad` per topic."""


def garbage_cdr(rng: np.random.Generator, n: int) -> list[bytes]:
    """``n`` random byte strings (1-512 bytes, some behind a valid CDR encapsulation header) to
    publish as raw CDR."""
    out = []
    for k in range(n):
        body = rng.integers(0, 256, int(rng.integers(1, 512)), dtype=np.uint8).tobytes()
        out.append(b"\x00\x01\x00\x00" + body if k % 2 else body)
    return out


# ---------------------------------------------------------------------------------- driver
@dataclass
class TopicReport:
    """What publishing bad messages on one topic gave.

    Attributes:
        topic: the generated topic.
        sent: bad messages published.
        by_label: sent messages by class.
        rejections: the node's rejection counts that grew, by ``"<kind>: <reason>"``.
        unexpected: (label, reasons expected, counter keys that changed) for each message
            whose rejection was not one of the expected reasons.
        lost: messages the node's counters never showed (dropped on the way; best-effort QoS).
        seconds: wall time of the run.
    """

    topic: str
    sent: int = 0
    by_label: Counter = field(default_factory=Counter)
    rejections: Counter = field(default_factory=Counter)
    unexpected: list[tuple[str, tuple[str, ...], dict[str, int]]] = field(default_factory=list)
    lost: int = 0
    seconds: float = 0.0


class StampClock:
    """Strictly increasing stamps (ns) for every message the run sends, starting at ``start_ns``."""

    def __init__(self, start_ns: int, step_ns: int = 1_000_000) -> None:
        self.now_ns, self.step_ns = int(start_ns), int(step_ns)

    def next(self) -> int:
        """A stamp ``step_ns`` after the previous one."""
        self.now_ns += self.step_ns
        return self.now_ns


def publish_bad(graph: Any, topic: str, count: int, clock: StampClock, *, seed: int = 0,
                audio_end_ns: Callable[[], int | None] = lambda: None, timeout: float = 5.0,
                between: Callable[[int], None] | None = None) -> TopicReport:
    """Publish ``count`` generated bad messages on ``topic`` to the running node, one at a time:
    each is published, then the node's rejection counters are watched until they grow (or
    ``timeout`` s pass: counted as lost), and the reason that grew is checked against the ones
    the message expects.

    Args:
        graph: a started :class:`bench.graph.NodeGraph` (with ``image_transport: compressed`` for
            ``"compressed"``); a command must be in force (images are only decoded then).
        topic: one of :data:`TOPICS`.
        count: bad messages to publish.
        clock: stamps of the run.
        seed: hypothesis seed (runs are reproducible).
        audio_end_ns: end of the newest audio the node accepted (for out-of-order audio).
        timeout: wait (s) per message.
        between: called with the number sent so far after every message (e.g. a good frame every
            N messages).

    Returns:
        the :class:`TopicReport`.
    """
    report = TopicReport(topic)
    pub = {IMAGE: graph.image_pub, COMPRESSED: graph.image_pub, AUDIO: graph.audio_pub,
           COMMAND: graph.command_pub}[topic]
    t0 = time.monotonic()

    def one(bad: Bad) -> None:
        if report.sent >= count:
            return
        if bad.label == "out-of-order audio" and audio_end_ns() is None:
            return
        before = graph.rejections()
        msg = bad.make(Context(clock.next(), audio_end_ns()))
        pub.publish(msg)
        report.sent += 1
        report.by_label[bad.label] += 1
        grew: dict[str, int] = {}

        def changed() -> bool:
            now = graph.rejections()
            grew.clear()
            grew.update({k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)})
            return bool(grew)

        if not wait_until(changed, timeout, 0.001):
            report.lost += 1
        else:
            report.rejections.update(grew)
            expected = {f"{KIND[topic]}: {r}" for r in bad.reasons}
            if set(grew) - expected or sum(grew.values()) != 1:
                report.unexpected.append((bad.label, tuple(sorted(bad.reasons)), dict(grew)))
        if between is not None:
            between(report.sent)

    for round_ in range(20):  # hypothesis may stop before max_examples on a small space: go on
        if report.sent >= count:
            break
        run = hypothesis_seed(seed + round_)(
            settings(max_examples=count - report.sent, database=None, deadline=None, phases=[Phase.generate],
                     suppress_health_check=list(HealthCheck))(given(bad=STRATEGIES[topic])(one)))
        run()
    report.seconds = time.monotonic() - t0
    return report
