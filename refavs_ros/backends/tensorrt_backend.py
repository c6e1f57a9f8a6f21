"""TensorRT backend: one engine per EEMC stage, built from the stage's ONNX graph and cached.

Build (TensorRT Python API, 10.x/11.x): ``Builder`` -> network (``OnnxParser.parse_from_file``)
-> ``IBuilderConfig`` (workspace pool limit; precision, below) -> ``build_serialized_network``.
Engines are cached as files named by the SHA-256 of the ONNX bytes, the TensorRT version, the
GPU name and the precision, so a start never rebuilds an engine it already has and a new GPU,
TensorRT or model gets its own engine (an engine is only valid for the GPU model and TensorRT
version that built it).

Precision:
* ``"fp32"``: float32 graph, TF32 tactics disabled (parity with PyTorch within ~1e-4).
* ``"fp16"`` (default): with TensorRT 10.x, the float32 graph with ``BuilderFlag.FP16``
  (TensorRT picks per layer); with TensorRT >= 11, where that flag is gone and networks are
  strongly typed, a graph exported with float16 weights/arithmetic and float32 I/O
  (``refavs_ros.export.onnx_utils.HalfStage``) built with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.

Run: :class:`TRTStage` wraps one engine as a callable with the stage's named inputs/outputs
(in the manner of torch2trt's ``TRTModule``), using PyTorch CUDA tensors as device buffers and
the TensorRT 10 name-based API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3`` on the current PyTorch CUDA stream).

``tensorrt`` is imported lazily: importing this module never needs it;
:func:`import_tensorrt` and :func:`require_cuda` raise
:class:`refavs_ros.errors.BackendUnavailableError` with the reason when it or a GPU is missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from refavs_ros.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
)
from refavs_ros.export.cache import cached_export_dir, default_cache_dir, file_sha256
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES

PRECISIONS = ("fp16", "fp32")
"""Accepted values of ``precision``."""

DEFAULT_WORKSPACE_BYTES = 1 << 30
"""Builder workspace memory-pool limit (bytes); fits Jetson Orin Nano (8 GB shared)."""


def import_tensorrt() -> ModuleType:
    """Import the ``tensorrt`` Python package.

    Raises:
        BackendUnavailableError: TensorRT is not installed (with install hints).
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc}); on x86 `pip install tensorrt`, on Jetson use the "
            "JetPack python3-libnvinfer package"
        ) from exc
    return trt


def require_cuda(device: str = "cuda") -> torch.device:
    """The CUDA device TensorRT will run on.

    Args:
        device: ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (= ``"cuda"``).

    Raises:
        ConfigError: ``device`` is not a CUDA device string (e.g. ``"cpu"``).
        BackendUnavailableError: PyTorch has no CUDA support or sees no GPU.
    """
    if device == "auto":
        device = "cuda"
    if not (device == "cuda" or device.startswith("cuda:")):
        raise ConfigError(f"the tensorrt backend runs on a CUDA device, got device={device!r}")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"the tensorrt backend needs a CUDA GPU, but torch {torch.__version__} sees none "
            f"(CUDA build: {torch.version.cuda or 'no'})"
        )
    dev = torch.device(device)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"{device} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return dev


def engine_file_name(stage: str, onnx_sha256: str, trt_version: str, gpu_name: str, precision: str) -> str:
    """Cache file name of an engine: every input that makes an engine invalid is in it.

    Args:
        stage: stage name.
        onnx_sha256: SHA-256 (hex) of the ONNX bytes the engine was built from.
        trt_version: ``tensorrt.__version__``.
        gpu_name: ``torch.cuda.get_device_name`` of the target GPU.
        precision: ``"fp16"`` or ``"fp32"``.

    Returns:
        e.g. ``"visual-3f2a...c1-trt10.3.0-nvidia_orin-fp16.engine"`` (model hash: 16 hex digits).
    """
    gpu = re.sub(r"[^a-z0-9]+", "_", gpu_name.lower()).strip("_")
    return f"{stage}-{onnx_sha256[:16]}-trt{trt_version}-{gpu}-{precision}.engine"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def uses_strong_typing(trt: ModuleType) -> bool:
    """True when this TensorRT has no ``BuilderFlag.FP16`` (>= 11): FP16 must be in the graph."""
    return not hasattr(trt.BuilderFlag, "FP16")


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    strongly_typed: bool = False,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX file and write it atomically.

    Args:
        onnx_path: fixed-shape ONNX graph.
        engine_path: output engine file.
        precision: ``"fp16"`` (sets ``BuilderFlag.FP16`` unless ``strongly_typed``) or
            ``"fp32"`` (TF32 disabled).
        workspace_bytes: builder workspace memory-pool limit.
        strongly_typed: build a strongly typed network (layer precisions come from the graph's
            types, e.g. a float16 export); needed for FP16 on TensorRT >= 11.

    Returns:
        ``engine_path``.

    Raises:
        BackendUnavailableError: TensorRT missing.
        ModelLoadError: the ONNX parser or the builder failed (parser errors listed).
    """
    trt = import_tensorrt()
    _check_precision(precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if not strongly_typed:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    return engine_path


_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
}


class TRTStage:
    """A deserialized TensorRT engine as a callable with named inputs and outputs.

    Args:
        engine_path: serialized engine file.
        device: CUDA device the engine runs on.

    Attributes:
        input_names / output_names: engine I/O tensor names (ONNX names), in engine order.
        shapes: tensor name -> fixed shape.
        dtypes: tensor name -> torch dtype of the engine buffer.

    Raises:
        BackendUnavailableError: TensorRT or the GPU is missing.
        ModelLoadError: the file cannot be deserialized (built by another TensorRT/GPU, or
            corrupt).
    """

    def __init__(self, engine_path: str | Path, device: str | torch.device = "cuda") -> None:
        trt = import_tensorrt()
        self.device = require_cuda(str(device))
        self.path = Path(engine_path)
        # the logger and runtime are kept for the engine's lifetime
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise ModelLoadError(f"TensorRT cannot deserialize {self.path} (other TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_names if is_input else self.output_names).append(name)
            self.shapes[name] = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            self.dtypes[name] = _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the engine once.

        Args:
            **inputs: every input by name, tensors of the engine's shapes (any device/dtype:
                they are moved to the engine's device and dtype).

        Returns:
            every output by name: CUDA tensors of the engine's dtypes, valid once the current
            CUDA stream reaches them (``.cpu()`` synchronises).

        Raises:
            KeyError: a missing input.
            InputError: a wrong shape.
            RuntimeError: TensorRT rejected an address or the enqueue failed.
        """
        buffers: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in inputs:
                raise KeyError(f"engine {self.path.name} needs input {name!r}")
            x = inputs[name]
            if tuple(x.shape) != self.shapes[name]:
                raise InputError(f"engine {self.path.name} input {name!r} must have shape {self.shapes[name]}, got {tuple(x.shape)}")
            buffers[name] = x.to(device=self.device, dtype=self.dtypes[name]).contiguous()
            self.context.set_input_shape(name, self.shapes[name])
        for name in self.output_names:
            buffers[name] = torch.empty(self.shapes[name], dtype=self.dtypes[name], device=self.device)
        for name, buf in buffers.items():
            if not self.context.set_tensor_address(name, buf.data_ptr()):
                raise RuntimeError(f"TensorRT rejected the buffer of {name!r} in {self.path.name}")
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path.name}")
        return {name: buffers[name] for name in self.output_names}


class TensorRTBackend:
    """:class:`refavs_ros.backends.base.StageBackend` over one TensorRT engine per stage.

    Args:
        stages: a :class:`TRTStage` per stage of :data:`STAGES` with the stage's I/O names.
        precision: precision the engines were built with (informative).

    Raises:
        ModelLoadError: a stage is missing or its engine has other I/O names.
    """

    name = "tensorrt"

    def __init__(self, stages: dict[str, TRTStage], precision: str = "fp16") -> None:
        for stage, spec in STAGES.items():
            if stage not in stages:
                raise ModelLoadError(f"tensorrt backend has no engine for stage {stage!r}")
            eng = stages[stage]
            if set(eng.input_names) != set(spec.inputs) or set(eng.output_names) != set(spec.outputs):
                raise ModelLoadError(
                    f"engine {eng.path} has I/O {eng.input_names} -> {eng.output_names}; "
                    f"expected {list(spec.inputs)} -> {list(spec.outputs)}"
                )
        self.stages = stages
        self.precision = precision

    @classmethod
    def from_model(
        cls,
        model: EEMC,
        cache_dir: str | Path | None = None,
        precision: str = "fp16",
        *,
        device: str = "cuda",
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    ) -> TensorRTBackend:
        """Export the stages to ONNX (cached), build missing engines (cached) and load them.

        Args:
            model: EEMC model.
            cache_dir: cache root; None = :func:`refavs_ros.export.cache.default_cache_dir`. ONNX files
                go to ``<cache_dir>/onnx/...``, engines to ``<cache_dir>/tensorrt/``.
            precision: ``"fp16"`` (default) or ``"fp32"``.
            device: ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
            workspace_bytes: builder workspace limit for new engines.

        Raises:
            ConfigError: bad precision or a non-CUDA device.
            BackendUnavailableError: TensorRT or a CUDA GPU is missing (checked before any export).
            ModelLoadError: export, parsing, building or deserialisation failed.
        """
        _check_precision(precision)
        trt = import_tensorrt()
        dev = require_cuda(device)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        half_graph = precision == "fp16" and uses_strong_typing(trt)
        report = cached_export_dir(model, root, half=half_graph)
        gpu = torch.cuda.get_device_name(dev)
        engines = {}
        for stage in STAGES:
            onnx_path = Path(report.directory) / report.stage(stage).file
            name = engine_file_name(stage, file_sha256(onnx_path), trt.__version__, gpu, precision)
            engine_path = root / "tensorrt" / name
            if not engine_path.is_file():
                build_engine(
                    onnx_path, engine_path, precision=precision, workspace_bytes=workspace_bytes, strongly_typed=half_graph
                )
            engines[stage] = TRTStage(engine_path, dev)
        return cls(engines, precision)

    def run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`refavs_ros.backends.base.StageBackend.run` (float32 host arrays out).

        Raises:
            KeyError: unknown stage or missing input.
            InputError: an input has the wrong shape.
        """
        if stage not in self.stages:
            raise KeyError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
        engine = self.stages[stage]
        inputs = {}
        for name in STAGES[stage].inputs:
            if name not in feeds:
                raise KeyError(f"stage {stage!r} needs input {name!r}")
            inputs[name] = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=np.float32))
        outs = engine(**inputs)
        return {name: outs[name].float().cpu().numpy() for name in STAGES[stage].outputs}
