"""3-D target from a segmentation mask, a registered depth image and pinhole camera intrinsics.

ROS-free: arrays and dataclasses in, arrays and dataclasses out; the node and the replay tool
convert ``sensor_msgs/Image`` / ``sensor_msgs/CameraInfo`` to these and the results to
``geometry_msgs`` / ``vision_msgs`` messages.

Frames and units follow REP 103 / REP 105: every 3-D value is in metres in the camera OPTICAL
frame of the colour image (x right, y down, z forward along the optical axis), i.e. the
``header.frame_id`` of the colour image and of a depth image registered to it. Pixel
coordinates follow OpenCV / ``sensor_msgs/CameraInfo``: ``(u, v)`` = (column, row) with the
CENTRE of the top-left pixel at (0, 0).

Pipeline of :func:`locate_target` (issue 10, part 1):

1. The mask is brought onto the depth image's grid (nearest neighbour, pixel centres aligned) and
   the intrinsics are scaled to the depth image's size (:meth:`CameraIntrinsics.scaled_to`).
2. Valid depth = finite and inside ``[min_range_m, max_range_m]`` (0 and NaN are "no return",
   as ``16UC1`` millimetres / ``32FC1`` metres drivers publish them, REP 118).
3. An eroded core of the mask (``erode_px``) drops the object's edges, where registered depth
   mixes foreground and background; a core with too few valid pixels falls back to the whole mask.
4. Outliers: core depths further than ``max(outlier_mad_k * 1.4826 * MAD, min_inlier_band_m)``
   from the core's median depth are rejected (median absolute deviation, a robust standard
   deviation estimate for Gaussian noise).
5. Point: median depth of the inliers for z; x and y are the mean of the inliers' back-projected
   coordinates (the visible region's centroid), rays from the undistorted pixel centres
   (``cv2.undistortPoints`` / ``cv2.fisheye.undistortPoints`` when the distortion coefficients
   are not all zero).
6. Extent: 2nd-98th percentile box of every mask pixel (not only the core) whose depth is within
   the inlier band.

Anything that prevents a trustworthy point gives an explicit "unknown" :class:`Target3D` with an
:class:`UnknownReason` instead of a guess.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import cv2
import numpy as np

from refavs_ros.errors import ConfigError, InputError

MAD_TO_SIGMA = 1.4826
"""Scale from the median absolute deviation to the standard deviation of a Gaussian."""

_NO_DISTORTION_MODELS = ("", "none")
_PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
_FISHEYE_MODELS = ("equidistant", "fisheye")


class UnknownReason(str, enum.Enum):
    """Why a frame has no 3-D target (values are the strings shown in ``/diagnostics``)."""

    NO_TARGET = "no_target"
    """The 2-D result is absent (null reference) or the mask is empty."""
    NO_DEPTH = "no_depth"
    """No depth image was received (or none is buffered) for the frame."""
    NO_CAMERA_INFO = "no_camera_info"
    """No ``sensor_msgs/CameraInfo`` was received for the depth image."""
    UNCALIBRATED = "uncalibrated"
    """The camera info has no focal length (``K`` all zero: an uncalibrated camera)."""
    DEPTH_TOO_OLD = "depth_too_old"
    """The depth image nearest the colour frame is more than ``max_depth_skew_sec`` away."""
    TOO_FEW_VALID = "too_few_valid_depth"
    """Fewer than ``min_valid_pixels`` valid depth pixels inside the mask."""
    BAD_DEPTH = "bad_depth_message"
    """The paired depth image or camera info could not be decoded (counted as a rejection)."""


# ------------------------------------------------------------------------------ intrinsics
@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels (``sensor_msgs/CameraInfo``).

    Attributes:
        width: image width in pixels the intrinsics belong to, >= 1.
        height: image height in pixels, >= 1.
        fx: focal length along x in pixels, > 0 (``K[0]``).
        fy: focal length along y in pixels, > 0 (``K[4]``).
        cx: principal point x in pixels (``K[2]``), centre of the top-left pixel = 0.
        cy: principal point y in pixels (``K[5]``).
        distortion_model: ``CameraInfo.distortion_model`` (``plumb_bob``, ``rational_polynomial``,
            ``equidistant``; ``""`` = none).
        distortion: ``CameraInfo.d`` coefficients (OpenCV order); all zero or empty = no distortion.

    Raises:
        InputError: non-positive size or focal length, non-finite values.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if int(self.width) < 1 or int(self.height) < 1:
            raise InputError(f"camera intrinsics size must be >= 1x1, got {self.width}x{self.height}")
        values = (self.fx, self.fy, self.cx, self.cy, *self.distortion)
        if not all(np.isfinite(v) for v in values):
            raise InputError(f"camera intrinsics must be finite, got K f=({self.fx}, {self.fy}) "
                             f"c=({self.cx}, {self.cy}) D={self.distortion}")
        if self.fx <= 0 or self.fy <= 0:
            raise InputError(f"focal lengths must be > 0 pixels, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_k(
        cls,
        k: Sequence[float] | np.ndarray,
        width: int,
        height: int,
        *,
        distortion_model: str = "plumb_bob",
        d: Sequence[float] | np.ndarray = (),
    ) -> CameraIntrinsics:
        """Intrinsics from a ``CameraInfo``'s row-major 3x3 ``k``, ``width``, ``height``, model and ``d``.

        Raises:
            InputError: ``k`` does not have 9 values, or see the class.
        """
        kk = np.asarray(k, dtype=np.float64).reshape(-1)
        if kk.size != 9:
            raise InputError(f"K must have 9 values (row-major 3x3), got {kk.size}")
        return cls(
            width=int(width), height=int(height), fx=float(kk[0]), fy=float(kk[4]),
            cx=float(kk[2]), cy=float(kk[5]), distortion_model=str(distortion_model),
            distortion=tuple(float(v) for v in np.asarray(d, dtype=np.float64).reshape(-1)),
        )

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
        """Ideal pinhole camera: square pixels, centred principal point, horizontal field of view.

        ``fx = fy = (width / 2) / tan(hfov / 2)``, ``cx = (width - 1) / 2``, ``cy = (height - 1) / 2``.

        Raises:
            InputError: ``hfov_deg`` outside (0, 180).
        """
        if not 0.0 < float(hfov_deg) < 180.0:
            raise InputError(f"horizontal field of view must be in (0, 180) degrees, got {hfov_deg}")
        f = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
        return cls(width=int(width), height=int(height), fx=float(f), fy=float(f),
                   cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, distortion_model="plumb_bob",
                   distortion=(0.0, 0.0, 0.0, 0.0, 0.0))

    @staticmethod
    def is_calibrated(k: Sequence[float] | np.ndarray) -> bool:
        """False for a ``CameraInfo`` whose ``k`` is all zero (``sensor_msgs``: uncalibrated camera)."""
        return bool(np.any(np.asarray(k, dtype=np.float64) != 0.0))

    @property
    def k(self) -> np.ndarray:
        """float64 (3, 3) camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def has_distortion(self) -> bool:
        """True when any distortion coefficient is non-zero (then sampled pixels are undistorted)."""
        return any(v != 0.0 for v in self.distortion)

    def scaled_to(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera for an image resized to ``width`` x ``height`` (binning / decimation).

        Pixel areas are preserved: with ``s = width / self.width``, ``fx' = s fx`` and
        ``cx' = s (cx + 0.5) - 0.5`` (pixel centres at integer coordinates), likewise for y.
        ``image_geometry`` divides ``cx`` by the binning factor instead; the two differ by
        ``(s - 1) / 2`` pixel (0.25 px at half resolution). Distortion coefficients act on
        normalised coordinates and are unchanged.
        """
        if (int(width), int(height)) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(
            width=int(width), height=int(height), fx=self.fx * sx, fy=self.fy * sy,
            cx=sx * (self.cx + 0.5) - 0.5, cy=sy * (self.cy + 0.5) - 0.5,
            distortion_model=self.distortion_model, distortion=self.distortion,
        )

    def normalized_rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Undistorted normalised image coordinates ``(x / z, y / z)`` of pixels.

        Args:
            u: float (N,) pixel columns.
            v: float (N,) pixel rows.

        Returns:
            float64 (N, 2); a 3-D point at depth z (along the optical axis) is ``(x z, y z, z)``.

        Raises:
            InputError: non-zero coefficients of an unsupported distortion model.
        """
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if not self.has_distortion or u.size == 0:
            return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy], axis=1)
        pts = np.stack([u, v], axis=1).reshape(-1, 1, 2)
        d = np.asarray(self.distortion, dtype=np.float64)
        model = self.distortion_model.lower()
        if model in _PINHOLE_MODELS or model in _NO_DISTORTION_MODELS:
            out = cv2.undistortPoints(pts, self.k, d)
        elif model in _FISHEYE_MODELS:
            if d.size != 4:
                raise InputError(f"distortion model {self.distortion_model!r} needs 4 coefficients, got {d.size}")
            out = cv2.fisheye.undistortPoints(pts, self.k, d)
        else:
            raise InputError(
                f"unsupported distortion model {self.distortion_model!r} with non-zero coefficients "
                f"{self.distortion}; expected one of {_PINHOLE_MODELS + _FISHEYE_MODELS}"
            )
        return out.reshape(-1, 2).astype(np.float64)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates of 3-D points in the optical frame (pinhole, distortion applied).

        Args:
            points: float (N, 3) metres, z > 0.

        Returns:
            float64 (N, 2) ``(u, v)`` pixels.
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if not self.has_distortion:
            return np.stack([self.fx * p[:, 0] / p[:, 2] + self.cx, self.fy * p[:, 1] / p[:, 2] + self.cy], axis=1)
        d = np.asarray(self.distortion, dtype=np.float64)
        if self.distortion_model.lower() in _FISHEYE_MODELS:
            out, _ = cv2.fisheye.projectPoints(p.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), self.k, d)
        else:
            out, _ = cv2.projectPoints(p, np.zeros(3), np.zeros(3), self.k, d)
        return out.reshape(-1, 2)


# ----------------------------------------------------------------------------------- depth
def depth_in_metres(depth: np.ndarray) -> np.ndarray:
    """Depth image in metres with NaN where there is no return.

    Args:
        depth: (H, W) ``uint16`` millimetres (``16UC1``, 0 = no return) or ``float32``/``float64``
            metres (``32FC1``; 0, negative, NaN and inf = no return).

    Returns:
        float32 (H, W) metres, NaN = no return.

    Raises:
        InputError: not a 2-D uint16/float array.
    """
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        raise InputError(f"depth must be a 2-D array, got {getattr(depth, 'shape', type(depth))}")
    if depth.dtype == np.uint16:
        out = depth.astype(np.float32) * np.float32(0.001)
        out[depth == 0] = np.nan
        return out
    if depth.dtype in (np.float32, np.float64):
        out = depth.astype(np.float32)
        out[~(out > 0) | ~np.isfinite(out)] = np.nan
        return out
    raise InputError(f"depth must be uint16 millimetres (16UC1) or float metres (32FC1), got {depth.dtype}")


# ------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class GoalPose:
    """A navigation goal in the camera optical frame.

    Attributes:
        position: float64 (3,) metres.
        orientation: float64 (4,) unit quaternion ``(x, y, z, w)`` rotating the optical frame
            onto a REP 103 body frame at the goal: body x = horizontal direction towards the
            target (the camera's line of sight projected on the plane orthogonal to the
            camera's up axis, optical -y), body z = up. After a tf2 transform into ``map`` its
            yaw is the heading that faces the target (what Nav2's ``NavigateToPose`` uses).
    """

    position: np.ndarray
    orientation: np.ndarray


@dataclass(frozen=True)
class Target3D:
    """The referred object in 3-D (camera optical frame), or why it is unknown.

    Attributes:
        reason: None when known, else the :class:`UnknownReason`.
        detail: human-readable explanation (numbers included), "" when known.
        point: float64 (3,) metres, robust target point (see module doc), or None.
        spread_m: robust standard deviation (1.4826 MAD, metres) of the inlier depths: depth
            noise plus the object's relief; NaN when unknown.
        extent_m: float64 (3,) size (metres) of the 2nd-98th percentile box of the target's
            inlier pixels along x, y, z, or None.
        box_center: float64 (3,) metres, centre of that box, or None.
        valid_pixels: valid depth pixels inside the mask on the depth grid.
        inlier_pixels: core pixels used for the point (after outlier rejection).
        used_core: False when the eroded core had too few valid pixels and the whole mask was used.
        goal: the standoff goal pose, or None.
    """

    reason: UnknownReason | None
    detail: str = ""
    point: np.ndarray | None = None
    spread_m: float = float("nan")
    extent_m: np.ndarray | None = None
    box_center: np.ndarray | None = None
    valid_pixels: int = 0
    inlier_pixels: int = 0
    used_core: bool = True
    goal: GoalPose | None = None

    @property
    def known(self) -> bool:
        """True when a point was computed."""
        return self.reason is None

    @classmethod
    def unknown(cls, reason: UnknownReason, detail: str, *, valid_pixels: int = 0) -> Target3D:
        """An unknown result with its reason and explanation."""
        return cls(reason=UnknownReason(reason), detail=detail, valid_pixels=int(valid_pixels))


@dataclass(frozen=True)
class GeometryConfig:
    """Settings of :func:`locate_target` (node parameters of the same names).

    Attributes:
        standoff_m: distance (m) from the target to the goal along the camera-to-target ray, >= 0.
        min_valid_pixels: fewest valid depth pixels in the mask for a point, >= 1.
        erode_px: radius (depth-image pixels) of the erosion that makes the mask's core, >= 0.
        outlier_mad_k: depths further than ``k * 1.4826 * MAD`` from the median are outliers, > 0.
        min_inlier_band_m: the inlier band is never narrower than this (m), >= 0 (flat targets
            with tiny MAD keep pixels within sensor quantisation).
        min_range_m: nearer depths are treated as no return (m), >= 0.
        max_range_m: further depths are treated as no return (m), > ``min_range_m``.
        max_samples: at most this many mask pixels (evenly strided) enter the statistics, so
            the cost stays bounded on large masks and high-resolution depth, >= 100.
    """

    standoff_m: float = 0.8
    min_valid_pixels: int = 30
    erode_px: int = 2
    outlier_mad_k: float = 3.0
    min_inlier_band_m: float = 0.05
    min_range_m: float = 0.1
    max_range_m: float = 20.0
    max_samples: int = 20000

    def __post_init__(self) -> None:
        if not self.standoff_m >= 0:
            raise ConfigError(f"standoff_m must be >= 0, got {self.standoff_m}")
        if int(self.min_valid_pixels) < 1:
            raise ConfigError(f"min_valid_pixels must be >= 1, got {self.min_valid_pixels}")
        if int(self.erode_px) < 0:
            raise ConfigError(f"erode_px must be >= 0, got {self.erode_px}")
        if not self.outlier_mad_k > 0 or not self.min_inlier_band_m >= 0:
            raise ConfigError("outlier_mad_k must be > 0 and min_inlier_band_m >= 0")
        if not 0 <= self.min_range_m < self.max_range_m:
            raise ConfigError(f"need 0 <= min_range_m < max_range_m, got {self.min_range_m}, {self.max_range_m}")
        if int(self.max_samples) < 100:
            raise ConfigError(f"max_samples must be >= 100, got {self.max_samples}")


# ------------------------------------------------------------------------------- geometry
def goal_pose(point: np.ndarray, standoff_m: float) -> GoalPose:
    """Goal ``standoff_m`` before ``point`` on the camera-to-target ray, facing the target.

    Args:
        point: float (3,) target in the optical frame (m), not at the origin.
        standoff_m: metres, >= 0. A target nearer than the standoff gives a goal behind the
            camera (the robot backs off to the standoff distance).

    Returns:
        :class:`GoalPose` with ``position = point - standoff_m * point / |point|`` and the
        orientation described there. A line of sight along the up axis (degenerate) faces
        along the optical axis.

    Raises:
        InputError: a non-finite point or one at the camera centre.
    """
    p = np.asarray(point, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(p))
    if not np.isfinite(p).all() or norm <= 1e-9:
        raise InputError(f"goal needs a finite target point away from the camera, got {p.tolist()}")
    ray = p / norm
    up = np.array([0.0, -1.0, 0.0])  # optical frame: y down
    forward = ray - np.dot(ray, up) * up
    if np.linalg.norm(forward) < 1e-6:
        forward = np.array([0.0, 0.0, 1.0])
    forward /= np.linalg.norm(forward)
    left = np.cross(up, forward)
    rot = np.stack([forward, left, up], axis=1)  # columns: body x, y, z in optical coordinates
    return GoalPose(position=p - float(standoff_m) * ray, orientation=_quaternion_xyzw(rot))


def _quaternion_xyzw(rot: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(rot).as_quat()  # (x, y, z, w)
    return q * (1.0 if q[3] >= 0 else -1.0)


def _mask_on_grid(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bool mask resampled to ``width`` x ``height`` with pixel centres aligned (nearest)."""
    if mask.shape == (height, width):
        return mask
    flag = getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)
    return cv2.resize(mask.view(np.uint8), (width, height), interpolation=flag).astype(bool)


def _stride_pick(count: int, limit: int) -> np.ndarray | slice:
    if count <= limit:
        return slice(None)
    return np.linspace(0, count - 1, limit).round().astype(np.int64)


def locate_target(
    mask: np.ndarray,
    depth: np.ndarray | None,
    intrinsics: CameraIntrinsics | None,
    config: GeometryConfig | None = None,
) -> Target3D:
    """3-D target point, spread, extent and goal pose from a mask and a registered depth image.

    Args:
        mask: bool (H, W) target mask (e.g. the prediction's main region) at any resolution
            covering the same field of view as the depth image.
        depth: (Hd, Wd) depth registered to the colour image: uint16 millimetres or float
            metres (see :func:`depth_in_metres`); None = no depth (unknown ``no_depth``).
        intrinsics: the camera's intrinsics for an image of ``intrinsics.width`` x
            ``intrinsics.height`` (scaled to the depth size here); None = unknown
            ``no_camera_info``.
        config: thresholds (defaults: :class:`GeometryConfig`).

    Returns:
        A known :class:`Target3D` or an unknown one with its reason (``no_target``,
        ``no_depth``, ``no_camera_info``, ``too_few_valid_depth``).

    Raises:
        InputError: a mask that is not bool 2-D, a depth that is not 2-D uint16/float, or a mask,
            depth and intrinsics whose aspect ratios differ by more than 2 % (not registered).
    """
    cfg = config or GeometryConfig()
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise InputError(f"mask must be a bool (H, W) array, got {getattr(mask, 'dtype', type(mask))} "
                         f"{getattr(mask, 'shape', '')}")
    if not mask.any():
        return Target3D.unknown(UnknownReason.NO_TARGET, "the mask is empty")
    if depth is None:
        return Target3D.unknown(UnknownReason.NO_DEPTH, "no depth image for this frame")
    if intrinsics is None:
        return Target3D.unknown(UnknownReason.NO_CAMERA_INFO, "no camera info for the depth image")
    if not isinstance(depth, np.ndarray) or depth.ndim != 2 or depth.size == 0:
        raise InputError(f"depth must be a non-empty 2-D array, got {getattr(depth, 'shape', type(depth))}")
    hd, wd = depth.shape
    aspects = {"mask": mask.shape[1] / mask.shape[0], "depth": wd / hd,
               "camera info": intrinsics.width / intrinsics.height}
    if max(aspects.values()) > 1.02 * min(aspects.values()):
        raise InputError(
            f"mask {mask.shape[1]}x{mask.shape[0]}, depth {wd}x{hd} and camera info "
            f"{intrinsics.width}x{intrinsics.height} have different aspect ratios; the depth must be "
            "registered to the colour image"
        )
    intr = intrinsics.scaled_to(wd, hd)
    m = _mask_on_grid(mask, wd, hd)
    ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    if ys.size == 0:  # the mask vanished when downsampled
        return Target3D.unknown(UnknownReason.TOO_FEW_VALID, "the mask has no pixel on the depth grid")
    r = int(cfg.erode_px)
    y0, y1 = max(int(ys[0]) - 1, 0), min(int(ys[-1]) + 2, hd)
    x0, x1 = max(int(xs[0]) - 1, 0), min(int(xs[-1]) + 2, wd)
    m = np.ascontiguousarray(m[y0:y1, x0:x1])
    z = depth_in_metres(np.ascontiguousarray(depth[y0:y1, x0:x1]))
    valid = np.isfinite(z) & (z >= cfg.min_range_m) & (z <= cfg.max_range_m)
    in_mask = m & valid
    n_valid = int(np.count_nonzero(in_mask))
    if n_valid < cfg.min_valid_pixels:
        return Target3D.unknown(
            UnknownReason.TOO_FEW_VALID,
            f"{n_valid} valid depth pixels in the mask, need {cfg.min_valid_pixels}",
            valid_pixels=n_valid,
        )
    used_core = True
    use = in_mask
    if r > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        core = cv2.erode(m.view(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        use = core & valid
        if np.count_nonzero(use) < cfg.min_valid_pixels:
            use, used_core = in_mask, False
    z_use = z[use]
    median = float(np.median(z_use))
    mad = float(np.median(np.abs(z_use - median)))
    band = max(cfg.outlier_mad_k * MAD_TO_SIGMA * mad, cfg.min_inlier_band_m)
    inl = use & (np.abs(z - median) <= band)
    n_inl = int(np.count_nonzero(inl))
    if n_inl < cfg.min_valid_pixels:
        return Target3D.unknown(
            UnknownReason.TOO_FEW_VALID,
            f"{n_inl} depth pixels agree with the median depth {median:.2f} m, need {cfg.min_valid_pixels}",
            valid_pixels=n_valid,
        )
    pts = _back_project(inl, z, intr, x0, y0, cfg.max_samples)
    z_in = z[inl]
    point = np.array([pts[:, 0].mean(), pts[:, 1].mean(), float(np.median(z_in))])
    spread = MAD_TO_SIGMA * float(np.median(np.abs(z_in - np.median(z_in))))
    body = in_mask & (np.abs(z - median) <= band)
    bpts = _back_project(body, z, intr, x0, y0, cfg.max_samples)
    lo, hi = np.percentile(bpts, [2.0, 98.0], axis=0)
    return Target3D(
        reason=None, point=point, spread_m=spread, extent_m=hi - lo, box_center=(hi + lo) / 2.0,
        valid_pixels=n_valid, inlier_pixels=n_inl, used_core=used_core,
        goal=goal_pose(point, cfg.standoff_m),
    )


def _back_project(sel: np.ndarray, z: np.ndarray, intr: CameraIntrinsics, x0: int, y0: int,
                  limit: int) -> np.ndarray:
    """float64 (N, 3) optical-frame points of the selected pixels of a crop (strided to ``limit``)."""
    vv, uu = np.nonzero(sel)
    pick = _stride_pick(vv.size, limit)
    vv, uu = vv[pick], uu[pick]
    zz = z[vv, uu].astype(np.float64)
    rays = intr.normalized_rays(uu + x0, vv + y0)
    return np.stack([rays[:, 0] * zz, rays[:, 1] * zz, zz], axis=1)


# ------------------------------------------------------------------------------- regions
@dataclass(frozen=True)
class Region:
    """Connected-component analysis of a binary mask weighted by target probability.

    Attributes:
        main: bool (H, W), the component holding the most target probability (all False if none).
        kept: bool (H, W), ``main`` plus every other component of at least ``min_area`` pixels.
        bbox: (x_min, y_min, x_max, y_max) inclusive pixels of ``main``, or None.
        main_area: pixels of ``main``.
        mean_probability: mean probability over ``main`` (0 when empty).
        components: number of 8-connected components in the input mask.
        dropped: components removed (smaller than ``min_area`` and not the main one).
        labels: int32 (H, W) component label per pixel (0 = background), from OpenCV.
        main_label: label of ``main`` (0 when empty).
        kept_labels: labels of the components in ``kept``.
    """

    main: np.ndarray
    kept: np.ndarray
    bbox: tuple[int, int, int, int] | None
    main_area: int
    mean_probability: float
    components: int
    dropped: int
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.int32))
    main_label: int = 0
    kept_labels: tuple[int, ...] = ()


def main_region(mask: np.ndarray, probability: np.ndarray, min_area: int) -> Region:
    """The mask's main region and the components worth keeping (issue 10, part 2).

    The main region is the 8-connected component (``cv2.connectedComponentsWithStats``) with the
    largest sum of ``probability``; other components smaller than ``min_area`` pixels are
    dropped (stray pixels that would stretch a box to the image corner).

    Args:
        mask: bool (H, W).
        probability: float (H, W) per-pixel target probability in [0, 1] on the same grid.
        min_area: pixels, >= 0; components below it (other than the main one) are dropped.

    Returns:
        :class:`Region`; for an empty mask everything is empty and ``bbox`` is None.

    Raises:
        InputError: shapes differ or the mask is not bool 2-D.
    """
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise InputError(f"mask must be a bool (H, W) array, got {getattr(mask, 'dtype', type(mask))}")
    if np.shape(probability) != mask.shape:
        raise InputError(f"probability {np.shape(probability)} and mask {mask.shape} shapes differ")
    if int(min_area) < 0:
        raise ConfigError(f"min_area must be >= 0, got {min_area}")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    if count <= 1:
        empty = np.zeros_like(mask)
        return Region(main=empty, kept=empty, bbox=None, main_area=0, mean_probability=0.0,
                      components=0, dropped=0, labels=labels, main_label=0, kept_labels=())
    mass = np.bincount(labels.ravel(), weights=np.asarray(probability, np.float64).ravel(), minlength=count)
    mass[0] = -np.inf
    best = int(np.argmax(mass))
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = [i for i in range(1, count) if i == best or areas[i] >= int(min_area)]
    lut = np.zeros(count, dtype=bool)
    lut[keep] = True
    kept = lut[labels]
    main = labels == best
    x, y, w, h = (int(v) for v in stats[best, :4])
    return Region(
        main=main, kept=kept, bbox=(x, y, x + w - 1, y + h - 1), main_area=int(areas[best]),
        mean_probability=float(mass[best] / max(int(areas[best]), 1)), components=count - 1,
        dropped=count - 1 - len(keep), labels=labels, main_label=best, kept_labels=tuple(keep),
    )


# ---------------------------------------------------------------------------- stamp pairing
T = TypeVar("T")


@dataclass(frozen=True)
class Pairing(Generic[T]):
    """Result of :meth:`StampPairer.match`.

    Attributes:
        item: the paired item, or None.
        reason: None when paired, else ``no_depth`` (nothing buffered) or ``depth_too_old``.
        skew_sec: item stamp minus query stamp (s) of the nearest buffered item (NaN if none).
    """

    item: T | None
    reason: UnknownReason | None
    skew_sec: float


class StampPairer(Generic[T]):
    """Pairs a colour frame with the buffered item (depth image) nearest in header stamp.

    Keeps only the last ``capacity`` items (latest-frame policy: a handful of frames absorbs a
    depth stream that lags or leads the colour stream by a frame or two; nothing queues). A stamp
    earlier than the newest buffered one (a bag played in a loop, ``/clock`` jumped back) clears
    the buffer first.

    Args:
        max_skew_sec: largest accepted ``|depth stamp - colour stamp|`` (s), >= 0.
        capacity: items kept, >= 1.

    Raises:
        ConfigError: out-of-range arguments.
    """

    def __init__(self, max_skew_sec: float, capacity: int = 4) -> None:
        if not max_skew_sec >= 0 or int(capacity) < 1:
            raise ConfigError(f"need max_skew_sec >= 0 and capacity >= 1, got {max_skew_sec}, {capacity}")
        self.max_skew_ns = round(float(max_skew_sec) * 1e9)
        self.capacity = int(capacity)
        self._items: list[tuple[int, T]] = []

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Forget every buffered item."""
        self._items.clear()

    def push(self, stamp_ns: int, item: T) -> None:
        """Buffer ``item`` stamped ``stamp_ns`` (int ns), dropping the oldest beyond capacity."""
        stamp_ns = int(stamp_ns)
        if self._items and stamp_ns < self._items[-1][0]:
            self._items.clear()
        self._items.append((stamp_ns, item))
        del self._items[: -self.capacity]

    def latest(self) -> T | None:
        """The newest buffered item, or None."""
        return self._items[-1][1] if self._items else None

    def match(self, stamp_ns: int, max_skew_sec: float | None = None) -> Pairing[T]:
        """The buffered item nearest ``stamp_ns`` (ties: the later one) if within the skew.

        Args:
            stamp_ns: stamp of the colour frame (ns).
            max_skew_sec: overrides the constructor's ``max_skew_sec`` (s) for this call;
                ``float("inf")`` accepts any age (e.g. for a camera info, whose calibration
                does not age).
        """
        if not self._items:
            return Pairing(None, UnknownReason.NO_DEPTH, float("nan"))
        best_stamp, best = min(self._items, key=lambda it: (abs(it[0] - int(stamp_ns)), -it[0]))
        skew = best_stamp - int(stamp_ns)
        limit = self.max_skew_ns if max_skew_sec is None else float(max_skew_sec) * 1e9
        if abs(skew) > limit:
            return Pairing(None, UnknownReason.DEPTH_TOO_OLD, skew * 1e-9)
        return Pairing(best, None, skew * 1e-9)


def bbox_iou(a: Sequence[int] | None, b: Sequence[int] | None) -> float:
    """IoU of two inclusive pixel boxes ``(x_min, y_min, x_max, y_max)``; 0 if either is None.

    Both None gives 1.0 (both agree there is nothing).
    """
    if a is None or b is None:
        return 1.0 if a is None and b is None else 0.0
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(ix, 0) * max(iy, 0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return float(inter / (area_a + area_b - inter))
