#!/usr/bin/env bash
# Measure the figures of models/MODEL_CARD.md: J/F per test subset, S on test-null, and the two
# test-time ablations (audio zeroed; cached memory off, beta = 0) per expression kind.
# Usage: scripts/model_card_eval.sh [WEIGHTS] [OUT_DIR]   (run after ./scripts/install.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
weights="${1:-models/refavs_tiny.safetensors}"
out="${2:-runs/model_card}"
py="${REFAVS_PYTHON:-.venv/bin/python}"
seed=2026
mkdir -p "$out/bags"
for split in test-seen:150 test-unseen:150 test-null:60; do
  name="${split%%:*}"; count="${split##*:}"
  [ -d "$out/bags/$name" ] || "$py" -m refavs_ros.tools.scenes_cli "$out/bags/$name" --split "$name" --count "$count" --seed "$seed"
done
"$py" -m refavs_ros.tools.replay "$out/bags" --weights "$weights" --no-progress --metrics-json "$out/full.json"
"$py" -m refavs_ros.tools.replay "$out/bags" --weights "$weights" --no-progress --zero-audio --metrics-json "$out/zero_audio.json"
"$py" -m refavs_ros.tools.replay "$out/bags" --weights "$weights" --no-progress --beta 0 --metrics-json "$out/no_memory.json"
echo "metrics written to $out/{full,zero_audio,no_memory}.json"
