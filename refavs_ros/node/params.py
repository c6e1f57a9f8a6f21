"""ROS-free decision logic of ``refavs_node`` (the rclpy adapter is ``refavs_ros.ros.node``).

Everything here is plain Python and numpy so it runs and is tested without ROS:

* the parameter schema (:data:`PARAMETERS`): names, types, defaults, ranges, descriptions and
  when each one is read; ``config/refavs.yaml`` mirrors it and a test keeps them in sync;
* :class:`NodeSettings`: validated parameters, turned into a
  :class:`refavs_ros.predictor.PredictorConfig` (config layering: YAML -> validated parameters
  -> frozen dataclass);
* :func:`check_parameter_change`: the policy for ``ros2 param set`` (dynamic parameters apply
  at once, configure-time parameters only while the node is unconfigured);
* :class:`QosSpec`: QoS profiles as plain data, mapped to rclpy by the adapter;
* :class:`InputBuffer`: the thread-safe, bounded hand-off from subscription callbacks to the
  inference timer: the LATEST image only (older unprocessed frames are dropped and counted),
  a bounded queue of audio chunks, the pending command (design: ros-interface.md, "Processing
  policy");
* :class:`LogThrottle`, :class:`RateMeter`, :class:`RollingStats`: log rate limiting and the
  numbers of the diagnostics;
* :func:`diagnose`: the content of the ``/diagnostics`` status (level, message, key/values).

Times: ``*_ns`` are integer nanoseconds of the ROS clock (header stamps, ``sec * 10**9 +
nanosec``); ``*_mono`` are float seconds of a monotonic wall clock (``time.monotonic``).
"""

from __future__ import annotations

import importlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from refavs_ros.errors import ConfigError
from refavs_ros.predictor import PredictorConfig

# --------------------------------------------------------------------------------------------
# Parameter schema
# --------------------------------------------------------------------------------------------

STARTUP = "startup"
"""Read once when the node is constructed (``autostart``)."""
CONFIGURE = "configure"
"""Read by the ``configure`` transition; changeable only while the node is unconfigured."""
DYNAMIC = "dynamic"
"""Applied at once, in any lifecycle state."""

MODELS = ("eemc", "official")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16")
IMAGE_TRANSPORTS = ("raw", "compressed")
AUDIO_MSG_TYPES = ("AudioStamped", "AudioDataStamped", "AudioData")
"""``AudioStamped``: mgonzs13/audio_common (typed samples, format, rate and channels in the
message). ``AudioDataStamped`` / ``AudioData``: ros-drivers/audio_common (raw PCM bytes; rate
and channels from the ``audio_sample_rate`` / ``audio_channels`` parameters; ``AudioData`` has
no header and is stamped on arrival)."""
QOS_PROFILES = ("sensor_data", "reliable", "best_effort")

ParamValue = bool | int | float | str


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter of ``refavs_node``.

    Attributes:
        name: parameter name (no namespace).
        default: default value; its Python type (bool, int, float, str) is the parameter type
            (ROS parameters are statically typed from the default).
        description: one line for ``ros2 param describe``, units included.
        stage: :data:`STARTUP`, :data:`CONFIGURE` or :data:`DYNAMIC`.
        min_value: inclusive lower bound for int/float parameters, or None.
        max_value: inclusive upper bound for int/float parameters, or None.
        choices: allowed values of a string parameter, or None for free text.
    """

    name: str
    default: ParamValue
    description: str
    stage: str
    min_value: int | float | None = None
    max_value: int | float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def type(self) -> type:
        """Python type of the parameter value (bool, int, float or str)."""
        return type(self.default)

    @property
    def read_only(self) -> bool:
        """True for parameters read only at construction (ROS descriptor ``read_only``)."""
        return self.stage == STARTUP

    def constraints_text(self) -> str:
        """Human-readable constraint line for the ROS descriptor's ``additional_constraints``."""
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.min_value is not None and self.max_value is not None:
            parts.append(f"range [{self.min_value}, {self.max_value}]")
        parts.append(
            {
                STARTUP: "read at node start",
                CONFIGURE: "read at configure; change it while unconfigured",
                DYNAMIC: "dynamic",
            }[self.stage]
        )
        return "; ".join(parts)

    def validate(self, value: Any) -> ParamValue:
        """Check a value against type, range and choices.

        Args:
            value: candidate value (an int is accepted for a float parameter).

        Returns:
            the value converted to the parameter type.

        Raises:
            ConfigError: wrong type, out of range or not one of the choices; the message names
                the parameter and what was expected.
        """
        expected = self.type
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(
                f"parameter '{self.name}' must be {expected.__name__}, got {value!r} "
                f"({type(value).__name__})"
            )
        if expected in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"parameter '{self.name}' must be finite, got {value!r}")
            if self.min_value is not None and value < self.min_value:
                raise ConfigError(f"parameter '{self.name}' = {value} is below {self.min_value}")
            if self.max_value is not None and value > self.max_value:
                raise ConfigError(f"parameter '{self.name}' = {value} is above {self.max_value}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"parameter '{self.name}' = {value!r} is not one of {', '.join(self.choices)}"
            )
        return value


PARAMETERS: tuple[ParamSpec, ...] = (
    # model / backend
    ParamSpec("model", "eemc", "model given to StreamingPredictor.from_pretrained: eemc (paper "
              "model, tiny/base profiles) or official (released EEMC checkpoint)", CONFIGURE,
              choices=MODELS),
    ParamSpec("weights_path", "", "weights file (EEMC .safetensors, or the official "
              "ckpt_best_miou.pth); empty = share/refavs_ros/models/refavs_tiny.safetensors",
              CONFIGURE),
    ParamSpec("models_dir", "", "official model: directory of its sub-models; eemc: optional "
              "directory of a non-bundled text encoder; empty = none", CONFIGURE),
    ParamSpec("engine_path", "", "directory caching exported ONNX files and TensorRT engines "
              "(built once, reused at the next start); empty = the backend default", CONFIGURE),
    ParamSpec("backend", "torch", "inference backend", CONFIGURE, choices=BACKENDS),
    ParamSpec("device", "auto", "compute device: auto (cuda when torch sees a GPU, else cpu), "
              "cpu, cuda or cuda:N", CONFIGURE),
    ParamSpec("precision", "fp16", "TensorRT engine precision", CONFIGURE, choices=PRECISIONS),
    # memory
    ParamSpec("num_frames", 10, "cached-memory window in frames (ignored when window_sec > 0)",
              DYNAMIC, 1, 1000),
    ParamSpec("frame_stride_sec", 1.0, "minimum spacing (s) of frames entering the cached memory;"
              " 0 = every inferred frame", DYNAMIC, 0.0, 60.0),
    ParamSpec("window_sec", 0.0, "cached-memory window in seconds; > 0 sets num_frames = "
              "round(window_sec / frame_stride_sec); 0 = use num_frames", DYNAMIC, 0.0, 3600.0),
    # audio
    ParamSpec("audio_msg_type", "AudioStamped", "audio message type on the audio topic "
              "(AudioStamped: mgonzs13/audio_common; AudioDataStamped, AudioData: "
              "ros-drivers/audio_common, PCM S16LE)", CONFIGURE, choices=AUDIO_MSG_TYPES),
    ParamSpec("audio_sample_rate", 16000, "sample rate (Hz) of ros-drivers AudioData(Stamped) "
              "input, which does not carry it; AudioStamped carries its own", CONFIGURE,
              1000, 384000),
    ParamSpec("audio_channels", 1, "interleaved channels of ros-drivers AudioData(Stamped) input",
              CONFIGURE, 1, 32),
    ParamSpec("max_av_skew_sec", 1.0, "audio ending more than this (s) before a frame's stamp "
              "counts as missing (silence is used)", DYNAMIC, 0.0, 10.0),
    # inference
    ParamSpec("inference_rate_hz", 0.0, "maximum inference rate (Hz, ROS clock); 0 = as fast as "
              "the model runs, always on the latest frame", DYNAMIC, 0.0, 240.0),
    ParamSpec("mask_threshold", 0.4, "probability threshold of the published mask", DYNAMIC,
              0.01, 0.99),
    ParamSpec("score_threshold", 0.5, "presence probability below which the target is reported "
              "absent (empty mask, empty detections)", DYNAMIC, 0.0, 1.0),
    ParamSpec("command_timeout_sec", 0.0, "a command expires this many seconds (ROS clock) after "
              "it was received; 0 = never", DYNAMIC, 0.0, 86400.0),
    ParamSpec("publish_debug", True, "render debug/overlay (only while it has subscribers)",
              DYNAMIC),
    # transport / QoS
    ParamSpec("image_transport", "raw", "raw: sensor_msgs/Image on 'image'; compressed: "
              "sensor_msgs/CompressedImage on 'image/compressed'", CONFIGURE,
              choices=IMAGE_TRANSPORTS),
    ParamSpec("image_qos", "sensor_data", "QoS profile of the image subscription", CONFIGURE,
              choices=QOS_PROFILES),
    ParamSpec("image_qos_depth", 1, "history depth of the image subscription", CONFIGURE, 1, 1000),
    ParamSpec("audio_qos", "sensor_data", "QoS profile of the audio subscription", CONFIGURE,
              choices=QOS_PROFILES),
    ParamSpec("audio_qos_depth", 100, "history depth of the audio subscription (chunks)",
              CONFIGURE, 1, 10000),
    ParamSpec("output_qos", "reliable", "QoS profile of mask, detections and debug/overlay",
              CONFIGURE, choices=QOS_PROFILES),
    ParamSpec("output_qos_depth", 5, "history depth of the outputs", CONFIGURE, 1, 1000),
    # lifecycle
    ParamSpec("autostart", True, "configure and activate the node at start", STARTUP),
)
"""Every parameter of ``refavs_node``. ``use_sim_time`` is declared by rclpy itself."""

_SPECS = {spec.name: spec for spec in PARAMETERS}


def param_spec(name: str) -> ParamSpec:
    """Return the :class:`ParamSpec` named ``name``.

    Raises:
        ConfigError: unknown parameter name.
    """
    try:
        return _SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown parameter '{name}'") from None


def param_defaults() -> dict[str, ParamValue]:
    """Return ``{name: default}`` for every parameter in :data:`PARAMETERS`."""
    return {spec.name: spec.default for spec in PARAMETERS}


def check_parameter_change(name: str, value: Any, *, configured: bool) -> str | None:
    """Decide whether a parameter change requested at run time is accepted.

    Args:
        name: parameter name. Names not in :data:`PARAMETERS` (e.g. ``use_sim_time``, QoS
            overrides) are not ours to judge and are accepted.
        value: requested value.
        configured: True when the node is inactive or active (a model is loaded).

    Returns:
        None when accepted, else the reason for the refusal (shown by ``ros2 param set``).
    """
    spec = _SPECS.get(name)
    if spec is None:
        return None
    if spec.stage == STARTUP:
        return f"'{name}' is read only at node start"
    if spec.stage == CONFIGURE and configured:
        return (
            f"'{name}' is read at configure: deactivate and clean up the node first, "
            "then set it and configure again"
        )
    try:
        spec.validate(value)
    except ConfigError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class QosSpec:
    """A QoS profile as plain data (the adapter maps it to ``rclpy.qos.QoSProfile``).

    Attributes:
        reliable: True = RELIABLE, False = BEST_EFFORT.
        transient_local: True = TRANSIENT_LOCAL durability, False = VOLATILE.
        depth: KEEP_LAST history depth (>= 1).
    """

    reliable: bool
    transient_local: bool
    depth: int


def qos_spec(profile: str, depth: int, *, transient_local: bool = False) -> QosSpec:
    """Map a profile name of :data:`QOS_PROFILES` and a depth to a :class:`QosSpec`.

    ``sensor_data`` and ``best_effort`` are BEST_EFFORT + VOLATILE (rclpy's
    ``qos_profile_sensor_data`` with the given depth); ``reliable`` is RELIABLE + VOLATILE.
    A best-effort subscription matches both reliable and best-effort publishers, so it is the
    safe default for sensors.

    Raises:
        ConfigError: unknown profile or depth < 1.
    """
    if profile not in QOS_PROFILES:
        raise ConfigError(f"unknown QoS profile {profile!r}; use one of {', '.join(QOS_PROFILES)}")
    if depth < 1:
        raise ConfigError(f"QoS depth must be >= 1, got {depth}")
    return QosSpec(reliable=profile == "reliable", transient_local=transient_local, depth=depth)


COMMAND_QOS = QosSpec(reliable=True, transient_local=False, depth=10)
"""``command`` subscription: reliable, volatile, depth 10 (ros-interface.md)."""
ACTIVE_COMMAND_QOS = QosSpec(reliable=True, transient_local=True, depth=1)
"""``active_command`` publication: reliable + transient local, late joiners see the command."""
DIAGNOSTICS_QOS = QosSpec(reliable=True, transient_local=False, depth=10)
"""``/diagnostics`` publication (diagnostic_aggregator subscribes with the default profile)."""


@dataclass(frozen=True)
class NodeSettings:
    """Validated parameters of ``refavs_node`` (attribute names = parameter names).

    Build it with :meth:`from_params`; see :data:`PARAMETERS` for meanings and units.
    """

    model: str
    weights_path: str
    models_dir: str
    engine_path: str
    backend: str
    device: str
    precision: str
    num_frames: int
    frame_stride_sec: float
    window_sec: float
    audio_msg_type: str
    audio_sample_rate: int
    audio_channels: int
    max_av_skew_sec: float
    inference_rate_hz: float
    mask_threshold: float
    score_threshold: float
    command_timeout_sec: float
    publish_debug: bool
    image_transport: str
    image_qos: str
    image_qos_depth: int
    audio_qos: str
    audio_qos_depth: int
    output_qos: str
    output_qos_depth: int
    autostart: bool

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> NodeSettings:
        """Validate parameter values; missing names take their defaults.

        Args:
            values: ``{name: value}``; names outside :data:`PARAMETERS` are ignored (rclpy adds
                ``use_sim_time`` and QoS overrides).

        Raises:
            ConfigError: a value of the wrong type, out of range or not an allowed choice, or
                ``window_sec > 0`` with ``frame_stride_sec == 0``.
        """
        checked = {spec.name: spec.validate(values.get(spec.name, spec.default)) for spec in PARAMETERS}
        device = checked["device"]
        if device not in ("auto", "cpu", "cuda") and not (
            device.startswith("cuda:") and device[5:].isdigit()
        ):
            raise ConfigError(f"parameter 'device' = {device!r} is not auto, cpu, cuda or cuda:N")
        if checked["model"] == "official" and not (checked["weights_path"] and checked["models_dir"]):
            raise ConfigError("model 'official' needs weights_path (ckpt_best_miou.pth) and models_dir")
        if checked["window_sec"] > 0 and checked["frame_stride_sec"] <= 0:
            raise ConfigError("window_sec > 0 needs frame_stride_sec > 0 (window = frames x stride)")
        return cls(**checked)

    @property
    def effective_num_frames(self) -> int:
        """Cached-memory window in frames: ``num_frames``, or from ``window_sec`` when > 0."""
        if self.window_sec > 0:
            return max(1, min(1000, round(self.window_sec / self.frame_stride_sec)))
        return self.num_frames

    def predictor_config(self) -> PredictorConfig:
        """The :class:`PredictorConfig` these parameters describe."""
        return PredictorConfig(
            num_frames=self.effective_num_frames,
            frame_stride_sec=self.frame_stride_sec,
            mask_threshold=self.mask_threshold,
            score_threshold=self.score_threshold,
            max_av_skew_sec=self.max_av_skew_sec,
        )

    def resolved_device(self, cuda_available: Callable[[], bool]) -> str:
        """The device string for the predictor: ``device``, with ``auto`` resolved to ``cuda``
        when ``cuda_available()`` (e.g. ``torch.cuda.is_available``) is True, else ``cpu``."""
        if self.device != "auto":
            return self.device
        return "cuda" if cuda_available() else "cpu"

    def pretrained_kwargs(self, cuda_available: Callable[[], bool]) -> dict[str, Any]:
        """Keyword arguments of ``StreamingPredictor.from_pretrained`` (all but ``weights``,
        which is :attr:`weights`) for these settings; empty paths become None."""
        return {
            "config": self.predictor_config(),
            "model": self.model,
            "backend": self.backend,
            "device": self.resolved_device(cuda_available),
            "models_dir": self.models_dir or None,
            "engine_dir": self.engine_path or None,
            "precision": self.precision,
        }

    @property
    def weights(self) -> str | None:
        """``weights_path``, or None for the shipped default weights."""
        return self.weights_path or None

    def inference_period_sec(self) -> float:
        """Period of the inference timer (s): ``1 / inference_rate_hz``, or
        :data:`POLL_PERIOD_SEC` when the rate is 0 (as fast as possible: the timer polls for a
        new frame and the step itself sets the pace)."""
        return inference_period_sec(self.inference_rate_hz)

    def image_qos_spec(self) -> QosSpec:
        """QoS of the image subscription."""
        return qos_spec(self.image_qos, self.image_qos_depth)

    def audio_qos_spec(self) -> QosSpec:
        """QoS of the audio subscription."""
        return qos_spec(self.audio_qos, self.audio_qos_depth)

    def output_qos_spec(self) -> QosSpec:
        """QoS of mask, detections and debug/overlay."""
        return qos_spec(self.output_qos, self.output_qos_depth)

    def replace(self, **changes: Any) -> NodeSettings:
        """Return validated settings with some parameters changed.

        Raises:
            ConfigError: as :meth:`from_params`.
        """
        values = {name: getattr(self, name) for name in _SPECS}
        values.update(changes)
        return NodeSettings.from_params(values)


POLL_PERIOD_SEC = 0.005
"""Inference timer period (s) when ``inference_rate_hz`` is 0: poll for a new frame at 200 Hz."""


def inference_period_sec(rate_hz: float) -> float:
    """Timer period (s) for a maximum inference rate (Hz); 0 Hz -> :data:`POLL_PERIOD_SEC`.

    Raises:
        ConfigError: negative or non-finite rate.
    """
    if not math.isfinite(rate_hz) or rate_hz < 0:
        raise ConfigError(f"inference_rate_hz must be finite and >= 0, got {rate_hz}")
    return POLL_PERIOD_SEC if rate_hz == 0 else 1.0 / rate_hz


# --------------------------------------------------------------------------------------------
# Rate limiting, rates, rolling statistics
# --------------------------------------------------------------------------------------------


class LogThrottle:
    """Rate limiter for log lines about bad input: one line per key per period.

    Args:
        period_sec: minimum time (s) between two lines of the same key (> 0).
        clock: monotonic time source in seconds (injectable for tests).
    """

    def __init__(self, period_sec: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if period_sec <= 0:
            raise ConfigError(f"period_sec must be > 0, got {period_sec}")
        self._period = period_sec
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> int | None:
        """Register one event of ``key``.

        Returns:
            None when the line must be suppressed; otherwise the number of events of this key
            suppressed since the last line (0 for the first), to append to the message.
        """
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class RateMeter:
    """Arrival rate (Hz) over a sliding time window.

    Args:
        window_sec: length of the window (s, > 0).
    """

    def __init__(self, window_sec: float = 5.0) -> None:
        if window_sec <= 0:
            raise ConfigError(f"window_sec must be > 0, got {window_sec}")
        self._window = window_sec
        self._times: deque[float] = deque()

    def tick(self, now_mono: float) -> None:
        """Record one arrival at ``now_mono`` (s, monotonic)."""
        self._times.append(now_mono)
        self._trim(now_mono)

    def rate_hz(self, now_mono: float) -> float:
        """Arrivals per second in the window ending at ``now_mono``: (n - 1) arrival intervals
        over the time from the oldest arrival to ``now_mono`` (so a stopped topic decays to 0 and
        a burst does not read as a huge rate); 0.0 with fewer than two arrivals."""
        self._trim(now_mono)
        if len(self._times) < 2:
            return 0.0
        span = max(now_mono, self._times[-1]) - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def last(self) -> float | None:
        """Time (s, monotonic) of the last arrival still in the window, or None."""
        return self._times[-1] if self._times else None

    def _trim(self, now_mono: float) -> None:
        while self._times and now_mono - self._times[0] > self._window:
            self._times.popleft()


class RollingStats:
    """Mean and maximum of the last ``size`` samples (e.g. latencies in ms)."""

    def __init__(self, size: int = 100) -> None:
        if size < 1:
            raise ConfigError(f"size must be >= 1, got {size}")
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        """Record one sample."""
        self._values.append(float(value))

    @property
    def count(self) -> int:
        """Number of samples held (<= size)."""
        return len(self._values)

    def mean(self) -> float:
        """Mean of the samples held (NaN when empty)."""
        return sum(self._values) / len(self._values) if self._values else math.nan

    def max(self) -> float:
        """Maximum of the samples held (NaN when empty)."""
        return max(self._values) if self._values else math.nan


# --------------------------------------------------------------------------------------------
# Input hand-off: callbacks -> inference timer
# --------------------------------------------------------------------------------------------

T = TypeVar("T")

TIME_JUMP_BACK_NS = 1_000_000_000
"""An image stamp this far (ns) before the last processed one is a time jump (bag loop or
restart), not a late frame: memory is reset instead of dropping the frame."""


@dataclass
class Stamped(Generic[T]):
    """An input message with its stamp.

    Attributes:
        stamp_ns: header stamp (ns), or the arrival time for unstamped messages.
        item: the message (kept unconverted; converting is the inference thread's job).
    """

    stamp_ns: int
    item: T


@dataclass
class Batch(Generic[T]):
    """What the inference timer takes from :class:`InputBuffer` in one go.

    Attributes:
        image: the newest image not yet taken, or None.
        audio: every audio chunk received since the last take, oldest first.
        command: the newest command text received since the last take (stripped), or None.
        time_jump: True when ``image`` is more than :data:`TIME_JUMP_BACK_NS` older than the
            previously taken image (the caller resets the memory).
    """

    image: Stamped[T] | None
    audio: list[Stamped[T]]
    command: str | None
    time_jump: bool = False


@dataclass(frozen=True)
class BufferCounters:
    """Counters and rates of :class:`InputBuffer` (for diagnostics).

    Attributes:
        images_received: images offered since start.
        images_dropped: images replaced by a newer one before the timer took them (expected
            when the camera is faster than the model).
        images_stale: images dropped because their stamp was not newer than the last processed
            one (out of order or duplicated).
        audio_received: audio chunks offered since start.
        audio_dropped: audio chunks dropped because the queue was full.
        image_rate_hz: image arrival rate over the rate window (Hz).
        audio_rate_hz: audio chunk arrival rate over the rate window (Hz).
        image_age_sec: seconds (monotonic) since the last image arrived, or None if none yet.
        audio_age_sec: seconds (monotonic) since the last audio chunk arrived, or None.
    """

    images_received: int
    images_dropped: int
    images_stale: int
    audio_received: int
    audio_dropped: int
    image_rate_hz: float
    audio_rate_hz: float
    image_age_sec: float | None
    audio_age_sec: float | None


class InputBuffer(Generic[T]):
    """Thread-safe bounded hand-off between subscription callbacks and the inference timer.

    Callbacks only call ``offer_*`` (O(1), no conversion, no inference). The timer calls
    :meth:`take`, which returns the LATEST image (never a queue of old frames: latency cannot
    grow when inference is slower than the camera), all queued audio chunks (bounded: the oldest
    are dropped beyond ``max_audio_chunks``) and the newest command.

    Args:
        max_audio_chunks: bound of the audio queue (chunks, >= 1).
        clock: monotonic time source (s) for rates and ages (injectable for tests).
    """

    def __init__(self, max_audio_chunks: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        if max_audio_chunks < 1:
            raise ConfigError(f"max_audio_chunks must be >= 1, got {max_audio_chunks}")
        self._clock = clock
        self._lock = threading.Lock()
        self._image: Stamped[T] | None = None
        self._audio: deque[Stamped[T]] = deque()
        self._max_audio = max_audio_chunks
        self._command: str | None = None
        self._last_taken_ns: int | None = None
        self._image_rate = RateMeter()
        self._audio_rate = RateMeter()
        self._images_received = 0
        self._images_dropped = 0
        self._images_stale = 0
        self._audio_received = 0
        self._audio_dropped = 0

    def offer_image(self, stamp_ns: int, item: T) -> None:
        """Keep ``item`` as the latest image; a still-untaken previous one is dropped."""
        now = self._clock()
        with self._lock:
            self._images_received += 1
            self._image_rate.tick(now)
            if self._image is not None:
                if stamp_ns <= self._image.stamp_ns and self._image.stamp_ns - stamp_ns < TIME_JUMP_BACK_NS:
                    self._images_stale += 1  # older than the one waiting: keep the waiting one
                    return
                self._images_dropped += 1
            self._image = Stamped(int(stamp_ns), item)

    def offer_audio(self, stamp_ns: int, item: T) -> None:
        """Queue an audio chunk (stamp of its FIRST sample); the oldest is dropped when full."""
        now = self._clock()
        with self._lock:
            self._audio_received += 1
            self._audio_rate.tick(now)
            if len(self._audio) >= self._max_audio:
                self._audio.popleft()
                self._audio_dropped += 1
            self._audio.append(Stamped(int(stamp_ns), item))

    def offer_command(self, text: str) -> None:
        """Record a command (stripped); only the newest one before a take is kept."""
        with self._lock:
            self._command = text.strip()

    def take(self) -> Batch[T]:
        """Hand everything pending to the caller and clear it.

        An image whose stamp is not newer than the last taken one is dropped as stale (counted
        in ``images_stale``) unless it is more than :data:`TIME_JUMP_BACK_NS` older, which sets
        ``time_jump``.
        """
        with self._lock:
            image, self._image = self._image, None
            audio = list(self._audio)
            self._audio.clear()
            command, self._command = self._command, None
            jump = False
            if image is not None and self._last_taken_ns is not None:
                if image.stamp_ns <= self._last_taken_ns - TIME_JUMP_BACK_NS:
                    jump = True
                elif image.stamp_ns <= self._last_taken_ns:
                    self._images_stale += 1
                    image = None
            if image is not None:
                self._last_taken_ns = image.stamp_ns
            return Batch(image=image, audio=audio, command=command, time_jump=jump)

    def clear(self) -> None:
        """Drop everything pending and forget the last taken stamp (e.g. on deactivate)."""
        with self._lock:
            self._image = None
            self._audio.clear()
            self._command = None
            self._last_taken_ns = None

    def counters(self) -> BufferCounters:
        """Snapshot of the counters, rates and ages."""
        now = self._clock()
        with self._lock:
            last_image = self._image_rate.last()
            last_audio = self._audio_rate.last()
            return BufferCounters(
                images_received=self._images_received,
                images_dropped=self._images_dropped,
                images_stale=self._images_stale,
                audio_received=self._audio_received,
                audio_dropped=self._audio_dropped,
                image_rate_hz=self._image_rate.rate_hz(now),
                audio_rate_hz=self._audio_rate.rate_hz(now),
                image_age_sec=None if last_image is None else now - last_image,
                audio_age_sec=None if last_audio is None else now - last_audio,
            )


class CommandState:
    """The referring expression in force and its expiry.

    A command is set by a non-empty text and cleared by an empty one or by
    ``command_timeout_sec`` elapsing (ROS clock) since it was received.
    """

    def __init__(self) -> None:
        self.text = ""
        self.received_ns: int | None = None

    def update(self, text: str, now_ns: int) -> bool:
        """Apply a received command (already stripped).

        Returns:
            True when the command in force changed (set to a new text or cleared); receiving the
            same text again only refreshes its timeout and returns False.
        """
        changed = text != self.text
        self.text = text
        self.received_ns = now_ns if text else None
        return changed

    def expired(self, now_ns: int, timeout_sec: float) -> bool:
        """True when a command is in force and ``timeout_sec`` > 0 has elapsed since it was
        received. A clock that jumped backwards (bag loop) restarts the timeout."""
        if not self.text or timeout_sec <= 0 or self.received_ns is None:
            return False
        if now_ns < self.received_ns:
            self.received_ns = now_ns
            return False
        return (now_ns - self.received_ns) > timeout_sec * 1e9


# --------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------

OK, WARN, ERROR, STALE = 0, 1, 2, 3
"""``diagnostic_msgs/DiagnosticStatus`` levels."""

IMAGE_TIMEOUT_SEC = 2.0
"""No image for this long (s) while active is a warning."""
AUDIO_TIMEOUT_SEC = 2.0
"""No audio for this long (s) while images arrive is a warning (silence is used)."""


@dataclass
class PipelineState:
    """Everything :func:`diagnose` looks at (filled by the node under its own lock).

    Attributes:
        lifecycle: lifecycle state label (``unconfigured``, ``inactive``, ``active``...).
        enabled: state of the ``enable`` service.
        command: command in force ("" = none).
        backend: backend name; device: device string; model: model id.
        counters: input counters, or None before activation.
        inference_ms: rolling statistics of step() wall time (ms).
        end_to_end_ms: rolling statistics of (ROS now at publish - image stamp) in ms.
        av_skew_sec: image stamp minus the end of the newest audio at the last step (s; > 0:
            audio lags the frame), or None when no audio was seen.
        last_error: last inference/publish error message, or "".
        bad_messages: input messages dropped because they could not be converted.
        qos_incompatible: incompatible-QoS events seen on the node's topics (a peer whose QoS
            does not match gets no data).
    """

    lifecycle: str
    enabled: bool = True
    command: str = ""
    backend: str = ""
    device: str = ""
    model: str = ""
    counters: BufferCounters | None = None
    inference_ms: RollingStats = field(default_factory=RollingStats)
    end_to_end_ms: RollingStats = field(default_factory=RollingStats)
    av_skew_sec: float | None = None
    last_error: str = ""
    bad_messages: int = 0
    qos_incompatible: int = 0


@dataclass(frozen=True)
class DiagnosticReport:
    """Content of one ``diagnostic_msgs/DiagnosticStatus``.

    Attributes:
        level: :data:`OK`, :data:`WARN` or :data:`ERROR`.
        message: one-line summary.
        values: ordered (key, value) string pairs.
    """

    level: int
    message: str
    values: tuple[tuple[str, str], ...]


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{unit}"


def diagnose(state: PipelineState, *, max_av_skew_sec: float) -> DiagnosticReport:
    """Compute the diagnostics status of the pipeline.

    Levels: ERROR when the last step failed; WARN when active and enabled but no image arrived
    for :data:`IMAGE_TIMEOUT_SEC`, or images arrive with no audio for :data:`AUDIO_TIMEOUT_SEC`,
    or the last A/V skew exceeds ``max_av_skew_sec``; OK otherwise (including inactive,
    disabled, or waiting for a command, which are stated in the message).

    Args:
        state: current pipeline state.
        max_av_skew_sec: the node's ``max_av_skew_sec`` parameter (s).

    Returns:
        a :class:`DiagnosticReport` with input rates, dropped frames, A/V skew, inference and
        end-to-end latency, backend and model id.
    """
    c = state.counters
    values: list[tuple[str, str]] = [
        ("lifecycle state", state.lifecycle),
        ("enabled", str(state.enabled).lower()),
        ("command", state.command or "(none)"),
        ("model", state.model),
        ("backend", state.backend),
        ("device", state.device),
        ("image rate", _fmt(c.image_rate_hz if c else None, " Hz")),
        ("audio chunk rate", _fmt(c.audio_rate_hz if c else None, " Hz")),
        ("images received", str(c.images_received if c else 0)),
        ("frames dropped (newer frame arrived)", str(c.images_dropped if c else 0)),
        ("frames dropped (stale stamp)", str(c.images_stale if c else 0)),
        ("audio chunks dropped", str(c.audio_dropped if c else 0)),
        ("bad messages dropped", str(state.bad_messages)),
        ("incompatible QoS events", str(state.qos_incompatible)),
        ("A/V skew", _fmt(state.av_skew_sec, " s", 3)),
        ("inference latency mean", _fmt(state.inference_ms.mean(), " ms")),
        ("inference latency max", _fmt(state.inference_ms.max(), " ms")),
        ("end-to-end latency mean", _fmt(state.end_to_end_ms.mean(), " ms")),
        ("end-to-end latency max", _fmt(state.end_to_end_ms.max(), " ms")),
    ]
    if state.last_error:
        values.append(("last error", state.last_error))
        return DiagnosticReport(ERROR, f"inference failed: {state.last_error}", tuple(values))
    if state.lifecycle != "active":
        return DiagnosticReport(OK, f"node is {state.lifecycle}", tuple(values))
    if not state.enabled:
        return DiagnosticReport(OK, "disabled by the enable service", tuple(values))
    problems = []
    if c is None or c.image_age_sec is None:
        problems.append("no image received yet")
    elif c.image_age_sec > IMAGE_TIMEOUT_SEC:
        problems.append(f"no image for {c.image_age_sec:.1f} s")
    elif c.audio_age_sec is None or c.audio_age_sec > AUDIO_TIMEOUT_SEC:
        problems.append("no audio: silence is used")
    elif state.av_skew_sec is not None and abs(state.av_skew_sec) > max_av_skew_sec:
        problems.append(f"A/V skew {state.av_skew_sec:.2f} s exceeds {max_av_skew_sec:.2f} s")
    if problems:
        return DiagnosticReport(WARN, "; ".join(problems), tuple(values))
    if not state.command:
        return DiagnosticReport(OK, "running, waiting for a command", tuple(values))
    return DiagnosticReport(OK, "running", tuple(values))


def overlay_caption(command: str, score: float | None, found: bool | None) -> str:
    """Caption of the debug overlay: the command and the presence score.

    Args:
        command: command in force ("" = none).
        score: presence probability in [0, 1], or None before any prediction.
        found: whether the target was reported present.
    """
    if not command:
        return "no command"
    if score is None:
        return f'"{command}"'
    return f'"{command}" score {score:.2f}' + ("" if found else " (absent)")


def stamp_to_ns(sec: int, nanosec: int) -> int:
    """ROS ``builtin_interfaces/Time`` fields to integer nanoseconds."""
    return int(sec) * 1_000_000_000 + int(nanosec)


def ns_to_stamp(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds to ROS ``(sec, nanosec)`` with ``0 <= nanosec < 10**9``."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return sec, nanosec


def import_audio_class(type_name: str) -> type:
    """Import ``audio_common_msgs.msg.<type_name>`` (done at configure time: the message package
    is a run-time choice, not a build dependency).

    Args:
        type_name: one of :data:`AUDIO_MSG_TYPES`.

    Returns:
        the rosidl message class.

    Raises:
        ConfigError: unknown type name, or the package/type cannot be imported; the message says
            which audio_common provides it.
    """
    if type_name not in AUDIO_MSG_TYPES:
        raise ConfigError(f"audio_msg_type {type_name!r} is not one of {', '.join(AUDIO_MSG_TYPES)}")
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
