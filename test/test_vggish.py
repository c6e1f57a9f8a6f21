"""VGGish network (refavs_ros.models.vggish) and the AudioSet log-mel front end it consumes.

The log-mel check re-derives the reference ``mel_features.py`` computation (TensorFlow models,
research/audioset/vggish) independently of ``refavs_ros.audio``: a direct DFT sum per bin instead
of an FFT, the triangular mel weights evaluated bin by bin from the reference formulas, and the
analytic magnitude of a Hann-windowed pure tone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_official_helpers import TINY_VGGISH_CHANNELS, tiny_vggish

from refavs_ros import audio
from refavs_ros.errors import InputError, ModelLoadError
from refavs_ros.models.vggish import VGGish, load_vggish, load_vggish_state_dict

RATE = 16000


def _mel(hz: float) -> float:  # reference hertz_to_mel (HTK)
    return 1127.0 * math.log(1.0 + hz / 700.0)


def _reference_mel_weight(bin_index: int, band: int) -> float:
    """spectrogram_to_mel_matrix entry, one bin at a time (257 bins over 0..8000 Hz, 64 bands)."""
    if bin_index == 0:
        return 0.0
    lo, hi = _mel(125.0), _mel(7500.0)
    edges = [lo + (hi - lo) * i / 65 for i in range(66)]
    bin_mel = _mel(8000.0 * bin_index / 256)
    lower, center, upper = edges[band], edges[band + 1], edges[band + 2]
    return max(0.0, min((bin_mel - lower) / (center - lower), (upper - bin_mel) / (upper - center)))


def _reference_log_mel_frame(signal: np.ndarray, frame: int) -> np.ndarray:
    """log(mel(|STFT|) + 0.01) of one 25 ms frame (periodic Hann, 512-point DFT by direct sums)."""
    seg = signal[frame * 160 : frame * 160 + 400].astype(np.float64)
    n = np.arange(400)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / 400)
    mags = np.array([abs(np.sum(seg * window * np.exp(-2j * np.pi * k * n / 512))) for k in range(257)])
    out = np.empty(64)
    for band in range(64):
        out[band] = math.log(sum(mags[k] * _reference_mel_weight(k, band) for k in range(257)) + 0.01)
    return out


def test_log_mel_of_a_pure_tone_matches_the_reference_computation():
    amplitude, freq = 0.5, 1000.0  # 1000 Hz = DFT bin 32 of 512 at 16 kHz
    t = np.arange(RATE) / RATE
    signal = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    ours = audio.log_mel_spectrogram(signal)
    assert ours.shape == (1 + (RATE - 400) // 160, 64)
    ref = _reference_log_mel_frame(signal, 10)
    np.testing.assert_allclose(ours[10], ref, rtol=1e-4, atol=1e-4)
    # analytic check: a tone on a bin centre gives |X| = A/2 * sum(hann) = A * 100 there
    seg = signal[1600:2000].astype(np.float64) * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400))
    assert abs(abs(np.sum(seg * np.exp(-2j * np.pi * 32 * np.arange(400) / 512))) - amplitude * 100) < 0.5
    # the loudest band is the one whose triangle weights bin 32 most
    peak_band = max(range(64), key=lambda b: _reference_mel_weight(32, b))
    assert int(np.argmax(ours[10])) == peak_band
    # steady tone: every full frame is the same (hop = 10 periods of the tone)
    np.testing.assert_allclose(ours[5], ours[50], rtol=1e-5, atol=1e-5)
    # silence bands read log(0.01)
    assert np.isclose(audio.log_mel_spectrogram(np.zeros(RATE, np.float32)).max(), math.log(0.01))


def test_log_mel_examples_are_non_overlapping_096s_patches():
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(int(2.5 * RATE)) * 3000).astype(np.int16)
    examples = audio.log_mel_examples(wav, RATE)
    mel = audio.log_mel_spectrogram(wav.astype(np.float32) / 32768.0)
    assert examples.shape == (2, 96, 64)
    np.testing.assert_allclose(examples[1], mel[96:192], rtol=1e-6)
    assert audio.log_mel_examples(wav[: audio.EXAMPLE_SAMPLES - 1], RATE).shape == (0, 96, 64)
    assert audio.log_mel_examples(wav[: audio.EXAMPLE_SAMPLES], RATE).shape == (1, 96, 64)


# ----------------------------------------------------------------------------------- network


def test_released_architecture_has_torchvggish_names_and_sizes():
    with torch.device("meta"):
        net = VGGish()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["features.0.weight"] == (64, 1, 3, 3)
    assert shapes["features.13.weight"] == (512, 512, 3, 3)
    assert shapes["embeddings.0.weight"] == (4096, 12288)
    assert shapes["embeddings.4.weight"] == (128, 4096)
    assert {k.split(".")[1] for k in shapes if k.startswith("features")} == {"0", "3", "6", "8", "11", "13"}
    assert sum(v.numel() for v in net.state_dict().values()) == 72_141_184


def test_forward_flattens_in_tensorflow_order():
    net = tiny_vggish()
    x = torch.randn(3, 96, 64)
    with torch.no_grad():
        out = net(x)
        feat = net.features(x[:, None])  # (N, C, 6, 4)
        assert feat.shape[2:] == (6, 4)
        manual = net.embeddings(feat.permute(0, 2, 3, 1).reshape(3, -1))
    assert out.shape == (3, 128)
    torch.testing.assert_close(out, manual)
    assert (out < 0).any()  # no final ReLU by default
    relu_net = VGGish(channels=TINY_VGGISH_CHANNELS, hidden=16, final_relu=True)
    relu_net.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        assert (relu_net(x) >= 0).all()
    with pytest.raises(InputError):
        net(torch.randn(2, 90, 64))
    assert net.embed(x[0].numpy()).shape == (128,)


def test_load_vggish_from_file(tmp_path):
    src = tiny_vggish(seed=3)
    sd = dict(src.state_dict())
    sd["pproc._pca_matrix"] = torch.eye(128)
    sd["pproc._pca_means"] = torch.zeros(128, 1)
    path = tmp_path / "vggish.pth"
    torch.save(sd, path)
    net = load_vggish(path)
    x = torch.randn(2, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), src(x))
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"vggish.{k}": v for k, v in src.state_dict().items()}, prefixed)
    with torch.no_grad():
        torch.testing.assert_close(load_vggish(prefixed)(x), src(x))


def test_load_vggish_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere.pth"):
        load_vggish(tmp_path / "nowhere.pth")
    sd = dict(tiny_vggish().state_dict())
    del sd["embeddings.2.bias"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ModelLoadError, match="embeddings.2.bias"):
        load_vggish(tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="junk.pth"):
        load_vggish(tmp_path / "junk.pth")
    with pytest.raises(ModelLoadError, match="unexpected"):
        extra = dict(tiny_vggish().state_dict())
        extra["classifier.weight"] = torch.zeros(2)
        load_vggish_state_dict(tiny_vggish(), extra)
