"""The 3-D target side of the message pipeline (issue 10): depth in, navigation outputs out (no rclpy).

:class:`DepthInputs` is the thread-safe hand-off for ``depth/image`` and ``depth/camera_info``
(subscription callbacks offer, the inference thread pairs): it keeps only the last
:data:`DEPTH_BUFFER` messages of each (latest-frame policy, nothing queues) UNDECODED, so a
30 Hz depth stream costs nothing until a colour frame is processed. :class:`TargetLocator` pairs
the processed colour frame with the depth image nearest in header stamp (within
``max_depth_skew_sec``) and the camera info nearest that depth image (any age: a calibration
does not age, and some drivers publish it once, latched), decodes them, runs
:func:`refavs_ros.geometry.locate_target` on the prediction's MAIN region
(:attr:`refavs_ros.predictor.Prediction.region_mask`) and builds the output messages
(:mod:`refavs_ros.rosio.rgbd`) with the colour image's header. Nothing is built when the
target is absent or its depth unknown; :attr:`TargetOutput.target` says why, for
``/diagnostics`` and the replay report.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from refavs_ros.errors import InputError
from refavs_ros.geometry import (
    CameraIntrinsics,
    GeometryConfig,
    StampPairer,
    Target3D,
    UnknownReason,
    locate_target,
)
from refavs_ros.rosio import conversions, rgbd

DEPTH_BUFFER = 4
"""Depth images (and camera infos) kept for pairing."""
KNOWN = "known"
"""Status label of a frame whose 3-D target was computed (the others use UnknownReason values)."""


def camera_intrinsics(msg: Any) -> CameraIntrinsics | UnknownReason:
    """Intrinsics of the image a ``sensor_msgs/CameraInfo`` describes.

    ``binning_x`` / ``binning_y`` > 1 divide the size and scale K (``image_geometry``'s
    convention for a binned image); a non-empty ``roi`` makes the image that crop (principal point
    shifted by its offset).

    Returns:
        The :class:`CameraIntrinsics`, or :attr:`UnknownReason.UNCALIBRATED` when ``k`` is all zero.

    Raises:
        InputError: ``k`` without 9 values, non-positive size or focal length, non-finite values.
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size == 9 and not CameraIntrinsics.is_calibrated(k):
        return UnknownReason.UNCALIBRATED
    width, height = int(msg.width), int(msg.height)
    roi = getattr(msg, "roi", None)
    if roi is not None and int(roi.width) > 0 and int(roi.height) > 0:
        k = k.copy()
        k[2] -= int(roi.x_offset)
        k[5] -= int(roi.y_offset)
        width, height = int(roi.width), int(roi.height)
    cam = CameraIntrinsics.from_k(k, width, height, distortion_model=str(msg.distortion_model),
                                  d=np.asarray(msg.d, dtype=np.float64))
    bx, by = max(int(getattr(msg, "binning_x", 0)), 1), max(int(getattr(msg, "binning_y", 0)), 1)
    if bx > 1 or by > 1:
        cam = CameraIntrinsics(width=width // bx, height=height // by, fx=cam.fx / bx, fy=cam.fy / by,
                               cx=cam.cx / bx, cy=cam.cy / by, distortion_model=cam.distortion_model,
                               distortion=cam.distortion)
    return cam


class DepthInputs:
    """Thread-safe latest-N buffer of raw depth images and camera infos.

    Args:
        capacity: messages kept per kind, >= 1.
    """

    def __init__(self, capacity: int = DEPTH_BUFFER) -> None:
        self._lock = threading.Lock()
        self._depth: StampPairer[Any] = StampPairer(0.0, capacity)
        self._info: StampPairer[Any] = StampPairer(0.0, capacity)
        self.depth_received = 0
        self.info_received = 0

    def offer_depth(self, stamp_ns: int, msg: Any) -> None:
        """Keep a ``sensor_msgs/Image`` depth message (not decoded here)."""
        with self._lock:
            self._depth.push(stamp_ns, msg)
            self.depth_received += 1

    def offer_camera_info(self, stamp_ns: int, msg: Any) -> None:
        """Keep a ``sensor_msgs/CameraInfo`` message."""
        with self._lock:
            self._info.push(stamp_ns, msg)
            self.info_received += 1

    def clear(self) -> None:
        """Forget every buffered message (deactivate, time jump)."""
        with self._lock:
            self._depth.clear()
            self._info.clear()

    def pair(self, stamp_ns: int, max_skew_sec: float) -> tuple[Any, Any, UnknownReason | None, float]:
        """``(depth_msg, info_msg, reason, skew_sec)`` for a colour frame stamped ``stamp_ns``.

        ``reason`` is None when both were found, else ``no_depth`` / ``depth_too_old`` /
        ``no_camera_info``; ``skew_sec`` = depth stamp - colour stamp (NaN without depth).
        """
        with self._lock:
            depth = self._depth.match(stamp_ns, max_skew_sec)
            if depth.item is None:
                return None, None, depth.reason, depth.skew_sec
            info = self._info.match(stamp_ns + round(depth.skew_sec * 1e9), float("inf"))
        if info.item is None:
            return depth.item, None, UnknownReason.NO_CAMERA_INFO, depth.skew_sec
        return depth.item, info.item, None, depth.skew_sec


@dataclass
class TargetOutput:
    """The 3-D result of one processed colour frame.

    Attributes:
        target: the :class:`~refavs_ros.geometry.Target3D` (``reason`` says why it is unknown).
        depth_skew_sec: paired depth stamp minus colour stamp (s), NaN when none was paired.
        target_point: ``geometry_msgs/PointStamped`` or None (unknown / absent).
        goal_pose: ``geometry_msgs/PoseStamped`` or None.
        detections_3d: ``vision_msgs/Detection3DArray`` (one detection) or None.
        marker: ``visualization_msgs/Marker`` or None.
        rejection: ``(kind, InputError)`` when the paired depth image or camera info was bad
            (the pipeline counts it), else None.
    """

    target: Target3D
    depth_skew_sec: float = float("nan")
    target_point: Any = None
    goal_pose: Any = None
    detections_3d: Any = None
    marker: Any = None
    rejection: tuple[str, InputError] | None = None

    @property
    def status(self) -> str:
        """``"known"`` or the unknown reason's value (e.g. ``"depth_too_old"``)."""
        return KNOWN if self.target.known else str(self.target.reason.value)  # type: ignore[union-attr]


class TargetLocator:
    """Pairs colour frames with depth and turns predictions into 3-D targets and messages.

    Args:
        config: geometry thresholds and the standoff (:class:`~refavs_ros.geometry.GeometryConfig`).
        max_depth_skew_sec: largest accepted ``|depth stamp - colour stamp|`` (s), >= 0.
        marker_lifetime_sec: lifetime of the RViz marker (s).
        inputs: the depth hand-off (a new one by default).
    """

    def __init__(self, config: GeometryConfig | None = None, *, max_depth_skew_sec: float = 0.05,
                 marker_lifetime_sec: float = 1.0, inputs: DepthInputs | None = None) -> None:
        self.inputs = inputs or DepthInputs()
        self.statuses: Counter[str] = Counter()
        """Processed frames by :attr:`TargetOutput.status` since construction."""
        self.last: TargetOutput | None = None
        """The last frame's result."""
        self.configure(config or GeometryConfig(), max_depth_skew_sec, marker_lifetime_sec)

    def configure(self, config: GeometryConfig, max_depth_skew_sec: float, marker_lifetime_sec: float = 1.0) -> None:
        """Apply new settings (dynamic parameters)."""
        if not max_depth_skew_sec >= 0:
            raise InputError(f"max_depth_skew_sec must be >= 0, got {max_depth_skew_sec}")
        self.config = config
        self.max_depth_skew_sec = float(max_depth_skew_sec)
        self.marker_lifetime_sec = float(marker_lifetime_sec)

    def locate(self, stamp_ns: int, prediction: Any, header: Any, *, class_id: str,
               factory: conversions.MessageFactory | None = None) -> TargetOutput:
        """The 3-D target of one processed colour frame.

        Args:
            stamp_ns: the colour frame's stamp (ns).
            prediction: :class:`~refavs_ros.predictor.Prediction` (``found``, ``region_mask``,
                ``region_score``).
            header: the colour image's header (every output reuses it).
            class_id: class id of the 3-D detection (the command).
            factory: message flavour.

        Returns:
            The :class:`TargetOutput` (never raises for a bad depth message: it is returned in
            ``rejection``).
        """
        out = self._locate(stamp_ns, prediction, header, class_id, factory)
        self.statuses[out.status] += 1
        self.last = out
        return out

    def _locate(self, stamp_ns: int, prediction: Any, header: Any, class_id: str,
                factory: conversions.MessageFactory | None) -> TargetOutput:
        if not prediction.found:
            return TargetOutput(Target3D.unknown(UnknownReason.NO_TARGET, "the referred object is not found"))
        depth_msg, info_msg, reason, skew = self.inputs.pair(stamp_ns, self.max_depth_skew_sec)
        if reason is not None:
            detail = {
                UnknownReason.NO_DEPTH: "no depth image received",
                UnknownReason.DEPTH_TOO_OLD: f"nearest depth image is {skew:+.3f} s from the frame "
                                             f"(max_depth_skew_sec {self.max_depth_skew_sec:g})",
                UnknownReason.NO_CAMERA_INFO: "no camera info received",
            }[reason]
            return TargetOutput(Target3D.unknown(reason, detail), skew)
        try:
            kind = "depth"
            depth = rgbd.depth_image_to_array(depth_msg)
            kind = "camera_info"
            camera = camera_intrinsics(info_msg)
        except InputError as exc:
            return TargetOutput(Target3D.unknown(UnknownReason.BAD_DEPTH, f"{kind}: {exc}"), skew, rejection=(kind, exc))
        if isinstance(camera, UnknownReason):
            return TargetOutput(Target3D.unknown(camera, "camera info K is all zero (uncalibrated camera)"), skew)
        try:
            target = locate_target(prediction.region_mask, depth, camera, self.config)
        except InputError as exc:  # e.g. depth not registered to the colour image
            return TargetOutput(Target3D.unknown(UnknownReason.BAD_DEPTH, str(exc)), skew, rejection=("depth", exc))
        out = TargetOutput(target, skew)
        if target.known:
            out.target_point = rgbd.target_point_message(target, header, factory=factory)
            out.goal_pose = rgbd.goal_pose_message(target, header, factory=factory)
            out.detections_3d = rgbd.detections_3d_message(
                target, header, class_id=class_id, score=float(getattr(prediction, "region_score", prediction.score)),
                factory=factory)
            out.marker = rgbd.marker_message(target, header, lifetime_sec=self.marker_lifetime_sec, factory=factory)
        return out
