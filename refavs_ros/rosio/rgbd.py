"""RGB-D messages <-> numpy / :mod:`refavs_ros.geometry`: depth images, camera info, 3-D outputs.

Inputs: ``sensor_msgs/Image`` depth (``16UC1`` / ``mono16`` millimetres or ``32FC1`` metres,
REP 118: 0 or NaN = no return) and ``sensor_msgs/CameraInfo``. Outputs, all with the colour
image's header (the camera optical frame, REP 103/105): ``geometry_msgs/PointStamped``,
``geometry_msgs/PoseStamped`` (the Nav2 ``NavigateToPose`` goal), ``vision_msgs/Detection3DArray``
(vision_msgs 4.x) and ``visualization_msgs/Marker``. Duck-typed readers and
:class:`~refavs_ros.rosio.conversions.MessageFactory` writers, like
:mod:`refavs_ros.rosio.conversions`; no rclpy here. The 3-D values come from a
:class:`refavs_ros.geometry.Target3D` (duck-typed: ``known``, ``point``, ``goal.position``,
``goal.orientation``, ``spread_m``, ``extent_m``, ``box_center``); the camera info is parsed into
intrinsics by :func:`refavs_ros.node.depth.camera_intrinsics` (rosio sits beside the geometry
module in the layering, so it does not import it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from refavs_ros.errors import InputError
from refavs_ros.rosio import msgs
from refavs_ros.rosio.conversions import (
    MessageFactory,
    _buffer_bytes,
    array_to_image,
    default_factory,
    image_to_array,
)

DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
"""Depth encodings :func:`depth_image_to_array` accepts."""


# ------------------------------------------------------------------------------- depth
def depth_image_to_array(msg: Any) -> np.ndarray:
    """Decode a depth ``sensor_msgs/Image`` honouring ``step`` and ``is_bigendian``.

    Args:
        msg: image message with encoding ``16UC1`` / ``mono16`` (millimetres) or ``32FC1`` (metres).

    Returns:
        uint16 (H, W) millimetres or float32 (H, W) metres, native byte order (what
        :func:`refavs_ros.geometry.locate_target` takes).

    Raises:
        InputError: another encoding, an empty size, a short ``step`` or a wrong data length.
    """
    encoding = str(msg.encoding)
    if encoding in ("16UC1", "mono16"):
        return image_to_array(msg)
    if encoding != "32FC1":
        raise InputError(f"unsupported depth encoding {encoding!r}; expected one of {DEPTH_ENCODINGS}",
                         reason="unsupported encoding")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise InputError(f"32FC1 depth image has an empty size {width}x{height}", reason="empty image")
    if step < 4 * width:
        raise InputError(f"32FC1 depth step {step} < 4*width = {4 * width}", reason="bad step")
    raw = _buffer_bytes(msg.data)
    if raw.size != step * height:
        raise InputError(f"32FC1 depth data has {raw.size} bytes, expected step*height = {step * height}",
                         reason="data length")
    rows = np.ascontiguousarray(raw.reshape(height, step)[:, : 4 * width])
    order = ">" if bool(msg.is_bigendian) else "<"
    return rows.view(np.dtype("f4").newbyteorder(order)).astype(np.float32).reshape(height, width)


def depth_to_image(depth: np.ndarray, header: Any, *, factory: MessageFactory | None = None) -> Any:
    """Encode depth as ``16UC1`` (uint16 millimetres) or ``32FC1`` (float32 metres).

    Raises:
        InputError: not a 2-D uint16 / float32 array.
    """
    arr = np.asarray(depth)
    if arr.ndim == 2 and arr.dtype == np.uint16:
        return array_to_image(arr, "16UC1", header=header, factory=factory)
    if arr.ndim != 2 or arr.dtype != np.float32:
        raise InputError(f"depth must be uint16 (H, W) mm or float32 (H, W) m, got {arr.dtype} {arr.shape}")
    factory = factory or default_factory()
    h, w = arr.shape
    data = np.ascontiguousarray(arr.astype("<f4")).view(np.uint8).reshape(-1)
    return factory.new(msgs.IMAGE, header=header, height=h, width=w, encoding="32FC1", is_bigendian=0,
                       step=4 * w, data=data)


# ------------------------------------------------------------------------------- camera info
def camera_info_message(camera: Any, header: Any, *, factory: MessageFactory | None = None) -> Any:
    """``sensor_msgs/CameraInfo`` of a pinhole camera: K, D, R = I, P = [K | 0].

    Args:
        camera: a :class:`refavs_ros.geometry.CameraIntrinsics` (duck-typed: ``k`` (3, 3),
            ``width``, ``height``, ``distortion_model``, ``distortion``).
        header: header to use.
        factory: message flavour.
    """
    factory = factory or default_factory()
    k = camera.k
    p = np.zeros((3, 4))
    p[:, :3] = k
    return factory.new(
        msgs.CAMERA_INFO, header=header, height=camera.height, width=camera.width,
        distortion_model=camera.distortion_model or "plumb_bob",
        d=np.asarray(camera.distortion, np.float64), k=k.reshape(-1).astype(np.float64),
        r=np.eye(3).reshape(-1), p=p.reshape(-1),
    )


# ------------------------------------------------------------------------------- outputs
def _point(factory: MessageFactory, xyz: np.ndarray) -> Any:
    return factory.new("geometry_msgs/msg/Point", x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _pose(factory: MessageFactory, xyz: np.ndarray, quat_xyzw: np.ndarray | None = None) -> Any:
    q = np.array([0.0, 0.0, 0.0, 1.0]) if quat_xyzw is None else np.asarray(quat_xyzw, np.float64)
    orientation = factory.new("geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]), z=float(q[2]),
                              w=float(q[3]))
    return factory.new("geometry_msgs/msg/Pose", position=_point(factory, xyz), orientation=orientation)


def _require_known(target: Any) -> None:
    if not getattr(target, "known", False) or target.point is None:
        raise InputError(f"the target is unknown ({target.reason}); nothing to publish")


def target_point_message(target: Any, header: Any, *, factory: MessageFactory | None = None) -> Any:
    """``geometry_msgs/PointStamped`` of the target point (m, optical frame of ``header``).

    Raises:
        InputError: the target is unknown (callers publish nothing then).
    """
    _require_known(target)
    factory = factory or default_factory()
    return factory.new(msgs.POINT_STAMPED, header=header, point=_point(factory, target.point))


def goal_pose_message(target: Any, header: Any, *, factory: MessageFactory | None = None) -> Any:
    """``geometry_msgs/PoseStamped`` of the standoff goal facing the target (what Nav2 takes).

    Raises:
        InputError: the target is unknown.
    """
    _require_known(target)
    assert target.goal is not None
    factory = factory or default_factory()
    return factory.new(msgs.POSE_STAMPED, header=header,
                       pose=_pose(factory, target.goal.position, target.goal.orientation))


def detections_3d_message(target: Any | None, header: Any, *, class_id: str, score: float,
                          factory: MessageFactory | None = None) -> Any:
    """``vision_msgs/Detection3DArray`` (4.x): one detection for a known target, else none.

    ``results[0].hypothesis`` = (``class_id``, ``score``); ``results[0].pose.pose.position`` =
    the target point, its covariance diagonal = ``spread_m**2`` on every axis (a robust depth
    spread, an honest lower bound for x and y); ``bbox`` = the 2nd-98th percentile box of the
    target's points (centre, axis-aligned in the optical frame, size = extent).
    """
    factory = factory or default_factory()
    detections = []
    if target is not None and target.known and target.point is not None:
        var = float(target.spread_m) ** 2
        cov = np.zeros(36)
        cov[[0, 7, 14]] = var
        pose = factory.new("geometry_msgs/msg/PoseWithCovariance", pose=_pose(factory, target.point), covariance=cov)
        hyp = factory.new(msgs.OBJECT_HYPOTHESIS, class_id=str(class_id), score=float(score))
        result = factory.new(msgs.OBJECT_HYPOTHESIS_WITH_POSE, hypothesis=hyp, pose=pose)
        assert target.box_center is not None and target.extent_m is not None
        size = factory.new("geometry_msgs/msg/Vector3", x=float(target.extent_m[0]), y=float(target.extent_m[1]),
                           z=float(target.extent_m[2]))
        bbox = factory.new(msgs.BOUNDING_BOX3D, center=_pose(factory, target.box_center), size=size)
        detections.append(factory.new(msgs.DETECTION3D, header=header, results=[result], bbox=bbox, id=""))
    return factory.new(msgs.DETECTION3D_ARRAY, header=header, detections=detections)


def marker_message(target: Any, header: Any, *, lifetime_sec: float = 1.0, ns: str = "refavs",
                   factory: MessageFactory | None = None) -> Any:
    """``visualization_msgs/Marker`` for RViz: a green sphere at the target point.

    Its diameter is the target's smallest extent (clamped to 0.05-1 m); ``lifetime_sec`` makes it
    disappear when no newer marker follows (nothing is published while the target is unknown).

    Raises:
        InputError: the target is unknown.
    """
    _require_known(target)
    factory = factory or default_factory()
    ext = np.asarray(target.extent_m if target.extent_m is not None else [0.1, 0.1, 0.1])
    d = float(np.clip(ext.min(), 0.05, 1.0))
    sec = int(lifetime_sec)
    return factory.new(
        msgs.MARKER, header=header, ns=ns, id=0, type=2, action=0,  # SPHERE, ADD
        pose=_pose(factory, target.point), scale=factory.new("geometry_msgs/msg/Vector3", x=d, y=d, z=d),
        color=factory.new("std_msgs/msg/ColorRGBA", r=0.1, g=0.9, b=0.2, a=0.8),
        lifetime=factory.new("builtin_interfaces/msg/Duration", sec=sec,
                             nanosec=round((lifetime_sec - sec) * 1e9)),
        frame_locked=False,
    )
