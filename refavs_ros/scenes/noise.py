"""Ambient noise of the synthetic scenes: babble, machine hum, fans and distractor sounds at an SNR.

A loud room is the first thing a robot meets that the clean benchmark lacks (practitioners'
read of Ref-AVS, ``shared/paper/000_*.txt``). :func:`ambient_noise` builds a clip-long noise
track from one to three of these components, none of which any object category uses:

* ``babble``: 3-6 talkers of espeak-ng speech (voices and sentences distinct from the ``person``
  category's), each at its own random offset and level;
* ``hum``: mains hum (50 or 60 Hz with harmonics, the 2nd strongest as in transformers) plus a
  slower machine drone with a slow level wobble, all generated;
* ``fan``: band-limited pink noise with a blade-pass tone and its harmonics, generated;
* ``distractor``: 1-4 short events of freedesktop sounds that no category uses
  (phone, message, warning, trash, plug, ...), at random times.

:func:`mix_at_snr` scales the noise so that ``10 log10(P_signal / P_noise) = snr_db``, where
``P_signal`` is the mean power of the objects' sounds over the 1-s slots in which at least one
object sounds (or -20 dBFS, the level of one object at 0 dB gain, when none does) and
``P_noise`` is the noise's mean power over the whole clip.

Everything is deterministic in the random stream passed in; base recordings are made once per
process (``functools.lru_cache``) in a temporary directory that is removed at once. Without
espeak-ng / sox / the freedesktop files, babble falls back to synthetic harmonic voices and
distractors to synthetic chirps, and the returned component names say so.
"""

from __future__ import annotations

import logging
import subprocess
from functools import lru_cache

import numpy as np
from scipy.signal import butter, resample_poly, sosfilt

from refavs_ros.scenes import media as _media

_LOG = logging.getLogger(__name__)

NOISE_KINDS: tuple[str, ...] = ("babble", "hum", "fan", "distractor")
"""Components of the ambient noise (see the module docstring)."""

TEST_NOISY_SNRS_DB: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0)
"""SNRs (dB) of the ``test-noisy`` split: scene ``i`` gets ``TEST_NOISY_SNRS_DB[i % 4]`` unless
the config fixes ``snr_db``."""

BABBLE_TALKERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-v", "en-gb+m1", "-s", "170", "-p", "40"), "the meeting moved to thursday afternoon, bring the reports please"),
    (("-v", "en-us+m2", "-s", "185", "-p", "30"), "we shipped the second batch yesterday and the invoice is on its way"),
    (("-v", "en+f2", "-s", "175", "-p", "60"), "have you seen my keys, I left them next to the printer this morning"),
    (("-v", "en-gb-scotland+m4", "-s", "160", "-p", "45"), "turn left at the second corridor and the lab is right there"),
    (("-v", "en-029+f1", "-s", "190", "-p", "70"), "lunch is in ten minutes, shall we try the new place downstairs"),
    (("-v", "en-us+m5", "-s", "150", "-p", "25"), "the forklift needs charging before the night shift starts"),
    (("-v", "en+f5", "-s", "165", "-p", "55"), "can somebody check the temperature log for station four"),
    (("-v", "en-gb-x-rp+m6", "-s", "180", "-p", "35"), "the delivery van is parked outside gate number three"),
)
"""espeak-ng arguments and sentence of each babble talker (not the ``person`` voice en-us+f3)."""

DISTRACTOR_SOUNDS: tuple[str, ...] = (
    "phone-incoming-call", "message-new-instant", "dialog-warning", "dialog-information", "trash-empty",
    "power-plug", "window-attention", "service-login", "device-added", "suspend-error",
)
"""freedesktop sounds used as distractors; categories use bell, complete, alarm-clock-elapsed and
camera-shutter, which are never used here."""

_REFERENCE_POWER = 0.1**2
"""Power of one object at 0 dB gain (-20 dBFS RMS): the signal power of a scene with no sound."""


@lru_cache(maxsize=16)
def talker(index: int, media: str = "auto") -> tuple[np.ndarray, str]:
    """Speech of babble talker ``index`` at 16 kHz: (float32 (N,) peak 1, source name).

    Raises:
        IndexError: ``index`` outside :data:`BABBLE_TALKERS`.
    """
    args, text = BABBLE_TALKERS[index]
    if media == "auto":
        try:
            wave, source = _media._recorded_sound("espeak", text, args)
            wave = _media._trim_silence(wave)
            if wave.size >= 1600 and np.abs(wave).max() > 0:
                return (wave / np.abs(wave).max()).astype(np.float32), source
        except (OSError, ValueError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _LOG.warning("babble talker %d unavailable (%s); using a synthetic voice", index, exc)
    return _synthetic_talker(index), f"synth:talker{index}"


def _synthetic_talker(index: int, rate: int = _media.BASE_RATE) -> np.ndarray:
    """A 3-s harmonic voice with a talker-specific pitch contour and syllable rate."""
    rng = np.random.default_rng(1000 + index)
    t = np.arange(3 * rate) / rate
    f0 = (110 + 25 * index) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t))
    ph = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * ph) / k for k in range(1, 12))
    syll = (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t)) ** 2
    x = np.asarray(x * syll, np.float64)
    return (x / max(float(np.abs(x).max()), 1e-9)).astype(np.float32)


@lru_cache(maxsize=16)
def distractor_sound(name: str, media: str = "auto") -> tuple[np.ndarray, str]:
    """A distractor recording at 16 kHz: (float32 (N,) peak 1, source name).

    Raises:
        ValueError: ``name`` not in :data:`DISTRACTOR_SOUNDS`.
    """
    if name not in DISTRACTOR_SOUNDS:
        raise ValueError(f"unknown distractor sound {name!r}; expected one of {DISTRACTOR_SOUNDS}")
    if media == "auto":
        try:
            wave, source = _media._recorded_sound("freedesktop", name, ())
            wave = _media._trim_silence(wave)[: 2 * _media.BASE_RATE]
            if wave.size >= 160 and np.abs(wave).max() > 0:
                return (wave / np.abs(wave).max()).astype(np.float32), source
        except (OSError, ValueError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _LOG.warning("distractor %s unavailable (%s); using a synthetic chirp", name, exc)
    k = DISTRACTOR_SOUNDS.index(name)
    t = np.arange(int(0.4 * _media.BASE_RATE)) / _media.BASE_RATE
    f = 600 + 250 * k + 900 * t
    x = np.sin(2 * np.pi * np.cumsum(f) / _media.BASE_RATE) * np.exp(-t / 0.15)
    return (x / np.abs(x).max()).astype(np.float32), f"synth:chirp{k}"


def _resampled(wave: np.ndarray, rate: int) -> np.ndarray:
    if rate == _media.BASE_RATE:
        return wave
    from math import gcd

    g = gcd(rate, _media.BASE_RATE)
    return resample_poly(wave, rate // g, _media.BASE_RATE // g).astype(np.float32)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return (x / max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-12)).astype(np.float32)


def babble(rng: np.random.Generator, n: int, rate: int, media: str = "auto") -> tuple[np.ndarray, list[str]]:
    """3-6 distinct talkers, each looped from a random offset at a level within 6 dB.

    Returns:
        (float32 (n,) at unit RMS, the talkers' source names).
    """
    count = int(rng.integers(3, 7))
    chosen = rng.choice(len(BABBLE_TALKERS), size=count, replace=False)
    out = np.zeros(n, np.float64)
    sources = []
    for i in chosen:
        wave, source = talker(int(i), media)
        wave = _resampled(wave, rate)
        gap = np.zeros(int(rng.uniform(0.1, 0.6) * rate), np.float32)
        one = np.concatenate([wave, gap])
        track = np.tile(one, n // one.size + 2)
        start = int(rng.integers(one.size))
        out += 10 ** (rng.uniform(-6.0, 0.0) / 20) * _unit_rms(track[start : start + n])
        sources.append(source)
    return _unit_rms(out), sources


def hum(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Mains hum (50 or 60 Hz, harmonics up to 8x) and a machine drone (18-45 Hz fundamental,
    harmonics to 400 Hz), each with a slow level wobble: float32 (n,) at unit RMS."""
    t = np.arange(n) / rate
    mains = 50.0 if rng.random() < 0.5 else 60.0
    amps = {1: 0.5, 2: 1.0, 3: 0.45, 4: 0.25, 5: 0.15, 6: 0.1, 8: 0.05}
    x = sum(a * np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 2 * np.pi)) for k, a in amps.items())
    f0 = rng.uniform(18.0, 45.0)
    drone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, int(400 // f0) + 1))
    wobble = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * t + rng.uniform(0, 2 * np.pi))
    return _unit_rms(np.asarray(x, np.float64) + rng.uniform(0.3, 1.0) * drone * wobble)


def fan(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Fan: pink-ish noise band-passed 60-3000 Hz plus a blade-pass tone (3-7 blades at
    900-2400 rpm) with 3 harmonics and a 2-8 % slow modulation: float32 (n,) at unit RMS."""
    white = rng.standard_normal(n)
    # pink-ish: sum of octave-band low-passes of white noise
    pink = sum(sosfilt(butter(1, fc, fs=rate, output="sos"), white) for fc in (100, 400, 1600, 6400))
    band = sosfilt(butter(2, [60, min(3000, rate / 2 - 100)], btype="bandpass", fs=rate, output="sos"), pink)
    t = np.arange(n) / rate
    bpf = int(rng.integers(3, 8)) * rng.uniform(900, 2400) / 60.0
    tone = sum(np.sin(2 * np.pi * k * bpf * t + rng.uniform(0, 2 * np.pi)) / k**1.5 for k in range(1, 4))
    mod = 1.0 + rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
    return _unit_rms((_unit_rms(band) + rng.uniform(0.2, 0.6) * _unit_rms(tone)) * mod)


def distractors(rng: np.random.Generator, n: int, rate: int, media: str = "auto") -> tuple[np.ndarray, list[str]]:
    """1-4 distractor events at random times and levels (within 6 dB): (float32 (n,) at unit
    RMS over the clip, their source names)."""
    out = np.zeros(n, np.float64)
    sources = []
    for _ in range(int(rng.integers(1, 5))):
        name = DISTRACTOR_SOUNDS[int(rng.integers(len(DISTRACTOR_SOUNDS)))]
        wave, source = distractor_sound(name, media)
        wave = _resampled(wave, rate)[:n]
        start = int(rng.integers(0, max(1, n - wave.size)))
        out[start : start + wave.size] += 10 ** (rng.uniform(-6.0, 0.0) / 20) * wave
        sources.append(source)
    return _unit_rms(out), sources


def ambient_noise(
    rng: np.random.Generator, n: int, rate: int, media: str = "auto", kinds: tuple[str, ...] | None = None
) -> tuple[np.ndarray, list[str]]:
    """A clip-long ambient noise track of 1-3 components (or exactly ``kinds``).

    Args:
        rng: random stream (the only source of randomness).
        n: samples. rate: sample rate in Hz.
        media: "auto" (espeak-ng / freedesktop where available) or "procedural" (generated only).
        kinds: components to use (subset of :data:`NOISE_KINDS`); None = 1-3 drawn at random.

    Returns:
        (float32 (n,) at unit RMS, description of every component, e.g.
        ``["babble: 4 talkers (espeak-ng)", "hum", "distractor: freedesktop:trash-empty.oga"]``).

    Raises:
        ValueError: unknown component name, or ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"noise length must be >= 1 sample, got {n}")
    if kinds is None:
        k = int(rng.integers(1, 4))
        kinds = tuple(NOISE_KINDS[int(i)] for i in sorted(rng.choice(len(NOISE_KINDS), size=k, replace=False)))
    bad = [k for k in kinds if k not in NOISE_KINDS]
    if bad or not kinds:
        raise ValueError(f"noise kinds must be a non-empty subset of {NOISE_KINDS}, got {kinds}")
    out = np.zeros(n, np.float64)
    names = []
    for kind in kinds:
        if kind == "babble":
            x, src = babble(rng, n, rate, media)
            kinds_used = sorted({x.split(":")[0] for x in src})
            names.append(f"babble: {len(src)} talkers ({', '.join(kinds_used)})")
        elif kind == "hum":
            x = hum(rng, n, rate)
            names.append("hum")
        elif kind == "fan":
            x = fan(rng, n, rate)
            names.append("fan")
        else:
            x, src = distractors(rng, n, rate, media)
            names.append("distractor: " + ", ".join(src))
        out += 10 ** (rng.uniform(-4.0, 0.0) / 20) * x
    return _unit_rms(out), names


def signal_power(signal: np.ndarray, active: np.ndarray) -> float:
    """Mean power of ``signal`` over the samples where ``active`` is True (reference power of
    one object at 0 dB gain, 0.01, when none is).

    Args:
        signal: float (N,) the objects' sounds. active: bool (N,).
    """
    if not active.any():
        return _REFERENCE_POWER
    return float(np.mean(np.square(signal[active], dtype=np.float64)))


def mix_at_snr(noise: np.ndarray, signal: np.ndarray, active: np.ndarray, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that the signal-to-noise ratio is ``snr_db``.

    Args:
        noise: float32 (N,) any level. signal: float (N,) the objects' sounds.
        active: bool (N,) samples inside a slot where at least one object sounds.
        snr_db: target SNR in dB (any finite value).

    Returns:
        float32 (N,): the scaled noise (add it to the mixture).

    Raises:
        ValueError: shapes differ or ``snr_db`` is not finite.
    """
    if noise.shape != signal.shape or signal.shape != active.shape:
        raise ValueError(f"noise {noise.shape}, signal {signal.shape} and active {active.shape} must match")
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    p_noise = float(np.mean(np.square(noise, dtype=np.float64)))
    if p_noise <= 0:
        return np.zeros_like(noise, dtype=np.float32)
    gain = np.sqrt(signal_power(signal, active) / (p_noise * 10 ** (snr_db / 10.0)))
    return (noise * gain).astype(np.float32)


def scene_snr(split: str, index: int, seed: int, config) -> tuple[float | None, np.random.Generator]:
    """The ambient-noise SNR of a scene and the random stream its noise is drawn from.

    ``config.snr_db`` when set; else ``TEST_NOISY_SNRS_DB[index % 4]`` in ``test-noisy``; else,
    with probability ``config.noise_prob``, uniform in ``config.snr_range_db``; else None (no
    ambient noise). The stream is seeded from ("ambient", split, index, seed), so the rest of the
    scene does not change when noise is added.

    Args:
        split, index, seed: the scene's generator inputs. config: its ``SceneConfig``.

    Returns:
        (SNR in dB or None, generator).
    """
    from refavs_ros.scenes.planner import derive_seed

    rng = np.random.default_rng(derive_seed("ambient", split, int(index), int(seed)))
    if config.snr_db is not None:
        return float(config.snr_db), rng
    if split == "test-noisy":
        return TEST_NOISY_SNRS_DB[int(index) % len(TEST_NOISY_SNRS_DB)], rng
    if config.noise_prob > 0 and rng.random() < config.noise_prob:
        lo, hi = config.snr_range_db
        return float(round(rng.uniform(lo, hi), 2)), rng
    return None, rng
