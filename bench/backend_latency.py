"""Deployment benchmark: per-frame latency per profile and backend, streaming vs window re-run,
text encoding once per command vs per frame, and peak memory.

Run from the repository root (prints tables, writes JSON)::

    python3 -m bench.backend_latency --json bench/results_cpu.json

Sections (all on the device the backends use; CPU here):

1. ``latency``: per-frame wall time, p50/p95 (ms) and FPS (1000 / mean ms), per profile (tiny,
   base) and backend (torch eager, onnxruntime). Two figures per frame:
   ``engine`` = ``EEMCStreamEngine.encode_frame`` (resize 640x480 -> S, visual stage) +
   ``encode_audio`` (audio stage) + ``step`` (fuse + cached memory + decode), i.e. the model;
   ``predictor`` = ``StreamingPredictor.push_audio/push_image/step``, i.e. also the VGGish
   log-mel front end, resizing the logits to 640x480, thresholds and bbox.
   The backends are measured in ALTERNATING BLOCKS (``--rounds`` blocks per backend,
   ``--warmup`` unmeasured frames after every switch) in one process, so load drifts from other
   processes hit both alike, while one runtime's idle threads do not disturb the other
   (interleaving frame by frame did: libgomp's and onnxruntime's spinning worker threads then
   compete for the 2 cores). Per-stage p50 times come from a timing wrapper around
   ``backend.run``.
2. ``streaming``: per-new-frame cost with a cached-memory window of W = 5, 10, 20, 40 frames:
   ``EEMCStreamEngine`` per new frame (visual + audio + fuse + decode, memory full at W) versus
   re-running ``EEMC.forward`` over the whole W-frame window for every new frame.
3. ``text``: one text-encoder call (ms) and the per-frame cost when the command is encoded once
   versus re-encoded every frame.
4. ``memory``: peak RSS (``VmHWM``; see :func:`peak_rss_mib` for why not ``ru_maxrss``), the
   steady-state RSS, the RSS growth of building the backend and of loading the text encoder, and
   the peak of Python / numpy allocations during the steady-state loop (``tracemalloc``), each
   (profile, backend) in its own subprocess so peaks do not mix.

Weights: ``models/refavs_tiny.safetensors`` when present for tiny (``--weights``), else random
weights of ``EEMCConfig.profile_named(profile)`` (same graph, same timing). The base profile
uses a random 6-layer, 768-wide BERT text encoder of DistilRoBERTa size (the real one is not
available offline); text time is reported for it but is not part of per-frame latency.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEC = 1_000_000_000
CAMERA = (480, 640)  # (height, width) of the synthetic camera frames in pixels


# ---------------------------------------------------------------------------------- helpers
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def stats(ms: list[float]) -> dict[str, float]:
    """p50, p95, mean (ms) and FPS (1000 / mean) of per-frame times in ms."""
    a = np.asarray(ms, np.float64)
    mean = float(a.mean())
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": mean,
        "fps": 1000.0 / mean,
        "n": int(a.size),
    }


class TimedBackend:
    """Wraps a StageBackend and records the wall time (ms) of every stage call."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.times: dict[str, list[float]] = {}
        self.enabled = True

    def run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.inner.run(stage, feeds)
        if self.enabled:
            self.times.setdefault(stage, []).append((time.perf_counter() - t0) * 1e3)
        return out


def make_text_dir(profile: str, cfg, tmp: Path) -> str:
    """Text-model id/dir for a profile: MiniLM (bundled) for tiny, a random DistilRoBERTa-sized BERT otherwise."""
    if profile == "tiny":
        return cfg.text_model
    import torch
    from transformers import BertConfig, BertModel

    from refavs_ros.models.text import bundled_minilm_dir

    directory = tmp / f"text_{profile}"
    if (directory / "config.json").is_file():  # made earlier in this run
        return str(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(bundled_minilm_dir() / name, directory / name)
    torch.manual_seed(0)
    BertModel(
        BertConfig(hidden_size=cfg.text_dim, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=4 * cfg.text_dim, max_position_embeddings=64)
    ).save_pretrained(directory)
    return str(directory)


def load_model(profile: str, weights: Path | None):
    """(EEMC model in eval mode, description of the weights)."""
    import torch

    from refavs_ros.models.checkpoint import load_eemc
    from refavs_ros.models.config import EEMCConfig
    from refavs_ros.models.eemc import EEMC

    if profile == "tiny" and weights is not None and weights.is_file():
        model, _ = load_eemc(weights)
        try:
            return model, str(weights.resolve().relative_to(ROOT))
        except ValueError:
            return model, str(weights)
    torch.manual_seed(0)
    return EEMC(EEMCConfig.profile_named(profile)).eval(), "random"


def synthetic_inputs(n: int, seed: int = 0):
    """n camera frames uint8 (480, 640, 3) and 1 s int16 audio chunks at 16 kHz."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (*CAMERA, 3), dtype=np.uint8) for _ in range(min(n, 8))]
    chunks = [(rng.standard_normal(16000) * 2000).astype(np.int16) for _ in range(min(n, 8))]
    return frames, chunks


def build_engine(model, backend_name: str, text_model: str, cache: Path, num_frames: int, threads: int | None):
    """(EEMCStreamEngine over a TimedBackend, the TimedBackend), built by the package's builder."""
    from refavs_ros.engines.build import eemc_engine

    timed: list[TimedBackend] = []
    engine = eemc_engine(
        model, backend=backend_name, engine_dir=cache, threads=threads, text_model=text_model,
        num_frames=num_frames, wrap_backend=lambda inner: timed.append(TimedBackend(inner)) or timed[-1],
    )
    engine.set_command("the dog that is barking on the left")
    return engine, timed[0]


# --------------------------------------------------------------------------------- sections
def bench_latency(profile: str, backends: list[str], frames_n: int, warmup: int, weights, cache: Path, tmp: Path,
                  threads: int | None, rounds: int = 4) -> dict:
    """Section 1: ``rounds`` alternating blocks per backend in one process, ``warmup`` unmeasured
    frames at the start of every block."""
    from refavs_ros import audio
    from refavs_ros.predictor import PredictorConfig, StreamingPredictor

    model, source = load_model(profile, weights)
    text_model = make_text_dir(profile, model.cfg, tmp)
    frames, chunks = synthetic_inputs(frames_n)
    mel = audio.log_mel_spectrogram(np.zeros(audio.EXAMPLE_SAMPLES, np.float32) + 0.01)
    engines = {b: build_engine(model, b, text_model, cache, 10, threads) for b in backends}
    from refavs_ros.engines.eemc import EEMCStreamEngine

    # the predictor gets its own engine (own cached memory) over the same timed backend
    preds = {
        b: StreamingPredictor(
            EEMCStreamEngine(engines[b][1], engines[b][0].text_encoder, model.cfg, num_frames=10),
            PredictorConfig(num_frames=10, frame_stride_sec=1.0),
        )
        for b in backends
    }
    for p in preds.values():
        p.set_command("the dog that is barking on the left")
    eng_ms: dict[str, list[float]] = {b: [] for b in backends}
    pred_ms: dict[str, list[float]] = {b: [] for b in backends}
    frame_no = {b: 0 for b in backends}
    per_block = max(1, frames_n // rounds)
    for _ in range(rounds):
        for b in backends:  # alternate blocks: background load drifts hit every backend alike
            engine, timed = engines[b]
            for i in range(warmup + per_block):
                record = i >= warmup  # the first frames after a switch wake this runtime's threads
                timed.enabled = record
                k = frame_no[b]
                frame_no[b] += 1
                stamp = (k + 2) * SEC
                img = frames[k % len(frames)]
                t0 = time.perf_counter()
                feat = engine.encode_frame(img)
                emb = engine.encode_audio(mel)
                engine.step(feat, emb, commit=True)
                t1 = time.perf_counter()
                p = preds[b]
                p.push_audio(stamp - SEC, chunks[k % len(chunks)], 16000)
                p.push_image(stamp, img)
                result = p.step()
                t3 = time.perf_counter()
                assert result is not None
                if record:
                    eng_ms[b].append((t1 - t0) * 1e3)
                    pred_ms[b].append((t3 - t1) * 1e3)
    out = {"weights": source, "config": model.cfg.to_dict(), "backends": {}}
    for b in backends:
        timed = engines[b][1]
        # the predictor's engine shares the TimedBackend: stage times pool both loops' calls
        out["backends"][b] = {
            "engine": stats(eng_ms[b]),
            "predictor": stats(pred_ms[b]),
            "stage_p50_ms": {s: float(np.median(v)) for s, v in timed.times.items()},
            "providers": getattr(timed.inner, "providers", None),
        }
    if "torch" in backends and "onnxruntime" in backends:
        t, o = out["backends"]["torch"], out["backends"]["onnxruntime"]
        out["speedup_onnxruntime_vs_torch"] = {
            k: t[k]["p50_ms"] / o[k]["p50_ms"] for k in ("engine", "predictor")
        }
    return out


def bench_streaming(profile: str, windows: list[int], frames_n: int, weights, cache: Path, tmp: Path,
                    backends: list[str], threads: int | None, rounds: int = 3) -> dict:
    """Section 2: streaming per new frame vs EEMC.forward over the whole window.

    ``rounds`` passes over every (window, backend) block, so drifts of the machine's load hit
    every window alike; each block resets the memory, fills it to W entries (unmeasured), then
    times ``frames_n / rounds`` new frames with the memory full at W.
    """
    import torch

    from refavs_ros import audio
    from refavs_ros.engines.eemc import preprocess_image

    model, _ = load_model(profile, weights)
    text_model = make_text_dir(profile, model.cfg, tmp)
    frames, _ = synthetic_inputs(8)
    mel = audio.log_mel_spectrogram(np.zeros(audio.EXAMPLE_SAMPLES, np.float32) + 0.01)
    engines = {b: build_engine(model, b, text_model, cache, max(windows), threads)[0] for b in backends}
    hidden, mask = engines[backends[0]].text_encoder.encode(["the dog that is barking on the left"])
    th, tm = torch.from_numpy(hidden), torch.from_numpy(mask)
    size = model.cfg.image_size
    stream: dict[str, dict[int, list[float]]] = {b: {w: [] for w in windows} for b in backends}
    rerun: dict[int, list[float]] = {w: [] for w in windows}
    per_block = max(1, frames_n // rounds)
    for _ in range(rounds):
        for w in windows:
            for b in backends:
                eng = engines[b]
                eng.reset_memory()
                eng.set_window(w)
                for i in range(w):  # fill the memory to W entries
                    eng.step(eng.encode_frame(frames[i % 8]), eng.encode_audio(mel), commit=True)
                for i in range(per_block):
                    t0 = time.perf_counter()
                    eng.step(eng.encode_frame(frames[i % 8]), eng.encode_audio(mel), commit=True)
                    stream[b][w].append((time.perf_counter() - t0) * 1e3)
                assert eng.memory_length == w
            # re-running the whole window per new frame (batch path, PyTorch): W images resized
            # and encoded, fusion and decoding of every frame
            mels = torch.from_numpy(np.repeat(mel[None, None], w, axis=1))
            reps = max(2, min(per_block, 200 // w))
            for i in range(reps + 1):
                t0 = time.perf_counter()
                px = torch.from_numpy(np.stack([preprocess_image(frames[(i + k) % 8], size) for k in range(w)]))[None]
                with torch.inference_mode():
                    model(px, mels, th, tm)
                if i:  # the first call after the streaming blocks is a warm-up
                    rerun[w].append((time.perf_counter() - t0) * 1e3)
    out: dict = {
        "windows": windows,
        "rounds": rounds,
        "streaming_ms": {b: {str(w): stats(v) for w, v in stream[b].items()} for b in backends},
        "rerun_window_ms": {str(w): stats(v) for w, v in rerun.items()},
    }
    lo, hi = str(min(windows)), str(max(windows))
    out["flatness_ratio"] = {b: out["streaming_ms"][b][hi]["p50_ms"] / out["streaming_ms"][b][lo]["p50_ms"] for b in backends}
    return out


def bench_text(profile: str, backends: list[str], weights, cache: Path, tmp: Path, latency: dict) -> dict:
    """Section 3: text encoder time (PyTorch and exported ONNX) vs per-frame latency."""
    from refavs_ros.backends.onnx_backend import OnnxTextEncoder
    from refavs_ros.export.eemc import export_text
    from refavs_ros.models.text import TextEncoder, resolve_text_model

    model, _ = load_model(profile, weights)
    text_dir = resolve_text_model(make_text_dir(profile, model.cfg, tmp))
    encoders = {"torch": TextEncoder(text_dir, model.cfg.max_text_tokens)}
    onnx_path = tmp / f"text_{profile}.onnx"
    export_text(text_dir, model.cfg.max_text_tokens, onnx_path, verify=False)
    encoders["onnxruntime"] = OnnxTextEncoder(onnx_path, text_dir)
    out: dict = {}
    for b in backends:
        enc = encoders[b]
        for _ in range(3):
            enc.encode(["the dog that is barking on the left"])
        ms = []
        for i in range(20):
            t0 = time.perf_counter()
            enc.encode([f"the dog number {i} that is barking on the left"])
            ms.append((time.perf_counter() - t0) * 1e3)
        text_ms = float(np.median(ms))
        frame_ms = latency["backends"][b]["engine"]["p50_ms"]
        out[b] = {
            "text_encode_ms": text_ms,
            "per_frame_ms_text_once": frame_ms,
            "per_frame_ms_text_every_frame": frame_ms + text_ms,
            "slowdown_if_every_frame": (frame_ms + text_ms) / frame_ms,
        }
    return out


def current_rss_mib() -> float:
    """Resident set size of this process now (MiB), from /proc/self/statm (0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Peak RSS of this process (MiB).

    ``VmHWM`` of /proc/self/status (the high-water mark of this program's own address space);
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` elsewhere. On Linux ``ru_maxrss`` is carried
    over from the parent through fork + exec, so in a worker started by a large parent it
    reports the PARENT's size; VmHWM does not.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_memory(profile: str, backend: str, frames_n: int, weights, cache: Path, threads: int | None,
                  text_dir: str) -> dict:
    """Section 4 worker (run in its own process): RSS and tracemalloc figures for one config.

    ``backend_rss_mib`` = RSS growth while the backend is built (weights copy, ONNX sessions);
    the text encoder is loaded afterwards (``text_rss_mib``). ``text_dir`` was written by the
    parent process, so building the random base text model does not count here.
    """
    from refavs_ros import audio
    from refavs_ros.backends.registry import create_backend
    from refavs_ros.engines.eemc import EEMCStreamEngine
    from refavs_ros.models.text import TextEncoder

    rss0 = current_rss_mib()
    model, _ = load_model(profile, weights)
    before = current_rss_mib()
    if backend == "onnxruntime" and threads is not None:
        from refavs_ros.backends.onnx_backend import OnnxRuntimeBackend

        inner = OnnxRuntimeBackend.from_model(model, cache_dir=cache, intra_op_threads=threads)
    else:
        inner = create_backend(backend, model, cache_dir=cache)
    after_backend = current_rss_mib()
    text = TextEncoder.from_pretrained(text_dir, model.cfg.max_text_tokens)
    after_text = current_rss_mib()
    engine = EEMCStreamEngine(inner, text, model.cfg, num_frames=10)
    engine.set_command("the dog that is barking on the left")
    frames, _ = synthetic_inputs(8)
    mel = audio.log_mel_spectrogram(np.zeros(audio.EXAMPLE_SAMPLES, np.float32) + 0.01)
    for i in range(5):
        engine.step(engine.encode_frame(frames[i % 8]), engine.encode_audio(mel), commit=True)
    tracemalloc.start()
    for i in range(frames_n):
        engine.step(engine.encode_frame(frames[i % 8]), engine.encode_audio(mel), commit=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    steady = current_rss_mib()
    peak_rss = peak_rss_mib()
    return {
        "peak_rss_mib": peak_rss,
        "rss_after_imports_mib": rss0,
        "backend_rss_mib": after_backend - before,
        "text_rss_mib": after_text - after_backend,
        "steady_rss_mib": steady,
        "tracemalloc_peak_mib": peak / 2**20,
    }


# ------------------------------------------------------------------------------------ report
def print_tables(res: dict) -> None:
    print(f"\nDevice: {res['device']['cpu']} ({res['device']['cores']} cores), {res['date']}")
    print(f"torch {res['versions']['torch']} ({res['device']['torch_threads']} threads), "
          f"onnxruntime {res['versions']['onnxruntime']} ({res['device']['onnxruntime_threads']} threads); "
          f"load average {res['device']['loadavg_start'][0]:.2f} at start, {res['device']['loadavg_end'][0]:.2f} at end")
    print("\n1. Per-frame latency (ms; engine = model stages, predictor = + log-mel, resize, post-processing)")
    print(f"{'profile':<8}{'backend':<13}{'engine p50':>11}{'p95':>8}{'FPS':>8}{'pred p50':>10}{'p95':>8}{'FPS':>8}   stage p50 ms")
    for prof, lat in res["latency"].items():
        for b, r in lat["backends"].items():
            e, p = r["engine"], r["predictor"]
            st = " ".join(f"{k}={v:.2f}" for k, v in r["stage_p50_ms"].items())
            print(f"{prof:<8}{b:<13}{e['p50_ms']:>11.2f}{e['p95_ms']:>8.2f}{e['fps']:>8.1f}{p['p50_ms']:>10.2f}{p['p95_ms']:>8.2f}{p['fps']:>8.1f}   {st}")
        if "speedup_onnxruntime_vs_torch" in lat:
            s = lat["speedup_onnxruntime_vs_torch"]
            print(f"{prof:<8}onnxruntime speed-up over torch (p50): engine {s['engine']:.2f}x, predictor {s['predictor']:.2f}x")
    if res.get("streaming"):
        st = res["streaming"]
        print(f"\n2. Per-new-frame cost vs cached-memory window ({st['profile']}, p50 ms)")
        head = f"{'window':>7}" + "".join(f"{'stream ' + b:>20}" for b in st["streaming_ms"]) + f"{'re-run window (torch)':>24}"
        print(head)
        for w in st["windows"]:
            row = f"{w:>7}" + "".join(f"{st['streaming_ms'][b][str(w)]['p50_ms']:>20.2f}" for b in st["streaming_ms"])
            print(row + f"{st['rerun_window_ms'][str(w)]['p50_ms']:>24.2f}")
        print("streaming cost ratio window 40 / window 5: " + ", ".join(f"{b} {v:.3f}" for b, v in st["flatness_ratio"].items()))
    if res.get("text"):
        print("\n3. Text encoder: once per command vs every frame (ms)")
        for prof, t in res["text"].items():
            for b, r in t.items():
                print(f"{prof:<8}{b:<13} encode {r['text_encode_ms']:8.2f}  frame (text once) {r['per_frame_ms_text_once']:8.2f}"
                      f"  frame (text every frame) {r['per_frame_ms_text_every_frame']:8.2f}  ({r['slowdown_if_every_frame']:.1f}x)")
    if res.get("memory"):
        print("\n4. Memory (own process per row)")
        for key, m in res["memory"].items():
            print(f"{key:<18} peak RSS {m['peak_rss_mib']:7.1f} MiB  steady RSS {m['steady_rss_mib']:7.1f} MiB  "
                  f"backend +{m['backend_rss_mib']:6.1f} MiB  text encoder +{m['text_rss_mib']:6.1f} MiB  "
                  f"tracemalloc peak (steady loop) {m['tracemalloc_peak_mib']:5.2f} MiB")


def markdown(res: dict) -> str:
    """The results as Markdown tables (the body of bench/RESULTS.md)."""
    dev, ver = res["device"], res["versions"]
    out = [
        f"* Device: {dev['cpu']}, {dev['cores']} cores (`/proc/cpuinfo`); date {res['date']}",
        (f"* torch {ver['torch']} ({dev['torch_threads']} intra-op threads), onnxruntime {ver['onnxruntime']} "
         f"({dev['onnxruntime_threads']} intra-op threads, spinning off), Python {ver['python']}"),
        (f"* 1-min load average {dev['loadavg_start'][0]:.2f} at start, {dev['loadavg_end'][0]:.2f} at end "
         "(the machine is shared with other jobs)"),
        f"* Command: `{res['command']}`",
        "",
        "### 1. Per-frame latency",
        "",
        "| profile | backend | engine p50 ms | p95 ms | FPS | predictor p50 ms | p95 ms | FPS | stage p50 ms (visual / audio / fuse / decode) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for prof, lat in res["latency"].items():
        for b, r in lat["backends"].items():
            e, p, st = r["engine"], r["predictor"], r["stage_p50_ms"]
            stages = " / ".join(f"{st.get(k, float('nan')):.2f}" for k in ("visual", "audio", "fuse", "decode"))
            out.append(f"| {prof} | {b} | {e['p50_ms']:.2f} | {e['p95_ms']:.2f} | {e['fps']:.1f} | {p['p50_ms']:.2f} | "
                       f"{p['p95_ms']:.2f} | {p['fps']:.1f} | {stages} |")
    out.append("")
    for prof, lat in res["latency"].items():
        if "speedup_onnxruntime_vs_torch" in lat:
            sp = lat["speedup_onnxruntime_vs_torch"]
            out.append(f"* {prof}: onnxruntime / torch speed-up (p50): engine **{sp['engine']:.2f}x**, "
                       f"predictor **{sp['predictor']:.2f}x** ({lat['weights']} weights)")
    if res.get("streaming"):
        st = res["streaming"]
        bs = list(st["streaming_ms"])
        out += ["", f"### 2. Per-new-frame cost vs cached-memory window ({st['profile']}, p50 ms)", "",
                "| window W | " + " | ".join(f"streaming, {b}" for b in bs) + " | re-run EEMC.forward over W frames (torch) |",
                "|---|" + "---|" * (len(bs) + 1)]
        for w in st["windows"]:
            out.append(f"| {w} | " + " | ".join(f"{st['streaming_ms'][b][str(w)]['p50_ms']:.2f}" for b in bs)
                       + f" | {st['rerun_window_ms'][str(w)]['p50_ms']:.2f} |")
        out += ["", "* streaming cost at W = 40 / W = 5: "
                + ", ".join(f"{b} **{v:.3f}**" for b, v in st["flatness_ratio"].items())]
        if "torch" in bs and "onnxruntime" in bs:
            ratios = [st["streaming_ms"]["torch"][str(w)]["p50_ms"] / st["streaming_ms"]["onnxruntime"][str(w)]["p50_ms"]
                      for w in st["windows"]]
            out.append(f"* onnxruntime / torch speed-up on back-to-back engine frames (this table): "
                       f"{min(ratios):.2f}x to {max(ratios):.2f}x over the windows")
    if res.get("text"):
        out += ["", "### 3. Text encoder: once per command vs every frame", "",
                "| profile | backend | one encode ms | frame ms, text once per command | frame ms, text every frame | slow-down |",
                "|---|---|---|---|---|---|"]
        for prof, t in res["text"].items():
            for b, r in t.items():
                out.append(f"| {prof} | {b} | {r['text_encode_ms']:.2f} | {r['per_frame_ms_text_once']:.2f} | "
                           f"{r['per_frame_ms_text_every_frame']:.2f} | {r['slowdown_if_every_frame']:.2f}x |")
    if res.get("memory"):
        out += ["", "### 4. Memory (one process per row)", "",
                "| profile/backend | peak RSS MiB | steady RSS MiB | + backend MiB | + text encoder MiB | tracemalloc peak in the loop MiB |",
                "|---|---|---|---|---|---|"]
        for key, m in res["memory"].items():
            out.append(f"| {key} | {m['peak_rss_mib']:.1f} | {m['steady_rss_mib']:.1f} | {m['backend_rss_mib']:.1f} | "
                       f"{m['text_rss_mib']:.1f} | {m['tracemalloc_peak_mib']:.2f} |")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bench.backend_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"])
    p.add_argument("--frames", type=int, default=100, help="measured frames per (profile, backend) for tiny")
    p.add_argument("--base-frames", type=int, default=40, help="measured frames for the base profile")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured frames at the start of every block")
    p.add_argument("--windows", nargs="+", type=int, default=[5, 10, 20, 40])
    p.add_argument("--rounds", type=int, default=6,
                   help="alternating rounds over backends (latency) and over windows x backends (streaming)")
    p.add_argument("--stream-frames", type=int, default=90, help="measured new frames per (window, backend)")
    p.add_argument("--weights", type=Path, default=ROOT / "models" / "refavs_tiny.safetensors",
                   help="tiny weights (random when missing)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of BOTH torch and onnxruntime (default: torch's default and all cores for onnxruntime)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-config memory subprocesses")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="wait up to this many seconds for the 1-min load average to fall below 0.5 before starting")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--markdown", type=Path, default=None, help="write the tables as Markdown here")
    p.add_argument("--render", type=Path, default=None, help="only print the Markdown tables of an earlier --json file")
    p.add_argument("--worker", nargs=2, metavar=("PROFILE", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--text-dir", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import onnxruntime
    import torch

    from refavs_ros.backends.onnx_backend import available_cores

    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())), end="")
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker_memory(args.worker[0], args.worker[1], 30, args.weights, args.cache, args.threads,
                                       args.text_dir)))
        return 0
    deadline = time.monotonic() + args.wait_idle
    while os.getloadavg()[0] >= 0.5 and time.monotonic() < deadline:
        time.sleep(5)
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        cache = tmp / "cache"
        res: dict = {
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": "python3 -m bench.backend_latency " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "onnxruntime_threads": args.threads or available_cores(),
                       "loadavg_start": os.getloadavg()},
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
            "latency": {}, "text": {}, "memory": {},
        }
        for prof in args.profiles:
            n = args.frames if prof == "tiny" else args.base_frames
            print(f"[latency] {prof} ...", flush=True)
            res["latency"][prof] = bench_latency(prof, args.backends, n, args.warmup, args.weights, cache, tmp, args.threads,
                                                 rounds=min(args.rounds, n))
        print("[streaming] tiny ...", flush=True)
        res["streaming"] = {"profile": "tiny", **bench_streaming("tiny", args.windows, args.stream_frames, args.weights,
                                                                 cache, tmp, args.backends, args.threads,
                                                                 rounds=args.rounds)}
        for prof in args.profiles:
            print(f"[text] {prof} ...", flush=True)
            res["text"][prof] = bench_text(prof, args.backends, args.weights, cache, tmp, res["latency"][prof])
        if not args.no_memory:
            for prof in args.profiles:
                for b in args.backends:
                    print(f"[memory] {prof} {b} ...", flush=True)
                    text_dir = make_text_dir(prof, load_model(prof, args.weights)[0].cfg, tmp)
                    cmd = [sys.executable, "-m", "bench.backend_latency", "--worker", prof, b, "--cache", str(cache),
                           "--weights", str(args.weights), "--text-dir", text_dir]
                    if args.threads is not None:
                        cmd += ["--threads", str(args.threads)]
                    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
                    res["memory"][f"{prof}/{b}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        res["device"]["loadavg_end"] = os.getloadavg()
    print_tables(res)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"\nwrote {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(markdown(res))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
