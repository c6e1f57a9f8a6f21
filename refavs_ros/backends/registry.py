"""Create a stage backend by name; each backend's module (and library) is imported only when asked for.

``torch`` needs nothing extra; ``onnxruntime`` imports onnxruntime (never TensorRT);
``tensorrt`` imports TensorRT and needs a CUDA GPU.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from refavs_ros.backends.base import StageBackend
from refavs_ros.errors import BackendUnavailableError, ConfigError
from refavs_ros.models.eemc import EEMC

BACKENDS = ("torch", "onnxruntime", "tensorrt")
"""Backend names accepted by :func:`create_backend`."""


def create_backend(
    name: str,
    model: EEMC | nn.Module,
    *,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    precision: str = "fp16",
    threads: int | None = None,
    max_window: int | None = None,
    opt_window: int | None = None,
) -> StageBackend:
    """Build the backend ``name`` for ``model``.

    Args:
        name: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        model: EEMC model, or the released model's ``OfficialStageModel`` (weights on CPU are
            fine; the backend moves/exports them).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available). torch:
            the torch device; onnxruntime: CPU or CUDA execution provider; tensorrt: must be a
            CUDA device (``"cpu"`` is taken as ``"cuda"`` there, since TensorRT only runs on GPUs).
        cache_dir: root of the ONNX / TensorRT engine cache; None =
            :func:`refavs_ros.export.cache.default_cache_dir`.
        precision: TensorRT precision ``"fp16"`` or ``"fp32"`` (ignored by the other backends).
        threads: CPU threads per operator for onnxruntime (None = every core); the torch
            backend uses the process-wide ``torch.set_num_threads`` (see ``from_pretrained``).
        max_window, opt_window: TensorRT, released model only: the fusion-window optimization
            profile (min 1, opt ``opt_window``, max ``max_window``); None = the backend's
            defaults. The other backends accept any window.

    Raises:
        ConfigError: unknown backend name or bad device/precision.
        BackendUnavailableError: the library or device for the backend is missing.
        ModelLoadError: export or engine build/load failed.
    """
    if name == "torch":
        from refavs_ros.backends.torch_backend import TorchBackend

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return TorchBackend(model, device=device)
    if name == "onnxruntime":
        try:
            from refavs_ros.backends.onnx_backend import OnnxRuntimeBackend
        except ImportError as exc:  # onnxruntime missing or broken
            raise BackendUnavailableError(f"backend 'onnxruntime' is not available: {exc}") from exc
        return OnnxRuntimeBackend.from_model(model, cache_dir=cache_dir, device=device, intra_op_threads=threads)
    if name == "tensorrt":
        from refavs_ros.backends.tensorrt_backend import (
            TensorRTBackend,  # imports tensorrt lazily
        )

        trt_device = "cuda" if device in ("cpu", "auto") else device
        windows = {k: v for k, v in (("max_window", max_window), ("opt_window", opt_window)) if v is not None}
        return TensorRTBackend.from_model(model, cache_dir=cache_dir, precision=precision, device=trt_device, **windows)
    raise ConfigError(f"unknown backend {name!r}; expected one of {BACKENDS}")
