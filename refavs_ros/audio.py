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

from fractions import Fraction
from functools import lru_cache
from math import gcd

import numpy as np
from scipy.signal import firwin, resample_poly

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

MAX_POLYPHASE = 1000
"""Largest up / down factor of the polyphase resampler. The exact ratio of every common rate to
16 kHz stays below it (44.1 kHz: 160/441, 48 kHz: 1/3, 11.025 kHz: 640/441); an odd rate whose
exact ratio needs more (44101 Hz: 16000/44101, 383999 Hz: 16000/383999) is resampled at the
nearest ratio p/q with p, q <= 1000 instead: at most 5.1e-4 relative error over 1000..384000 Hz
(worst: 320163 Hz as 1/20, under 1 cent of pitch), while the exact filter would have
2 * 10 * max(p, q) + 1 taps (7.7 million for 383999 Hz: 2.3 s to design per chunk on the 2-core
CPU of bench/RESULTS.md, so a stream at such a rate would stall the node)."""


@lru_cache(maxsize=32)
def resample_ratio(sample_rate: int) -> tuple[int, int]:
    """The (up, down) factors :func:`to_mono_16k` resamples ``sample_rate`` Hz with.

    Args:
        sample_rate: input rate in Hz (> 0).

    Returns:
        ``(up, down)``, coprime, both <= :data:`MAX_POLYPHASE`: ``16000 / sample_rate`` exactly
        when that fits, else its best rational approximation that does
        (:meth:`fractions.Fraction.limit_denominator`).
    """
    g = gcd(int(sample_rate), SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, int(sample_rate) // g
    if max(up, down) <= MAX_POLYPHASE:
        return up, down
    exact, bound = Fraction(SAMPLE_RATE, int(sample_rate)), MAX_POLYPHASE
    while True:
        f = exact.limit_denominator(bound)
        if max(f.numerator, f.denominator) <= MAX_POLYPHASE:
            return f.numerator, f.denominator
        bound -= 1 if bound < 50 else bound // 20


@lru_cache(maxsize=32)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The FIR filter ``resample_poly`` designs for (up, down) (Kaiser window, beta 5), as float32:
    designed once per ratio instead of once per chunk (scipy designs it on every call)."""
    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(np.float32)
    taps.flags.writeable = False
    return taps


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Convert PCM audio of any rate and channel count to 16 kHz mono float32.

    Args:
        samples: PCM samples, shape (N,) or (N, C) (interleaved frames x channels). int8, int16
            and int32 are scaled to [-1, 1) by their full range; uint8 is offset-binary; float
            arrays are taken as already in [-1, 1].
        sample_rate: rate of ``samples`` in Hz, 1000..384000.

    Returns:
        float32 array (M,), M = ceil(N * up / down) with (up, down) = :func:`resample_ratio`
        (``16000 / sample_rate``, or its nearest p/q with p, q <= :data:`MAX_POLYPHASE`), values
        clipped to [-1, 1] (float input is clipped before the downmix too). Channels are
        averaged (downmix); resampling is polyphase (scipy ``resample_poly``, its default
        Kaiser-windowed filter, designed once per ratio).

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
        # clipped BEFORE the downmix and the filter: finite values near the float32 maximum
        # would overflow to inf in the channel mean and turn into NaN in the filter
        x = np.clip(x, -1.0, 1.0)
    else:
        raise InputError(f"unsupported audio sample dtype {arr.dtype}", reason="unsupported format")
    if x.ndim == 2:
        x = x.mean(axis=1)
    rate = int(sample_rate)
    if rate != SAMPLE_RATE and x.size:
        up, down = resample_ratio(rate)
        if up != down:
            x = resample_poly(x, up, down, window=_lowpass(up, down)).astype(np.float32)
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
