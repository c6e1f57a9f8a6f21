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

The released model (``OfficialStageModel``, stages ``OFFICIAL_STAGES``): the ``fuse`` and
``decode`` graphs have a dynamic window axis; their engines get ONE optimization profile
(windows min 1, opt ``opt_window`` = the configured ``num_frames``, max ``max_window``), so the
start-up windows run on the same engine. ``precision="fp16"`` builds ``visual``/``audio``/
``decode`` with ``BuilderFlag.FP16`` plus ``OBEY_PRECISION_CONSTRAINTS`` and pins the layers of
:func:`refavs_ros.export.official.fp32_nodes` to FP32 (``ILayer.precision`` and
``set_output_type``: softmax and its logit path, LayerNorm/GroupNorm, the deformable attention
of the pixel decoder, the mask predictor, the final query weighting); ``fuse`` is always FP32.
A JSON file next to each engine records the build (time, precision, FP32 layers by reason).

Run: :class:`TRTStage` wraps one engine as a callable with the stage's named inputs/outputs
(in the manner of torch2trt's ``TRTModule``), using PyTorch CUDA tensors as device buffers and
the TensorRT 10 name-based API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3`` on the current PyTorch CUDA stream).

``tensorrt`` is imported lazily: importing this module never needs it;
:func:`import_tensorrt` and :func:`require_cuda` raise
:class:`refavs_ros.errors.BackendUnavailableError` with the reason when it or a GPU is missing.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
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
from refavs_ros.export.cache import cached_export_dir, default_cache_dir, file_sha256, is_official
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES, StageSpec

PRECISIONS = ("fp16", "fp32")
"""Accepted values of ``precision``."""

DEFAULT_WORKSPACE_BYTES = 1 << 30
"""Builder workspace memory-pool limit (bytes); fits Jetson Orin Nano (8 GB shared)."""

DEFAULT_MAX_WINDOW = 16
"""Largest fusion window of a released-model engine's optimization profile by default."""

FP32_RULES_VERSION = 1
"""Version of the FP32 layer rules of mixed-precision builds (in the engine file name: a rule
change builds new engines instead of reusing old ones)."""

ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(min, opt, max) shape of a dynamic input in an optimization profile."""


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


def engine_file_name(
    stage: str,
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    precision: str,
    *,
    windows: tuple[int, int, int] | None = None,
    variant: str = "",
) -> str:
    """Cache file name of an engine: every input that makes an engine invalid is in it.

    Args:
        stage: stage name.
        onnx_sha256: SHA-256 (hex) of the ONNX bytes the engine was built from (the ONNX export
            is itself keyed by the checkpoint's weights).
        trt_version: ``tensorrt.__version__``.
        gpu_name: ``torch.cuda.get_device_name`` of the target GPU.
        precision: ``"fp16"`` or ``"fp32"``.
        windows: (min, opt, max) fusion window of a dynamic-shape engine's profile, or None.
        variant: extra build setting that changes the engine (e.g. ``"mp1"``: FP32 layer rules
            version 1 of a mixed-precision build), or "".

    Returns:
        e.g. ``"visual-3f2a...c1-trt10.3.0-nvidia_orin-fp16.engine"`` (model hash: 16 hex digits),
        ``"fuse-...-fp32-w1-10-16.engine"`` for a window profile.
    """
    gpu = re.sub(r"[^a-z0-9]+", "_", gpu_name.lower()).strip("_")
    extra = f"-{variant}" if variant else ""
    if windows is not None:
        extra += "-w" + "-".join(str(int(w)) for w in windows)
    return f"{stage}-{onnx_sha256[:16]}-trt{trt_version}-{gpu}-{precision}{extra}.engine"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def uses_strong_typing(trt: ModuleType) -> bool:
    """True when this TensorRT has no ``BuilderFlag.FP16`` (>= 11): FP16 must be in the graph."""
    return not hasattr(trt.BuilderFlag, "FP16")


def _layer_lookup(fp32: Mapping[str, str], layer_name: str, known: frozenset[str] = frozenset()) -> str | None:
    """Reason for keeping a TensorRT layer in FP32, matched to the ONNX node it came from.

    TensorRT's ONNX parser names a layer after its node; a node that becomes several layers
    gives them the node name plus a suffix (``_1``, ``_output``...), so the name is tried as is
    and then with trailing suffixes stripped, stopping at the first name that is an ONNX node
    (``known``; ``/x/MatMul_1`` is its own node, not a part of ``/x/MatMul``).
    """
    name = layer_name
    while True:
        if name in fp32:
            return fp32[name]
        if name in known:
            return None
        stripped = re.sub(r"(_\d+|_output\w*|\s.*)$", "", name)
        if stripped == name or not stripped:
            return None
        name = stripped


def apply_fp32_constraints(
    trt: ModuleType, network, fp32: Mapping[str, str], known: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Pin layers to FP32 in a FP16 (weakly typed) network: ``layer.precision`` and output types.

    Layers are selected by the ONNX node they came from (``fp32``, e.g.
    :func:`refavs_ros.export.official.fp32_nodes`) and by type (every ``SOFTMAX``,
    ``NORMALIZATION`` and ``GRID_SAMPLE`` layer). Only layers whose outputs are all float
    execution tensors are constrained (shape and index computations keep their types). The
    caller sets ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` so TensorRT must honour them.

    Args:
        trt: the ``tensorrt`` module.
        network: a parsed ``INetworkDefinition``.
        fp32: ONNX node name -> reason.
        known: every node name of the ONNX graph (see :func:`_layer_lookup`).

    Returns:
        Number of constrained layers by reason (``"total layers"``: the network's layer count).
    """
    by_type = {
        trt.LayerType.SOFTMAX: "softmax",
        trt.LayerType.NORMALIZATION: "normalization",
        trt.LayerType.GRID_SAMPLE: "grid sample",
    }
    floats = (trt.float32, trt.float16)
    counts: dict[str, int] = {"total layers": int(network.num_layers)}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        reason = by_type.get(layer.type) or _layer_lookup(fp32, layer.name, known)
        if reason is None:
            continue
        outs = [layer.get_output(k) for k in range(layer.num_outputs)]
        if not outs or any(o.dtype not in floats or o.is_shape_tensor for o in outs):
            continue
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            layer.set_output_type(k, trt.float32)
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    strongly_typed: bool = False,
    profiles: Mapping[str, ShapeRange] | None = None,
    fp32_layers: Mapping[str, str] | None = None,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX file and write it atomically.

    Args:
        onnx_path: ONNX graph (fixed shapes, or dynamic axes covered by ``profiles``).
        engine_path: output engine file; a ``<engine>.json`` build record is written next to it
            (build seconds, precision, profile, FP32 layer counts).
        precision: ``"fp16"`` (sets ``BuilderFlag.FP16`` unless ``strongly_typed``) or
            ``"fp32"`` (TF32 disabled).
        workspace_bytes: builder workspace memory-pool limit.
        strongly_typed: build a strongly typed network (layer precisions come from the graph's
            types, e.g. a float16 export); needed for FP16 on TensorRT >= 11.
        profiles: input name -> (min, opt, max) shapes of the ONE optimization profile, for
            every input with a dynamic axis (names the graph lacks are ignored).
        fp32_layers: ONNX node name -> reason; with ``precision="fp16"`` these layers (and
            every softmax / normalization / grid-sample layer) are pinned to FP32 under
            ``OBEY_PRECISION_CONSTRAINTS`` (:func:`apply_fp32_constraints`); if TensorRT cannot
            build that, it retries once with ``PREFER_PRECISION_CONSTRAINTS`` (recorded as
            ``precision_constraints`` in the build record).

    Returns:
        ``engine_path``.

    Raises:
        BackendUnavailableError: TensorRT missing.
        ConfigError: ``fp32_layers`` with a strongly typed network (no per-layer precision there).
        ModelLoadError: the ONNX parser or the builder failed (parser errors listed), or a
            dynamic input has no profile.
    """
    trt = import_tensorrt()
    _check_precision(precision)
    if strongly_typed and fp32_layers and precision == "fp16":
        raise ConfigError(
            "per-layer FP32 constraints need a weakly typed network (TensorRT 10.x with BuilderFlag.FP16); "
            "this TensorRT builds strongly typed networks only -- use precision='fp32'"
        )
    t0 = time.perf_counter()
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
    profile_record: dict[str, list] = {}
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            if profiles is None or tensor.name not in profiles:
                raise ModelLoadError(f"{onnx_path}: input {tensor.name!r} has a dynamic shape but no optimization profile")
            lo, opt, hi = (tuple(int(d) for d in shape) for shape in profiles[tensor.name])
            profile.set_shape(tensor.name, lo, opt, hi)
            profile_record[tensor.name] = [list(lo), list(opt), list(hi)]
        config.add_optimization_profile(profile)
    constrained: dict[str, int] = {}
    constraints = ""
    if not strongly_typed:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
            if fp32_layers is not None:
                constraints = "obey"
                config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
                import onnx

                known = frozenset(n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)
                constrained = apply_fp32_constraints(trt, network, fp32_layers, known)
        elif hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None and constraints == "obey":
        # a pinned layer without an FP32 kernel in its fused form fails an OBEY build; PREFER lets
        # TensorRT fall back for that layer only (it logs which) instead of failing the engine
        print(f"refavs_ros: TensorRT could not honour every FP32 constraint of {onnx_path}; retrying with "
              "PREFER_PRECISION_CONSTRAINTS", flush=True)
        config.clear_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        constraints = "prefer"
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    record = {
        "onnx": str(onnx_path),
        "tensorrt": trt.__version__,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": profile_record,
        "fp32_layers": constrained,
        "precision_constraints": constraints,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(record, indent=2))
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
        self.ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_names if is_input else self.output_names).append(name)
            self.shapes[name] = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            self.dtypes[name] = _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]
            if is_input and -1 in self.shapes[name]:
                lo, _opt, hi = self.engine.get_tensor_profile_shape(name, 0)
                self.ranges[name] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the engine once.

        Args:
            **inputs: every input by name, tensors of the engine's shapes (any device/dtype:
                they are moved to the engine's device and dtype); a dynamic axis may take any
                size inside the engine's optimization profile. Names the engine lacks are
                ignored.

        Returns:
            every output by name: CUDA tensors of the engine's dtypes, valid once the current
            CUDA stream reaches them (``.cpu()`` synchronises).

        Raises:
            KeyError: a missing input.
            InputError: a wrong shape, or a dynamic axis outside the optimization profile.
            RuntimeError: TensorRT rejected a shape or an address, or the enqueue failed.
        """
        buffers: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in inputs:
                raise KeyError(f"engine {self.path.name} needs input {name!r}")
            x = inputs[name]
            shape, want = tuple(x.shape), self.shapes[name]
            if len(shape) != len(want) or any(w != -1 and g != w for g, w in zip(shape, want)):
                raise InputError(f"engine {self.path.name} input {name!r} must have shape {want}, got {shape}")
            if name in self.ranges:
                lo, hi = self.ranges[name]
                if any(not a <= g <= b for g, a, b in zip(shape, lo, hi)):
                    raise InputError(
                        f"engine {self.path.name} input {name!r} shape {shape} is outside its optimization "
                        f"profile {lo}..{hi} (rebuild with a larger max_window)"
                    )
            buffers[name] = x.to(device=self.device, dtype=self.dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, shape):
                raise RuntimeError(f"TensorRT rejected shape {shape} for {name!r} in {self.path.name}")
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))  # resolved by the input shapes
            buffers[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
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
        stages: a :class:`TRTStage` per stage of ``specs`` with the stage's I/O names (an
            engine may lack inputs its graph never read).
        precision: precision the engines were built with (informative).
        specs: the stage set (default EEMC's :data:`STAGES`; the released model's
            ``OFFICIAL_STAGES``).
        max_window: largest fusion window the engines accept (released model), or None.

    Raises:
        ModelLoadError: a stage is missing or its engine has other I/O names.
    """

    name = "tensorrt"

    def __init__(
        self,
        stages: dict[str, TRTStage],
        precision: str = "fp16",
        specs: Mapping[str, StageSpec] | None = None,
        max_window: int | None = None,
    ) -> None:
        self.specs = dict(specs if specs is not None else STAGES)
        for stage, spec in self.specs.items():
            if stage not in stages:
                raise ModelLoadError(f"tensorrt backend has no engine for stage {stage!r}")
            eng = stages[stage]
            if not set(eng.input_names) <= set(spec.inputs) or set(eng.output_names) != set(spec.outputs):
                raise ModelLoadError(
                    f"engine {eng.path} has I/O {eng.input_names} -> {eng.output_names}; "
                    f"expected {list(spec.inputs)} -> {list(spec.outputs)}"
                )
        self.stages = stages
        self.precision = precision
        self.max_window = max_window

    @classmethod
    def from_model(
        cls,
        model: EEMC,
        cache_dir: str | Path | None = None,
        precision: str = "fp16",
        *,
        device: str = "cuda",
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        max_window: int = DEFAULT_MAX_WINDOW,
        opt_window: int = 10,
    ) -> TensorRTBackend:
        """Export the stages to ONNX (cached), build missing engines (cached) and load them.

        Args:
            model: EEMC model, or the released model's ``OfficialStageModel``.
            cache_dir: cache root; None = :func:`refavs_ros.export.cache.default_cache_dir`. ONNX files
                go to ``<cache_dir>/onnx/...``, engines to ``<cache_dir>/tensorrt/``.
            precision: ``"fp16"`` (default) or ``"fp32"``. Released model: ``"fp16"`` is mixed
                (FP32 layers of :func:`refavs_ros.export.official.fp32_nodes`, ``fuse`` FP32).
            device: ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
            workspace_bytes: builder workspace limit for new engines.
            max_window: released model: largest fusion window of the optimization profile.
            opt_window: released model: the window TensorRT optimises for (clamped to
                1..``max_window``; the configured ``num_frames``).

        Raises:
            ConfigError: bad precision, a non-CUDA device, ``max_window`` < 1, or FP16 of the
                released model on a TensorRT without per-layer precision (>= 11).
            BackendUnavailableError: TensorRT or a CUDA GPU is missing (checked before any export).
            ModelLoadError: export, parsing, building or deserialisation failed.
        """
        _check_precision(precision)
        trt = import_tensorrt()
        dev = require_cuda(device)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        gpu = torch.cuda.get_device_name(dev)
        if is_official(model):
            return cls._from_official(model, root, precision, dev, gpu, trt, workspace_bytes, max_window, opt_window)
        half_graph = precision == "fp16" and uses_strong_typing(trt)
        report = cached_export_dir(model, root, half=half_graph)
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

    @classmethod
    def _from_official(
        cls, model, root: Path, precision: str, dev: torch.device, gpu: str, trt: ModuleType, workspace_bytes: int,
        max_window: int, opt_window: int,
    ) -> TensorRTBackend:
        from refavs_ros.export.official import fp32_nodes
        from refavs_ros.models.official_stages import OFFICIAL_DYNAMIC_AXES, OFFICIAL_STAGES

        if max_window < 1:
            raise ConfigError(f"max_window must be >= 1, got {max_window}")
        if precision == "fp16" and uses_strong_typing(trt):
            raise ConfigError(
                f"TensorRT {trt.__version__} builds strongly typed networks only, so the released model's mixed FP16 "
                "engines (per-layer FP32 constraints) cannot be built; use precision='fp32'"
            )
        opt = min(max(int(opt_window), 1), int(max_window))
        windows = (1, opt, int(max_window))
        shapes = [model.input_shapes(w) for w in windows]
        report = cached_export_dir(model, root)
        engines = {}
        for stage in OFFICIAL_STAGES:
            onnx_path = Path(report.directory) / report.stage(stage).file
            stage_precision = "fp32" if stage == "fuse" else precision
            dynamic = stage in OFFICIAL_DYNAMIC_AXES
            profiles = {k: tuple(s[stage][k] for s in shapes) for k in shapes[0][stage]} if dynamic else None
            mixed = stage_precision == "fp16"
            name = engine_file_name(
                stage, file_sha256(onnx_path), trt.__version__, gpu, stage_precision,
                windows=windows if dynamic else None, variant=f"mp{FP32_RULES_VERSION}" if mixed else "",
            )
            engine_path = root / "tensorrt" / name
            if not engine_path.is_file():
                t0 = time.perf_counter()
                build_engine(
                    onnx_path, engine_path, precision=stage_precision, workspace_bytes=workspace_bytes,
                    profiles=profiles, fp32_layers=fp32_nodes(onnx_path, stage) if mixed else None,
                )
                print(f"refavs_ros: built TensorRT engine {name} in {time.perf_counter() - t0:.1f} s", flush=True)
            engines[stage] = TRTStage(engine_path, dev)
        return cls(engines, precision, OFFICIAL_STAGES, max_window=int(max_window))

    def run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`refavs_ros.backends.base.StageBackend.run` (float32 host arrays out).

        Raises:
            KeyError: unknown stage or missing input.
            InputError: an input has the wrong shape.
        """
        outs = self.run_tensors(stage, feeds)
        return {name: out.float().cpu().numpy() for name, out in outs.items()}

    def run_tensors(self, stage: str, feeds: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one stage and keep the outputs on the GPU (no host copy; float32 tensors).

        Args:
            stage: stage name.
            feeds: every input by name, numpy arrays or torch tensors on any device.

        Returns:
            every output by name, float32 CUDA tensors (ordered on the current CUDA stream).

        Raises:
            KeyError: unknown stage or missing input.
            InputError: an input has the wrong shape.
        """
        if stage not in self.stages:
            raise KeyError(f"unknown stage {stage!r}; expected one of {list(self.specs)}")
        engine = self.stages[stage]
        inputs = {}
        for name in self.specs[stage].inputs:
            if name not in feeds:
                raise KeyError(f"stage {stage!r} needs input {name!r}")
            if name not in engine.input_names:
                continue
            x = feeds[name]
            inputs[name] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        outs = engine(**inputs)
        return {name: outs[name].float() for name in self.specs[stage].outputs}
