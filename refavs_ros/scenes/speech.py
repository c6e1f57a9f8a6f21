"""Spoken commands for the voice benchmark: espeak-ng speech of a scene's expression, mixed
into the scene's audio at a chosen signal-to-noise ratio.

:func:`speak_scene` takes a generated :class:`~refavs_ros.scenes.Scene` and returns a copy whose
audio also contains a person saying the scene's expression (the ground-truth command), spoken
by espeak-ng with a voice, rate and pitch drawn per scene, starting 0.3-1.0 s into the clip.
The scene's pictures, sounds and masks are unchanged, so the same scene can be evaluated with
the typed command (the original) and the spoken one. The copy's ``info()`` carries a
``spoken_command`` record (text, voice, rate, pitch, the speech span in ns, SNR, level) and
:func:`refavs_ros.rosio.bagio.write_scene_bag` then writes no text command topic.

SNR: the speech is scaled so that its power over its own span (leading/trailing silence
trimmed) is ``snr_db`` above the power of the scene's audio over the same span (the object
sounds and the background noise it competes with). If the mixture would exceed 0.9 full scale
both are scaled down together (the SNR is kept).
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import tempfile

import numpy as np
from scipy.io import wavfile

from refavs_ros.audio import to_mono_16k
from refavs_ros.errors import ConfigError
from refavs_ros.scenes.planner import derive_seed

VOICES: tuple[str, ...] = ("en-us", "en-us+f2", "en-us+f3", "en-us+m1", "en-us+m3", "en-us+m7")
"""espeak-ng voices of the spoken commands (US English, as pocketsphinx's acoustic model;
variants: f = female, m = male timbres)."""
RATE_WPM: tuple[int, int] = (140, 180)
"""Speaking rate range (words per minute, uniform integer)."""
PITCH: tuple[int, int] = (30, 70)
"""espeak-ng pitch range (0..99, uniform integer)."""
START_SEC: tuple[float, float] = (0.3, 1.0)
"""Range of the speech onset in the clip (s)."""
SNR_LEVELS: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0)
"""SNRs (dB) of the benchmark's voice splits."""
_PEAK = 0.9
_TRIM_REL = 0.02


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` executable is on PATH."""
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=512)
def _synth_cached(text: str, voice: str, rate_wpm: int, pitch: int, sample_rate: int) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="refavs_speech_") as tmp:
        path = os.path.join(tmp, "speech.wav")
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-p", str(pitch), "-w", path, text],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigError(f"espeak-ng failed to speak {text!r} with voice {voice!r}: {exc}") from None
        rate, data = wavfile.read(path)
    x = to_mono_16k(data, int(rate))
    if sample_rate != 16000:
        x = _resample(x, sample_rate)
    x.setflags(write=False)
    return x


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(16000, rate)
    return resample_poly(x, rate // g, 16000 // g).astype(np.float32)


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 160, pitch: int = 50,
               sample_rate: int = 16000) -> np.ndarray:
    """Speech of ``text`` by espeak-ng, with leading and trailing silence trimmed.

    Args:
        text: what to say (punctuation shapes the prosody: "where is the cat?").
        voice: espeak-ng voice, e.g. "en-us+f3". rate_wpm: words per minute, 80..450.
        pitch: 0..99. sample_rate: output rate (Hz).

    Returns:
        float32 (N,) mono in [-1, 1] at ``sample_rate`` (cached per argument set; read-only).

    Raises:
        ConfigError: espeak-ng is not installed or fails, or an argument is out of range.
    """
    if not espeak_available():
        raise ConfigError("spoken commands need espeak-ng (apt-get install espeak-ng)")
    if not str(text).strip():
        raise ConfigError("cannot speak an empty text")
    if not 80 <= int(rate_wpm) <= 450 or not 0 <= int(pitch) <= 99:
        raise ConfigError(f"espeak-ng rate must be 80..450 wpm and pitch 0..99, got {rate_wpm}, {pitch}")
    x = _synth_cached(str(text), str(voice), int(rate_wpm), int(pitch), int(sample_rate))
    return _trim(x)


def _trim(x: np.ndarray) -> np.ndarray:
    level = np.abs(x)
    if not level.size or level.max() == 0:
        return x
    loud = np.nonzero(level >= _TRIM_REL * level.max())[0]
    return x[loud[0] : loud[-1] + 1]


CLEAN_SPEECH_DBFS = -25.0
"""Speech level (RMS over its span, dBFS) of a ``clean`` spoken scene."""
CLEAN_FLOOR_DBFS = -60.0
"""Level (RMS, dBFS) of the white noise floor of a ``clean`` spoken scene (a microphone's)."""


def speak_scene(scene, snr_db: float | None, seed: int = 0, *, voices: tuple[str, ...] = VOICES,
                clean: bool = False):
    """A copy of ``scene`` whose audio also contains the spoken command.

    The voice, rate, pitch and onset are drawn from a stream seeded by
    (split, index, seed), so the same scene gets the same speaker at every SNR.

    Args:
        scene: a :class:`~refavs_ros.scenes.Scene` (int16 mono audio).
        snr_db: speech-to-scene power ratio over the speech span (dB), -10..60; ignored (may
            be None) when ``clean``.
        seed: benchmark seed.
        voices: espeak-ng voices to draw from.
        clean: the scene's sounds are muted: the speech alone at :data:`CLEAN_SPEECH_DBFS` over
            a :data:`CLEAN_FLOOR_DBFS` noise floor (the benchmark's reference condition: what is
            lost to the recogniser itself, not to the scene's sounds). ``snr_db`` is recorded
            as None.

    Returns:
        The new Scene: ``audio`` with the speech mixed in, ``meta["spoken_command"]`` =
        ``{"text", "voice", "rate_wpm", "pitch", "start_ns", "end_ns", "snr_db",
        "speech_dbfs"}`` (span of the trimmed speech, stamps in ns), ``meta["command_source"]``
        = "spoken". Everything else is shared with / equal to ``scene``.

    Raises:
        ConfigError: espeak-ng missing, SNR out of range, or the speech does not fit in the clip.
    """
    if not clean and (not isinstance(snr_db, (int, float)) or isinstance(snr_db, bool)
                      or not -10.0 <= snr_db <= 60.0):
        raise ConfigError(f"snr_db must be in -10..60 dB, got {snr_db!r}")
    if not voices:
        raise ConfigError("need at least one espeak-ng voice")
    rng = np.random.default_rng(derive_seed("speech", scene.split, scene.meta.get("index", scene.scene_id), seed))
    voice = voices[int(rng.integers(len(voices)))]
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    start_sec = float(rng.uniform(*START_SEC))
    sr = int(scene.sample_rate)
    speech = synthesize(scene.expression, voice, rate, pitch, sr)
    audio = scene.audio.astype(np.float32) / 32768.0
    start = round(start_sec * sr)
    end = start + speech.size
    if end > audio.size:
        raise ConfigError(f"spoken command of {speech.size / sr:.2f} s does not fit in the "
                          f"{audio.size / sr:.1f} s clip of {scene.scene_id}")
    p_speech = float(np.mean(speech.astype(np.float64) ** 2))
    if clean:
        floor = np.random.default_rng(derive_seed("speech-floor", scene.split, scene.meta.get("index", 0), seed))
        audio = (10 ** (CLEAN_FLOOR_DBFS / 20) * floor.standard_normal(audio.size)).astype(np.float32)
        gain = 10 ** (CLEAN_SPEECH_DBFS / 20) / np.sqrt(max(p_speech, 1e-12))
    else:
        p_scene = float(np.mean(audio[start:end].astype(np.float64) ** 2))
        gain = np.sqrt(max(p_scene, 1e-12) * 10.0 ** (snr_db / 10.0) / max(p_speech, 1e-12))
    mix = audio.copy()
    mix[start:end] += np.float32(gain) * speech
    peak = float(np.abs(mix).max(initial=0.0))
    if peak > _PEAK:
        mix *= np.float32(_PEAK / peak)
        gain *= _PEAK / peak
    speech_dbfs = 10.0 * np.log10(max(p_speech * gain**2, 1e-20))
    out = copy.copy(scene)
    out.audio = np.round(mix * 32767.0).astype(np.int16)
    start_ns = int(scene.audio_start_ns) + round(start * 1e9 / sr)
    end_ns = int(scene.audio_start_ns) + round(end * 1e9 / sr)
    out.meta = dict(scene.meta)
    out.meta["command_source"] = "spoken"
    out.meta["spoken_command"] = {
        "text": scene.expression, "voice": voice, "rate_wpm": rate, "pitch": pitch, "start_ns": start_ns,
        "end_ns": end_ns, "snr_db": None if clean else float(snr_db), "speech_dbfs": round(float(speech_dbfs), 2),
    }
    return out
