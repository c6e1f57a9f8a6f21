"""Per-frame latency of two (or more) EEMC weight files, side by side in one run.

Each model gets its own :class:`refavs_ros.predictor.StreamingPredictor` (torch backend, the
replay tool's default of 1 thread) fed the same generated scene (320 x 240, 2 fps, ambient
noise, command set once). Frames are timed in alternating blocks (model A block, model B block,
... repeated ``--rounds`` times), so a change of machine load hits every model alike. The
timed call is what the node does per frame: ``push_image`` + ``step`` (preprocessing, visual
stage, fusion, decode, post-processing), audio pushed beforehand.

Usage::

    python3 -m bench.model_latency NEW.safetensors OLD.safetensors --json lat.json --wait-idle 600

Prints p50 / p95 / mean per model and the ratios to the last model given; records the load
average at the start and the end (latency figures are only comparable on a quiet machine).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _scene_frames(seconds: int):
    from refavs_ros.scenes import SceneConfig, generate_scene

    scene = generate_scene("test-seen", 11, 2026, SceneConfig(width=320, height=240, fps=2.0,
                                                             duration_sec=float(seconds), snr_db=10.0))
    return scene


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit code."""
    p = argparse.ArgumentParser(prog="bench.model_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+", type=Path, help="EEMC safetensors files to compare")
    p.add_argument("--rounds", type=int, default=8, help="alternating blocks per model")
    p.add_argument("--block", type=int, default=40, help="timed frames per block")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames at the start of every block")
    p.add_argument("--threads", type=int, default=1, help="torch threads (replay default 1)")
    p.add_argument("--wait-idle", type=float, default=0.0, help="wait up to this many seconds for load < 0.5")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    from refavs_ros.predictor import PredictorConfig, StreamingPredictor

    deadline = time.monotonic() + args.wait_idle
    while os.getloadavg()[0] >= 0.5 and time.monotonic() < deadline:
        time.sleep(5)
    per_model = args.rounds * (args.warmup + args.block)
    scene = _scene_frames(int(np.ceil(per_model / 2.0)) + 1)  # 2 fps, one frame per timed call
    preds = []
    for w in args.weights:
        pred = StreamingPredictor.from_pretrained(w, config=PredictorConfig(num_frames=10), threads=args.threads)
        pred.set_command(scene.expression)
        preds.append(pred)
    start_ns = int(scene.audio_start_ns)
    samples_per_frame = 8000  # 0.5 s at 16 kHz
    load_start = os.getloadavg()
    times: list[list[float]] = [[] for _ in preds]
    cursor = [0 for _ in preds]
    for _ in range(args.rounds):
        for m, pred in enumerate(preds):
            for k in range(args.warmup + args.block):
                i = cursor[m]
                chunk = scene.audio[i * samples_per_frame : (i + 1) * samples_per_frame]
                pred.push_audio(start_ns + i * samples_per_frame * 62500, chunk, 16000)
                t0 = time.perf_counter()
                pred.push_image(int(scene.frame_stamps_ns[i]), scene.frames[i])
                result = pred.step()
                dt = (time.perf_counter() - t0) * 1000.0
                if result is None:
                    raise RuntimeError("the predictor returned no result")
                if k >= args.warmup:
                    times[m].append(dt)
                cursor[m] += 1
    out = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python3 -m bench.model_latency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "threads": args.threads,
        "frames_per_model": len(times[0]), "models": {},
    }
    ref = np.asarray(times[-1])
    for w, t in zip(args.weights, times):
        a = np.asarray(t)
        row = {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean()),
               "max_ms": float(a.max()),
               "p50_ratio_to_last": float(np.percentile(a, 50) / np.percentile(ref, 50)),
               "mean_ratio_to_last": float(a.mean() / ref.mean())}
        out["models"][str(w)] = row
        print(f"{w!s:60s} p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  mean {row['mean_ms']:6.2f} ms  "
              f"p50 x{row['p50_ratio_to_last']:.3f}  mean x{row['mean_ratio_to_last']:.3f}")
    print(f"load average start {load_start[0]:.2f}, end {out['loadavg_end'][0]:.2f}; {len(times[0])} frames per model")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
