"""Speech recognisers behind one interface: pocketsphinx with the command grammar, pocketsphinx
with its general language model, and Whisper from a local model directory.

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

BACKENDS = ("grammar", "pocketsphinx", "whisper")
"""Names accepted by :func:`build_backend`."""

SAMPLE_RATE = 16000
"""Rate (Hz) of the audio every backend takes."""


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


class _Stream:
    """One pocketsphinx decoder used utterance by utterance, whole or fed incrementally."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
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
    fraction of a second remains to decode when the utterance ends."""

    name = ""
    constrained = False

    def __init__(self) -> None:
        self._streams: list[_Stream] = []
        self._t = 0.0

    def begin(self) -> None:
        """Start an utterance (streaming)."""
        self._t = 0.0
        for s in self._streams:
            s.begin()

    def feed(self, samples_16k: np.ndarray) -> None:
        """Decode the next samples of the utterance: float32 (N,) 16 kHz mono."""
        t0 = time.perf_counter()
        x = np.asarray(samples_16k, np.float32)
        for s in self._streams:
            s.feed(x)
        self._t += time.perf_counter() - t0

    def cancel(self) -> None:
        """Abandon the utterance in progress."""
        for s in self._streams:
            s.cancel()

    def reset(self) -> None:
        """Restore the initial cepstral mean (and abandon the utterance in progress).

        pocketsphinx's live cepstral mean normalisation adapts from utterance to utterance; its
        initial value (the acoustic model's ``cmninit``) fits the first utterances of a stream
        poorly (measured on the voice benchmark: 40 % exact match at 20 dB when it is restored
        before every scene, against 75 % when it carries over), so the recogniser keeps it
        across streams and calls this only when asked (:meth:`VoiceCommandRecognizer.reset`
        with ``adaptation=True``)."""
        for s in self._streams:
            s.reset()

    def end(self) -> Hypothesis:
        """Finish the utterance; ``decode_sec`` counts the feeding too."""
        t0 = time.perf_counter()
        hyp = self._result()
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
                 reject_scale: float = 0.3, garbage: bool = True, cmn: str = "live") -> None:
        super().__init__()
        ps = _import_pocketsphinx()
        if not reject_scale > 0:
            raise ConfigError(f"reject_scale must be > 0, got {reject_scale!r}")
        self.vocabulary = vocabulary
        self.reject_margin = float(reject_margin)
        self.reject_scale = float(reject_scale)
        # bestpath off: the lattice best path of pocketsphinx's FSG search drops words; dither
        # (in _new_decoder): digital silence (exact zeros, as in synthesised speech) otherwise
        # skews the features; live CMN: the utterance is fed incrementally
        kwargs = {"lm": None, "beam": beam, "bestpath": False, "cmn": cmn, "hmm": hmm, "dict": dictionary}
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
        self._streams = [_Stream(decoder)]
        if garbage:
            gd = _new_decoder(ps, "the acoustic model", **kwargs)
            for p in PHONES:
                gd.add_word(f"phone_{p.lower()}", p, False)
            loop = ("#JSGF V1.0;\ngrammar garbage;\npublic <garbage> = ( "
                    + " | ".join(f"phone_{p.lower()}" for p in PHONES) + " )+;\n")
            gd.add_jsgf_string("garbage", loop)
            gd.activate_search("garbage")
            self._streams.append(_Stream(gd))

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
                  **kwargs) -> AsrBackend:
    """Create a backend by name.

    Args:
        name: one of :data:`BACKENDS`.
        vocabulary: the command vocabulary (grammar for ``grammar``; extra pronunciations for
            ``pocketsphinx``).
        wake_phrase: optional wake phrase (grammar backend: optional leading words).
        whisper_dir: local Whisper model directory (``whisper`` only).
        **kwargs: passed to the backend's constructor.

    Raises:
        ConfigError: unknown name. Backend constructors raise as documented there.
    """
    if name == "grammar":
        return GrammarBackend(vocabulary, wake_phrase, **kwargs)
    if name == "pocketsphinx":
        return PocketsphinxLMBackend(extra_pronunciations=vocabulary.pronunciations, **kwargs)
    if name == "whisper":
        return WhisperBackend(whisper_dir, **kwargs)
    raise ConfigError(f"unknown voice backend {name!r}; expected one of {BACKENDS}")
