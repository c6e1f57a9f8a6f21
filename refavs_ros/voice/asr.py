"""Speech recognisers behind one interface: pocketsphinx with the command grammar, pocketsphinx
with its general language model, and Whisper from a local model directory.

Every backend takes one utterance (16 kHz mono float32 in [-1, 1], as cut by the voice activity
detector) and returns a :class:`Hypothesis`: normalised text and a confidence in [0, 1].

* ``grammar`` (:class:`GrammarBackend`): pocketsphinx 5 (CMU, BSD licence; PyPI
  ``pocketsphinx``) with its bundled US-English acoustic model and CMUdict, searching ONLY the
  sentences of the command grammar (:meth:`Vocabulary.to_jsgf`, JSGF). Confidence: the mean
  posterior of the recognised words from pocketsphinx's word lattice.
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

from refavs_ros.errors import BackendUnavailableError, ConfigError, InputError, ModelLoadError
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


class _SphinxBase:
    """Shared pocketsphinx decoding: one utterance per call, word posteriors from the lattice."""

    name = ""
    constrained = False

    def _decode(self, samples_16k: np.ndarray) -> Hypothesis:
        x = _check_utterance(samples_16k)
        t0 = time.perf_counter()
        d = self._decoder
        d.start_utt()
        d.process_raw(_pcm16(x), no_search=False, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        words: list[tuple[str, float]] = []
        if hyp is not None and hyp.hypstr:
            for seg in d.seg():
                w = seg.word
                if not w or w[0] in "<[+(":
                    continue  # <s>, </s>, <sil>, [NOISE], +BREATH+, (NULL) ... fillers
                words.append((_ALT_PRON.sub("", w).lower(), float(np.clip(seg.prob, 0.0, 1.0))))
        text = normalise_text(" ".join(w for w, _ in words))
        conf = float(np.mean([p for _, p in words])) if words and text else 0.0
        return Hypothesis(text, conf, tuple(words), time.perf_counter() - t0)

    def transcribe(self, samples_16k: np.ndarray) -> Hypothesis:
        """Recognise one utterance.

        Args:
            samples_16k: float32 (N,) 16 kHz mono in [-1, 1], N > 0.

        Returns:
            The :class:`Hypothesis` (text "" when the decoder found no word).

        Raises:
            InputError: empty, non-float, multi-channel or NaN/inf input.
        """
        return self._decode(samples_16k)


class GrammarBackend(_SphinxBase):
    """pocketsphinx constrained to the command grammar (the default backend).

    Args:
        vocabulary: the command vocabulary (its JSGF grammar is searched).
        wake_phrase: optional leading phrase, optional in the grammar (see
            :meth:`Vocabulary.to_jsgf`).
        hmm: acoustic model directory; None = pocketsphinx's bundled ``en-us``.
        dictionary: pronunciation dictionary file; None = the bundled ``cmudict-en-us.dict``.
        beam: pocketsphinx ``beam`` (log-probability pruning, smaller keeps more paths).

    Raises:
        BackendUnavailableError: pocketsphinx is not installed.
        ConfigError: grammar words without a pronunciation (listed), or a grammar pocketsphinx
            rejects.
        ModelLoadError: the acoustic model or dictionary cannot be loaded (path named).
    """

    name = "grammar"
    constrained = True

    def __init__(self, vocabulary: Vocabulary, wake_phrase: str = "", *, hmm: str | None = None,
                 dictionary: str | None = None, beam: float = 1e-48) -> None:
        ps = _import_pocketsphinx()
        self.vocabulary = vocabulary
        kwargs = {"lm": None, "samprate": SAMPLE_RATE, "loglevel": "FATAL", "beam": beam, "bestpath": False,
                  "dither": True}
        if hmm is not None:
            kwargs["hmm"] = str(hmm)
        if dictionary is not None:
            kwargs["dict"] = str(dictionary)
        for key in ("hmm", "dict"):
            if key in kwargs and not Path(kwargs[key]).exists():
                raise ModelLoadError(f"pocketsphinx {key} {kwargs[key]!r} does not exist")
        try:
            self._decoder = ps.Decoder(**kwargs)
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"pocketsphinx could not load its model ({kwargs.get('hmm', 'bundled en-us')}): "
                                 f"{exc}") from None
        words = set(vocabulary.words()) | set(normalise_text(wake_phrase).split())
        missing = []
        for w in sorted(words):
            known = _dictionary_variants(self._decoder, w)
            extra = [p for p in vocabulary.pronunciation_list(w) if p not in known]
            if not known and not extra:
                missing.append(w)
                continue
            for phones in extra:
                k = len(known) + 1
                self._decoder.add_word(w if k == 1 else f"{w}({k})", phones, False)
                known.append(phones)
        if missing:
            raise ConfigError(f"voice vocabulary {vocabulary.source or ''}: no pronunciation for {missing}; "
                              "add them under 'pronunciations' (ARPAbet)")
        self.jsgf = vocabulary.to_jsgf(wake_phrase)
        try:
            self._decoder.add_jsgf_string("commands", self.jsgf)
            self._decoder.activate_search("commands")
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"pocketsphinx rejected the command grammar: {exc}") from None


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
                 extra_pronunciations: dict[str, str] | None = None) -> None:
        ps = _import_pocketsphinx()
        kwargs = {"samprate": SAMPLE_RATE, "loglevel": "FATAL", "dither": True}
        for key, value in (("lm", lm), ("hmm", hmm), ("dict", dictionary)):
            if value is not None:
                if not Path(value).exists():
                    raise ModelLoadError(f"pocketsphinx {key} {str(value)!r} does not exist")
                kwargs[key] = str(value)
        try:
            self._decoder = ps.Decoder(**kwargs)
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"pocketsphinx could not load its language model: {exc}") from None
        for w, value in (extra_pronunciations or {}).items():
            known = _dictionary_variants(self._decoder, w)
            for phones in value if isinstance(value, list) else [value]:
                if phones not in known:
                    k = len(known) + 1
                    self._decoder.add_word(w if k == 1 else f"{w}({k})", phones, False)
                    known.append(phones)


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
        self.max_new_tokens = max_new_tokens
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
        kwargs = {"max_new_tokens": self.max_new_tokens, "return_dict_in_generate": True, "output_scores": True,
                  "do_sample": False, "num_beams": 1}
        if self.multilingual and self.language:
            kwargs.update(language=self.language, task="transcribe")
        old_threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                out = self.model.generate(feats, **kwargs)
        finally:
            if self.num_threads:
                torch.set_num_threads(old_threads)
        seqs = out.sequences
        text = self.processor.batch_decode(seqs, skip_special_tokens=True)[0]
        # log-probabilities of the tokens actually generated (the last len(scores) of the sequence)
        scores = out.scores or ()
        logps = []
        gen = seqs[0, seqs.shape[1] - len(scores):]
        special = set(self.processor.tokenizer.all_special_ids)
        for step, tok in zip(scores, gen.tolist()):
            if tok in special:
                continue
            logps.append(float(torch.log_softmax(step[0].float(), dim=-1)[tok]))
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
