"""Input hand-off of ``refavs_node``: subscription callbacks -> inference timer (no rclpy).

:class:`InputBuffer` is the thread-safe, bounded hand-off: the LATEST image only (an untaken
image replaced by a newer one is dropped and counted), a bounded queue of audio chunks and the
newest command (design: ros-interface.md, "Processing policy"). What happens to the taken
messages (decoding, the stale-stamp and time-jump policy, stepping) is the pipeline's
(:mod:`refavs_ros.node.pipeline`), shared with ``refavs-replay``. :class:`CommandState` holds
the command in force and its expiry; :class:`RateMeter` the arrival rates.

Times: ``*_ns`` are integer nanoseconds of the ROS clock (header stamps, ``sec * 10**9 +
nanosec``); ``*_mono`` are float seconds of a monotonic wall clock (``time.monotonic``).
"""


from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from refavs_ros.errors import ConfigError


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



# --------------------------------------------------------------------------------------------
# Input hand-off: callbacks -> inference timer
# --------------------------------------------------------------------------------------------

T = TypeVar("T")

TIME_JUMP_BACK_NS = 1_000_000_000
"""An image stamp this far (ns) or more before the newest one is a time jump (a bag played in a
loop, a restarted driver), not a late frame: the pipeline resets the memory instead of dropping
the frame (:mod:`refavs_ros.node.pipeline`)."""


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
        command: the newest command text received since the last take (as received), or None.
    """

    image: Stamped[T] | None
    audio: list[Stamped[T]]
    command: str | None


@dataclass(frozen=True)
class BufferCounters:
    """Counters and rates of :class:`InputBuffer` (for diagnostics).

    Attributes:
        images_received: images offered since start.
        images_dropped: images replaced by a newer one before the timer took them (expected
            when the camera is faster than the model).
        images_stale: images dropped on arrival because an untaken image with a newer stamp
            was waiting (out of order, e.g. two publishers on one topic); the pipeline counts
            the stale stamps it rejects itself.
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
    are dropped beyond ``max_audio_chunks``) and the newest command. "Latest" is by header
    stamp: an image older than the one waiting is dropped (``images_stale``) unless it is a time
    jump (:data:`TIME_JUMP_BACK_NS` or more older), which replaces it.

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
        """Record a command as received; only the newest one before a take is kept."""
        with self._lock:
            self._command = text

    def take(self) -> Batch[T]:
        """Hand everything pending to the caller and clear it (the stamp policy is the
        pipeline's: :meth:`refavs_ros.node.pipeline.MessagePipeline.handle_image`)."""
        with self._lock:
            image, self._image = self._image, None
            audio = list(self._audio)
            self._audio.clear()
            command, self._command = self._command, None
            return Batch(image=image, audio=audio, command=command)

    def clear(self) -> None:
        """Drop everything pending and forget the last taken stamp (e.g. on deactivate)."""
        with self._lock:
            self._image = None
            self._audio.clear()
            self._command = None

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
        """Apply the command now in force (the predictor's stripped text; "" = none).

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


