"""Streaming Ref-AVS predictor: the ROS-free core that the node and the bag tools share.

Usage::

    predictor = StreamingPredictor.from_pretrained()          # shipped tiny model
    predictor.set_command("the dog that is barking")       # cheap per-command call
    predictor.push_audio(stamp_ns, samples, sample_rate)    # cheap: appends to a ring buffer
    predictor.push_image(stamp_ns, image_rgb_uint8)         # cheap: keeps the latest frame
    result = predictor.step()                               # expensive per-frame call
    predictor.reset_memory()

* ``stamp_ns``: int nanoseconds (ROS ``header.stamp`` as ``sec * 10**9 + nanosec``); for audio
  the stamp of the chunk's FIRST sample.
* ``image``: numpy uint8 (H, W, 3) RGB, any size (``refavs_ros.rosio.conversions`` gets it from a
  ``sensor_msgs/Image``).
* ``samples``: numpy (N,) or (N, C), int16/int32/uint8/float32, any rate; resampled to 16 kHz
  mono on push.
* ``step()`` returns a :class:`Prediction` for the NEWEST pushed image, or ``None`` when no new
  image arrived since the last step or no command is set. Frames pushed between two steps are
  skipped (never queued), so latency does not grow when the camera is faster than the model.

Audio-visual alignment is by header stamps: the audio example of a frame is the 0.975 s
(one VGGish example) of 16 kHz audio ending at the frame's stamp, or at the end of the buffered
audio when the audio lags by at most ``max_av_skew_sec``; further behind, the frame gets
silence and ``Prediction.audio_ok`` is False. A frame enters the cached memory when at least
``frame_stride_sec`` passed since the last frame that entered it (paper: 1 frame per second).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from refavs_ros import audio
from refavs_ros.engines.base import StreamEngine
from refavs_ros.errors import ConfigError, InputError
from refavs_ros.geometry import main_region
from refavs_ros.models.text import check_command


@dataclass(frozen=True)
class PredictorConfig:
    """Run-time settings of :class:`StreamingPredictor` (all dynamic in the node).

    Attributes:
        num_frames: cached-memory window, number of memory entries (frames), 1..1000.
        frame_stride_sec: minimum spacing (s) between two frames that enter the cached memory;
            0 = every stepped frame enters it. Paper: frames sampled at 1 s.
        mask_threshold: probability threshold in (0, 1) for the published binary mask.
        score_threshold: presence probability in [0, 1] below which the target is reported
            absent (null reference) and the mask is empty.
        max_av_skew_sec: audio is considered missing for a frame when the audio buffer ends
            more than this many seconds before the frame stamp (s, >= 0); missing audio is
            silence.
        beta: cached-memory sensitivity override (paper Eq. 2); None = the model's value;
            for EEMC 0 disables the cached memory (ablation); the official engine keeps the
            released formula ``(1 + beta) x - mean``, so 0 there leaves ``x - mean``.
        zero_audio: feed silence instead of the audio (ablation).
        min_region_fraction: connected components of the mask (at network resolution) other
            than the main region that cover less than this fraction of the image are dropped
            from ``mask`` (stray pixels), in [0, 1); 0 keeps every component. The main region
            (most target probability) is always kept. At the shipped model's 32 x 32 mask
            grid the default 0.002 drops components of 1-2 cells.
    """

    num_frames: int = 10
    frame_stride_sec: float = 1.0
    mask_threshold: float = 0.4
    score_threshold: float = 0.5
    max_av_skew_sec: float = 1.0
    beta: float | None = None
    zero_audio: bool = False
    min_region_fraction: float = 0.002


@dataclass
class Prediction:
    """Result of :meth:`StreamingPredictor.step` for one image.

    Post-processing runs at the network's mask resolution (``engine.mask_size``, 32 x 32 for
    the shipped model) and touches source-size pixels only where needed (issue 10), so its
    cost hardly grows with the camera resolution:

    1. ``logits > logit(mask_threshold)`` on the network grid, 8-connected components
       (``cv2.connectedComponentsWithStats``); the main region is the component with the largest
       sum of probability (:func:`refavs_ros.geometry.main_region`); other components below
       ``min_region_fraction`` of the image are dropped: their cells' logits are lowered to
       ``min(min(logits), logit(mask_threshold))`` (two 8-connected components never share a
       2 x 2 bilinear neighbourhood, so this removes exactly them).
    2. ``mask`` = bilinear upsampling of those logits to the source size (``cv2.resize``,
       ``INTER_LINEAR``, pixel centres aligned) thresholded at ``logit(mask_threshold)``, i.e.
       ``probability > mask_threshold`` without a per-pixel sigmoid. It is computed only in the
       source window that the kept cells' 2 x 2 neighbourhoods reach (elsewhere every blended
       cell is below the threshold), so a small target at 1920 x 1080 costs a crop, not 2 M
       pixels (:func:`_window_mask`, equal to the full upsampling up to float rounding).
    3. ``bbox`` from the main region's window of the source grid.

    Attributes:
        stamp_ns: stamp (ns) of the image the result belongs to.
        mask: bool (H, W) at the SOURCE image size: the main region and every other component
            of at least ``min_region_fraction`` of the image; all False when ``found`` is False.
        score: presence probability of the referred object, [0, 1].
        found: ``score >= score_threshold`` and the mask is non-empty.
        bbox: (x_min, y_min, x_max, y_max), inclusive source pixels, of the MAIN region (the
            component holding the most target probability), or None when not found. Stray
            components do not stretch it (before issue 10 it spanned every mask pixel; that box
            is :attr:`unfiltered_bbox`).
        command: the command text in force.
        timings_ms: wall time per stage in ms (keys ``visual``, ``audio``, ``fusion``,
            ``decode``, ``total``).
        audio_ok: False when the audio lagged the frame by more than ``max_av_skew_sec`` (or
            none was pushed yet) and silence was used.
        region_score: detection confidence of the main region in [0, 1]: ``score`` times the
            mean probability over the region's cells (Mask2Former's mask score); 0 when absent.
        regions: connected components of the network-resolution mask (0 when absent).
        dropped_regions: components dropped as strays.
        logits: float32 (h, w) network-resolution mask logits after the component filter
            (dropped components lowered), or None when absent.

    Computed on first access (cached; they cost full-resolution work):
        probability: float32 (H, W) in [0, 1], per-pixel target probability at source size
            (sigmoid of the upsampled, component-filtered logits), multiplied by ``found`` (all
            zero when absent). ``probability > mask_threshold`` is ``mask``. Metrics use it.
        region_mask: bool (H, W), the main region alone (what the 3-D target is computed from).
        unfiltered_bbox: the box of every above-threshold pixel before the component filter.
    """

    stamp_ns: int
    mask: np.ndarray
    score: float
    found: bool
    bbox: tuple[int, int, int, int] | None
    command: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    audio_ok: bool = True
    region_score: float = 0.0
    regions: int = 0
    dropped_regions: int = 0
    logits: np.ndarray | None = field(default=None, repr=False)
    _decoded: _Decoded | None = field(default=None, repr=False, compare=False)

    @cached_property
    def probability(self) -> np.ndarray:
        """float32 (H, W) per-pixel target probability at source size (see the class doc)."""
        h, w = self.mask.shape
        if not self.found or self.logits is None:
            return np.zeros((h, w), np.float32)
        return _sigmoid(_upsample(self.logits, w, h))

    @cached_property
    def region_mask(self) -> np.ndarray:
        """bool (H, W), the main region only (equals ``mask`` when no other component is kept)."""
        d = self._decoded
        if d is None or d.main_logits is None:
            return self.mask
        h, w = self.mask.shape
        return _window_mask(d.main_logits, d.main_logits > d.threshold_logit, w, h, d.threshold_logit)

    @cached_property
    def unfiltered_bbox(self) -> tuple[int, int, int, int] | None:
        """Inclusive pixel box of every above-threshold pixel before the component filter, or None."""
        d = self._decoded
        if not self.found or d is None:
            return None
        h, w = self.mask.shape
        return mask_bbox(_upsample(d.raw_logits, w, h) > d.threshold_logit)


class AudioRing:
    """16 kHz mono ring buffer placed on the header-stamp time line.

    Sample ``i`` (absolute index since the first push) has time ``origin_ns + i * 62500`` ns.
    Where a chunk goes, by its stamp's index ``pos`` and the buffer end:

    * ``pos`` up to ``tolerance_sec`` AFTER the end: appended contiguously (stamp jitter);
    * later: the gap is filled with silence (dropped packets);
    * up to ``tolerance_sec`` BEFORE the end: placed at ``pos``, replacing the buffer's last
      ``end - pos`` samples. Resampled chunks are up to one sample longer than their duration
      (``ceil``), so appending them contiguously would carry the end ahead of the stamps (44.1 kHz
      in 1024-frame chunks: 0.48 sample per chunk, past a 20 ms tolerance after 15 s, and every
      ~20 s from then on a chunk was dropped as out of order);
    * between ``tolerance_sec`` and :attr:`jump_back_sec` before the end: rejected (out of order,
      overlapping);
    * :attr:`jump_back_sec` or more before the end: an audio time jump (a bag played in a loop, a
      restarted driver, or one chunk stamped far in the future before): the buffer restarts at
      this chunk (:attr:`jumps` counts them). Rejecting it instead would drop every later chunk
      until the stamps caught up with the wrong end again.

    Args:
        capacity_sec: seconds kept (older samples are discarded), > 1.
        tolerance_sec: jitter accepted between a chunk's stamp and the buffer end (s).
        jump_back_sec: a chunk starting this far (s) or more before the buffer end restarts the
            buffer (the image side's time-jump threshold, 1 s).
    """

    NS_PER_SAMPLE = 1_000_000_000 // audio.SAMPLE_RATE  # 62500 ns at 16 kHz

    def __init__(self, capacity_sec: float = 30.0, tolerance_sec: float = 0.02, jump_back_sec: float = 1.0) -> None:
        self.capacity = int(capacity_sec * audio.SAMPLE_RATE)
        self.tolerance = int(tolerance_sec * audio.SAMPLE_RATE)
        self.jump_back_sec = float(jump_back_sec)
        self.jumps = 0
        """Audio time jumps (chunks >= jump_back_sec before the end) since construction."""
        self.clear()

    def clear(self) -> None:
        """Forget all audio (the next push sets a new origin)."""
        self.origin_ns: int | None = None
        self.start = 0  # absolute index of self.data[0]
        self.data = np.zeros(0, np.float32)

    @property
    def end(self) -> int:
        """Absolute index one past the last buffered sample."""
        return self.start + self.data.size

    def index_at(self, stamp_ns: int) -> int:
        """Absolute sample index of a stamp (floor). Requires a first push."""
        assert self.origin_ns is not None
        return (int(stamp_ns) - self.origin_ns) // self.NS_PER_SAMPLE

    def end_ns(self) -> int | None:
        """Stamp (ns) one sample past the buffer end, None when empty."""
        return None if self.origin_ns is None else self.origin_ns + self.end * self.NS_PER_SAMPLE

    def push(self, stamp_ns: int, samples_16k: np.ndarray) -> None:
        """Place a 16 kHz mono chunk whose first sample has ``stamp_ns``.

        Raises:
            InputError: the chunk starts more than the tolerance but less than
                :attr:`jump_back_sec` before the buffered audio ends (out of order).
        """
        if self.origin_ns is None:
            self.origin_ns = int(stamp_ns)
        pos = self.index_at(stamp_ns)
        if pos <= self.end - int(self.jump_back_sec * audio.SAMPLE_RATE):
            self.clear()
            self.jumps += 1
            self.origin_ns = int(stamp_ns)
            pos = 0
        if pos < self.end - self.tolerance:
            raise InputError(
                f"audio chunk stamped {stamp_ns} ns starts {(self.end - pos) / audio.SAMPLE_RATE:.3f} s before "
                "the end of the buffered audio (out of order or overlapping); dropped",
                reason="out-of-order audio",
            )
        data = self.data
        if pos < self.end:  # a small overlap: the chunk's stamp wins over the previous chunk's tail
            data = data[: max(pos - self.start, 0)]
            self.start = min(self.start, pos)
        gap = pos - self.end if pos > self.end + self.tolerance else 0
        parts = [data, np.zeros(min(gap, self.capacity), np.float32), samples_16k.astype(np.float32)]
        if gap > self.capacity:
            self.start = pos - self.capacity
            parts[0] = self.data[:0]
        self.data = np.concatenate(parts)
        excess = self.data.size - self.capacity
        if excess > 0:
            self.data = self.data[excess:]
            self.start += excess

    def scale_span(self, start_ns: int, end_ns: int, gain: float) -> int:
        """Multiply the buffered samples stamped in [start_ns, end_ns) by ``gain``.

        Returns:
            Number of samples changed (0 when the span is not buffered).
        """
        if self.origin_ns is None or end_ns <= start_ns:
            return 0
        a = max(self.index_at(start_ns), self.start)
        b = min(self.index_at(end_ns), self.end)
        if b <= a:
            return 0
        self.data[a - self.start : b - self.start] *= np.float32(gain)
        return b - a

    def window(self, end_index: int, length: int) -> np.ndarray:
        """Samples [end_index - length, end_index) as float32 (length,), zeros where not buffered."""
        out = np.zeros(length, np.float32)
        lo, hi = end_index - length, end_index
        a, b = max(lo, self.start), min(hi, self.end)
        if b > a:
            out[a - lo : b - lo] = self.data[a - self.start : b - self.start]
        return out


class StreamingPredictor:
    """Streaming Ref-AVS predictor over a :class:`refavs_ros.engines.base.StreamEngine`.

    Args:
        engine: the model side (EEMC or the official model).
        config: run-time settings.
    """

    def __init__(self, engine: StreamEngine, config: PredictorConfig | None = None) -> None:
        self.engine = engine
        self.config = config or PredictorConfig()
        self._audio = AudioRing()
        self._latest: tuple[int, np.ndarray] | None = None
        self._last_stepped_ns: int | None = None
        self._last_commit_ns: int | None = None
        self._command = ""
        self._audio_cache: dict[int, np.ndarray] = {}
        self.update_config(self.config)

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        weights: str | Path | None = None,
        *,
        config: PredictorConfig | None = None,
        model: str = "eemc",
        backend: str = "torch",
        device: str = "cpu",
        models_dir: str | Path | None = None,
        engine_dir: str | Path | None = None,
        precision: str = "fp16",
        threads: int | None = None,
    ) -> "StreamingPredictor":
        """Build a predictor from weights on disk (a thin wrapper of
        :func:`refavs_ros.engines.build.build_engine`).

        Args:
            weights, model, backend, device, models_dir, engine_dir, precision, threads: as
                :func:`~refavs_ros.engines.build.build_engine` (the shipped tiny EEMC on the
                torch backend, CPU, by default).
            config: run-time settings; its ``num_frames`` and ``beta`` size the engine's
                cached memory.

        Raises:
            ModelLoadError: missing or incompatible weights/sub-model files (named).
            BackendUnavailableError: the backend library or device is missing.
            ConfigError: unknown model or backend name.
        """
        from refavs_ros.engines.build import build_engine

        config = config or PredictorConfig()
        engine = build_engine(
            weights, model=model, backend=backend, device=device, models_dir=models_dir, engine_dir=engine_dir,
            precision=precision, threads=threads, num_frames=config.num_frames, beta=config.beta,
        )
        return cls(engine, config)

    # ------------------------------------------------------------------------------- commands
    @property
    def command(self) -> str:
        """The referring expression in force ("" when none)."""
        return self._command

    def set_command(self, text: str) -> None:
        """Set the referring expression (encoded once); ``""`` clears it.

        The cached memory keeps its frames; their text-dependent features are recomputed.

        Raises:
            InputError: not a string, only whitespace but non-empty, over-long, control
                characters or invalid UTF-8 (:func:`refavs_ros.models.text.check_command`).
        """
        if text == "":
            self._command = ""
            return
        stripped = check_command(text)
        self.engine.set_command(stripped)
        self._command = stripped

    def update_config(self, config: PredictorConfig) -> None:
        """Apply new run-time settings (window, stride, thresholds, beta) without reloading.

        Raises:
            ConfigError: a value is out of range.
        """
        if config.num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {config.num_frames}")
        if config.frame_stride_sec < 0 or config.max_av_skew_sec < 0:
            raise ConfigError("frame_stride_sec and max_av_skew_sec must be >= 0")
        if not 0.0 < config.mask_threshold < 1.0 or not 0.0 <= config.score_threshold <= 1.0:
            raise ConfigError("mask_threshold must be in (0, 1) and score_threshold in [0, 1]")
        if not 0.0 <= config.min_region_fraction < 1.0:
            raise ConfigError(f"min_region_fraction must be in [0, 1), got {config.min_region_fraction}")
        self.config = config
        self.engine.set_window(config.num_frames)
        if hasattr(self.engine, "set_beta"):
            self.engine.set_beta(config.beta)

    @property
    def audio_time_jumps(self) -> int:
        """Audio chunks stamped 1 s or more before the buffered audio, which restarted the audio
        buffer (:class:`AudioRing`), since construction."""
        return self._audio.jumps

    def reset_memory(self, *, keep_audio: bool = False) -> None:
        """Forget the cached memory, buffered audio and pending frame (the command stays).

        Args:
            keep_audio: keep the buffered audio (it already follows the new time line, e.g. the
                audio buffer restarted on a jump of the audio stamps before the images jumped).
        """
        self.engine.reset_memory()
        if not keep_audio:
            self._audio.clear()
        self._audio_cache.clear()
        self._latest = None
        self._last_stepped_ns = None
        self._last_commit_ns = None

    # --------------------------------------------------------------------------------- inputs
    def push_audio(self, stamp_ns: int, samples: np.ndarray, sample_rate: int) -> None:
        """Append an audio chunk (any rate/channels) stamped at its first sample.

        A chunk stamped 1 s or more before the buffered audio ends restarts the buffer (an audio
        time jump, :class:`AudioRing`).

        Raises:
            InputError: bad samples (NaN/inf, shape, dtype), bad rate, or a chunk that starts
                20 ms to 1 s before the buffered audio ends (out of order). The buffer is
                unchanged then.
        """
        mono = audio.to_mono_16k(samples, sample_rate)
        if self.config.zero_audio:
            mono = np.zeros_like(mono)
        ring, jumps = self._audio, self._audio.jumps
        ring.push(int(stamp_ns), mono)
        if ring.jumps != jumps:  # the ring restarted: indices mean other times now
            self._audio_cache.clear()
        else:  # embeddings of windows ending after this chunk's start saw samples it replaced
            first = ring.end - mono.size
            for key in [k for k in self._audio_cache if k > first]:
                del self._audio_cache[key]

    def suppress_audio(self, start_ns: int, end_ns: int, gain: float = 0.0) -> int:
        """Scale the buffered audio stamped in [start_ns, end_ns) by ``gain`` (0 = silence).

        Used for voice commands (issue 9): the person giving the command is not the sounding
        object it refers to, so their speech is removed from what the model hears. Frames
        stepped after this call see the suppressed audio; frames already in the cached memory
        keep what they heard.

        Args:
            start_ns, end_ns: the span (ns, header-stamp time line). gain: in [0, 1].

        Returns:
            Samples changed (0 when the span is no longer, or not yet, buffered).

        Raises:
            ConfigError: ``gain`` outside [0, 1].
        """
        if not 0.0 <= float(gain) <= 1.0:
            raise ConfigError(f"audio suppression gain must be in [0, 1], got {gain!r}")
        return self._audio.scale_span(int(start_ns), int(end_ns), float(gain))

    def push_image(self, stamp_ns: int, image: np.ndarray) -> None:
        """Keep ``image`` as the newest frame (cheap; no inference).

        Raises:
            InputError: not uint8 (H, W, 3), or stamped before the last stepped frame.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(
                f"image must be uint8 (H, W, 3) RGB, got {getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}",
                reason="bad image array",
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputError(f"image is empty ({image.shape[0]}x{image.shape[1]})", reason="empty image")
        if self._last_stepped_ns is not None and int(stamp_ns) <= self._last_stepped_ns:
            raise InputError(
                f"image stamped {stamp_ns} ns is not newer than the last processed frame ({self._last_stepped_ns} ns); dropped",
                reason="stale stamp",
            )
        self._latest = (int(stamp_ns), image)

    # ---------------------------------------------------------------------------------- step
    def step(self) -> Prediction | None:
        """Run the model on the newest image (expensive per-frame call).

        Returns:
            The :class:`Prediction`, or None when there is no new image or no command.
        """
        if self._latest is None or not self._command:
            return None
        t0 = time.perf_counter()
        stamp_ns, image = self._latest
        self._latest = None
        self._last_stepped_ns = stamp_ns
        frame = self.engine.encode_frame(image)
        t1 = time.perf_counter()
        emb, audio_ok = self._audio_for(stamp_ns)
        t2 = time.perf_counter()
        stride_ns = int(self.config.frame_stride_sec * 1e9)
        commit = self._last_commit_ns is None or stamp_ns - self._last_commit_ns >= stride_ns
        logits, presence_logit = self.engine.step(frame, emb, commit=commit)
        if commit:
            self._last_commit_ns = stamp_ns
        t3 = time.perf_counter()
        h, w = image.shape[:2]
        score = float(_sigmoid(np.float32(presence_logit)))
        decoded = decode_mask(logits, score, (h, w), self.config)
        t4 = time.perf_counter()
        return Prediction(
            stamp_ns=stamp_ns,
            mask=decoded.mask,
            score=score,
            found=decoded.found,
            bbox=decoded.bbox,
            command=self._command,
            timings_ms={
                "visual": (t1 - t0) * 1e3,
                "audio": (t2 - t1) * 1e3,
                "fusion": (t3 - t2) * 1e3,
                "decode": (t4 - t3) * 1e3,
                "total": (t4 - t0) * 1e3,
            },
            audio_ok=audio_ok,
            region_score=decoded.region_score,
            regions=decoded.regions,
            dropped_regions=decoded.dropped,
            logits=decoded.kept_logits,
            _decoded=decoded,
        )

    def _audio_for(self, stamp_ns: int) -> tuple[np.ndarray, bool]:
        """Audio embedding aligned with a frame stamp, computed once per example end and cached."""
        ring = self._audio
        ok = ring.origin_ns is not None
        end = 0
        if ok:
            end = ring.index_at(stamp_ns)
            if end > ring.end:
                lag = (end - ring.end) / audio.SAMPLE_RATE
                ok = lag <= self.config.max_av_skew_sec
                end = ring.end if ok else end
        key = end if ok else -1
        cached = self._audio_cache.get(key)
        if cached is None:
            samples = ring.window(end, audio.EXAMPLE_SAMPLES) if ok else np.zeros(audio.EXAMPLE_SAMPLES, np.float32)
            cached = self.engine.encode_audio(audio.log_mel_spectrogram(samples))
            if len(self._audio_cache) > 256:
                self._audio_cache.clear()
            self._audio_cache[key] = cached
        return cached, ok


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (x_min, y_min, x_max, y_max), inclusive pixel indices, of a bool mask; None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


@dataclass
class _Decoded:
    """What :func:`decode_mask` computed (see :class:`Prediction` for the meaning of the fields).

    ``raw_logits``: float32 (h, w) network logits; ``kept_logits``: after the component filter
    (None when absent); ``main_logits``: every component but the main one lowered, None when the
    main region is the only kept component; ``threshold_logit``: ``logit(mask_threshold)``.
    """

    mask: np.ndarray
    found: bool
    bbox: tuple[int, int, int, int] | None
    region_score: float
    regions: int
    dropped: int
    raw_logits: np.ndarray
    kept_logits: np.ndarray | None
    main_logits: np.ndarray | None
    threshold_logit: float


def _upsample(logits: np.ndarray, width: int, height: int) -> np.ndarray:
    """float32 (h, w) -> (height, width), bilinear with pixel centres aligned (``cv2.resize``)."""
    if logits.shape == (height, width):
        return logits
    return cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)


def _axis_taps(cells: int, pixels: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of source pixels lo..hi-1 on a grid of ``cells``, as ``cv2.resize`` computes them.

    OpenCV's ``INTER_LINEAR`` (``resize.cpp``, generic path): ``f = float((x + 0.5) * cells /
    pixels - 0.5)``, ``i0 = floor(f)``, weight ``f - i0`` on cell ``i0 + 1``; taps before the first
    cell or past the last one are clamped to it with weight 0.

    Returns:
        i0, i1: intp (hi - lo,) cell indices in [0, cells); w1: float32 (hi - lo,) weight of i1.
    """
    f = ((np.arange(lo, hi, dtype=np.float64) + 0.5) * (1.0 / (pixels / cells)) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.intp)
    w1 = f - i0.astype(np.float32)
    outside = (i0 < 0) | (i0 >= cells - 1)
    w1[outside] = 0.0
    i0 = np.clip(i0, 0, cells - 1)
    return i0, np.minimum(i0 + 1, cells - 1), w1


def _upsample_window(logits: np.ndarray, width: int, height: int, xa: int, xb: int, ya: int, yb: int) -> np.ndarray:
    """Rows ya..yb-1, columns xa..xb-1 of ``_upsample(logits, width, height)``, computed alone.

    Separable like OpenCV (horizontal pass on the cell rows involved, then vertical), in float32
    with OpenCV's taps (:func:`_axis_taps`), so it matches ``cv2.resize`` up to float rounding
    (fused multiply-adds) at a cost proportional to the window, not to the source image.

    Args:
        logits: float32 (h, w) network grid.
        width, height: source size in pixels; xa < xb <= width, ya < yb <= height.

    Returns:
        float32 (yb - ya, xb - xa).
    """
    h, w = logits.shape
    cx0, cx1, wx = _axis_taps(w, width, xa, xb)
    cy0, cy1, wy = _axis_taps(h, height, ya, yb)
    r0 = int(cy0[0])
    rows = logits[r0 : int(cy1[-1]) + 1]
    horizontal = rows[:, cx0] * (np.float32(1.0) - wx) + rows[:, cx1] * wx  # (rows, xb - xa)
    return horizontal[cy0 - r0] * (np.float32(1.0) - wy)[:, None] + horizontal[cy1 - r0] * wy[:, None]


def _window_mask(logits: np.ndarray, cells: np.ndarray, width: int, height: int, t: float) -> np.ndarray:
    """bool (height, width): ``_upsample(logits) > t``, computed only where it can be True.

    ``cells``: bool (h, w), every cell whose logit exceeds ``t``. A source pixel blends the 2 x 2
    cells around it, so it can exceed ``t`` only inside :func:`_source_span` of those cells' box;
    the rest of the image stays False without being computed. A window of more than half the
    image is upsampled whole by ``cv2.resize`` (its fixed per-call cost is lower than numpy's).
    """
    mask = np.zeros((height, width), bool)
    box = mask_bbox(cells)
    if box is None:
        return mask
    xa, xb = _source_span(box[0], box[2], logits.shape[1], width)
    ya, yb = _source_span(box[1], box[3], logits.shape[0], height)
    if 2 * (xb - xa) * (yb - ya) > width * height:
        return _upsample(logits, width, height) > t
    if xa < xb and ya < yb:
        mask[ya:yb, xa:xb] = _upsample_window(logits, width, height, xa, xb, ya, yb) > t
    return mask


def _source_span(lo: int, hi: int, cells: int, pixels: int) -> tuple[int, int]:
    """Source pixel range [a, b) whose bilinear samples can involve network cells lo..hi (inclusive).

    A source pixel x samples network coordinate ``(x + 0.5) * cells / pixels - 0.5`` from the
    cells ``floor`` and ``floor + 1`` of it, so cells lo..hi reach coordinates in (lo - 1, hi + 1).
    """
    scale = pixels / cells
    a = math.floor((lo - 0.5) * scale - 0.5)
    b = math.ceil((hi + 1.5) * scale - 0.5) + 1
    return max(a, 0), min(b, pixels)


def decode_mask(logits: np.ndarray, score: float, size: tuple[int, int], config: PredictorConfig) -> _Decoded:
    """Network mask logits -> source-size mask, main-region box and region score (issue 10, part 2).

    Args:
        logits: float (h, w) mask logits at network resolution.
        score: presence probability in [0, 1].
        size: (H, W) of the source image in pixels.
        config: ``mask_threshold``, ``score_threshold`` and ``min_region_fraction`` are used.

    Returns:
        The decoded result (see :class:`Prediction`). Cost: network-grid work, one bilinear
        upsampling and one comparison at source size, a box search in the main region's window.
    """
    height, width = int(size[0]), int(size[1])
    raw = np.ascontiguousarray(logits, dtype=np.float32)
    thr = float(config.mask_threshold)
    t = math.log(thr / (1.0 - thr))
    above = raw > t

    def absent() -> _Decoded:
        return _Decoded(np.zeros((height, width), bool), False, None, 0.0, 0, 0, raw, None, None, t)

    if score < config.score_threshold or not above.any():
        return absent()
    region = main_region(above, _sigmoid(raw), math.ceil(config.min_region_fraction * raw.size))
    floor = min(float(raw.min()), t)
    kept = raw
    if region.dropped:
        kept = raw.copy()
        kept[above & ~region.kept] = floor
    mask = _window_mask(kept, region.kept, width, height, t)
    main = kept
    others = len(region.kept_labels) > 1
    if others:
        main = kept.copy()
        main[region.kept & ~region.main] = floor
    x0n, y0n, x1n, y1n = region.bbox  # type: ignore[misc]
    xa, xb = _source_span(x0n, x1n, raw.shape[1], width)
    ya, yb = _source_span(y0n, y1n, raw.shape[0], height)
    window = mask[ya:yb, xa:xb] if not others else _upsample_window(main, width, height, xa, xb, ya, yb) > t
    box = mask_bbox(window)
    if box is None:  # the main region's cells barely exceed the threshold: no source pixel does
        box = mask_bbox(mask)
        if box is None:
            return absent()
    else:
        box = (box[0] + xa, box[1] + ya, box[2] + xa, box[3] + ya)
    return _Decoded(
        mask=mask, found=True, bbox=box, region_score=float(score * region.mean_probability),
        regions=region.components, dropped=region.dropped, raw_logits=raw, kept_logits=kept,
        main_logits=main if others else None, threshold_logit=t,
    )
