"""ONNX Runtime backend: the EEMC stages as ONNX graphs run by onnxruntime (CPU or CUDA EP).

The graphs come from :func:`refavs_ros.export.cache.cached_export_dir`: exported once per model
(keyed by the weights fingerprint) into a cache directory and loaded from there on every later
start. Sessions use every available core for intra-op parallelism and all graph
optimisations (``ORT_ENABLE_ALL``: constant folding, node fusions such as Conv+BN+ReLU,
LayerNorm and GELU fusion, memory-layout transforms).

:class:`OnnxTextEncoder` runs an exported text encoder (``text.onnx``) with the same
``encode(texts)`` contract as :class:`refavs_ros.models.text.TextEncoder`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from refavs_ros.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
)
from refavs_ros.export.cache import cached_export_dir, read_manifest
from refavs_ros.export.eemc import TEXT_SPEC
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES, StageSpec
from refavs_ros.models.text import check_command

try:
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
except ImportError as _exc:  # pragma: no cover - onnxruntime is an install requirement
    raise BackendUnavailableError(f"onnxruntime is not installed ({_exc}); pip install onnxruntime") from _exc


def available_cores() -> int:
    """CPU cores this process may run on (``sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def session_options(intra_op_threads: int | None = None, *, allow_spinning: bool = False) -> ort.SessionOptions:
    """ONNX Runtime session options used for every stage.

    Args:
        intra_op_threads: threads inside one operator; None = :func:`available_cores`.
        allow_spinning: let idle intra-op threads busy-wait for the next operator (onnxruntime's
            default). Off by default: the stages are called between numpy/OpenCV work (and next
            to other ROS nodes), and spinning threads then steal the cores that work needs.
            Measured on 2 cores (tiny, 640x480 frames): 2.0-2.4 ms per frame without spinning,
            3.8-4.8 ms (p95 10 ms) with it; base: 75 ms vs 162 ms.

    Returns:
        Options with ``graph_optimization_level = ORT_ENABLE_ALL``, sequential execution and one
        inter-op thread (the stages are chains; parallel branches are too small to pay off).

    Raises:
        ConfigError: ``intra_op_threads`` < 1.
    """
    threads = available_cores() if intra_op_threads is None else int(intra_op_threads)
    if threads < 1:
        raise ConfigError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only; constant-folding notices are not actionable
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


def execution_providers(device: str = "cpu") -> list:
    """ONNX Runtime execution providers for a device string.

    Args:
        device: ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (CUDA EP on GPU N, CPU EP as fallback for
            unsupported nodes); ``"auto"`` (CUDA EP on GPU 0 when onnxruntime has it, else CPU).

    Returns:
        A providers list for ``ort.InferenceSession``.

    Raises:
        BackendUnavailableError: CUDA requested but this onnxruntime build has no CUDA EP
            (install ``onnxruntime-gpu``).
        ConfigError: unknown device string.
    """
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "auto":
        device = "cuda:0" if has_cuda else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if not has_cuda:
            raise BackendUnavailableError(
                f"device {device!r} needs onnxruntime's CUDAExecutionProvider, but this onnxruntime "
                f"{ort.__version__} offers only {available} (pip install onnxruntime-gpu)"
            )
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise ConfigError(f"bad CUDA device {device!r}; expected cuda or cuda:N")
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise ConfigError(f"unknown device {device!r} for onnxruntime; expected cpu, cuda, cuda:N or auto")


def create_session(
    path: str | Path, *, device: str = "cpu", intra_op_threads: int | None = None, allow_spinning: bool = False
) -> ort.InferenceSession:
    """Open one ONNX graph with :func:`session_options` and :func:`execution_providers`.

    Raises:
        ModelLoadError: the file is missing or onnxruntime cannot load it.
        BackendUnavailableError: CUDA was requested but the session could not use it.
    """
    providers = execution_providers(device)
    if not Path(path).is_file():
        raise ModelLoadError(f"ONNX file not found: {path}")
    opts = session_options(intra_op_threads, allow_spinning=allow_spinning)  # ConfigError stays a ConfigError
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises pybind exception types without a common base
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if wanted not in session.get_providers():
        # onnxruntime falls back to CPU silently when the CUDA libraries fail to load
        raise BackendUnavailableError(
            f"onnxruntime could not enable {wanted} for {path} (session providers: {session.get_providers()}); "
            "check the CUDA/cuDNN libraries matching your onnxruntime-gpu"
        )
    return session


class OnnxRuntimeBackend:
    """:class:`refavs_ros.backends.base.StageBackend` over ONNX Runtime sessions.

    Args:
        sessions: one ``onnxruntime.InferenceSession`` per stage of ``specs``, whose graph has
            the stage's named inputs and outputs (as written by
            :func:`refavs_ros.export.eemc.export_eemc` or
            :func:`refavs_ros.export.official.export_official`).
        specs: the stage set (default EEMC's :data:`STAGES`; the released model's
            ``OFFICIAL_STAGES``).

    Raises:
        ModelLoadError: a stage is missing or a graph's input/output names differ from ``specs``.
    """

    name = "onnxruntime"

    def __init__(
        self, sessions: Mapping[str, ort.InferenceSession], specs: Mapping[str, StageSpec] | None = None
    ) -> None:
        self.sessions = dict(sessions)
        self.specs = dict(specs if specs is not None else STAGES)
        self._outputs: dict[str, list[str]] = {}
        self._shapes: dict[str, dict[str, tuple]] = {}
        for stage, spec in self.specs.items():
            if stage not in self.sessions:
                raise ModelLoadError(f"onnxruntime backend has no session for stage {stage!r}")
            session = self.sessions[stage]
            ins = {i.name: tuple(i.shape) for i in session.get_inputs()}
            outs = [o.name for o in session.get_outputs()]
            # the exporter drops inputs a graph never reads (a small test decoder that skips a
            # pyramid level); every input the graph has must be a stage input
            if not set(ins) <= set(spec.inputs) or set(outs) != set(spec.outputs):
                raise ModelLoadError(
                    f"ONNX graph of stage {stage!r} has inputs {sorted(ins)} and outputs {outs}; "
                    f"expected {list(spec.inputs)} -> {list(spec.outputs)}"
                )
            self._outputs[stage] = list(spec.outputs)
            self._shapes[stage] = ins  # dims are ints, or a name/None where the axis is dynamic
        self.providers = self.sessions["visual"].get_providers()
        self.export_dir: Path | None = None

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_dir(
        cls,
        directory: str | Path,
        *,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        allow_spinning: bool = False,
    ) -> OnnxRuntimeBackend:
        """Load the stage graphs of an export directory (``<stage>.onnx`` + ``manifest.json``).

        Args:
            directory: written by :func:`refavs_ros.export.eemc.export_eemc`,
                :func:`refavs_ros.export.official.export_official` or ``refavs-export`` (the
                manifest's ``config.model`` selects the stage set).
            device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (see :func:`execution_providers`).
            intra_op_threads: threads per operator; None = every available core.
            allow_spinning: see :func:`session_options` (off by default).

        Raises:
            ModelLoadError: missing manifest/graphs or graphs with other names.
            BackendUnavailableError: CUDA requested but unavailable.
        """
        report = read_manifest(directory)
        if report.config.get("model") == "official":
            from refavs_ros.models.official_stages import OFFICIAL_STAGES

            specs: Mapping[str, StageSpec] = OFFICIAL_STAGES
        else:
            specs = STAGES
        files = {s.stage: Path(directory) / s.file for s in report.stages}
        missing = [s for s in specs if s not in files]
        if missing:
            raise ModelLoadError(f"export {directory} lacks stages {missing}")
        backend = cls(
            {
                s: create_session(files[s], device=device, intra_op_threads=intra_op_threads, allow_spinning=allow_spinning)
                for s in specs
            },
            specs,
        )
        backend.export_dir = Path(directory)
        return backend

    @classmethod
    def from_model(
        cls,
        model: EEMC,
        cache_dir: str | Path | None = None,
        *,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        allow_spinning: bool = False,
    ) -> OnnxRuntimeBackend:
        """Export ``model``'s stages into the cache (once per weights fingerprint) and load them.

        Args:
            model: EEMC model or the released model's ``OfficialStageModel`` (any device; a
                CPU float32 model is exported as is, others from a CPU copy).
            cache_dir: cache root; None = :func:`refavs_ros.export.cache.default_cache_dir`. The
                graphs live in ``<cache_dir>/onnx/eemc-<profile>-<fingerprint[:16]>/`` (EEMC) or
                ``<cache_dir>/onnx/official-<fingerprint[:16]>/`` (released model).
            device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto``.
            intra_op_threads: threads per operator; None = every available core.
            allow_spinning: see :func:`session_options` (off by default).

        Raises:
            ModelLoadError: export or loading failed.
            BackendUnavailableError: CUDA requested but unavailable.
        """
        execution_providers(device)  # fail before a possibly long export
        report = cached_export_dir(model, cache_dir)
        return cls.from_dir(
            report.directory, device=device, intra_op_threads=intra_op_threads, allow_spinning=allow_spinning
        )

    # ---------------------------------------------------------------------------------- run
    def run(self, stage: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :meth:`refavs_ros.backends.base.StageBackend.run`.

        Raises:
            KeyError: unknown stage or missing input (named).
            InputError: an input has the wrong shape (every axis but the dynamic ones is fixed).
        """
        if stage not in self.sessions:
            raise KeyError(f"unknown stage {stage!r}; expected one of {list(self.specs)}")
        inputs = {}
        for name, shape in self._shapes[stage].items():
            if name not in feeds:
                raise KeyError(f"stage {stage!r} needs input {name!r}")
            arr = np.ascontiguousarray(feeds[name], dtype=np.float32)
            if len(arr.shape) != len(shape) or any(
                isinstance(want, int) and got != want for got, want in zip(arr.shape, shape)
            ):
                raise InputError(f"stage {stage!r} input {name!r} must have shape {shape}, got {arr.shape}")
            inputs[name] = arr
        try:
            outs = self.sessions[stage].run(self._outputs[stage], inputs)
        except InvalidArgument as exc:
            raise InputError(f"onnxruntime rejected the inputs of stage {stage!r}: {exc}") from exc
        return dict(zip(self._outputs[stage], outs))


class OnnxTextEncoder:
    """Exported text encoder (``text.onnx``) run by ONNX Runtime; same contract as
    :class:`refavs_ros.models.text.TextEncoder`.

    Args:
        onnx_path: graph written by :func:`refavs_ros.export.eemc.export_text`
            (``input_ids``, ``attention_mask`` int64 (1, L) -> ``text_hidden`` float32 (1, L, D)).
        tokenizer_dir: local Hugging Face directory holding the tokenizer files.
        device: see :func:`execution_providers`.
        intra_op_threads: threads per operator; None = every available core.

    Raises:
        ModelLoadError: the graph or the tokenizer cannot be loaded, or the graph's names differ.
    """

    def __init__(
        self, onnx_path: str | Path, tokenizer_dir: str | Path, *, device: str = "cpu", intra_op_threads: int | None = None
    ) -> None:
        from transformers import AutoTokenizer

        self.session = create_session(onnx_path, device=device, intra_op_threads=intra_op_threads)
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if set(inputs) != set(TEXT_SPEC.inputs):
            raise ModelLoadError(f"{onnx_path} has inputs {sorted(inputs)}; expected {list(TEXT_SPEC.inputs)}")
        self.max_tokens = int(inputs["input_ids"][1])
        self.hidden_size = int(self.session.get_outputs()[0].shape[-1])
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the tokenizer from {tokenizer_dir}: {exc}") from exc

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode expressions one by one (the graph has batch 1).

        Args:
            texts: B expressions (validated with :func:`refavs_ros.models.text.check_command`).

        Returns:
            hidden float32 (B, L, D) and mask float32 (B, L), 1 = real token.

        Raises:
            InputError: an expression is empty, too long or not a string.
        """
        hidden, masks = [], []
        for text in texts:
            enc = self.tokenizer(
                [check_command(text)], padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="np"
            )
            feeds = {k: np.asarray(enc[k], np.int64) for k in TEXT_SPEC.inputs}
            hidden.append(self.session.run(list(TEXT_SPEC.outputs), feeds)[0])
            masks.append(feeds["attention_mask"].astype(np.float32))
        return np.concatenate(hidden).astype(np.float32), np.concatenate(masks)
