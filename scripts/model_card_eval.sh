#!/usr/bin/env bash
# Measure the figures of models/MODEL_CARD.md through refavs-replay on freshly generated bags
# (seed 2026, never used in training):
#   J/F per test subset and expression kind, S on null expressions; test-time ablations (audio
#   zeroed; cached memory off, beta = 0); J vs SNR (test-noisy at 20/10/5/0 dB); J on
#   test-occluded; temporal expressions on 24-s clips with a memory window covering the clip
#   (full and memory off) and on 60 + 60 more 8-s temporal scenes (test-seen, test-unseen; full
#   and memory off); latency of the new and the previous model side by side in one run.
# Usage: scripts/model_card_eval.sh [WEIGHTS] [OUT_DIR] [PREVIOUS_WEIGHTS]   (after ./scripts/install.sh)
# PREVIOUS_WEIGHTS (optional) enables the latency comparison (bench/model_latency.py); run it on
# a quiet machine (it waits up to 10 minutes for load < 0.5 and records the load).
set -euo pipefail
cd "$(dirname "$0")/.."
weights="${1:-models/refavs_tiny.safetensors}"
out="${2:-runs/model_card}"
previous="${3:-}"
py="${REFAVS_PYTHON:-.venv/bin/python}"
seed=2026
bags="$out/bags"
mkdir -p "$bags"
gen() {  # gen NAME SCENES-ARGS...: write bags once
  local name="$1"; shift
  [ -d "$bags/$name" ] || "$py" -m refavs_ros.tools.scenes_cli "$bags/$name" --seed "$seed" --quiet "$@"
}
gen main/test-seen --split test-seen --count 150
gen main/test-unseen --split test-unseen --count 150
gen main/test-null --split test-null --count 60
for snr in 20 10 5 0; do gen "noisy/snr$snr" --split test-noisy --count 150 --snr-db "$snr"; done
gen occluded --split test-occluded --count 150
gen long --split test-seen --count 60 --duration 24 --kinds temporal --start-index 10000
# more 8-s temporal scenes for the memory ablation (the main bags hold 54)
gen temporal/test-seen --split test-seen --count 60 --kinds temporal
gen temporal/test-unseen --split test-unseen --count 60 --kinds temporal

replay() {  # replay BAGS JSON [REPLAY-ARGS...]
  local src="$1" dst="$2"; shift 2
  [ -f "$dst" ] || "$py" -m refavs_ros.tools.replay "$src" --weights "$weights" --no-progress --metrics-json "$dst" "$@" > /dev/null
}
replay "$bags/main" "$out/full.json"
replay "$bags/main" "$out/zero_audio.json" --zero-audio
replay "$bags/main" "$out/no_memory.json" --beta 0
for snr in 20 10 5 0; do replay "$bags/noisy/snr$snr" "$out/noisy_snr$snr.json"; done
replay "$bags/noisy/snr0" "$out/noisy_snr0_zero_audio.json" --zero-audio
replay "$bags/occluded" "$out/occluded.json"
replay "$bags/long" "$out/long.json" --num-frames 30
replay "$bags/long" "$out/long_no_memory.json" --num-frames 30 --beta 0
for split in test-seen test-unseen; do
  replay "$bags/temporal/$split" "$out/temporal_$split.json"
  replay "$bags/temporal/$split" "$out/temporal_${split}_no_memory.json" --beta 0
done
if [ -n "$previous" ]; then
  PYTHONPATH=. "$py" -m bench.model_latency "$weights" "$previous" --wait-idle 600 --json "$out/latency.json"
fi
"$py" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
def fmt(x):
    return "—" if x is None or x != x else f"{x:.3f}"
full, za, nm = load("full.json"), load("zero_audio.json"), load("no_memory.json")
print("| subset | bags | J | F | S | J audio zeroed | J memory off |")
print("|---|---|---|---|---|---|---|")
for name, g in sorted(full["subsets"].items()):
    print(f"| {name} | {g['bags']} | {fmt(g['J'])} | {fmt(g.get('F'))} | {fmt(g.get('S'))} | "
          f"{fmt(za['subsets'][name]['J'])} | {fmt(nm['subsets'][name]['J'])} |")
print("\n| kind | J | J audio zeroed | J memory off | F |")
print("|---|---|---|---|---|")
for name, g in sorted(full["kinds"].items()):
    print(f"| {name} | {fmt(g['J'])} | {fmt(za['kinds'][name]['J'])} | {fmt(nm['kinds'][name]['J'])} | {fmt(g.get('F'))} |")
print("\n| SNR (dB) | J all | " + " | ".join(["semantic", "appearance", "spatial", "acoustic", "temporal", "null"]) + " |")
print("|---|---|---|---|---|---|---|---|")
for snr in (20, 10, 5, 0):
    r = load(f"noisy_snr{snr}.json")
    print(f"| {snr} | {fmt(r['J'])} | " + " | ".join(fmt(r["kinds"].get(k, {}).get("J")) for k in
          ["semantic", "appearance", "spatial", "acoustic", "temporal", "null"]) + " |")
r = load("noisy_snr0_zero_audio.json")
print(f"| 0, audio zeroed | {fmt(r['J'])} | " + " | ".join(fmt(r["kinds"].get(k, {}).get("J")) for k in
      ["semantic", "appearance", "spatial", "acoustic", "temporal", "null"]) + " |")
occ = load("occluded.json")
print(f"\noccluded: J {fmt(occ['J'])} F {fmt(occ.get('F'))}; per kind " +
      ", ".join(f"{k} {fmt(v['J'])}" for k, v in sorted(occ["kinds"].items())))
lf, ln = load("long.json"), load("long_no_memory.json")
print(f"long (24 s, temporal, window 30): J {fmt(lf['J'])}, memory off {fmt(ln['J'])}")
for split in ("test-seen", "test-unseen"):
    tf, tn = load(f"temporal_{split}.json"), load(f"temporal_{split}_no_memory.json")
    print(f"temporal only, {split} (60 x 8 s): J {fmt(tf['J'])}, memory off {fmt(tn['J'])}, "
          f"drop {fmt(tf['J'] - tn['J'])}")
lat = load("latency.json")
if lat:
    for w, r in lat["models"].items():
        print(f"latency {w}: p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms, mean {r['mean_ms']:.2f} ms, "
              f"p50 ratio {r['p50_ratio_to_last']:.3f}")
    print(f"load average start {lat['loadavg_start'][0]:.2f}, end {lat['loadavg_end'][0]:.2f}")
EOF
echo "metrics written to $out/*.json"
