"""Backends behind one interface: ONNX Runtime parity with PyTorch per stage, through the streaming
engine and through StreamingPredictor (max abs logit diff <= 1e-4); errors; TensorRT / CUDA tests
that skip with their reason where the library or GPU is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from refavs_ros import audio
from refavs_ros.backends.base import StageBackend
from refavs_ros.backends.onnx_backend import OnnxRuntimeBackend, create_session
from refavs_ros.backends.registry import create_backend
from refavs_ros.backends.tensorrt_backend import engine_file_name
from refavs_ros.backends.torch_backend import TorchBackend
from refavs_ros.engines.eemc import EEMCStreamEngine
from refavs_ros.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
)
from refavs_ros.export.eemc import example_feeds
from refavs_ros.models.checkpoint import load_eemc
from refavs_ros.models.eemc_stages import STAGES
from refavs_ros.models.text import TextEncoder
from refavs_ros.predictor import PredictorConfig, StreamingPredictor

ATOL = 1e-4  # float32 ONNX Runtime vs PyTorch (logits and every stage output)
SEC = 1_000_000_000

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()
TRT_REASON = "TensorRT parity needs the tensorrt package and a CUDA GPU " + (
    f"(tensorrt installed: {HAS_TRT}, torch sees a GPU: {HAS_CUDA})"
)


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and HAS_CUDA


@pytest.fixture(scope="module")
def model(tiny_weights):
    net, _ = load_eemc(tiny_weights)
    return net


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_cache")


@pytest.fixture(scope="module")
def backends(model, cache):
    return {"torch": TorchBackend(model), "onnxruntime": OnnxRuntimeBackend.from_model(model, cache_dir=cache)}


@pytest.fixture(scope="module")
def text(model):
    return TextEncoder.from_pretrained(model.cfg.text_model, model.cfg.max_text_tokens)


def _clip(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 60, 90, 3), dtype=np.uint8)
    mels = [audio.log_mel_spectrogram((rng.standard_normal(audio.EXAMPLE_SAMPLES) * 0.1).astype(np.float32)) for _ in range(n)]
    return frames, mels


# --------------------------------------------------------------------------------- parity
def test_backends_share_the_interface(backends):
    for name, backend in backends.items():
        assert isinstance(backend, StageBackend)
        assert backend.name == name


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_matches_pytorch(backends, model, stage):
    feeds = example_feeds(model.cfg, stage, seed=7)
    want = backends["torch"].run(stage, feeds)
    got = backends["onnxruntime"].run(stage, feeds)
    assert list(got) == list(STAGES[stage].outputs)
    for name in STAGES[stage].outputs:
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
        assert np.abs(got[name] - want[name]).max() <= ATOL, (stage, name)


def test_streaming_engine_matches_pytorch(backends, model, text):
    frames, mels = _clip(7)
    engines = {n: EEMCStreamEngine(b, text, model.cfg, num_frames=3) for n, b in backends.items()}
    for engine in engines.values():
        engine.set_command("the cup on the left")
    worst = 0.0
    for i, (f, m) in enumerate(zip(frames, mels)):
        if i == 4:  # a new command rebuilds the text-dependent memory in both backends
            for engine in engines.values():
                engine.set_command("the barking dog")
        outs = {n: e.step(e.encode_frame(f), e.encode_audio(m), commit=True) for n, e in engines.items()}
        (lt, pt), (lo, po) = outs["torch"], outs["onnxruntime"]
        worst = max(worst, float(np.abs(lt - lo).max()), abs(pt - po))
    assert engines["onnxruntime"].memory_length == 3
    assert worst <= ATOL


def test_streaming_predictor_matches_pytorch(tiny_weights, cache):
    preds = {
        b: StreamingPredictor.from_pretrained(tiny_weights, backend=b, engine_dir=cache, config=PredictorConfig(num_frames=4))
        for b in ("torch", "onnxruntime")
    }
    assert preds["onnxruntime"].engine.backend.name == "onnxruntime"
    rng = np.random.default_rng(3)
    wave = (rng.standard_normal(16000 * 8) * 3000).astype(np.int16)
    for p in preds.values():
        p.set_command("the red cup")
        p.push_audio(0, wave[: 16000 * 2], 16000)
    for i in range(5):
        img = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
        stamp = (2 + i) * SEC
        results = {}
        for name, p in preds.items():
            p.push_audio(stamp, wave[16000 * (2 + i) : 16000 * (3 + i)], 16000)
            p.push_image(stamp, img)
            results[name] = p.step()
        a, b = results["torch"], results["onnxruntime"]
        # probabilities are sigmoid(logits): |dp| <= |dlogit| / 4
        assert np.abs(a.probability - b.probability).max() <= ATOL / 4 + 1e-7
        assert abs(a.score - b.score) <= ATOL / 4 + 1e-7


# --------------------------------------------------------------------------------- errors
def test_run_rejects_bad_feeds(backends, model):
    ort_backend = backends["onnxruntime"]
    feeds = example_feeds(model.cfg, "decode")
    with pytest.raises(KeyError, match="memory_visual"):
        ort_backend.run("decode", {k: v for k, v in feeds.items() if k != "memory_visual"})
    with pytest.raises(InputError, match="pixel_features"):
        ort_backend.run("decode", {**feeds, "pixel_features": feeds["pixel_features"][..., :-1]})
    with pytest.raises(KeyError, match="nope"):
        ort_backend.run("nope", feeds)


def test_graph_with_other_names_is_rejected(backends):
    sessions = dict(backends["onnxruntime"].sessions)
    sessions["visual"] = sessions["audio"]
    with pytest.raises(ModelLoadError, match="visual"):
        OnnxRuntimeBackend(sessions)


def test_missing_graph_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        create_session(tmp_path / "absent.onnx")


def test_registry_rejects_unknown_names(model):
    with pytest.raises(ConfigError, match="unknown backend"):
        create_backend("openvino", model)
    with pytest.raises(ConfigError, match="device"):
        create_backend("onnxruntime", model, device="tpu")


def test_registry_passes_threads_and_spinning_defaults(model, cache):
    one = create_backend("onnxruntime", model, cache_dir=cache, threads=1)
    for session in one.sessions.values():
        opts = session.get_session_options()
        assert opts.intra_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ConfigError, match="intra_op_threads"):
        create_backend("onnxruntime", model, cache_dir=cache, threads=0)


def test_backend_modules_import_without_tensorrt():
    code = (
        "import sys; import refavs_ros.backends.registry, refavs_ros.backends.onnx_backend, "
        "refavs_ros.backends.tensorrt_backend; assert 'tensorrt' not in sys.modules, 'tensorrt imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- CUDA / TensorRT
@pytest.mark.skipif(_ort_cuda(), reason="onnxruntime has a usable CUDA execution provider here")
def test_onnxruntime_cuda_request_without_cuda_is_clear(model, cache):
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        create_backend("onnxruntime", model, device="cuda", cache_dir=cache)


@pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA GPU")
def test_onnxruntime_cuda_matches_pytorch(model, cache):  # pragma: no cover - GPU machines only
    gpu = OnnxRuntimeBackend.from_model(model, cache_dir=cache, device="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    ref = TorchBackend(model)
    for stage in STAGES:
        feeds = example_feeds(model.cfg, stage, seed=2)
        want, got = ref.run(stage, feeds), gpu.run(stage, feeds)
        for name in want:
            assert np.abs(got[name] - want[name]).max() <= 1e-3, (stage, name)  # TF32/cuDNN tactics


@pytest.mark.skipif(HAS_TRT and HAS_CUDA, reason="TensorRT and a GPU are present")
def test_tensorrt_unavailable_is_clear(model, cache):
    with pytest.raises(BackendUnavailableError, match="TensorRT|GPU"):
        create_backend("tensorrt", model, cache_dir=cache)


def test_engine_cache_key_names_everything_that_invalidates_an_engine():
    base = engine_file_name("fuse", "ab" * 32, "10.3.0", "NVIDIA Orin (nvgpu)", "fp16")
    assert base == "fuse-abababababababab-trt10.3.0-nvidia_orin_nvgpu-fp16.engine"
    variants = [
        engine_file_name("fuse", "cd" * 32, "10.3.0", "NVIDIA Orin (nvgpu)", "fp16"),
        engine_file_name("fuse", "ab" * 32, "10.7.0", "NVIDIA Orin (nvgpu)", "fp16"),
        engine_file_name("fuse", "ab" * 32, "10.3.0", "NVIDIA GeForce RTX 4090", "fp16"),
        engine_file_name("fuse", "ab" * 32, "10.3.0", "NVIDIA Orin (nvgpu)", "fp32"),
        engine_file_name("decode", "ab" * 32, "10.3.0", "NVIDIA Orin (nvgpu)", "fp16"),
    ]
    assert len({base, *variants}) == 6
    assert all("/" not in v and " " not in v for v in variants)


@pytest.mark.skipif(not (HAS_TRT and HAS_CUDA), reason=TRT_REASON)
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_tensorrt_matches_pytorch_and_caches_engines(model, cache, precision, atol):  # pragma: no cover - GPU only
    from refavs_ros.backends.tensorrt_backend import TensorRTBackend

    trt_backend = TensorRTBackend.from_model(model, cache_dir=cache, precision=precision)
    engines = sorted((cache / "tensorrt").glob(f"*-{precision}.engine"))
    assert len(engines) == len(STAGES)
    stamps = [p.stat().st_mtime_ns for p in engines]
    ref = TorchBackend(model)
    for stage in STAGES:
        feeds = example_feeds(model.cfg, stage, seed=4)
        want, got = ref.run(stage, feeds), trt_backend.run(stage, feeds)
        for name in want:
            assert got[name].dtype == np.float32
            assert np.abs(got[name] - want[name]).max() <= atol, (precision, stage, name)
    TensorRTBackend.from_model(model, cache_dir=cache, precision=precision)  # a second start
    assert [p.stat().st_mtime_ns for p in engines] == stamps  # nothing rebuilt


def test_shipped_weights_match_pytorch_through_the_engine(cache):
    """The trained tiny model's per-query mask logits reach |~400| and the decoder's weighted sum
    cancels them down to O(1) values in places, so float32 rounding gives absolute errors of a
    few 1e-6 of the largest logit anywhere in the map: bound 1e-4 + 2e-6 * max|logit| per frame
    (measured: 2.2e-4 at max |logit| 433); probabilities then agree to a quarter of that."""
    from refavs_ros.errors import ModelLoadError as _Missing
    from refavs_ros.resources import default_weights_path

    try:
        path = default_weights_path()
    except _Missing as exc:
        pytest.skip(f"shipped weights not present: {exc}")
    net, _ = load_eemc(path)
    text = TextEncoder.from_pretrained(net.cfg.text_model, net.cfg.max_text_tokens)
    engines = {
        "torch": EEMCStreamEngine(TorchBackend(net), text, net.cfg, num_frames=4),
        "onnxruntime": EEMCStreamEngine(OnnxRuntimeBackend.from_model(net, cache_dir=cache), text, net.cfg, num_frames=4),
    }
    for e in engines.values():
        e.set_command("the barking dog on the left")
    frames, mels = _clip(6, seed=5)
    for f, m in zip(frames, mels):
        (lt, pt), (lo, po) = (e.step(e.encode_frame(f), e.encode_audio(m), commit=True) for e in engines.values())
        bound = 1e-4 + 2e-6 * float(np.abs(lt).max())
        assert np.abs(lo - lt).max() <= bound
        assert abs(po - pt) <= 1e-4
        probs = [0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64))) for x in (lo, lt)]
        assert np.abs(probs[0] - probs[1]).max() <= bound / 4
