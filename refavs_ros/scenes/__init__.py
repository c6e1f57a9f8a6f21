"""Synthetic Ref-AVS benchmark: audio-visual scenes with referring expressions and exact masks.

Each scene is a short clip of 1-4 objects (scikit-image photo cut-outs, or procedural shapes)
drifting over a textured background, a mono soundtrack in which some objects sound on 1-s slots
(freedesktop recordings and espeak-ng speech, pitched by object size), one referring expression
of a Ref-AVS kind (semantic, appearance, spatial, acoustic, temporal, or null) and the referred
object's mask per frame. Acoustic and temporal expressions can only be resolved with the audio.

Example::

    from refavs_ros.scenes import SceneConfig, generate_scene
    scene = generate_scene("train", 0, seed=0, config=SceneConfig(width=128, height=128, fps=1.0))
    scene.frames.shape   # (8, 128, 128, 3)
    scene.expression     # e.g. "the sounding cup"

See docs/scenes.md for the categories, expression kinds, splits and the ``refavs-scenes`` CLI.
"""

from refavs_ros.scenes.catalog import (
    CATEGORIES,
    COLOURS,
    EXPRESSION_KINDS,
    HELD_OUT_PAIRS,
    SIZE_LABELS,
    SPLITS,
    held_out_pairs_in,
)
from refavs_ros.scenes.config import SceneConfig
from refavs_ros.scenes.planner import (
    ObjectPlan,
    ScenePlan,
    kind_for,
    plan_scene,
    scene_id,
)
from refavs_ros.scenes.scene import Scene, generate_scene, render_plan

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "EXPRESSION_KINDS",
    "HELD_OUT_PAIRS",
    "SIZE_LABELS",
    "SPLITS",
    "ObjectPlan",
    "Scene",
    "SceneConfig",
    "ScenePlan",
    "generate_scene",
    "held_out_pairs_in",
    "kind_for",
    "plan_scene",
    "render_plan",
    "scene_id",
]
