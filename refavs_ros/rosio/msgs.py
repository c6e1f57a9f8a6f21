"""rosbags type store with the third-party message types refavs_ros reads and writes.

rosbags ships the core ROS 2 interfaces (``std_msgs``, ``sensor_msgs``, ``geometry_msgs``) but
neither ``audio_common_msgs`` nor ``vision_msgs``. Their ``.msg`` texts are kept in the
repository's ``msg/`` folder and registered here at run time (rosbags ``get_types_from_msg`` +
``Typestore.register``), so bag tools work on machines without ROS:

* ``msg/audio_common_msgs/*.msg``: mgonzs13/audio_common 4.x (``AudioStamped`` with typed sample
  arrays and a PortAudio format code; field for field upstream's, see ``msg/README.md``), the
  audio type this project records and plays;
* ``msg/vision_msgs/*.msg``: vision_msgs 4.x (Humble, Jazzy) ``Detection2DArray``,
  ``Detection3DArray`` and their parts;
* ``msg/ros-drivers/audio_common_msgs/*.msg``: ros-drivers/audio_common ``AudioData`` (raw bytes)
  and ``AudioDataStamped``. They share the package name ``audio_common_msgs`` with the mgonzs13
  types but define ``AudioData`` differently, so they live in a separate store variant
  (``typestore("ros-drivers")``). The folder name contains a hyphen so it can never be mistaken
  for a ROS package.

Where the texts are found (first hit wins, see :func:`msg_dir`):

1. ``refavs_ros/_msg/`` next to this module: a wheel or ``pip install .`` maps the repository's
   ``msg/`` folder into the package as package data (``setup.py``: ``package_dir``);
2. ``<repository>/msg/``: a source checkout or an editable install, where this module still lives
   in the repository's ``refavs_ros/`` folder.

One copy of each text exists in git; nothing is duplicated. colcon installs the same folder to
``share/refavs_ros/msg`` for ROS users. The ``refavs_ros`` package generates no interface from
these texts (it is ``ament_python``; see ros2/rosidl_python#141): the real ``audio_common_msgs`` /
``vision_msgs`` packages provide the ROS-side classes, or, without a ROS installation,
``scripts/ros/interfaces.py`` builds them from the same texts into the virtual environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore

from refavs_ros.errors import ConfigError

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

AUDIO_MGONZS13 = "mgonzs13"
"""Store variant with mgonzs13/audio_common ``audio_common_msgs`` (default)."""
AUDIO_ROS_DRIVERS = "ros-drivers"
"""Store variant with ros-drivers/audio_common ``audio_common_msgs`` (PCM bytes)."""
AUDIO_VARIANTS = (AUDIO_MGONZS13, AUDIO_ROS_DRIVERS)

AUDIO_MSG_TYPES = ("AudioStamped", "AudioDataStamped", "AudioData")
"""``AudioStamped``: mgonzs13/audio_common (typed samples, format, rate and channels in the
message). ``AudioDataStamped`` / ``AudioData``: ros-drivers/audio_common (raw PCM bytes; rate
and channels from the ``audio_sample_rate`` / ``audio_channels`` parameters; ``AudioData`` has
no header and is stamped on arrival)."""

ROS_STORE = Stores.ROS2_JAZZY
"""Base rosbags store. Humble and Jazzy share every type used here field for field."""

# Type names (rosbags spelling, ``pkg/msg/Name``).
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
HEADER = "std_msgs/msg/Header"
TIME = "builtin_interfaces/msg/Time"
AUDIO_STAMPED = "audio_common_msgs/msg/AudioStamped"
AUDIO = "audio_common_msgs/msg/Audio"
AUDIO_DATA = "audio_common_msgs/msg/AudioData"
AUDIO_INFO = "audio_common_msgs/msg/AudioInfo"
AUDIO_DATA_STAMPED = "audio_common_msgs/msg/AudioDataStamped"
DETECTION2D_ARRAY = "vision_msgs/msg/Detection2DArray"
DETECTION2D = "vision_msgs/msg/Detection2D"
OBJECT_HYPOTHESIS_WITH_POSE = "vision_msgs/msg/ObjectHypothesisWithPose"
OBJECT_HYPOTHESIS = "vision_msgs/msg/ObjectHypothesis"
BOUNDING_BOX2D = "vision_msgs/msg/BoundingBox2D"
POSE2D = "vision_msgs/msg/Pose2D"
POINT2D = "vision_msgs/msg/Point2D"
DETECTION3D_ARRAY = "vision_msgs/msg/Detection3DArray"
DETECTION3D = "vision_msgs/msg/Detection3D"
BOUNDING_BOX3D = "vision_msgs/msg/BoundingBox3D"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_STAMPED = "geometry_msgs/msg/PointStamped"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
MARKER = "visualization_msgs/msg/Marker"

# PortAudio sample formats used by mgonzs13 AudioInfo.format (portaudio.h paFloat32 ...).
# Upstream AudioData has no array for paInt24; conversions reads it from uint8_data (packed).
PA_FLOAT32 = 1
PA_INT32 = 2
PA_INT24 = 4
PA_INT16 = 8
PA_INT8 = 16
PA_UINT8 = 32

# Sub-folders of msg/ registered per variant: (folder relative to msg/, ROS package name).
_COMMON_FOLDERS = (("vision_msgs", "vision_msgs"),)
_VARIANT_FOLDERS = {
    AUDIO_MGONZS13: (("audio_common_msgs", "audio_common_msgs"),),
    AUDIO_ROS_DRIVERS: (("ros-drivers/audio_common_msgs", "audio_common_msgs"),),
}
_SENTINEL = Path("audio_common_msgs") / "AudioStamped.msg"


def msg_dir() -> Path:
    """Return the folder that holds the ``.msg`` texts (see the module docstring for the order).

    Returns:
        Absolute path of the folder containing ``audio_common_msgs/``, ``vision_msgs/`` and
        ``ros-drivers/``.

    Raises:
        ConfigError: neither the packaged copy nor the repository folder exists (a broken
            install); the message lists the places searched.
    """
    package = Path(__file__).resolve().parent.parent  # refavs_ros/
    candidates = (package / "_msg", package.parent / "msg")
    for candidate in candidates:
        if (candidate / _SENTINEL).is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"message definitions (.msg texts) not found; searched: {searched}")


def msg_definitions(audio_variant: str = AUDIO_MGONZS13) -> dict[str, str]:
    """Read the ``.msg`` texts registered for one store variant.

    Args:
        audio_variant: ``"mgonzs13"`` (default) or ``"ros-drivers"``: which
            ``audio_common_msgs`` definitions to use.

    Returns:
        Mapping of rosbags type name (``pkg/msg/Name``) to the ``.msg`` text, sorted by name.

    Raises:
        ConfigError: unknown variant, or the texts are missing.
    """
    if audio_variant not in _VARIANT_FOLDERS:
        raise ConfigError(
            f"unknown audio_common_msgs variant {audio_variant!r}; expected one of {AUDIO_VARIANTS}"
        )
    root = msg_dir()
    texts: dict[str, str] = {}
    for folder, package in _COMMON_FOLDERS + _VARIANT_FOLDERS[audio_variant]:
        files = sorted((root / folder).glob("*.msg"))
        if not files:
            raise ConfigError(f"no .msg files in {root / folder}")
        for path in files:
            texts[f"{package}/msg/{path.stem}"] = path.read_text(encoding="utf-8")
    return dict(sorted(texts.items()))


@lru_cache(maxsize=None)
def typestore(audio_variant: str = AUDIO_MGONZS13) -> Typestore:
    """Return the (cached) rosbags type store used by every bag tool and conversion.

    The store is rosbags' ROS 2 Jazzy store plus ``vision_msgs`` 4.x and one of the two
    ``audio_common_msgs`` flavours, registered from the ``.msg`` texts in ``msg/``. The same
    object is returned for the same variant; treat it as read-only.

    Args:
        audio_variant: ``"mgonzs13"`` (default; ``AudioStamped``/``Audio``/``AudioData``/
            ``AudioInfo``) or ``"ros-drivers"`` (``AudioData`` = ``uint8[] data``,
            ``AudioDataStamped``, ``AudioInfo``).

    Returns:
        A ``rosbags.typesys.store.Typestore``; message classes are in ``store.types[name]``.

    Raises:
        ConfigError: unknown variant, missing texts, or a text rosbags cannot parse/register
            (the type is named).
    """
    store = get_typestore(ROS_STORE)
    types = {}
    for name, text in msg_definitions(audio_variant).items():
        try:
            types.update(get_types_from_msg(text, name))
        except (TypesysError, ValueError) as exc:
            raise ConfigError(f"cannot parse message definition {name}: {exc}") from exc
    try:
        store.register(types)
    except (TypesysError, ValueError) as exc:
        raise ConfigError(f"cannot register message types {sorted(types)}: {exc}") from exc
    return store


def message_class(name: str, audio_variant: str = AUDIO_MGONZS13) -> type:
    """Return the rosbags message class of a type name, e.g. ``message_class(IMAGE)``.

    Args:
        name: rosbags type name ``pkg/msg/Name`` (``pkg/Name`` is accepted too).
        audio_variant: store variant, see :func:`typestore`.

    Returns:
        The dataclass rosbags generated for the type (fields as in the ``.msg`` text).

    Raises:
        ConfigError: the type is not in the store.
    """
    store = typestore(audio_variant)
    key = name if "/msg/" in name else name.replace("/", "/msg/", 1)
    try:
        return store.types[key]
    except KeyError:
        raise ConfigError(f"message type {name!r} is not in the {audio_variant} type store") from None
