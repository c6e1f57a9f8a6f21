#!/usr/bin/env bash
# GPU figures for the released model on TensorRT FP16/FP32, ONNX Runtime CUDA and PyTorch eager
# (issue 12), then the GPU-only parity tests. Run from the repository root on a CUDA machine:
#
#     bash bench/gpu_official.sh                      # every backend
#     bash bench/gpu_official.sh --backends tensorrt-fp16 --frames 100
#
# Needs a CUDA build of torch, tensorrt (>= 8.6; 10.x API) and optionally onnxruntime-gpu, plus
# the package's requirements. Engines and ONNX graphs are cached in $CACHE (default
# /tmp/refavs_gpu_cache), so a second call (e.g. another --backends subset) only loads them.
set -u
PY=${PYTHON:-python3}
CACHE=${CACHE:-/tmp/refavs_gpu_cache}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
date -Is
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "nvidia-smi not found"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
"$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" || echo "tensorrt not installed"
"$PY" -m bench.gpu_official --cache "$CACHE" --json bench/results_official_gpu.json \
    --markdown bench/tables_official_gpu.md "$@"
status=$?
"$PY" -m pytest -q -p no:cacheprovider -k tensorrt test/test_official_backends.py test/test_backends.py
exit $status
