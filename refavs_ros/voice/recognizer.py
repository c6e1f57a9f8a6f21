"""`VoiceCommandRecognizer`: stamped audio chunks in, spoken commands out.

Usage::

    from refavs_ros.voice import RecognizerConfig, VoiceCommandRecognizer

    rec = VoiceCommandRecognizer(RecognizerConfig())          # silero-vad + the fusion backend
    for stamp_ns, samples in chunks:                           # same chunks as the predictor
        for cmd in rec.push_audio(stamp_ns, samples, 16000):   # any rate / channels
            predictor.set_command(cmd.text)                    # cmd.start_ns / end_ns: the speech
    rec.flush()                                                # end of stream

Every utterance the voice activity detector cuts is recognised once; the result is a
:class:`Transcript` (kept in :attr:`VoiceCommandRecognizer.transcripts` and passed to
``on_transcript``), and a :class:`VoiceCommand` when it is accepted: words found, wake phrase
present (when one is set), the text is a command of the vocabulary (``match``), and the
confidence reaches ``confidence_threshold``. Nothing else produces a command, so silence and
non-speech sounds never become commands (the VAD drops them before recognition; what it lets
through must also pass the grammar and the confidence threshold).

Timing: ``stamp_ns`` of a chunk is the stamp of its FIRST sample; sample ``i`` of a continuous
stream is at ``stamp + i * 1e9 / rate``. A stamp that jumps back, or forward by more than
``max_gap_sec`` from where the previous chunk ended, starts a new stream (an utterance in
progress is recognised first when the jump is forward).

Speculative recognition (``speculative_sec``, backends that recognise whole utterances such as
``moonshine``, ``fusion``): once the speech has paused for ``speculative_sec``, the utterance so far is
recognised on a worker thread while the VAD waits out ``min_silence_sec``; if the utterance then
ends without more speech, that result is used, so the recogniser's time overlaps the wait
instead of following it (the classic early-endpointing trade of streaming ASR). Every call of
the backend runs on that one worker thread, one at a time; a guess that more speech made stale
is cancelled (cancellable backends stop at their next decoder step,
:class:`~refavs_ros.voice.asr.RecognitionCancelled`), so it does not delay the next one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from refavs_ros.audio import to_mono_16k
from refavs_ros.errors import ConfigError, InputError
from refavs_ros.voice.asr import BACKENDS, AsrBackend, Hypothesis, build_backend
from refavs_ros.voice.vad import (
    RATE,
    WINDOW,
    Segment,
    SileroVad,
    UtteranceSegmenter,
    VadConfig,
)
from refavs_ros.voice.vocabulary import Vocabulary, normalise_text

MATCH_MODES = ("grammar", "vocabulary", "any")
"""How an open-vocabulary transcript must relate to the vocabulary to be a command: a sentence
of the grammar, a text that mentions an object noun, or anything."""

CLIP_LEVEL = 0.999
"""|sample| at or above this (full scale 1.0) counts as clipped."""
CLIP_FRACTION = 0.01
"""Share of clipped samples from which audio is reported clipped."""
SILENCE_DBFS = -60.0
"""Peak level (dBFS) under which a clip is silence only."""

_NS = 1_000_000_000


DEFAULT_CONFIDENCE_THRESHOLD = 0.1
"""Threshold of backends without their own (``moonshine``'s likelihood ratio was tuned to it)."""


@dataclass(frozen=True)
class VoiceCommand:
    """A recognised spoken command.

    Attributes:
        text: the command, normalised (lower case, no punctuation; the wake phrase removed),
            e.g. ``"the dog that is barking"``; what is published on the command topic.
        confidence: recogniser confidence in [0, 1].
        start_ns: stamp (ns) of the start of the speech (first speech window).
        end_ns: stamp (ns) of the end of the speech (end of the last speech window).
    """

    text: str
    confidence: float
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class Transcript:
    """What was heard in one utterance, accepted or not (for debugging and diagnostics).

    Attributes:
        text: the backend's normalised transcript ("" when no word was recognised).
        confidence: in [0, 1].
        start_ns, end_ns: the speech span (ns), as :class:`VoiceCommand`.
        accepted: whether it became a command.
        reason: "accepted", "too quiet" (below the ambient gate; not recognised), "no words",
            "no wake phrase", "not a command" (no match with the vocabulary), "low confidence".
        backend: backend name. decode_sec: recognition wall time (s).
        warnings: e.g. ``("clipped: 3.1 % of samples at full scale",
            "cut at max_utterance_sec")``.
        command: the accepted command, or None.
    """

    text: str
    confidence: float
    start_ns: int
    end_ns: int
    accepted: bool
    reason: str
    backend: str
    decode_sec: float
    warnings: tuple[str, ...] = ()
    command: VoiceCommand | None = None

    def describe(self) -> str:
        """One line for logs / the transcript topic, e.g.
        ``'"the red cup" conf=0.91 accepted'``."""
        warn = f" [{'; '.join(self.warnings)}]" if self.warnings else ""
        return f'"{self.text}" conf={self.confidence:.2f} {self.reason}{warn}'


@dataclass(frozen=True)
class RecognizerConfig:
    """Settings of :class:`VoiceCommandRecognizer`.

    Attributes:
        backend: ASR backend, one of :data:`~refavs_ros.voice.asr.BACKENDS`: ``fusion``
            (default; Moonshine-base and pocketsphinx candidates rescored with Moonshine-tiny,
            :mod:`refavs_ros.voice.fusion`; needs ``refavs-voice-models fetch``), ``moonshine``
            (Moonshine-base searched inside the grammar alone), ``grammar`` (pocketsphinx with
            the grammar, shipped with its wheel),
            ``pocketsphinx`` (general language model), ``whisper`` (local directory).
        vocabulary_path: vocabulary YAML; "" = the shipped ``config/voice_vocabulary.yaml``.
        whisper_dir: local Whisper model directory (backend ``whisper``).
        moonshine_dir: Moonshine model directory (backends ``moonshine``, ``fusion``); "" = the default
            (:func:`refavs_ros.voice.models.default_model_dir`).
        wake_phrase: when set (e.g. "robot"), a command must start with it; it is removed
            from the command text.
        rescore_dir: the rescoring Moonshine-tiny directory (backend ``fusion``); "" = the
            installed ``moonshine-tiny``.
        confidence_threshold: minimum confidence in [0, 1] of an accepted command; a negative
            value = the backend's own calibrated threshold (its ``confidence_threshold``
            attribute: ``fusion`` reads it from its scorer file, 0.3 as shipped), else
            :data:`DEFAULT_CONFIDENCE_THRESHOLD`.
        match: one of :data:`MATCH_MODES`, or "" = ``grammar`` (for every backend).
        vad: voice activity detection settings.
        max_gap_sec: a stamp discontinuity larger than this (s) starts a new stream.
        transcript_history: transcripts kept in :attr:`VoiceCommandRecognizer.transcripts`.
        commander_drop_db: an utterance whose speech level is more than this many dB below the
            level of the last accepted command (within ``commander_memory_sec`` of its end) is
            dropped unheard ("too quiet"): the person commanding the robot spoke that command,
            and a much quieter voice afterwards is someone or something else (the scene's own
            voices, a radio) -- the ambient gate cannot tell, since sounds that the VAD takes
            for speech are not part of the ambient level. Negative = off. 10 dB: on the voice
            benchmark the scenes' voices that replaced a right command were 11-22 dB below it.
        commander_memory_sec: how long (s) the last command's level is the reference.
        vad_threads: onnxruntime threads of the VAD.
        speculative_sec: pause (s) after which a whole-utterance backend starts recognising the
            utterance so far (module doc); 0 = off; below ``vad.min_silence_sec``. 0.05 s
            (fusion, 20 val scenes in real time: p50 298 ms vs 332 ms at 0.1 s; exact match on
            150 val scenes 98.0 / 93.3 % at 20 / 10 dB vs 96.7 / 93.3 %).
        asr_threads: onnxruntime intra-op threads of the ``moonshine`` / ``fusion`` models
            (1-64; they run only between an utterance's end and its command). 1: ``fusion``'s
            pocketsphinx worker process takes the other core of a 2-core robot (measured per
            utterance, p50 / p95: 203 / 283 ms with 1 thread, 340 / 447 ms with 2);
            ``moonshine`` alone is faster with 2.
    """

    backend: str = "fusion"
    vocabulary_path: str = ""
    whisper_dir: str = ""
    moonshine_dir: str = ""
    rescore_dir: str = ""
    wake_phrase: str = ""
    confidence_threshold: float = -1.0
    match: str = ""
    vad: VadConfig = field(default_factory=VadConfig)
    max_gap_sec: float = 0.1
    transcript_history: int = 100
    commander_drop_db: float = 10.0
    commander_memory_sec: float = 30.0
    vad_threads: int = 1
    speculative_sec: float = 0.05
    asr_threads: int = 1

    def validated(self) -> RecognizerConfig:
        """Return self after checking every field.

        Raises:
            ConfigError: naming the offending field and value.
        """
        if self.backend not in BACKENDS:
            raise ConfigError(f"voice backend must be one of {BACKENDS}, got {self.backend!r}")
        if not (0.0 <= float(self.confidence_threshold) <= 1.0 or float(self.confidence_threshold) < 0.0):
            raise ConfigError(f"confidence_threshold must be in [0, 1] (or negative: the backend's own), "
                              f"got {self.confidence_threshold!r}")
        if self.match and self.match not in MATCH_MODES:
            raise ConfigError(f"match must be one of {MATCH_MODES} (or empty), got {self.match!r}")
        if not 0.0 < float(self.max_gap_sec) <= 10.0:
            raise ConfigError(f"max_gap_sec must be in (0, 10] s, got {self.max_gap_sec!r}")
        if not float(self.commander_memory_sec) >= 0.0 or not np.isfinite(float(self.commander_drop_db)):
            raise ConfigError(f"commander_memory_sec must be >= 0 s and commander_drop_db finite, got "
                              f"{self.commander_memory_sec!r}, {self.commander_drop_db!r}")
        if not isinstance(self.transcript_history, int) or self.transcript_history < 1:
            raise ConfigError(f"transcript_history must be an int >= 1, got {self.transcript_history!r}")
        self.vad.validated()
        if not isinstance(self.asr_threads, int) or isinstance(self.asr_threads, bool) or not 1 <= self.asr_threads <= 64:
            raise ConfigError(f"asr_threads must be an int in 1..64, got {self.asr_threads!r}")
        if not 0.0 <= float(self.speculative_sec) < self.vad.min_silence_sec:
            raise ConfigError(f"speculative_sec must be in [0, vad.min_silence_sec = {self.vad.min_silence_sec}) s, "
                              f"got {self.speculative_sec!r}")
        return self


def check_clip(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate a whole recording before offline recognition; return it as 16 kHz mono.

    Args:
        samples: PCM (N,) or (N, C), any dtype :func:`~refavs_ros.audio.to_mono_16k` takes.
        sample_rate: Hz.

    Returns:
        float32 (M,) 16 kHz mono.

    Raises:
        InputError: no samples ("no audio"), NaN/inf, silence only (peak below -60 dBFS),
            or clipping (at least 1 % of the samples at full scale), each named with figures.
    """
    x = np.asarray(samples)
    if x.size == 0:
        raise InputError("no audio: the recording has no samples")
    mono = to_mono_16k(x, sample_rate)
    peak = float(np.abs(mono).max(initial=0.0))
    if peak <= 10 ** (SILENCE_DBFS / 20):
        level = -np.inf if peak == 0 else 20 * np.log10(peak)
        raise InputError(f"silence only: peak level {level:.1f} dBFS is below {SILENCE_DBFS:.0f} dBFS")
    frac = clipped_fraction(mono)
    if frac >= CLIP_FRACTION:
        raise InputError(f"audio is clipped: {100 * frac:.1f} % of samples at full scale; lower the input gain")
    return mono


def clipped_fraction(samples_16k: np.ndarray) -> float:
    """Share of samples with ``|x| >= CLIP_LEVEL`` in a float array (0 for an empty one)."""
    x = np.asarray(samples_16k)
    return float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0


@dataclass
class _Job:
    """A recognition on the worker thread: its future and the event that asks a cancellable
    backend to stop (:class:`~refavs_ros.voice.asr.RecognitionCancelled`)."""

    future: Future
    cancel_event: threading.Event

    def cancel(self) -> None:
        """Drop the job: not started -> never runs; running -> the backend stops at its next step."""
        self.cancel_event.set()
        self.future.cancel()


class VoiceCommandRecognizer:
    """Stamped audio chunks in, :class:`VoiceCommand` out (VAD, then ASR, then acceptance).

    Args:
        config: :class:`RecognizerConfig`.
        backend: an ASR backend to use instead of building ``config.backend`` (tests, or a
            backend shared between recognisers).
        vocabulary: the vocabulary instead of loading ``config.vocabulary_path``.
        vad: a VAD callable (window float32 (512,) -> probability) instead of silero-vad.
        on_transcript: called with every :class:`Transcript` (from the thread that pushes).

    Raises:
        ConfigError: invalid config, unknown or malformed vocabulary file (named).
        ModelLoadError: a missing Whisper directory or VAD model (named).
        BackendUnavailableError: pocketsphinx / silero-vad / onnxruntime missing.
    """

    def __init__(self, config: RecognizerConfig | None = None, *, backend: AsrBackend | None = None,
                 vocabulary: Vocabulary | None = None, vad: Callable[[np.ndarray], float] | None = None,
                 on_transcript: Callable[[Transcript], None] | None = None) -> None:
        self.config = (config or RecognizerConfig()).validated()
        cfg = self.config
        self.vocabulary = vocabulary or Vocabulary.load(cfg.vocabulary_path or None)
        self.wake = normalise_text(cfg.wake_phrase)
        self.backend = backend or build_backend(cfg.backend, self.vocabulary, wake_phrase=self.wake,
                                                whisper_dir=cfg.whisper_dir, moonshine_dir=cfg.moonshine_dir,
                                                moonshine_threads=cfg.asr_threads, rescore_dir=cfg.rescore_dir)
        self._owns_backend = backend is None
        self.vad = vad or SileroVad(threads=cfg.vad_threads)
        self._decoding = False
        self._streaming = (all(hasattr(self.backend, m) for m in ("begin", "feed", "end", "cancel"))
                           and getattr(self.backend, "streaming", True))
        self.segmenter = UtteranceSegmenter(cfg.vad)
        self.on_transcript = on_transcript
        self.transcripts: deque[Transcript] = deque(maxlen=cfg.transcript_history)
        self.stats: Counter[str] = Counter()
        self.vad_sec = 0.0
        self.decode_sec = 0.0
        self._base_ns: int | None = None  # stamp of stream sample 0
        self._consumed = 0  # stream samples received
        self._pending = np.zeros(0, np.float32)
        self._worker: ThreadPoolExecutor | None = None
        self._speculation: tuple[tuple[int, int], _Job] | None = None  # ((onset, last speech), job)
        self._speculate = 0 if self._streaming else round(float(cfg.speculative_sec) * RATE)
        self._commander: tuple[float, int] | None = None  # (speech level dBFS, end sample) of the last command

    def _submit(self, audio: np.ndarray) -> _Job:
        """Recognise ``audio`` on the worker thread (every backend call goes there, in order)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refavs-asr")
        cancel = threading.Event()
        if getattr(self.backend, "cancellable", False):
            return _Job(self._worker.submit(self.backend.transcribe, audio, cancel=cancel), cancel)
        return _Job(self._worker.submit(self.backend.transcribe, audio), cancel)

    def _maybe_speculate(self) -> None:
        seg = self.segmenter
        if not self._speculate or not seg.in_speech or seg.silence_samples < self._speculate:
            return
        key = (seg.onset, seg.last_speech)
        if self._speculation is not None and self._speculation[0] == key:
            return
        if self._speculation is not None:
            self._speculation[1].cancel()  # more speech came: that guess is stale
        self._speculation = (key, self._submit(seg.provisional()))
        self.stats["speculations"] += 1

    @property
    def confidence_threshold(self) -> float:
        """The threshold in force: the configured one, or the backend's own when the configured
        one is negative (:class:`RecognizerConfig`)."""
        thr = float(self.config.confidence_threshold)
        if thr >= 0.0:
            return thr
        return float(getattr(self.backend, "confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD))

    def close(self) -> None:
        """Stop the worker thread (after the job in progress) and the backend's helpers (the
        ``fusion`` backend's pocketsphinx process) when this recogniser built the backend. The
        recogniser can still be used: the next utterance starts them again."""
        self._speculation = None
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        if self._owns_backend and hasattr(self.backend, "close"):
            self.backend.close()

    # ------------------------------------------------------------------------------ stream

    def reset(self, adaptation: bool = False) -> None:
        """Forget the stream and any utterance in progress (keeps transcripts and stats).

        Args:
            adaptation: also restore the backend's adaptive state (pocketsphinx's live cepstral
                mean) to its initial value. Off by default: the adapted value serves the next
                stream far better (see :meth:`refavs_ros.voice.asr._SphinxBase.reset`); on makes
                results independent of earlier streams.
        """
        self._end_stream()
        if adaptation and hasattr(self.backend, "reset"):
            self.backend.reset()
        self._base_ns = None
        self._consumed = 0
        self._pending = np.zeros(0, np.float32)
        self.segmenter.reset()
        self._commander = None
        if hasattr(self.vad, "reset"):
            self.vad.reset()

    def _stamp(self, index: int) -> int:
        assert self._base_ns is not None
        return self._base_ns + round(index * _NS / RATE)

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is in progress."""
        return self.segmenter.in_speech

    def speech_onset_ns(self) -> int | None:
        """Stamp (ns) where the utterance in progress started, None outside speech."""
        onset = self.segmenter.onset
        return None if onset is None or self._base_ns is None else self._stamp(onset)

    def push_audio(self, stamp_ns: int, samples: np.ndarray, sample_rate: int) -> list[VoiceCommand]:
        """Add a chunk of audio; return the commands of the utterances it completed.

        Args:
            stamp_ns: stamp (ns) of the chunk's first sample (int).
            samples: PCM (N,) or (N, C), int8/int16/int32/uint8/float; any rate.
            sample_rate: Hz.

        Returns:
            Accepted commands, oldest first (usually none; at most a few).

        Raises:
            InputError: a non-integer stamp, a chunk with no samples ("no audio"), NaN/inf
                samples, bad shape, dtype or rate (named). The stream state is unchanged then.
        """
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)):
            raise InputError(f"stamp_ns must be an int (ns), got {stamp_ns!r}")
        if np.asarray(samples).size == 0:
            raise InputError("no audio: the chunk has no samples")
        mono = to_mono_16k(samples, sample_rate)
        out: list[VoiceCommand] = []
        stamp_ns = int(stamp_ns)
        if self._base_ns is None:
            self._base_ns = stamp_ns
        else:
            expected = self._stamp(self._consumed)
            gap = stamp_ns - expected
            if abs(gap) > self.config.max_gap_sec * _NS:
                if gap > 0:  # audio dropped out: what was said before the gap is complete
                    out.extend(self._finish(self.segmenter.flush()))
                    self.stats["gaps"] += 1
                else:
                    self.stats["jumps_back"] += 1
                self.reset()
                self._base_ns = stamp_ns
        self.stats["chunks"] += 1
        self._consumed += mono.size
        buf = np.concatenate([self._pending, mono]) if self._pending.size else mono
        n = buf.size // WINDOW
        t0 = time.perf_counter()
        for k in range(n):
            window = buf[k * WINDOW : (k + 1) * WINDOW]
            v0 = time.perf_counter()
            prob = float(self.vad(window))
            self.vad_sec += time.perf_counter() - v0
            was = self.segmenter.in_speech
            seg = self.segmenter.push(window, prob)
            if self._streaming:
                now = self.segmenter.in_speech
                if now and not was:  # onset: decode the padding and this window
                    self.backend.begin()
                    self._decoding = True
                    self.backend.feed(self.segmenter.buffered())
                elif was:
                    self.backend.feed(window)
                    if not now and seg is None:  # too short: dropped unheard
                        self._end_stream()
            if seg is not None:
                out.extend(self._finish(seg))
            else:
                self._maybe_speculate()
        self._pending = buf[n * WINDOW :].copy()
        self.stats["windows"] += n
        self.stats["busy_ns"] += int((time.perf_counter() - t0) * 1e9)
        return out

    def flush(self) -> list[VoiceCommand]:
        """End of stream: recognise the utterance in progress (if any); then :meth:`reset`."""
        out = self._finish(self.segmenter.flush()) if self._base_ns is not None else []
        self.reset()
        return out

    def _end_stream(self) -> None:
        """Abandon the utterance in progress: its streamed decoding or its speculative job."""
        if self._decoding:
            self.backend.cancel()
            self._decoding = False
        if self._speculation is not None:
            self._speculation[1].cancel()
            self._speculation = None

    # ----------------------------------------------------------------------------- offline

    def recognize(self, samples: np.ndarray, sample_rate: int, start_ns: int = 0) -> list[VoiceCommand]:
        """Recognise every command in a whole recording (offline; resets the stream first).

        Args:
            samples: PCM (N,) or (N, C). sample_rate: Hz. start_ns: stamp of sample 0.

        Returns:
            The accepted commands in time order (possibly none: speech that matched nothing).

        Raises:
            InputError: as :func:`check_clip` (no audio, NaN, silence only, clipping), or
                "no speech found" when the VAD found no utterance in audio that is not silent.
        """
        mono = check_clip(samples, sample_rate)
        self.reset()
        before = self.stats["utterances"]
        out: list[VoiceCommand] = []
        for i in range(0, mono.size, 8000):
            out.extend(self.push_audio(start_ns + round(i * _NS / RATE), mono[i : i + 8000], RATE))
        out.extend(self.flush())
        if self.stats["utterances"] == before:
            raise InputError(f"no speech found in {mono.size / RATE:.2f} s of audio")
        return out

    # --------------------------------------------------------------------------- decisions

    def _finish(self, seg: Segment | None) -> list[VoiceCommand]:
        if seg is None:
            self._end_stream()
            return []
        self.stats["utterances"] += 1
        gate = self.segmenter.min_level_above_ambient_db
        why = ""
        if gate is not None and seg.level_db < seg.ambient_db + gate:
            why = f"speech {seg.level_db:.1f} dBFS vs ambient {seg.ambient_db:.1f} dBFS"
        elif (self._commander is not None and self.config.commander_drop_db >= 0
              and seg.start - self._commander[1] <= self.config.commander_memory_sec * RATE
              and seg.level_db < self._commander[0] - self.config.commander_drop_db):
            why = (f"speech {seg.level_db:.1f} dBFS, {self._commander[0] - seg.level_db:.1f} dB below the last "
                   f"command ({self._commander[0]:.1f} dBFS)")
        if why:
            self._end_stream()
            transcript = Transcript(text="", confidence=0.0, start_ns=self._stamp(seg.start),
                                    end_ns=self._stamp(seg.end), accepted=False, reason="too quiet",
                                    backend=self.backend.name, decode_sec=0.0, warnings=(why,))
            self._record(transcript)
            return []
        warnings = []
        frac = clipped_fraction(seg.audio)
        if frac >= CLIP_FRACTION:
            warnings.append(f"clipped: {100 * frac:.1f} % of samples at full scale")
            self.stats["clipped"] += 1
        if seg.truncated:
            warnings.append("cut at max_utterance_sec")
        if self._decoding:
            hyp: Hypothesis = self.backend.end()
            self._decoding = False
        else:
            spec, self._speculation = self._speculation, None
            if spec is not None and spec[0] == (seg.start, seg.end):
                job = spec[1]  # no speech since the guess began: it is this utterance
                self.stats["speculation_hits"] += 1
            else:
                if spec is not None:
                    spec[1].cancel()
                job = self._submit(seg.audio)
            hyp = job.future.result()
        self.decode_sec += hyp.decode_sec
        transcript = self._decide(hyp, self._stamp(seg.start), self._stamp(seg.end), tuple(warnings))
        self._record(transcript)
        if transcript.command is None:
            return []
        self.stats["commands"] += 1
        self._commander = (seg.level_db, seg.end)
        return [transcript.command]

    def _record(self, transcript: Transcript) -> None:
        self.transcripts.append(transcript)
        self.stats[f"reason:{transcript.reason}"] += 1
        if self.on_transcript is not None:
            self.on_transcript(transcript)

    def _decide(self, hyp: Hypothesis, start_ns: int, end_ns: int, warnings: tuple[str, ...]) -> Transcript:
        cfg = self.config
        text = hyp.text
        common = {"text": text, "confidence": hyp.confidence, "start_ns": start_ns, "end_ns": end_ns,
                      "backend": self.backend.name, "decode_sec": hyp.decode_sec, "warnings": warnings}
        if not text:
            return Transcript(accepted=False, reason="no words", **common)
        command = text
        if self.wake:
            if command != self.wake and not command.startswith(self.wake + " "):
                return Transcript(accepted=False, reason="no wake phrase", **common)
            command = command[len(self.wake):].strip()
        mode = cfg.match or "grammar"
        if not command:
            ok = False
        elif mode == "grammar":
            ok = self.vocabulary.matches(command)
        elif mode == "vocabulary":
            ok = self.vocabulary.mentions(command)
        else:
            ok = True
        if not ok:
            return Transcript(accepted=False, reason="not a command", **common)
        if hyp.confidence < self.confidence_threshold:
            return Transcript(accepted=False, reason="low confidence", **common)
        cmd = VoiceCommand(command, float(hyp.confidence), start_ns, end_ns)
        return Transcript(accepted=True, reason="accepted", command=cmd, **common)

    def diagnostics(self) -> dict[str, float | int | str]:
        """Counters for ``/diagnostics``: chunks, audio seconds, utterances, commands, rejections
        by reason, clipped utterances, stream gaps, VAD and decode seconds, backend name."""
        out: dict[str, float | int | str] = {k: v for k, v in self.stats.items() if k != "busy_ns"}
        out["audio_sec"] = round(self.stats["windows"] * WINDOW / RATE, 3)
        out["vad_sec"] = round(self.vad_sec, 4)
        out["decode_sec"] = round(self.decode_sec, 4)
        out["backend"] = self.backend.name
        return out
