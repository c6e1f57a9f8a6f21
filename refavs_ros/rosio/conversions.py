"""ROS message <-> numpy conversions shared by the ROS node and the bag tools.

Every reader is duck-typed over message objects: rosbags message classes (dataclasses with numpy
arrays) and rclpy message instances (``array.array`` / ``bytes`` sequences) have the same field
names, so the same function decodes both. Writers build messages through a
:class:`MessageFactory`: :class:`RosbagsFactory` (default; rosbags classes from
:func:`refavs_ros.rosio.msgs.typestore`) or :class:`ClassFactory` (any rosidl-generated Python classes,
e.g. the rclpy ones; this module never imports rclpy or ROS message packages itself).

Image handling follows ``sensor_msgs/Image`` and ``sensor_msgs/image_encodings.hpp``, honouring
``step`` (row padding) and ``is_bigendian`` like cv_bridge (ros-perception/vision_opencv
``cv_bridge/core.py``). Audio handling follows mgonzs13/audio_common ``AudioStamped`` (typed sample
arrays selected by a PortAudio format code) and ros-drivers/audio_common ``AudioData`` (raw PCM
bytes described out of band).
"""

from __future__ import annotations

import array
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import cv2
import numpy as np

from refavs_ros.errors import ConfigError, InputError
from refavs_ros.rosio import msgs

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ClassFactory",
    "MessageFactory",
    "RosbagsFactory",
    "array_to_audio_stamped",
    "array_to_image",
    "compressed_image_to_rgb8",
    "compressed_rgb8",
    "audio_to_array",
    "default_factory",
    "detections_from_prediction",
    "image_to_array",
    "image_to_rgb8",
    "make_header",
    "mask_to_image",
    "ns_to_stamp",
    "stamp_to_ns",
    "string_message",
]

NS_PER_S = 1_000_000_000

# --------------------------------------------------------------------------- factories

_NUMPY_DTYPES = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
    "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64,
}
_BASE_DEFAULTS: dict[str, Any] = {"string": "", "bool": False, "float32": 0.0, "float64": 0.0}
# Non-zero default values declared in .msg texts, which rosbags' type store does not keep, for
# the types this project builds: geometry_msgs/msg/Quaternion.msg has ``float64 w 1`` (an
# identity rotation; rclpy's generated class defaults to it too).
_FIELD_DEFAULTS: dict[str, dict[str, Any]] = {"geometry_msgs/msg/Quaternion": {"w": 1.0}}

# rosidl (rclpy) field type spellings -> array.array typecodes for sequence<...> fields.
_ROSIDL_TYPECODES = {
    "octet": "B", "uint8": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I",
    "int32": "i", "uint64": "Q", "int64": "q", "float": "f", "double": "d",
}


class MessageFactory(Protocol):
    """Builds ROS messages by type name; fields not given take their ROS default values."""

    def new(self, typename: str, **fields: Any) -> Any:
        """Create a message.

        Args:
            typename: ``pkg/msg/Name`` (for example ``"sensor_msgs/msg/Image"``).
            **fields: field values; primitive arrays may be numpy arrays, nested messages must
                come from the same factory (or be duck-compatible objects).

        Returns:
            A message instance of the factory's flavour.
        """
        ...


class RosbagsFactory:
    """:class:`MessageFactory` for rosbags message classes (bags, tests, ROS-free tools).

    rosbags dataclasses have no defaults, so missing fields are filled recursively with the ROS
    defaults (0, ``""``, ``False``, empty sequences, zero-filled fixed arrays, default nested
    messages) derived from the type store's field definitions, and with the non-zero defaults
    the ``.msg`` texts declare (rosbags drops them; e.g. ``Quaternion.w = 1``).

    Args:
        audio_variant: type store variant, see :func:`refavs_ros.rosio.msgs.typestore`.
    """

    def __init__(self, *, audio_variant: str = msgs.AUDIO_MGONZS13) -> None:
        self.store = msgs.typestore(audio_variant)

    def new(self, typename: str, **fields: Any) -> Any:
        """See :meth:`MessageFactory.new`.

        Raises:
            InputError: unknown type or field name (named).
        """
        try:
            _, fielddefs = self.store.fielddefs[typename]
            cls = self.store.types[typename]
        except KeyError:
            raise InputError(f"message type {typename!r} is not in the rosbags type store") from None
        names = {name for name, _ in fielddefs}
        if unknown := set(fields) - names:
            raise InputError(f"{typename} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        values = {}
        declared = _FIELD_DEFAULTS.get(typename, {})
        for name, desc in fielddefs:
            if name in fields:
                values[name] = fields[name]
            else:
                values[name] = declared[name] if name in declared else self._default(desc)
        return cls(**values)

    def _default(self, desc: tuple) -> Any:
        kind, arg = desc
        kind = int(kind)  # rosbags Nodetype: 1 BASE, 2 NAME, 3 ARRAY, 4 SEQUENCE
        if kind == 1:
            return _BASE_DEFAULTS.get(arg[0], 0)
        if kind == 2:
            return self.new(arg)
        sub, count = arg
        sub_kind, sub_arg = int(sub[0]), sub[1]
        if kind == 3:  # fixed-size array
            if sub_kind == 1 and sub_arg[0] in _NUMPY_DTYPES:
                return np.zeros(count, dtype=_NUMPY_DTYPES[sub_arg[0]])
            return [self._default(sub) for _ in range(count)]
        if sub_kind == 1 and sub_arg[0] in _NUMPY_DTYPES:
            return np.zeros(0, dtype=_NUMPY_DTYPES[sub_arg[0]])
        return []


class ClassFactory:
    """:class:`MessageFactory` over rosidl-generated Python classes (rclpy messages).

    rosidl classes already default every field; this factory only adapts numpy arrays to what
    their setters accept: ``array.array`` for ``sequence<...>`` fields, numpy of the right dtype
    for fixed ``T[N]`` fields.

    Args:
        resolve: maps ``pkg/msg/Name`` to the class, either a mapping or a callable. Use
            :meth:`importing` in ROS code to import classes from the ROS Python packages lazily.
    """

    def __init__(self, resolve: Mapping[str, type] | Callable[[str], type]) -> None:
        self._resolve = resolve

    @classmethod
    def importing(cls) -> ClassFactory:
        """Factory that imports ``pkg.msg.Name`` on first use (call from ROS code only).

        Returns:
            A :class:`ClassFactory` resolving names with :mod:`importlib`.
        """

        def resolve(typename: str) -> type:
            package, _, name = typename.rpartition("/")
            return getattr(importlib.import_module(package.replace("/", ".")), name)

        return cls(resolve)

    def new(self, typename: str, **fields: Any) -> Any:
        """See :meth:`MessageFactory.new`.

        Raises:
            InputError: the class cannot be resolved or rejects a field (named).
        """
        try:
            klass = (
                self._resolve[typename] if isinstance(self._resolve, Mapping) else self._resolve(typename)
            )
        except (KeyError, ImportError, AttributeError) as exc:
            raise InputError(f"cannot resolve message class {typename!r}: {exc}") from exc
        types = klass.get_fields_and_field_types() if hasattr(klass, "get_fields_and_field_types") else {}
        converted = {name: _to_rosidl(value, types.get(name, "")) for name, value in fields.items()}
        try:
            return klass(**converted)
        except (AssertionError, TypeError, ValueError) as exc:
            raise InputError(f"cannot build {typename} from fields {sorted(fields)}: {exc}") from exc


def import_audio_class(type_name: str) -> type:
    """Import ``audio_common_msgs.msg.<type_name>`` (done at configure time: the message package
    is a run-time choice, not a build dependency).

    Args:
        type_name: one of :data:`msgs.AUDIO_MSG_TYPES`.

    Returns:
        the rosidl message class.

    Raises:
        ConfigError: unknown type name, or the package/type cannot be imported; the message says
            which audio_common provides it.
    """
    if type_name not in msgs.AUDIO_MSG_TYPES:
        raise ConfigError(f"audio_msg_type {type_name!r} is not one of {', '.join(msgs.AUDIO_MSG_TYPES)}")
    try:
        return getattr(importlib.import_module("audio_common_msgs.msg"), type_name)
    except (ImportError, AttributeError) as exc:
        origin = (
            "mgonzs13/audio_common (github.com/mgonzs13/audio_common; build it in your workspace)"
            if type_name == "AudioStamped"
            else "ros-drivers/audio_common (apt install ros-$ROS_DISTRO-audio-common-msgs)"
        )
        raise ConfigError(
            f"audio_msg_type '{type_name}' needs audio_common_msgs.msg.{type_name} from {origin}; "
            f"import failed: {exc}"
        ) from exc


def _to_rosidl(value: Any, field_type: str) -> Any:
    if not isinstance(value, np.ndarray):
        return value
    if field_type.startswith("sequence<"):
        inner = field_type[len("sequence<"):].split(",")[0].rstrip(">")
        if inner in _ROSIDL_TYPECODES:
            code = _ROSIDL_TYPECODES[inner]
            return array.array(code, np.ascontiguousarray(value, dtype=np.dtype(code)).tobytes())
        return value.tolist()
    return value


_DEFAULT_FACTORY: RosbagsFactory | None = None


def default_factory() -> RosbagsFactory:
    """Return the shared :class:`RosbagsFactory` (mgonzs13 audio variant)."""
    global _DEFAULT_FACTORY  # noqa: PLW0603 - lazily built singleton, no configuration
    if _DEFAULT_FACTORY is None:
        _DEFAULT_FACTORY = RosbagsFactory()
    return _DEFAULT_FACTORY


# --------------------------------------------------------------------------- stamps / headers


def stamp_to_ns(stamp: Any) -> int:
    """Convert a ``builtin_interfaces/Time`` (``sec``, ``nanosec``) to integer nanoseconds.

    Args:
        stamp: any object with integer ``sec`` and ``nanosec`` attributes.

    Returns:
        ``sec * 10**9 + nanosec`` (ns).

    Raises:
        InputError: missing attributes or ``nanosec`` outside [0, 1e9).
    """
    try:
        sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"not a time stamp (needs sec, nanosec): {stamp!r}", reason="bad stamp") from exc
    if not 0 <= nanosec < NS_PER_S:
        raise InputError(f"stamp nanosec {nanosec} is outside [0, 1e9)", reason="bad stamp")
    return sec * NS_PER_S + nanosec


def ns_to_stamp(ns: int, cls: type | None = None) -> Any:
    """Convert integer nanoseconds to a ``builtin_interfaces/Time``.

    Args:
        ns: time in ns (may be negative; ``nanosec`` is always in [0, 1e9)).
        cls: class to instantiate as ``cls(sec=..., nanosec=...)``; default the rosbags
            ``builtin_interfaces/msg/Time``.

    Returns:
        The stamp message.
    """
    sec, nanosec = divmod(int(ns), NS_PER_S)
    if cls is None:
        cls = default_factory().store.types[msgs.TIME]
    return cls(sec=sec, nanosec=nanosec)


def make_header(stamp_ns: int, frame_id: str = "", *, factory: MessageFactory | None = None) -> Any:
    """Build a ``std_msgs/Header`` for ``stamp_ns`` (ns) and ``frame_id``.

    Args:
        stamp_ns: stamp in ns.
        frame_id: TF frame of the data.
        factory: message flavour (default rosbags).

    Returns:
        The header message.
    """
    factory = factory or default_factory()
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    stamp = factory.new(msgs.TIME, sec=sec, nanosec=nanosec)
    return factory.new(msgs.HEADER, stamp=stamp, frame_id=str(frame_id))


def _header(header: Any, stamp_ns: int | None, frame_id: str, factory: MessageFactory) -> Any:
    if header is not None:
        return header
    return make_header(0 if stamp_ns is None else stamp_ns, frame_id, factory=factory)


def string_message(text: str, *, factory: MessageFactory | None = None) -> Any:
    """Build a ``std_msgs/String`` with ``data=text``."""
    return (factory or default_factory()).new(msgs.STRING, data=str(text))


# --------------------------------------------------------------------------- images

# encoding -> (channels, numpy dtype of one channel, layout)
_ENCODINGS: dict[str, tuple[int, type, str]] = {
    "rgb8": (3, np.uint8, "rgb"),
    "bgr8": (3, np.uint8, "bgr"),
    "8UC3": (3, np.uint8, "bgr"),  # OpenCV convention, as cv_bridge
    "rgba8": (4, np.uint8, "rgba"),
    "bgra8": (4, np.uint8, "bgra"),
    "8UC4": (4, np.uint8, "bgra"),
    "mono8": (1, np.uint8, "mono"),
    "8UC1": (1, np.uint8, "mono"),
    "mono16": (1, np.uint16, "mono"),
    "16UC1": (1, np.uint16, "mono"),
    "yuv422": (2, np.uint8, "uyvy"),  # sensor_msgs YUV422 is UYVY byte order
    "uyvy": (2, np.uint8, "uyvy"),
    "yuv422_yuy2": (2, np.uint8, "yuyv"),
    "yuyv": (2, np.uint8, "yuyv"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)
"""Image encodings understood by :func:`image_to_array` and :func:`array_to_image`."""

MAX_IMAGE_PIXELS = 1 << 26
"""Largest image accepted for decoding (pixels, width x height: 67 MP, e.g. 8192 x 8192; an 8K
UHD frame has 33 MP). Larger images are rejected before any pixel is copied or decompressed
(reason ``too large``): a few hundred bytes of PNG or JPEG can declare a multi-gigapixel image
(a decompression bomb), which OpenCV would allocate up to its own limit of 2**30 pixels (3 GiB
as BGR)."""


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{what} image is {width}x{height} = {width * height} pixels; the limit is {MAX_IMAGE_PIXELS}",
            reason="too large",
        )


def _buffer_bytes(data: Any) -> np.ndarray:
    """View a message byte sequence (numpy, bytes, array.array, list) as flat uint8."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_array(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` to a numpy array in its own colour layout.

    ``step`` (bytes per row, >= width * bytes per pixel) is honoured, so padded rows decode
    correctly; 16-bit data honours ``is_bigendian``. Source: ``sensor_msgs/Image.msg``,
    ``image_encodings.hpp``; cv_bridge ``imgmsg_to_cv2``.

    Args:
        msg: any object with ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``,
            ``data``.

    Returns:
        A new C-contiguous array (it does not alias the message):
        rgb8/bgr8 (and 8UC3, as BGR): uint8 (H, W, 3) in the encoding's channel order;
        rgba8/bgra8 (8UC4): uint8 (H, W, 4); mono8/8UC1: uint8 (H, W);
        mono16/16UC1: uint16 (H, W), native byte order;
        yuv422 (= UYVY), uyvy, yuv422_yuy2 (= YUYV), yuyv: converted to RGB uint8 (H, W, 3)
        with OpenCV (BT.601).

    Raises:
        InputError: unsupported encoding (reason ``unsupported encoding``), zero width or height
            (``empty image``), more than :data:`MAX_IMAGE_PIXELS` pixels (``too large``),
            ``is_bigendian`` other than 0 or 1 (``bad endianness``: cv_bridge reads only 1 as
            big-endian, a plain truth test any non-zero value, so other values are ambiguous),
            ``step`` smaller than a row (``bad step``), ``len(data) != step * height`` (``data
            length``) or an odd width for YUV 4:2:2 (``bad size``), each named with the values
            found.
    """
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise InputError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}",
            reason="unsupported encoding",
        )
    channels, dtype, layout = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if height <= 0 or width <= 0:
        raise InputError(f"{encoding} image has an empty size {width}x{height}", reason="empty image")
    _check_pixels(width, height, encoding)
    big_endian = int(msg.is_bigendian)
    if big_endian not in (0, 1):
        raise InputError(
            f"{encoding} image is_bigendian = {big_endian}; must be 0 (little-endian) or 1 (big-endian)",
            reason="bad endianness",
        )
    if step < row_bytes:
        raise InputError(f"{encoding} image step {step} < width*bytes_per_pixel = {row_bytes} (width {width})", reason="bad step")
    raw = _buffer_bytes(msg.data)
    if raw.size != step * height:
        raise InputError(
            f"{encoding} image data has {raw.size} bytes, expected step*height = {step}*{height} = {step * height}",
            reason="data length",
        )
    rows = np.ascontiguousarray(raw.reshape(height, step)[:, :row_bytes])
    if layout in ("uyvy", "yuyv"):
        if width % 2:
            raise InputError(f"{encoding} (YUV 4:2:2) image needs an even width, got {width}", reason="bad size")
        code = cv2.COLOR_YUV2RGB_UYVY if layout == "uyvy" else cv2.COLOR_YUV2RGB_YUY2
        return cv2.cvtColor(rows.reshape(height, width, 2), code)
    if np.dtype(dtype).itemsize > 1:
        order = ">" if big_endian else "<"
        values = rows.view(np.dtype(dtype).newbyteorder(order)).astype(dtype)
    else:
        values = rows.copy()
    shape = (height, width) if channels == 1 else (height, width, channels)
    return values.reshape(shape)


def image_to_rgb8(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` to the model input: RGB uint8 (H, W, 3).

    mono is replicated to three channels, mono16 is scaled by ``>> 8``, alpha is dropped, BGR
    orders are swapped, YUV 4:2:2 is converted (see :func:`image_to_array`).

    Args:
        msg: image message (any supported encoding).

    Returns:
        uint8 array (H, W, 3), RGB, C-contiguous.

    Raises:
        InputError: as :func:`image_to_array`.
    """
    arr = image_to_array(msg)
    layout = _ENCODINGS[str(msg.encoding)][2]
    if layout == "mono":
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if layout in ("bgr", "bgra"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    if layout == "rgba":
        return np.ascontiguousarray(arr[:, :, :3])
    return arr  # rgb, or YUV already converted to RGB


def compressed_image_to_rgb8(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG / PNG, image_transport ``compressed``) to RGB.

    Args:
        msg: object with ``format`` (e.g. ``"jpeg"``, ``"png"``, ``"rgb8; jpeg compressed bgr8"``)
            and ``data`` (numpy uint8, bytes, ``array.array('B')`` or a list).

    Only PNG and JPEG data are decoded (what image_transport's ``compressed`` plugin produces),
    recognised by their signature whatever ``format`` says; the size in the PNG ``IHDR`` or JPEG
    ``SOF`` header is checked against :data:`MAX_IMAGE_PIXELS` BEFORE decompressing, so a
    decompression bomb costs nothing. Other codecs OpenCV could read (TIFF, BMP, WebP, OpenEXR,
    JPEG 2000...) are refused: no camera driver sends them as ``CompressedImage``, and each is
    more decoder code exposed to the network.

    Returns:
        uint8 array (H, W, 3), RGB, C-contiguous (``cv2.imdecode``; grey images are replicated).

    Raises:
        InputError: ``compressedDepth`` data or data that is neither PNG nor JPEG (reason
            ``unsupported format``), empty data (``empty image``), a header declaring more than
            :data:`MAX_IMAGE_PIXELS` pixels or a zero size (``too large`` / ``empty image``),
            or bytes OpenCV cannot decode (``undecodable``).
    """
    fmt = str(getattr(msg, "format", ""))
    if "compressedDepth" in fmt:
        raise InputError(f"CompressedImage format {fmt!r} (depth) is not a colour image", reason="unsupported format")
    buf = _buffer_bytes(msg.data)
    if buf.size == 0:
        raise InputError("CompressedImage has no data", reason="empty image")
    head = buf[:8].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        codec, size = "PNG", _png_size(buf)
    elif head.startswith(_JPEG_SIGNATURE):
        codec, size = "JPEG", _jpeg_size(buf)
    else:
        raise InputError(
            f"CompressedImage data ({buf.size} bytes, format {fmt!r}, starting {head[:4].hex()}) is neither PNG nor JPEG",
            reason="unsupported format",
        )
    if size is None:
        raise InputError(f"cannot decode CompressedImage: no {codec} image header in {buf.size} bytes", reason="undecodable")
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"{codec} header declares an empty size {width}x{height}", reason="empty image")
    _check_pixels(width, height, codec)
    bgr = cv2.imdecode(np.ascontiguousarray(buf), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot decode CompressedImage ({buf.size} bytes, format {fmt!r})", reason="undecodable")
    return np.ascontiguousarray(bgr[:, :, ::-1])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# JPEG start-of-frame markers (ITU-T T.81 table B.1): SOF0-SOF15 except DHT, JPG and DAC
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _png_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (PNG spec 11.2.2), None when absent."""
    head = buf[:24].tobytes()
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first SOF segment (ITU-T T.81 B.2.2), None when the marker
    segments before it are malformed or the scan starts first."""
    data = buf.tobytes()
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _JPEG_SOF:
            if length < 8 or i + 9 > n:
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def compressed_rgb8(
    rgb: np.ndarray,
    *,
    fmt: str = "png",
    header: Any = None,
    stamp_ns: int | None = None,
    frame_id: str = "",
    factory: MessageFactory | None = None,
) -> Any:
    """Encode RGB uint8 (H, W, 3) as a ``sensor_msgs/CompressedImage`` (``"png"`` or ``"jpeg"``).

    The ``format`` field follows image_transport: ``"rgb8; png compressed bgr8"``.

    Raises:
        InputError: wrong array shape/dtype or unknown format.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"compressed_rgb8 needs uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    if fmt not in ("png", "jpeg"):
        raise InputError(f"unknown compression {fmt!r}; expected 'png' or 'jpeg'")
    ok, encoded = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(arr[:, :, ::-1]))
    if not ok:
        raise InputError("OpenCV could not encode the image")
    factory = factory or default_factory()
    return factory.new(
        msgs.COMPRESSED_IMAGE,
        header=_header(header, stamp_ns, frame_id, factory),
        format=f"rgb8; {fmt} compressed bgr8",
        data=encoded.reshape(-1),
    )


def array_to_image(
    array_: np.ndarray,
    encoding: str,
    *,
    header: Any = None,
    stamp_ns: int | None = None,
    frame_id: str = "",
    step: int | None = None,
    is_bigendian: bool = False,
    factory: MessageFactory | None = None,
) -> Any:
    """Encode a numpy array as a ``sensor_msgs/Image``.

    Args:
        array_: pixels in the layout of ``encoding``: (H, W, 3) uint8 for rgb8/bgr8/8UC3,
            (H, W, 4) uint8 for rgba8/bgra8/8UC4, (H, W) uint8 for mono8/8UC1, (H, W) uint16 for
            mono16/16UC1, (H, W, 2) uint8 of packed bytes for the YUV 4:2:2 encodings (the raw
            UYVY / YUYV byte pairs; no colour conversion is done when encoding).
        encoding: one of :data:`SUPPORTED_ENCODINGS`; channel order is NOT converted.
        header: header to use as is (any flavour); when None one is built from ``stamp_ns`` (ns,
            default 0) and ``frame_id``.
        stamp_ns: stamp (ns) of the built header.
        frame_id: frame of the built header.
        step: bytes per row; default tight (width * bytes per pixel). Larger values pad each
            row with zeros.
        is_bigendian: byte order of 16-bit data in the message.
        factory: message flavour (default rosbags; :class:`ClassFactory` for rclpy).

    Returns:
        The image message.

    Raises:
        InputError: unsupported encoding, wrong shape or dtype, ``step`` too small.
    """
    if encoding not in _ENCODINGS:
        raise InputError(f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    channels, dtype, _ = _ENCODINGS[encoding]
    arr = np.asarray(array_)
    expected_ndim = 2 if channels == 1 else 3
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels) or arr.dtype != dtype:
        want = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise InputError(
            f"{encoding} needs a {np.dtype(dtype).name} array of shape {want}, got {arr.dtype} {arr.shape}"
        )
    height, width = arr.shape[:2]
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise InputError(f"step {step} < width*bytes_per_pixel = {row_bytes}")
    if itemsize > 1:
        arr = arr.astype(np.dtype(dtype).newbyteorder(">" if is_bigendian else "<"))
    rows = np.ascontiguousarray(arr).view(np.uint8).reshape(height, row_bytes)
    if step > row_bytes:
        rows = np.concatenate([rows, np.zeros((height, step - row_bytes), np.uint8)], axis=1)
    factory = factory or default_factory()
    return factory.new(
        msgs.IMAGE,
        header=_header(header, stamp_ns, frame_id, factory),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bool(is_bigendian)),
        step=step,
        data=rows.reshape(-1),
    )


def mask_to_image(mask: np.ndarray, header: Any, *, factory: MessageFactory | None = None) -> Any:
    """Encode a binary mask as a mono8 ``sensor_msgs/Image`` with values 0 / 255.

    Args:
        mask: bool (H, W) (any dtype: nonzero = foreground).
        header: header of the image the mask belongs to (reused as is).
        factory: message flavour (default rosbags).

    Returns:
        mono8 image message, 255 on the mask, 0 elsewhere.

    Raises:
        InputError: ``mask`` is not 2-D.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask must be 2-D (H, W), got shape {m.shape}")
    # (m != 0) is bool, viewed as 0/1 bytes: no int64 temporary (6 ms -> 0.7 ms at 1920x1080)
    return array_to_image((m != 0).view(np.uint8) * np.uint8(255), "mono8", header=header, factory=factory)


# --------------------------------------------------------------------------- audio

# mgonzs13 AudioInfo.format (PortAudio) -> (AudioData field, dtype), in AudioData field order.
# Upstream AudioData has no field for paInt24: such samples are read from uint8_data (below).
_PA_FIELDS = {
    msgs.PA_FLOAT32: ("float32_data", np.float32),
    msgs.PA_INT32: ("int32_data", np.int32),
    msgs.PA_INT16: ("int16_data", np.int16),
    msgs.PA_INT8: ("int8_data", np.int8),
    msgs.PA_UINT8: ("uint8_data", np.uint8),
}
_AUDIO_DATA_FIELDS = tuple(field for field, _ in _PA_FIELDS.values())
_PA_NAMES = {
    msgs.PA_FLOAT32: "paFloat32", msgs.PA_INT32: "paInt32", msgs.PA_INT24: "paInt24",
    msgs.PA_INT16: "paInt16", msgs.PA_INT8: "paInt8", msgs.PA_UINT8: "paUInt8",
}
_DTYPE_TO_PA = {
    np.dtype(np.float32): msgs.PA_FLOAT32, np.dtype(np.int32): msgs.PA_INT32,
    np.dtype(np.int16): msgs.PA_INT16, np.dtype(np.int8): msgs.PA_INT8,
    np.dtype(np.uint8): msgs.PA_UINT8,
}
# ros-drivers sample_format (GStreamer audio format names) -> numpy dtype
_GST_FORMATS = {
    "S16LE": "<i2", "S16BE": ">i2", "S32LE": "<i4", "S32BE": ">i4", "F32LE": "<f4",
    "F32BE": ">f4", "S8": "i1", "U8": "u1",
}
_PCM_CODINGS = {"", "wave", "wav", "pcm", "raw"}


def _typed_array(seq: Any, dtype: type) -> np.ndarray:
    if isinstance(seq, np.ndarray):
        return seq.astype(dtype, copy=True).reshape(-1)
    if isinstance(seq, array.array):
        return np.asarray(seq).astype(dtype, copy=True)
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return np.frombuffer(seq, dtype=dtype).copy()
    return np.asarray(list(seq), dtype=dtype)


def _length(seq: Any) -> int:
    return int(seq.size) if isinstance(seq, np.ndarray) else len(seq)


def audio_to_array(
    msg: Any,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    sample_format: str = "S16LE",
    coding_format: str = "wave",
) -> tuple[np.ndarray, int]:
    """Decode an audio message to PCM samples.

    Two message families are accepted (duck-typed):

    * mgonzs13 ``audio_common_msgs/AudioStamped`` (or its ``Audio``): the typed array named by
      ``info.format`` (PortAudio code: paFloat32=1 -> ``float32_data``, paInt32=2 ->
      ``int32_data``, paInt16=8 -> ``int16_data``, paInt8=16 -> ``int8_data``, paUInt8=32 ->
      ``uint8_data``; field set of mgonzs13/audio_common 4.x, ``msg/README.md``); rate and
      channels come from ``info``; the keyword arguments are ignored. Upstream ``AudioData`` has
      no 24-bit field (its nodes reject paInt24); paInt24=4 is read from ``uint8_data`` as
      packed 3-byte little-endian samples, the layout PortAudio delivers for paInt24, and
      returned as int32 scaled to full range (``<< 8``). This module never writes paInt24.
    * ros-drivers ``AudioDataStamped`` / ``AudioData`` (``uint8[] data``): raw PCM bytes whose
      layout is NOT in the message; ``sample_rate``, ``channels``, ``sample_format`` (GStreamer
      names: S16LE, S16BE, S32LE, S32BE, F32LE, F32BE, S8, U8) and ``coding_format`` come from
      the caller (the publisher's ``AudioInfo``).

    Args:
        msg: the message.
        sample_rate: Hz, required for ros-drivers messages.
        channels: channel count, required for ros-drivers messages.
        sample_format: ros-drivers sample format.
        coding_format: ros-drivers coding; only PCM (``wave``) is decodable.

    Returns:
        ``(samples, sample_rate)``: samples (N,) for mono or (N, C) interleaved frames x
        channels, dtype float32 / int32 / int16 / int8 / uint8 as transmitted (native byte
        order, a new array); ``sample_rate`` in Hz.

    Raises:
        InputError: unknown format code, no samples (the format's array empty; other arrays
            holding data are named), a field of the mgonzs13 definition missing, paInt24 bytes
            not a multiple of 3, sample count not a multiple of ``channels``, a compressed coding
            (e.g. mp3), missing rate/channels for ros-drivers data, or an unrecognised message
            (each named).
    """
    audio = getattr(msg, "audio", msg)
    if hasattr(audio, "audio_data") and hasattr(audio, "info"):
        return _mgonzs13_to_array(audio)
    if hasattr(audio, "data"):
        return _ros_drivers_to_array(audio.data, sample_rate, channels, sample_format, coding_format)
    raise InputError(
        f"unrecognised audio message {type(msg).__name__}: expected audio_common_msgs AudioStamped "
        "(mgonzs13) or AudioData/AudioDataStamped (ros-drivers)",
        reason="unknown audio type",
    )


def _field(obj: Any, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise InputError(
            f"{what} has no field {name!r}: not mgonzs13/audio_common's definition (see msg/README.md)",
            reason="unknown audio type",
        ) from None


def _mgonzs13_to_array(audio: Any) -> tuple[np.ndarray, int]:
    info, data = _field(audio, "info", "Audio"), _field(audio, "audio_data", "Audio")
    fmt = int(_field(info, "format", "AudioInfo"))
    rate = int(_field(info, "rate", "AudioInfo"))
    channels = int(_field(info, "channels", "AudioInfo"))
    if fmt not in _PA_NAMES:
        raise InputError(
            f"AudioInfo.format {fmt} is not a PortAudio PCM format; expected one of "
            + ", ".join(f"{v}={k}" for k, v in _PA_NAMES.items()),
            reason="unsupported format",
        )
    if rate <= 0:
        raise InputError(f"AudioInfo.rate {rate} Hz must be positive", reason="bad rate")
    if channels <= 0:
        raise InputError(f"AudioInfo.channels {channels} must be positive", reason="bad channels")
    field = "uint8_data" if fmt == msgs.PA_INT24 else _PA_FIELDS[fmt][0]
    seq = _field(data, field, "AudioData")
    if _length(seq) == 0:
        lengths = {f: _length(_field(data, f, "AudioData")) for f in _AUDIO_DATA_FIELDS if f != field}
        filled = {f: n for f, n in lengths.items() if n}
        where = f"; but {filled} hold samples" if filled else ""
        raise InputError(
            f"audio message holds no samples: AudioInfo.format {fmt} ({_PA_NAMES[fmt]}) selects "
            f"{field}, which is empty{where}",
            reason="format mismatch" if filled else "empty audio",
        )
    if fmt == msgs.PA_INT24:
        samples = _packed_int24(_typed_array(seq, np.uint8))
    else:
        samples = _typed_array(seq, _PA_FIELDS[fmt][1])
    return _interleaved(samples, channels), rate


def _packed_int24(raw: np.ndarray) -> np.ndarray:
    """paInt24 as PortAudio delivers it (packed 3-byte little-endian) -> int32 scaled by 2**8."""
    if raw.size % 3:
        raise InputError(
            f"paInt24 audio in uint8_data must be packed 3-byte samples; {raw.size} bytes is not a "
            "multiple of 3",
            reason="data length",
        )
    b = raw.reshape(-1, 3).astype(np.uint32)
    # (b0 << 8 | b1 << 16 | b2 << 24) viewed as int32 = the sign-extended sample times 256
    return ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)).view(np.int32)


def _ros_drivers_to_array(
    data: Any, sample_rate: int | None, channels: int | None, sample_format: str, coding_format: str
) -> tuple[np.ndarray, int]:
    if str(coding_format).lower() not in _PCM_CODINGS:
        raise InputError(
            f"audio coding {coding_format!r} is compressed; only PCM (wave) audio can be decoded",
            reason="unsupported format",
        )
    if sample_rate is None or channels is None:
        raise InputError("ros-drivers AudioData carries raw bytes: pass sample_rate and channels", reason="bad rate")
    if int(sample_rate) <= 0 or int(channels) <= 0:
        raise InputError(f"sample_rate {sample_rate} and channels {channels} must be positive", reason="bad rate")
    fmt = str(sample_format).upper()
    if fmt not in _GST_FORMATS:
        raise InputError(f"unsupported sample_format {sample_format!r}; supported: {', '.join(_GST_FORMATS)}", reason="unsupported format")
    dtype = np.dtype(_GST_FORMATS[fmt])
    raw = _buffer_bytes(data)
    if raw.size % dtype.itemsize:
        raise InputError(f"{raw.size} bytes is not a whole number of {fmt} samples", reason="data length")
    samples = np.frombuffer(raw.tobytes(), dtype=dtype).astype(dtype.newbyteorder("="))
    return _interleaved(samples, int(channels)), int(sample_rate)


def _interleaved(samples: np.ndarray, channels: int) -> np.ndarray:
    if samples.size % channels:
        raise InputError(f"{samples.size} samples is not a multiple of {channels} channels", reason="data length")
    return samples if channels == 1 else samples.reshape(-1, channels)


def array_to_audio_stamped(
    samples: np.ndarray,
    sample_rate: int,
    stamp_ns: int,
    frame_id: str = "",
    *,
    chunk: int | None = None,
    header: Any = None,
    factory: MessageFactory | None = None,
) -> Any:
    """Encode PCM samples as an mgonzs13 ``audio_common_msgs/AudioStamped``.

    Args:
        samples: (N,) mono or (N, C) interleaved, dtype int16 (project default), float32,
            int32, int8 or uint8; the matching typed array and PortAudio ``info.format`` are set.
        sample_rate: Hz (> 0).
        stamp_ns: stamp (ns) of the FIRST sample (header.stamp).
        frame_id: header frame.
        chunk: ``info.chunk`` (frames per message); default N.
        header: header to use instead of building one from ``stamp_ns``/``frame_id``.
        factory: message flavour (default rosbags, mgonzs13 variant).

    Returns:
        The ``AudioStamped`` message.

    Raises:
        InputError: unsupported dtype, more than 2 dimensions, or a non-positive rate.
    """
    arr = np.asarray(samples)
    if arr.dtype not in _DTYPE_TO_PA:
        raise InputError(f"audio dtype {arr.dtype} unsupported; use int16, int32, float32, int8 or uint8")
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] == 0):
        raise InputError(f"audio samples must be (N,) or (N, C), got shape {arr.shape}")
    if int(sample_rate) <= 0:
        raise InputError(f"sample_rate {sample_rate} Hz must be positive")
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    frames = arr.shape[0]
    fmt = _DTYPE_TO_PA[arr.dtype]
    factory = factory or default_factory()
    field = _PA_FIELDS[fmt][0]
    data_fields = {f: np.zeros(0, dt) for f, dt in _PA_FIELDS.values()}  # upstream AudioData
    data_fields[field] = np.ascontiguousarray(arr).reshape(-1).copy()
    audio_data = factory.new(msgs.AUDIO_DATA, **data_fields)
    info = factory.new(
        msgs.AUDIO_INFO, format=fmt, channels=channels, rate=int(sample_rate),
        chunk=int(frames if chunk is None else chunk),
    )
    audio = factory.new(msgs.AUDIO, audio_data=audio_data, info=info)
    return factory.new(
        msgs.AUDIO_STAMPED, header=_header(header, stamp_ns, frame_id, factory), audio=audio
    )


# --------------------------------------------------------------------------- detections


def detections_from_prediction(
    prediction: Any,
    header: Any,
    *,
    class_id: str | None = None,
    factory: MessageFactory | None = None,
) -> Any:
    """Build the ``vision_msgs/Detection2DArray`` for one prediction (vision_msgs 4.x layout).

    One detection when the referred object is found, none otherwise (null reference):
    ``bbox.center.position`` = centre of the inclusive pixel box in pixel coordinates (pixel
    centres at integers: ``((x_min + x_max) / 2, (y_min + y_max) / 2)``), ``size_x = x_max -
    x_min + 1``, ``size_y = y_max - y_min + 1`` (pixels), ``theta = 0``;
    ``results[0].hypothesis.class_id`` = the command text, ``score`` = the main region's
    ``region_score`` (presence probability x mean probability over the region) when the
    prediction has one, else the presence probability ``score``.

    Args:
        prediction: object with ``found`` (bool), ``bbox`` ((x_min, y_min, x_max, y_max) inclusive
            pixels of the main region, or None), ``score`` (float in [0, 1]), optionally
            ``region_score`` (float in [0, 1]), and ``command`` (str), e.g.
            :class:`refavs_ros.predictor.Prediction`.
        header: header of the source image (reused for the array and the detection).
        class_id: overrides the class id (default ``prediction.command``).
        factory: message flavour (default rosbags).

    Returns:
        The ``Detection2DArray`` message.
    """
    factory = factory or default_factory()
    detections = []
    bbox = getattr(prediction, "bbox", None)
    if bool(getattr(prediction, "found", False)) and bbox is not None:
        x0, y0, x1, y1 = (float(v) for v in bbox)
        hypothesis = factory.new(
            msgs.OBJECT_HYPOTHESIS,
            class_id=str(prediction.command if class_id is None else class_id),
            score=float(getattr(prediction, "region_score", prediction.score)),
        )
        result = factory.new(msgs.OBJECT_HYPOTHESIS_WITH_POSE, hypothesis=hypothesis)
        center = factory.new(
            msgs.POSE2D, position=factory.new(msgs.POINT2D, x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0), theta=0.0
        )
        box = factory.new(msgs.BOUNDING_BOX2D, center=center, size_x=x1 - x0 + 1.0, size_y=y1 - y0 + 1.0)
        detections.append(factory.new(msgs.DETECTION2D, header=header, results=[result], bbox=box, id=""))
    return factory.new(msgs.DETECTION2D_ARRAY, header=header, detections=detections)
