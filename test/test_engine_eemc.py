"""The streaming path (engine and predictor) equals the batch clip forward (issue: <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refavs_ros import audio
from refavs_ros.backends.torch_backend import TorchBackend
from refavs_ros.engines.eemc import EEMCStreamEngine, preprocess_image
from refavs_ros.errors import ConfigError, InputError, ModelLoadError
from refavs_ros.models.checkpoint import load_eemc, save_eemc
from refavs_ros.models.eemc import causal_memory
from refavs_ros.models.text import TextEncoder
from refavs_ros.predictor import PredictorConfig, StreamingPredictor

T = 6
H, W = 48, 80
SEC = 1_000_000_000
T0 = 5 * SEC


@pytest.fixture(scope="module")
def model(tiny_weights):
    net, _ = load_eemc(tiny_weights)
    return net


@pytest.fixture(scope="module")
def text(model):
    return TextEncoder.from_pretrained(model.cfg.text_model, model.cfg.max_text_tokens)


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    # audio starts 2 s before the first frame so every frame has a full example
    wave = (rng.standard_normal(16000 * (T + 3)) * 3000).astype(np.int16)
    audio_start = T0 - 2 * SEC
    stamps = [T0 + i * SEC for i in range(T)]
    return frames, wave, audio_start, stamps


def _mels(wave, audio_start, stamps):
    x = wave.astype(np.float32) / 32768.0
    out = []
    for s in stamps:
        end = (s - audio_start) // 62500
        out.append(audio.log_mel_spectrogram(x[end - audio.EXAMPLE_SAMPLES : end]))
    return np.stack(out)


def _source_probability(logits):
    """The predictor's probability map for batch-path mask logits: bilinear resize to (H, W), sigmoid."""
    import cv2

    return 1 / (1 + np.exp(-cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR)))


def _batch(model, text, frames, mels, command, window=None, beta=None):
    hidden, mask = text.encode([command])
    px = torch.from_numpy(np.stack([preprocess_image(f, model.cfg.image_size) for f in frames]))[None]
    with torch.no_grad():
        logits, presence = model(px, torch.from_numpy(mels)[None], torch.from_numpy(hidden),
                                 torch.from_numpy(mask), beta=beta, window=window)
    return logits[0].numpy(), presence[0].numpy()


@pytest.mark.parametrize("window", [None, 3])
def test_engine_streaming_equals_batch_for_every_prefix(model, text, clip, window):
    frames, wave, audio_start, stamps = clip
    mels = _mels(wave, audio_start, stamps)
    engine = EEMCStreamEngine(TorchBackend(model), text, model.cfg, num_frames=window or 1000)
    engine.set_command("the red cup on the left")
    stream = []
    for f, m in zip(frames, mels):
        stream.append(engine.step(engine.encode_frame(f), engine.encode_audio(m), commit=True))
    assert engine.memory_length == min(T, window or T)
    for p in range(1, T + 1):
        logits, presence = _batch(model, text, frames[:p], mels[:p], "the red cup on the left", window=window)
        for i in range(p):
            np.testing.assert_allclose(stream[i][0], logits[i], atol=1e-5, rtol=0)
            assert abs(stream[i][1] - presence[i]) <= 1e-5
    # the cached memory matters: with beta = 0 the outputs change
    off, _ = _batch(model, text, frames, mels, "the red cup on the left", window=window, beta=0.0)
    assert np.abs(off[1:] - np.stack([s[0] for s in stream])[1:]).max() > 1e-4


def test_paper_only_config_streams_like_its_batch_forward(tiny_cfg, text, clip):
    """Weights without the decode position and memory token (the earlier model) still stream exactly."""
    import dataclasses

    from refavs_ros.models.eemc import EEMC

    torch.manual_seed(3)
    plain = EEMC(dataclasses.replace(tiny_cfg, decode_position=False, memory_token=False)).eval()
    frames, wave, audio_start, stamps = clip
    mels = _mels(wave, audio_start, stamps)
    engine = EEMCStreamEngine(TorchBackend(plain), text, plain.cfg, num_frames=1000)
    engine.set_command("the cat")
    stream = [engine.step(engine.encode_frame(f), engine.encode_audio(m), commit=True)[0] for f, m in zip(frames, mels)]
    logits, _ = _batch(plain, text, frames, mels, "the cat")
    np.testing.assert_allclose(np.stack(stream), logits, atol=1e-5, rtol=0)


def test_memory_token_and_position_change_the_output(model, text, clip):
    frames, wave, audio_start, stamps = clip
    mels = _mels(wave, audio_start, stamps)
    full, _ = _batch(model, text, frames, mels, "the first object to make a sound")
    with torch.no_grad():
        saved = model.cue_position.clone()
        model.cue_position.zero_()
        try:
            no_pos, _ = _batch(model, text, frames, mels, "the first object to make a sound")
        finally:
            model.cue_position.copy_(saved)
    assert np.abs(no_pos - full).max() > 1e-4
    # the memory token is beta * C_A: zero at the first frame, so only later frames may differ
    hidden, mask = text.encode(["the first object to make a sound"])
    px = torch.from_numpy(np.stack([preprocess_image(f, model.cfg.image_size) for f in frames]))[None]
    with torch.no_grad():
        _, _, aux = model(px, torch.from_numpy(mels)[None], torch.from_numpy(hidden), torch.from_numpy(mask),
                          return_aux=True)
    assert torch.all(aux["memory_audio"][0, 0] == 0) and aux["memory_audio"][0, 1:].abs().max() > 0


def test_frame_subset_keeps_the_streaming_audio_memory(model, text, clip):
    """Training on a subset of frames: the audio branch still runs over every step."""
    frames, wave, audio_start, stamps = clip
    mels = torch.from_numpy(_mels(wave, audio_start, stamps))[None]
    hidden, mask = text.encode(["the sounding bell"])
    hidden, mask = torch.from_numpy(hidden), torch.from_numpy(mask)
    px = torch.from_numpy(np.stack([preprocess_image(f, model.cfg.image_size) for f in frames]))[None]
    with torch.no_grad():
        all_logits, _, all_aux = model(px, mels, hidden, mask, return_aux=True)
        same, _ = model(px, mels, hidden, mask, frame_index=torch.arange(T))
        sel = torch.tensor([1, 3, 4])
        sub_logits, _, sub_aux = model(px[:, sel], mels, hidden, mask, return_aux=True, frame_index=sel)
    torch.testing.assert_close(same, all_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(sub_aux["memory_audio"], all_aux["memory_audio"][:, sel], atol=1e-6, rtol=0)
    assert sub_logits.shape == (1, 3, model.cfg.mask_size, model.cfg.mask_size)
    with pytest.raises(ValueError, match="frame_index"):
        model(px[:, :2], mels, hidden, mask)


def test_causal_memory_matches_definition():
    x = torch.randn(2, 7, 3, 4)
    for window in (None, 1, 3):
        c = causal_memory(x, window)
        assert torch.all(c[:, 0] == 0)
        for t in range(1, 7):
            lo = 0 if window is None else max(0, t - window)
            torch.testing.assert_close(c[:, t], x[:, lo:t].mean(dim=1), atol=1e-6, rtol=0)


def test_causal_memory_with_entries_averages_only_the_entries_before_each_step():
    x = torch.randn(2, 9, 3, 4)
    entries = torch.tensor([[1, 0, 1, 0, 1, 0, 1, 0, 1], [0, 1, 0, 0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    for window in (None, 1, 2):
        c = causal_memory(x, window, entries)
        for b in range(2):
            for t in range(9):
                kept = [j for j in range(t) if entries[b, j]]
                kept = kept if window is None else kept[-window:]
                want = x[b, kept].mean(dim=0) if kept else torch.zeros(3, 4)
                torch.testing.assert_close(c[b, t], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(causal_memory(x, 3, torch.ones(9, dtype=torch.bool)), causal_memory(x, 3))
    with pytest.raises(ValueError, match="entries"):
        causal_memory(x, None, torch.ones(8, dtype=torch.bool))


def test_predictor_at_2_fps_equals_batch_with_one_memory_entry_per_second(model, text, tiny_weights, clip):
    """The training path for clips above 1 Hz (``memory_entries``) is the predictor's 1-s commit rule."""
    from refavs_ros import training

    frames, wave, audio_start, _ = clip
    stamps = [T0 + i * SEC // 2 for i in range(T)]  # 2 fps: entries at frames 0, 2, 4
    pred = _predictor(tiny_weights, frame_stride_sec=1.0, num_frames=1000, score_threshold=0.0)
    pred.set_command("the first object to make a sound")
    pred.push_audio(audio_start, wave, 16000)
    probs = []
    for stamp, frame in zip(stamps, frames):
        pred.push_image(stamp, frame)
        probs.append(pred.step().probability)
    entries = training.memory_entries(T, training.memory_every(2.0))
    assert entries.tolist() == [True, False, True, False, True, False]
    hidden, mask = text.encode(["the first object to make a sound"])
    px = torch.from_numpy(np.stack([preprocess_image(f, model.cfg.image_size) for f in frames]))[None]
    mels = torch.from_numpy(_mels(wave, audio_start, stamps))[None]
    with torch.no_grad():
        logits, _ = model(px, mels, torch.from_numpy(hidden), torch.from_numpy(mask),
                          memory_entries=torch.from_numpy(entries))
        every, _ = model(px, mels, torch.from_numpy(hidden), torch.from_numpy(mask))
    checked = 0
    for p, l in zip(probs, logits[0].numpy()):
        if p.any():
            np.testing.assert_allclose(p, _source_probability(l), atol=1e-5)
            checked += 1
    assert checked >= 3
    # committing every frame would be another memory from frame 2 on
    assert np.abs(every[0, 2:].numpy() - logits[0, 2:].numpy()).max() > 1e-4
    with pytest.raises(ValueError, match="memory_entries"):
        model(px, mels, torch.from_numpy(hidden), torch.from_numpy(mask), memory_entries=torch.ones(T - 1, dtype=torch.bool))


def test_command_change_rebuilds_memory_from_cached_features(model, text, clip):
    frames, wave, audio_start, stamps = clip
    mels = _mels(wave, audio_start, stamps)
    engine = EEMCStreamEngine(TorchBackend(model), text, model.cfg, num_frames=100)
    engine.set_command("the cat")
    for f, m in zip(frames[:3], mels[:3]):
        engine.step(engine.encode_frame(f), engine.encode_audio(m), commit=True)
    engine.set_command("the sounding bell")  # switch mid-stream
    switched = [engine.step(engine.encode_frame(f), engine.encode_audio(m), commit=True)[0]
                for f, m in zip(frames[3:], mels[3:])]
    logits, _ = _batch(model, text, frames, mels, "the sounding bell")
    np.testing.assert_allclose(np.stack(switched), logits[3:], atol=1e-5, rtol=0)


def _predictor(tiny_weights, **cfg):
    return StreamingPredictor.from_pretrained(tiny_weights, config=PredictorConfig(**cfg))


def test_predictor_streaming_equals_batch_with_chunked_audio(model, text, tiny_weights, clip):
    """Whole path: 512-sample audio chunks on the stamp time line, every frame stepped."""
    frames, wave, audio_start, stamps = clip
    pred = _predictor(tiny_weights, frame_stride_sec=0.0, num_frames=1000, score_threshold=0.0)
    pred.set_command("the dog that is barking")
    chunk = 512
    pos = 0
    probs = []
    for stamp, frame in zip(stamps, frames):
        while pos < wave.size and audio_start + pos * 62500 <= stamp:
            pred.push_audio(audio_start + pos * 62500, wave[pos : pos + chunk], 16000)
            pos += chunk
        pred.push_image(stamp, frame)
        result = pred.step()
        assert result is not None and result.stamp_ns == stamp and result.audio_ok
        assert result.mask.shape == (H, W) and result.probability.shape == (H, W)
        probs.append(result.probability)
    logits, _ = _batch(model, text, frames, _mels(wave, audio_start, stamps), "the dog that is barking")
    for p, l in zip(probs, logits):
        if p.any():  # gated by found; with score_threshold 0 only an empty mask gates
            np.testing.assert_allclose(p, _source_probability(l), atol=1e-5)


def test_predictor_takes_latest_frame_and_strides_memory(tiny_weights, clip):
    frames, _, _, _ = clip
    pred = _predictor(tiny_weights, frame_stride_sec=1.0, num_frames=4)
    assert pred.step() is None  # nothing pushed
    pred.push_image(T0, frames[0])
    assert pred.step() is None  # no command yet
    pred.set_command("the cat")
    for i in range(3):  # a burst of frames between two steps: only the newest is processed
        pred.push_image(T0 + i * SEC // 4, frames[i])
    r = pred.step()
    assert r.stamp_ns == T0 + 2 * SEC // 4
    assert pred.step() is None
    assert pred.engine.memory_length == 1
    pred.push_image(T0 + SEC, frames[3])  # 0.5 s after the committed frame: not committed
    pred.step()
    assert pred.engine.memory_length == 1
    for k in range(2, 8):
        pred.push_image(T0 + k * SEC, frames[k % T])
        pred.step()
    assert pred.engine.memory_length == 4  # window bound
    pred.reset_memory()
    assert pred.engine.memory_length == 0 and pred.command == "the cat"


def test_predictor_bad_inputs_are_rejected_with_clear_errors(tiny_weights, clip):
    frames, _, _, _ = clip
    pred = _predictor(tiny_weights)
    for bad in ("", "   ", "x" * 600, "a\x00b"):
        if bad == "":
            pred.set_command(bad)  # empty clears the command
            assert pred.command == ""
            continue
        with pytest.raises(InputError):
            pred.set_command(bad)
    with pytest.raises(InputError, match="NaN"):
        pred.push_audio(T0, np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(InputError, match="sample_rate"):
        pred.push_audio(T0, np.zeros(10, np.int16), 0)
    with pytest.raises(InputError, match="shape"):
        pred.push_audio(T0, np.zeros((2, 2, 2), np.int16), 16000)
    with pytest.raises(InputError, match="uint8"):
        pred.push_image(T0, frames[0].astype(np.float32))
    with pytest.raises(InputError, match="empty"):
        pred.push_image(T0, np.zeros((0, 5, 3), np.uint8))
    pred.push_audio(T0, np.zeros(4800, np.int16), 48000)  # odd rate, odd length
    pred.push_audio(T0 + SEC // 10, np.zeros((333, 2), np.int16), 44100)  # stereo 44.1 kHz
    with pytest.raises(InputError, match="out of order"):
        pred.push_audio(T0, np.zeros(100, np.int16), 16000)
    pred.set_command("the cat")
    pred.push_image(T0 + SEC, frames[0])
    assert pred.step() is not None
    with pytest.raises(InputError, match="not newer"):
        pred.push_image(T0, frames[1])  # timestamps out of order
    with pytest.raises(ConfigError):
        pred.update_config(PredictorConfig(num_frames=0))


def test_missing_audio_is_silence_and_flagged(tiny_weights, clip):
    frames, _, _, _ = clip
    pred = _predictor(tiny_weights, max_av_skew_sec=0.5)
    pred.set_command("the cat")
    pred.push_audio(T0, np.zeros(1600, np.int16), 16000)  # 0.1 s of audio, then nothing
    pred.push_image(T0 + 2 * SEC, frames[0])
    assert pred.step().audio_ok is False
    pred.push_audio(T0 + 2 * SEC, np.zeros(1600, np.int16), 16000)  # gap filled with silence
    pred.push_image(T0 + 2 * SEC + SEC // 20, frames[1])
    assert pred.step().audio_ok is True


def test_checkpoint_errors_name_the_problem(tiny_weights, tmp_path, model):
    with pytest.raises(ModelLoadError, match="not found"):
        load_eemc(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError):
        load_eemc(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other), metadata={"format": "something"})
    with pytest.raises(ModelLoadError, match="not a refavs_ros EEMC file"):
        load_eemc(other)
    path = save_eemc(model, tmp_path / "copy.safetensors", extra={"note": "x"})
    again, meta = load_eemc(path)
    assert meta["note"] == "x"
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
