"""Scene generation settings (frozen dataclass) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from refavs_ros.errors import ConfigError
from refavs_ros.scenes.catalog import SPLITS
from refavs_ros.scenes.media import MEDIA_MODES


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are rendered. The scene *content* (objects, sounds, expression) depends on
    (split, index, seed) and on ``duration_sec`` and the aspect ratio ``width / height`` (object
    layout), not on the resolution, frame rate or media mode.

    Attributes:
        width: frame width in pixels, 32..4096.
        height: frame height in pixels, 32..4096.
        fps: camera rate in Hz, (0, 120]. Frame ``i`` is taken at ``i / fps`` seconds.
        duration_sec: scene length in seconds; a whole number 4..600 (sound events live on 1-s
            slots, and temporal expressions need at least 4 of them).
        sample_rate: audio rate in Hz, 8000..96000 (the benchmark's models use 16000).
        start_ns: stamp (ns) of the first audio sample, >= 0; the first frame is stamped 1/fps later.
        media: "auto" (scikit-image photos and recorded sounds where available, procedural
            otherwise) or "procedural" (procedural shapes and synthetic sounds only).
        snr_db: ambient noise (``refavs_ros.scenes.noise``: babble, hum, fans, distractor
            sounds) at this signal-to-noise ratio in dB, -30..60, for every scene; None = only
            the faint white noise floor (except in ``test-noisy``, whose scene ``i`` gets
            ``noise.TEST_NOISY_SNRS_DB[i % 4]``).
        noise_prob: with ``snr_db`` None, the probability (0..1) that a scene gets ambient noise
            at an SNR drawn uniformly from ``snr_range_db`` (training augmentation).
        snr_range_db: (low, high) SNR range in dB for ``noise_prob``.
        occlusion_prob: probability (0..1) that one object (the referred one when there is one)
            is partly covered by a foreground bar or another object
            (``refavs_ros.scenes.occlusion``); ``test-occluded`` scenes always are.
        occlusion_range: (low, high) fraction of the object's silhouette covered in every frame,
            within 0.05..0.95 (default 25-60 %).

    The scene content (objects, sounds, expression) does not depend on the noise or occlusion
    fields: they add a noise track / an occluder on top of the same scene, from random streams
    of their own.
        depth: also render a registered depth image per frame, the camera intrinsics and the
            target's 3-D centroid (:mod:`refavs_ros.scenes.depth`).
        hfov_deg: horizontal field of view (degrees, 20..120) of the pinhole camera that gives
            the depth its intrinsics.
        depth_scale: depth image size / colour image size, (0, 1] (e.g. 0.5: half resolution).
    """

    width: int = 320
    height: int = 240
    fps: float = 2.0
    duration_sec: float = 8.0
    sample_rate: int = 16000
    start_ns: int = 1_700_000_000 * 10**9
    media: str = "auto"
    snr_db: float | None = None
    noise_prob: float = 0.0
    snr_range_db: tuple[float, float] = (0.0, 20.0)
    occlusion_prob: float = 0.0
    occlusion_range: tuple[float, float] = (0.25, 0.6)
    depth: bool = False
    hfov_deg: float = 60.0
    depth_scale: float = 1.0

    @property
    def num_frames(self) -> int:
        """Frames per scene: every ``i / fps`` strictly before ``duration_sec``."""
        return max(1, int(ceil(self.duration_sec * self.fps - 1e-9)))

    @property
    def num_slots(self) -> int:
        """Number of 1-s sound slots (``duration_sec``)."""
        return int(round(self.duration_sec))

    @property
    def num_samples(self) -> int:
        """Audio samples per scene: ``duration_sec * sample_rate``."""
        return self.num_slots * int(self.sample_rate)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def validate_config(config: SceneConfig) -> SceneConfig:
    """Check every field of ``config``.

    Returns:
        ``config`` unchanged.

    Raises:
        ConfigError: naming the first offending field and its value.
    """
    if not isinstance(config, SceneConfig):
        raise ConfigError(f"config must be a SceneConfig, got {type(config).__name__}")
    for name in ("width", "height"):
        v = getattr(config, name)
        if not _is_int(v) or not 32 <= v <= 4096:
            raise ConfigError(f"SceneConfig.{name} must be an int in 32..4096 pixels, got {v!r}")
    if not isinstance(config.fps, (int, float)) or isinstance(config.fps, bool) or not 0 < config.fps <= 120:
        raise ConfigError(f"SceneConfig.fps must be in (0, 120] Hz, got {config.fps!r}")
    d = config.duration_sec
    if (not isinstance(d, (int, float)) or isinstance(d, bool) or not 4 <= d <= 600
            or abs(d - round(d)) > 1e-9):
        raise ConfigError(f"SceneConfig.duration_sec must be a whole number of seconds in 4..600, got {d!r}")
    if not _is_int(config.sample_rate) or not 8000 <= config.sample_rate <= 96000:
        raise ConfigError(f"SceneConfig.sample_rate must be an int in 8000..96000 Hz, got {config.sample_rate!r}")
    if not _is_int(config.start_ns) or config.start_ns < 0:
        raise ConfigError(f"SceneConfig.start_ns must be a non-negative int (ns), got {config.start_ns!r}")
    if config.media not in MEDIA_MODES:
        raise ConfigError(f"SceneConfig.media must be one of {MEDIA_MODES}, got {config.media!r}")
    if config.snr_db is not None and (not _is_real(config.snr_db) or not -30 <= config.snr_db <= 60):
        raise ConfigError(f"SceneConfig.snr_db must be None or a number in -30..60 dB, got {config.snr_db!r}")
    for name in ("noise_prob", "occlusion_prob"):
        v = getattr(config, name)
        if not _is_real(v) or not 0 <= v <= 1:
            raise ConfigError(f"SceneConfig.{name} must be a probability in 0..1, got {v!r}")
    for name, lo, hi in (("snr_range_db", -30, 60), ("occlusion_range", 0.05, 0.95)):
        v = getattr(config, name)
        if (not isinstance(v, tuple) or len(v) != 2 or not all(_is_real(x) for x in v)
                or not lo <= v[0] <= v[1] <= hi):
            raise ConfigError(f"SceneConfig.{name} must be a tuple (low, high) with {lo} <= low <= high <= {hi}, "
                              f"got {v!r}")
    if not isinstance(config.depth, bool):
        raise ConfigError(f"SceneConfig.depth must be a bool, got {config.depth!r}")
    if not isinstance(config.hfov_deg, (int, float)) or not 20.0 <= config.hfov_deg <= 120.0:
        raise ConfigError(f"SceneConfig.hfov_deg must be in 20..120 degrees, got {config.hfov_deg!r}")
    if not isinstance(config.depth_scale, (int, float)) or not 0.0 < config.depth_scale <= 1.0:
        raise ConfigError(f"SceneConfig.depth_scale must be in (0, 1], got {config.depth_scale!r}")
    return config


def validate_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`; raise :class:`ConfigError` otherwise."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split
