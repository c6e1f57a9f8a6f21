"""Training of EEMC (``refavs-train``): one CPU process, or many processes under ``torchrun``.

Data (:class:`ClipSet`): synthetic scenes from :func:`refavs_ros.scenes.generate_scene`
(:func:`build_clips`) or Ref-AVS Bench rows (:func:`build_bench_clips`), turned into clip arrays
with exactly the preprocessing of the streaming predictor (``preprocess_image``, the log-mel
example of the 0.975 s of audio ending at each frame stamp), so training and deployment see the
same inputs. Text features are computed once per distinct expression with the frozen encoder.

Distributed training uses torch's own machinery: :func:`setup_distributed` reads the
``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``)
and joins the NCCL (GPUs) or gloo (CPUs) process group; the objective is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`; a
:class:`~torch.utils.data.DistributedSampler` gives every rank its share of a permutation that
changes every epoch (``set_epoch``). With W ranks of batch B, one optimiser step sees the same
clips as one process with batch W*B (the sampler interleaves the permutation) and the loss is a
mean of per-clip losses, so the averaged gradients are the same (BatchNorm aside: on CPUs it
normalises per rank unless frozen; on GPUs it is converted to SyncBatchNorm). Logging, the
progress bar, validation and checkpoints are rank 0's; checkpoints hold the model, optimiser,
schedule, AMP scaler, step/epoch/batch position and every rank's RNG states
(:func:`save_checkpoint`), and a resumed run continues the same loss curve.

Loss (paper App. B.1, Eq. 1, without Mask2Former's matcher and class term): for clips with a
referred object ``w_bce * bce + w_dice * dice`` on the mask logits (upsampled x2 to S/2), for
every clip a BCE "null term" on the presence logit; auxiliary terms (weight ``AUX_WEIGHT``): a
per-pixel category cross-entropy on the visual encoder's pixel features, a coarse G x G target
map, and (memory curriculum) the categories heard in the earlier steps predicted from the audio
cached memory C_A, so the memory carries what sounded when (see ``models/MODEL_CARD.md``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from refavs_ros import audio
from refavs_ros.errors import ConfigError, InputError
from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.eemc import EEMC, causal_memory
from refavs_ros.models.text import TextEncoder
from refavs_ros.predictor import PredictorConfig

AUX_WEIGHT = 0.5
"""Weight of the auxiliary losses: per-pixel category (training-only head, not part of the
model), the coarse target map (deep supervision of the integrated visual cues) and the
heard-history of the audio memory (training-only head)."""

IGNORE = 255
"""Category label of pixels without a category (Ref-AVS Bench clips): ignored by the loss."""

_ARRAYS = ("images", "mels", "masks", "present", "video", "categories", "heard")


# ------------------------------------------------------------------------------------- data


@dataclass
class ClipSet:
    """Preprocessed clips held in memory (or memory-mapped from a cache directory).

    Per-video arrays have V rows (a video may carry several expressions, as in Ref-AVS Bench);
    per-clip arrays have N rows, one per (video, expression).

    Attributes:
        images: uint8 (V, T, S, S, 3) network-size RGB frames.
        mels: float16 (V, T, 96, 64) log-mel example per frame (the 0.975 s ending at its stamp).
        masks: uint8 (N, T, S/2, S/2) ground truth at the loss resolution, 0/1.
        present: float32 (N,) 1 when the expression refers to an object, 0 for null.
        expressions: N expression strings.
        kinds: N expression kinds ("bench" for Ref-AVS Bench rows).
        video: int64 (N,) row of the per-video arrays of each clip; None = ``arange(N)``.
        categories: uint8 (V, T, S/4, S/4) category of every pixel (0 = background,
            1 + index in ``refavs_ros.scenes.CATEGORIES``, 255 = unknown) or None.
        heard: uint8 (V, T, C) 1 where a category sounds in the frame's audio example, or None.
    """

    images: np.ndarray
    mels: np.ndarray
    masks: np.ndarray
    present: np.ndarray
    expressions: list[str]
    kinds: list[str]
    video: np.ndarray | None = None
    categories: np.ndarray | None = None
    heard: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.expressions)
        if self.masks.shape[0] != n or self.present.shape[0] != n or len(self.kinds) != n:
            raise InputError(f"ClipSet: {n} expressions but masks {self.masks.shape[0]}, present "
                             f"{self.present.shape[0]}, kinds {len(self.kinds)}")
        if self.video is None and self.images.shape[0] != n:
            raise InputError(f"ClipSet: {self.images.shape[0]} videos for {n} clips needs a video index")

    def __len__(self) -> int:
        return len(self.expressions)

    @property
    def num_frames(self) -> int:
        """Frames per clip T."""
        return int(self.images.shape[1])

    def row(self, i: int) -> int:
        """Row of clip ``i`` in the per-video arrays."""
        return int(i) if self.video is None else int(self.video[i])

    def save(self, directory: Path) -> None:
        """Write the arrays (``.npy``) and the texts (``clips.json``) into ``directory``, atomically
        (a temporary sibling renamed at the end, so concurrent readers never see half a set)."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            value = getattr(self, name)
            if value is not None:
                np.save(tmp / f"{name}.npy", value)
        (tmp / "clips.json").write_text(json.dumps({"expressions": self.expressions, "kinds": self.kinds}))
        try:
            tmp.rename(directory)
        except OSError:  # another process finished first: keep theirs
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path) -> ClipSet:
        """Read a set written by :meth:`save` (arrays memory-mapped)."""
        directory = Path(directory)
        texts = json.loads((directory / "clips.json").read_text())
        arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r") if (directory / f"{n}.npy").is_file() else None
                  for n in _ARRAYS}
        return cls(**arrays, expressions=texts["expressions"], kinds=texts["kinds"])


def scene_to_arrays(scene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Preprocess one scene exactly as the predictor does.

    Args:
        scene: a :class:`refavs_ros.scenes.Scene`.
        size: network side S (pixels).

    Returns:
        images uint8 (T, S, S, 3), mels float16 (T, 96, 64), masks uint8 (T, S/2, S/2),
        categories uint8 (T, S/4, S/4) (0 = background, else 1 + category index).
    """
    from refavs_ros.engines.eemc import preprocess_image
    from refavs_ros.scenes import CATEGORIES

    images = np.stack([(preprocess_image(f, size).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8) for f in scene.frames])
    wave = scene.audio.astype(np.float32) / 32768.0
    ns_per_sample = 1_000_000_000 // audio.SAMPLE_RATE
    mels = [
        audio.example_ending_at(wave[: max(0, (int(stamp) - int(scene.audio_start_ns)) // ns_per_sample)])
        for stamp in scene.frame_stamps_ns
    ]
    half = size // 2
    masks = np.stack(
        [(cv2.resize(m.astype(np.float32), (half, half), interpolation=cv2.INTER_AREA) > 0.5) for m in scene.gt_masks]
    ).astype(np.uint8)
    lut = np.zeros(256, np.uint8)  # instance index (int8, -1 = background) -> category id
    for j, obj in enumerate(scene.objects):
        lut[j] = 1 + CATEGORIES.index(obj["category"])
    quarter = size // 4
    cats = np.stack(
        [cv2.resize(lut[m.astype(np.uint8)], (quarter, quarter), interpolation=cv2.INTER_NEAREST) for m in scene.instance_map]
    )
    return images, np.stack(mels).astype(np.float16), masks, cats


def heard_categories(scene) -> np.ndarray:
    """Which categories sound in each frame's audio example: uint8 (T, C), C = len(CATEGORIES).

    The example of a frame is the 0.975 s ending at its stamp; it is assigned to the 1-s slot
    holding its centre (at 1 fps frame i hears slot i, see docs/scenes.md).
    """
    from refavs_ros.scenes import CATEGORIES

    ends = (np.asarray(scene.frame_stamps_ns, np.int64) - int(scene.audio_start_ns)) / 1e9
    num_slots = int(round(scene.audio.shape[0] / scene.sample_rate))
    slots = np.clip(np.floor(ends - audio.EXAMPLE_SAMPLES / audio.SAMPLE_RATE / 2).astype(int), 0, num_slots - 1)
    out = np.zeros((len(ends), len(CATEGORIES)), np.uint8)
    for obj in scene.objects:
        on = np.isin(slots, obj["sounding_slots"])
        out[on, CATEGORIES.index(obj["category"])] = 1
    return out


def select_indices(split: str, count: int, seed: int, kind_weights: dict[str, float] | None = None,
                   start: int = 0) -> list[int]:
    """Scene indices of ``split`` for a training set, re-weighting expression kinds.

    Without weights: ``start .. start + count - 1``. With weights, index i is kept with
    probability ``kind_weights[kind_for(i)] / max(weights)`` (missing kinds weigh 1), from a
    stream seeded by (split, seed), until ``count`` are kept.

    Raises:
        ConfigError: a weight is negative or names an unknown kind, or all are zero.
    """
    from refavs_ros.scenes import EXPRESSION_KINDS, kind_for
    from refavs_ros.scenes.planner import derive_seed

    if not kind_weights:
        return list(range(start, start + count))
    bad = {k: v for k, v in kind_weights.items() if k not in EXPRESSION_KINDS or v < 0}
    if bad or max(kind_weights.values()) <= 0:
        raise ConfigError(f"kind weights must be >= 0 for kinds of {EXPRESSION_KINDS}, got {kind_weights}")
    top = max(max(kind_weights.values()), 1.0 if len(kind_weights) < len(EXPRESSION_KINDS) else 0.0)
    rng = np.random.default_rng(derive_seed("select", split, seed))
    out, i = [], start
    while len(out) < count:
        if rng.random() < kind_weights.get(kind_for(split, i, seed), 1.0) / top:
            out.append(i)
        i += 1
    return out


def _make_one(args: tuple) -> tuple:
    from refavs_ros.scenes import SceneConfig, generate_scene

    split, index, seed, scene_kw, size = args
    scene = generate_scene(split, index, seed, SceneConfig(**scene_kw))
    images, mels, masks, cats = scene_to_arrays(scene, size)
    return images, mels, masks, cats, heard_categories(scene), scene.target is not None, scene.expression, scene.kind


def build_clips(
    split: str,
    count: int,
    seed: int,
    size: int,
    scene_kw: dict,
    workers: int = 1,
    progress: bool = True,
    kind_weights: dict[str, float] | None = None,
) -> ClipSet:
    """Generate ``count`` scenes of ``split`` and preprocess them (parallel over ``workers``).

    Args:
        split, seed: scene split and benchmark seed. count: scenes.
        size: network side S. scene_kw: :class:`refavs_ros.scenes.SceneConfig` fields (noise and
            occlusion options included). workers: processes (fork).
        progress: tqdm bar. kind_weights: see :func:`select_indices`.
    """
    jobs = [(split, i, seed, scene_kw, size) for i in select_indices(split, count, seed, kind_weights)]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            rows = list(tqdm(pool.imap(_make_one, jobs, chunksize=8), total=count, desc=f"scenes {split}", disable=not progress))
    else:
        rows = [_make_one(j) for j in tqdm(jobs, desc=f"scenes {split}", disable=not progress)]
    images, mels, masks, cats, heard, present, exprs, kinds = zip(*rows)
    return ClipSet(
        images=np.stack(images), mels=np.stack(mels), masks=np.stack(masks), present=np.array(present, np.float32),
        expressions=list(exprs), kinds=list(kinds), categories=np.stack(cats), heard=np.stack(heard),
    )


def build_bench_clips(root: str | Path, split: str, size: int, limit: int | None = None,
                      progress: bool = True) -> ClipSet:
    """Ref-AVS Bench rows of ``split`` as a :class:`ClipSet` (one video row per media folder).

    Frames: the 10 JPEGs through ``preprocess_image`` at ``size``. Audio: 16 kHz mono; frame i
    (second i of the clip) is stamped at the end of its second, so its log-mel example is the
    0.975 s ending at ``(i + 1)`` s, as in the synthetic scenes and the streaming predictor.
    Masks: the released ground-truth rule (bilinear resize of the PNG, then ``> 0``) at S/2.
    No category map or heard labels (those losses are off for this data).

    Args:
        root: the data directory (``metadata.csv``, ``media/``, ``gt_mask/``).
        split: ``train``, ``val``, ``test_s``, ``test_u`` or ``test_n``.
        size: network side S. limit: first rows only. progress: tqdm bar.

    Raises:
        InputError: missing or unreadable files (named), or no rows in the split.
    """
    from refavs_ros.engines.eemc import preprocess_image
    from refavs_ros.eval.dataset import FRAMES_PER_CLIP, RefAvsBench

    bench = RefAvsBench(root)
    entries = bench.entries(split, limit)
    if not entries:
        raise InputError(f"Ref-AVS Bench split {split!r} under {root} has no rows")
    folders: dict[str, int] = {}
    images, mels = [], []
    video, masks = [], []
    half = size // 2
    for e in tqdm(entries, desc=f"bench {split}", disable=not progress):
        if e.folder not in folders:
            folders[e.folder] = len(folders)
            frames = bench.load_frames(e)
            images.append(np.stack([(preprocess_image(f, size).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
                                    for f in frames]))
            wave = bench.load_audio_16k(e)
            mels.append(np.stack([audio.example_ending_at(wave[: (i + 1) * audio.SAMPLE_RATE])
                                  for i in range(FRAMES_PER_CLIP)]).astype(np.float16))
        video.append(folders[e.folder])
        masks.append(bench.load_gt(e, size=(half, half)).astype(np.uint8))
    return ClipSet(
        images=np.stack(images), mels=np.stack(mels), masks=np.stack(masks),
        present=np.array([0.0 if e.is_null else 1.0 for e in entries], np.float32),
        expressions=[e.expression for e in entries], kinds=["bench-null" if e.is_null else "bench" for e in entries],
        video=np.asarray(video, np.int64),
    )


def encode_expressions(encoder: TextEncoder, expressions: Iterable[str], batch: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Text features of each distinct expression: {text: (hidden (L, D), mask (L,))}."""
    unique = sorted(set(expressions))
    out = {}
    for i in range(0, len(unique), batch):
        chunk = unique[i : i + batch]
        hidden, mask = encoder.encode(chunk)
        for t, h, m in zip(chunk, hidden, mask):
            out[t] = (h, m)
    return out


def memory_every(fps: float, frame_stride_sec: float = PredictorConfig.frame_stride_sec) -> int:
    """Steps between two cached-memory entries for a clip at ``fps`` Hz.

    The streaming predictor commits a frame when at least ``frame_stride_sec`` passed since the
    last entry (``StreamingPredictor.step``; default: :class:`PredictorConfig`'s, 1 s); with
    frames every 1/fps s that is every ``ceil(fps * frame_stride_sec)`` steps (1 for fps <= 1 Hz
    with the 1-s stride).

    Raises:
        ConfigError: fps <= 0 or frame_stride_sec < 0.
    """
    if not fps > 0 or frame_stride_sec < 0:
        raise ConfigError(f"fps must be > 0 and frame_stride_sec >= 0, got {fps} and {frame_stride_sec}")
    return max(1, math.ceil(fps * frame_stride_sec - 1e-9))


def memory_entries(num_steps: int, every: int, first: int = 0) -> np.ndarray:
    """Which of ``num_steps`` steps enter the cached memory: bool (num_steps,), True at
    ``first, first + every, ...`` (the streaming rule of :func:`memory_every` when the stream's
    first entry is step ``first``)."""
    steps = np.arange(num_steps)
    return (steps >= first) & ((steps - first) % max(1, int(every)) == 0)


class ClipDataset(Dataset):
    """:class:`ClipSet` clips as training samples (a torch ``Dataset`` for ``DistributedSampler``).

    With ``frames`` set, sample i uses that many frames of its clip, a random increasing subset
    drawn from a stream seeded by (seed, epoch, i): the same on every rank and in every process
    layout, new every epoch (:meth:`set_epoch`). The audio of every step is always given, so the
    audio cached memory spans the whole clip as in streaming.

    With ``memory_every`` > 1 (clips faster than one memory entry per second, see
    :func:`memory_every`), only every ``memory_every``-th step enters the cached memory, as in
    the streaming predictor, starting at a step drawn per sample and epoch from
    ``0..memory_every-1``: a camera's frames fall anywhere relative to the sounds, so the
    entries' audio examples are sometimes aligned with a sound's start and sometimes straddle
    two (item ``memory_entries`` bool (T,)).

    Item: dict of tensors ``images`` uint8 (T', S, S, 3), ``frame_index`` int64 (T'), ``mels``
    float32 (T, 96, 64), ``masks`` float32 (T', S/2, S/2), ``present`` float32 (), ``hidden``
    float32 (L, D), ``tmask`` float32 (L,), and when the set has them ``categories`` int64
    (T', S/4, S/4) and ``heard`` float32 (T, C).

    Raises:
        InputError: expressions without text features. ConfigError: ``memory_every`` < 1.
    """

    def __init__(self, clips: ClipSet, text: dict, frames: int | None = None, seed: int = 0,
                 memory_every: int = 1) -> None:
        missing = sorted({e for e in clips.expressions if e not in text})
        if missing:
            raise InputError(f"no text features for {len(missing)} expressions, e.g. {missing[:3]}")
        self.clips, self.text, self.seed, self.epoch = clips, text, int(seed), 0
        self.frames = None if frames is None or frames >= clips.num_frames else int(frames)
        if int(memory_every) < 1:
            raise ConfigError(f"memory_every must be >= 1, got {memory_every}")
        self.memory_every = int(memory_every)

    def set_epoch(self, epoch: int) -> None:
        """Draw new frame subsets (call with the sampler's epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def frame_subset(self, i: int) -> np.ndarray:
        """Frame indices of sample ``i`` this epoch: int64 (T',) increasing."""
        t = self.clips.num_frames
        if self.frames is None:
            return np.arange(t)
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        return np.sort(rng.choice(t, size=self.frames, replace=False))

    def memory_steps(self, i: int) -> np.ndarray:
        """Memory entries of sample ``i`` this epoch: bool (T,) (all True with ``memory_every`` 1)."""
        first = int(np.random.default_rng((self.seed, self.epoch, int(i), 1)).integers(self.memory_every))
        return memory_entries(self.clips.num_frames, self.memory_every, first)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        c, v = self.clips, self.clips.row(i)
        sel = self.frame_subset(i)
        hidden, tmask = self.text[c.expressions[i]]
        item = {
            "images": torch.from_numpy(np.ascontiguousarray(c.images[v][sel])),
            "frame_index": torch.from_numpy(sel.astype(np.int64)),
            "mels": torch.from_numpy(np.asarray(c.mels[v], np.float32)),
            "masks": torch.from_numpy(np.asarray(c.masks[i][sel], np.float32)),
            "present": torch.tensor(float(c.present[i])),
            "hidden": torch.from_numpy(np.asarray(hidden, np.float32)),
            "tmask": torch.from_numpy(np.asarray(tmask, np.float32)),
        }
        if self.memory_every > 1:
            item["memory_entries"] = torch.from_numpy(self.memory_steps(i))
        if c.categories is not None:
            item["categories"] = torch.from_numpy(np.asarray(c.categories[v][sel], np.int64))
        if c.heard is not None:
            item["heard"] = torch.from_numpy(np.asarray(c.heard[v], np.float32))
        return item


def clip_batch(
    clips: ClipSet, idx: np.ndarray, text: dict, device: torch.device, frames: np.ndarray | None = None
) -> dict[str, Tensor]:
    """A batch of the clips ``idx`` (all frames, or the frame indices ``frames``) on ``device``,
    as :class:`EEMCObjective` takes it (images uint8 (B, T', S, S, 3), ...)."""
    ds = ClipDataset(clips, text)
    items = [ds[int(i)] for i in idx]
    if frames is not None:
        for it, i in zip(items, idx):
            v = clips.row(int(i))
            it["images"] = torch.from_numpy(np.ascontiguousarray(clips.images[v][frames]))
            it["frame_index"] = torch.from_numpy(np.asarray(frames, np.int64))
            it["masks"] = torch.from_numpy(np.asarray(clips.masks[int(i)][frames], np.float32))
            if "categories" in it:
                it["categories"] = torch.from_numpy(np.asarray(clips.categories[v][frames], np.int64))
    return _to_device(torch.utils.data.default_collate(items), device)


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ------------------------------------------------------------------------------------ loss


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft dice loss per frame: logits/target (N, H, W) -> (N,)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


class EEMCObjective(nn.Module):
    """EEMC plus its training-only heads; ``forward(batch)`` returns the loss (what DDP wraps).

    Args:
        model: the EEMC being trained.
        num_categories: categories of the per-pixel auxiliary head (None = no such head; the
            data then needs no ``categories``).
        memory_aux: add the heard-history head on the audio cached memory (needs ``heard``).
        mask_weights: (w_bce, w_dice) of the mask loss (paper App. B.1: 5, 5; tiny: 1, 1).
    """

    def __init__(self, model: EEMC, num_categories: int | None = None, memory_aux: bool = False,
                 mask_weights: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        self.model = model
        d = model.cfg.d_model
        self.aux_head = nn.Conv2d(d, 1 + num_categories, 1) if num_categories else None
        self.memory_head = nn.Linear(d, num_categories) if (memory_aux and num_categories) else None
        self.mask_weights = tuple(float(w) for w in mask_weights)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean over the batch's clips of each clip's loss (see the module docstring).

        Args:
            batch: a collated :class:`ClipDataset` batch on the model's device.

        Returns:
            (loss (), per-term batch means (detached) {"bce", "dice", "null", "aux", "coarse",
            "memory"}).
        """
        images = batch["images"].permute(0, 1, 4, 2, 3).float().div(255.0)  # (B, T', 3, S, S)
        entries = batch.get("memory_entries")  # (B, T) bool, or None: every step is an entry
        logits, presence, extra = self.model(images, batch["mels"], batch["hidden"], batch["tmask"],
                                             return_aux=True, frame_index=batch["frame_index"],
                                             memory_entries=entries)
        b, t = logits.shape[:2]
        logits, presence = logits.float(), presence.float()
        up = F.interpolate(logits.flatten(0, 1)[:, None], scale_factor=2.0, mode="bilinear", align_corners=False)[:, 0]
        target = batch["masks"].flatten(0, 1)
        pres = batch["present"].float()  # (B,)
        bce = F.binary_cross_entropy_with_logits(up, target, reduction="none").mean((1, 2)).view(b, t).mean(1) * pres
        dice = dice_loss(up, target).view(b, t).mean(1) * pres
        null = F.binary_cross_entropy_with_logits(presence, pres[:, None].expand(b, t), reduction="none").mean(1)
        coarse = extra["coarse"].float().flatten(0, 1)  # (BT', G, G) vs the GT area fraction per cell
        coarse_gt = F.adaptive_avg_pool2d(target[:, None], coarse.shape[-1])[:, 0]
        coarse_l = F.binary_cross_entropy_with_logits(coarse, coarse_gt, reduction="none").mean((1, 2)).view(b, t).mean(1) * pres
        zero = logits.new_zeros(b)
        aux = zero
        if self.aux_head is not None:
            cats = batch["categories"].flatten(0, 1)  # (BT', h, w)
            ce = F.cross_entropy(self.aux_head(extra["pixel"].flatten(0, 1)).float(), cats, ignore_index=IGNORE,
                                 reduction="none").view(b, -1)
            valid = (cats != IGNORE).view(b, -1).float()
            aux = (ce * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        memory = zero
        if self.memory_head is not None:
            heard = batch["heard"].float()  # (B, T, C)
            history = causal_memory(heard[:, :, None], None, entries)[:, :, 0]  # fraction of earlier entries
            fi = batch["frame_index"]
            rows = torch.arange(b, device=fi.device)[:, None]
            want = history[rows, fi]  # (B, T', C)
            pred = self.memory_head(extra["memory_audio"][:, :, 0].float())  # (B, T', C)
            steps = entries.long() if entries is not None else torch.ones_like(heard[:, :, 0], dtype=torch.long)
            earlier = steps.cumsum(1) - steps  # (B, T) memory entries strictly before each step
            has_past = (earlier.gather(1, fi) > 0).float()  # C_A is 0 (no information) before the first entry
            per = F.binary_cross_entropy_with_logits(pred, want, reduction="none").mean(2)
            memory = (per * has_past).sum(1) / has_past.sum(1).clamp(min=1.0)
        w_bce, w_dice = self.mask_weights
        per_clip = w_bce * bce + w_dice * dice + null + AUX_WEIGHT * (aux + coarse_l + memory)
        parts = {"bce": bce, "dice": dice, "null": null, "aux": aux, "coarse": coarse_l, "memory": memory}
        return per_clip.mean(), {k: v.detach().mean() for k, v in parts.items()}


def compute_loss(model: EEMC, batch: dict[str, Tensor], aux_head: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
    """Loss of one batch (:func:`clip_batch`) for ``model`` with an optional category head.

    Returns:
        (loss, {term: float}).
    """
    obj = EEMCObjective(model)
    obj.aux_head = aux_head
    loss, parts = obj(batch)
    return loss, {k: float(v) for k, v in parts.items()}


def make_aux_head(cfg: EEMCConfig) -> nn.Module:
    """1x1 conv from pixel features (d) to 1 + number of scene categories (0 = background)."""
    from refavs_ros.scenes import CATEGORIES

    return nn.Conv2d(cfg.d_model, 1 + len(CATEGORIES), 1)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_clips(
    model: EEMC, clips: ClipSet, text: dict, batch_size: int = 16, beta: float | None = None, zero_audio: bool = False,
    memory_every: int = 1,
) -> dict[str, dict[str, float]]:
    """Quick per-frame J / S by expression kind at the loss resolution (validation during training).

    Per frame, with :mod:`refavs_ros.eval.metrics`: J of ``sigmoid(logits)`` gated by presence
    > 0.5 (empty GT: TN / all); S of null clips. ``memory_every``: steps between cached-memory
    entries, the first step being one (the streaming predictor's rule, :func:`memory_every`).
    Returns {kind: {"J": ..., "S": ..., "n": clips}}.
    """
    from refavs_ros.eval import metrics

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_kind: dict[str, list[float]] = defaultdict(list)
    s_vals: dict[str, list[float]] = defaultdict(list)
    silence = audio.example_ending_at(np.zeros(0, np.float32))
    entries = torch.from_numpy(memory_entries(clips.num_frames, memory_every)) if memory_every > 1 else None
    for start in range(0, len(clips), batch_size):
        idx = np.arange(start, min(start + batch_size, len(clips)))
        batch = clip_batch(clips, idx, text, device)
        if zero_audio:
            batch["mels"][:] = torch.from_numpy(silence).to(device)
        images = batch["images"].permute(0, 1, 4, 2, 3).float().div(255.0)
        logits, presence = model(images, batch["mels"], batch["hidden"], batch["tmask"], beta=beta,
                                 memory_entries=entries)
        up = F.interpolate(logits.float().flatten(0, 1)[:, None], scale_factor=2.0, mode="bilinear", align_corners=False)
        gate = (presence.float().flatten().sigmoid() > 0.5).float()[:, None, None]
        prob = (up[:, 0].sigmoid() * gate).cpu().numpy()  # (BT, S/2, S/2)
        gt = batch["masks"].flatten(0, 1).cpu().numpy() > 0.5
        t = logits.shape[1]
        for k, i in enumerate(idx):
            frames = range(k * t, (k + 1) * t)
            per_kind[clips.kinds[i]].append(float(np.mean([metrics.jaccard(prob[f], gt[f]) for f in frames])))
            if clips.present[i] < 0.5:
                s_vals[clips.kinds[i]].append(float(np.mean([metrics.s_score(prob[f]) for f in frames])))
    model.train(was_training)
    return {
        k: {"J": float(np.mean(v)), "S": float(np.mean(s_vals[k])) if s_vals[k] else float("nan"), "n": len(v)}
        for k, v in sorted(per_kind.items())
    }


# ------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class DistContext:
    """Where this process runs.

    Attributes:
        rank: global rank (0 .. world - 1). world: processes in the job.
        local_rank: rank on this node (picks the GPU). device: torch device of this rank.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 (logs, progress bar, validation, checkpoints)."""
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group when started by ``torchrun`` (env ``WORLD_SIZE`` > 1).

    Backend: NCCL when this rank uses a GPU, gloo otherwise. Device: ``"auto"`` = the local
    rank's GPU when CUDA is available, else the CPU; ``"cpu"``; ``"cuda"`` (local rank's GPU).

    Raises:
        ConfigError: ``device="cuda"`` without CUDA, or an unknown device string.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    dev = torch.device("cuda", local % max(1, torch.cuda.device_count())) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local, dev)


def cleanup_distributed() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


class _SkipSampler(Sampler):
    """The first ``skip`` indices of ``sampler`` dropped (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, int(skip)

    def __iter__(self) -> Iterator[int]:
        for k, i in enumerate(self.sampler):
            if k >= self.skip:
                yield i

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


# -------------------------------------------------------------------------------- schedule


class CosineSchedule:
    """Linear warm-up then cosine decay over the run's progress.

    ``lr = peak * min(1, (step + 1) / warmup) * (1 + cos(pi * progress)) / 2`` with
    ``progress = max(step / steps, elapsed / budget)``: a time-limited run still ends with a
    fully decayed learning rate when the machine is slower than planned.

    Args:
        peak: peak learning rate. warmup: warm-up steps. steps: planned optimiser steps.
        budget_s: time budget in seconds (None = steps only).
    """

    def __init__(self, peak: float, warmup: int, steps: int, budget_s: float | None = None) -> None:
        self.peak, self.warmup, self.steps, self.budget_s = float(peak), int(warmup), int(steps), budget_s

    def progress(self, step: int, elapsed_s: float) -> float:
        """Fraction of the run done (>= 1: stop)."""
        frac = step / max(1, self.steps)
        if self.budget_s:
            frac = max(frac, elapsed_s / self.budget_s)
        return frac

    def lr(self, step: int, progress: float) -> float:
        """Learning rate of optimiser step ``step`` at ``progress``."""
        return self.peak * min(1.0, (step + 1) / max(1, self.warmup)) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def state_dict(self) -> dict:
        """Its settings (saved in checkpoints)."""
        return {"peak": self.peak, "warmup": self.warmup, "steps": self.steps, "budget_s": self.budget_s}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.peak, self.warmup, self.steps, self.budget_s = state["peak"], state["warmup"], state["steps"], state["budget_s"]


# ------------------------------------------------------------------------------ checkpoints


CHECKPOINT_FORMAT = "refavs_ros.train-checkpoint.v1"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, ctx: DistContext, state: dict) -> None:
    """Write a resumable checkpoint (rank 0 writes; every rank must call: RNG states are gathered).

    Args:
        path: output ``.pt`` file (written to a temporary name, then renamed).
        ctx: the distributed context.
        state: ``objective`` / ``optimizer`` / ``scaler`` state dicts, ``schedule``, ``step``,
            ``epoch``, ``batch_in_epoch``, ``elapsed_s``, ``world``, ``meta`` (any JSON).
    """
    rngs = [None] * ctx.world
    if ctx.distributed:
        dist.all_gather_object(rngs, _rng_state())
    else:
        rngs = [_rng_state()]
    if ctx.main:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"format": CHECKPOINT_FORMAT, **state, "rng": rngs}, tmp)
        tmp.replace(path)
    barrier(ctx)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU).

    Raises:
        InputError: missing, unreadable or not a training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for corrupt files
        raise InputError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a refavs-train checkpoint")
    return state


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest ``step*.pt`` in ``directory`` (None if there is none)."""
    found = sorted(Path(directory).glob("step*.pt")) if directory and Path(directory).is_dir() else []
    return found[-1] if found else None


# ------------------------------------------------------------------------------------ train


@dataclass
class TrainOptions:
    """Settings of :func:`train`.

    Attributes:
        steps: optimiser steps (the plan; ``max_minutes`` may stop earlier).
        batch_size: clips per rank per micro-batch (global batch = batch_size * accum_steps *
            world size).
        accum_steps: micro-batches accumulated per optimiser step (gradient accumulation).
        lr: peak learning rate (AdamW). weight_decay: AdamW weight decay.
        warmup: warm-up steps (None = min(200, steps // 10)).
        clip_grad: gradient-norm clip (0 = off).
        seed: seed of the sampler's permutations and the frame subsets.
        max_minutes: wall-time budget of the optimisation (None = steps only).
        precision: "auto" (bf16 on GPUs that support it, else fp16 on GPUs; fp32 on CPUs),
            "fp32", "bf16" or "fp16" (the last two need CUDA).
        freeze_bn: BatchNorm layers keep their running statistics (fine-tuning; exact
            equivalence of DDP and one big batch on CPUs, where SyncBatchNorm is unavailable).
        sync_bn: convert BatchNorm to SyncBatchNorm when training on several GPUs.
        checkpoint_dir: where resumable checkpoints go (None = none).
        checkpoint_every: optimiser steps between checkpoints.
        resume: checkpoint to resume from (None = fresh).
        progress: tqdm bar on rank 0. log_every: steps per log entry.
        loader_workers: DataLoader worker processes per rank.
    """

    steps: int
    batch_size: int = 16
    accum_steps: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int | None = None
    clip_grad: float = 1.0
    seed: int = 0
    max_minutes: float | None = None
    precision: str = "auto"
    freeze_bn: bool = False
    sync_bn: bool = True
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 500
    resume: Path | None = None
    progress: bool = True
    log_every: int = 50
    loader_workers: int = 0


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = fp32, no autocast).

    Raises:
        ConfigError: unknown name, or bf16/fp16 asked for on a CPU.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ConfigError(f"precision {precision} needs a CUDA device; CPUs train in fp32")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _train_mode(module: nn.Module, freeze_bn: bool) -> None:
    module.train()
    if freeze_bn:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(
    objective: nn.Module,
    dataset: ClipDataset,
    opts: TrainOptions,
    ctx: DistContext | None = None,
    on_log: Callable[[dict], None] | None = None,
    meta: dict | None = None,
) -> list[dict[str, float]]:
    """Optimise ``objective`` (e.g. :class:`EEMCObjective`) on ``dataset``, in one process or DDP.

    AdamW with :class:`CosineSchedule`; every optimiser step takes ``accum_steps``
    micro-batches of ``batch_size`` clips per rank from a :class:`DistributedSampler` (shuffled,
    re-permuted every epoch, ``drop_last``); DDP synchronises gradients on the last micro-batch
    only (``no_sync``); autocast in bf16/fp16 on GPUs (``GradScaler`` for fp16), fp32 on CPUs.
    Rank 0 shows the progress bar, calls ``on_log`` and writes checkpoints every
    ``checkpoint_every`` steps (and at the end) into ``checkpoint_dir`` as ``stepNNNNNN.pt``.

    Args:
        objective: module whose ``forward(batch)`` returns ``(loss, parts)``; moved to the
            context's device; parameters with ``requires_grad`` are optimised.
        dataset: the training samples. opts: :class:`TrainOptions`.
        ctx: from :func:`setup_distributed` (None = one CPU process).
        on_log: called on rank 0 with each log entry.
        meta: JSON-able extras stored in checkpoints (command, config, data).

    Returns:
        The log: one dict per ``log_every`` steps with the mean of every loss term over those
        steps and all ranks, ``step``, ``lr``, ``epoch`` and ``minutes``.

    Raises:
        ConfigError: bad options (e.g. fewer batches per epoch than accumulation steps).
    """
    ctx = ctx or DistContext()
    device = ctx.device
    autocast_dtype = resolve_precision(opts.precision, device)
    if opts.batch_size < 1 or opts.accum_steps < 1 or opts.steps < 0:
        raise ConfigError("batch_size and accum_steps must be >= 1 and steps >= 0")
    objective.to(device)
    if ctx.distributed and device.type == "cuda" and opts.sync_bn and not opts.freeze_bn:
        objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    warmup = opts.warmup if opts.warmup is not None else min(200, max(1, opts.steps // 10))
    sched = CosineSchedule(opts.lr, warmup, opts.steps, opts.max_minutes * 60 if opts.max_minutes else None)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    step = epoch = batch_in_epoch = 0
    elapsed_before = 0.0
    if opts.resume is not None:
        state = load_checkpoint(opts.resume)
        objective.load_state_dict(state["objective"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        elapsed_before = float(state["elapsed_s"])
        if state.get("world") != ctx.world:
            batch_in_epoch = 0  # another layout: restart the epoch's order (the permutation differs)
            epoch += 1
        else:
            _set_rng_state(state["rng"][ctx.rank])
        sched.steps = max(sched.steps, opts.steps)
    net: nn.Module = objective
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
        )
    sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=opts.seed,
                                 drop_last=True)
    per_epoch = len(sampler) // opts.batch_size
    if per_epoch < opts.accum_steps:
        raise ConfigError(f"{len(dataset)} clips give {per_epoch} batches of {opts.batch_size} per rank and epoch, "
                          f"fewer than accum_steps={opts.accum_steps}")
    per_epoch -= per_epoch % opts.accum_steps  # whole optimiser steps per epoch

    def state_now() -> dict:
        return {
            "objective": objective.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "step": step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "elapsed_s": elapsed_before + time.monotonic() - start,
            "world": ctx.world, "options": {k: str(v) for k, v in asdict(opts).items()}, "meta": meta or {},
        }

    _train_mode(objective, opts.freeze_bn)
    log: list[dict[str, float]] = []
    running: dict[str, float] = defaultdict(float)
    count = 0
    start = time.monotonic()
    bar = tqdm(total=opts.steps, initial=step, desc="train", disable=not (opts.progress and ctx.main))
    amp = (torch.autocast(device_type="cuda", dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    done = False
    while not done and step < opts.steps:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=opts.batch_size,
                            sampler=_SkipSampler(sampler, batch_in_epoch * opts.batch_size), drop_last=True,
                            num_workers=opts.loader_workers, pin_memory=device.type == "cuda")
        batches = iter(loader)
        while batch_in_epoch < per_epoch:
            elapsed = elapsed_before + time.monotonic() - start
            if ctx.distributed and sched.budget_s:  # every rank stops at the same step
                t = torch.tensor([elapsed], dtype=torch.float64, device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                elapsed = float(t)
            progress = sched.progress(step, elapsed)
            if step >= opts.steps or progress >= 1.0:
                if step < opts.steps and ctx.main:
                    bar.write(f"time budget of {opts.max_minutes} min used at step {step}")
                done = True
                break
            lr = sched.lr(step, progress)
            for group in opt.param_groups:
                group["lr"] = lr
            parts_sum: dict[str, Tensor] = {}
            for k in range(opts.accum_steps):
                micro = _to_device(next(batches), device)
                sync = k == opts.accum_steps - 1
                with (net.no_sync() if ctx.distributed and not sync else contextlib.nullcontext()):
                    with amp:
                        loss, parts = net(micro)
                    scaler.scale(loss / opts.accum_steps).backward()
                for name, v in {"loss": loss.detach(), **parts}.items():
                    parts_sum[name] = parts_sum.get(name, 0.0) + v.float() / opts.accum_steps
            scaler.unscale_(opt)
            if opts.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, opts.clip_grad)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            batch_in_epoch += opts.accum_steps
            names = sorted(parts_sum)
            values = torch.stack([parts_sum[n].reshape(()) for n in names])
            if ctx.distributed:
                dist.all_reduce(values)
                values /= ctx.world
            for n, v in zip(names, values.tolist()):
                running[n] += v
            count += 1
            bar.update(1)
            if step % opts.log_every == 0:
                entry = {k: v / count for k, v in running.items()} | {
                    "step": step, "lr": lr, "epoch": epoch, "minutes": (elapsed_before + time.monotonic() - start) / 60}
                log.append(entry)
                running.clear()
                count = 0
                if ctx.main:
                    bar.set_postfix(loss=f"{entry['loss']:.3f}", null=f"{entry['null']:.3f}")
                    if on_log is not None:
                        on_log(entry)
            if opts.checkpoint_dir is not None and step % opts.checkpoint_every == 0:
                save_checkpoint(Path(opts.checkpoint_dir) / f"step{step:06d}.pt", ctx, state_now())
        else:
            epoch += 1
            batch_in_epoch = 0
    bar.close()
    if count:
        log.append({k: v / count for k, v in running.items()} | {
            "step": step, "lr": lr, "epoch": epoch, "minutes": (elapsed_before + time.monotonic() - start) / 60})
        if ctx.main and on_log is not None:
            on_log(log[-1])
    if opts.checkpoint_dir is not None and step % opts.checkpoint_every != 0:
        save_checkpoint(Path(opts.checkpoint_dir) / f"step{step:06d}.pt", ctx, state_now())
    objective.eval()
    return log


# ------------------------------------------------------------------- official model (--init)

OFFICIAL_TRAINABLE = ("audio_proj", "text_proj", "prompt_proj", "avs_adapt", "ref_avs_attn")
"""Parameter-name parts the released code trains (``configs/config.py`` ``train_params``); the
Swin backbone, Mask2Former and the three fusion attentions stay frozen."""


def build_official_bench_clips(root: str | Path, split: str, parts, limit: int | None = None,
                               progress: bool = True) -> tuple[ClipSet, dict]:
    """Ref-AVS Bench rows encoded for the published model (fine-tuning with ``--profile official``).

    Per video: the image processor's normalised frames (stored float16, ``images`` (V, 10, 3,
    H, W)) and the frozen VGGish embeddings of the 10 s (``mels`` holds them, (V, 10, 128),
    cropped or edge-padded to 10); per row: the 256 x 256 ground truth and the frozen
    DistilRoBERTa hidden states (returned as the text dict, mask all ones: the released code
    passes no attention mask). Same inputs as ``refavs-eval-bench`` computes (the components'
    image processor, VGGish on ``log_mel_examples`` of the 16 kHz audio, the text encoder).

    Args:
        root: the data directory. split: a ``metadata.csv`` split. parts:
            :class:`refavs_ros.models.official_loaders.OfficialComponents`.
        limit: first rows only. progress: tqdm bar.

    Returns:
        (clip set, {expression: (hidden float32 (25, 768), mask float32 (25,))}).

    Raises:
        InputError: missing media or no rows.
    """
    from refavs_ros.eval.dataset import FRAMES_PER_CLIP, RefAvsBench

    bench = RefAvsBench(root)
    entries = bench.entries(split, limit)
    if not entries:
        raise InputError(f"Ref-AVS Bench split {split!r} under {root} has no rows")
    folders: dict[str, int] = {}
    images, embeddings, video, masks = [], [], [], []
    text: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for e in tqdm(entries, desc=f"bench {split} (official)", disable=not progress):
        if e.folder not in folders:
            folders[e.folder] = len(folders)
            with torch.no_grad():
                images.append(parts.image_processor(bench.load_frames(e)).numpy().astype(np.float16))
                wave = bench.load_audio_16k(e)
                mel = audio.log_mel_examples(wave, audio.SAMPLE_RATE)
                if mel.shape[0] == 0:  # shorter than 0.975 s: one left-padded example
                    mel = audio.example_ending_at(wave)[None]
                emb = parts.vggish(torch.from_numpy(mel).to(parts.device)).cpu().numpy()
            emb = emb[:FRAMES_PER_CLIP] if emb.shape[0] >= FRAMES_PER_CLIP else np.concatenate(
                [emb, np.repeat(emb[-1:], FRAMES_PER_CLIP - emb.shape[0], axis=0)])
            embeddings.append(emb.astype(np.float16))
        video.append(folders[e.folder])
        masks.append(bench.load_gt(e).astype(np.uint8))
        if e.expression not in text:
            with torch.no_grad():
                hidden = parts.text_encoder.encode(e.expression).cpu().numpy().astype(np.float32)
            text[e.expression] = (hidden, np.ones(hidden.shape[0], np.float32))
    clips = ClipSet(
        images=np.stack(images), mels=np.stack(embeddings), masks=np.stack(masks),
        present=np.array([0.0 if e.is_null else 1.0 for e in entries], np.float32),
        expressions=[e.expression for e in entries], kinds=["bench-null" if e.is_null else "bench" for e in entries],
        video=np.asarray(video, np.int64),
    )
    return clips, text


class OfficialObjective(nn.Module):
    """Fine-tuning objective of the published model (``OfficialEEMC``), as the released code trains it.

    Only :data:`OFFICIAL_TRAINABLE` parameters get gradients. Loss per clip: ``w_bce * BCE +
    w_dice * dice`` of the query-weighted 256 x 256 logits against the ground truth (released
    ``REFAVS_Model_Base.forward``: BCE only, i.e. weights (1, 0)). All 10 frames of a clip are
    used (the released fusion attends across the clip).

    Args:
        model: the published model (e.g. ``load_official(...).model``).
        mask_weights: (w_bce, w_dice).
    """

    def __init__(self, model: nn.Module, mask_weights: tuple[float, float] = (1.0, 0.0)) -> None:
        super().__init__()
        self.model = model
        self.mask_weights = tuple(float(w) for w in mask_weights)
        for name, p in model.named_parameters():
            p.requires_grad_(any(part in name for part in OFFICIAL_TRAINABLE))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a :class:`ClipDataset` batch of :func:`build_official_bench_clips` clips."""
        logits = self.model.forward_batch(batch["images"].float(), batch["mels"].float(), batch["hidden"].float())
        logits = logits.float()
        b, t = logits.shape[:2]
        target = batch["masks"].float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3)).mean(1)
        dice = dice_loss(logits.flatten(0, 1), target.flatten(0, 1)).view(b, t).mean(1)
        w_bce, w_dice = self.mask_weights
        per_clip = w_bce * bce + w_dice * dice
        return per_clip.mean(), {"bce": bce.detach().mean(), "dice": dice.detach().mean(),
                                 "null": logits.new_zeros(())}


@torch.no_grad()
def evaluate_official(model: nn.Module, clips: ClipSet, text: dict) -> dict[str, dict[str, float]]:
    """Per-frame J (non-null rows) and S (null rows) of the published model on encoded clips
    (:func:`build_official_bench_clips`), one clip at a time (batch 1, as deployed)."""
    from refavs_ros.eval import metrics

    model.eval()
    device = next(model.parameters()).device
    ds = ClipDataset(clips, text)
    out: dict[str, list[float]] = defaultdict(list)
    s_vals: dict[str, list[float]] = defaultdict(list)
    for i in range(len(ds)):
        item = ds[i]
        logits = model.forward_batch(item["images"][None].float().to(device), item["mels"][None].to(device),
                                     item["hidden"][None].to(device))[0]
        prob = logits.float().sigmoid().cpu().numpy()
        gt = item["masks"].numpy() > 0.5
        kind = clips.kinds[i]
        out[kind].append(float(np.mean([metrics.jaccard(p, g) for p, g in zip(prob, gt)])))
        if clips.present[i] < 0.5:
            s_vals[kind].append(float(np.mean([metrics.s_score(p) for p in prob])))
    return {k: {"J": float(np.mean(v)), "S": float(np.mean(s_vals[k])) if s_vals[k] else float("nan"), "n": len(v)}
            for k, v in sorted(out.items())}


def build_model(cfg: EEMCConfig, seed: int) -> EEMC:
    """A freshly initialised EEMC (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    return EEMC(cfg)
