"""Debug overlay: the source image with the predicted mask, its box and a caption drawn on it.

Used by the node's ``debug/overlay`` topic and by the replay tool. ROS-free (OpenCV + numpy).
Drawing uses OpenCV primitives (``cv2.addWeighted``-style blending done in numpy,
``cv2.findContours``/``cv2.drawContours``, ``cv2.rectangle``, ``cv2.putText``).
"""

from __future__ import annotations

import cv2
import numpy as np

from refavs_ros.errors import InputError

MASK_COLOR_BGR = (0, 200, 0)
"""Fill and contour colour of the mask (B, G, R)."""
BOX_COLOR_BGR = (0, 165, 255)
"""Colour of the bounding box (B, G, R): orange."""
MASK_ALPHA = 0.45
"""Opacity of the mask fill, in [0, 1]."""


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only: replace other characters with '?'."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


def render_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    bbox: tuple[int, int, int, int] | None,
    text: str,
) -> np.ndarray:
    """Draw a segmentation result over its source image.

    Args:
        rgb: uint8 (H, W, 3) RGB source image (not modified).
        mask: bool (H, W) target mask at the source size (any dtype is read as ``mask != 0``).
        bbox: (x_min, y_min, x_max, y_max) in pixels, inclusive, or None for no box. Values are
            clipped to the image.
        text: caption (e.g. the command and score) drawn top-left on a dark band; characters
            outside printable ASCII are drawn as '?'; long captions are cut to fit the width.

    Returns:
        uint8 (H, W, 3) BGR image (OpenCV / ``bgr8`` order): the mask blended in green at
        ``MASK_ALPHA`` with a solid contour, the box in orange, the caption in white.

    Raises:
        InputError: ``rgb`` not uint8 (H, W, 3), ``mask`` not (H, W) of the same size, or a
            malformed ``bbox``.
    """
    img = np.asarray(rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"overlay needs a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}")
    height, width = img.shape[:2]
    m = np.asarray(mask)
    if m.shape != (height, width):
        raise InputError(f"overlay mask shape {m.shape} does not match image size {(height, width)}")
    m = m != 0

    out = np.ascontiguousarray(img[:, :, ::-1])  # (H, W, 3) BGR copy
    if m.any():
        color = np.asarray(MASK_COLOR_BGR, dtype=np.float32)
        blended = out[m].astype(np.float32) * (1.0 - MASK_ALPHA) + color * MASK_ALPHA
        out[m] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, MASK_COLOR_BGR, 1)

    thickness = max(1, round(min(height, width) / 240))
    if bbox is not None:
        if len(bbox) != 4:
            raise InputError(f"bbox must be (x_min, y_min, x_max, y_max), got {bbox!r}")
        x0, y0, x1, y1 = (int(v) for v in bbox)
        if x1 < x0 or y1 < y0:
            raise InputError(f"bbox {bbox!r} has max < min")
        x0, x1 = (min(max(v, 0), width - 1) for v in (x0, x1))
        y0, y1 = (min(max(v, 0), height - 1) for v in (y0, y1))
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOR_BGR, thickness)

    caption = _ascii(text)
    if caption:
        font = cv2.FONT_HERSHEY_SIMPLEX
        scale = max(0.35, min(height, width) / 640.0)
        (tw, th), base = cv2.getTextSize(caption, font, scale, thickness)
        while caption and tw > width - 4:
            caption = caption[:-1]
            (tw, th), base = cv2.getTextSize(caption, font, scale, thickness)
        if caption:
            band = min(height, th + base + 6)
            out[:band, : min(width, tw + 6)] //= 3  # darken behind the text
            cv2.putText(out, caption, (3, min(height - 1, th + 3)), font, scale, (255, 255, 255),
                        thickness, cv2.LINE_AA)
    return out
