#!/usr/bin/env python3
"""Build the ROS 2 Python bindings of ``vision_msgs`` and ``audio_common_msgs`` from ``msg/``.

Neither package is on PyPI, so ``scripts/install.sh`` generates them from the ``.msg`` texts this
repository carries (``msg/vision_msgs``, ``msg/audio_common_msgs``; see ``msg/README.md``) as two
small ament_cmake interface packages built with colcon, against the ament_cmake / rosidl wheels of
the virtual environment (wheel mode) or against a sourced ROS 2 (system mode, only the packages
that ROS does not already provide). Run it with the virtual environment's Python::

    .venv/bin/python scripts/ros/interfaces.py [--mode wheels|system] [--work DIR] [--force]

Layout (all under the virtual environment, outside git and outside the ``refavs_ros`` Python
package, which must not generate interfaces of its own: ros2/rosidl_python#141)::

    .venv/ros_interfaces/src/<pkg>/      generated package.xml, CMakeLists.txt, msg/*.msg
    .venv/ros_interfaces/build|log/      colcon build and log bases
    .venv/ros_interfaces/install/        colcon --merge-install prefix (lib/, share/, lib/pythonX.Y/)
    .venv/ros_interfaces/install/.refavs_key   cache key of the finished build
    <site-packages>/refavs_ros_interfaces.pth  makes the bindings importable (see below)

Cache: the key hashes this script, every ``.msg`` text, the Python version, the versions of the
installed ``ros-*`` / ``colcon-*`` / ``empy`` / ``lark-parser`` distributions, the mode and (system
mode) ``ROS_DISTRO`` / ``AMENT_PREFIX_PATH``. An unchanged key skips the build (a second run takes
well under a second after a smoke test); any change rebuilds from scratch.

Two defects of the PyPI wheels are handled here (measured on Debian 12, Python 3.11, wheels of
``scripts/ros/jazzy-constraints.txt``):

1. The ament_cmake / rosidl_default_generators wheels do not declare everything an interface build
   needs; the missing ones are listed in setup.py's ``ros-build`` extra.
2. The wheels' exported CMake targets (``<pkg>::<pkg>__rosidl_generator_py`` of std_msgs,
   geometry_msgs, ...) name the wheel builder's interpreter in ``INTERFACE_INCLUDE_DIRECTORIES``
   (``/opt/python/cp311-cp311/include/python3.11`` and its numpy include directory). CMake refuses
   to generate with a non-existent include path, so each generated CMakeLists.txt includes
   ``refavs_wheel_fixups.cmake`` (written below), which rewrites, on every imported target of the
   directory, a missing ``.../include/python3.X`` to this interpreter's ``Python3_INCLUDE_DIRS``, a
   missing ``.../numpy/...include`` to ``Python3_NumPy_INCLUDE_DIRS`` and drops any other missing
   path with a warning. Existing paths are left alone, so the same file is a no-op on a real ROS.

How the bindings become importable with no ``source`` step (found by trying; wheel mode):

* Python finds the packages through ``refavs_ros_interfaces.pth`` in the venv's site-packages,
  which appends ``install/lib/pythonX.Y/site-packages`` to ``sys.path`` (appended: a package of
  the same name earlier on the path, e.g. from a sourced workspace, wins).
* The extension modules' own libraries (``lib<pkg>__rosidl_generator_c.so`` ...) are found through
  the RUNPATH set at build time (``$ORIGIN``-relative plus the linked libraries' directories).
* rclpy asks ``rosidl_typesupport_c`` for the rmw's type support, which ``dlopen()``s
  ``lib<pkg>__rosidl_typesupport_fastrtps_c.so`` BY NAME (rcutils_load_shared_library). glibc
  resolves such a name with the LD_LIBRARY_PATH the process STARTED with (the wheels'
  ``ros_wheels_bootstrapper.pth`` re-executes Python with the venv's ``lib/`` on it; our directory
  is not there), and setting ``os.environ['LD_LIBRARY_PATH']`` later, e.g. in a conftest, has no
  effect on it (tried: "Type support not from this implementation ... cannot open shared object
  file"). A library already loaded under that SONAME satisfies the lookup, so the ``.pth`` also
  installs a tiny import hook (``_refavs_ros_interfaces.py``) that, when ``vision_msgs`` or
  ``audio_common_msgs`` is imported FROM THIS BUILD, first loads that package's
  ``lib<pkg>__rosidl_typesupport_*.so`` by absolute path with ctypes. Nothing is loaded for other
  imports or when the package comes from elsewhere.

Exit status: 0 built or cached and the smoke test passed; 1 otherwise (the colcon log tail is
printed).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MSG_DIR = REPO / "msg"
PTH_NAME = "refavs_ros_interfaces.pth"
HOOK_MODULE = "_refavs_ros_interfaces"
KEY_FILE = ".refavs_key"

# package -> (msg/ sub-folder, interface dependencies, version, description)
PACKAGES: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "vision_msgs": (
        "vision_msgs", ("std_msgs", "geometry_msgs"), "4.1.1",
        (
            "Subset of ros-perception/vision_msgs 4.x (Detection2DArray and its parts) generated by "
            "refavs_ros from msg/vision_msgs; field for field the upstream definitions."
        ),
    ),
    "audio_common_msgs": (
        "audio_common_msgs", ("std_msgs",), "4.0.10",
        (
            "mgonzs13/audio_common audio_common_msgs messages (AudioStamped, Audio, AudioData, "
            "AudioInfo) generated by refavs_ros from msg/audio_common_msgs."
        ),
    ),
}

FIXUPS_CMAKE = r"""# Generated by refavs_ros scripts/ros/interfaces.py (see its docstring, defect 2).
# The PyPI ROS 2 wheels export include directories of the machine that built them
# (/opt/python/cp311-cp311/include/python3.11, .../numpy/_core/include). Point missing ones at
# this interpreter's headers; leave existing paths alone (no-op on a real ROS installation).
find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
get_property(_refavs_targets DIRECTORY PROPERTY IMPORTED_TARGETS)
foreach(_t IN LISTS _refavs_targets)
  get_target_property(_dirs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT _dirs)
    continue()
  endif()
  set(_new "")
  set(_changed FALSE)
  foreach(_d IN LISTS _dirs)
    if(_d MATCHES "^\\$<" OR EXISTS "${_d}")
      list(APPEND _new "${_d}")
    elseif(_d MATCHES "numpy")
      list(APPEND _new ${Python3_NumPy_INCLUDE_DIRS})
      set(_changed TRUE)
    elseif(_d MATCHES "include/python3")
      list(APPEND _new ${Python3_INCLUDE_DIRS})
      set(_changed TRUE)
    else()
      message(WARNING "refavs_ros: dropping missing include directory ${_d} of ${_t}")
      set(_changed TRUE)
    endif()
  endforeach()
  if(_changed)
    list(REMOVE_DUPLICATES _new)
    set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
  endif()
endforeach()
"""

HOOK_SOURCE = '''"""Generated by refavs_ros scripts/ros/interfaces.py; do not edit (rebuilt by install.sh).

Import hook: before {packages} is imported from {site}, load its
lib<pkg>__rosidl_typesupport_*.so from {lib} by absolute path, so rosidl_typesupport_c's
dlopen-by-name of those libraries finds them without LD_LIBRARY_PATH (see the script's docstring).
"""

import ctypes
import importlib.machinery
import os
import sys

_LIB = {lib!r}
_SITE = {site!r}
_PACKAGES = frozenset({packages!r})
_loaded = set()


class _PreloadTypesupport:
    """Meta path finder that never finds anything itself; it only preloads libraries."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in _PACKAGES or name in _loaded:
            return None
        _loaded.add(name)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        origin = getattr(spec, "origin", None) or ""
        if not os.path.abspath(origin).startswith(_SITE + os.sep):
            return None  # the package comes from elsewhere (e.g. a sourced ROS): not ours
        prefix = "lib" + name + "__rosidl_typesupport_"
        for lib in sorted(os.listdir(_LIB)):
            if lib.startswith(prefix) and lib.endswith(".so"):
                try:
                    ctypes.CDLL(os.path.join(_LIB, lib))
                except OSError as exc:
                    sys.stderr.write("refavs_ros interfaces: cannot load %s: %s\\n" % (lib, exc))
        return None


sys.meta_path.insert(0, _PreloadTypesupport())
'''

SMOKE_TEST = """
import importlib, sys
from rclpy.serialization import deserialize_message, serialize_message
pkgs = sys.argv[1].split(",")
types = {"vision_msgs": "Detection2DArray", "audio_common_msgs": "AudioStamped"}
for pkg in pkgs:
    cls = getattr(importlib.import_module(pkg + ".msg"), types[pkg])
    msg = cls()
    assert deserialize_message(serialize_message(msg), cls) == msg, pkg
    print(pkg, "from", importlib.import_module(pkg).__file__)
"""


def log(text: str) -> None:
    """Print one progress line of the build."""
    print(f"ros_interfaces: {text}", flush=True)


def msg_files(package: str) -> list[Path]:
    """Return the sorted ``.msg`` files of one package folder in ``msg/``."""
    files = sorted((MSG_DIR / PACKAGES[package][0]).glob("*.msg"))
    if not files:
        raise SystemExit(f"ros_interfaces: no .msg files in {MSG_DIR / PACKAGES[package][0]}")
    return files


def package_xml(package: str) -> str:
    """Return the ``package.xml`` (format 3) of a generated interface package."""
    _, deps, version, description = PACKAGES[package]
    depends = "\n".join(f"  <depend>{d}</depend>" for d in deps)
    return f"""<?xml version="1.0"?>
<package format="3">
  <name>{package}</name>
  <version>{version}</version>
  <description>{description}</description>
  <maintainer email="maintainer@example.com">refavs_ros maintainers (generated)</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
{depends}
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export>
    <build_type>ament_cmake</build_type>
  </export>
</package>
"""


def cmakelists(package: str) -> str:
    """Return the ``CMakeLists.txt`` of a generated interface package."""
    _, deps, _, _ = PACKAGES[package]
    finds = "\n".join(f"find_package({d} REQUIRED)" for d in deps)
    msgs = "\n".join(f'  "msg/{p.name}"' for p in msg_files(package))
    return f"""cmake_minimum_required(VERSION 3.8)
project({package})
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
{finds}
rosidl_generate_interfaces(${{PROJECT_NAME}}
{msgs}
  DEPENDENCIES {" ".join(deps)}
)
include(refavs_wheel_fixups.cmake)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""


def distributions() -> dict[str, str]:
    """Return the installed ros-* / colcon-* / generator-input distributions and versions."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(("ros-", "colcon-")) or name in {"empy", "lark-parser", "numpy"}:
            out[name] = dist.version
    return dict(sorted(out.items()))


def cache_key(mode: str, packages: list[str]) -> str:
    """Hash of everything the build output depends on (see the module docstring)."""
    cmake = subprocess.run(["cmake", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    material = {
        "script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "python": sys.version,
        "prefix": sys.prefix,
        "mode": mode,
        "packages": packages,
        "msgs": {f"{p}/{f.name}": f.read_text(encoding="utf-8") for p in packages for f in msg_files(p)},
        "dists": distributions(),
        "cmake": cmake,
        "ros": [os.environ.get("ROS_DISTRO", ""), os.environ.get("AMENT_PREFIX_PATH", "")]
        if mode == "system" else [],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def site_packages() -> Path:
    """The virtual environment's site-packages directory (where the ``.pth`` goes)."""
    return Path(sysconfig.get_paths()["purelib"])


def write_sources(src: Path, packages: list[str]) -> None:
    """Write the generated interface packages under ``src``."""
    for package in packages:
        root = src / package
        (root / "msg").mkdir(parents=True)
        for f in msg_files(package):
            shutil.copyfile(f, root / "msg" / f.name)
        (root / "package.xml").write_text(package_xml(package), encoding="utf-8")
        (root / "CMakeLists.txt").write_text(cmakelists(package), encoding="utf-8")
        (root / "refavs_wheel_fixups.cmake").write_text(FIXUPS_CMAKE, encoding="utf-8")


def colcon_env(mode: str) -> dict[str, str]:
    """Environment for colcon: in wheel mode the venv is the ament/CMake prefix."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if mode == "wheels":
        prefix = sys.prefix
        for var in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
            env[var] = os.pathsep.join(p for p in (prefix, env.get(var, "")) if p)
    return env


def run_colcon(work: Path, mode: str, jobs: int) -> None:
    """Run ``colcon build`` of ``work/src`` into ``work/install`` (raises SystemExit on failure)."""
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    if colcon is None:
        raise SystemExit("ros_interfaces: colcon not found (pip install colcon-common-extensions)")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"ros_interfaces: {tool} not found (apt-get install cmake g++ python3-dev)")
    cmd = [
        colcon, "--log-base", str(work / "log"), "build",
        "--base-paths", str(work / "src"), "--build-base", str(work / "build"),
        "--install-base", str(work / "install"), "--merge-install",
        "--parallel-workers", str(jobs),
        "--event-handlers", "console_cohesion+", "desktop_notification-", "status-", "terminal_title-",
        "--cmake-args",
        f"-DPython3_EXECUTABLE={sys.executable}",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_TESTING=OFF",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN;$ORIGIN/../../..",
        "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON",
    ]
    proc = subprocess.run(cmd, env=colcon_env(mode), capture_output=True, text=True, check=False)
    (work / "colcon_output.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        raise SystemExit(f"ros_interfaces: colcon build failed (exit {proc.returncode}):\n{tail}")


def write_pth(install: Path, packages: list[str]) -> Path:
    """Write the hook module into the install and the ``.pth`` into the venv's site-packages."""
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = install / "lib" / pyver / "site-packages"
    (site / f"{HOOK_MODULE}.py").write_text(
        HOOK_SOURCE.format(lib=str(install / "lib"), site=str(site), packages=tuple(packages)),
        encoding="utf-8",
    )
    pth = site_packages() / PTH_NAME
    pth.write_text(
        f"{site}\n"
        f"import importlib.util as _u; _u.find_spec({HOOK_MODULE!r}) and __import__({HOOK_MODULE!r})\n",
        encoding="utf-8",
    )
    return pth


def missing_packages() -> list[str]:
    """System mode: the packages the sourced ROS does not provide (checked without our .pth)."""
    code = (
        "import importlib.util, sys; "
        f"print(','.join(p for p in {list(PACKAGES)!r} if importlib.util.find_spec(p) is None))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=False)
    # -S skips site (and our .pth) but also the venv's site-packages, where a system-mode
    # interface package never lives; PYTHONPATH (the sourced ROS) is still honoured.
    return [p for p in out.stdout.strip().split(",") if p]


def smoke_test(packages: list[str]) -> None:
    """Import each built package in a fresh interpreter and round-trip a message through rmw."""
    proc = subprocess.run(
        [sys.executable, "-c", SMOKE_TEST, ",".join(packages)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if proc.returncode:
        raise SystemExit(f"ros_interfaces: smoke test failed:\n{proc.stdout}{proc.stderr}")
    for line in proc.stdout.strip().splitlines():
        log(f"ok: {line}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("wheels", "system"), default="wheels",
                        help="wheels: build against the venv's ROS wheels; system: a sourced ROS 2")
    parser.add_argument("--work", type=Path, default=Path(sys.prefix) / "ros_interfaces",
                        help="work directory (default: <venv>/ros_interfaces)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="colcon parallel workers")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache key matches")
    args = parser.parse_args(argv)

    work: Path = args.work.resolve()
    install = work / "install"
    pth = site_packages() / PTH_NAME
    if args.mode == "system":
        pth.unlink(missing_ok=True)
        packages = missing_packages()
        if not packages:
            log(f"the sourced ROS 2 ({os.environ.get('ROS_DISTRO', '?')}) provides {', '.join(PACKAGES)}")
            return 0
    else:
        packages = list(PACKAGES)
    key = cache_key(args.mode, packages)
    key_path = install / KEY_FILE
    t0 = time.monotonic()
    if not args.force and key_path.is_file() and key_path.read_text().strip() == key:
        write_pth(install, packages)
        smoke_test(packages)
        log(f"cached build of {', '.join(packages)} in {install} ({time.monotonic() - t0:.1f} s)")
        return 0

    log(f"building {', '.join(packages)} with colcon ({args.mode} mode) in {work}")
    pth.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    write_sources(work / "src", packages)
    run_colcon(work, args.mode, args.jobs)
    write_pth(install, packages)
    smoke_test(packages)
    key_path.write_text(key + "\n")
    log(f"built {', '.join(packages)} in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
