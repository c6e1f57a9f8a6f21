"""Diagnostics of ``refavs_node`` without rclpy: what ``/diagnostics`` says and log throttling.

* :class:`LogThrottle`: one log line per kind of bad input per period;
* :class:`RollingStats`: mean / max of recent latencies;
* :class:`NodeStatus` and :func:`diagnose`: the content of the ``/diagnostics`` status
  (level, message, key/values), including the input rejections counted by reason.
"""


from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from refavs_ros.errors import ConfigError
from refavs_ros.node.inputs import BufferCounters

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
# Diagnostics
# --------------------------------------------------------------------------------------------

OK, WARN, ERROR, STALE = 0, 1, 2, 3
"""``diagnostic_msgs/DiagnosticStatus`` levels."""

IMAGE_TIMEOUT_SEC = 2.0
"""No image for this long (s) while active is a warning."""
AUDIO_TIMEOUT_SEC = 2.0
"""No audio for this long (s) while images arrive is a warning (silence is used)."""


@dataclass
class NodeStatus:
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
        bad_messages: input messages rejected by the pipeline (all reasons).
        rejections: rejected input messages by ``"<kind>: <reason>"``
            (:attr:`refavs_ros.node.pipeline.MessagePipeline.rejections`).
        qos_incompatible: incompatible-QoS events seen on the node's topics (a peer whose QoS
            does not match gets no data).
        time_jumps: image stamps that jumped back by 1 s or more (memory reset) since configure.
        audio_time_jumps: audio chunks stamped 1 s or more before the buffered audio (audio
            buffer restarted) since configure.
        depth_enabled: the node computes the 3-D target (``depth_enabled``).
        target_3d: status of the last processed frame's 3-D target: ``"known"`` or an
            :class:`refavs_ros.geometry.UnknownReason` value; "" before any.
        target_3d_detail: why it is unknown (numbers included), "" when known.
        target_3d_counts: processed frames by 3-D status since configure.
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
    rejections: dict[str, int] = field(default_factory=dict)
    qos_incompatible: int = 0
    time_jumps: int = 0
    audio_time_jumps: int = 0
    depth_enabled: bool = False
    target_3d: str = ""
    target_3d_detail: str = ""
    target_3d_counts: dict[str, int] = field(default_factory=dict)


SENSOR_REASONS = ("no_depth", "no_camera_info", "uncalibrated", "depth_too_old", "bad_depth_message")
"""3-D unknown reasons that point at the depth camera's topics (a warning), as opposed to the
scene (target absent, too few valid depth pixels on it)."""


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


def diagnose(state: NodeStatus, *, max_av_skew_sec: float) -> DiagnosticReport:
    """Compute the diagnostics status of the pipeline.

    Levels: ERROR when the last step failed; WARN when active and enabled but no image arrived
    for :data:`IMAGE_TIMEOUT_SEC`, or images arrive with no audio for :data:`AUDIO_TIMEOUT_SEC`,
    or the last A/V skew exceeds ``max_av_skew_sec``, or (``depth_enabled``) the last frame's
    3-D target is unknown for a reason in :data:`SENSOR_REASONS` (no / old / bad depth, no or
    uncalibrated camera info); OK otherwise (including inactive,
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
        *((f"rejected {key}", str(n)) for key, n in sorted(state.rejections.items())),
        ("incompatible QoS events", str(state.qos_incompatible)),
        ("time jumps (memory reset)", str(state.time_jumps)),
        ("audio time jumps", str(state.audio_time_jumps)),
        ("A/V skew", _fmt(state.av_skew_sec, " s", 3)),
        ("inference latency mean", _fmt(state.inference_ms.mean(), " ms")),
        ("inference latency max", _fmt(state.inference_ms.max(), " ms")),
        ("end-to-end latency mean", _fmt(state.end_to_end_ms.mean(), " ms")),
        ("end-to-end latency max", _fmt(state.end_to_end_ms.max(), " ms")),
    ]
    if state.depth_enabled:
        last = state.target_3d or "(no frame yet)"
        values.append(("3-D target", last + (f": {state.target_3d_detail}" if state.target_3d_detail else "")))
        values.extend((f"3-D target frames {key}", str(n)) for key, n in sorted(state.target_3d_counts.items()))
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
    if state.depth_enabled and state.target_3d in SENSOR_REASONS:
        problems.append(f"no 3-D target published: {state.target_3d} ({state.target_3d_detail})")
    if problems:
        return DiagnosticReport(WARN, "; ".join(problems), tuple(values))
    if not state.command:
        return DiagnosticReport(OK, "running, waiting for a command", tuple(values))
    return DiagnosticReport(OK, "running", tuple(values))


