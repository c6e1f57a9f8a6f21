"""Domain error hierarchy of refavs_ros.

Low-level failures (numpy, torch, rosbags, onnxruntime, TensorRT) are translated into these at
module boundaries, with context that names the offending input, file or topic. Every class also
derives from the closest built-in exception so callers that catch ``ValueError`` or
``RuntimeError`` keep working.
"""

from __future__ import annotations


class RefAvsError(Exception):
    """Base class of every error raised on purpose by refavs_ros."""


class InputError(RefAvsError, ValueError):
    """A sensor message, array or command cannot be used (bad encoding, shape, NaN, ...).

    Args:
        message: what is wrong, naming the offending value.
        reason: a short stable label of the kind of problem (e.g. ``"unsupported encoding"``,
            ``"stale stamp"``), used to count rejections by reason in diagnostics; default
            ``"invalid"``.
    """

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(RefAvsError, ValueError):
    """A configuration value or parameter is out of range or inconsistent."""


class ModelLoadError(RefAvsError, RuntimeError):
    """Weights, a checkpoint, a model directory or an engine is missing or incompatible."""


class BagError(RefAvsError, RuntimeError):
    """A rosbag2 file is missing, truncated, corrupt, or lacks a required topic."""


class BackendUnavailableError(RefAvsError, RuntimeError):
    """An inference backend (onnxruntime, TensorRT, CUDA) is not installed or has no device."""
