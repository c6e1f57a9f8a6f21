"""GPU figures for the released model: TensorRT FP16 / FP32, ONNX Runtime CUDA and PyTorch eager.

One command on a CUDA machine (repository root; ``bench/gpu_official.sh`` wraps it with
``nvidia-smi`` and the GPU-only tests)::

    python3 -m bench.gpu_official --json bench/results_official_gpu.json --markdown bench/tables_official_gpu.md

For each backend (``--backends``, default ``torch,onnxruntime-cuda,tensorrt-fp32,tensorrt-fp16``) it
builds the engine of the full-size released architecture with random weights (seed 0; same
graphs and cost as ``ckpt_best_miou.pth``; ``bench/official_window_latency.full_size_parts``),
timing the ONNX export, every TensorRT engine build and the first start from the cache, then

* per new frame with a full 10-frame window (``OfficialStreamEngine``: ``encode_frame`` +
  ``encode_audio`` + ``step``), p50 / p95 / FPS, CUDA-synchronised, after ``--warmup`` frames;
* per stage (``visual``, ``audio``, ``fuse`` over 10 frames, ``decode``), p50 of a synchronised
  timing wrapper around the backend, and the CPU-side image preprocessing (PIL resize of a
  640x480 frame to 384x384 + normalisation, released ``Mask2FormerImageProcessor``);
* ``model FPS`` = 1000 / (sum of the stage p50s): the rate without the CPU preprocessing;
* parity against PyTorch eager (FP32, TF32 off): per stage at windows 1 and 10 (max abs error,
  max |ref|) and the streaming engines over 12 frames (binary masks at 0.4 agreeing, %).

It prints the device name, driver, CUDA, TensorRT, onnxruntime and torch versions and the date.
Each backend is optional: a missing library is reported and skipped. ``--cache`` keeps the ONNX
graphs and engines between runs (a second run only loads them). On a 10-minute command limit,
split the backends over two runs sharing ``--cache``.
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

from bench.official_backends import COMMAND, STAGE_ORDER, WINDOW, TimedBackend, pct, synthetic_inputs

BACKENDS = ("torch", "onnxruntime-cuda", "tensorrt-fp32", "tensorrt-fp16")


def device_info() -> dict:
    """GPU name, driver, CUDA / TensorRT / onnxruntime / torch versions, CPU and date."""
    import torch

    info: dict = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )
        info["nvidia_smi"] = smi.stdout.strip()
        info["driver"] = smi.stdout.split(",")[1].strip() if smi.returncode == 0 and "," in smi.stdout else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = "unknown (no nvidia-smi)"
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError as exc:
        info["tensorrt"] = f"not installed ({exc})"
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError as exc:
        info["onnxruntime"] = f"not installed ({exc})"
    return info


def build_backend(kind: str, model, cache: Path, max_window: int, device: str = "cuda"):
    """(backend, build record) for one backend kind; raises BackendUnavailableError when missing."""
    from refavs_ros.backends.registry import create_backend

    t0 = time.perf_counter()
    if kind == "torch":
        backend = create_backend("torch", model, device=device)
    elif kind == "onnxruntime-cuda":
        backend = create_backend("onnxruntime", model, device=device, cache_dir=cache)
    else:
        precision = kind.split("-")[1]
        backend = create_backend("tensorrt", model, device="cuda", cache_dir=cache, precision=precision,
                                 max_window=max_window, opt_window=WINDOW)
    build_s = time.perf_counter() - t0
    record: dict = {"build_s": build_s}
    if kind.startswith("tensorrt"):
        engines = {}
        for stage, eng in backend.stages.items():
            side = eng.path.with_name(eng.path.name + ".json")
            engines[stage] = {"file": eng.path.name, **(json.loads(side.read_text()) if side.is_file() else {})}
        record["engines"] = engines
        t0 = time.perf_counter()  # a second start: everything from the cache
        create_backend("tensorrt", model, device="cuda", cache_dir=cache, precision=kind.split("-")[1],
                       max_window=max_window, opt_window=WINDOW)
        record["first_start_cached_s"] = time.perf_counter() - t0
    return backend, record


def parity(feeds_by_window: dict, ref_backend, backend, engine, ref_engine) -> dict:
    """Per-stage errors at windows 1 and 10 and streaming mask agreement vs PyTorch eager.

    ``feeds_by_window``: ``official_feeds`` at windows 1 and 10, computed on the CPU model.
    """
    out: dict = {"stages": {}}
    for window, feeds in feeds_by_window.items():
        for stage in STAGE_ORDER:
            if window > 1 and stage not in ("fuse", "decode"):
                continue
            want, got = ref_backend.run(stage, feeds[stage]), backend.run(stage, feeds[stage])
            for name in want:
                out["stages"][f"{stage}.{name}@T={window}"] = {
                    "max_abs_error": float(np.abs(got[name] - want[name]).max()),
                    "max_abs_ref": float(np.abs(want[name]).max()),
                }
    images, mels = synthetic_inputs(12, seed=7)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    agree, worst = [], 0.0
    for e in (engine, ref_engine):
        e.reset_memory()
    for k in range(12):
        got, _ = engine.step(engine.encode_frame(images[k]), engine.encode_audio(mels[k]), commit=True)
        want, _ = ref_engine.step(ref_engine.encode_frame(images[k]), ref_engine.encode_audio(mels[k]), commit=True)
        agree.append(float(((sig(got) > 0.4) == (sig(want) > 0.4)).mean()))
        worst = max(worst, float(np.abs(got - want).max()))
    out["stream_min_agree_0.4"] = min(agree)
    out["stream_max_abs_error"] = worst
    return out


def latency(engine, timed: TimedBackend, frames: int, warmup: int, sync) -> dict:
    images, mels = synthetic_inputs(WINDOW + warmup + frames, seed=11)
    engine.reset_memory()
    for i in range(WINDOW - 1):
        engine.step(engine.encode_frame(images[i]), engine.encode_audio(mels[i]), commit=True)
    totals, pre = [], []
    timed.times.clear()
    for j in range(warmup + frames):
        i = WINDOW - 1 + j
        timed.enabled = j >= warmup
        sync()
        t0 = time.perf_counter()
        engine.step(engine.encode_frame(images[i]), engine.encode_audio(mels[i]), commit=True)
        sync()
        if j >= warmup:
            totals.append((time.perf_counter() - t0) * 1e3)
    for j in range(frames):  # the CPU preprocessing alone
        t0 = time.perf_counter()
        engine.image_processor(images[j])
        pre.append((time.perf_counter() - t0) * 1e3)
    stages = {s: pct(v, 50) for s, v in timed.times.items()}
    model_ms = sum(stages.values())
    return {
        "per_frame_p50_ms": pct(totals, 50),
        "per_frame_p95_ms": pct(totals, 95),
        "fps": 1000.0 / float(np.mean(totals)),
        "stage_p50_ms": stages,
        "preprocess_p50_ms": pct(pre, 50),
        "model_ms": model_ms,
        "model_fps": 1000.0 / model_ms if model_ms else float("nan"),
        "frames": frames,
    }


def markdown(res: dict) -> str:
    d = res["device"]
    lines = [
        f"* GPU: {d.get('gpu', '?')} ({d.get('gpu_memory_gib', '?')} GiB, sm {d.get('compute_capability', '?')}), "
        f"driver {d.get('driver')}, CUDA {d.get('cuda_runtime')}",
        f"* TensorRT {d.get('tensorrt')}, onnxruntime {d.get('onnxruntime')}, torch {d.get('torch')}; date {d['date']}",
        f"* Command: `{res['command']}`",
        "",
        "| backend | per frame p50 ms | p95 ms | FPS | model FPS (no CPU preprocessing) | visual | audio | fuse (T=10) | decode | preprocess (CPU) | masks = torch (0.4) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in res["backends"].items():
        if "error" in r:
            lines.append(f"| {kind} | skipped: {r['error']} |" + " |" * 9)
            continue
        lat, st = r["latency"], r["latency"]["stage_p50_ms"]
        agree = r.get("parity", {}).get("stream_min_agree_0.4")
        lines.append(
            f"| {kind} | {lat['per_frame_p50_ms']:.2f} | {lat['per_frame_p95_ms']:.2f} | {lat['fps']:.1f} | "
            f"{lat['model_fps']:.1f} | " + " | ".join(f"{st.get(s, float('nan')):.2f}" for s in STAGE_ORDER)
            + f" | {lat['preprocess_p50_ms']:.2f} | " + (f"{100 * agree:.3f} %" if agree is not None else "-") + " |"
        )
    lines.append("")
    for kind, r in res["backends"].items():
        if "build" in r:
            b = r["build"]
            extra = ""
            if "engines" in b:
                extra = "; engines: " + ", ".join(
                    f"{s} {e.get('build_seconds', '?')} s ({e.get('precision', '?')}, FP32 layers "
                    f"{sum(v for k, v in e.get('fp32_layers', {}).items() if k != 'total layers')}/"
                    f"{e.get('fp32_layers', {}).get('total layers', '?')})"
                    for s, e in b["engines"].items()
                ) + f"; second start {b.get('first_start_cached_s', float('nan')):.1f} s"
            lines.append(f"* {kind}: build/first start {b['build_s']:.1f} s{extra}")
    if "export_s" in res:
        lines.append(f"* ONNX export of the full-size model: {res['export_s']:.1f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {','.join(BACKENDS)}")
    p.add_argument("--frames", type=int, default=50, help="timed new frames per backend (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured frames first (default 10)")
    p.add_argument("--max-window", type=int, default=16, help="TensorRT profile max window (default 16)")
    p.add_argument("--no-parity", action="store_true", help="skip the comparison with PyTorch eager")
    p.add_argument("--cache", type=Path, default=None, help="ONNX/engine cache root (default: a temporary directory)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu = a dry run of this script's code paths on the CPU (figures meaningless; TensorRT skipped)")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); nothing to measure")
        return 2
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = False  # the PyTorch reference stays FP32
    torch.backends.cudnn.allow_tf32 = False
    from bench.official_window_latency import full_size_parts
    from refavs_ros.backends.torch_backend import TorchBackend
    from refavs_ros.engines.official import OfficialStreamEngine
    from refavs_ros.errors import RefAvsError
    from refavs_ros.export.cache import cached_export_dir
    from refavs_ros.models.official_stages import OfficialStageModel

    res: dict = {"command": "python3 -m bench.gpu_official " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "device": device_info(), "backends": {}}
    print(json.dumps(res["device"], indent=2), flush=True)
    kinds = [k.strip() for k in args.backends.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in BACKENDS]
    if unknown:
        print(f"unknown backends {unknown}; expected {BACKENDS}")
        return 2
    with tempfile.TemporaryDirectory() as tmpname:
        cache = args.cache or Path(tmpname)
        net, vggish, processor, text = full_size_parts()
        model = OfficialStageModel(net, vggish)
        if any(k != "torch" for k in kinds):
            t0 = time.perf_counter()
            cached_export_dir(model, cache)
            res["export_s"] = time.perf_counter() - t0
            print(f"ONNX export / cache: {res['export_s']:.1f} s", flush=True)
        from refavs_ros.export.official import official_feeds

        feeds_by_window = {w: official_feeds(model, w, seed=200 + w) for w in (1, WINDOW)}  # before .to("cuda")
        ref_backend = TorchBackend(OfficialStageModel(net, vggish), device=args.device)  # moves net/vggish
        text = text.to(args.device)
        ref_engine = OfficialStreamEngine(ref_backend, processor, text, num_frames=WINDOW)
        ref_engine.set_command(COMMAND)
        for kind in kinds:
            print(f"--- {kind}", flush=True)
            try:
                backend, record = (ref_backend, {"build_s": 0.0}) if kind == "torch" else build_backend(
                    kind, model, cache, args.max_window, args.device)
            except (RefAvsError, ImportError) as exc:
                res["backends"][kind] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"skipped: {exc}", flush=True)
                continue
            timed = TimedBackend(backend, sync)
            engine = OfficialStreamEngine(timed, processor, text, num_frames=WINDOW)
            engine.set_command(COMMAND)
            entry: dict = {"build": record}
            if not args.no_parity and kind != "torch":
                timed.enabled = False
                entry["parity"] = parity(feeds_by_window, ref_backend, backend, engine, ref_engine)
                timed.enabled = True
                print(f"parity: masks agree >= {100 * entry['parity']['stream_min_agree_0.4']:.3f} %", flush=True)
            entry["latency"] = latency(engine, timed, args.frames, args.warmup, sync)
            lat = entry["latency"]
            print(f"per frame p50 {lat['per_frame_p50_ms']:.2f} ms ({lat['fps']:.1f} FPS), model {lat['model_fps']:.1f} FPS, "
                  f"stages {json.dumps({k: round(v, 2) for k, v in lat['stage_p50_ms'].items()})}", flush=True)
            res["backends"][kind] = entry
    text_md = markdown(res)
    print(text_md)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2))
    if args.markdown is not None:
        args.markdown.write_text(text_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
