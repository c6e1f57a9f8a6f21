"""Occlusion of the synthetic scenes: an object partly covered by a foreground bar or another object.

Clutter hides parts of what a robot is told to find (practitioners' read of Ref-AVS,
``shared/paper/000_*.txt``). :func:`occlude` takes a scene plan and covers one object (the
referred one when there is one) by 25-60 % (``SceneConfig.occlusion_range``) of its silhouette in
EVERY frame, with either

* a **bar**: a full-width or full-height foreground beam (wood, dark metal or concrete shades,
  never one of the object tints), static when a static position keeps the covered fraction in
  range over the whole clip, else moving with the object; it belongs to no object, or
* another **object**: a silent extra object of a category that is not in the scene, drawn on top
  of the victim and drifting with it. Its category and colour are chosen so the expression keeps
  exactly one referent (not the named or absent category, not the named colour, no new held-out
  pair); expressions about positions among all objects ("the leftmost object") only get bars.

Every other object keeps at least 60 % of its silhouette. The ground truth stays the referred
object's visible pixels (:func:`refavs_ros.scenes.render.render_frames` resolves ownership), so
the mask of an occluded referent is its visible part. The occluder is drawn from a random
stream of its own: the rest of the scene is the same as without occlusion.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refavs_ros.scenes.catalog import CATEGORIES, COLOURS, SIZE_RANGES, is_held_out_pair
from refavs_ros.scenes.config import SceneConfig
from refavs_ros.scenes.planner import (
    ObjectPlan,
    ScenePlan,
    _half_extent,
    derive_seed,
    frame_times,
)

BAR_SHADES: dict[str, tuple[int, int, int]] = {
    "wood": (120, 86, 52),
    "metal": (72, 74, 80),
    "concrete": (158, 154, 146),
}
"""Base RGB of bar materials: desaturated, far from the red/green/blue/yellow object tints."""

MIN_VISIBLE_OTHERS = 0.6
"""Smallest visible fraction of any object other than the occluded one, in every frame."""


def occlusion_wanted(plan: ScenePlan, cfg: SceneConfig, rng: np.random.Generator) -> bool:
    """Whether this scene gets an occluder: always in ``test-occluded``, else with probability
    ``cfg.occlusion_prob`` (one draw from ``rng``)."""
    if plan.split == "test-occluded":
        return True
    return cfg.occlusion_prob > 0 and bool(rng.random() < cfg.occlusion_prob)


def occlude(plan: ScenePlan, cfg: SceneConfig) -> tuple[ScenePlan, dict | None]:
    """Cover one object of ``plan`` (see the module docstring).

    Args:
        plan: a planned scene (not modified). cfg: the config it was planned with.

    Returns:
        ``(plan, info)``: a new plan with the occluder (an extra object with role "occluder"
        drawn last, or an entry of ``bars``) and ``{"occluder": "bar" | "object", "object":
        index of the covered object, "fraction": covered fraction per frame, ...}``; or the
        plan unchanged and None when no occlusion is wanted or none fits the rules (rare: the
        object leaves no room for a bar that spares the others).
    """
    rng = np.random.default_rng(derive_seed("occlusion", plan.split, plan.index, plan.seed))
    if not plan.objects or not occlusion_wanted(plan, cfg, rng):
        return plan, None
    from refavs_ros.scenes.render import object_masks, object_sprite

    if plan.target is not None and (plan.split == "test-occluded" or rng.random() < 0.75):
        victim = plan.target
    else:
        victim = int(rng.integers(len(plan.objects)))
    masks = [object_masks(o, cfg, object_sprite(o, cfg)[1]) for o in plan.objects]
    lo, hi = cfg.occlusion_range
    order = ("object", "bar") if rng.random() < 0.5 else ("bar", "object")
    for how in order:
        if how == "object":
            found = _object_occluder(plan, cfg, rng, victim, masks, lo, hi)
            if found is not None:
                occ, fraction = found
                new = dataclasses.replace(plan, objects=[*plan.objects, occ])
                info = {"occluder": "object", "object": victim, "category": occ.category, "colour": occ.colour,
                        "fraction": [round(float(f), 4) for f in fraction]}
                return new, info
        else:
            found_bar = _bar(cfg, rng, victim, plan.objects[victim], masks, lo, hi)
            if found_bar is not None:
                bar, fraction = found_bar
                new = dataclasses.replace(plan, bars=[*plan.bars, bar])
                info = {"occluder": "bar", "object": victim, **{k: bar[k] for k in ("orientation", "material")},
                        "fraction": [round(float(f), 4) for f in fraction]}
                return new, info
    return plan, None


def _covered(victim: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Fraction of the victim's silhouette under ``cover`` per frame: float (T,)."""
    area = victim.reshape(victim.shape[0], -1).sum(1)
    hit = (victim & cover).reshape(victim.shape[0], -1).sum(1)
    return hit / np.maximum(area, 1)


def _others_ok(masks: list[np.ndarray], victim: int, cover: np.ndarray) -> bool:
    for j, m in enumerate(masks):
        if j != victim and m.any() and np.any(1.0 - _covered(m, cover) < MIN_VISIBLE_OTHERS):
            return False
    return True


# -------------------------------------------------------------------------------------- bars


def bar_mask(bar: dict, cfg: SceneConfig) -> np.ndarray:
    """Pixels of a bar in every frame: bool (T, H, W).

    Args:
        bar: ``{"orientation": "vertical" | "horizontal", "centre": position at t = 0 across the
            bar (normalised 0..1), "half": half thickness (normalised), "velocity": normalised
            per second, "material": key of BAR_SHADES}``.
    """
    times = frame_times(cfg)
    vertical = bar["orientation"] == "vertical"
    side = cfg.width if vertical else cfg.height
    out = np.zeros((times.size, cfg.height, cfg.width), bool)
    for t, time in enumerate(times):
        c = (bar["centre"] + bar["velocity"] * time) * side
        a, b = int(round(c - bar["half"] * side)), int(round(c + bar["half"] * side))
        a, b = max(a, 0), min(b, side)
        if b > a:
            if vertical:
                out[t, :, a:b] = True
            else:
                out[t, a:b, :] = True
    return out


def _bar(cfg: SceneConfig, rng: np.random.Generator, victim: int, vobj: ObjectPlan, masks: list[np.ndarray],
         lo: float, hi: float) -> tuple[dict, np.ndarray] | None:
    """A bar covering ``lo..hi`` of the victim in every frame: static if one fits, else drifting
    with the victim."""
    vm = masks[victim]
    if not vm.any():
        return None
    for orientation in (("vertical", "horizontal") if rng.random() < 0.5 else ("horizontal", "vertical")):
        ax = 0 if orientation == "vertical" else 1
        for moving in (False, True):
            options = []
            for _ in range(40):
                half = float(rng.uniform(0.2, 0.75) * vobj.half[ax])
                centre = float(vobj.centre[ax] + rng.uniform(-1.0, 1.0) * vobj.half[ax])
                bar = {"orientation": orientation, "centre": round(centre, 5), "half": round(half, 5),
                       "velocity": round(float(vobj.velocity[ax]), 7) if moving else 0.0,
                       "material": str(rng.choice(list(BAR_SHADES)))}
                cover = bar_mask(bar, cfg)
                frac = _covered(vm, cover)
                if frac.min() >= lo and frac.max() <= hi and _others_ok(masks, victim, cover):
                    options.append((bar, frac))
                    if len(options) >= 3:
                        break
            if options:
                return options[int(rng.integers(len(options)))]
    return None


def draw_bars(frames: np.ndarray, owner: np.ndarray, bars: list[dict], cfg: SceneConfig) -> None:
    """Paint ``bars`` over ``frames`` (uint8 (T, H, W, 3), in place) and clear their pixels in
    ``owner`` (int8 (T, H, W) -> -1): a shaded beam, lighter along its centre line."""
    for bar in bars:
        cover = bar_mask(bar, cfg)
        base = np.asarray(BAR_SHADES[bar["material"]], np.float32)
        vertical = bar["orientation"] == "vertical"
        side = cfg.width if vertical else cfg.height
        pos = (np.arange(side) + 0.5) / side
        for t in range(frames.shape[0]):
            c = bar["centre"] + bar["velocity"] * t / float(cfg.fps)
            across = np.clip(1.0 - np.abs(pos - c) / max(bar["half"], 1e-6), 0.0, 1.0)
            shade = 0.75 + 0.35 * np.sqrt(across)  # rounded beam: brighter in the middle
            rgb = np.clip(shade[:, None] * base[None, :], 0, 255).astype(np.uint8)  # (side, 3)
            img = np.broadcast_to(rgb[None, :, :], (cfg.height, side, 3)) if vertical else np.broadcast_to(
                rgb[:, None, :], (side, cfg.width, 3))
            m = cover[t]
            frames[t][m] = img[m]
            owner[t][m] = -1


# ----------------------------------------------------------------------------------- objects


def _occluder_categories(plan: ScenePlan) -> list[str]:
    """Categories an extra object may have without breaking the expression's uniqueness."""
    present = {o.category for o in plan.objects}
    banned = present | {plan.cue.get("category"), plan.cue.get("other_category")}
    return [c for c in CATEGORIES
            if c not in banned and not any(is_held_out_pair(c, p) for p in present)]


def _object_occluder(plan: ScenePlan, cfg: SceneConfig, rng: np.random.Generator, victim: int,
                     masks: list[np.ndarray], lo: float, hi: float) -> tuple[ObjectPlan, np.ndarray] | None:
    """A silent extra object drawn over the victim, drifting with it."""
    if plan.variant == "relation-any":  # a new object could change "the leftmost object"
        return None
    cats = _occluder_categories(plan)
    if not cats:
        return None
    from refavs_ros.scenes.render import object_masks, object_sprite

    colours = [c for c in COLOURS if c != plan.cue.get("colour")]
    v = plan.objects[victim]
    vm = masks[victim]
    for _ in range(40):
        cat = cats[int(rng.integers(len(cats)))]
        scale = float(rng.uniform(*SIZE_RANGES["small"]))
        half = _half_extent(cat, scale, cfg.width, cfg.height)
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.4, 1.1)
        dx = np.cos(ang) * dist * (v.half[0] + half[0]) * 0.8
        dy = np.sin(ang) * dist * (v.half[1] + half[1]) * 0.8
        occ = ObjectPlan(cat, colours[int(rng.integers(len(colours)))], "small", role="occluder", sounding_slots=(),
                         gain_db=0.0, scale=scale, flip=bool(rng.random() < 0.5),
                         centre=(float(v.centre[0] + dx), float(v.centre[1] + dy)), velocity=v.velocity, half=half)
        pos = occ.centres(frame_times(cfg))
        if (pos[:, 0] - half[0] < 0).any() or (pos[:, 0] + half[0] > 1).any() or \
                (pos[:, 1] - half[1] < 0).any() or (pos[:, 1] + half[1] > 1).any():
            continue
        cover = object_masks(occ, cfg, object_sprite(occ, cfg)[1])
        frac = _covered(vm, cover)
        if frac.min() >= lo and frac.max() <= hi and _others_ok(masks, victim, cover):
            return occ, frac
    return None
