"""The :class:`Scene` record and :func:`generate_scene`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refavs_ros.scenes.catalog import held_out_pairs_in
from refavs_ros.scenes.config import SceneConfig
from refavs_ros.scenes.noise import scene_snr
from refavs_ros.scenes.occlusion import occlude
from refavs_ros.scenes.depth import DepthScene, render_depth
from refavs_ros.scenes.planner import ScenePlan, derive_seed, plan_scene
from refavs_ros.scenes.render import pitch_factor, render_audio, render_frames


@dataclass
class Scene:
    """One synthetic Ref-AVS scene: a short clip, its audio, a command and its ground truth.

    Attributes:
        scene_id: ``"<split>-<index:06d>"``, e.g. ``"test-seen-000042"``.
        split: one of SPLITS.
        kind: one of EXPRESSION_KINDS.
        expression: the referring expression (the command text).
        frames: uint8 (T, H, W, 3) RGB, T = ``config.num_frames``.
        frame_stamps_ns: int64 (T,), ``start_ns + round((i + 1) / fps * 1e9)`` (ns): frame i
            is stamped at the END of its 1/fps interval, so a causal model that listens to the
            audio up to a frame's stamp hears the interval the frame shows (frame 0 too).
        audio: int16 (N,) mono at ``sample_rate``, N = ``duration_sec * sample_rate``.
        audio_start_ns: stamp (ns) of ``audio[0]`` (== ``start_ns``).
        gt_masks: bool (T, H, W): the referred object's visible pixels per frame; all False for
            null expressions.
        target: index into ``objects`` of the referred object, None for null expressions.
        objects: one JSON-serialisable dict per object, in drawing order (see :meth:`info`).
        variant: sub-kind ("colour", "size", "sounding-noun", "louder", "first", ...).
        sample_rate: audio rate (Hz).
        meta: JSON-serialisable extras (index, seed, fps, duration, media, background, noise
            level, cue: what the expression asks for; ``ambient`` {snr_db, components} when
            ambient noise was added; ``occlusion`` {occluder, object, fraction per frame, ...}
            when an object is occluded).
        instance_map: int8 (T, H, W): index into ``objects`` of the object visible at each
            pixel, -1 for background (training supervision; not written to bags).
        depth: registered depth, intrinsics and the target's 3-D centroid when the config asks
            for depth (:class:`refavs_ros.scenes.depth.DepthScene`), else None.
    """

    scene_id: str
    split: str
    kind: str
    expression: str
    frames: np.ndarray
    frame_stamps_ns: np.ndarray
    audio: np.ndarray
    audio_start_ns: int
    gt_masks: np.ndarray
    target: int | None
    objects: list[dict]
    variant: str = ""
    sample_rate: int = 16000
    meta: dict = field(default_factory=dict)
    instance_map: np.ndarray | None = None
    depth: DepthScene | None = None

    def info(self) -> dict:
        """JSON-serialisable summary (no arrays).

        Returns:
            ``{"scene_id", "split", "kind", "variant", "expression", "target",
            "target_category", "num_frames", "width", "height", "fps", "duration_sec",
            "sample_rate", "start_ns", "held_out_pairs", "objects", **meta}``. Each object dict
            has ``index, category, colour, size, scale, role, sounding_slots, gain_db,
            pitch_factor, flipped, image_source, sound_source, bboxes`` (per frame
            ``[x_min, y_min, x_max, y_max]`` in pixels, max exclusive, or None when hidden) and
            ``areas_px`` (visible pixels per frame).
        """
        t, h, w = self.gt_masks.shape
        out = {
            "scene_id": self.scene_id,
            "split": self.split,
            "kind": self.kind,
            "variant": self.variant,
            "expression": self.expression,
            "target": self.target,
            "target_category": None if self.target is None else self.objects[self.target]["category"],
            "num_frames": int(t),
            "width": int(w),
            "height": int(h),
            "sample_rate": int(self.sample_rate),
            "start_ns": int(self.audio_start_ns),
            "held_out_pairs": [list(p) for p in held_out_pairs_in([o["category"] for o in self.objects])],
            "objects": self.objects,
        }
        out.update(self.meta)
        return out


def _bbox(mask: np.ndarray) -> list[int] | None:
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y = np.nonzero(rows)[0]
    x = np.nonzero(cols)[0]
    return [int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1]


def render_plan(plan: ScenePlan, config: SceneConfig) -> Scene:
    """Render a plan (see :func:`generate_scene`); ``config`` must be the one it was planned with.

    Occlusion (:func:`refavs_ros.scenes.occlusion.occlude`) and ambient noise
    (:func:`refavs_ros.scenes.noise.scene_snr`) are added here when the split or the config asks
    for them; they come from random streams of their own, so the rest of the scene is unchanged.
    """
    rng = np.random.default_rng(derive_seed("render", plan.split, plan.index, plan.seed))
    plan, occlusion = occlude(plan, config)
    snr_db, noise_rng = scene_snr(plan.split, plan.index, plan.seed, config)
    frames, owner, image_sources = render_frames(plan, config, rng)
    audio, sound_sources, ambient = render_audio(plan, config, rng, snr_db, noise_rng)
    n_t = frames.shape[0]
    objects = []
    for j, (obj, img_src, snd_src) in enumerate(zip(plan.objects, image_sources, sound_sources)):
        visible = owner == j  # (T, H, W)
        objects.append({
            "index": j,
            "category": obj.category,
            "colour": obj.colour,
            "size": obj.size,
            "scale": round(obj.scale, 4),
            "role": obj.role,
            "sounding_slots": [int(s) for s in obj.sounding_slots],
            "gain_db": float(obj.gain_db),
            "pitch_factor": pitch_factor(obj),
            "flipped": bool(obj.flip),
            "image_source": img_src,
            "sound_source": snd_src,
            "centre_start": [round(obj.centre[0] * config.width, 2), round(obj.centre[1] * config.height, 2)],
            "velocity_px_per_sec": [round(obj.velocity[0] * config.width, 3),
                                    round(obj.velocity[1] * config.height, 3)],
            "bboxes": [_bbox(visible[t]) for t in range(n_t)],
            "areas_px": [int(a) for a in visible.reshape(n_t, -1).sum(axis=1)],
        })
    if plan.target is None:
        gt = np.zeros(owner.shape, bool)
    else:
        gt = owner == plan.target
    stamps = config.start_ns + np.round(np.arange(1, n_t + 1) / float(config.fps) * 1e9).astype(np.int64)
    meta = {
        "index": plan.index,
        "seed": plan.seed,
        "fps": float(config.fps),
        "duration_sec": float(config.duration_sec),
        "media": config.media,
        "background": plan.background,
        "noise_db": plan.noise_db,
        "cue": plan.cue,
    }
    if snr_db is not None:
        meta["ambient"] = {"snr_db": float(snr_db), "components": ambient}
    if occlusion is not None:
        meta["occlusion"] = occlusion
    depth = None
    if config.depth:
        depth = render_depth(plan, config, frames, owner, occlusion)
        for obj, z, size in zip(objects, depth.object_depths_m, depth.object_sizes_m):
            obj["depth_m"], obj["size_m"] = z, size
        meta.update(depth.info())
    return Scene(scene_id=plan.scene_id, split=plan.split, kind=plan.kind, expression=plan.expression,
                 frames=frames, frame_stamps_ns=stamps.astype(np.int64), audio=audio,
                 audio_start_ns=int(config.start_ns), gt_masks=gt, target=plan.target, objects=objects,
                 variant=plan.variant, sample_rate=int(config.sample_rate), meta=meta,
                 instance_map=owner, depth=depth)


def generate_scene(split: str, index: int, seed: int = 0, config: SceneConfig = SceneConfig()) -> Scene:
    """Generate scene ``index`` of ``split``, deterministically in (split, index, seed, config).

    The scene's content is planned by :func:`~refavs_ros.scenes.planner.plan_scene` from a
    random stream seeded with SHA-256("scene|split|index|seed") (so every split has its own
    stream) and rendered with media cached per process. Takes a few milliseconds at 128 x 128
    once the media are cached (first call: ~0.3 s to load photos and convert sounds).

    Args:
        split: one of SPLITS. index: scene number >= 0. seed: benchmark seed.
        config: rendering settings (:class:`SceneConfig`).

    Returns:
        The :class:`Scene`.

    Raises:
        ConfigError: unknown split, negative index, non-int seed or invalid config.
    """
    return render_plan(plan_scene(split, index, seed, config), config)
