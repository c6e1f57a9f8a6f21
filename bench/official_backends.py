"""The released model (full-size architecture, random weights) on PyTorch vs ONNX Runtime, side by side.

Run from the repository root (prints tables; ``--json``/``--markdown`` write them)::

    python3 -m bench.official_backends --parity --wait-idle 900 --json bench/results_official_cpu.json \\
        --markdown bench/tables_official_cpu.md

The model is the released architecture -- Mask2Former Swin-B at 384x384 + the 6 pixel-decoder
adapters + the prompt attention + the 1024-d fusion (``OfficialEEMC``, 128.6 M parameters) and a
full-size VGGish, random weights (seed 0; same graphs and cost as ``ckpt_best_miou.pth``), a
random DistilRoBERTa-size text encoder, random 640x480 frames. Both backends run the SAME
``OfficialStreamEngine`` (``OFFICIAL_STAGES``) with a 10-frame window.

Sections:

1. ``export``: the ONNX export into a fresh cache directory, in a child process (wall time,
   peak RSS ``VmHWM`` and the RSS of the built model before exporting), then the first start
   of the onnxruntime backend from the cache in this process (weights hash + session creation).
2. ``parity`` (``--parity``): per stage at windows 1, 2 and 10 (max abs error and max |ref|),
   and end to end: the streaming engines on 12 frames (start-up windows 1..9, then the full
   window), logits max abs difference and binary-mask agreement at the released 0.4 (and 0.5)
   thresholds.
3. ``compute``: GFLOP per stage (``torch.utils.flop_counter``) and this CPU's sustained float32
   GEMM rate (torch, 2048^3), to tell how close each runtime is to the hardware.
4. ``latency``: per new frame with a full window (``encode_frame`` = image preprocessing +
   ``visual``; ``encode_audio`` = ``audio``; ``step`` = ``fuse`` over 10 frames + ``decode``),
   p50/p95, and per stage (p50 of a timing wrapper around the backend). Backends alternate in
   blocks (``--rounds`` blocks each, ``--warmup`` unmeasured frames after every switch) in one
   process, as ``bench/backend_latency.py`` does. Also the process CPU time per frame (all
   threads; less sensitive to other jobs than wall time, but it counts OpenMP spin-waiting).

On a 2-core machine this takes ~10 minutes; run it when the machine is quiet (``--wait-idle``
waits for the 1-min load average to fall below 0.5; the load is recorded at start and end).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 10
COMMAND = "the dog that is barking on the left"
STAGE_ORDER = ("visual", "audio", "fuse", "decode")


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


def proc_status_mib(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status (MiB; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


class TimedBackend:
    """Wraps a StageBackend and records the wall time (ms) of every stage call (device-synchronised)."""

    def __init__(self, inner, sync) -> None:
        self.inner = inner
        self.name = inner.name
        self.times: dict[str, list[float]] = {}
        self.enabled = True
        self._sync = sync
        if hasattr(inner, "run_tensors"):
            self.run_tensors = self._timed(inner.run_tensors)
        self.run = self._timed(inner.run)

    def _timed(self, fn):
        def call(stage, feeds):
            self._sync()
            t0 = time.perf_counter()
            out = fn(stage, feeds)
            self._sync()
            if self.enabled:
                self.times.setdefault(stage, []).append((time.perf_counter() - t0) * 1e3)
            return out

        return call


def synthetic_inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]
    mels = [rng.standard_normal((96, 64)).astype(np.float32) for _ in range(n)]
    return images, mels


# ---------------------------------------------------------------------------------- export
def export_worker(cache: Path, threads: int | None) -> dict:
    """Child process: build the seeded full-size model and export it into ``cache`` (timed)."""
    import torch

    from bench.official_window_latency import full_size_parts
    from refavs_ros.export.cache import cached_export_dir
    from refavs_ros.models.official_stages import OfficialStageModel

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    net, vggish, _proc, _text = full_size_parts(with_text=False)
    model = OfficialStageModel(net, vggish)
    build_s = time.perf_counter() - t0
    base = proc_status_mib("VmRSS")
    t0 = time.perf_counter()
    report = cached_export_dir(model, cache)
    return {
        "export_s": time.perf_counter() - t0,
        "model_build_s": build_s,
        "rss_before_export_mib": base,
        "peak_rss_mib": proc_status_mib("VmHWM"),
        "max_abs_error": report.max_error,
        "graphs": {s.stage: {"mib": (Path(report.directory) / s.file).stat().st_size / 2**20, "seconds": s.seconds,
                             "max_abs_error": s.max_abs_error} for s in report.stages},
    }


def run_export_child(cache: Path, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "bench.official_backends", "--export-worker", str(cache)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise RuntimeError(f"export worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- parity
def stage_parity(model, torch_backend, ort_backend) -> dict:
    from refavs_ros.export.official import official_feeds

    res: dict = {}
    for window in (1, 2, WINDOW):
        feeds = official_feeds(model, window, seed=100 + window)
        for stage in STAGE_ORDER:
            if window > 1 and stage not in ("fuse", "decode"):  # the window only matters to these
                continue
            want, got = torch_backend.run(stage, feeds[stage]), ort_backend.run(stage, feeds[stage])
            for name in want:
                key = f"{stage}.{name}" + (f"@T={window}" if stage in ("fuse", "decode") else "")
                res[key] = {
                    "max_abs_error": float(np.abs(got[name] - want[name]).max()),
                    "max_abs_ref": float(np.abs(want[name]).max()),
                }
    return res


def stream_parity(engines: dict, frames: int = 12) -> dict:
    images, mels = synthetic_inputs(frames, seed=7)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    rows = []
    for e in engines.values():
        e.reset_memory()
    for k in range(frames):
        (lt, _), (lo, _) = (e.step(e.encode_frame(images[k]), e.encode_audio(mels[k]), commit=True) for e in engines.values())
        rows.append({
            "frame": k,
            "window": min(k + 1, WINDOW),
            "max_abs_error": float(np.abs(lo - lt).max()),
            "max_abs_logit": float(np.abs(lt).max()),
            "agree_0.4": float(((sig(lo) > 0.4) == (sig(lt) > 0.4)).mean()),
            "agree_0.5": float(((lo > 0) == (lt > 0)).mean()),
            "foreground_0.4": float((sig(lt) > 0.4).mean()),
        })
    return {
        "frames": rows,
        "worst_max_abs_error": max(r["max_abs_error"] for r in rows),
        "min_agree_0.4": min(r["agree_0.4"] for r in rows),
        "min_agree_0.5": min(r["agree_0.5"] for r in rows),
    }


# ---------------------------------------------------------------------------------- latency
def bench_latency(engines: dict, timed: dict, frames_n: int, warmup: int, rounds: int) -> dict:
    images, mels = synthetic_inputs(WINDOW + warmup + frames_n + 1, seed=11)
    totals: dict[str, list[float]] = {name: [] for name in engines}
    cpu: dict[str, list[float]] = {name: [] for name in engines}  # process CPU time, all threads
    parts: dict[str, dict[str, list[float]]] = {name: {} for name in engines}
    for e in engines.values():  # full windows
        e.reset_memory()
        for i in range(WINDOW - 1):
            e.step(e.encode_frame(images[i]), e.encode_audio(mels[i]), commit=True)
    for _ in range(rounds):
        for name, e in engines.items():
            tb = timed[name]
            for j in range(warmup + frames_n):
                i = WINDOW - 1 + (j % (len(images) - WINDOW))
                measured = j >= warmup
                tb.enabled = measured
                c0 = time.process_time()
                t0 = time.perf_counter()
                frame = e.encode_frame(images[i])
                t1 = time.perf_counter()
                emb = e.encode_audio(mels[i])
                t2 = time.perf_counter()
                e.step(frame, emb, commit=True)
                t3 = time.perf_counter()
                if measured:
                    totals[name].append((t3 - t0) * 1e3)
                    cpu[name].append((time.process_time() - c0) * 1e3)
                    for key, val in (("encode_frame", t1 - t0), ("encode_audio", t2 - t1), ("step", t3 - t2)):
                        parts[name].setdefault(key, []).append(val * 1e3)
            tb.enabled = True
    out = {}
    for name in engines:
        stages = {s: pct(v, 50) for s, v in timed[name].times.items()}
        out[name] = {
            "per_frame_p50_ms": pct(totals[name], 50),
            "per_frame_p95_ms": pct(totals[name], 95),
            "per_frame_min_ms": float(min(totals[name])),
            "per_frame_cpu_p50_ms": pct(cpu[name], 50),
            "frames": len(totals[name]),
            "parts_p50_ms": {k: pct(v, 50) for k, v in parts[name].items()},
            "stage_p50_ms": stages,
            "preprocess_p50_ms": pct(parts[name]["encode_frame"], 50) - stages.get("visual", 0.0),
        }
    return out


# ---------------------------------------------------------------------------------- compute
def stage_gflop(model) -> dict[str, float]:
    """Floating-point work of each stage (GFLOP; matmuls/convolutions as counted by
    ``torch.utils.flop_counter``; ``fuse`` at a window of 10)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from refavs_ros.export.official import official_feeds

    feeds = official_feeds(model, WINDOW, seed=0)
    out = {}
    for stage in STAGE_ORDER:
        args = [torch.from_numpy(feeds[stage][k]) for k in model.stages[stage].inputs]
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.stage_module(stage)(*args)
        out[stage] = counter.get_total_flops() / 1e9
    return out


def matmul_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    """Sustained float32 GEMM rate of this CPU with torch (GFLOP/s, n x n matrices)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


# ---------------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    lat = res["latency"]
    t, o = lat["torch"], lat["onnxruntime"]
    lines = [
        f"* Device: {res['device']['cpu']}, {res['device']['cores']} cores; date {res['date']}",
        f"* torch {res['versions']['torch']} ({res['device']['threads']} threads), onnxruntime "
        f"{res['versions']['onnxruntime']} ({res['device']['threads']} intra-op threads, spinning off), "
        f"Python {res['versions']['python']}",
        f"* 1-min load average {res['device']['loadavg_start'][0]:.2f} at start, {res['device']['loadavg_end'][0]:.2f} at end",
        f"* Command: `{res['command']}`",
        "",
        "| per new frame (window 10) | torch p50 ms | onnxruntime p50 ms | speed-up |",
        "|---|---|---|---|",
        f"| **total** (encode_frame + encode_audio + step) | {t['per_frame_p50_ms']:.0f} | {o['per_frame_p50_ms']:.0f} | "
        f"**{t['per_frame_p50_ms'] / o['per_frame_p50_ms']:.2f}x** |",
        f"| CPU time per frame (all threads of the process) | {t['per_frame_cpu_p50_ms']:.0f} | "
        f"{o['per_frame_cpu_p50_ms']:.0f} | {t['per_frame_cpu_p50_ms'] / o['per_frame_cpu_p50_ms']:.2f}x |",
        f"| fastest frame | {t['per_frame_min_ms']:.0f} | {o['per_frame_min_ms']:.0f} | "
        f"{t['per_frame_min_ms'] / o['per_frame_min_ms']:.2f}x |",
        f"| image preprocessing (PIL resize 640x480 -> 384, normalise) | {t['preprocess_p50_ms']:.0f} | "
        f"{o['preprocess_p50_ms']:.0f} | - |",
    ]
    for stage in STAGE_ORDER:
        ts, os_ = t["stage_p50_ms"].get(stage), o["stage_p50_ms"].get(stage)
        if ts is not None and os_ is not None:
            lines.append(f"| `{stage}` | {ts:.1f} | {os_:.1f} | {ts / os_:.2f}x |")
    lines.append(f"| p95 total | {t['per_frame_p95_ms']:.0f} | {o['per_frame_p95_ms']:.0f} | - |")
    if "gflop" in res:
        g = res["gflop"]
        lines += [
            "",
            "| stage | GFLOP | torch GFLOP/s | onnxruntime GFLOP/s |",
            "|---|---|---|---|",
        ]
        for stage in STAGE_ORDER:
            ts, os_ = t["stage_p50_ms"].get(stage), o["stage_p50_ms"].get(stage)
            if ts and os_:
                lines.append(f"| `{stage}` | {g[stage]:.1f} | {g[stage] / ts * 1e3:.0f} | {g[stage] / os_ * 1e3:.0f} |")
        lines.append(f"| (torch float32 GEMM 2048^3, same process) | - | {res['matmul_gflops']:.0f} | - |")
    if "export" in res:
        ex = res["export"]
        lines += [
            "",
            f"* export (child process, fresh cache): {ex['export_s']:.0f} s; peak RSS {ex['peak_rss_mib']:.0f} MiB "
            f"(model built: {ex['rss_before_export_mib']:.0f} MiB); max verification error {ex['max_abs_error']:.2e}",
            f"* first start from the cache (weights hash + {len(STAGE_ORDER)} onnxruntime sessions): "
            f"{res['first_start_s']:.1f} s",
        ]
    if "parity" in res:
        sp = res["parity"]["stream"]
        lines += [
            "",
            f"* parity, streaming 12 frames (windows 1..10): max |logit diff| {sp['worst_max_abs_error']:.2e}; "
            f"binary masks equal on >= {100 * sp['min_agree_0.4']:.4f} % (0.4) / {100 * sp['min_agree_0.5']:.4f} % (0.5) "
            "of pixels in every frame",
            "",
            "| stage output | max abs error | max abs ref |",
            "|---|---|---|",
        ]
        for key, v in res["parity"]["stages"].items():
            lines.append(f"| `{key}` | {v['max_abs_error']:.2e} | {v['max_abs_ref']:.2e} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=5, help="timed new frames per block (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured frames after every backend switch (default 1)")
    p.add_argument("--rounds", type=int, default=2, help="blocks per backend (default 2)")
    p.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: every core)")
    p.add_argument("--parity", action="store_true", help="also compare the backends (per stage and streaming)")
    p.add_argument("--cache", type=Path, default=None, help="export cache root (default: a fresh temporary directory)")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="wait up to this many seconds for the 1-min load average to fall below --idle-load")
    p.add_argument("--idle-load", type=float, default=0.5, help="load average counted as idle (default 0.5)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--export-worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.export_worker is not None:
        print(json.dumps(export_worker(args.export_worker, args.threads)))
        return 0
    deadline = time.monotonic() + args.wait_idle
    while os.getloadavg()[0] >= args.idle_load and time.monotonic() < deadline:
        time.sleep(5)
    import onnxruntime
    import torch

    from bench.official_window_latency import full_size_parts
    from refavs_ros.backends.onnx_backend import OnnxRuntimeBackend, available_cores
    from refavs_ros.backends.torch_backend import TorchBackend
    from refavs_ros.engines.official import OfficialStreamEngine
    from refavs_ros.models.official_stages import OfficialStageModel

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    res: dict = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python3 -m bench.official_backends " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "loadavg_start": os.getloadavg()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as tmpname:
        cache = args.cache or Path(tmpname) / "cache"
        if not (cache / "onnx").is_dir() or not any((cache / "onnx").glob("official-*")):
            print("exporting the full-size model in a child process ...", flush=True)
            res["export"] = run_export_child(cache, args.threads)
            print(f"  export {res['export']['export_s']:.0f} s, peak RSS {res['export']['peak_rss_mib']:.0f} MiB", flush=True)
        net, vggish, processor, text = full_size_parts()
        model = OfficialStageModel(net, vggish)
        t0 = time.perf_counter()
        ort_backend = OnnxRuntimeBackend.from_model(model, cache_dir=cache, intra_op_threads=threads)
        res["first_start_s"] = time.perf_counter() - t0
        print(f"onnxruntime backend from the cache in {res['first_start_s']:.1f} s", flush=True)
        torch_backend = TorchBackend(model)
        sync = lambda: None  # noqa: E731 (CPU)
        timed = {"torch": TimedBackend(torch_backend, sync), "onnxruntime": TimedBackend(ort_backend, sync)}
        engines = {name: OfficialStreamEngine(tb, processor, text, num_frames=WINDOW) for name, tb in timed.items()}
        for e in engines.values():
            e.set_command(COMMAND)
        if args.parity:
            print("parity ...", flush=True)
            res["parity"] = {"stages": stage_parity(model, torch_backend, ort_backend), "stream": stream_parity(engines)}
            sp = res["parity"]["stream"]
            print(f"  streaming: max |diff| {sp['worst_max_abs_error']:.2e}, masks agree >= {100 * sp['min_agree_0.4']:.4f} %",
                  flush=True)
        res["gflop"] = stage_gflop(model)
        res["matmul_gflops"] = matmul_gflops()
        print(f"GFLOP per stage {json.dumps({k: round(v, 1) for k, v in res['gflop'].items()})}; "
              f"torch GEMM {res['matmul_gflops']:.0f} GFLOP/s", flush=True)
        print("latency ...", flush=True)
        res["latency"] = bench_latency(engines, timed, args.frames, args.warmup, args.rounds)
        res["rss_end_mib"] = proc_status_mib("VmRSS")
        res["device"]["loadavg_end"] = os.getloadavg()
    text_md = markdown(res)
    print(text_md)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2))
    if args.markdown is not None:
        args.markdown.write_text(text_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
