"""Moonshine (Useful Sensors, MIT licence) through onnxruntime, searched inside the command grammar.

Moonshine (Jeffries et al., "Moonshine: Speech Recognition for Live Transcription and Voice
Commands", arXiv:2410.15608, 2024) is an encoder-decoder transformer recogniser that reads raw
16 kHz audio (no 30-s padding: cost grows with the utterance). Its released ONNX export has two
graphs, ``encoder_model.onnx`` (``input_values`` float (B, N) -> ``last_hidden_state``
(B, T, d)) and ``decoder_model_merged.onnx`` (``input_ids``, ``encoder_hidden_states``,
``use_cache_branch`` and per-layer self/cross-attention ``past_key_values.{i}.{decoder|encoder}.
{key|value}`` (B, heads, S, head_dim) -> ``logits`` (B, L, 32768) and ``present.*``); start
token 1, end token 2, a LLaMA SentencePiece vocabulary (``tokenizer.json``). These are the
files ``refavs-voice-models fetch`` installs (:mod:`refavs_ros.voice.models`).

:class:`MoonshineBackend` (backend ``moonshine``) runs the encoder once per utterance, then one
batched decoder call per token: a beam search restricted to the grammar's sentences
(:func:`~refavs_ros.voice.grammar_search.constrained_beam_search`) gives the command, and one
more row decoding greedily without the grammar gives the reference score. The confidence is the likelihood
ratio per token, ``exp(min(0, (log p(command) - log p(greedy)) / n_tokens))`` in (0, 1]: 1 when
the model's own best guess is the command, near 0 when the speech is something else ("hello
there", a barking dog) that the grammar can only match badly.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from refavs_ros.errors import BackendUnavailableError, ConfigError, ModelLoadError
from refavs_ros.voice.asr import (
    SAMPLE_RATE,
    Hypothesis,
    RecognitionCancelled,
    _check_utterance,
)
from refavs_ros.voice.grammar_search import (
    SearchResult,
    TokenTrie,
    constrained_beam_search,
)
from refavs_ros.voice.vocabulary import Vocabulary, normalise_text

MODEL_FILES = ("encoder_model.onnx", "decoder_model_merged.onnx", "tokenizer.json")
"""Files a Moonshine model directory must hold."""

START_TOKEN = 1
EOS_TOKEN = 2

TOKENS_PER_SEC = 6.0
"""Token budget per second of audio, plus :data:`EXTRA_TOKENS` (the rule of Moonshine's own
reference decoder: speech has far fewer than 6 tokens per second)."""
EXTRA_TOKENS = 8


class MoonshineModel:
    """The two ONNX graphs and the tokenizer of one Moonshine model directory.

    Args:
        model_dir: directory with :data:`MODEL_FILES`.
        threads: onnxruntime intra-op threads (>= 1).

    Raises:
        ModelLoadError: the directory or a file is missing (named), or onnxruntime / tokenizers
            cannot load it.
        BackendUnavailableError: onnxruntime or tokenizers is not installed.
    """

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        p = Path(model_dir) if model_dir else None
        if p is None or not p.is_dir():
            raise ModelLoadError(f"Moonshine model directory {str(model_dir)!r} does not exist "
                                 "(install one with: refavs-voice-models fetch; nothing is downloaded at run time)")
        missing = [f for f in MODEL_FILES if not (p / f).is_file()]
        if missing:
            raise ModelLoadError(f"Moonshine model directory {str(p)!r} lacks {missing} "
                                 "(refavs-voice-models fetch writes them)")
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be an int >= 1, got {threads!r}")
        try:
            import onnxruntime as ort
            import tokenizers
        except ImportError as exc:
            raise BackendUnavailableError(f"the moonshine voice backend needs onnxruntime and tokenizers: {exc}") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.encoder = ort.InferenceSession(str(p / MODEL_FILES[0]), opts, providers=["CPUExecutionProvider"])
            self.decoder = ort.InferenceSession(str(p / MODEL_FILES[1]), opts, providers=["CPUExecutionProvider"])
            self.tokenizer = tokenizers.Tokenizer.from_file(str(p / MODEL_FILES[2]))
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own, undocumented exception types)
            raise ModelLoadError(f"cannot load the Moonshine model in {str(p)!r}: {exc}") from None
        kv = [i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        if not kv or len(kv) % 4 or not isinstance(kv[0].shape[1], int) or not isinstance(kv[0].shape[3], int):
            raise ModelLoadError(f"{str(p / MODEL_FILES[1])!r} is not a merged Moonshine decoder "
                                 "(no past_key_values inputs with fixed heads and head size)")
        self.heads = int(kv[0].shape[1])
        self.head_dim = int(kv[0].shape[3])
        self.kv_names = [i.name for i in kv]
        self.out_names = [o.name for o in self.decoder.get_outputs()]

    def encode(self, samples_16k: np.ndarray) -> np.ndarray:
        """Encoder states float32 (1, T, d) of float32 (N,) 16 kHz audio."""
        return self.encoder.run(None, {"input_values": samples_16k[None, :]})[0]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` (no start / end tokens)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids


class _Rows:
    """:class:`~refavs_ros.voice.grammar_search.StepDecoder` over one utterance's encoder states:
    the key/value caches of every row, reordered by ``parents`` at each step."""

    def __init__(self, model: MoonshineModel, states: np.ndarray, cancel: threading.Event | None = None) -> None:
        self.m = model
        self.states = states  # (1, T, d)
        self.cancel = cancel  # set -> the next advance() raises RecognitionCancelled
        self._shared: dict[int, dict[str, np.ndarray]] = {}  # rows -> the per-utterance inputs, repeated

    def begin(self) -> None:
        m = self.m
        self.past = {n: np.zeros((1, m.heads, 0, m.head_dim), np.float32) for n in m.kv_names}
        self.first = True
        self._shared = {}
        self.start_past: dict[str, np.ndarray] = {}  # self-attention caches after the start token (1 row)
        self.start_logp: np.ndarray | None = None  # (V,) log p(first token | start, audio)

    def _repeated(self, n: int) -> dict[str, np.ndarray]:
        """Encoder states and cross-attention caches (the same for every row) repeated for ``n``
        rows; kept per ``n`` (valid once the start step has filled the caches)."""
        shared = self._shared.get(n)
        if shared is None:
            shared = {"encoder_hidden_states": np.repeat(self.states, n, axis=0)}
            shared.update({k: np.repeat(v, n, axis=0) for k, v in self.past.items() if ".encoder." in k})
            self._shared[n] = shared
        return shared

    def advance(self, parents, tokens) -> np.ndarray:
        if self.cancel is not None and self.cancel.is_set():
            raise RecognitionCancelled("the recogniser cancelled this utterance")
        n = len(tokens)
        if self.first and n != 1:
            raise ValueError("the first step of a search has one row")
        idx = np.asarray(parents, np.int64)
        feed = {"input_ids": np.asarray(tokens, np.int64)[:, None],
                "use_cache_branch": np.array([not self.first])}
        if self.first:
            feed["encoder_hidden_states"] = self.states
            feed.update(self.past)
        else:
            feed.update(self._repeated(n))
            for name, v in self.past.items():
                if ".decoder." in name:  # self-attention cache (B_prev, heads, S, head_dim): each row's parent
                    feed[name] = v[idx]
        out = self.m.decoder.run(None, feed)
        for name, v in zip(self.m.out_names[1:], out[1:]):
            key = name.replace("present.", "past_key_values.", 1)
            if ".decoder." in key:
                self.past[key] = v
                if self.first:
                    self.start_past[key] = v
            elif self.first:
                self.past[key] = v[:1]
        logp = log_softmax(out[0][:, -1, :].astype(np.float64), axis=-1)
        if self.first:
            self.start_logp = logp[0]
        self.first = False
        return logp

    def score(self, sequences: list[list[int]]) -> np.ndarray:
        """Teacher-forced log-probabilities of whole token sequences (rescoring).

        Runs after :meth:`begin` and at least the first :meth:`advance` (the start token),
        whose caches it reuses: one batched decoder call scores every sequence, end token
        included, without recomputing the cross-attention keys and values per row.

        Args:
            sequences: token ids without start / end token, each non-empty.

        Returns:
            float64 (len(sequences),): ``sum_t log p(y_t | y_<t, audio)`` over each sequence's
            tokens and the end token (natural log).

        Raises:
            ValueError: no start step yet, or an empty sequence.
        """
        if self.start_logp is None:
            raise ValueError("score() needs the start step: call begin() and advance([0], [START_TOKEN]) first")
        if not sequences or any(len(q) == 0 for q in sequences):
            raise ValueError("score() needs non-empty token sequences")
        n = len(sequences)
        width = max(len(q) for q in sequences)
        ids = np.full((n, width), EOS_TOKEN, np.int64)  # padded after each sequence: causal, so harmless
        for i, q in enumerate(sequences):
            ids[i, : len(q)] = q
        feed = {"input_ids": ids, "use_cache_branch": np.array([True]), **self._repeated(n)}
        for name, v in self.start_past.items():
            feed[name] = np.repeat(v, n, axis=0)
        logits = self.m.decoder.run(None, feed)[0]  # (n, width, V)
        out = np.empty(n)
        for i, q in enumerate(sequences):
            lp = log_softmax(logits[i, : len(q)].astype(np.float64), axis=-1)  # row t predicts token t + 1
            targets = list(q[1:]) + [EOS_TOKEN]
            out[i] = self.start_logp[q[0]] + lp[np.arange(len(q)), targets].sum()
        return out


class MoonshineBackend:
    """Backend ``moonshine``: Moonshine searched inside the command grammar (see module doc).

    Args:
        vocabulary: the command vocabulary; its sentences (:meth:`Vocabulary.sentences`) are
            the only outputs.
        model_dir: Moonshine model directory (``refavs-voice-models fetch``; "" = the default,
            :func:`refavs_ros.voice.models.default_model_dir`).
        wake_phrase: optional leading phrase (normalised); sentences are searched with and
            without it so the recogniser can tell one from the other.
        beam: beam width of the constrained search (>= 1).
        length_alpha: the finished sentence with the best ``logprob / tokens ** length_alpha``
            wins (1 = mean per token; 0 = total, which favours short commands).
        margin: beam threshold (nats): hypotheses this far below the step's best are dropped.
        threads: onnxruntime intra-op threads.

    Raises:
        ModelLoadError: missing or unloadable model directory (named).
        ConfigError: a grammar too large to list, bad beam / alpha.
        BackendUnavailableError: onnxruntime / tokenizers missing.
    """

    name = "moonshine"
    constrained = True
    streaming = False
    cancellable = True

    def __init__(self, vocabulary: Vocabulary, model_dir: str | Path = "", *, wake_phrase: str = "", beam: int = 16,
                 length_alpha: float = 0.8, margin: float = 10.0, threads: int = 1) -> None:
        if not isinstance(beam, int) or beam < 1:
            raise ConfigError(f"beam must be an int >= 1, got {beam!r}")
        if not 0.0 <= float(length_alpha) <= 2.0:
            raise ConfigError(f"length_alpha must be in [0, 2], got {length_alpha!r}")
        if not model_dir:
            from refavs_ros.voice.models import default_model_dir

            model_dir = default_model_dir()
        self.model = MoonshineModel(model_dir, threads=threads)
        wake = normalise_text(wake_phrase)
        self.trie = TokenTrie(vocabulary.sentences(), self.model.encode_text, prefixes=(wake,) if wake else ())
        self.beam = beam
        self.length_alpha = float(length_alpha)
        self.margin = float(margin)

    def search(self, samples_16k: np.ndarray, cancel: threading.Event | None = None) -> tuple[SearchResult, _Rows]:
        """The grammar beam search of one utterance, and the decoder rows (for rescoring
        other sentences with :meth:`_Rows.score`).

        Args:
            samples_16k: float32 (N,) 16 kHz mono, N >= 1600 (checked by the callers);
                only the first 64 s are used.
            cancel: when set, the search stops at its next decoder step.

        Raises:
            RecognitionCancelled: ``cancel`` was set.
        """
        x = samples_16k[: 64 * SAMPLE_RATE]
        rows = _Rows(self.model, self.model.encode(x), cancel)
        budget = int(x.size / SAMPLE_RATE * TOKENS_PER_SEC) + EXTRA_TOKENS
        found = constrained_beam_search(rows, self.trie, start=START_TOKEN, eos=EOS_TOKEN, beam=self.beam,
                                        max_steps=budget, greedy=True, margin=self.margin)
        return found, rows

    def transcribe(self, samples_16k: np.ndarray, cancel: threading.Event | None = None) -> Hypothesis:
        """Recognise one utterance as the most likely grammar sentence.

        Args:
            samples_16k: float32 (N,) 16 kHz mono in [-1, 1]; Moonshine takes 0.1-64 s.
            cancel: optional event; when set, recognition stops at the next decoder step.

        Returns:
            :class:`Hypothesis` with the sentence (normalised) and the likelihood-ratio
            confidence; ``text`` is "" when the audio is shorter than 0.1 s or no sentence
            finished within the token budget. ``words`` is empty.

        Raises:
            InputError: empty, non-float or NaN/inf input.
            RecognitionCancelled: ``cancel`` was set while it worked.
        """
        t0 = time.perf_counter()
        x = _check_utterance(samples_16k)
        if x.size < SAMPLE_RATE // 10:
            return Hypothesis("", 0.0, (), time.perf_counter() - t0)
        found, _ = self.search(x, cancel)
        done = found.completions
        if not done:
            return Hypothesis("", 0.0, (), time.perf_counter() - t0)
        best = max(done, key=lambda c: c.normalised(self.length_alpha))
        ratio = (best.logprob - found.greedy_logprob) / best.tokens
        confidence = float(np.exp(min(0.0, ratio)))
        return Hypothesis(best.text, confidence, (), time.perf_counter() - t0)
