"""Builders: weights on disk (or a ready model) -> a :class:`~refavs_ros.engines.base.StreamEngine`.

The predictor takes a ready engine (``StreamingPredictor(engine, config)``, as segment-anything's
``SamPredictor`` takes a ready model and ``build_sam`` builds it); these functions do the
building, so the predictor's ``from_pretrained``, the benches and the tools never wire backends,
text encoders and engines by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from refavs_ros.backends.base import StageBackend
from refavs_ros.backends.registry import create_backend
from refavs_ros.engines.base import StreamEngine
from refavs_ros.engines.eemc import EEMCStreamEngine
from refavs_ros.errors import ConfigError
from refavs_ros.models.eemc import EEMC
from refavs_ros.resources import default_weights_path

if TYPE_CHECKING:  # the official engine imports transformers' Mask2Former: only when used
    from refavs_ros.engines.official import OfficialStreamEngine

MODELS = ("eemc", "official")
"""Model families :func:`build_engine` knows."""


def set_threads(threads: int | None) -> None:
    """Set torch's process-wide intra-op thread count (None = leave the default: every core).

    On a robot that runs other nodes, 1 avoids the latency spikes of thread pools that wait for
    descheduled threads (tiny profile, 2-core CPU: p95 22 ms with 1 thread vs 107 ms with 2
    under load).

    Raises:
        ConfigError: ``threads`` < 1.
    """
    if threads is None:
        return
    if int(threads) < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(int(threads))


def eemc_engine(
    net: EEMC,
    *,
    backend: str = "torch",
    device: str = "cpu",
    engine_dir: str | Path | None = None,
    precision: str = "fp16",
    threads: int | None = None,
    text_model: str | Path | None = None,
    num_frames: int = 10,
    beta: float | None = None,
    wrap_backend: Callable[[StageBackend], StageBackend] | None = None,
) -> EEMCStreamEngine:
    """Stream engine for a ready EEMC model (paper Sec. 4; tiny / base profiles).

    Args:
        net: the EEMC model (CPU float32 weights are fine; the backend moves or exports them).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        engine_dir: cache directory for exported ONNX files / TensorRT engines (None = default).
        precision: TensorRT precision, ``"fp16"`` or ``"fp32"``.
        threads: CPU threads per operator for onnxruntime (torch: see :func:`set_threads`).
        text_model: directory of the text encoder; None = the one named in ``net.cfg``.
        num_frames: cached-memory window (frames, >= 1).
        beta: cached-memory sensitivity override (paper Eq. 2); None = the model's.
        wrap_backend: optional wrapper applied to the stage backend (e.g. a timing proxy in
            ``bench/``); must keep the :class:`~refavs_ros.backends.base.StageBackend` contract.

    Raises:
        ConfigError: unknown backend, bad device/precision.
        BackendUnavailableError: the backend library or device is missing.
        ModelLoadError: export, engine build or text-encoder loading failed.
    """
    from refavs_ros.models.text import TextEncoder

    stage_backend = create_backend(
        backend, net, device=device, cache_dir=engine_dir, precision=precision, threads=threads
    )
    if wrap_backend is not None:
        stage_backend = wrap_backend(stage_backend)
    text_device = device if device != "auto" else "cpu"
    text = TextEncoder.from_pretrained(str(text_model or net.cfg.text_model), net.cfg.max_text_tokens, device=text_device)
    return EEMCStreamEngine(stage_backend, text, net.cfg, num_frames=num_frames, beta=beta)


DEFAULT_MAX_WINDOW = 16
"""Largest fusion window (frames) a TensorRT engine of the released model accepts by default
(optimization profile min 1 / opt ``num_frames`` / max this); ``max_window`` raises it."""


def official_engine(
    checkpoint: str | Path,
    models_dir: str | Path,
    *,
    backend: str = "torch",
    device: str = "cpu",
    engine_dir: str | Path | None = None,
    precision: str = "fp16",
    threads: int | None = None,
    num_frames: int = 10,
    beta: float | None = None,
    max_window: int | None = None,
    wrap_backend: Callable[[StageBackend], StageBackend] | None = None,
) -> OfficialStreamEngine:
    """Stream engine for the released checkpoint (``ckpt_best_miou.pth``) on any backend.

    The checkpoint and the sub-models are loaded on the CPU for ``onnxruntime``/``tensorrt``
    (exported once into the cache, keyed by the weights' hash; the PyTorch model is dropped
    once the backend is built) and on ``device`` for ``torch``.

    Args:
        checkpoint: ``ckpt_best_miou.pth`` (released key layout).
        models_dir: directory with ``mask2former-swin-base-ade-semantic/``,
            ``distilroberta-base/`` and ``vggish/vggish.pth`` (``docs/official.md``).
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (torch: the torch device;
            onnxruntime: CPU or CUDA execution provider; tensorrt: a CUDA device). The text
            encoder (PyTorch) runs on the CUDA device when one is used, else on the CPU.
        engine_dir: cache root for ONNX graphs / TensorRT engines (None = default cache).
        precision: TensorRT precision, ``"fp16"`` (mixed: FP32 where Mask2Former's FP16
            hazards are) or ``"fp32"``.
        threads: CPU threads per operator for onnxruntime (torch: see :func:`set_threads`).
        num_frames: fusion window in frames (>= 1; 10 released).
        beta: cached-memory beta (None = 1, released).
        max_window: largest window a TensorRT engine accepts (default
            ``max(num_frames, DEFAULT_MAX_WINDOW)``); ignored by the other backends (their
            graphs accept any window).
        wrap_backend: optional wrapper applied to the stage backend (e.g. a timing proxy).

    Returns:
        An :class:`~refavs_ros.engines.official.OfficialStreamEngine`.

    Raises:
        ConfigError: unknown backend, bad device/precision, ``num_frames`` > ``max_window``.
        ModelLoadError: missing or incompatible files (named), export or engine build failed.
        BackendUnavailableError: the backend library or device is missing.
    """
    import torch

    from refavs_ros.backends.registry import BACKENDS
    from refavs_ros.engines.official import OfficialStreamEngine  # noqa: F811 (runtime import)
    from refavs_ros.models.official_loaders import load_official
    from refavs_ros.models.official_stages import OfficialStageModel

    set_threads(threads)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if int(num_frames) < 1:
        raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
    if device == "auto":
        if backend == "onnxruntime":
            from refavs_ros.backends.onnx_backend import execution_providers

            first = execution_providers("auto")[0]
            device = "cuda" if isinstance(first, tuple) else "cpu"
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "tensorrt" and device == "cpu":
        device = "cuda"  # TensorRT runs on GPUs only
    max_window = max(int(num_frames), DEFAULT_MAX_WINDOW) if max_window is None else int(max_window)
    if backend == "tensorrt" and num_frames > max_window:
        raise ConfigError(f"num_frames {num_frames} exceeds the TensorRT engine's max_window {max_window}")
    parts = load_official(checkpoint, models_dir, device if backend == "torch" else "cpu")
    stage_model = OfficialStageModel(parts.model, parts.vggish)
    stage_backend = create_backend(
        backend, stage_model, device=device, cache_dir=engine_dir, precision=precision, threads=threads,
        max_window=max_window, opt_window=int(num_frames),
    )
    del stage_model, parts.model, parts.vggish  # onnxruntime/tensorrt hold their own copies
    if wrap_backend is not None:
        stage_backend = wrap_backend(stage_backend)
    text_device = device if device.startswith("cuda") else "cpu"
    return OfficialStreamEngine(
        stage_backend, parts.image_processor, parts.text_encoder.to(text_device), num_frames=num_frames, beta=beta
    )


def build_engine(
    weights: str | Path | None = None,
    *,
    model: str = "eemc",
    backend: str = "torch",
    device: str = "cpu",
    models_dir: str | Path | None = None,
    engine_dir: str | Path | None = None,
    precision: str = "fp16",
    threads: int | None = None,
    num_frames: int = 10,
    beta: float | None = None,
) -> StreamEngine:
    """Stream engine from weights on disk.

    Args:
        weights: EEMC safetensors file (None = the shipped ``models/refavs_tiny.safetensors``),
            or, for ``model="official"``, the released ``ckpt_best_miou.pth``.
        model: ``"eemc"`` (paper model, tiny/base profiles) or ``"official"`` (released EEMC).
        backend, device, engine_dir, precision, threads: see :func:`eemc_engine` and
            :func:`official_engine` (every backend runs both model families).
        models_dir: for ``model="official"``: directory with the Mask2Former, DistilRoBERTa and
            VGGish sub-models; for EEMC: optional directory of a non-bundled text encoder.
        num_frames: cached-memory window (frames).
        beta: cached-memory sensitivity override (paper Eq. 2; the released ``(1 + beta)``).

    Raises:
        ConfigError: unknown model or backend name; official model without weights/models_dir.
        ModelLoadError: missing or incompatible weights / sub-model files (named).
        BackendUnavailableError: the backend library or device is missing.
    """
    set_threads(threads)
    if model == "official":
        if weights is None or models_dir is None:
            raise ConfigError("model 'official' needs weights (ckpt_best_miou.pth) and models_dir")
        return official_engine(
            weights, models_dir, backend=backend, device=device, engine_dir=engine_dir, precision=precision,
            threads=threads, num_frames=num_frames, beta=beta,
        )
    if model != "eemc":
        raise ConfigError(f"unknown model {model!r}; expected one of {MODELS}")
    from refavs_ros.models.checkpoint import load_eemc

    path = Path(weights) if weights is not None else default_weights_path()
    net, _meta = load_eemc(path, device="cpu")
    return eemc_engine(
        net, backend=backend, device=device, engine_dir=engine_dir, precision=precision, threads=threads,
        text_model=models_dir, num_frames=num_frames, beta=beta,
    )
