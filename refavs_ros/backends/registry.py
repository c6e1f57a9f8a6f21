"""Create a stage backend by name."""

from __future__ import annotations

from pathlib import Path

from refavs_ros.backends.base import StageBackend
from refavs_ros.errors import ConfigError
from refavs_ros.models.eemc import EEMC

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def create_backend(
    name: str,
    model: EEMC,
    *,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    precision: str = "fp16",
) -> StageBackend:
    """Build the backend ``name`` for ``model``.

    Args:
        name: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        model: EEMC model (weights on CPU are fine; the backend moves/exports them).
        device: torch device for the torch backend (``"cpu"``, ``"cuda"``...).
        cache_dir: where exported ONNX files / TensorRT engines are cached.
        precision: TensorRT precision ``"fp16"`` or ``"fp32"``.

    Raises:
        ConfigError: unknown backend name.
        BackendUnavailableError: the library or device for the backend is missing.
    """
    if name == "torch":
        from refavs_ros.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device)
    if name in ("onnxruntime", "tensorrt"):
        try:
            from refavs_ros.backends import onnx_backend, tensorrt_backend  # noqa: F401
        except ImportError as exc:  # pragma: no cover - filled in by the deployment work
            from refavs_ros.errors import BackendUnavailableError

            raise BackendUnavailableError(f"backend {name!r} is not available in this build: {exc}") from exc
        if name == "onnxruntime":
            return onnx_backend.OnnxRuntimeBackend.from_model(model, cache_dir=cache_dir)
        return tensorrt_backend.TensorRTBackend.from_model(model, cache_dir=cache_dir, precision=precision)
    raise ConfigError(f"unknown backend {name!r}; expected one of {BACKENDS}")
