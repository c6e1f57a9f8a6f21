"""Audio front end: any rate/channels -> 16 kHz mono, and the VGGish log-mel examples.

The log-mel computation follows the AudioSet/VGGish reference front end (``mel_features.py`` and
``vggish_input.py`` of the TensorFlow models repository, also used by torchvggish):

* 16 kHz mono, int16 scaled by 1/32768;
* STFT with a 25 ms periodic Hann window (400 samples), 10 ms hop (160 samples), FFT length 512,
  magnitude (not power) spectrum;
* 64 triangular mel bands between 125 and 7500 Hz on the HTK mel scale
  (``mel = 1127 ln(1 + f / 700)``), the DC bin weighted zero;
* ``log(mel + 0.01)``;
* non-overlapping examples of 96 frames (0.96 s) with a hop of 96 frames.

One example therefore needs ``400 + 95 * 160 = 15600`` samples (0.975 s) of audio.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import resample_poly

from refavs_ros.errors import InputError

SAMPLE_RATE = 16000
"""Model audio rate (Hz)."""
STFT_WINDOW = 400
"""STFT window length (samples at 16 kHz, 25 ms)."""
STFT_HOP = 160
"""STFT hop (samples at 16 kHz, 10 ms)."""
FFT_LENGTH = 512
"""FFT length: the next power of two above the window."""
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
"""Log-mel frames per example (0.96 s)."""
EXAMPLE_SAMPLES = STFT_WINDOW + (EXAMPLE_FRAMES - 1) * STFT_HOP
"""Samples at 16 kHz that make exactly one example (15600 = 0.975 s)."""

_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Convert PCM audio of any rate and channel count to 16 kHz mono float32.

    Args:
        samples: PCM samples, shape (N,) or (N, C) (interleaved frames x channels). int8, int16
            and int32 are scaled to [-1, 1) by their full range; uint8 is offset-binary; float
            arrays are taken as already in [-1, 1].
        sample_rate: rate of ``samples`` in Hz, 1000..384000.

    Returns:
        float32 array (M,), M = round(N * 16000 / sample_rate), values clipped to [-1, 1].
        Channels are averaged (downmix); resampling is polyphase (scipy ``resample_poly``).

    Raises:
        InputError: non-integer or out-of-range rate, more than 2 dimensions, zero channels,
            a non-numeric dtype, or NaN/inf samples (named, with their count).
    """
    arr = np.asarray(samples)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise InputError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}", reason="bad rate")
    if not 1000 <= int(sample_rate) <= 384000:
        raise InputError(f"sample_rate {sample_rate} Hz is outside 1000..384000 Hz", reason="bad rate")
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise InputError("audio has zero channels", reason="bad channels")
    elif arr.ndim != 1:
        raise InputError(f"audio must have shape (N,) or (N, C), got {arr.shape}", reason="bad shape")
    if arr.dtype in _INT_SCALE:
        x = arr.astype(np.float32) / np.float32(_INT_SCALE[arr.dtype])
    elif arr.dtype == np.uint8:
        x = (arr.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            raise InputError(f"audio contains {int(bad.sum())} NaN/inf samples", reason="non-finite samples")
    else:
        raise InputError(f"unsupported audio sample dtype {arr.dtype}", reason="unsupported format")
    if x.ndim == 2:
        x = x.mean(axis=1)
    rate = int(sample_rate)
    if rate != SAMPLE_RATE and x.size:
        g = gcd(rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)


def _hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_weight_matrix() -> np.ndarray:
    """VGGish mel filterbank (``spectrogram_to_mel_matrix`` of the reference).

    Returns:
        float64 array (257, 64): weight of each FFT bin (0..8000 Hz) in each mel band.
    """
    num_bins = FFT_LENGTH // 2 + 1
    bins_mel = _hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2.0, num_bins))
    edges = np.linspace(_hertz_to_mel(MEL_MIN_HZ), _hertz_to_mel(MEL_MAX_HZ), NUM_MEL_BINS + 2)
    weights = np.empty((num_bins, NUM_MEL_BINS))
    for i in range(NUM_MEL_BINS):
        lower, center, upper = edges[i : i + 3]
        lower_slope = (bins_mel - lower) / (center - lower)
        upper_slope = (upper - bins_mel) / (upper - center)
        weights[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    weights[0, :] = 0.0
    return weights


_MEL_WEIGHTS = mel_weight_matrix()
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(STFT_WINDOW) / STFT_WINDOW)  # periodic


def log_mel_spectrogram(samples_16k: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram of 16 kHz mono audio (VGGish reference, float64 arithmetic).

    Args:
        samples_16k: float array (N,), 16 kHz mono in [-1, 1].

    Returns:
        float32 array (F, 64) with F = 1 + (N - 400) // 160 frames (0 when N < 400).
    """
    x = np.asarray(samples_16k, dtype=np.float64)
    if x.size < STFT_WINDOW:
        return np.zeros((0, NUM_MEL_BINS), np.float32)
    n_frames = 1 + (x.size - STFT_WINDOW) // STFT_HOP
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, STFT_WINDOW), strides=(x.strides[0] * STFT_HOP, x.strides[0])
    )
    spec = np.abs(np.fft.rfft(frames * _HANN, FFT_LENGTH))
    return np.log(spec @ _MEL_WEIGHTS + LOG_OFFSET).astype(np.float32)


def log_mel_examples(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """VGGish input examples of a waveform (``vggish_input.waveform_to_examples``).

    Args:
        samples: PCM audio (N,) or (N, C), any dtype accepted by :func:`to_mono_16k`.
        sample_rate: rate of ``samples`` in Hz.

    Returns:
        float32 array (E, 96, 64): E non-overlapping 0.96 s examples of log-mel frames
        (10 ms hop, 64 bands 125-7500 Hz, ``log(mel + 0.01)``); E = 0 for audio shorter than
        0.975 s.

    Raises:
        InputError: as :func:`to_mono_16k`.
    """
    mel = log_mel_spectrogram(to_mono_16k(samples, sample_rate))
    n = 0 if mel.shape[0] < EXAMPLE_FRAMES else 1 + (mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES
    if n == 0:
        return np.zeros((0, EXAMPLE_FRAMES, NUM_MEL_BINS), np.float32)
    return np.ascontiguousarray(
        mel[: n * EXAMPLE_FRAMES].reshape(n, EXAMPLE_FRAMES, NUM_MEL_BINS), dtype=np.float32
    )


def example_ending_at(samples_16k: np.ndarray) -> np.ndarray:
    """The single log-mel example made of the LAST 0.975 s of a 16 kHz mono buffer.

    Shorter buffers are left-padded with silence, so a stream's first frames get an example
    too (the padding reads as ``log(0.01)``).

    Args:
        samples_16k: float32 (N,), 16 kHz mono in [-1, 1], N >= 0.

    Returns:
        float32 array (96, 64).
    """
    x = np.asarray(samples_16k, dtype=np.float32)
    if x.size >= EXAMPLE_SAMPLES:
        x = x[-EXAMPLE_SAMPLES:]
    else:
        x = np.concatenate([np.zeros(EXAMPLE_SAMPLES - x.size, np.float32), x])
    return log_mel_spectrogram(x)
