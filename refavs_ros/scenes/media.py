"""Pictures, sounds and backgrounds of the synthetic benchmark, built once per process and cached.

Pictures are scikit-image's bundled photos (``skimage.data``) cut out with a silhouette (the
horse's own mask, a threshold-free drawn outline for the others: a bust for the astronaut, a head
with ears for the cat, a cup with handle, ...). Sounds are the Debian ``sound-theme-freedesktop``
recordings and espeak-ng speech, converted to 16 kHz mono with ``sox``. When a photo, a recording
or a tool is missing, or ``media="procedural"`` is asked for, a procedural shape / synthetic sound
of the same category is used instead; the source actually used is returned with every medium so
it ends up in ``Scene.objects`` and is never silently replaced.

Nothing generated here is written outside a temporary directory that is removed right away.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import cv2
import numpy as np
from scipy.io import wavfile
from scipy.signal import butter, resample_poly, sosfilt

from refavs_ros.audio import to_mono_16k
from refavs_ros.scenes.catalog import CATEGORY_BY_NAME, PITCH_FACTORS

_LOG = logging.getLogger(__name__)

FREEDESKTOP_DIR = "/usr/share/sounds/freedesktop/stereo"
"""Where Debian's sound-theme-freedesktop installs its .oga recordings."""

MEDIA_MODES: tuple[str, ...] = ("auto", "procedural")
SPRITE_LONG_SIDE = 160
"""Longer side (pixels) of the cached base sprites; scenes resize them down with INTER_AREA."""
BASE_RATE = 16000
"""Rate (Hz) at which base sounds are cached."""
BACKGROUNDS_PHOTO: tuple[str, ...] = ("brick", "grass", "gravel")
BACKGROUNDS_PROCEDURAL: tuple[str, ...] = ("gradient", "clouds")
_BG_SIDE = 512


@dataclass(frozen=True)
class Sprite:
    """A category's cut-out at base resolution.

    Attributes:
        lum: float32 (h, w) luminance in [0.3, 1.0] (the tint multiplies it).
        alpha: bool (h, w) silhouette; True on the object.
        source: where it came from, e.g. ``"skimage.data.chelsea"`` or ``"procedural:disc"``.
    """

    lum: np.ndarray
    alpha: np.ndarray
    source: str


@dataclass(frozen=True)
class Sound:
    """A category's base sound.

    Attributes:
        wave: float32 (N,) mono at 16 kHz, peak-normalised to 1, leading/trailing silence cut.
        source: e.g. ``"freedesktop:bell.oga"``, ``"espeak-ng:'meeow, meeow'"``, ``"synth:roar"``.
    """

    wave: np.ndarray
    source: str


def _check_media(media: str) -> None:
    if media not in MEDIA_MODES:
        raise ValueError(f"media must be one of {MEDIA_MODES}, got {media!r}")


def sprite_shape(aspect: float, long_side: int = SPRITE_LONG_SIDE) -> tuple[int, int]:
    """Sprite (height, width) in pixels for an aspect ratio height/width and a longer side."""
    if aspect >= 1.0:
        return long_side, max(1, int(round(long_side / aspect)))
    return max(1, int(round(long_side * aspect))), long_side


# ----------------------------------------------------------------------------------- sprites


def _gray(img: np.ndarray) -> np.ndarray:
    """Photo -> float32 luminance in [0, 1] (ITU-R 601 weights via OpenCV)."""
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    return img.astype(np.float32) / 255.0


def _normalise_lum(lum: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Stretch the luminance inside the silhouette to [0.3, 1.0] (2nd..98th percentile)."""
    inside = lum[alpha] if alpha.any() else lum.ravel()
    lo, hi = np.percentile(inside, [2.0, 98.0])
    out = (lum - lo) / max(float(hi - lo), 1e-3)
    return (0.3 + 0.7 * np.clip(out, 0.0, 1.0)).astype(np.float32)


def _pts(points: list[tuple[float, float]], h: int, w: int) -> np.ndarray:
    return np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in points], np.int32)


def _ellipse(canvas: np.ndarray, cx: float, cy: float, ax: float, ay: float, value: float = 1.0,
             thickness: int = -1) -> None:
    h, w = canvas.shape
    cv2.ellipse(canvas, (round(cx * w), round(cy * h)), (max(1, round(ax * w)), max(1, round(ay * h))),
                0, 0, 360, value, thickness, cv2.LINE_8)


def _poly(canvas: np.ndarray, points: list[tuple[float, float]], value: float = 1.0) -> None:
    h, w = canvas.shape
    cv2.fillPoly(canvas, [_pts(points, h, w)], value)


def _texture(photo: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Crop ``photo[y0:y1, x0:x1]`` (box = x0, y0, x1, y1), to grey, resized to ``shape`` (h, w)."""
    x0, y0, x1, y1 = box
    crop = _gray(photo[y0:y1, x0:x1])
    return cv2.resize(crop, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _photo_sprite(recipe: str, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Build (lum, alpha) of a photo recipe; raises whatever skimage raises when data is missing."""
    from skimage import data  # heavy import, only when photos are first needed

    h, w = sprite_shape(aspect)
    m = np.zeros((h, w), np.float32)
    if recipe == "astronaut":  # bust: head + neck + shoulders, face at (0.5, 0.24)
        lum = _texture(data.astronaut(), (45, 0, 385, 391), (h, w))
        _ellipse(m, 0.5, 0.24, 0.2, 0.19)
        _poly(m, [(0.4, 0.3), (0.6, 0.3), (0.62, 0.5), (0.38, 0.5)])
        _ellipse(m, 0.5, 0.98, 0.5, 0.5)
    elif recipe == "chelsea":  # cat head: face ellipse + two ears
        lum = _texture(data.chelsea(), (100, 0, 400, 300), (h, w))
        _ellipse(m, 0.5, 0.6, 0.44, 0.38)
        _poly(m, [(0.08, 0.55), (0.14, 0.02), (0.45, 0.3)])
        _poly(m, [(0.92, 0.55), (0.86, 0.02), (0.55, 0.3)])
    elif recipe == "coffee":  # cup: rim ellipse + tapering body + handle ring on the left
        lum = _texture(data.coffee(), (170, 10, 440, 266), (h, w))
        _ellipse(m, 0.55, 0.3, 0.43, 0.28)
        _poly(m, [(0.12, 0.3), (0.98, 0.3), (0.82, 0.92), (0.3, 0.92)])
        _ellipse(m, 0.2, 0.72, 0.17, 0.2, thickness=max(2, h // 14))
    elif recipe == "rocket":  # nose cone, body, fins
        lum = _texture(data.rocket(), (300, 120, 340, 400), (h, w))
        _poly(m, [(0.5, 0.0), (0.68, 0.16), (0.68, 0.74), (0.98, 0.94), (0.98, 1.0), (0.02, 1.0),
                  (0.02, 0.94), (0.32, 0.74), (0.32, 0.16)])
    elif recipe == "clock":  # round face with a rim, 12 ticks and two hands drawn dark
        lum = _texture(data.clock(), (145, 95, 270, 220), (h, w))
        lum = 0.35 + 0.65 * (lum - lum.min()) / max(float(np.ptp(lum)), 1e-3)
        _ellipse(m, 0.5, 0.5, 0.49, 0.49)
        dark = np.zeros_like(m)
        _ellipse(dark, 0.5, 0.5, 0.46, 0.46, thickness=max(2, h // 16))
        c = (round(0.5 * w), round(0.5 * h))
        for k in range(12):
            ang = 2 * np.pi * k / 12
            p0 = (round(c[0] + 0.32 * w * np.cos(ang)), round(c[1] + 0.32 * h * np.sin(ang)))
            p1 = (round(c[0] + 0.4 * w * np.cos(ang)), round(c[1] + 0.4 * h * np.sin(ang)))
            cv2.line(dark, p0, p1, 1.0, max(1, h // 40))
        cv2.line(dark, c, (round(c[0] - 0.2 * w), round(c[1] - 0.12 * h)), 1.0, max(2, h // 22))
        cv2.line(dark, c, (round(c[0] + 0.26 * w), round(c[1] - 0.22 * h)), 1.0, max(2, h // 30))
        lum = np.where(dark > 0, 0.05, lum).astype(np.float32)
        return lum, m > 0  # already normalised, keep the dark hands
    elif recipe == "horse":  # the photo's own silhouette, textured with cat fur
        sil = ~np.asarray(data.horse(), bool)
        ys, xs = np.nonzero(sil)
        sil = sil[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
        m = cv2.resize(sil, (w, h), interpolation=cv2.INTER_AREA)
        lum = _texture(data.chelsea(), (0, 150, 220, 300), (h, w))
    elif recipe == "camcorder":  # cameraman's camcorder: body, lens, top handle
        lum = _texture(data.camera(), (258, 132, 332, 182), (h, w))
        _poly(m, [(0.22, 0.2), (0.96, 0.2), (0.96, 0.92), (0.22, 0.92)])
        _poly(m, [(0.0, 0.32), (0.24, 0.32), (0.24, 0.78), (0.0, 0.78)])
        _poly(m, [(0.45, 0.0), (0.85, 0.0), (0.85, 0.22), (0.45, 0.22)])
    elif recipe == "motorcycle":  # two wheels + body
        left, _, _ = data.stereo_motorcycle()
        lum = _texture(left, (100, 100, 700, 500), (h, w))
        _ellipse(m, 0.2, 0.7, 0.19, 0.28)
        _ellipse(m, 0.82, 0.72, 0.17, 0.26)
        _ellipse(m, 0.5, 0.45, 0.38, 0.22)
        _poly(m, [(0.62, 0.3), (0.78, 0.0), (0.86, 0.05), (0.86, 0.6), (0.7, 0.6)])
    elif recipe == "bell":  # dome, flared body, clapper, hanging loop; coins photo as metal
        lum = _texture(data.coins(), (10, 10, 200, 200), (h, w))
        _ellipse(m, 0.5, 0.32, 0.27, 0.24)
        _poly(m, [(0.23, 0.32), (0.77, 0.32), (0.84, 0.74), (0.97, 0.86), (0.03, 0.86), (0.16, 0.74)])
        _ellipse(m, 0.5, 0.91, 0.09, 0.09)
        _ellipse(m, 0.5, 0.07, 0.07, 0.06, thickness=max(2, h // 30))
    else:
        raise KeyError(f"unknown photo recipe {recipe!r}")
    alpha = m > 0.5
    return _normalise_lum(lum, alpha), alpha


def _procedural_sprite(shape: str, aspect: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """A flat geometric shape with a category-specific stripe texture (no external media)."""
    h, w = sprite_shape(aspect)
    m = np.zeros((h, w), np.float32)
    if shape == "disc":
        _ellipse(m, 0.5, 0.5, 0.49, 0.49)
    elif shape == "ellipse":
        _ellipse(m, 0.5, 0.5, 0.49, 0.45)
    elif shape == "ring":
        _ellipse(m, 0.5, 0.5, 0.42, 0.42, thickness=max(3, h // 6))
    elif shape == "square":
        _poly(m, [(0.05, 0.05), (0.95, 0.05), (0.95, 0.95), (0.05, 0.95)])
    elif shape == "triangle":
        _poly(m, [(0.5, 0.02), (0.98, 0.98), (0.02, 0.98)])
    elif shape == "diamond":
        _poly(m, [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)])
    elif shape == "hexagon":
        _poly(m, [(0.25, 0.03), (0.75, 0.03), (1.0, 0.5), (0.75, 0.97), (0.25, 0.97), (0.0, 0.5)])
    elif shape == "cross":
        _poly(m, [(0.35, 0.0), (0.65, 0.0), (0.65, 1.0), (0.35, 1.0)])
        _poly(m, [(0.0, 0.33), (1.0, 0.33), (1.0, 0.67), (0.0, 0.67)])
    elif shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 0.5, 0.21)
        _poly(m, [(0.5 + r * np.cos(a), 0.53 + r * np.sin(a)) for r, a in zip(rad, ang)])
    else:
        raise KeyError(f"unknown procedural shape {shape!r}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = 0.6 * salt
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * (0.12 + 0.02 * (salt % 4)))
    lum = (0.55 + 0.45 * stripes).astype(np.float32)
    return lum, m > 0.5


_PHOTO_SOURCES = {
    "astronaut": "skimage.data.astronaut",
    "chelsea": "skimage.data.chelsea",
    "coffee": "skimage.data.coffee",
    "rocket": "skimage.data.rocket",
    "clock": "skimage.data.clock (+ drawn hands)",
    "horse": "skimage.data.horse silhouette, skimage.data.chelsea fur",
    "camcorder": "skimage.data.camera (camcorder crop)",
    "motorcycle": "skimage.data.stereo_motorcycle",
    "bell": "skimage.data.coins (bell outline)",
}


@lru_cache(maxsize=64)
def category_sprite(category: str, media: str = "auto") -> Sprite:
    """The cached base cut-out of a category.

    Args:
        category: a name of ``catalog.CATEGORIES``.
        media: "auto" (scikit-image photo, procedural shape if the photo cannot be loaded) or
            "procedural" (always the procedural shape).

    Returns:
        :class:`Sprite` with ``lum`` float32 (h, w) in [0, 1], ``alpha`` bool (h, w), where
        (h, w) = :func:`sprite_shape` of the category's aspect; ``source`` names the medium used.

    Raises:
        KeyError: unknown category. ValueError: unknown media mode.
    """
    _check_media(media)
    spec = CATEGORY_BY_NAME[category]
    if media == "auto":
        try:
            lum, alpha = _photo_sprite(spec.photo, spec.aspect)
            return Sprite(lum, alpha, _PHOTO_SOURCES[spec.photo])
        except (ImportError, OSError, ValueError) as exc:  # bundled photo unavailable
            _LOG.warning("photo for %s unavailable (%s); using procedural %s", category, exc, spec.shape)
            reason = f" (fallback: {type(exc).__name__})"
    else:
        reason = ""
    lum, alpha = _procedural_sprite(spec.shape, spec.aspect, salt=list(CATEGORY_BY_NAME).index(category))
    return Sprite(lum, alpha, f"procedural:{spec.shape}{reason}")


# ------------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=16)
def background_base(name: str) -> np.ndarray:
    """A cached 512 x 512 float32 grey texture in [0, 1] (1st..99th percentile stretched).

    Args:
        name: "brick", "grass", "gravel" (scikit-image photos) or "gradient", "clouds"
            (procedural, seeded by the name only).

    Raises:
        KeyError: unknown name. ImportError/OSError: the photo cannot be loaded.
    """
    if name in BACKGROUNDS_PHOTO:
        from skimage import data

        img = _gray(getattr(data, name)())
        img = cv2.resize(img, (_BG_SIDE, _BG_SIDE), interpolation=cv2.INTER_AREA)
    elif name == "gradient":
        yy, xx = np.mgrid[0:_BG_SIDE, 0:_BG_SIDE].astype(np.float32) / _BG_SIDE
        img = 0.5 + 0.25 * np.sin(3.0 * xx + 1.0) + 0.25 * np.cos(2.2 * yy + 0.4 * xx)
    elif name == "clouds":
        rng = np.random.default_rng(12345)
        img = np.zeros((_BG_SIDE, _BG_SIDE), np.float32)
        for octave, weight in ((8, 1.0), (32, 0.5), (128, 0.25)):
            noise = rng.random((octave, octave)).astype(np.float32)
            img += weight * cv2.resize(noise, (_BG_SIDE, _BG_SIDE), interpolation=cv2.INTER_CUBIC)
    else:
        raise KeyError(f"unknown background {name!r}")
    lo, hi = np.percentile(img, [1.0, 99.0])
    return np.clip((img - lo) / max(float(hi - lo), 1e-3), 0.0, 1.0).astype(np.float32)


def background_names(media: str) -> tuple[str, ...]:
    """Background textures usable with ``media`` (photos only in "auto" mode)."""
    _check_media(media)
    return BACKGROUNDS_PHOTO + BACKGROUNDS_PROCEDURAL if media == "auto" else BACKGROUNDS_PROCEDURAL


# ------------------------------------------------------------------------------------ sounds


def _read_wav(path: str) -> np.ndarray:
    rate, data = wavfile.read(path)
    return to_mono_16k(data, int(rate))


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def _convert_with_sox(src: str, tmp: str) -> np.ndarray:
    """``sox src -r 16000 -c 1 -b 16 out.wav`` -> float32 (N,) at 16 kHz."""
    out = os.path.join(tmp, "out16k.wav")
    _run(["sox", src, "-r", str(BASE_RATE), "-c", "1", "-b", "16", out])
    return _read_wav(out)


def _recorded_sound(kind: str, arg: str, espeak_args: tuple[str, ...]) -> tuple[np.ndarray, str]:
    """Convert a freedesktop recording or espeak-ng speech; raises FileNotFoundError/OSError/
    CalledProcessError/TimeoutExpired when a tool or file is missing or fails."""
    with tempfile.TemporaryDirectory(prefix="refavs_scenes_") as tmp:
        if kind == "freedesktop":
            src = os.path.join(FREEDESKTOP_DIR, f"{arg}.oga")
            if not os.path.exists(src):
                raise FileNotFoundError(src)
            if shutil.which("sox") is None:
                raise FileNotFoundError("sox")
            return _convert_with_sox(src, tmp), f"freedesktop:{arg}.oga"
        if kind == "espeak":
            if shutil.which("espeak-ng") is None:
                raise FileNotFoundError("espeak-ng")
            raw = os.path.join(tmp, "speech.wav")
            _run(["espeak-ng", *espeak_args, "-w", raw, arg])
            wave = _convert_with_sox(raw, tmp) if shutil.which("sox") else _read_wav(raw)
            return wave, f"espeak-ng:{arg!r}"
    raise KeyError(f"unknown recorded sound kind {kind!r}")


def synth_sound(name: str, rate: int = BASE_RATE) -> np.ndarray:
    """A deterministic synthetic sound (no external media).

    Args:
        name: "voice", "meow", "ding", "roar", "beep", "neigh", "click", "engine" or "chime".
        rate: sample rate in Hz.

    Returns:
        float32 (N,), 0.3..1.0 s long, peak 1.

    Raises:
        KeyError: unknown name.
    """
    rng = np.random.default_rng(sum(map(ord, name)))

    def t_of(sec: float) -> np.ndarray:
        return np.arange(int(sec * rate)) / rate

    if name == "voice":  # harmonic voice at 150 Hz with vowel formants and 4 Hz syllables
        t = t_of(1.0)
        f0 = 150 * (1 + 0.05 * np.sin(2 * np.pi * 1.5 * t))
        ph = 2 * np.pi * np.cumsum(f0) / rate
        x = sum(np.sin(k * ph) / k * (1.5 if 4 <= k <= 8 else 1.0) for k in range(1, 16))
        x = x * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) ** 2
    elif name == "meow":  # rising-falling glide 500 -> 850 -> 450 Hz
        t = t_of(0.7)
        f0 = np.interp(t, [0, 0.3, 0.7], [500, 850, 450])
        ph = 2 * np.pi * np.cumsum(f0) / rate
        x = sum(np.sin(k * ph) * 0.6 ** k for k in range(1, 6)) * np.sin(np.pi * t / 0.7)
    elif name == "ding":
        t = t_of(0.6)
        x = (np.sin(2 * np.pi * 1800 * t) + 0.5 * np.sin(2 * np.pi * 2700 * t)) * np.exp(-t / 0.2)
    elif name == "roar":  # low-passed noise with a slow swell
        t = t_of(1.0)
        x = sosfilt(butter(4, 400, fs=rate, output="sos"), rng.standard_normal(t.size))
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t))
    elif name == "beep":  # alarm: 4 beeps of 1 kHz
        t = t_of(0.8)
        x = np.sign(np.sin(2 * np.pi * 1000 * t)) * 0.5 * ((t * 5) % 1.0 < 0.5)
    elif name == "neigh":  # falling glide with fast vibrato
        t = t_of(0.8)
        f0 = np.interp(t, [0, 0.8], [420, 240]) * (1 + 0.06 * np.sin(2 * np.pi * 12 * t))
        ph = 2 * np.pi * np.cumsum(f0) / rate
        x = sum(np.sin(k * ph) * 0.7 ** k for k in range(1, 8)) * np.sin(np.pi * t / 0.8)
    elif name == "click":  # shutter: two short noise bursts
        t = t_of(0.3)
        x = rng.standard_normal(t.size) * (np.exp(-t / 0.01) + np.exp(-np.clip(t - 0.12, 0, None) / 0.015) * (t > 0.12))
    elif name == "engine":  # 70 Hz sawtooth with 20 Hz firing modulation
        t = t_of(1.0)
        x = (2 * ((70 * t) % 1.0) - 1) * (0.6 + 0.4 * np.sin(2 * np.pi * 20 * t))
    elif name == "chime":  # inharmonic bell partials
        t = t_of(0.8)
        x = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((520, 1.0), (1310, 0.6), (2230, 0.35))) * np.exp(-t / 0.3)
    else:
        raise KeyError(f"unknown synthetic sound {name!r}")
    x = np.asarray(x, np.float64)
    return (x / max(float(np.abs(x).max()), 1e-9)).astype(np.float32)


def _trim_silence(x: np.ndarray, rel: float = 0.02) -> np.ndarray:
    loud = np.nonzero(np.abs(x) > rel * float(np.abs(x).max(initial=0.0)))[0]
    return x[loud[0] : loud[-1] + 1] if loud.size else x


@lru_cache(maxsize=64)
def category_sound(category: str, media: str = "auto") -> Sound:
    """The cached base sound of a category, 16 kHz mono, peak 1, silence trimmed.

    In "auto" mode the recording (freedesktop .oga via sox, or espeak-ng speech) is tried first;
    a missing tool/file or a failed conversion falls back to :func:`synth_sound`, and the
    returned ``source`` says so (and a warning is logged).

    Raises:
        KeyError: unknown category. ValueError: unknown media mode.
    """
    _check_media(media)
    spec = CATEGORY_BY_NAME[category]
    kind, arg = spec.sound
    reason = ""
    if media == "auto" and kind != "synth":
        try:
            wave, source = _recorded_sound(kind, arg, spec.espeak_args)
            wave = _trim_silence(wave)
            if wave.size < 160 or not np.abs(wave).max() > 0:
                raise ValueError(f"{source} decoded to silence")
            return Sound((wave / np.abs(wave).max()).astype(np.float32), source)
        except (OSError, ValueError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _LOG.warning("sound for %s unavailable (%s); using synth:%s", category, exc, spec.synth)
            reason = f" (fallback: {type(exc).__name__})"
    name = arg if kind == "synth" and media == "auto" else spec.synth
    return Sound(_trim_silence(synth_sound(name)), f"synth:{name}{reason}")


_LOOP_GAP_SEC = 0.08
_MIN_PERIOD_SEC = 0.35
_MAX_BASE_SEC = 1.6
_FADE_SEC = 0.05
_TARGET_RMS = 0.1


@lru_cache(maxsize=128)
def looped_sound(category: str, size: str, media: str, sample_rate: int, num_samples: int) -> np.ndarray:
    """A category's sound at a size's pitch, looped over a whole clip, RMS-normalised.

    The base sound is cut to its first 1.6 s (50 ms fade-out), resampled by
    ``1 / PITCH_FACTORS[size]`` (a big object plays one octave lower and twice as slow), then to
    ``sample_rate``, then repeated with a short gap (0.08 s, period at least 0.35 s) until
    ``num_samples`` are filled. Every 1-s slot of the result (slots start at sample 0) is scaled
    to an RMS of 0.1 (-20 dBFS), so an object is equally audible in every slot it sounds in and
    gains in dB compare loudness across categories. Read-only array.

    Returns:
        float32 (num_samples,).
    """
    wave = category_sound(category, media).wave
    cap = int(_MAX_BASE_SEC * BASE_RATE)
    if wave.size > cap:
        wave = wave[:cap].copy()
        fade = int(_FADE_SEC * BASE_RATE)
        wave[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    up = int(round(1.0 / PITCH_FACTORS[size]))  # factors are 1 and 1/2
    if up != 1:
        wave = resample_poly(wave, up, 1).astype(np.float32)
    if sample_rate != BASE_RATE:
        g = gcd(sample_rate, BASE_RATE)
        wave = resample_poly(wave, sample_rate // g, BASE_RATE // g).astype(np.float32)
    period = max(wave.size + int(_LOOP_GAP_SEC * sample_rate), int(_MIN_PERIOD_SEC * sample_rate))
    one = np.zeros(period, np.float32)
    one[: wave.size] = wave
    out = np.tile(one, num_samples // period + 1)[:num_samples].astype(np.float64)
    for start in range(0, num_samples, sample_rate):  # per-slot loudness
        seg = out[start : start + sample_rate]
        seg *= _TARGET_RMS / max(float(np.sqrt(np.mean(seg**2))), 1e-9)
    out = out.astype(np.float32)
    out.setflags(write=False)
    return out
