"""``refavs-bench2bag``: convert Ref-AVS Bench clips into rosbag2 bags for ``refavs-replay``.

Example::

    refavs-bench2bag /data/REFAVS bags/ --split test_s --limit 20
    refavs-replay bags/test_s --model official --weights ckpt_best_miou.pth --models-dir /data/refavs_models

One bag per row of the split, at ``OUT_DIR/<split>/<index:05d>_<uid>``, with the topics of
:func:`refavs_ros.rosio.bagio.write_scene_bag`: ``/camera/image_raw`` (rgb8 at the stored frame size),
``/audio`` (``AudioStamped``, int16, 16 kHz mono, 512-sample chunks), ``/refavs/command`` (the
expression), ``/refavs/gt_mask`` (mono8 0/255 at the frame size, same header as the frame) and
``/refavs/scene_info`` (JSON: ``split``, ``kind``, ``expression``, ``uid``, ``vid``, ``fid``, ...).

Timing: the audio starts at ``START_NS``; frame i is stamped ``START_NS + (i + 0.975) s``, so
the 1 fps frames are 1 s apart and the 0.975 s VGGish example ending at frame i covers audio
[i, i + 0.975) s -- the released clip pairs frame i with the i-th 0.96 s example, which starts at
0.96 i s (the online pairing drifts by at most 0.36 s at the last frame).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from refavs_ros.audio import to_mono_16k
from refavs_ros.errors import InputError, RefAvsError
from refavs_ros.eval.dataset import FRAMES_PER_CLIP, SPLITS, BenchEntry, RefAvsBench
from refavs_ros.rosio import bagio

PROG = "refavs-bench2bag"
START_NS = 1_000_000_000
"""Stamp (ns) of the first audio sample of every converted clip."""
FRAME_OFFSET_NS = 975_000_000
"""Stamp of frame 0 relative to the audio start (ns): one VGGish example (0.975 s)."""
FRAME_PERIOD_NS = 1_000_000_000
"""Frame spacing (ns): the dataset's 1 fps."""


@dataclass
class BenchScene:
    """A Ref-AVS Bench clip in the duck-typed scene form of :func:`bagio.write_scene_bag`.

    Attributes:
        frames: uint8 (10, H, W, 3) RGB (frames of another size than frame 0 are resized).
        frame_stamps_ns: int64 (10,) stamps (ns).
        audio: int16 (N,) 16 kHz mono.
        audio_start_ns: stamp (ns) of ``audio[0]``.
        gt_masks: bool (10, H, W) at the frame size.
        expression: the referring expression.
        meta: JSON-able description returned by :meth:`info`.
    """

    frames: np.ndarray
    frame_stamps_ns: np.ndarray
    audio: np.ndarray
    audio_start_ns: int
    gt_masks: np.ndarray
    expression: str
    meta: dict = field(default_factory=dict)

    def info(self) -> dict:
        """JSON for ``/refavs/scene_info``."""
        return dict(self.meta)


def bench_scene(bench: RefAvsBench, entry: BenchEntry) -> BenchScene:
    """Load one row as a :class:`BenchScene`.

    Raises:
        InputError: missing/unreadable media (path named).
    """
    frames = bench.load_frames(entry)
    h, w = frames[0].shape[:2]
    frames = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames]
    gt = bench.load_gt(entry, size=None)
    if gt.shape[1:] != (h, w):  # masks stored at another size: nearest keeps them binary
        gt = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0 for m in gt])
    samples, rate = bench.load_audio(entry)
    try:
        mono = to_mono_16k(samples, rate)
    except InputError as exc:
        raise InputError(f"{bench.audio_path(entry)}: {exc}") from None
    audio = np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)
    stamps = START_NS + FRAME_OFFSET_NS + FRAME_PERIOD_NS * np.arange(FRAMES_PER_CLIP, dtype=np.int64)
    meta = {
        "scene_id": entry.uid,
        "source": "ref-avs-bench",
        "split": entry.split,
        "kind": "null" if entry.is_null else "unlabelled",
        "expression": entry.expression,
        "uid": entry.uid,
        "vid": entry.vid,
        "fid": entry.fid,
        "folder": entry.folder,
        "index": entry.index,
        "num_frames": FRAMES_PER_CLIP,
        "width": int(w),
        "height": int(h),
        "sample_rate": 16000,
        "source_sample_rate": int(rate),
        "source_channels": 1 if np.asarray(samples).ndim == 1 else int(np.asarray(samples).shape[1]),
        "start_ns": START_NS,
        "frame_stamps_ns": [int(s) for s in stamps],
    }
    return BenchScene(np.stack(frames), stamps, audio, START_NS, gt, entry.expression, meta)


def bag_name(entry: BenchEntry) -> str:
    """``<index:05d>_<uid>`` with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return f"{entry.index:05d}_" + re.sub(r"[^A-Za-z0-9._-]", "_", entry.uid)


def convert(
    data_dir: str | Path,
    out_dir: str | Path,
    split: str,
    *,
    limit: int | None = None,
    storage: str = "mcap",
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Convert the rows of ``split`` into bags under ``out_dir/<split>/``.

    Returns:
        The bag paths, in ``metadata.csv`` order.

    Raises:
        InputError: bad data directory, split or media.
        BagError: a bag cannot be written (e.g. exists and ``overwrite`` is False).
    """
    bench = RefAvsBench(data_dir)
    entries = bench.entries(split, limit=limit)
    if not entries:
        raise InputError(f"split {split!r} has no rows in {bench.metadata_path}")
    root = Path(out_dir) / split
    root.mkdir(parents=True, exist_ok=True)
    items = entries
    if progress:
        from tqdm import tqdm

        items = tqdm(entries, desc=split, file=sys.stderr, unit="clip")
    paths = []
    for entry in items:
        paths.append(
            bagio.write_scene_bag(bench_scene(bench, entry), root / bag_name(entry), storage, overwrite=overwrite)
        )
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Convert Ref-AVS Bench clips to rosbag2 bags.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="Ref-AVS Bench root (metadata.csv, media/, gt_mask/)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (bags go to OUT_DIR/<split>/)")
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--limit", type=int, default=None, help="convert only the first N rows of the split")
    p.add_argument("--storage", choices=bagio.STORAGES, default="mcap", help="rosbag2 storage (default mcap)")
    p.add_argument("--overwrite", action="store_true", help="replace existing bags")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code (0 ok, 2 on a RefAvsError)."""
    args = build_parser().parse_args(argv)
    try:
        if args.limit is not None and args.limit < 1:
            raise InputError(f"--limit must be >= 1, got {args.limit}")
        paths = convert(
            args.data_dir,
            args.out_dir,
            args.split,
            limit=args.limit,
            storage=args.storage,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except RefAvsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {len(paths)} bag(s) to {Path(args.out_dir) / args.split}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
