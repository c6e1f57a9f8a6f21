"""Microphone capture core of ``audio_capture_node`` (ROS-free; sounddevice / PortAudio).

The node (``refavs_ros.ros.audio_capture_node``) only turns the chunks produced here into
``audio_common_msgs/AudioStamped`` messages. This module owns:

* loading sounddevice with a clear error when the PortAudio library is missing
  (:func:`load_sounddevice`);
* choosing the input device with a clear error when none exists (:func:`select_input_device`);
* float -> int16 conversion (:func:`to_int16`);
* the stamp of a chunk's FIRST sample on the ROS clock (:func:`first_sample_stamp_ns`);
* re-chunking arbitrary PortAudio blocks into fixed-size chunks (:class:`Rechunker`);
* :class:`MicrophoneCapture`: an ``sounddevice.InputStream`` whose callback stamps blocks and
  queues fixed-size int16 chunks for the node to publish.

Stamp: PortAudio calls the stream callback with ``time.inputBufferAdcTime`` (ADC capture time
of the first sample of the block) and ``time.currentTime`` (time of the call), both on the
stream clock (sounddevice ``InputStream`` docs; PortAudio ``PaStreamCallbackTimeInfo``). The
age of the first sample is ``currentTime - inputBufferAdcTime``, so its ROS-clock stamp is
``ros_now - age`` with ``ros_now`` read in the same callback. Some host APIs report 0 (ALSA
devices without timestamps); then the age is estimated as the block duration plus the stream's
input latency (``stream.latency``): the callback runs once the last sample of the block is
captured, and the driver adds its buffering latency on top. Either way the stamp is of the FIRST
sample, as ``audio_common_msgs`` consumers of this project (``StreamingPredictor.push_audio``)
expect, never the publish time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from refavs_ros.errors import BackendUnavailableError, ConfigError

PA_INT16 = 8
"""PortAudio ``paInt16`` code used in mgonzs13 ``AudioInfo.format``."""

MAX_ADC_AGE_SEC = 2.0
"""Ages (s) beyond block duration + this are implausible: the fallback estimate is used."""


def load_sounddevice() -> Any:
    """Import sounddevice.

    Returns:
        the ``sounddevice`` module.

    Raises:
        BackendUnavailableError: sounddevice is not installed, or the PortAudio shared library
            is missing (install ``libportaudio2`` on Debian/Ubuntu/JetPack).
    """
    try:
        import sounddevice  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError as exc:
        raise BackendUnavailableError(
            "the microphone node needs the Python package 'sounddevice' (pip install sounddevice)"
        ) from exc
    except OSError as exc:  # sounddevice raises OSError('PortAudio library not found')
        raise BackendUnavailableError(
            f"PortAudio is not available ({exc}); install it with 'sudo apt install libportaudio2'"
        ) from exc
    return sounddevice


def select_input_device(
    devices: Sequence[Mapping[str, Any]], requested: str, default_index: int | None
) -> int:
    """Pick the PortAudio input device.

    Args:
        devices: ``sounddevice.query_devices()`` entries (dicts with ``name`` and
            ``max_input_channels``), indexed by device id.
        requested: "" = the default input device (or the first device with inputs); a decimal
            index ("2"); or a case-insensitive substring of the device name ("USB").
        default_index: PortAudio's default input device id (``sounddevice.default.device[0]``),
            or None / negative when there is none.

    Returns:
        the device id.

    Raises:
        BackendUnavailableError: no device has input channels ("no audio input device"), or the
            requested one does not exist or has no inputs; the message lists the input devices.
    """
    inputs = [i for i, d in enumerate(devices) if int(d.get("max_input_channels", 0)) > 0]
    listing = ", ".join(f"{i}: {devices[i].get('name', '?')}" for i in inputs) or "none"
    if not inputs:
        raise BackendUnavailableError(
            f"no audio input device found (PortAudio lists {len(devices)} device(s), none with "
            "input channels); connect a microphone or check ALSA/PulseAudio permissions"
        )
    text = requested.strip()
    if not text:
        if default_index is not None and default_index in inputs:
            return default_index
        return inputs[0]
    if text.lstrip("-").isdigit():
        index = int(text)
        if index in inputs:
            return index
        raise BackendUnavailableError(f"audio device {index} is not an input device; inputs: {listing}")
    matches = [i for i in inputs if text.lower() in str(devices[i].get("name", "")).lower()]
    if not matches:
        raise BackendUnavailableError(f"no audio input device matches '{text}'; inputs: {listing}")
    return matches[0]


def to_int16(block: np.ndarray) -> np.ndarray:
    """Convert PCM samples to int16.

    Args:
        block: (N,) or (N, C) int16 (returned as is, copied) or float in [-1, 1] (scaled by
            32767, rounded, clipped to [-32768, 32767]).

    Returns:
        int16 array of the same shape (a copy: PortAudio reuses its buffer).

    Raises:
        ConfigError: any other dtype.
    """
    arr = np.asarray(block)
    if arr.dtype == np.int16:
        return arr.copy()
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.rint(arr * 32767.0), -32768, 32767).astype(np.int16)
    raise ConfigError(f"cannot convert {arr.dtype} samples to int16")


def first_sample_stamp_ns(
    ros_now_ns: int,
    frames: int,
    sample_rate: int,
    adc_time: float,
    current_time: float,
    input_latency_sec: float,
) -> int:
    """ROS-clock stamp (ns) of the first sample of a captured block.

    Args:
        ros_now_ns: ROS clock read inside the stream callback (ns).
        frames: frames (samples per channel) in the block.
        sample_rate: Hz.
        adc_time: ``time.inputBufferAdcTime`` (s, stream clock); 0 when the host API lacks it.
        current_time: ``time.currentTime`` (s, stream clock).
        input_latency_sec: ``stream.latency`` for input (s, >= 0).

    Returns:
        ``ros_now_ns - age`` where age = ``current_time - adc_time`` when that is plausible
        (0 <= age <= block duration + :data:`MAX_ADC_AGE_SEC`), else block duration + input
        latency.
    """
    duration = frames / float(sample_rate)
    age = current_time - adc_time
    if not (adc_time > 0 and 0.0 <= age <= duration + MAX_ADC_AGE_SEC):
        age = duration + max(0.0, input_latency_sec)
    return int(ros_now_ns - round(age * 1e9))


class Rechunker:
    """Split stamped blocks of any size into fixed-size chunks with per-chunk stamps.

    Args:
        chunk: frames per output chunk (>= 1).
        sample_rate: Hz (> 0).

    The stamp of each chunk is that of its first frame: the block stamp plus the frame offset
    divided by the rate. Frames left over wait for the next block; a gap in stamps larger than
    one frame (an overflow dropped input) discards the leftover so stamps stay exact.
    """

    def __init__(self, chunk: int, sample_rate: int) -> None:
        if chunk < 1 or sample_rate <= 0:
            raise ConfigError(f"chunk must be >= 1 and sample_rate > 0, got {chunk}, {sample_rate}")
        self.chunk = chunk
        self.rate = sample_rate
        self._pending: np.ndarray | None = None
        self._pending_stamp_ns = 0

    def push(self, block: np.ndarray, stamp_ns: int) -> list[tuple[int, np.ndarray]]:
        """Add a block (frames first: (N,) or (N, C)) whose first frame has ``stamp_ns``.

        Returns:
            the completed chunks as ``(stamp_ns, samples)`` with ``samples.shape[0] == chunk``.
        """
        frame_ns = 1e9 / self.rate
        if self._pending is not None and len(self._pending):
            expected = self._pending_stamp_ns + round(len(self._pending) * frame_ns)
            if abs(stamp_ns - expected) > frame_ns or self._pending.shape[1:] != block.shape[1:]:
                self._pending = None  # discontinuity: drop the partial chunk
        if self._pending is None or not len(self._pending):
            data, start_ns = block, stamp_ns
        else:
            data, start_ns = np.concatenate([self._pending, block]), self._pending_stamp_ns
        out = []
        n_full = len(data) // self.chunk
        for k in range(n_full):
            out.append((start_ns + round(k * self.chunk * frame_ns), data[k * self.chunk:(k + 1) * self.chunk]))
        rest = data[n_full * self.chunk:]
        self._pending = rest.copy() if len(rest) else None
        self._pending_stamp_ns = start_ns + round(n_full * self.chunk * frame_ns)
        return out


def _default_input(sd: Any) -> int | None:
    """PortAudio's default input device id (``sd.default.device[0]``), or None if unset."""
    default = sd.default.device
    try:
        value = default[0]
    except (TypeError, IndexError, KeyError):
        value = default
    try:
        index = int(value)
    except (TypeError, ValueError):
        return None
    return index if index >= 0 else None


class MicrophoneCapture:
    """PortAudio input stream producing stamped fixed-size int16 chunks.

    Args:
        sd: the sounddevice module (:func:`load_sounddevice`; injectable for tests).
        device: see :func:`select_input_device`.
        sample_rate: Hz (8000..192000).
        channels: interleaved channels (1..32).
        chunk: frames per published chunk (>= 16; 512 = 32 ms at 16 kHz, the audio_common
            default).
        ros_now_ns: callable returning the ROS clock (ns); called in the PortAudio thread.
        max_queued_chunks: bound of the queue between PortAudio and the node (oldest dropped).

    Raises:
        ConfigError: parameters out of range.
        BackendUnavailableError: no input device / device not found (at :meth:`start`), or the
            device rejects the settings (PortAudio error text included).
    """

    def __init__(
        self,
        sd: Any,
        *,
        device: str,
        sample_rate: int,
        channels: int,
        chunk: int,
        ros_now_ns: Callable[[], int],
        max_queued_chunks: int = 256,
    ) -> None:
        if not 8000 <= sample_rate <= 192000:
            raise ConfigError(f"rate must be 8000..192000 Hz, got {sample_rate}")
        if not 1 <= channels <= 32:
            raise ConfigError(f"channels must be 1..32, got {channels}")
        if chunk < 16:
            raise ConfigError(f"chunk must be >= 16 frames, got {chunk}")
        self._sd = sd
        self.device_request = device
        self.rate = sample_rate
        self.channels = channels
        self.chunk = chunk
        self._now = ros_now_ns
        self._queue: queue.Queue[tuple[int, np.ndarray]] = queue.Queue(maxsize=max_queued_chunks)
        self._rechunker = Rechunker(chunk, sample_rate)
        self._stream: Any = None
        self._lock = threading.Lock()
        self.device_index: int | None = None
        self.device_name = ""
        self.overflows = 0
        self.dropped_chunks = 0

    def start(self) -> None:
        """Open the device and start capturing.

        Raises:
            BackendUnavailableError: as described in the class docstring.
        """
        sd = self._sd
        try:
            devices = list(sd.query_devices())
        except sd.PortAudioError as exc:
            raise BackendUnavailableError(f"PortAudio cannot list audio devices: {exc}") from exc
        index = select_input_device(devices, self.device_request, _default_input(sd))
        self.device_index = index
        self.device_name = str(devices[index].get("name", ""))
        try:
            self._stream = sd.InputStream(
                samplerate=self.rate,
                blocksize=self.chunk,
                device=index,
                channels=self.channels,
                dtype="int16",
                callback=self._callback,
            )
            self._stream.start()
        except sd.PortAudioError as exc:
            raise BackendUnavailableError(
                f"audio device {index} ({self.device_name}) rejected {self.rate} Hz, "
                f"{self.channels} channel(s), int16: {exc}"
            ) from exc

    def stop(self) -> None:
        """Stop and close the stream (idempotent)."""
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()

    def get(self, timeout: float | None = None) -> tuple[int, np.ndarray] | None:
        """Next chunk as ``(stamp_ns of its first frame, int16 (chunk, channels))``, or None
        after ``timeout`` seconds without one (``timeout=0``: do not wait)."""
        try:
            return self._queue.get(block=timeout is None or timeout > 0, timeout=timeout or None)
        except queue.Empty:
            return None

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio callback (PortAudio thread): stamp, convert, re-chunk, queue."""
        now_ns = self._now()
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        latency = self._stream.latency if self._stream is not None else 0.0
        if isinstance(latency, (tuple, list)):
            latency = latency[0]
        stamp = first_sample_stamp_ns(
            now_ns, frames, self.rate, float(time_info.inputBufferAdcTime),
            float(time_info.currentTime), float(latency or 0.0),
        )
        for chunk_stamp, samples in self._rechunker.push(to_int16(indata), stamp):
            try:
                self._queue.put_nowait((chunk_stamp, samples))
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped_chunks += 1
                except queue.Empty:
                    pass
                self._queue.put_nowait((chunk_stamp, samples))
