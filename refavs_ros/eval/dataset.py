"""Reader of the Ref-AVS Bench dataset as it lies on disk (GeWu-Lab/Ref-AVS release).

Layout (``DATA_DIR``), as read by the released ``datasets/dataset_refavs.py``::

    metadata.csv                 columns vid, uid, split, fid, exp (one row = one expression)
    media/<folder>/frames/{0..9}.jpg
    media/<folder>/audio.wav     10 s; the sample rate (and channel count) differs between clips
    gt_mask/<folder>/fid_<fid>/0000{0..9}.png    non-zero = foreground

with ``folder = uid.rsplit('_', 2)[0]`` (the released code ignores the ``vid`` column for paths;
null-reference rows live in ``null_c-<vid>`` / ``null_m-<vid>`` folders that way). Splits:
``train``, ``val``, ``test_s`` (seen), ``test_u`` (unseen), ``test_n`` (null). Rows keep their
``metadata.csv`` order, which the benchmark's batch grouping depends on.

Ground truth follows the released loader: the PNG is read as 3-channel BGR (``cv2.imread``),
resized to 256x256 with ``cv2.resize`` (bilinear), converted to grey and thresholded ``> 0``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.io import wavfile

from refavs_ros.audio import to_mono_16k
from refavs_ros.errors import InputError

SPLITS = ("train", "val", "test_s", "test_u", "test_n")
"""Splits named in ``metadata.csv``."""
NULL_SPLIT = "test_n"
FRAMES_PER_CLIP = 10
"""Frames per clip (``frame_n`` of the released config), sampled at 1 fps."""
GT_SIZE = (256, 256)
"""(height, width) of the ground truth the benchmark scores (pixels)."""
METADATA_COLUMNS = ("vid", "uid", "split", "fid", "exp")


def media_folder(uid: str) -> str:
    """Folder of a row's media and masks: ``uid.rsplit('_', 2)[0]`` (released rule)."""
    return uid.rsplit("_", 2)[0]


@dataclass(frozen=True)
class BenchEntry:
    """One expression (row of ``metadata.csv``).

    Attributes:
        index: position among the rows of its split, in file order (0-based).
        vid: the ``vid`` column.
        uid: the ``uid`` column (unique per expression).
        split: one of :data:`SPLITS`.
        fid: object id; masks are under ``gt_mask/<folder>/fid_<fid>/``.
        expression: the referring expression (``exp``).
        folder: :func:`media_folder` of ``uid``.
    """

    index: int
    vid: str
    uid: str
    split: str
    fid: int
    expression: str
    folder: str

    @property
    def is_null(self) -> bool:
        """True for the null-reference split (the referred object is absent)."""
        return self.split == NULL_SPLIT


class RefAvsBench:
    """Ref-AVS Bench under ``root`` (see the module docstring for the layout).

    Args:
        root: the data directory holding ``metadata.csv``, ``media/`` and ``gt_mask/``.

    Raises:
        InputError: ``root`` or ``metadata.csv`` missing, or ``metadata.csv`` lacks a column.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.metadata_path = self.root / "metadata.csv"
        if not self.metadata_path.is_file():
            raise InputError(f"Ref-AVS Bench metadata not found: {self.metadata_path}")
        self.media_dir = self.root / "media"
        self.gt_dir = self.root / "gt_mask"
        with self.metadata_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in METADATA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{self.metadata_path} lacks column(s) {missing} (has {reader.fieldnames})")
            self._rows = list(reader)

    def entries(self, split: str, limit: int | None = None) -> list[BenchEntry]:
        """Rows of one split, in ``metadata.csv`` order.

        Args:
            split: one of :data:`SPLITS`.
            limit: keep only the first ``limit`` rows (None = all).

        Raises:
            InputError: unknown split, or a malformed ``fid``.
        """
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
        out: list[BenchEntry] = []
        for row in self._rows:
            if row["split"] != split:
                continue
            try:
                fid = int(row["fid"])
            except ValueError:
                raise InputError(
                    f"{self.metadata_path}: uid {row['uid']!r} has a non-integer fid {row['fid']!r}"
                ) from None
            out.append(BenchEntry(len(out), row["vid"], row["uid"], split, fid, row["exp"], media_folder(row["uid"])))
            if limit is not None and len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------------------------- paths
    def frame_paths(self, entry: BenchEntry) -> list[Path]:
        """``media/<folder>/frames/{0..9}.jpg``."""
        return [self.media_dir / entry.folder / "frames" / f"{i}.jpg" for i in range(FRAMES_PER_CLIP)]

    def audio_path(self, entry: BenchEntry) -> Path:
        """``media/<folder>/audio.wav``."""
        return self.media_dir / entry.folder / "audio.wav"

    def mask_paths(self, entry: BenchEntry) -> list[Path]:
        """``gt_mask/<folder>/fid_<fid>/0000{0..9}.png``."""
        return [self.gt_dir / entry.folder / f"fid_{entry.fid}" / f"0000{i}.png" for i in range(FRAMES_PER_CLIP)]

    # ------------------------------------------------------------------------------- data
    def load_frames(self, entry: BenchEntry) -> list[np.ndarray]:
        """The 10 frames as uint8 (H, W, 3) RGB arrays (sizes as stored).

        Raises:
            InputError: a frame is missing or unreadable (path named).
        """
        frames = []
        for path in self.frame_paths(entry):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise InputError(f"cannot read frame {path}")
            frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        return frames

    def load_audio(self, entry: BenchEntry) -> tuple[np.ndarray, int]:
        """The clip's audio as stored: ``(samples (N,) or (N, C), sample_rate_hz)``.

        Raises:
            InputError: missing or unreadable WAV (path named).
        """
        path = self.audio_path(entry)
        if not path.is_file():
            raise InputError(f"audio not found: {path}")
        try:
            rate, samples = wavfile.read(str(path))
        except (ValueError, OSError) as exc:
            raise InputError(f"cannot read audio {path}: {exc}") from exc
        return samples, int(rate)

    def load_audio_16k(self, entry: BenchEntry) -> np.ndarray:
        """The clip's audio as float32 16 kHz mono in [-1, 1] (:func:`refavs_ros.audio.to_mono_16k`)."""
        samples, rate = self.load_audio(entry)
        try:
            return to_mono_16k(samples, rate)
        except InputError as exc:
            raise InputError(f"{self.audio_path(entry)}: {exc}") from None

    def load_gt(self, entry: BenchEntry, size: tuple[int, int] | None = GT_SIZE) -> np.ndarray:
        """Ground-truth masks of the 10 frames.

        Args:
            entry: the row.
            size: (height, width) to resize to with the released rule (bilinear on the 3-channel
                image, then ``> 0``); None keeps the stored size (no resizing at all).

        Returns:
            bool (10, H, W). For the null split a missing mask folder reads as empty masks.

        Raises:
            InputError: a mask is missing (outside the null split) or unreadable.
        """
        masks = []
        for path in self.mask_paths(entry):
            if not path.is_file() and entry.is_null:
                masks.append(None)
                continue
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise InputError(f"cannot read ground-truth mask {path}")
            if size is not None:
                img = cv2.resize(img, (size[1], size[0]))
            masks.append(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) > 0)
        if any(m is None for m in masks):
            shape = size or next((m.shape for m in masks if m is not None), None) or self._frame_shape(entry)
            masks = [np.zeros(shape, bool) if m is None else m for m in masks]
        return np.stack(masks)

    def _frame_shape(self, entry: BenchEntry) -> tuple[int, int]:
        img = cv2.imread(str(self.frame_paths(entry)[0]), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"cannot read frame {self.frame_paths(entry)[0]}")
        return img.shape[:2]
