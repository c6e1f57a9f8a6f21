"""Voice activity detection: silero-vad's ONNX model on onnxruntime, and an utterance segmenter.

:class:`SileroVad` runs the model shipped inside the PyPI ``silero-vad`` wheel
(``silero_vad/data/silero_vad.onnx``, MIT licence, snakers4/silero-vad) directly with
onnxruntime and numpy, the way the package's own ``OnnxWrapper`` does (512-sample windows at
16 kHz with the previous window's last 64 samples as context, a (2, 1, 128) recurrent state).
The ``silero_vad`` Python package itself is not imported (it imports torch and, for audio
files, torchaudio); only its data file is located.

:class:`UtteranceSegmenter` turns per-window speech probabilities into utterances with
hysteresis (onset at ``threshold``, offset below ``neg_threshold``), a minimum speech duration,
a minimum silence that ends an utterance, padding, and a maximum utterance length; the same
rules as silero-vad's ``VADIterator`` / ``get_speech_timestamps`` (``min_speech_duration_ms``,
``min_silence_duration_ms``, ``speech_pad_ms``, ``max_speech_duration_s``), applied online.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refavs_ros.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
)

WINDOW = 512
"""Samples per VAD window at 16 kHz (32 ms); the model takes exactly this many."""
CONTEXT = 64
"""Samples of the previous window prepended to each window (silero-vad v5+ at 16 kHz)."""
RATE = 16000
"""VAD sample rate (Hz)."""


def silero_model_path() -> Path:
    """Path of ``silero_vad.onnx`` inside the installed ``silero-vad`` wheel.

    Raises:
        BackendUnavailableError: silero-vad is not installed.
        ModelLoadError: it is installed but the ONNX file is missing (path named).
    """
    spec = importlib.util.find_spec("silero_vad")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("voice activity detection needs silero-vad "
                                      "(pip install 'refavs_ros[voice]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ModelLoadError(f"silero-vad is installed but {str(path)!r} is missing")
    return path


class SileroVad:
    """Streaming silero-vad: one speech probability per 512-sample window.

    Args:
        model_path: the ONNX file; None = the one in the silero-vad wheel.
        threads: onnxruntime intra-op threads (1 keeps it off the other cores).

    Raises:
        BackendUnavailableError: onnxruntime or silero-vad is not installed.
        ModelLoadError: the ONNX file is missing or cannot be loaded (named).
    """

    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("voice activity detection needs onnxruntime") from None
        path = Path(model_path) if model_path is not None else silero_model_path()
        if not path.is_file():
            raise ModelLoadError(f"VAD model {str(path)!r} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own (unexported) types
            raise ModelLoadError(f"cannot load the VAD model {str(path)!r}: {exc}") from None
        self.model_path = path
        self._sr = np.array(RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state and context (a new stream)."""
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, CONTEXT), np.float32)

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of the next window.

        Args:
            window: float32 (512,), 16 kHz mono in [-1, 1], consecutive with the previous call.

        Returns:
            Probability in [0, 1] that the window contains speech.

        Raises:
            InputError: wrong shape.
        """
        x = np.asarray(window, np.float32)
        if x.shape != (WINDOW,):
            raise InputError(f"VAD window must be float32 ({WINDOW},), got {x.shape}")
        inp = np.concatenate([self._context, x[None, :]], axis=1)
        out, self._state = self._session.run(None, {"input": inp, "state": self._state, "sr": self._sr})
        self._context = inp[:, -CONTEXT:]
        return float(out.reshape(-1)[0])


@dataclass(frozen=True)
class VadConfig:
    """Utterance segmentation settings.

    Attributes:
        threshold: speech probability that starts an utterance, (0, 1).
        neg_threshold: probability below which a window counts as silence inside an
            utterance (hysteresis); None = ``max(threshold - 0.15, 0.01)`` (silero-vad's rule).
        min_speech_sec: utterances with less speech than this (s) are dropped unheard.
        min_silence_sec: this much silence (s) ends an utterance; it is the floor of the
            command latency.
        speech_pad_sec: audio (s) kept before the onset and after the offset. At most
            ``min_silence_sec``, so it costs no latency. 0.3 s: the VAD's offset comes up to
            0.2 s before the end of weak final sounds ("objec-t", measured on espeak-ng
            speech), and 0.15 s of padding cut them (3-5 points of exact match).
        max_utterance_sec: an utterance is cut and recognised at this length (s).
        level_drop_db: inside an utterance, a window more than this many dB below the
            loudest speech window so far counts as silence whatever its speech probability
            (0 = off). The person commanding the robot is near the microphone; quieter speech
            around them (a radio, other people, the scene's own voices) then ends the command
            instead of being glued to it.
        min_level_above_ambient_db: an utterance is dropped unheard unless its speech level
            (90th percentile of its windows' RMS, dB) is at least this far above the ambient
            level (90th percentile of the windows' RMS outside utterances over the last
            ``ambient_sec``); None or a negative value = off. Same reasoning: the commander is
            the loudest voice; quieter voices and sounds of the scene are not commands.
            3 dB: with the ``fusion`` backend's acceptance model, 6 dB dropped 4-5 % of the
            val commands at 10 dB SNR unheard (exact match 87.5-91.5 % at 3 dB vs 86.5-91 % at
            6 dB, and 76-82 % vs 57-59 % at 5 dB; bench/voice_fusion_fit.py data).
        ambient_sec: length (s) of the ambient level history.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_sec: float = 0.25
    min_silence_sec: float = 0.3
    speech_pad_sec: float = 0.3
    max_utterance_sec: float = 10.0
    level_drop_db: float = 20.0
    min_level_above_ambient_db: float = 3.0
    ambient_sec: float = 10.0

    def validated(self) -> VadConfig:
        """Return self after checking ranges.

        Raises:
            ConfigError: naming the offending field.
        """
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"vad threshold must be in (0, 1), got {self.threshold!r}")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ConfigError(f"vad neg_threshold must be in (0, threshold], got {self.neg_threshold!r}")
        for name, lo, hi in (("min_speech_sec", 0.0, 10.0), ("min_silence_sec", 0.032, 5.0),
                             ("speech_pad_sec", 0.0, 1.0), ("max_utterance_sec", 1.0, 30.0),
                             ("level_drop_db", 0.0, 120.0), ("ambient_sec", 1.0, 600.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"vad {name} must be in [{lo}, {hi}] s, got {v!r}")
        if self.speech_pad_sec > self.min_silence_sec:
            raise ConfigError("vad speech_pad_sec must not exceed min_silence_sec "
                              f"({self.speech_pad_sec} > {self.min_silence_sec})")
        return self

    @property
    def offset_threshold(self) -> float:
        """The effective ``neg_threshold``."""
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class Segment:
    """One utterance cut by :class:`UtteranceSegmenter`.

    Attributes:
        audio: float32 (N,) 16 kHz mono, padded by ``speech_pad_sec`` where available.
        start: sample index (stream, 16 kHz) of the first speech window (without padding).
        end: sample index one past the last speech window (without padding).
        truncated: cut at ``max_utterance_sec`` rather than ended by silence.
        level_db: speech level (90th percentile of the speech windows' RMS, dBFS).
        ambient_db: ambient level at the onset (see :meth:`UtteranceSegmenter.ambient_db`).
    """

    audio: np.ndarray
    start: int
    end: int
    truncated: bool = False
    level_db: float = 0.0
    ambient_db: float = -np.inf


class UtteranceSegmenter:
    """Online segmentation of a 16 kHz stream into utterances from per-window probabilities.

    Feed consecutive windows with :meth:`push` (the window and its VAD probability); it returns
    a :class:`Segment` when an utterance ends. Windows are :data:`WINDOW` samples.

    Args:
        config: the :class:`VadConfig` (validated here).
    """

    def __init__(self, config: VadConfig = VadConfig()) -> None:
        self.config = config.validated()
        self._pad = round(config.speech_pad_sec * RATE)
        self._min_speech = round(config.min_speech_sec * RATE)
        self._min_silence = round(config.min_silence_sec * RATE)
        self._max_len = round(config.max_utterance_sec * RATE)
        self.reset()

    def reset(self, position: int = 0) -> None:
        """Drop any utterance in progress; the next window starts at sample ``position``."""
        self._pos = int(position)
        self._history: deque[np.ndarray] = deque(maxlen=max(1, -(-self._pad // WINDOW)))
        self._active = False
        self._buf: list[np.ndarray] = []
        self._buf_start = 0
        self._onset = 0
        self._last_speech = 0
        self._peak_db = -np.inf
        self._levels: list[float] = []
        self._ambient: deque[float] = deque(maxlen=max(1, int(self.config.ambient_sec * RATE / WINDOW)))

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is in progress."""
        return self._active

    @property
    def min_level_above_ambient_db(self) -> float | None:
        """The configured gate, None when off."""
        v = self.config.min_level_above_ambient_db
        return None if v is None or v < 0 else float(v)

    @property
    def onset(self) -> int | None:
        """Sample index of the current utterance's first speech window (None outside speech)."""
        return self._onset if self._active else None

    def buffered(self) -> np.ndarray:
        """Audio of the utterance in progress so far, padding included: float32 (N,)."""
        return np.concatenate(self._buf) if self._active and self._buf else np.zeros(0, np.float32)

    @property
    def last_speech(self) -> int | None:
        """Sample index one past the current utterance's last speech window (None outside speech)."""
        return self._last_speech if self._active else None

    @property
    def silence_samples(self) -> int:
        """Samples since the current utterance's last speech window (0 outside speech)."""
        return self._pos - self._last_speech if self._active else 0

    def provisional(self) -> np.ndarray:
        """The segment audio the utterance in progress would have if it ended now: float32 (N,),
        from ``speech_pad_sec`` before the onset to the newest sample (the final segment keeps
        at most ``speech_pad_sec`` after the last speech window instead)."""
        if not self._active or not self._buf:
            return np.zeros(0, np.float32)
        return np.concatenate(self._buf)[self._pad_start() - self._buf_start :]

    def _pad_start(self) -> int:
        """Sample index where the utterance's audio starts: ``speech_pad_sec`` before the onset,
        or the oldest buffered sample."""
        return max(self._buf_start, self._onset - self._pad)

    def push(self, window: np.ndarray, prob: float) -> Segment | None:
        """Add the next window and its speech probability.

        Args:
            window: float32 (512,). prob: its speech probability in [0, 1].

        Returns:
            A finished :class:`Segment`, or None. Utterances with less than ``min_speech_sec``
            of speech are dropped (None).
        """
        cfg = self.config
        start = self._pos
        self._pos += WINDOW
        level = 10.0 * np.log10(float(np.mean(np.square(window, dtype=np.float64))) + 1e-12)
        if not self._active:
            if prob >= cfg.threshold:
                self._active = True
                self._peak_db = level
                self._levels = [level]
                self._ambient_at_onset = self.ambient_db()
                pre = list(self._history)
                self._buf = pre + [window]
                self._buf_start = start - WINDOW * len(pre)
                self._onset = start
                self._last_speech = self._pos
            else:
                self._history.append(window)
                self._ambient.append(level)
            return None
        self._buf.append(window)
        loud_enough = cfg.level_drop_db <= 0 or level >= self._peak_db - cfg.level_drop_db
        if prob >= cfg.offset_threshold and loud_enough:
            self._last_speech = self._pos
            self._levels.append(level)
            if prob >= cfg.threshold:
                self._peak_db = max(self._peak_db, level)
        if self._pos - self._last_speech >= self._min_silence:
            return self._finish(truncated=False)
        if self._pos - self._onset >= self._max_len:
            return self._finish(truncated=True)
        return None

    def ambient_db(self) -> float:
        """Ambient level (dB re full scale, RMS): 90th percentile of the window levels outside
        utterances over the last ``ambient_sec``; -inf before any."""
        return float(np.percentile(np.asarray(self._ambient), 90)) if self._ambient else -np.inf

    def flush(self) -> Segment | None:
        """End the stream: the utterance in progress, if any and long enough, as a Segment."""
        if not self._active:
            return None
        return self._finish(truncated=False)

    def _finish(self, truncated: bool) -> Segment | None:
        onset, end = self._onset, self._last_speech
        audio = np.concatenate(self._buf) if self._buf else np.zeros(0, np.float32)
        pad_start = self._pad_start()
        stop = min(self._buf_start + audio.size, end + self._pad)
        audio = audio[pad_start - self._buf_start : stop - self._buf_start]
        self._active = False
        self._buf = []
        self._history.clear()
        if end - onset < self._min_speech:
            return None
        level = float(np.percentile(np.asarray(self._levels), 90)) if self._levels else -np.inf
        return Segment(audio.astype(np.float32, copy=False), onset, end, truncated, level, self._ambient_at_onset)
