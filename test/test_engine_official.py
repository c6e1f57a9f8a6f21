"""Sliding-window streaming of the published model (refavs_ros.engines.official)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_official_helpers import (
    make_checkpoint,
    make_models_dir,
    tiny_model,
    tiny_vggish,
)

from refavs_ros import audio as audio_fe
from refavs_ros.engines.base import StreamEngine
from refavs_ros.engines.official import OfficialStreamEngine
from refavs_ros.errors import ConfigError, InputError, ModelLoadError
from refavs_ros.models.official_loaders import (
    MASK2FORMER_DIR,
    TEXT_DIR,
    VGGISH_FILE,
    ImagePreprocessor,
    OfficialTextEncoder,
    load_official,
)
from refavs_ros.predictor import PredictorConfig, StreamingPredictor

COMMAND = "the dog barking on the left"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_text_dir):
    return make_models_dir(tmp_path_factory.mktemp("official_models"), tiny_text_dir)


@pytest.fixture(scope="module")
def parts(models_dir):
    model = tiny_model(seed=7)
    processor = ImagePreprocessor.from_pretrained(models_dir / MASK2FORMER_DIR)
    text = OfficialTextEncoder.from_pretrained(models_dir / TEXT_DIR)
    return model, processor, text, tiny_vggish()


def _engine(parts, num_frames: int) -> OfficialStreamEngine:
    model, processor, text, vggish = parts
    engine = OfficialStreamEngine.from_modules(model, processor, text, vggish, num_frames=num_frames)
    engine.set_command(COMMAND)
    return engine


def _clip(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(n)]
    mels = [rng.standard_normal((96, 64)).astype(np.float32) for _ in range(n)]
    return images, mels


def test_engine_satisfies_the_protocol(parts):
    engine = _engine(parts, 10)
    assert isinstance(engine, StreamEngine)
    assert engine.name == "official" and engine.image_size == (64, 64) and engine.mask_size == (256, 256)


def test_window_streaming_equals_clip_forward_on_the_newest_frame(parts):
    """Each step = forward_clip over [last num_frames-1 committed frames; new frame], last frame."""
    model, processor, text, vggish = parts
    window = 3
    engine = _engine(parts, window)
    images, mels = _clip(5)
    with torch.no_grad():
        pixels = processor(images)
        audio = vggish(torch.from_numpy(np.stack(mels)))
        text_hidden = text.encode(COMMAND)
    for k in range(5):
        logits, presence = engine.step(engine.encode_frame(images[k]), engine.encode_audio(mels[k]), commit=True)
        lo = max(0, k - window + 1)  # start-up: shorter windows, nothing padded
        with torch.no_grad():
            expected = model.forward_clip(pixels[lo : k + 1], audio[lo : k + 1], text_hidden)[-1]
        assert logits.shape == (256, 256) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)
        assert presence == float("inf")
        assert engine.memory_length == min(k + 1, window - 1)


def test_uncommitted_frames_do_not_enter_the_window(parts):
    model, processor, text, vggish = parts
    engine = _engine(parts, 10)
    images, mels = _clip(3, seed=1)
    frames = [engine.encode_frame(im) for im in images]
    audios = [engine.encode_audio(m) for m in mels]
    engine.step(frames[0], audios[0], commit=True)
    engine.step(frames[1], audios[1], commit=False)
    got, _ = engine.step(frames[2], audios[2], commit=True)
    with torch.no_grad():
        pixels = processor([images[0], images[2]])
        aud = vggish(torch.from_numpy(np.stack([mels[0], mels[2]])))
        expected = model.forward_clip(pixels, aud, text.encode(COMMAND))[-1]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_window_resizing_reset_and_errors(parts):
    engine = _engine(parts, 4)
    images, mels = _clip(4, seed=2)
    for im, m in zip(images, mels):
        engine.step(engine.encode_frame(im), engine.encode_audio(m), commit=True)
    assert engine.memory_length == 3
    engine.set_window(2)
    assert engine.memory_length == 1
    engine.reset_memory()
    assert engine.memory_length == 0
    with pytest.raises(ConfigError):
        engine.set_window(0)
    with pytest.raises(InputError):
        engine.encode_audio(np.zeros((95, 64), np.float32))
    with pytest.raises(InputError):
        engine.encode_frame(np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError):
        engine.set_command("   ")
    fresh = OfficialStreamEngine.from_modules(*parts)
    with pytest.raises(RuntimeError, match="set_command"):
        fresh.step(engine.encode_frame(images[0]), engine.encode_audio(mels[0]), commit=False)
    engine.set_beta(None)
    assert engine.beta == 1.0


def test_from_pretrained_with_a_models_dir(models_dir, tmp_path):
    src = tiny_model(seed=11)
    ckpt = make_checkpoint(tmp_path / "ckpt_best_miou.pth", src)
    engine = OfficialStreamEngine.from_pretrained(ckpt, models_dir)
    loaded = engine.backend.model.net.state_dict()
    for key, value in src.state_dict().items():
        if "swin.layernorm" not in key:
            assert torch.equal(loaded[key], value), key
    engine.set_command(COMMAND)
    images, mels = _clip(1)
    logits, _ = engine.step(engine.encode_frame(images[0]), engine.encode_audio(mels[0]), commit=True)
    assert logits.shape == (256, 256) and np.isfinite(logits).all()


def test_missing_files_are_named(models_dir, tmp_path, tiny_text_dir):
    ckpt = make_checkpoint(tmp_path / "ckpt.pth", tiny_model())
    with pytest.raises(ModelLoadError, match="nothing.pth"):
        load_official(tmp_path / "nothing.pth", models_dir)
    with pytest.raises(ModelLoadError, match="models_dir not found"):
        load_official(ckpt, tmp_path / "no_models")
    broken = make_models_dir(tmp_path / "broken", tiny_text_dir)
    (broken / VGGISH_FILE).unlink()
    with pytest.raises(ModelLoadError, match="vggish.pth"):
        load_official(ckpt, broken)
    (broken / MASK2FORMER_DIR / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError, match="preprocessor_config.json"):
        load_official(ckpt, broken)
    no_text = make_models_dir(tmp_path / "no_text", tiny_text_dir)
    shutil.rmtree(no_text / TEXT_DIR)
    with pytest.raises(ModelLoadError, match=TEXT_DIR):
        load_official(ckpt, no_text)


def test_predictor_runs_the_official_engine(parts):
    """The lead's StreamingPredictor drives the engine end to end (mask at source size)."""
    engine = _engine(parts, 10)
    predictor = StreamingPredictor(engine, PredictorConfig(num_frames=3, frame_stride_sec=1.0))
    predictor.set_command(COMMAND)
    rng = np.random.default_rng(3)
    sr = 16000
    results = []
    for i in range(3):
        stamp = (i + 1) * 1_000_000_000
        predictor.push_audio(stamp - 1_000_000_000, (rng.standard_normal(sr) * 2000).astype(np.int16), sr)
        predictor.push_image(stamp, rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
        results.append(predictor.step())
    assert all(r is not None and r.mask.shape == (30, 50) for r in results)
    assert engine.memory_length == 2
    assert audio_fe.EXAMPLE_SAMPLES == 15600
