#!/usr/bin/env bash
# Set up refavs_ros on a fresh Debian/Ubuntu machine (Python >= 3.10), idempotently:
#   1. Debian packages for the scene generator's real media (espeak-ng, sox, freedesktop sounds)
#      and PortAudio for the microphone node -- skipped with a warning without root/sudo;
#   2. a virtual environment in .venv (PEP 668 systems refuse system-wide pip installs);
#   3. torch FIRST (so no CUDA build is pulled where none is wanted), then this package with its
#      test extras.
# Environment: REFAVS_VENV (default .venv), REFAVS_TORCH (default "torch==2.13.0"; on a CUDA
# machine or a Jetson install the torch build you want first and set REFAVS_TORCH="").
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${REFAVS_VENV:-.venv}"
torch_req="${REFAVS_TORCH-torch==2.13.0}"

apt_pkgs="espeak-ng sox sound-theme-freedesktop libportaudio2"
if command -v apt-get >/dev/null 2>&1; then
  missing=$(for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
    if [ "$sudo" = "none" ]; then
      echo "install.sh: warning: cannot install $missing (no root/sudo); scenes fall back to procedural media" >&2
    else
      $sudo apt-get update -qq && $sudo apt-get install -y -qq $missing >/dev/null \
        || echo "install.sh: warning: apt-get could not install $missing; scenes fall back to procedural media" >&2
    fi
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >/dev/null
if [ -n "$torch_req" ]; then
  "$py" -m pip install -q "$torch_req"
fi
"$py" -m pip install -q -e ".[test,mic]"
echo "install.sh: ready ($("$py" -c 'import torch, refavs_ros; print("refavs_ros", refavs_ros.__version__, "torch", torch.__version__)'))"
