"""Parameters of ``refavs_node``, without rclpy (the rclpy adapter is ``refavs_ros.ros.node``).

* the parameter schema (:data:`PARAMETERS`): names, types, defaults, ranges, descriptions and
  when each one is read; ``config/refavs.yaml`` mirrors it and a test keeps them in sync;
* :class:`NodeSettings`: validated parameters, turned into a
  :class:`refavs_ros.predictor.PredictorConfig` (config layering: YAML -> validated parameters
  -> frozen dataclass);
* :func:`check_parameter_change`: the policy for ``ros2 param set`` (dynamic parameters apply
  at once, configure-time parameters only while the node is unconfigured);
* :class:`QosSpec`: QoS profiles as plain data, mapped to rclpy by the adapter.
"""


from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from refavs_ros.errors import ConfigError
from refavs_ros.geometry import GeometryConfig
from refavs_ros.predictor import PredictorConfig
from refavs_ros.rosio.msgs import AUDIO_MSG_TYPES

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
    ParamSpec("engine_cache_dir", "", "directory caching exported ONNX files and TensorRT engines "
              "(built once, reused at the next start); empty = the backend default "
              "($REFAVS_ROS_CACHE or ~/.cache/refavs_ros)", CONFIGURE),
    ParamSpec("engine_path", "", "DEPRECATED alias of engine_cache_dir (a directory, not a "
              "file); used only when engine_cache_dir is empty, with a warning", CONFIGURE),
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
    ParamSpec("min_region_fraction", 0.002, "mask components (other than the main region) smaller "
              "than this fraction of the image are dropped as stray pixels", DYNAMIC, 0.0, 0.5),
    # depth / navigation outputs (issue 10)
    ParamSpec("depth_enabled", False, "subscribe depth/image (16UC1 mm or 32FC1 m, registered to "
              "the colour image) and depth/camera_info; publish target_point, goal_pose, "
              "detections_3d and debug/marker", CONFIGURE),
    ParamSpec("max_depth_skew_sec", 0.05, "largest |depth stamp - colour stamp| (s) paired; "
              "otherwise the 3-D target is unknown (depth_too_old)", DYNAMIC, 0.0, 5.0),
    ParamSpec("standoff_m", 0.8, "goal_pose distance (m) before the target on the camera-to-target "
              "ray, facing it", DYNAMIC, 0.0, 20.0),
    ParamSpec("min_valid_depth_pixels", 30, "fewest valid depth pixels in the target's region for a "
              "3-D point", DYNAMIC, 1, 1000000),
    ParamSpec("depth_erode_px", 2, "erosion radius (depth pixels) of the region's core used for the "
              "3-D point", DYNAMIC, 0, 50),
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
    ParamSpec("depth_qos", "sensor_data", "QoS profile of the depth/image and depth/camera_info "
              "subscriptions", CONFIGURE, choices=QOS_PROFILES),
    # in-process voice commands (issue 9; refavs_ros.node.voice)
    ParamSpec("voice_commands", False, "recognise spoken commands from the audio topic in-process "
              "(VAD + ASR); a recognised command replaces the command in force", CONFIGURE),
    ParamSpec("voice_backend", "fusion", "speech recogniser: fusion | moonshine | grammar | pocketsphinx | whisper",
              CONFIGURE, choices=("fusion", "moonshine", "grammar", "pocketsphinx", "whisper")),
    ParamSpec("voice_vocabulary_path", "", "command vocabulary YAML; empty = the shipped one", CONFIGURE),
    ParamSpec("voice_whisper_dir", "", "local Whisper model directory (voice_backend whisper)", CONFIGURE),
    ParamSpec("voice_moonshine_dir", "", "Moonshine model directory (voice_backend fusion / moonshine); empty = the "
              "one refavs-voice-models fetch installs", CONFIGURE),
    ParamSpec("voice_rescore_dir", "", "Moonshine-tiny directory (voice_backend fusion); empty = the one "
              "refavs-voice-models fetch installs", CONFIGURE),
    ParamSpec("voice_wake_phrase", "", "words a spoken command must start with; empty = none", CONFIGURE),
    ParamSpec("voice_confidence_threshold", -1.0, "minimum recogniser confidence of a voice command; "
              "negative = the backend's own (fusion 0.3, others 0.1)", CONFIGURE, -1.0, 1.0),
    ParamSpec("voice_suppression", "zero", "the command utterance in the audio memory: zero, attenuate "
              "or off (the speaker is not the sounding object)", CONFIGURE,
              choices=("zero", "attenuate", "off")),
    ParamSpec("voice_attenuation_db", 30.0, "dB removed by voice_suppression attenuate", CONFIGURE, 0.1, 120.0),
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
    engine_cache_dir: str
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
    min_region_fraction: float
    depth_enabled: bool
    max_depth_skew_sec: float
    standoff_m: float
    min_valid_depth_pixels: int
    depth_erode_px: int
    image_transport: str
    image_qos: str
    image_qos_depth: int
    audio_qos: str
    audio_qos_depth: int
    output_qos: str
    output_qos_depth: int
    depth_qos: str
    voice_commands: bool
    voice_backend: str
    voice_vocabulary_path: str
    voice_whisper_dir: str
    voice_moonshine_dir: str
    voice_rescore_dir: str
    voice_wake_phrase: str
    voice_confidence_threshold: float
    voice_suppression: str
    voice_attenuation_db: float
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
            min_region_fraction=self.min_region_fraction,
        )

    def geometry_config(self) -> GeometryConfig:
        """The :class:`refavs_ros.geometry.GeometryConfig` of the 3-D target (depth_enabled)."""
        return GeometryConfig(standoff_m=self.standoff_m, min_valid_pixels=self.min_valid_depth_pixels,
                              erode_px=self.depth_erode_px)

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
            "engine_dir": self.engine_cache_dir or self.engine_path or None,
            "precision": self.precision,
        }

    def deprecations(self) -> list[str]:
        """Warnings about deprecated parameters in use (the node logs them at configure)."""
        if self.engine_path and not self.engine_cache_dir:
            return ["parameter 'engine_path' is deprecated (it names a directory): use 'engine_cache_dir'"]
        if self.engine_path:
            return ["parameter 'engine_path' is deprecated and ignored: 'engine_cache_dir' is set"]
        return []

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
        """QoS of mask, detections and debug/overlay (and the 3-D outputs)."""
        return qos_spec(self.output_qos, self.output_qos_depth)

    def depth_qos_spec(self) -> QosSpec:
        """QoS of depth/image and depth/camera_info (depth 2: the pipeline keeps its own few)."""
        return qos_spec(self.depth_qos, 2)

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


