"""rosbag2 input/output for refavs_ros: scene bags, result bags and header-stamp-ordered reading.

Everything goes through rosbags (ternaris/rosbags), so no ROS installation is needed. Types come
from :func:`refavs_ros.rosio.msgs.typestore`; bags that embed their own message definitions (MCAP, and
sqlite3 bags recorded by Iron or newer) are decoded with those definitions (rosbags
``AnyReader``).

Topic layout of a scene bag (:func:`write_scene_bag`):

=========================== ================================ =========================================
topic                       type                             content
=========================== ================================ =========================================
``/camera/image_raw``       ``sensor_msgs/Image``            rgb8, ``frame_id`` "camera", one per frame
``/audio``                  ``audio_common_msgs/AudioStamped`` int16, 16 kHz, mono, 512-sample chunks;
                                                             stamp = stamp of the chunk's first sample
``/refavs/command``         ``std_msgs/String``              the referring expression, at the start
``/refavs/gt_mask``         ``sensor_msgs/Image``            mono8 0/255, same header as the frame
``/refavs/scene_info``      ``std_msgs/String``              JSON of ``scene.info()``, at the start
``/camera/depth/image_raw`` ``sensor_msgs/Image``            scenes with depth only: 16UC1 mm registered
                                                             to the colour image, same header
``/camera/camera_info``     ``sensor_msgs/CameraInfo``       scenes with depth only: the colour camera's
                                                             intrinsics, same header as the frame
=========================== ================================ =========================================

Messages are written with the receive timestamp (rosbag2 "log time") equal to their header stamp;
header-less messages (command, scene info) at the earliest stamp of the scene.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import TypesysError

from refavs_ros.errors import BagError, InputError
from refavs_ros.rosio import conversions, msgs, rgbd

TOPIC_IMAGE = "/camera/image_raw"
TOPIC_AUDIO = "/audio"
TOPIC_COMMAND = "/refavs/command"
TOPIC_GT_MASK = "/refavs/gt_mask"
TOPIC_SCENE_INFO = "/refavs/scene_info"
TOPIC_MASK = "/refavs/mask"
TOPIC_DETECTIONS = "/refavs/detections"
TOPIC_ACTIVE_COMMAND = "/refavs/active_command"
TOPIC_DEPTH = "/camera/depth/image_raw"
TOPIC_CAMERA_INFO = "/camera/camera_info"
TOPIC_TARGET_POINT = "/refavs/target_point"
TOPIC_GOAL_POSE = "/refavs/goal_pose"
TOPIC_DETECTIONS_3D = "/refavs/detections_3d"
TOPIC_MARKER = "/refavs/debug/marker"

CAMERA_FRAME = "camera"
AUDIO_FRAME = "microphone"
AUDIO_RATE = 16000
"""Scene-bag audio rate (Hz)."""
AUDIO_CHUNK = 512
"""Samples per ``AudioStamped`` message (mgonzs13/audio_common default chunk)."""

STORAGES = ("mcap", "sqlite3")
_PLUGINS = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_STORAGE_SUFFIXES = (".mcap", ".db3")
_NS = 1_000_000_000

LATCHED_QOS = Qos(
    history=QosHistory.KEEP_LAST,
    depth=1,
    reliability=QosReliability.RELIABLE,
    durability=QosDurability.TRANSIENT_LOCAL,
    deadline=QosTime(0, 0),
    lifespan=QosTime(0, 0),
    liveliness=QosLiveliness.AUTOMATIC,
    liveliness_lease_duration=QosTime(0, 0),
    avoid_ros_namespace_conventions=False,
)
"""QoS recorded for command / scene-info topics so ``ros2 bag play`` republishes them latched."""

# Failures rosbags (and the storage libraries below it) raise for unreadable bags.
_READ_ERRORS = (
    AnyReaderError, ReaderError, SerdeError, TypesysError, OSError, ValueError, KeyError,
    IndexError, EOFError, ArithmeticError, struct.error, sqlite3.Error, AssertionError,
)


# --------------------------------------------------------------------------- writing


class BagWriter:
    """Write deserialised messages to a new rosbag2 (rosbags ``Writer``), one call per message.

    Topics are registered on first use with the type name given there. Use as a context
    manager; the bag is finalised (metadata.yaml written) on exit.

    Args:
        path: bag directory to create; it must not exist (unless ``overwrite``).
        storage: ``"mcap"`` (default) or ``"sqlite3"``.
        overwrite: delete an existing bag directory at ``path`` first.
        audio_variant: type store variant (see :func:`refavs_ros.rosio.msgs.typestore`).

    Raises:
        BagError: bad storage name, existing path, or the bag cannot be created.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        storage: str = "mcap",
        overwrite: bool = False,
        audio_variant: str = msgs.AUDIO_MGONZS13,
    ) -> None:
        if storage not in _PLUGINS:
            raise BagError(f"unknown bag storage {storage!r}; expected one of {STORAGES}")
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise BagError(f"output bag {self.path} exists already (not overwriting)")
            _remove_bag(self.path)
        self.store = msgs.typestore(audio_variant)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=_PLUGINS[storage])
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        try:
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f"cannot create bag {self.path}: {exc}") from exc
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._writer.close()

    def write(
        self,
        topic: str,
        typename: str,
        message: Any,
        timestamp_ns: int,
        *,
        qos: Qos | None = None,
    ) -> None:
        """Serialise (CDR) and append one message.

        Args:
            topic: topic name.
            typename: ``pkg/msg/Name`` of ``message``.
            message: rosbags message object of that type.
            timestamp_ns: receive timestamp (log time) in ns.
            qos: offered QoS recorded for the topic (first call per topic only).

        Raises:
            BagError: the topic was registered with another type, or serialisation fails.
        """
        conn = self._connections.get(topic)
        if conn is None:
            try:
                conn = self._writer.add_connection(
                    topic, typename, typestore=self.store,
                    offered_qos_profiles=[qos] if qos is not None else [],
                )
            except (WriterError, TypesysError, KeyError) as exc:
                raise BagError(f"cannot add topic {topic} ({typename}) to {self.path}: {exc}") from exc
            self._connections[topic] = conn
        elif conn.msgtype != typename:
            raise BagError(f"topic {topic} is {conn.msgtype}, cannot also write {typename}")
        try:
            data = self.store.serialize_cdr(message, typename)
        except (SerdeError, struct.error, TypeError, ValueError, AttributeError) as exc:
            raise BagError(f"cannot serialise a {typename} for {topic}: {exc}") from exc
        self._writer.write(conn, int(timestamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1


def _remove_bag(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            if child.is_dir():
                raise BagError(f"refusing to overwrite {path}: it contains sub-folders, not a bag")
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()


def audio_chunks(
    audio: np.ndarray, start_ns: int, sample_rate: int = AUDIO_RATE, chunk: int = AUDIO_CHUNK
) -> Iterator[tuple[int, np.ndarray]]:
    """Split audio into fixed-size chunks stamped with their first sample's time.

    Args:
        audio: samples (N,) or (N, C).
        start_ns: stamp (ns) of sample 0.
        sample_rate: Hz.
        chunk: samples per chunk (the last chunk may be shorter).

    Yields:
        ``(stamp_ns, samples)`` with ``stamp_ns = start_ns + round(i * 1e9 / sample_rate)`` for
        the chunk starting at sample ``i``.
    """
    for i in range(0, len(audio), chunk):
        yield start_ns + round(i * _NS / sample_rate), audio[i : i + chunk]


def write_scene_bag(
    scene: Any, path: str | Path, storage: str = "mcap", *, overwrite: bool = False
) -> Path:
    """Write one synthetic scene as a rosbag2 (see the module docstring for the topics).

    Args:
        scene: a :class:`refavs_ros.scenes.Scene` (duck-typed): ``frames`` uint8 (T, H, W, 3)
            RGB, ``frame_stamps_ns`` int64 (T,), ``audio`` int16 (N,) at 16 kHz mono,
            ``audio_start_ns`` int, ``gt_masks`` bool (T, H, W), ``expression`` str and
            ``info()`` -> JSON-able dict; optionally ``depth`` (a
            :class:`refavs_ros.scenes.depth.DepthScene` or None: ``depth_mm`` uint16 (T, Hd, Wd)
            and ``camera``), written as ``/camera/depth/image_raw`` and ``/camera/camera_info``.
        path: bag directory to create.
        storage: ``"mcap"`` (default) or ``"sqlite3"``.
        overwrite: replace an existing bag at ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: inconsistent scene arrays (shapes, dtypes, lengths; named).
        BagError: the bag cannot be written.
    """
    frames = np.asarray(scene.frames)
    stamps = np.asarray(scene.frame_stamps_ns, dtype=np.int64)
    masks = np.asarray(scene.gt_masks)
    audio = np.asarray(scene.audio)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"scene.frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if stamps.shape != (frames.shape[0],):
        raise InputError(f"scene.frame_stamps_ns has shape {stamps.shape}, expected ({frames.shape[0]},)")
    if masks.shape != frames.shape[:3]:
        raise InputError(f"scene.gt_masks has shape {masks.shape}, expected {frames.shape[:3]}")
    if audio.ndim != 1 or audio.dtype != np.int16:
        raise InputError(f"scene.audio must be int16 (N,) at 16 kHz mono, got {audio.dtype} {audio.shape}")
    depth = getattr(scene, "depth", None)
    if depth is not None and np.asarray(depth.depth_mm).shape[0] != frames.shape[0]:
        raise InputError(f"scene.depth.depth_mm has {np.asarray(depth.depth_mm).shape[0]} frames, expected {frames.shape[0]}")
    info = scene.info()
    audio_start = int(scene.audio_start_ns)
    start = min(int(stamps.min()) if stamps.size else audio_start, audio_start)
    path = Path(path)
    with BagWriter(path, storage=storage, overwrite=overwrite) as bag:
        if not info.get("spoken_command"):  # spoken-command scenes: the command is in the audio only
            bag.write(TOPIC_COMMAND, msgs.STRING, conversions.string_message(str(scene.expression)), start,
                      qos=LATCHED_QOS)
        bag.write(TOPIC_SCENE_INFO, msgs.STRING, conversions.string_message(json.dumps(info, sort_keys=True)),
                  start, qos=LATCHED_QOS)
        events: list[tuple[int, int, Any]] = []  # (stamp, order, writer thunk args)
        for stamp_ns, samples in audio_chunks(audio, audio_start):
            events.append((stamp_ns, 0, ("audio", stamp_ns, samples)))
        for index, stamp_ns in enumerate(stamps.tolist()):
            events.append((stamp_ns, 1, ("frame", stamp_ns, index)))
        for stamp_ns, _, (kind, stamp, payload) in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == "audio":
                msg = conversions.array_to_audio_stamped(payload, AUDIO_RATE, stamp, AUDIO_FRAME, chunk=AUDIO_CHUNK)
                bag.write(TOPIC_AUDIO, msgs.AUDIO_STAMPED, msg, stamp)
            else:
                header = conversions.make_header(stamp, CAMERA_FRAME)
                image = conversions.array_to_image(frames[payload], "rgb8", header=header)
                bag.write(TOPIC_IMAGE, msgs.IMAGE, image, stamp)
                bag.write(TOPIC_GT_MASK, msgs.IMAGE, conversions.mask_to_image(masks[payload], header), stamp)
                if depth is not None:
                    bag.write(TOPIC_DEPTH, msgs.IMAGE, rgbd.depth_to_image(depth.depth_mm[payload], header), stamp)
                    bag.write(TOPIC_CAMERA_INFO, msgs.CAMERA_INFO, rgbd.camera_info_message(depth.camera, header), stamp)
    return path


# --------------------------------------------------------------------------- finding bags


def resolve_bag(path: str | Path) -> Path:
    """Return the path rosbags should open for a user-given bag path.

    Args:
        path: a rosbag2 directory (with ``metadata.yaml``), a directory holding exactly one
            ``.mcap``/``.db3`` file but no metadata, or a ``.mcap`` / ``.db3`` file.

    Returns:
        The directory or storage file to open.

    Raises:
        BagError: the path does not exist or holds no (or several un-indexed) storage files.
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if path.is_file():
        if path.suffix not in _STORAGE_SUFFIXES:
            raise BagError(f"{path} is not a rosbag2 storage file (.mcap or .db3)")
        return path
    if (path / "metadata.yaml").is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES and p.is_file())
    if len(files) == 1:
        return files[0]
    if not files:
        raise BagError(f"{path} is not a rosbag2: no metadata.yaml and no .mcap/.db3 file")
    raise BagError(f"{path} holds {len(files)} storage files but no metadata.yaml; pass one file")


def is_bag(path: Path) -> bool:
    """True when ``path`` is a bag directory or storage file (see :func:`resolve_bag`)."""
    if path.is_file():
        return path.suffix in _STORAGE_SUFFIXES
    if not path.is_dir():
        return False
    return (path / "metadata.yaml").is_file() or any(
        p.suffix in _STORAGE_SUFFIXES and p.is_file() for p in path.iterdir()
    )


def find_bags(root: str | Path) -> list[Path]:
    """List the bags at or under ``root`` (sorted; bag directories are not searched further).

    Args:
        root: a bag, or a directory tree containing bags.

    Returns:
        Bag paths (directories or storage files).

    Raises:
        BagError: ``root`` does not exist or contains no bag.
    """
    root = Path(root)
    if not root.exists():
        raise BagError(f"bag not found: {root}")
    if is_bag(root):
        return [root]
    found: list[Path] = []

    def walk(folder: Path) -> None:
        for child in sorted(folder.iterdir()):
            if child.is_dir():
                if is_bag(child):
                    found.append(child)
                else:
                    walk(child)

    walk(root)
    if not found:
        raise BagError(f"no rosbag2 (metadata.yaml, .mcap or .db3) found under {root}")
    return found


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BagMessage:
    """One deserialised bag message.

    Attributes:
        topic: topic name.
        msgtype: ``pkg/msg/Name``.
        stamp_ns: ``header.stamp`` in ns for stamped types, else the receive time.
        log_time_ns: receive timestamp recorded in the bag (ns).
        message: the deserialised rosbags message.
    """

    topic: str
    msgtype: str
    stamp_ns: int
    log_time_ns: int
    message: Any


@dataclass
class StampOrder:
    """Result of :meth:`BagReader.read_sorted`.

    Attributes:
        messages: messages of the selected topics sorted by (stamp, topic priority, receive order).
        out_of_order: per topic, how many messages have a header stamp earlier than some message
            of the same topic received before them (0 for a well-formed recording).
    """

    messages: list[BagMessage]
    out_of_order: dict[str, int] = field(default_factory=dict)

    @property
    def total_out_of_order(self) -> int:
        """Sum of :attr:`out_of_order` over topics."""
        return sum(self.out_of_order.values())


class BagReader:
    """Read a rosbag2 (MCAP or sqlite3) with rosbags, errors as :class:`BagError`.

    Messages are deserialised with the bag's embedded definitions when it has them, else with
    :func:`refavs_ros.rosio.msgs.typestore` (the ros-drivers audio variant is picked automatically
    when the bag holds ``audio_common_msgs/msg/AudioDataStamped``).

    Args:
        path: bag (see :func:`resolve_bag`).

    Raises:
        BagError: missing path, unreadable or corrupt bag.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._open_path = resolve_bag(self.path)
        self._reader: AnyReader | None = None

    def __enter__(self) -> BagReader:
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the bag and build its type store.

        Raises:
            BagError: the bag cannot be opened (named, with the rosbags error).
        """
        reader = self._try_open(msgs.typestore())
        types = {c.msgtype for c in reader.connections}
        if msgs.AUDIO_DATA_STAMPED in types and msgs.AUDIO_DATA_STAMPED not in reader.typestore.types:
            reader.close()
            reader = self._try_open(msgs.typestore(msgs.AUDIO_ROS_DRIVERS))
        self._reader = reader

    def _try_open(self, default_store: Any) -> AnyReader:
        try:
            reader = AnyReader([self._open_path], default_typestore=default_store)
            reader.open()
        except _READ_ERRORS as exc:
            raise BagError(f"cannot open bag {self.path}: {type(exc).__name__}: {exc}") from exc
        return reader

    def close(self) -> None:
        """Close the bag (idempotent)."""
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    @property
    def reader(self) -> AnyReader:
        """The open rosbags ``AnyReader``.

        Raises:
            BagError: the reader is not open.
        """
        if self._reader is None:
            raise BagError(f"bag {self.path} is not open")
        return self._reader

    @property
    def topics(self) -> dict[str, str]:
        """Mapping topic -> message type of every topic in the bag."""
        return {c.topic: c.msgtype for c in self.reader.connections}

    def require(self, topic: str, msgtypes: Iterable[str] | None = None) -> str:
        """Check that ``topic`` exists (with one of ``msgtypes``) and return its type.

        Raises:
            BagError: the topic is missing (available topics listed) or has another type.
        """
        topics = self.topics
        if topic not in topics:
            listing = ", ".join(f"{t} ({m})" for t, m in sorted(topics.items())) or "none"
            raise BagError(f"topic {topic} not found in bag {self.path}; available topics: {listing}")
        allowed = list(msgtypes) if msgtypes is not None else None
        if allowed is not None and topics[topic] not in allowed:
            raise BagError(f"topic {topic} in {self.path} is {topics[topic]}, expected {' or '.join(allowed)}")
        return topics[topic]

    def read_sorted(self, topics: Sequence[str]) -> StampOrder:
        """Read and deserialise every message of ``topics``, sorted by header stamp.

        Ties are broken by the position of the topic in ``topics`` (earlier first), then by
        receive order. Topics not in the bag are skipped (use :meth:`require` to insist).
        All selected messages are held in memory.

        Args:
            topics: topics to read, in tie-break priority order.

        Returns:
            A :class:`StampOrder`.

        Raises:
            BagError: a message cannot be read or deserialised (topic and index named).
        """
        reader = self.reader
        priority = {t: i for i, t in enumerate(topics)}
        conns = [c for c in reader.connections if c.topic in priority]
        out: list[tuple[int, int, int, BagMessage]] = []
        last: dict[str, int] = {}
        disorder = {c.topic: 0 for c in conns}
        if not conns:
            return StampOrder([], {})
        count = 0
        try:
            for conn, log_time, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                header = getattr(msg, "header", None)
                stamp = conversions.stamp_to_ns(header.stamp) if header is not None else int(log_time)
                if conn.topic in last and stamp < last[conn.topic]:
                    disorder[conn.topic] += 1
                last[conn.topic] = max(stamp, last.get(conn.topic, stamp))
                out.append((stamp, priority[conn.topic], count,
                            BagMessage(conn.topic, conn.msgtype, stamp, int(log_time), msg)))
                count += 1
        except (*_READ_ERRORS, InputError) as exc:
            raise BagError(
                f"bag {self.path} is truncated or corrupt (failed after {count} messages of "
                f"{', '.join(sorted(priority))}): {type(exc).__name__}: {exc}"
            ) from exc
        out.sort(key=lambda item: item[:3])
        return StampOrder([item[3] for item in out], disorder)

    def first_message(self, topic: str) -> BagMessage | None:
        """Return the first (receive-order) message of ``topic``, or None if the bag lacks it."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        if not conns:
            return None
        try:
            for conn, log_time, raw in self.reader.messages(connections=conns):
                msg = self.reader.deserialize(raw, conn.msgtype)
                header = getattr(msg, "header", None)
                stamp = conversions.stamp_to_ns(header.stamp) if header is not None else int(log_time)
                return BagMessage(conn.topic, conn.msgtype, stamp, int(log_time), msg)
        except (*_READ_ERRORS, InputError) as exc:
            raise BagError(f"cannot read {topic} from {self.path}: {type(exc).__name__}: {exc}") from exc
        return None


def read_sorted(path: str | Path, topics: Sequence[str], *, required: Iterable[str] = ()) -> StampOrder:
    """Open a bag, check ``required`` topics, and return ``topics`` sorted by header stamp.

    Args:
        path: bag (see :func:`resolve_bag`).
        topics: topics to read, in tie-break priority order.
        required: topics that must exist.

    Returns:
        A :class:`StampOrder`.

    Raises:
        BagError: missing path or topic, truncated or corrupt bag.
    """
    with BagReader(path) as bag:
        for topic in required:
            bag.require(topic)
        return bag.read_sorted(topics)
