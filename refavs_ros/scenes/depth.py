"""Registered depth for synthetic scenes: a pinhole RGB-D camera looking at the scene (issue 10).

The 2-D scene (objects drifting over a textured background) is given a 3-D layout that agrees
with the picture under a pinhole camera whose intrinsics come from a horizontal field of view
(:meth:`refavs_ros.geometry.CameraIntrinsics.from_fov`, square pixels, centred principal point):

* **Camera**: level (optical axis horizontal), ``camera_height_m`` above a floor plane
  (0.5-1.5 m), looking at a back wall ``wall_m`` away (7-9 m).
* **Background**: for a row ``v`` below the horizon (``v > cy``) the floor's depth is
  ``fy * camera_height / (v - cy)`` (the plane y = camera_height in the optical frame); the depth
  is that or the wall's, whichever is nearer; above the horizon, the wall.
* **Objects**: every object gets a depth ``Z`` drawn uniformly from 1-6 m; its physical size is
  what its apparent size implies, ``size_m = size_px * Z / f`` (a 60-px object at 3 m with
  f = 277 px is 0.65 m). Objects are cut-outs facing the camera with a rounded relief: a pixel
  at distance ``d`` from the visible silhouette's edge is ``relief_m * sqrt(d / d_max)`` nearer
  than ``Z``, with ``relief_m`` = 20 % of the object's smaller physical half-size.
* **Ground truth**: the target's 3-D centroid per frame = the mean of its visible surface points
  (noise-free depth, every visible pixel back-projected through its pixel centre), in the
  camera optical frame (REP 103/105: x right, y down, z forward), metres.
* **Sensor model** (stereo / structured-light camera, after the RealSense D4xx error model where
  the RMS depth error grows with the square of the distance): Gaussian noise of standard
  deviation ``noise_k * z**2`` (``noise_k`` = 0.003 / m: 3 mm at 1 m, 2.7 cm at 3 m, 11 cm at
  6 m); at depth discontinuities (a 3 x 3 depth range above 5 cm + 3 % of the depth, widened by
  ``max(1, round(width / 320))`` pixels) half of the pixels are holes and a quarter are "flying
  pixels" mixing the near and far depths; dark pixels (colour luma < 40) give no return with
  probability 0.7 (absorbing surfaces), and 0.5 % of all pixels drop out at random; beyond
  10 m there is no return. Values are millimetres in ``uint16`` (``16UC1``), 0 = no return
  (REP 118).

All of it is drawn from its own random stream (``derive_seed("depth", split, index, seed)``),
so turning depth on changes nothing else in a scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from refavs_ros.geometry import CameraIntrinsics
from refavs_ros.scenes.config import SceneConfig
from refavs_ros.scenes.planner import ScenePlan, derive_seed

MIN_DEPTH_M = 1.0
"""Nearest object depth (m)."""
MAX_DEPTH_M = 6.0
"""Furthest object depth (m)."""
NOISE_K = 0.003
"""Depth noise: standard deviation ``NOISE_K * z**2`` (m, with z in m)."""
MAX_RANGE_M = 10.0
"""No return beyond this depth (m)."""
DARK_LUMA = 40
"""Colour luma (0-255) below which a pixel may give no return."""
DARK_DROPOUT = 0.7
"""Probability that a dark pixel gives no return."""
RANDOM_DROPOUT = 0.005
"""Probability that any pixel gives no return."""
EDGE_HOLE = 0.5
"""Probability that a pixel at a depth discontinuity is a hole."""
EDGE_MIX = 0.25
"""Probability that a pixel at a depth discontinuity mixes the near and far depths."""
RELIEF = 0.2
"""Relief of an object as a fraction of its smaller physical half-size."""


@dataclass
class DepthScene:
    """The depth side of a scene.

    Attributes:
        depth_mm: uint16 (T, Hd, Wd) registered depth in millimetres, 0 = no return; (Hd, Wd) is
            the colour size times ``depth_scale``.
        camera: intrinsics of the COLOUR image (``CameraInfo`` of ``/camera/camera_info``).
        target_centroids_m: per frame the target's visible-surface centroid ``[x, y, z]`` (m,
            optical frame), None when the target is not visible or for null expressions.
        object_depths_m: per object, its depth ``Z`` (m).
        object_sizes_m: per object, its physical ``[width, height]`` (m) implied by ``Z``.
        camera_height_m: camera height above the floor (m).
        wall_m: distance of the back wall (m).
    """

    depth_mm: np.ndarray
    camera: CameraIntrinsics
    target_centroids_m: list[list[float] | None]
    object_depths_m: list[float]
    object_sizes_m: list[list[float]]
    camera_height_m: float
    wall_m: float

    def info(self) -> dict:
        """JSON-serialisable summary for the scene info (``camera``, ``target_centroid_m``, ...)."""
        cam = self.camera
        return {
            "camera": {
                "width": cam.width, "height": cam.height, "k": [float(v) for v in cam.k.ravel()],
                "distortion_model": cam.distortion_model, "d": list(cam.distortion),
                "depth_width": int(self.depth_mm.shape[2]), "depth_height": int(self.depth_mm.shape[1]),
                "height_m": round(self.camera_height_m, 4), "wall_m": round(self.wall_m, 4),
                "frame": "optical (REP 103/105: x right, y down, z forward)",
            },
            "target_centroid_m": self.target_centroids_m,
        }


def background_depth(camera: CameraIntrinsics, camera_height_m: float, wall_m: float) -> np.ndarray:
    """Noise-free depth (m) of the floor and the back wall: float32 (H, W)."""
    v = np.arange(camera.height, dtype=np.float64)
    below = v - camera.cy
    floor = np.where(below > 1e-6, camera.fy * camera_height_m / np.maximum(below, 1e-6), np.inf)
    rows = np.minimum(floor, wall_m).astype(np.float32)
    return np.repeat(rows[:, None], camera.width, axis=1)


def _relief(visible: np.ndarray, relief_m: float) -> np.ndarray:
    """Depth offset (m, >= 0, to subtract) of a rounded cut-out over its visible silhouette."""
    dist = cv2.distanceTransform(visible.view(np.uint8), cv2.DIST_L2, 3)
    peak = float(dist.max())
    if peak <= 0:
        return np.zeros(visible.shape, np.float32)
    return (relief_m * np.sqrt(dist / peak)).astype(np.float32)


def surface_centroid(mask: np.ndarray, depth_m: np.ndarray, camera: CameraIntrinsics) -> list[float] | None:
    """Mean of the back-projected points of ``mask`` (pixel centres, noise-free depth), or None if empty."""
    vv, uu = np.nonzero(mask)
    if vv.size == 0:
        return None
    z = depth_m[vv, uu].astype(np.float64)
    rays = camera.normalized_rays(uu.astype(np.float64), vv.astype(np.float64))
    pts = np.stack([rays[:, 0] * z, rays[:, 1] * z, z], axis=1)
    return [round(float(c), 5) for c in pts.mean(axis=0)]


def sensor_depth(clean_m: np.ndarray, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the sensor model of the module doc to one noise-free depth image.

    Args:
        clean_m: float32 (H, W) depth in metres. rgb: uint8 (H, W, 3) colour frame (for dark
            pixels). rng: random stream.

    Returns:
        uint16 (H, W) millimetres, 0 = no return.
    """
    h, w = clean_m.shape
    z = clean_m + rng.standard_normal((h, w), dtype=np.float32) * (NOISE_K * clean_m**2)
    kernel = np.ones((3, 3), np.uint8)
    near = cv2.erode(clean_m, kernel)
    far = cv2.dilate(clean_m, kernel)
    edge = (far - near) > 0.05 + 0.03 * clean_m
    band = max(1, round(w / 320))
    if band > 1:
        edge = cv2.dilate(edge.view(np.uint8), np.ones((2 * band - 1, 2 * band - 1), np.uint8)).astype(bool)
        big = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
        near, far = cv2.erode(clean_m, big), cv2.dilate(clean_m, big)
    u = rng.random((h, w), dtype=np.float32)
    mixed = edge & (u >= EDGE_HOLE) & (u < EDGE_HOLE + EDGE_MIX)
    z = np.where(mixed, near + rng.random((h, w), dtype=np.float32) * (far - near), z)
    hole = edge & (u < EDGE_HOLE)
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    hole |= (luma < DARK_LUMA) & (rng.random((h, w), dtype=np.float32) < DARK_DROPOUT)
    hole |= rng.random((h, w), dtype=np.float32) < RANDOM_DROPOUT
    hole |= ~(z > 0) | (z > MAX_RANGE_M)
    mm = np.round(np.where(hole, 0.0, z) * 1000.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def _nearer(z_victim: float, rng: np.random.Generator) -> float:
    """A depth 30-90 % of the way from MIN_DEPTH_M to ``z_victim``: strictly in front of it."""
    return MIN_DEPTH_M + (z_victim - MIN_DEPTH_M) * float(rng.uniform(0.3, 0.9))


def render_depth(plan: ScenePlan, config: SceneConfig, frames: np.ndarray, owner: np.ndarray,
                 occlusion: dict | None = None) -> DepthScene:
    """Depth images, intrinsics and the target's 3-D centroid for a rendered scene.

    Occluders (:mod:`refavs_ros.scenes.occlusion`) are placed in front of the object they cover:
    an occluding object (role ``"occluder"``) and a foreground bar (a flat beam) get a depth
    30-90 % of the way from 1 m to the covered object's (from a random stream of their own, so
    scenes without occlusion are unchanged).

    Args:
        plan: the scene plan (objects in drawing order; ``plan.target`` the referred one;
            ``plan.bars`` foreground bars).
        config: the rendering settings (``hfov_deg``: horizontal field of view of the colour
            camera; ``depth_scale``: depth image size / colour image size, (0, 1]; < 1 gives a
            lower-resolution depth image, nearest sampling with pixel centres aligned).
        frames: uint8 (T, H, W, 3) RGB frames of the scene.
        owner: int8 (T, H, W) index of the object visible at each pixel, -1 for background
            (and for bars).
        occlusion: the occlusion info of the scene (``{"object": covered index, ...}``) or None.

    Returns:
        The :class:`DepthScene`.
    """
    hfov_deg, depth_scale = float(config.hfov_deg), float(config.depth_scale)
    n_t, height, width = owner.shape
    camera = CameraIntrinsics.from_fov(width, height, hfov_deg)
    rng = np.random.default_rng(derive_seed("depth", plan.split, plan.index, plan.seed))
    camera_height = float(rng.uniform(0.5, 1.5))
    wall = float(rng.uniform(7.0, 9.0))
    depths = [float(rng.uniform(MIN_DEPTH_M, MAX_DEPTH_M)) for _ in plan.objects]
    occ_rng = np.random.default_rng(derive_seed("depth-occluder", plan.split, plan.index, plan.seed))
    victim = None if occlusion is None else occlusion.get("object")
    if victim is not None:
        for j, obj in enumerate(plan.objects):
            if obj.role == "occluder":
                depths[j] = _nearer(depths[victim], occ_rng)
    bars = []
    if getattr(plan, "bars", None):
        from refavs_ros.scenes.occlusion import bar_mask

        for bar in plan.bars:
            z_bar = _nearer(depths[victim], occ_rng) if victim is not None else float(occ_rng.uniform(MIN_DEPTH_M, MAX_DEPTH_M))
            bars.append((bar_mask(bar, config), z_bar))
    sizes = [[2.0 * o.half[0] * width * z / camera.fx, 2.0 * o.half[1] * height * z / camera.fy]
             for o, z in zip(plan.objects, depths)]
    noise_rng = np.random.default_rng(derive_seed("depth-noise", plan.split, plan.index, plan.seed))
    base = background_depth(camera, camera_height, wall)
    dw, dh = max(1, round(width * depth_scale)), max(1, round(height * depth_scale))
    out = np.zeros((n_t, dh, dw), np.uint16)
    centroids: list[list[float] | None] = []
    for t in range(n_t):
        clean = base.copy()
        for j, (z, size) in enumerate(zip(depths, sizes)):
            visible = owner[t] == j
            if visible.any():
                relief = _relief(visible, RELIEF * min(size) / 2.0)
                clean[visible] = z - relief[visible]
        for cover, z_bar in bars:  # drawn over everything, like the colour frames
            clean[cover[t]] = z_bar
        if plan.target is None:
            centroids.append(None)
        else:
            centroids.append(surface_centroid(owner[t] == plan.target, clean, camera))
        noisy = sensor_depth(clean, frames[t], noise_rng)
        if (dh, dw) != (height, width):
            noisy = cv2.resize(noisy, (dw, dh), interpolation=getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST))
        out[t] = noisy
    return DepthScene(depth_mm=out, camera=camera, target_centroids_m=centroids,
                      object_depths_m=[round(z, 4) for z in depths],
                      object_sizes_m=[[round(s, 4) for s in size] for size in sizes],
                      camera_height_m=camera_height, wall_m=wall)
