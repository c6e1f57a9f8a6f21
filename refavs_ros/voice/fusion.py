"""Backend ``fusion``: two recognisers' hypotheses rescored together, with a learned decision.

Moonshine searched inside the grammar (:mod:`refavs_ros.voice.moonshine`) and pocketsphinx
decoding the same grammar (:class:`~refavs_ros.voice.asr.GrammarBackend`) fail on different
utterances: on the voice benchmark's espeak-ng speech Moonshine hears "object" as "rocket" or
"the one", pocketsphinx confuses nouns in noise. Measured on val scenes (seeds 5 and 6, 20 and
10 dB), pocketsphinx's 1-best is right in 22 of the 39 command utterances whose sentence is
missing from Moonshine's whole beam. This backend is a small *system combination* (the
N-best rescoring form of ROVER, Fiscus, ASRU 1997; discriminative N-best rescoring as in
Ostendorf et al., 1991):

1. candidates: the ``nbest`` best sentences of Moonshine-base's grammar beam search plus
   pocketsphinx's grammar 1-best (decoded in a worker process while Moonshine runs: its C
   decoder holds the GIL);
2. every candidate is scored by Moonshine-base (its beam score, or one teacher-forced pass for
   the pocketsphinx sentence) and, teacher-forced, by Moonshine-tiny (a second, independently
   trained model: :meth:`refavs_ros.voice.moonshine._Rows.score`);
3. a linear reranker (a conditional logit over the candidates) picks the sentence and a
   logistic acceptance model gives its confidence, a probability that the sentence is what
   was said. Both are fitted on val scenes by ``bench/voice_fusion_fit.py`` and shipped in
   ``config/voice_fusion.yaml`` (:class:`FusionScorer`), with the threshold chosen there.

Features (all from one utterance; ``b = logprob / tokens ** length_alpha``):

* rerank, per candidate: ``b_base - max b_base``, ``b_tiny - max b_tiny``, "is pocketsphinx's
  1-best" (0/1);
* accept, for the chosen one: ``min(0, (logprob_base - logprob_greedy) / tokens)`` (the
  ``moonshine`` backend's likelihood ratio), the reranker margin to the runner-up (capped at
  5), Moonshine-tiny's log-probability per token, the utterance duration (s) and "is
  pocketsphinx's 1-best".
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refavs_ros.errors import BackendUnavailableError, ConfigError
from refavs_ros.voice.asr import (
    SAMPLE_RATE,
    GrammarBackend,
    Hypothesis,
    _check_utterance,
)
from refavs_ros.voice.grammar_search import Completion, surface_forms
from refavs_ros.voice.moonshine import (
    START_TOKEN,
    MoonshineBackend,
    MoonshineModel,
    _Rows,
)
from refavs_ros.voice.vocabulary import Vocabulary, normalise_text

RERANK_FEATURES = ("base", "tiny", "pocketsphinx")
"""Names of the reranker's per-candidate features (module doc)."""
ACCEPT_FEATURES = ("ratio", "margin", "tiny_per_token", "duration_sec", "pocketsphinx")
"""Names of the acceptance model's features (module doc)."""
MARGIN_CAP = 5.0


DEFAULT_SCORER = "config/voice_fusion.yaml"


def rank(features: np.ndarray, weights: np.ndarray) -> tuple[int, float]:
    """The reranker's pick: index of the candidate with the largest ``features @ weights`` and
    its margin over the runner-up (:data:`MARGIN_CAP` when it is alone).

    Args:
        features: float (K, 3) :meth:`Candidates.rerank_features`, K >= 1. weights: float (3,).
    """
    z = features @ weights
    order = np.argsort(-z)
    best = int(order[0])
    return best, float(z[best] - z[order[1]]) if z.size > 1 else MARGIN_CAP


def default_scorer_path() -> Path:
    """The shipped scorer, :data:`DEFAULT_SCORER`.

    Raises:
        ModelLoadError: not shipped (the directories searched are named).
    """
    from refavs_ros.resources import find_shipped

    return find_shipped(DEFAULT_SCORER)


@dataclass
class Candidates:
    """The sentences one utterance could be, with what each model says of them.

    Attributes:
        texts: K normalised grammar sentences (Moonshine's best first, then pocketsphinx's
            1-best when Moonshine's beam lacked it).
        base_logprob, base_tokens: float (K,), int (K,): Moonshine-base's natural-log
            probability of each sentence (end token included) and its token count.
        tiny_logprob, tiny_tokens: the same for Moonshine-tiny (teacher-forced).
        pocketsphinx: float (K,), 1.0 where the sentence is pocketsphinx's 1-best.
        greedy_logprob: Moonshine-base's free (ungrammatical) greedy transcript's log-probability.
        duration_sec: utterance length (s).
    """

    texts: list[str]
    base_logprob: np.ndarray
    base_tokens: np.ndarray
    tiny_logprob: np.ndarray
    tiny_tokens: np.ndarray
    pocketsphinx: np.ndarray
    greedy_logprob: float
    duration_sec: float

    def rerank_features(self, length_alpha: float) -> np.ndarray:
        """float (K, 3): :data:`RERANK_FEATURES` of every candidate."""
        b = self.base_logprob / self.base_tokens ** length_alpha
        t = self.tiny_logprob / self.tiny_tokens ** length_alpha
        return np.stack([b - b.max(), t - t.max(), self.pocketsphinx], axis=1)

    def accept_features(self, index: int, margin: float) -> np.ndarray:
        """float (5,): :data:`ACCEPT_FEATURES` of candidate ``index`` (reranker margin given)."""
        ratio = min(0.0, (self.base_logprob[index] - self.greedy_logprob) / self.base_tokens[index])
        return np.array([ratio, min(margin, MARGIN_CAP), self.tiny_logprob[index] / self.tiny_tokens[index],
                         self.duration_sec, self.pocketsphinx[index]])


@dataclass
class FusionScorer:
    """The fitted decision of the ``fusion`` backend (module doc), as ``config/voice_fusion.yaml``.

    Attributes:
        rerank: weights (3,) of :data:`RERANK_FEATURES`; the candidate with the largest
            ``features @ rerank`` wins.
        accept_mean, accept_scale: (5,) standardisation of :data:`ACCEPT_FEATURES`.
        accept_weights: (5,) logistic weights; ``accept_bias`` its intercept. Confidence =
            ``sigmoid(((f - mean) / scale) @ weights + bias)`` in (0, 1).
        threshold: the confidence threshold chosen on the fitting data (the backend's default).
        nbest: Moonshine candidates kept (>= 1). length_alpha: length normalisation exponent.
        fitted_on: free text: data and command that produced the file.
    """

    rerank: np.ndarray
    accept_mean: np.ndarray
    accept_scale: np.ndarray
    accept_weights: np.ndarray
    accept_bias: float
    threshold: float = 0.3
    nbest: int = 6
    length_alpha: float = 0.8
    fitted_on: str = ""

    def __post_init__(self) -> None:
        shapes = {"rerank": (self.rerank, len(RERANK_FEATURES)), "accept_mean": (self.accept_mean, len(ACCEPT_FEATURES)),
                  "accept_scale": (self.accept_scale, len(ACCEPT_FEATURES)),
                  "accept_weights": (self.accept_weights, len(ACCEPT_FEATURES))}
        for name, (v, n) in shapes.items():
            arr = np.asarray(v, np.float64)
            if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                raise ConfigError(f"fusion scorer: {name} must be {n} finite numbers, got {v!r}")
            setattr(self, name, arr)
        if not np.all(self.accept_scale > 0):
            raise ConfigError(f"fusion scorer: accept_scale must be > 0, got {self.accept_scale.tolist()}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"fusion scorer: threshold must be in [0, 1], got {self.threshold!r}")
        if isinstance(self.nbest, bool) or not isinstance(self.nbest, int) or self.nbest < 1:
            raise ConfigError(f"fusion scorer: nbest must be an int >= 1, got {self.nbest!r}")
        if not 0.0 <= float(self.length_alpha) <= 2.0:
            raise ConfigError(f"fusion scorer: length_alpha must be in [0, 2], got {self.length_alpha!r}")
        self.accept_bias = float(self.accept_bias)

    def choose(self, cands: Candidates) -> tuple[int, float]:
        """Index of the winning candidate and its confidence in (0, 1)."""
        best, margin = rank(cands.rerank_features(self.length_alpha), self.rerank)
        f = (cands.accept_features(best, margin) - self.accept_mean) / self.accept_scale
        logit = float(np.clip(f @ self.accept_weights + self.accept_bias, -50.0, 50.0))
        return best, 1.0 / (1.0 + math.exp(-logit))

    def to_dict(self) -> dict:
        """Plain-YAML form (lists of floats), the inverse of :meth:`from_dict`."""
        return {"rerank": dict(zip(RERANK_FEATURES, map(float, self.rerank))),
                "accept": {"features": list(ACCEPT_FEATURES), "mean": [float(v) for v in self.accept_mean],
                           "scale": [float(v) for v in self.accept_scale],
                           "weights": [float(v) for v in self.accept_weights], "bias": self.accept_bias},
                "threshold": float(self.threshold), "nbest": self.nbest, "length_alpha": float(self.length_alpha),
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> FusionScorer:
        """Build from :meth:`to_dict`'s form.

        Raises:
            ConfigError: missing keys, wrong feature names or values (``source`` named).
        """
        where = f" {source}" if source else ""
        try:
            rr = d["rerank"]
            acc = d["accept"]
            if set(rr) != set(RERANK_FEATURES) or list(acc["features"]) != list(ACCEPT_FEATURES):
                raise ConfigError(f"fusion scorer{where}: features must be {RERANK_FEATURES} and {ACCEPT_FEATURES}, "
                                  f"got {list(rr)} and {acc['features']}")
            return cls(np.array([rr[k] for k in RERANK_FEATURES], np.float64), np.asarray(acc["mean"], np.float64),
                       np.asarray(acc["scale"], np.float64), np.asarray(acc["weights"], np.float64), acc["bias"],
                       threshold=d.get("threshold", 0.3), nbest=d.get("nbest", 6),
                       length_alpha=d.get("length_alpha", 0.8), fitted_on=str(d.get("fitted_on", "")))
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"fusion scorer{where}: malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, path: str | Path | None = None) -> FusionScorer:
        """Read a scorer YAML file (None = :func:`default_scorer_path`).

        Raises:
            ConfigError: the file does not exist, is not YAML, or is malformed (path named).
        """
        import yaml

        p = Path(path) if path else default_scorer_path()
        if not p.is_file():
            raise ConfigError(f"fusion scorer file {str(p)!r} does not exist")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"fusion scorer {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"fusion scorer {str(p)!r} must be a mapping")
        return cls.from_dict(d, str(p))

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as YAML (atomically: a temporary file, then renamed)."""
        import yaml

        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("# refavs_ros fusion voice backend: reranker + acceptance model (bench/voice_fusion_fit.py)\n"
                       + yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(p)


# ----------------------------------------------------------------------- pocketsphinx worker


class PocketsphinxProposer:
    """pocketsphinx's grammar 1-best of an utterance, decoded in a worker process.

    pocketsphinx holds the GIL while it decodes (measured: a thread beside it gains nothing),
    so a separate interpreter (:mod:`refavs_ros.voice.ps_worker`, started with
    :mod:`subprocess`) is the only way to overlap it with Moonshine. The worker decodes with
    batch cepstral mean normalisation and no phone loop (only its sentence is used, not its
    confidence). Use: ``job = submit(x)`` (returns at once), Moonshine runs, then
    ``result(job)``; one utterance at a time, from one thread.

    Args:
        vocabulary: the command vocabulary (its JSGF grammar).
        wake_phrase: optional wake phrase (optional leading words of the grammar).
        in_process: decode in the calling thread instead (no process; for tools and tests).
        timeout_sec: longest wait for the worker's answer or start (s).

    Raises:
        ConfigError / BackendUnavailableError / ModelLoadError: as :class:`GrammarBackend`
            (checked here, in this process, before any worker starts).
    """

    def __init__(self, vocabulary: Vocabulary, wake_phrase: str = "", *, in_process: bool = False,
                 timeout_sec: float = 10.0) -> None:
        self._config = json.dumps({"lists": vocabulary.lists, "rules": vocabulary.rules,
                                   "pronunciations": vocabulary.pronunciations, "wake_phrase": wake_phrase})
        # built here to check the grammar (its errors raised in this process), kept only when used
        local = GrammarBackend(vocabulary, wake_phrase, cmn="batch", garbage=False)
        self._local = local if in_process else None
        self.in_process = in_process
        self.timeout_sec = float(timeout_sec)
        self._proc: subprocess.Popen | None = None
        self.failures = 0
        self.last_error = ""

    def _read_reply(self, proc: subprocess.Popen) -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_sec)
        if not ready:
            raise TimeoutError(f"no answer from the pocketsphinx worker in {self.timeout_sec} s")
        line = proc.stdout.readline()
        if not line:
            raise EOFError(f"the pocketsphinx worker exited (code {proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"pocketsphinx worker: {reply['error']}")
        return reply

    def start(self) -> None:
        """Start the worker now (about a second) instead of at the first utterance.

        Raises:
            BackendUnavailableError: the worker could not be started or did not get ready.
        """
        if self.in_process or (self._proc is not None and self._proc.poll() is None):
            return
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen([sys.executable, "-m", "refavs_ros.voice.ps_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            proc.stdin.write((self._config + "\n").encode())
            proc.stdin.flush()
            self._read_reply(proc)
        except (OSError, ValueError, TimeoutError, EOFError, RuntimeError) as exc:
            proc.kill()
            proc.wait()
            raise BackendUnavailableError(f"cannot start the pocketsphinx worker process: {exc}") from None
        self._proc = proc

    def submit(self, samples_16k: np.ndarray) -> str | None:
        """Send float32 (N,) 16 kHz audio to the worker (or decode it now, ``in_process``); pass
        the return value to :meth:`result`."""
        x = np.ascontiguousarray(samples_16k, "<f4")
        if self.in_process:
            return self._local.transcribe(x).text
        try:
            self.start()
            self._proc.stdin.write(struct.pack("<Q", x.size) + x.tobytes())
            self._proc.stdin.flush()
        except (OSError, ValueError, BackendUnavailableError) as exc:
            self._failed(exc)
            return ""
        return None

    def result(self, job: str | None) -> str:
        """The worker's 1-best sentence, normalised ("" if none). A worker that died, hung or
        failed costs this utterance pocketsphinx's candidate only: the failure is counted
        (:attr:`failures`, :attr:`last_error`) and the next utterance starts a new worker."""
        if job is not None:
            return job
        try:
            return normalise_text(str(self._read_reply(self._proc)["text"]))
        except (OSError, ValueError, TimeoutError, EOFError, RuntimeError, KeyError) as exc:
            self._failed(exc)
            return ""

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.close()

    def close(self) -> None:
        """Stop the worker process (a later :meth:`submit` starts a new one)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # end of input: the worker exits
            proc.wait(timeout=2.0)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


class FusionBackend:
    """Backend ``fusion`` (module doc): Moonshine-base + pocketsphinx candidates, rescored with
    Moonshine-tiny, decided by a fitted :class:`FusionScorer`.

    Args:
        vocabulary: the command vocabulary.
        model_dir: Moonshine-base directory ("" = the installed default).
        rescore_dir: Moonshine-tiny directory ("" = the installed ``moonshine-tiny``).
        wake_phrase: optional leading phrase.
        scorer: a :class:`FusionScorer` or the path of its YAML file (None = the shipped one).
        threads: onnxruntime intra-op threads of both Moonshine models.
        in_process: run pocketsphinx in this thread (:class:`PocketsphinxProposer`).
        warm_up: start the pocketsphinx worker and run every model once on 1 s of low noise
            now (about 1 s), so the first command is not slower than the others.

    Raises:
        ModelLoadError: a missing Moonshine directory (named; ``refavs-voice-models fetch
            --model NAME`` installs it).
        ConfigError: a bad scorer file or grammar.
        BackendUnavailableError: onnxruntime, tokenizers or pocketsphinx missing.
    """

    name = "fusion"
    constrained = True
    streaming = False
    cancellable = True

    def __init__(self, vocabulary: Vocabulary, model_dir: str | Path = "", *, rescore_dir: str | Path = "",
                 wake_phrase: str = "", scorer: FusionScorer | str | Path | None = None, threads: int = 1,
                 in_process: bool = False, warm_up: bool = True) -> None:
        self.scorer = scorer if isinstance(scorer, FusionScorer) else FusionScorer.load(scorer)
        self.moonshine = MoonshineBackend(vocabulary, model_dir, wake_phrase=wake_phrase, threads=threads,
                                          length_alpha=self.scorer.length_alpha)
        if not rescore_dir:
            from refavs_ros.voice.models import default_model_dir

            rescore_dir = default_model_dir("moonshine-tiny")
        self.tiny = MoonshineModel(rescore_dir, threads=threads)
        self.proposer = PocketsphinxProposer(vocabulary, normalise_text(wake_phrase), in_process=in_process)
        self.confidence_threshold = float(self.scorer.threshold)
        if warm_up:
            self.proposer.start()
            self.candidates((0.001 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32))

    def candidates(self, samples_16k: np.ndarray, cancel: threading.Event | None = None) -> Candidates | None:
        """Every model's view of one utterance (the expensive part of :meth:`transcribe`).

        Args:
            samples_16k: float32 (N,) 16 kHz mono in [-1, 1], 0.1-64 s used.
            cancel: optional event; when set, the work stops at the next decoder step.

        Returns:
            :class:`Candidates`, or None when the audio is shorter than 0.1 s or no model found
            a sentence.

        Raises:
            InputError: empty, non-float or NaN/inf input.
            RecognitionCancelled: ``cancel`` was set (pocketsphinx's answer is still collected,
                so the worker is ready for the next utterance).
        """
        x = _check_utterance(samples_16k)
        if x.size < SAMPLE_RATE // 10:
            return None
        x = np.ascontiguousarray(x[: 64 * SAMPLE_RATE], np.float32)
        job = self.proposer.submit(x)
        try:
            found, rows = self.moonshine.search(x, cancel)
        finally:
            ps_text = normalise_text(self.proposer.result(job))  # one answer per request, even when cancelled
        alpha = self.scorer.length_alpha
        best: dict[str, Completion] = {}  # each sentence's best surface form
        for c in found.completions:
            if c.text not in best or c.normalised(alpha) > best[c.text].normalised(alpha):
                best[c.text] = c
        kept = sorted(best.values(), key=lambda c: -c.normalised(alpha))[: self.scorer.nbest]
        texts = [c.text for c in kept]
        lps = [c.logprob for c in kept]
        ns = [c.tokens for c in kept]
        if ps_text and ps_text not in texts:  # the search's start step is in rows: score it there
            ids = self.moonshine.model.encode_text(_written(ps_text))
            texts.append(ps_text)
            lps.append(float(rows.score([ids])[0]))
            ns.append(len(ids) + 1)
        if not texts:
            return None
        tiny_rows = _Rows(self.tiny, self.tiny.encode(x), cancel)
        tiny_rows.begin()
        tiny_rows.advance([0], [START_TOKEN])
        seqs = [self.tiny.encode_text(_written(t)) for t in texts]
        return Candidates(texts, np.asarray(lps, np.float64), np.asarray(ns, np.float64), tiny_rows.score(seqs),
                          np.asarray([len(q) + 1 for q in seqs], np.float64),
                          np.asarray([float(t == ps_text) for t in texts]), float(found.greedy_logprob),
                          x.size / SAMPLE_RATE)

    def transcribe(self, samples_16k: np.ndarray, cancel: threading.Event | None = None) -> Hypothesis:
        """Recognise one utterance as a grammar sentence.

        Args:
            samples_16k: float32 (N,) 16 kHz mono in [-1, 1].
            cancel: optional event; when set, recognition stops (:meth:`candidates`).

        Returns:
            :class:`Hypothesis`: the chosen sentence (normalised) and the acceptance model's
            confidence in (0, 1); "" and 0 when :meth:`candidates` found none.

        Raises:
            InputError: empty, non-float or NaN/inf input.
            RecognitionCancelled: ``cancel`` was set while it worked.
        """
        t0 = time.perf_counter()
        cands = self.candidates(samples_16k, cancel)
        if cands is None:
            return Hypothesis("", 0.0, (), time.perf_counter() - t0)
        i, conf = self.scorer.choose(cands)
        return Hypothesis(cands.texts[i], conf, (), time.perf_counter() - t0)

    def close(self) -> None:
        """Stop the pocketsphinx worker process."""
        self.proposer.close()


def _written(sentence: str) -> str:
    """How Moonshine writes a normalised sentence: sentence case and a full stop."""
    return surface_forms(sentence)[-1]
