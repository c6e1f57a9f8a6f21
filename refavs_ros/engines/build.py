"""Builders: weights on disk (or a ready model) -> a :class:`~refavs_ros.engines.base.StreamEngine`.

The predictor takes a ready engine (``StreamingPredictor(engine, config)``, as segment-anything's
``SamPredictor`` takes a ready model and ``build_sam`` builds it); these functions do the
building, so the predictor's ``from_pretrained``, the benches and the tools never wire backends,
text encoders and engines by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from refavs_ros.backends.base import StageBackend
from refavs_ros.backends.registry import create_backend
from refavs_ros.engines.base import StreamEngine
from refavs_ros.engines.eemc import EEMCStreamEngine
from refavs_ros.errors import ConfigError
from refavs_ros.models.eemc import EEMC
from refavs_ros.resources import default_weights_path

MODELS = ("eemc", "official")
"""Model families :func:`build_engine` knows."""


def set_threads(threads: int | None) -> None:
    """Set torch's process-wide intra-op thread count (None = leave the default: every core).

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
        backend, device, engine_dir, precision, threads: see :func:`eemc_engine`; the official
            model runs on PyTorch whatever ``backend`` says.
        models_dir: for ``model="official"``: directory with the Mask2Former, DistilRoBERTa and
            VGGish sub-models; for EEMC: optional directory of a non-bundled text encoder.
        num_frames: cached-memory window (frames).
        beta: cached-memory sensitivity override (EEMC only; paper Eq. 2).

    Raises:
        ConfigError: unknown model or backend name; official model without weights/models_dir.
        ModelLoadError: missing or incompatible weights / sub-model files (named).
        BackendUnavailableError: the backend library or device is missing.
    """
    set_threads(threads)
    if model == "official":
        from refavs_ros.engines.official import OfficialStreamEngine

        if weights is None or models_dir is None:
            raise ConfigError("model 'official' needs weights (ckpt_best_miou.pth) and models_dir")
        engine: StreamEngine = OfficialStreamEngine.from_pretrained(weights, models_dir, device=device)
        engine.set_window(num_frames)
        return engine
    if model != "eemc":
        raise ConfigError(f"unknown model {model!r}; expected one of {MODELS}")
    from refavs_ros.models.checkpoint import load_eemc

    path = Path(weights) if weights is not None else default_weights_path()
    net, _meta = load_eemc(path, device="cpu")
    return eemc_engine(
        net, backend=backend, device=device, engine_dir=engine_dir, precision=precision, threads=threads,
        text_model=models_dir, num_frames=num_frames, beta=beta,
    )
