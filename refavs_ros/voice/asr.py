"""Speech recognisers behind one interface: pocketsphinx with the command grammar, pocketsphinx
with its general language model, and Whisper from a local model directory; the default,
Moonshine searched inside the grammar (``moonshine``), lives in :mod:`refavs_ros.voice.moonshine`
and is built by :func:`build_backend` too.

Every backend takes one utterance (16 kHz mono float32 in [-1, 1], as cut by the voice activity
detector) and returns a :class:`Hypothesis`: normalised text and a confidence in [0, 1].

* ``grammar`` (:class:`GrammarBackend`): pocketsphinx 5 (CMU, BSD licence; PyPI
  ``pocketsphinx``) with its bundled US-English acoustic model and CMUdict, searching ONLY the
  sentences of the command grammar (:meth:`Vocabulary.to_jsgf`, JSGF). A grammar always
  yields its closest sentence, even for speech that is no command, so the same audio is also
  decoded with a free phone loop (a "garbage" model: any sequence of the 39 CMUdict phones);
  the confidence is a logistic function of the per-frame log-score ratio of the two paths
  (the classic filler-model likelihood-ratio test of keyword spotting, e.g. Rose & Paul,
  ICASSP 1990): speech that the grammar explains about as well as free phones do is a command.
  Cepstral mean normalisation per utterance (``cmn="utterance"``, the default): the mean is
  estimated from the utterance itself while it is spoken and decoding trails the audio by
  ``cmn_lag_sec`` (see :class:`CmnEstimator`), which approximates pocketsphinx's batch CMN
  (the acoustic model was trained with ``-cmn batch``) while staying streaming.
* ``pocketsphinx`` (:class:`PocketsphinxLMBackend`): the same decoder with the bundled general
  trigram language model (``en-us.lm.bin``); open vocabulary, weak on synthetic speech.
* ``whisper`` (:class:`WhisperBackend`): transformers ``WhisperForConditionalGeneration`` +
  ``WhisperProcessor`` loaded from a LOCAL directory (``save_pretrained`` layout; nothing is
  downloaded). Confidence: exp of the mean log-probability of the generated tokens.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from refavs_ros.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
)
from refavs_ros.voice.vocabulary import Vocabulary, normalise_text

BACKENDS = ("fusion", "grammar", "moonshine", "pocketsphinx", "whisper")
"""Names accepted by :func:`build_backend`."""

CMN_MODES = ("utterance", "live", "batch")
"""Cepstral mean normalisation modes of :class:`GrammarBackend`."""

SAMPLE_RATE = 16000
"""Rate (Hz) of the audio every backend takes."""


class RecognitionCancelled(Exception):
    """Raised by a backend's ``transcribe(samples, cancel=event)`` (backends with
    ``cancellable = True``) when ``event`` is set while it works: the recogniser no longer wants
    that result (a speculative guess that more speech made stale), so the worker is free for
    the next one sooner."""


@dataclass(frozen=True)
class Hypothesis:
    """What a backend heard in one utterance.

    Attributes:
        text: normalised transcript (:func:`normalise_text`), "" when nothing was recognised.
        confidence: in [0, 1]; 0 when ``text`` is empty.
        words: ``(word, posterior)`` per recognised word (posterior in [0, 1]; the token
            probability for Whisper sub-words is folded into the whole text's confidence, and
            ``words`` is empty there).
        decode_sec: wall-clock time (s) the backend spent on the utterance.
    """

    text: str
    confidence: float
    words: tuple[tuple[str, float], ...] = ()
    decode_sec: float = 0.0


class AsrBackend(Protocol):
    """One utterance in, one :class:`Hypothesis` out.

    Attributes:
        name: backend name (one of :data:`BACKENDS`).
        constrained: True when every non-empty transcript is a sentence of the command grammar.
    """

    name: str
    constrained: bool

    def transcribe(self, samples_16k: np.ndarray) -> Hypothesis:
        """Recognise one utterance: float32 (N,) 16 kHz mono in [-1, 1]."""
        ...


def _check_utterance(samples_16k: np.ndarray) -> np.ndarray:
    x = np.asarray(samples_16k)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"utterance must be float (N,) 16 kHz mono, got {x.dtype} {x.shape}")
    if x.size == 0:
        raise InputError("utterance has no samples")
    if not np.all(np.isfinite(x)):
        raise InputError(f"utterance contains {int((~np.isfinite(x)).sum())} NaN/inf samples")
    return x.astype(np.float32, copy=False)


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


_ALT_PRON = re.compile(r"\(\d+\)$")


def _import_pocketsphinx():
    try:
        import pocketsphinx
    except ImportError:
        raise BackendUnavailableError(
            "the 'grammar' and 'pocketsphinx' voice backends need pocketsphinx>=5 "
            "(pip install 'refavs_ros[voice]')") from None
    return pocketsphinx


def _dictionary_variants(decoder, word: str) -> list[str]:
    """Pronunciations of ``word`` in a pocketsphinx decoder's dictionary (``word``, ``word(2)``...)."""
    out = []
    k = 1
    while True:
        phones = decoder.lookup_word(word if k == 1 else f"{word}({k})")
        if phones is None:
            return out
        out.append(phones)
        k += 1


def _add_pronunciations(decoder, words: set[str], vocabulary: Vocabulary) -> list[str]:
    """Add the vocabulary's pronunciations of ``words`` to a decoder; return words still unknown."""
    missing = []
    for w in sorted(words):
        known = _dictionary_variants(decoder, w)
        extra = [p for p in vocabulary.pronunciation_list(w) if p not in known]
        if not known and not extra:
            missing.append(w)
            continue
        for phones in extra:
            k = len(known) + 1
            decoder.add_word(w if k == 1 else f"{w}({k})", phones, False)
            known.append(phones)
    return missing


def _new_decoder(ps, what: str, **kwargs):
    for key in ("hmm", "dict", "lm"):
        if kwargs.get(key) is not None and not Path(kwargs[key]).exists():
            raise ModelLoadError(f"pocketsphinx {key} {str(kwargs[key])!r} does not exist")
    try:
        return ps.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", dither=True, **kwargs)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"pocketsphinx could not load {what} ({kwargs.get('hmm') or 'bundled en-us'}): "
                             f"{exc}") from None


CMN_PRIOR_FRAMES = 500
"""Weight (frames) of the prior mean in pocketsphinx's live CMN (``CMN_WIN`` of cmn_live.c):
after ``set_cmn(m)`` the running sum is ``500 * m`` over 500 frames."""
FRAME_LEN = 410
"""Samples per analysis window of the en-us front end at 16 kHz (``-wlen 0.025625``)."""
FRAME_SHIFT = 160
"""Samples per frame step (``-frate 100``)."""


def _frames(n_samples: int) -> int:
    """Frames pocketsphinx's live front end has produced after ``n_samples`` of one utterance."""
    return 0 if n_samples < FRAME_LEN else (n_samples - FRAME_LEN) // FRAME_SHIFT + 1


def _cmn_str(mean: np.ndarray) -> str:
    return ",".join(f"{v:.5f}" for v in mean)


def _cmn_vec(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split(",")], np.float64)


class CmnEstimator:
    """Running cepstral mean of the utterance so far, from pocketsphinx's own front end.

    pocketsphinx 5 exposes no cepstra to Python, only the live-CMN mean (``get_cmn``), which
    after ``set_cmn(ref)`` and a block of ``b`` frames with cepstral sum ``S`` updates to
    ``(500 * ref + S) / (500 + b)`` (cmn_live.c). A scratch decoder (front end only, its
    search never runs while the utterance lasts) is fed the utterance block by block; each
    block's ``S`` is recovered from that formula, so the mean of every frame so far is exact up
    to the printed precision (6 significant digits). Cost: the front end (about 1 ms of CPU
    per second of audio) and, once per utterance, a trivial one-word search when it closes.

    Args:
        decoder: a pocketsphinx ``Decoder`` with the same acoustic model and front-end settings
            as the decoders whose CMN is set from this estimate.
    """

    def __init__(self, decoder, fresh_noise: bool = False) -> None:
        self.decoder = decoder
        self.fresh_noise = fresh_noise
        decoder.add_word("cmnscratch", "SH", False)
        decoder.add_jsgf_string("scratch", "#JSGF V1.0;\ngrammar scratch;\npublic <s> = cmnscratch;\n")
        decoder.activate_search("scratch")
        self.active = False
        self.frames = 0
        self._samples = 0
        self._sum: np.ndarray | None = None
        self._ref = _cmn_vec(decoder.get_cmn(False))

    def begin(self, prior: np.ndarray | None = None) -> None:
        """Start an utterance (closes the previous one); ``prior``: reference mean (13,)."""
        self.close()
        if self.fresh_noise:
            self.decoder.start_stream()
        self.decoder.start_utt()
        self.active = True
        self.frames = 0
        self._samples = 0
        self._sum = None
        if prior is not None:
            self._ref = np.asarray(prior, np.float64)

    def add(self, pcm: bytes, n_samples: int) -> None:
        """Feed the next ``n_samples`` of the utterance (int16 little-endian bytes)."""
        if not self.active:
            self.begin()
        before = _frames(self._samples)
        self._samples += n_samples
        b = _frames(self._samples) - before
        ref = self.mean() if self.frames else self._ref
        self.decoder.set_cmn(_cmn_str(ref))
        self.decoder.process_raw(pcm, True, False)
        if b <= 0:
            return
        updated = _cmn_vec(self.decoder.get_cmn(True))
        block = (CMN_PRIOR_FRAMES + b) * updated - CMN_PRIOR_FRAMES * ref
        self._sum = block if self._sum is None else self._sum + block
        self.frames += b

    def mean(self) -> np.ndarray:
        """Cepstral mean (13,) of the frames so far; the reference mean before any frame."""
        if not self.frames or self._sum is None:
            return self._ref.copy()
        return self._sum / self.frames

    def close(self) -> None:
        """End the scratch utterance (runs its trivial search over the buffered frames)."""
        if self.active:
            self.decoder.end_utt()
            self.active = False


class _Stream:
    """One pocketsphinx decoder used utterance by utterance, whole or fed incrementally."""

    def __init__(self, decoder, fresh_noise: bool = False) -> None:
        self.decoder = decoder
        self.fresh_noise = fresh_noise
        self.active = False
        self.initial_cmn = decoder.get_cmn(False)

    def reset(self) -> None:
        """Abandon the utterance and restore the initial cepstral mean (live CMN adapts from
        utterance to utterance; a new stream starts from the model's default)."""
        self.cancel()
        self.decoder.set_cmn(self.initial_cmn)

    def begin(self) -> None:
        if self.active:
            self.decoder.end_utt()
        if self.fresh_noise:
            self.decoder.start_stream()  # resets only the noise-removal statistics
        self.decoder.start_utt()
        self.active = True

    def feed(self, x: np.ndarray) -> None:
        if not self.active:
            self.begin()
        self.decoder.process_raw(_pcm16(x), False, False)

    def end(self) -> tuple[str, float | None, tuple[tuple[str, float], ...], int]:
        """Finish the utterance: (text, natural-log path score or None, word posteriors, frames)."""
        d = self.decoder
        if not self.active:
            return "", None, (), 0
        d.end_utt()
        self.active = False
        hyp = d.hyp()
        words: list[tuple[str, float]] = []
        if hyp is None or not hyp.hypstr:
            return "", None, (), d.n_frames()
        for seg in d.seg():
            w = seg.word
            if not w or w[0] in "<[+(":
                continue  # <s>, </s>, <sil>, [NOISE], +BREATH+, (NULL) ... fillers
            words.append((_ALT_PRON.sub("", w).lower(), float(np.clip(seg.prob, 0.0, 1.0))))
        text = normalise_text(" ".join(w for w, _ in words))
        score = float(np.log(hyp.score)) if hyp.score > 0 else None
        return text, score, tuple(words), d.n_frames()

    def cancel(self) -> None:
        if self.active:
            self.decoder.end_utt()
            self.active = False


class _SphinxBase:
    """pocketsphinx decoding of one utterance, whole (:meth:`transcribe`) or streamed
    (:meth:`begin`, :meth:`feed` while the person speaks, :meth:`end`), so only the last
    fraction of a second remains to decode when the utterance ends.

    With a :class:`CmnEstimator` (``_cmn``), decoding trails the newest audio by ``_lag``
    samples and every decoder's cepstral mean is set to the estimate of the utterance so far
    (at the start of decoding and then every ``_update`` samples): each frame is normalised
    with a mean that has seen at least ``_lag`` samples beyond it, the whole utterance for its
    last ``_lag`` samples, as batch CMN would. ``end`` then decodes the last ``_lag`` samples."""

    name = ""
    constrained = False

    def __init__(self) -> None:
        self._streams: list[_Stream] = []
        self._t = 0.0
        self._cmn: CmnEstimator | None = None
        self._lag = 0
        self._update = 0
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self._buf: list[np.ndarray] = []
        self._n = 0  # samples of the utterance received
        self._fed = 0  # samples handed to the decoders
        self._last_set = 0  # samples received when the mean was last set
        self._decoding = False

    def begin(self) -> None:
        """Start an utterance (streaming)."""
        self._t = 0.0
        self._reset_utterance()
        if self._cmn is None:
            for s in self._streams:
                s.begin()
            self._decoding = True
        else:
            self._cmn.begin()

    def _set_cmn(self) -> None:
        mean = _cmn_str(self._cmn.mean())
        for s in self._streams:
            s.decoder.set_cmn(mean)
        self._last_set = self._n

    def _pending(self) -> np.ndarray:
        x = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf = [x]
        return x

    def _advance(self, final: bool) -> None:
        """Estimate, set the mean and feed the decoders what the lag allows (all when final)."""
        if not self._decoding and (final or self._n >= self._lag):
            self._set_cmn()
            for s in self._streams:
                s.begin()
            self._decoding = True
        elif self._decoding and (final or self._n - self._last_set >= self._update):
            self._set_cmn()
        if not self._decoding:
            return
        upto = self._n if final else self._n - self._lag
        if upto > self._fed and self._buf:
            x = self._pending()
            start = self._fed - (self._n - x.size)
            chunk = x[start : start + upto - self._fed]
            for s in self._streams:
                s.feed(chunk)
            self._fed = upto
            self._buf = [x[start + chunk.size :]] if start + chunk.size < x.size else []

    def feed(self, samples_16k: np.ndarray) -> None:
        """Decode the next samples of the utterance: float32 (N,) 16 kHz mono."""
        t0 = time.perf_counter()
        x = np.asarray(samples_16k, np.float32)
        if self._cmn is None:
            if not self._decoding:
                self.begin()
            for s in self._streams:
                s.feed(x)
        elif x.size:
            if not self._cmn.active:
                self.begin()
            self._cmn.add(_pcm16(x), x.size)
            self._buf.append(x)
            self._n += x.size
            self._advance(final=False)
        self._t += time.perf_counter() - t0

    def cancel(self) -> None:
        """Abandon the utterance in progress."""
        for s in self._streams:
            s.cancel()
        if self._cmn is not None:
            self._cmn.close()
        self._reset_utterance()

    def reset(self) -> None:
        """Restore the initial cepstral mean (and abandon the utterance in progress).

        pocketsphinx's live cepstral mean normalisation adapts from utterance to utterance; its
        initial value (the acoustic model's ``cmninit``) fits the first utterances of a stream
        poorly (measured on the voice benchmark with ``cmn="live"``: 40 % exact match at 20 dB
        when it is restored before every scene, against 75 % when it carries over), so the
        recogniser keeps it across streams and calls this only when asked
        (:meth:`VoiceCommandRecognizer.reset` with ``adaptation=True``). With the per-utterance
        mean (``cmn="utterance"``) the carried-over mean only serves as a reference value."""
        self.cancel()
        for s in self._streams:
            s.reset()

    def end(self) -> Hypothesis:
        """Finish the utterance; ``decode_sec`` counts the feeding too."""
        t0 = time.perf_counter()
        if self._cmn is not None:
            if self._n:
                self._advance(final=True)
            self._cmn.close()
        hyp = self._result()
        self._reset_utterance()
        return Hypothesis(hyp.text, hyp.confidence, hyp.words, self._t + time.perf_counter() - t0)

    def _result(self) -> Hypothesis:
        text, _, words, _ = self._streams[0].end()
        conf = float(np.mean([p for _, p in words])) if words and text else 0.0
        return Hypothesis(text, conf, words)

    def transcribe(self, samples_16k: np.ndarray) -> Hypothesis:
        """Recognise one utterance.

        Args:
            samples_16k: float32 (N,) 16 kHz mono in [-1, 1], N > 0.

        Returns:
            The :class:`Hypothesis` (text "" when the decoder found no word).

        Raises:
            InputError: empty, non-float, multi-channel or NaN/inf input.
        """
        x = _check_utterance(samples_16k)
        self.begin()
        self.feed(x)
        return self.end()


PHONES = ["AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH"]
"""The 39 phones of CMUdict / the pocketsphinx en-us acoustic model (the garbage loop)."""


class GrammarBackend(_SphinxBase):
    """pocketsphinx constrained to the command grammar (the default backend).

    Confidence: ``1 / (1 + exp(-(r - reject_margin) / reject_scale))`` with ``r`` the
    per-frame log-score ratio (x 1000, natural log of pocketsphinx's scaled path scores)
    between the grammar path and a free phone loop decoded from the same audio; 0.5 at
    ``r = reject_margin``.

    Args:
        vocabulary: the command vocabulary (its JSGF grammar is searched).
        wake_phrase: optional leading phrase, optional in the grammar (see
            :meth:`Vocabulary.to_jsgf`).
        hmm: acoustic model directory; None = pocketsphinx's bundled ``en-us``.
        dictionary: pronunciation dictionary file; None = the bundled ``cmudict-en-us.dict``.
        beam: pocketsphinx ``beam`` (log-probability pruning, smaller keeps more paths).
        reject_margin: log-score ratio at which the confidence is 0.5 (see above).
        reject_scale: its spread (> 0).
        garbage: decode the phone loop too (False: confidence = mean word posterior of the
            lattice, which does not tell commands from other speech).
        cmn: cepstral mean normalisation: ``"utterance"`` (default; the mean of the utterance
            itself, estimated while it is spoken, :class:`CmnEstimator`), ``"live"``
            (pocketsphinx's running mean carried over from earlier utterances) or ``"batch"``
            (pocketsphinx's own: the utterance is only decoded once complete, so all of the
            decoding happens after it ends; for offline use).
        cmn_lag_sec: ``"utterance"`` only: how far (s) decoding trails the newest audio, 0..2.
            Measured on 60 spoken-command scenes: 0.5 s keeps the accuracy of batch CMN,
            0.3 s loses 3-5 points at 10-20 dB SNR. The lag is decoded after the utterance
            ends (about 40 ms of CPU for 0.5 s with the phone loop).
        cmn_update_sec: ``"utterance"`` only: how often (s of audio) the mean is updated, > 0.
        topn: Gaussians per mixture scored per frame (pocketsphinx ``topn``; the bundled
            model's default is 4; 8 measured 2-5 points better in noise at about 10 % more CPU).

    Raises:
        BackendUnavailableError: pocketsphinx is not installed.
        ConfigError: grammar words without a pronunciation (listed), a grammar pocketsphinx
            rejects, or a bad ``reject_scale``.
        ModelLoadError: the acoustic model or dictionary cannot be loaded (path named).
    """

    name = "grammar"
    constrained = True

    def __init__(self, vocabulary: Vocabulary, wake_phrase: str = "", *, hmm: str | None = None,
                 dictionary: str | None = None, beam: float = 1e-48, reject_margin: float = 0.3,
                 reject_scale: float = 0.3, garbage: bool = True, cmn: str = "utterance",
                 cmn_lag_sec: float = 0.5, cmn_update_sec: float = 0.2, topn: int = 8,
                 fresh_noise_stats: bool = False) -> None:
        super().__init__()
        ps = _import_pocketsphinx()
        if not reject_scale > 0:
            raise ConfigError(f"reject_scale must be > 0, got {reject_scale!r}")
        if cmn not in CMN_MODES:
            raise ConfigError(f"cmn must be one of {CMN_MODES}, got {cmn!r}")
        if not 0.0 <= float(cmn_lag_sec) <= 2.0:
            raise ConfigError(f"cmn_lag_sec must be in [0, 2] s, got {cmn_lag_sec!r}")
        if not float(cmn_update_sec) > 0.0:
            raise ConfigError(f"cmn_update_sec must be > 0 s, got {cmn_update_sec!r}")
        if isinstance(topn, bool) or not isinstance(topn, int) or not 1 <= topn <= 64:
            raise ConfigError(f"topn must be an int in 1..64, got {topn!r}")
        self.vocabulary = vocabulary
        self.reject_margin = float(reject_margin)
        self.reject_scale = float(reject_scale)
        # bestpath off: the lattice best path of pocketsphinx's FSG search drops words; dither
        # (in _new_decoder): digital silence (exact zeros, as in synthesised speech) otherwise
        # skews the features; live CMN: the utterance is fed incrementally
        self.cmn = cmn
        self.streaming = cmn != "batch"  # batch CMN needs the whole utterance
        kwargs = {"lm": None, "beam": beam, "bestpath": False, "cmn": "live" if cmn == "utterance" else cmn,
                  "hmm": hmm, "dict": dictionary, "topn": topn}
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "lm"}
        decoder = _new_decoder(ps, "the acoustic model", **kwargs)
        missing = _add_pronunciations(decoder, set(vocabulary.words()) | set(normalise_text(wake_phrase).split()),
                                      vocabulary)
        if missing:
            raise ConfigError(f"voice vocabulary {vocabulary.source or ''}: no pronunciation for {missing}; "
                              "add them under 'pronunciations' (ARPAbet)")
        self.jsgf = vocabulary.to_jsgf(wake_phrase)
        try:
            decoder.add_jsgf_string("commands", self.jsgf)
            decoder.activate_search("commands")
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"pocketsphinx rejected the command grammar: {exc}") from None
        self._streams = [_Stream(decoder, fresh_noise_stats)]
        if garbage:
            gd = _new_decoder(ps, "the acoustic model", **kwargs)
            for p in PHONES:
                gd.add_word(f"phone_{p.lower()}", p, False)
            loop = ("#JSGF V1.0;\ngrammar garbage;\npublic <garbage> = ( "
                    + " | ".join(f"phone_{p.lower()}" for p in PHONES) + " )+;\n")
            gd.add_jsgf_string("garbage", loop)
            gd.activate_search("garbage")
            self._streams.append(_Stream(gd, fresh_noise_stats))
        if cmn == "utterance":
            self._cmn = CmnEstimator(_new_decoder(ps, "the acoustic model", **kwargs), fresh_noise_stats)
            self._lag = round(float(cmn_lag_sec) * SAMPLE_RATE)
            self._update = max(1, round(float(cmn_update_sec) * SAMPLE_RATE))

    def transcribe(self, samples_16k: np.ndarray) -> Hypothesis:
        """Recognise one whole utterance (see :meth:`_SphinxBase.transcribe`); with
        ``cmn="batch"`` pocketsphinx normalises it as a whole (``full_utt``)."""
        if self.cmn != "batch":
            return super().transcribe(samples_16k)
        x = _check_utterance(samples_16k)
        t0 = time.perf_counter()
        pcm = _pcm16(x)
        for st in self._streams:
            st.begin()
            st.decoder.process_raw(pcm, False, True)
        hyp = self._result()
        return Hypothesis(hyp.text, hyp.confidence, hyp.words, time.perf_counter() - t0)

    def _result(self) -> Hypothesis:
        text, score, words, frames = self._streams[0].end()
        if len(self._streams) == 1:
            conf = float(np.mean([p for _, p in words])) if words and text else 0.0
            return Hypothesis(text, conf, words)
        _, gscore, _, _ = self._streams[1].end()
        if not text or score is None:
            return Hypothesis(text, 0.0, words)
        if gscore is None or frames <= 0:
            return Hypothesis(text, 1.0, words)
        ratio = 1000.0 * (score - gscore) / frames
        z = float(np.clip((ratio - self.reject_margin) / self.reject_scale, -50.0, 50.0))
        return Hypothesis(text, float(1.0 / (1.0 + np.exp(-z))), words)


class PocketsphinxLMBackend(_SphinxBase):
    """pocketsphinx with its general US-English trigram language model (open vocabulary).

    Args:
        lm: language model file; None = the bundled ``en-us.lm.bin``.
        hmm, dictionary: as :class:`GrammarBackend`.
        extra_pronunciations: word -> ARPAbet phones added to the dictionary.

    Raises:
        BackendUnavailableError: pocketsphinx is not installed.
        ModelLoadError: a model file is missing (named) or cannot be loaded.
    """

    name = "pocketsphinx"
    constrained = False

    def __init__(self, *, lm: str | None = None, hmm: str | None = None, dictionary: str | None = None,
                 extra_pronunciations: dict[str, str | list[str]] | None = None) -> None:
        super().__init__()
        ps = _import_pocketsphinx()
        kwargs = {k: str(v) for k, v in (("lm", lm), ("hmm", hmm), ("dict", dictionary)) if v is not None}
        decoder = _new_decoder(ps, "its language model", cmn="live", **kwargs)
        for w, value in (extra_pronunciations or {}).items():
            known = _dictionary_variants(decoder, w)
            for phones in value if isinstance(value, list) else [value]:
                if phones not in known:
                    k = len(known) + 1
                    decoder.add_word(w if k == 1 else f"{w}({k})", phones, False)
                    known.append(phones)
        self._streams = [_Stream(decoder)]


class WhisperBackend:
    """Whisper (transformers) from a local model directory, greedy decoding, English.

    Args:
        model_dir: directory written by ``save_pretrained`` of ``WhisperForConditionalGeneration``
            and ``WhisperProcessor`` (config.json, weights, tokenizer and preprocessor files).
        language: language token for multilingual checkpoints ("en"); None = the checkpoint's
            default (English-only checkpoints ignore it).
        max_new_tokens: generation limit (tokens), 1..440.
        device: torch device ("cpu", "cuda").
        num_threads: torch intra-op threads while decoding; None leaves torch's setting.

    Raises:
        ModelLoadError: the directory does not exist or does not hold a loadable Whisper
            model / processor (the directory is named).
        ConfigError: bad ``max_new_tokens``.
    """

    name = "whisper"
    constrained = False

    def __init__(self, model_dir: str | Path, *, language: str | None = "en", max_new_tokens: int = 64,
                 device: str = "cpu", num_threads: int | None = None) -> None:
        p = Path(model_dir) if model_dir else None
        if p is None or not p.is_dir():
            raise ModelLoadError(f"Whisper model directory {str(model_dir)!r} does not exist "
                                 "(give a local directory written by save_pretrained; nothing is downloaded)")
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"Whisper model directory {str(p)!r} has no config.json")
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 440:
            raise ConfigError(f"max_new_tokens must be an int in 1..440, got {max_new_tokens!r}")
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        try:
            self.processor = WhisperProcessor.from_pretrained(str(p), local_files_only=True)
            self.model = WhisperForConditionalGeneration.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"cannot load a Whisper model and processor from {str(p)!r}: {exc}") from None
        self.model.eval().to(device)
        self.device = device
        self.language = language
        # the prompt (start, language, task, no-timestamps tokens) shares the decoder's positions
        limit = int(getattr(self.model.config, "max_target_positions", 448)) - 4
        self.max_new_tokens = max(1, min(max_new_tokens, limit))
        self.num_threads = num_threads
        self._torch = torch
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))

    def transcribe(self, samples_16k: np.ndarray) -> Hypothesis:
        """Recognise one utterance (at most 30 s; Whisper's window).

        Args:
            samples_16k: float32 (N,) 16 kHz mono in [-1, 1], N > 0.

        Returns:
            The :class:`Hypothesis`; ``words`` is empty (sub-word tokens).

        Raises:
            InputError: empty, non-float or NaN/inf input.
        """
        x = _check_utterance(samples_16k)
        torch = self._torch
        t0 = time.perf_counter()
        feats = self.processor(x, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features.to(self.device)
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1}
        if self.multilingual and self.language:
            kwargs.update(language=self.language, task="transcribe")
        old_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                seqs = self.model.generate(feats, **kwargs)
                if not isinstance(seqs, torch.Tensor):
                    seqs = seqs.sequences
                # token log-probabilities by one teacher-forced pass over the generated sequence
                logits = self.model(input_features=feats, decoder_input_ids=seqs[:, :-1]).logits
                logp = torch.log_softmax(logits.float(), dim=-1)[0]
        finally:
            if self.num_threads:
                torch.set_num_threads(old_threads)
        text = self.processor.batch_decode(seqs, skip_special_tokens=True)[0]
        special = set(self.processor.tokenizer.all_special_ids)
        targets = seqs[0, 1:].tolist()
        logps = [float(logp[i, tok]) for i, tok in enumerate(targets) if tok not in special]
        norm = normalise_text(text)
        conf = float(np.exp(np.mean(logps))) if logps and norm else 0.0
        return Hypothesis(norm, conf, (), time.perf_counter() - t0)


def build_backend(name: str, vocabulary: Vocabulary, *, wake_phrase: str = "", whisper_dir: str | Path = "",
                  moonshine_dir: str | Path = "", moonshine_threads: int = 1, rescore_dir: str | Path = "",
                  **kwargs) -> AsrBackend:
    """Create a backend by name.

    Args:
        name: one of :data:`BACKENDS`.
        vocabulary: the command vocabulary (grammar for ``grammar`` and ``moonshine``; extra
            pronunciations for ``pocketsphinx``).
        wake_phrase: optional wake phrase (grammar backends: optional leading words).
        whisper_dir: local Whisper model directory (``whisper`` only).
        moonshine_dir: Moonshine model directory (``moonshine`` and ``fusion``; "" = the
            default one, :func:`refavs_ros.voice.models.default_model_dir`).
        moonshine_threads: onnxruntime intra-op threads (``moonshine`` and ``fusion``).
        rescore_dir: the rescoring Moonshine-tiny directory (``fusion`` only; "" = the
            installed ``moonshine-tiny``).
        **kwargs: passed to the backend's constructor.

    Raises:
        ConfigError: unknown name. Backend constructors raise as documented there.
    """
    if name == "grammar":
        return GrammarBackend(vocabulary, wake_phrase, **kwargs)
    if name == "fusion":
        from refavs_ros.voice.fusion import FusionBackend

        return FusionBackend(vocabulary, moonshine_dir, rescore_dir=rescore_dir, wake_phrase=wake_phrase,
                             threads=moonshine_threads, **kwargs)
    if name == "moonshine":
        from refavs_ros.voice.moonshine import MoonshineBackend

        return MoonshineBackend(vocabulary, moonshine_dir, wake_phrase=wake_phrase, threads=moonshine_threads,
                                **kwargs)
    if name == "pocketsphinx":
        return PocketsphinxLMBackend(extra_pronunciations=vocabulary.pronunciations, **kwargs)
    if name == "whisper":
        return WhisperBackend(whisper_dir, **kwargs)
    raise ConfigError(f"unknown voice backend {name!r}; expected one of {BACKENDS}")
