"""Fit the ``fusion`` voice backend's decision (``config/voice_fusion.yaml``) on val scenes.

Two steps, so the slow one can run in parallel processes::

    # 1. candidates of every utterance the recogniser hears (about 8 min per 200 scenes x 3 SNRs)
    python bench/voice_fusion_fit.py collect --split val --seed 5 --count 200 --snr 20 10 5 --out /tmp/fus5.pkl
    python bench/voice_fusion_fit.py collect --split val --seed 6 --count 200 --snr 20 10 5 --out /tmp/fus6.pkl
    # 2. fit the reranker and the acceptance model, pick the threshold, write the scorer
    python bench/voice_fusion_fit.py fit /tmp/fus5.pkl /tmp/fus6.pkl --out config/voice_fusion.yaml

``collect`` streams each spoken-command scene (refavs_ros.scenes.speech.speak_scene) through the
real VoiceCommandRecognizer (same VAD, gate and segmentation as the nodes; speculation off) with
the fusion backend and keeps, for every utterance it decodes, the :class:`Candidates` and
whether it overlaps the spoken command (>= half of the command's span) and the ground truth.

``fit`` fits (refavs_ros.voice.fusion module doc for the features):

* the reranker: a conditional logit over each command utterance's candidates (those whose
  candidates contain the right sentence), L2 0.1;
* the acceptance model: a logistic regression of "the chosen sentence is the spoken command"
  over every decoded utterance (scene sounds included: they are the negatives), features
  standardised, L2 1.0;
* the threshold: the value in 0.2..0.7 with the best exact match summed over the SNRs (the
  benchmark's rule: the last accepted command of a scene counts), ties to the higher one.

With two or more files it first reports a cross-check: fitted on each file, scored on the
others. Never fit on test scenes.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def collect(args) -> None:
    """Write [{scene, snr_db, ref, utterances: [{candidates, command}]}] to ``args.out``."""
    from bench.voice_commands import run_scene
    from refavs_ros.scenes import generate_scene
    from refavs_ros.scenes.speech import speak_scene
    from refavs_ros.voice import (
        RecognizerConfig,
        Vocabulary,
        VoiceCommandRecognizer,
        normalise_text,
    )
    from refavs_ros.voice.asr import Hypothesis
    from refavs_ros.voice.fusion import FusionBackend

    class Recording:
        """The fusion backend, keeping the candidates of each utterance in call order."""

        name = "fusion"
        constrained = True
        streaming = False

        def __init__(self, inner: FusionBackend) -> None:
            self.inner = inner
            self.seen: list = []

        def transcribe(self, x):
            c = self.inner.candidates(x)
            self.seen.append(c)
            return Hypothesis("", 0.0) if c is None else Hypothesis(c.texts[0], 1.0)

    from refavs_ros.voice import VadConfig
    from refavs_ros.voice.fusion import FusionScorer

    # only nbest and length_alpha matter while collecting: a neutral scorer unless one is given
    scorer = args.scorer or FusionScorer(np.array([1.0, 0, 0]), np.zeros(5), np.ones(5), np.zeros(5), 0.0)
    inner = FusionBackend(Vocabulary.load(None), args.moonshine_dir, rescore_dir=args.rescore_dir,
                          scorer=scorer, threads=args.threads)
    backend = Recording(inner)
    heard = []
    config = RecognizerConfig(backend="fusion", speculative_sec=0.0, vad=VadConfig(min_level_above_ambient_db=args.gate_db))
    rec = VoiceCommandRecognizer(config, backend=backend, on_transcript=heard.append)
    rows = []
    t0 = time.time()
    for snr in args.snr:
        for i in range(args.count):
            sp = speak_scene(generate_scene(args.split, i, args.seed), float(snr), args.seed)
            sc = sp.meta["spoken_command"]
            heard.clear()
            backend.seen.clear()
            run_scene(rec, sp)
            decoded = [t for t in heard if t.reason != "too quiet"]
            assert len(decoded) == len(backend.seen), "every decoded utterance is one backend call"
            utts = []
            for t, c in zip(decoded, backend.seen):
                span = max(1, sc["end_ns"] - sc["start_ns"])
                overlap = max(0, min(t.end_ns, sc["end_ns"]) - max(t.start_ns, sc["start_ns"])) / span
                if c is not None:
                    utts.append({"candidates": c, "command": overlap >= 0.5})
            rows.append({"scene": sp.meta.get("scene_id", f"{args.split}-{i:06d}"), "snr_db": float(snr),
                         "ref": normalise_text(sc["text"]), "utterances": utts})
        print(f"SNR {snr:g} dB: {args.count} scenes, {time.time() - t0:.0f} s", flush=True)
    inner.close()
    tmp = Path(str(args.out) + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"split": args.split, "seed": args.seed, "rows": rows}, f)
    tmp.replace(args.out)
    print("wrote", args.out)


def fit_rerank(rows, length_alpha: float, l2: float = 0.1) -> np.ndarray:
    """Conditional-logit weights (3,) of the reranker (see module doc)."""
    data = []
    for r in rows:
        for u in r["utterances"]:
            c = u["candidates"]
            if u["command"] and r["ref"] in c.texts:
                data.append((c.rerank_features(length_alpha), c.texts.index(r["ref"])))
    if not data:
        raise SystemExit("no command utterance with the right sentence among its candidates")

    def nll(w):
        total, grad = l2 * w @ w, 2 * l2 * w
        for f, y in data:
            z = f @ w
            p = np.exp(z - z.max())
            p /= p.sum()
            total -= math.log(p[y] + 1e-300)
            grad = grad - (f[y] - p @ f)
        return total, grad

    w0 = np.array([1.0, 0.0, 0.0])
    return minimize(nll, w0, jac=True, method="L-BFGS-B").x


def fit_accept(rows, w, length_alpha: float, l2: float = 1.0):
    """Standardisation and logistic weights of the acceptance model (see module doc)."""
    from refavs_ros.voice.fusion import rank

    xs, ys = [], []
    for r in rows:
        for u in r["utterances"]:
            c = u["candidates"]
            j, margin = rank(c.rerank_features(length_alpha), w)
            xs.append(c.accept_features(j, margin))
            ys.append(float(u["command"] and c.texts[j] == r["ref"]))
    x = np.array(xs)
    y = np.array(ys)
    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    xn = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])

    def nll(v):
        z = np.clip(xn @ v, -50, 50)
        p = 1.0 / (1.0 + np.exp(-z))
        return -(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)).sum() + l2 * v[:-1] @ v[:-1]

    v = minimize(nll, np.zeros(xn.shape[1]), method="L-BFGS-B").x
    return mean, scale, v[:-1], float(v[-1])


def exact_match(rows, scorer) -> dict[float, float]:
    """Exact-match rate per SNR: the last accepted command of each scene against the truth."""
    per: dict[float, list[bool]] = {}
    for r in rows:
        final = None
        for u in r["utterances"]:
            i, conf = scorer.choose(u["candidates"])
            if conf >= scorer.threshold:
                final = u["candidates"].texts[i]
        per.setdefault(r["snr_db"], []).append(final == r["ref"])
    return {k: float(np.mean(v)) for k, v in sorted(per.items(), reverse=True)}


def fit(rows, length_alpha: float = 0.8, nbest: int = 6, fitted_on: str = ""):
    """The scorer fitted on ``rows``, with the threshold picked on them (module doc)."""
    from refavs_ros.voice.fusion import FusionScorer

    w = fit_rerank(rows, length_alpha)
    mean, scale, weights, bias = fit_accept(rows, w, length_alpha)
    best = None
    for thr in THRESHOLDS:
        s = FusionScorer(w, mean, scale, weights, bias, threshold=thr, nbest=nbest, length_alpha=length_alpha,
                         fitted_on=fitted_on)
        total = sum(exact_match(rows, s).values())
        if best is None or total >= best[0] - 1e-12:
            best = (total, s)
    return best[1]


def fit_main(args) -> None:
    files = [pickle.loads(Path(p).read_bytes()) for p in args.files]
    if len(files) > 1:
        print("cross-check (fitted on one file, exact match on the others):")
        for i, f in enumerate(files):
            s = fit(f["rows"])
            others = [r for j, g in enumerate(files) if j != i for r in g["rows"]]
            em = exact_match(others, s)
            print(f"  fit {f['split']} seed {f['seed']} (threshold {s.threshold}): "
                  + ", ".join(f"{k:g} dB {100 * v:.1f} %" for k, v in em.items()))
    rows = [r for f in files for r in f["rows"]]
    desc = ", ".join(f"{f['split']} seed {f['seed']} ({len(f['rows'])} scene-SNRs)" for f in files)
    scorer = fit(rows, fitted_on=f"{desc}; python bench/voice_fusion_fit.py fit ... ({time.strftime('%Y-%m-%d')})")
    em = exact_match(rows, scorer)
    print(f"fitted on all ({len(rows)} scene-SNRs): threshold {scorer.threshold}; "
          + ", ".join(f"{k:g} dB {100 * v:.1f} %" for k, v in em.items()) + " (on the fitting data)")
    print("rerank", np.round(scorer.rerank, 3).tolist(), "accept", np.round(scorer.accept_weights, 3).tolist(),
          "bias", round(scorer.accept_bias, 3))
    scorer.save(args.out)
    print("wrote", args.out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="candidates of every utterance of spoken-command scenes")
    c.add_argument("--split", default="val")
    c.add_argument("--seed", type=int, default=5)
    c.add_argument("--count", type=int, default=200)
    c.add_argument("--snr", type=float, nargs="+", default=[20.0, 10.0, 5.0])
    c.add_argument("--out", required=True)
    c.add_argument("--moonshine-dir", default="")
    c.add_argument("--rescore-dir", default="")
    c.add_argument("--scorer", default=None, help="scorer file (only its nbest and length_alpha are used)")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--gate-db", type=float, default=3.0, help="the recogniser's ambient-level gate (VadConfig)")
    f = sub.add_parser("fit", help="fit the scorer on collected files")
    f.add_argument("files", nargs="+")
    f.add_argument("--out", default="config/voice_fusion.yaml")
    args = ap.parse_args(argv)
    if args.cmd == "collect":
        if args.split.startswith("test"):
            print("warning: fitting on test scenes makes the benchmark meaningless", file=sys.stderr)
        collect(args)
    else:
        fit_main(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
