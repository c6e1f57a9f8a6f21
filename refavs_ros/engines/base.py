"""The contract between :class:`refavs_ros.predictor.StreamingPredictor` and a model.

The predictor owns the I/O side (latest-frame buffer, 16 kHz audio ring buffer, header-stamp
alignment, memory stride, thresholds, resizing to the source image, bbox, timings). A
:class:`StreamEngine` owns the model side: the cached per-frame / per-audio-example features, the
per-command text features, and the cached memory. Two engines implement it:

* ``refavs_ros.models.eemc.EEMCStreamEngine`` (profiles ``tiny`` and ``base``; paper Sec. 4,
  causal cached memory, Eq. 2-3, updated in O(1) per frame);
* ``refavs_ros.engines.official.OfficialStreamEngine`` (the released computation over a
  sliding window of 10 frames, recomputed per new frame from cached per-frame features).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class StreamEngine(Protocol):
    """Model-side streaming state machine.

    Attributes:
        name: model identifier shown in diagnostics (e.g. ``"eemc-tiny"``, ``"official"``).
        image_size: (height, width) in pixels of the network input; the engine resizes.
        mask_size: (height, width) in pixels of the logits returned by :meth:`step`.
    """

    name: str
    image_size: tuple[int, int]
    mask_size: tuple[int, int]

    def set_command(self, text: str) -> None:
        """Encode the referring expression once (per-command call).

        Text-dependent cached-memory entries are rebuilt from the cached per-frame features.

        Raises:
            InputError: empty after stripping, or longer than the engine accepts.
        """

    def encode_frame(self, image: np.ndarray) -> Any:
        """Per-frame expensive call: image uint8 (H, W, 3) RGB, any size -> opaque features."""

    def encode_audio(self, log_mel: np.ndarray) -> Any:
        """Per-audio-example call: float32 (96, 64) VGGish log-mel -> opaque features."""

    def step(self, frame: Any, audio: Any, *, commit: bool) -> tuple[np.ndarray, float]:
        """Decode one frame against the cached memory.

        Args:
            frame: output of :meth:`encode_frame` for the newest frame.
            audio: output of :meth:`encode_audio` for the audio aligned with that frame.
            commit: True if this frame enters the cached memory after its prediction.

        Returns:
            (logits, presence_logit): float32 mask logits of shape ``mask_size`` and the
            null-reference presence logit (``+inf`` for models without a null score).
        """

    def reset_memory(self) -> None:
        """Forget every cached-memory entry (the command stays)."""

    def set_window(self, num_frames: int) -> None:
        """Resize the cached-memory window (entries), dropping the oldest if needed."""
