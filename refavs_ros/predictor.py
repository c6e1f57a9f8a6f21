"""Streaming Ref-AVS predictor: the ROS-free core that the node and the bag tools share.

API CONTRACT (implementation in progress; signatures and semantics are fixed):

    predictor = StreamingPredictor.from_pretrained(weights=None, config=PredictorConfig())
    predictor.set_command("the dog that is barking")       # cheap per-command call
    predictor.push_audio(stamp_ns, samples, sample_rate)    # cheap: appends to a ring buffer
    predictor.push_image(stamp_ns, image_rgb_uint8)         # cheap: keeps the latest frame
    result = predictor.step()                               # expensive per-frame call
    predictor.reset_memory()

* ``stamp_ns``: int nanoseconds (ROS ``header.stamp`` as ``sec * 10**9 + nanosec``); for audio
  the stamp of the chunk's FIRST sample.
* ``image``: numpy uint8 (H, W, 3) RGB, any size (use ``refavs_ros.conversions`` to get it from a
  ``sensor_msgs/Image``).
* ``samples``: numpy (N,) or (N, C), int16/int32/uint8/float32, any rate; resampled to 16 kHz mono.
* ``step()`` returns a :class:`Prediction` for the NEWEST pushed image, or ``None`` when no new
  image arrived since the last step or no command is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PredictorConfig:
    """Run-time settings of :class:`StreamingPredictor` (all dynamic in the node).

    Attributes:
        num_frames: cached-memory window, number of memory entries (frames), 1..1000.
        frame_stride_sec: minimum spacing (s) between two frames that enter the cached memory;
            0 = every stepped frame enters it. Paper: frames sampled at 1 s.
        mask_threshold: probability threshold in (0, 1) for the published binary mask.
        score_threshold: presence probability in [0, 1] below which the target is reported
            absent (null reference) and the mask is empty.
        max_av_skew_sec: audio is considered missing for a frame when the audio buffer ends
            more than this many seconds before the frame stamp (s, >= 0); missing audio is
            silence.
        beta: cached-memory sensitivity override (paper Eq. 2); None = the model's value;
            0 disables the cached memory (ablation).
        zero_audio: feed silence instead of the audio (ablation).
    """

    num_frames: int = 10
    frame_stride_sec: float = 1.0
    mask_threshold: float = 0.4
    score_threshold: float = 0.5
    max_av_skew_sec: float = 1.0
    beta: float | None = None
    zero_audio: bool = False


@dataclass
class Prediction:
    """Result of :meth:`StreamingPredictor.step` for one image.

    Attributes:
        stamp_ns: stamp (ns) of the image the result belongs to.
        mask: bool (H, W) at the SOURCE image size; all False when ``found`` is False.
        probability: float32 (H, W) in [0, 1], per-pixel target probability at source size,
            multiplied by ``found`` (so all zero when absent). Metrics use this map.
        score: presence probability of the referred object, [0, 1].
        found: ``score >= score_threshold`` and the mask is non-empty.
        bbox: (x_min, y_min, x_max, y_max) of ``mask`` in pixels, inclusive, or None.
        command: the command text in force.
        timings_ms: wall time per stage in ms (keys ``visual``, ``audio``, ``fusion``,
            ``decode``, ``total``).
    """

    stamp_ns: int
    mask: np.ndarray
    probability: np.ndarray
    score: float
    found: bool
    bbox: tuple[int, int, int, int] | None
    command: str
    timings_ms: dict[str, float] = field(default_factory=dict)
