"""Locate files shipped with the package (default weights, config), whatever the install type."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from refavs_ros.errors import ModelLoadError

DEFAULT_WEIGHTS = "refavs_tiny.safetensors"
"""File name of the shipped tiny-profile weights in ``models/``."""


def share_dirs() -> list[Path]:
    """Candidate ``share/refavs_ros``-like directories, most specific first.

    Order: ``$REFAVS_ROS_SHARE``; the source checkout (the directory above the package, for
    ``pip install -e`` and running from the repository); ``<prefix>/share/refavs_ros`` for
    ``pip install .`` and colcon installs; the ament index when ROS is sourced.
    """
    dirs: list[Path] = []
    if os.environ.get("REFAVS_ROS_SHARE"):
        dirs.append(Path(os.environ["REFAVS_ROS_SHARE"]))
    dirs.append(Path(__file__).resolve().parent.parent)
    for prefix in (sys.prefix, sys.base_prefix, os.environ.get("COLCON_PREFIX_PATH", "")):
        if prefix:
            dirs.extend(Path(p) / "share" / "refavs_ros" for p in prefix.split(os.pathsep) if p)
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / "refavs_ros")
    return dirs


def find_shipped(relative: str) -> Path:
    """Path of a shipped file such as ``models/refavs_tiny.safetensors``.

    Raises:
        ModelLoadError: not found; the message lists every directory searched.
    """
    searched = []
    for base in share_dirs():
        candidate = base / relative
        if candidate.is_file():
            return candidate
        searched.append(str(base))
    raise ModelLoadError(f"shipped file {relative!r} not found; searched: {searched}")


def default_weights_path() -> Path:
    """The shipped tiny EEMC weights (``models/refavs_tiny.safetensors``)."""
    return find_shipped(f"models/{DEFAULT_WEIGHTS}")


def file_digest(path: str | Path, algorithm: str = "sha256") -> bytes:
    """Digest of a file's bytes, read in 1-MiB blocks.

    Args:
        path: the file. algorithm: a :mod:`hashlib` name ("sha256", "sha512", ...).

    Raises:
        OSError: the file cannot be read. ValueError: unknown algorithm.
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes (keys TensorRT engines by their ONNX source; checks fetched voice models)."""
    return file_digest(path, "sha256").hex()


def default_cache_dir() -> Path:
    """Root of refavs_ros's caches (exported graphs, TensorRT engines, voice models).

    ``$REFAVS_ROS_CACHE`` if set, else ``$XDG_CACHE_HOME/refavs_ros``, else
    ``~/.cache/refavs_ros``.
    """
    if os.environ.get("REFAVS_ROS_CACHE"):
        return Path(os.environ["REFAVS_ROS_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "refavs_ros"
