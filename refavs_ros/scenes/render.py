"""Rendering a :class:`~refavs_ros.scenes.planner.ScenePlan` into frames, masks and audio."""

from __future__ import annotations

import cv2
import numpy as np

from refavs_ros.scenes.catalog import COLOURS, PITCH_FACTORS
from refavs_ros.scenes.config import SceneConfig
from refavs_ros.scenes.media import (
    BACKGROUNDS_PHOTO,
    BACKGROUNDS_PROCEDURAL,
    background_base,
    category_sound,
    category_sprite,
    looped_sound,
)
from refavs_ros.scenes.planner import ObjectPlan, ScenePlan, frame_times

_RAMP_SEC = 0.005
"""Fade-in/out at every sound on/off transition (s), to avoid clicks."""
_PEAK = 0.9
"""Largest allowed mixture amplitude (full scale 1.0) before int16 conversion."""


def object_sprite(obj: ObjectPlan, cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """The object's tinted cut-out at its pixel size.

    Returns:
        ``(rgb, alpha, source)``: uint8 (h, w, 3), bool (h, w) and the medium's name. ``h`` and
        ``w`` are ``2 * half * (height, width)`` rounded, at least 3 pixels.
    """
    sprite = category_sprite(obj.category, cfg.media)
    w = max(3, int(round(2.0 * obj.half[0] * cfg.width)))
    h = max(3, int(round(2.0 * obj.half[1] * cfg.height)))
    lum = cv2.resize(sprite.lum, (w, h), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(sprite.alpha.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    if obj.flip:
        lum, alpha = lum[:, ::-1], alpha[:, ::-1]
    rgb = np.clip(lum[..., None] * np.asarray(COLOURS[obj.colour], np.float32), 0, 255).astype(np.uint8)
    return rgb, alpha, sprite.source


def object_masks(obj: ObjectPlan, cfg: SceneConfig, alpha: np.ndarray | None = None) -> np.ndarray:
    """The object's silhouette alone in every frame, placed exactly as :func:`render_frames` does.

    Args:
        obj: a placed object. cfg: rendering settings.
        alpha: its sprite silhouette (from :func:`object_sprite`); None = computed.

    Returns:
        bool (T, H, W).
    """
    if alpha is None:
        alpha = object_sprite(obj, cfg)[1]
    times = frame_times(cfg)
    out = np.zeros((times.size, cfg.height, cfg.width), bool)
    h, w = alpha.shape
    for t, (cx, cy) in enumerate(obj.centres(times)):
        x0 = int(round(cx * cfg.width - w / 2.0))
        y0 = int(round(cy * cfg.height - h / 2.0))
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, cfg.width), min(y0 + h, cfg.height)
        if fx1 > fx0 and fy1 > fy0:
            out[t, fy0:fy1, fx0:fx1] = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    return out


def background(plan: ScenePlan, cfg: SceneConfig) -> np.ndarray:
    """Muted, low-contrast textured background: uint8 (H, W, 3) RGB.

    A random square crop of a 512 x 512 texture (scikit-image brick / grass / gravel, or a
    procedural gradient / cloud texture), resized to the frame and tinted with a desaturated
    colour, so the saturated object tints stand out.
    """
    bg = plan.background
    names = BACKGROUNDS_PHOTO + BACKGROUNDS_PROCEDURAL if cfg.media == "auto" else BACKGROUNDS_PROCEDURAL
    base = background_base(names[bg["style"] % len(names)])
    side = int(base.shape[0] * (0.4 + 0.6 * bg["crop"][2]))
    x0 = int(bg["crop"][0] * (base.shape[1] - side))
    y0 = int(bg["crop"][1] * (base.shape[0] - side))
    tex = cv2.resize(base[y0 : y0 + side, x0 : x0 + side], (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
    grey = bg["level"] + bg["contrast"] * (tex - 0.5)  # (H, W) in about [0.2, 0.65]
    tint = 1.0 + 0.18 * np.asarray(bg["tint"], np.float32)  # desaturated: channel gains 0.82..1.18
    return np.clip(grey[..., None] * tint * 255.0, 0, 255).astype(np.uint8)


def render_frames(plan: ScenePlan, cfg: SceneConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Composite the objects over the background at every frame time.

    Objects are pasted in plan order (later ones on top) with their binary silhouettes, so the
    ground truth is exact: pixel (t, y, x) belongs to the last object whose silhouette covers it.
    Foreground bars of ``plan.bars`` (:mod:`refavs_ros.scenes.occlusion`) are drawn last and
    own no object (-1), so an occluded object's mask is its visible part.

    Args:
        plan: the scene plan. cfg: rendering settings. rng: stream for the sensor noise.

    Returns:
        ``(frames, owner, sources)``: uint8 (T, H, W, 3) RGB; int8 (T, H, W) index of the object
        visible at each pixel, -1 for background; the image source of every object.
    """
    times = frame_times(cfg)
    n_t, height, width = times.size, cfg.height, cfg.width
    frames = np.repeat(background(plan, cfg)[None], n_t, axis=0)
    owner = np.full((n_t, height, width), -1, np.int8)
    sources = []
    for j, obj in enumerate(plan.objects):
        rgb, alpha, source = object_sprite(obj, cfg)
        sources.append(source)
        h, w = alpha.shape
        centres = obj.centres(times)
        for t in range(n_t):
            x0 = int(round(centres[t, 0] * width - w / 2.0))
            y0 = int(round(centres[t, 1] * height - h / 2.0))
            fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            a = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
            frames[t, fy0:fy1, fx0:fx1][a] = rgb[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0][a]
            owner[t, fy0:fy1, fx0:fx1][a] = j
    if plan.bars:
        from refavs_ros.scenes.occlusion import draw_bars

        draw_bars(frames, owner, plan.bars, cfg)
    noise = rng.integers(-3, 4, size=frames.shape, dtype=np.int16)  # mild sensor noise
    frames = np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return frames, owner, sources


def slot_envelope(slots: tuple[int, ...], num_slots: int, sample_rate: int) -> np.ndarray:
    """Gate of a sound that plays in ``slots``: float32 (num_slots * sample_rate,) in [0, 1],
    1 inside sounding 1-s slots, 0 elsewhere, with 5 ms linear ramps at every transition."""
    on = np.zeros(num_slots, np.float32)
    on[list(slots)] = 1.0
    env = np.repeat(on, sample_rate)
    ramp = max(1, int(_RAMP_SEC * sample_rate))
    half = ramp // 2
    for k in range(1, num_slots):  # linear ramp centred on every on/off boundary
        if on[k] != on[k - 1]:
            b = k * sample_rate
            env[b - half : b - half + ramp] = np.linspace(on[k - 1], on[k], ramp, dtype=np.float32)
    return env


def render_audio(
    plan: ScenePlan,
    cfg: SceneConfig,
    rng: np.random.Generator,
    snr_db: float | None = None,
    noise_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Mix the sounding objects, background noise and (optionally) ambient noise.

    Each sounding object contributes its category's sound at its size's pitch
    (:func:`~refavs_ros.scenes.media.looped_sound`, -20 dBFS RMS) times ``10 ** (gain_db / 20)``
    in its slots; white noise at ``plan.noise_db`` dBFS RMS is added; with ``snr_db``, ambient
    noise (:func:`refavs_ros.scenes.noise.ambient_noise`, drawn from ``noise_rng``) at that SNR
    relative to the objects' sounds (:func:`refavs_ros.scenes.noise.mix_at_snr`); the mixture is
    scaled down if its peak exceeds 0.9 full scale (never up), then quantised.

    Returns:
        ``(audio, sources, ambient)``: int16 (duration_sec * sample_rate,) mono; the sound
        source of every object (also for silent ones); the ambient noise components (empty
        without ``snr_db``).
    """
    n, sr, ns = cfg.num_samples, cfg.sample_rate, cfg.num_slots
    mix = rng.standard_normal(n, dtype=np.float32) * np.float32(10.0 ** (plan.noise_db / 20.0))
    sources = []
    signal = np.zeros(n, np.float32) if snr_db is not None else None
    active = np.zeros(n, bool) if snr_db is not None else None
    for obj in plan.objects:
        sources.append(category_sound(obj.category, cfg.media).source)
        if not obj.sounding_slots:
            continue
        wave = looped_sound(obj.category, obj.size, cfg.media, sr, n)
        gain = np.float32(10.0 ** (obj.gain_db / 20.0))
        env = slot_envelope(obj.sounding_slots, ns, sr)
        mix += gain * wave * env
        if signal is not None:
            signal += gain * wave * env
            active |= env > 0
    ambient: list[str] = []
    if snr_db is not None:
        from refavs_ros.scenes.noise import ambient_noise, mix_at_snr

        if noise_rng is None:
            raise ValueError("render_audio: snr_db needs noise_rng")
        track, ambient = ambient_noise(noise_rng, n, sr, cfg.media)
        mix += mix_at_snr(track, signal, active, float(snr_db))
    peak = float(np.abs(mix).max(initial=0.0))
    if peak > _PEAK:
        mix *= np.float32(_PEAK / peak)
    return np.round(mix * 32767.0).astype(np.int16), sources, ambient


def pitch_factor(obj: ObjectPlan) -> float:
    """Frequency factor of the object's sound (1.0 small, 0.5 big)."""
    return PITCH_FACTORS[obj.size]
