"""Training of EEMC on the synthetic scene benchmark (``refavs-train``), CPU friendly.

Data: scenes from :func:`refavs_ros.scenes.generate_scene` are turned into clip tensors with
exactly the preprocessing of the streaming predictor (:func:`preprocess_image`, the log-mel
example of the 0.975 s of audio ending at each frame stamp), so training and deployment see the
same inputs. Text features are computed once per distinct expression with the frozen encoder.

Loss (paper App. B.1, without the class term of Mask2Former's matcher): for clips with a
referred object, ``bce + dice`` on the mask logits (upsampled x2 to S/2); for every clip a
binary cross-entropy "null term" on the presence logit (1 = the referred object exists).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from refavs_ros import audio
from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.text import TextEncoder


@dataclass
class ClipSet:
    """Preprocessed clips held in memory.

    Attributes:
        images: uint8 (N, T, S, S, 3) network-size RGB frames.
        mels: float16 (N, T, 96, 64) log-mel example per frame.
        masks: uint8 (N, T, S/2, S/2) ground truth at the loss resolution, 0/1.
        categories: uint8 (N, T, S/4, S/4) category of every pixel (0 = background,
            1 + index in ``refavs_ros.scenes.CATEGORIES``), for the auxiliary loss.
        present: float32 (N,) 1 when the expression refers to an object, 0 for null.
        expressions: N expression strings.
        kinds: N expression kinds.
    """

    images: np.ndarray
    mels: np.ndarray
    masks: np.ndarray
    categories: np.ndarray
    present: np.ndarray
    expressions: list[str]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.expressions)

    def save(self, directory: Path) -> None:
        """Write the arrays (``.npy``) and the texts (``clips.json``) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("images", "mels", "masks", "categories", "present"):
            np.save(directory / f"{name}.npy", getattr(self, name))
        (directory / "clips.json").write_text(json.dumps({"expressions": self.expressions, "kinds": self.kinds}))

    @classmethod
    def load(cls, directory: Path) -> "ClipSet":
        """Read a set written by :meth:`save` (arrays memory-mapped)."""
        texts = json.loads((directory / "clips.json").read_text())
        arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r") for n in ("images", "mels", "masks", "categories", "present")}
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


def _make_one(args: tuple) -> tuple:
    from refavs_ros.scenes import SceneConfig, generate_scene

    split, index, seed, scene_kw, size = args
    scene = generate_scene(split, index, seed, SceneConfig(**scene_kw))
    images, mels, masks, cats = scene_to_arrays(scene, size)
    return images, mels, masks, cats, scene.target is not None, scene.expression, scene.kind


def build_clips(
    split: str, count: int, seed: int, size: int, scene_kw: dict, workers: int = 2, progress: bool = True
) -> ClipSet:
    """Generate ``count`` scenes of ``split`` and preprocess them (parallel over ``workers``)."""
    jobs = [(split, i, seed, scene_kw, size) for i in range(count)]
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            rows = list(tqdm(pool.imap(_make_one, jobs, chunksize=8), total=count, desc=f"scenes {split}", disable=not progress))
    else:
        rows = [_make_one(j) for j in tqdm(jobs, desc=f"scenes {split}", disable=not progress)]
    images, mels, masks, cats, present, exprs, kinds = zip(*rows)
    return ClipSet(
        np.stack(images), np.stack(mels), np.stack(masks), np.stack(cats), np.array(present, np.float32),
        list(exprs), list(kinds),
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


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice loss per frame, averaged: logits/target (N, H, W)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def clip_batch(
    clips: ClipSet, idx: np.ndarray, text: dict, device: torch.device, frames: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of the clips ``idx`` restricted to the frame indices ``frames`` (increasing; None =
    all): images (B, T, 3, S, S) in [0, 1], mels, masks, categories, text hidden/mask, present."""
    t = slice(None) if frames is None else frames
    images = torch.from_numpy(clips.images[idx][:, t]).to(device).permute(0, 1, 4, 2, 3).float().div_(255.0)
    hidden = np.stack([text[clips.expressions[i]][0] for i in idx])
    tmask = np.stack([text[clips.expressions[i]][1] for i in idx])
    return {
        "images": images,
        "mels": torch.from_numpy(clips.mels[idx][:, t].astype(np.float32)).to(device),
        "masks": torch.from_numpy(clips.masks[idx][:, t]).to(device).float(),
        "categories": torch.from_numpy(clips.categories[idx][:, t].astype(np.int64)).to(device),
        "hidden": torch.from_numpy(hidden).to(device),
        "tmask": torch.from_numpy(tmask).to(device),
        "present": torch.from_numpy(clips.present[idx]).to(device),
    }


def compute_loss(
    model: EEMC, batch: dict[str, torch.Tensor], aux_head: torch.nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + dice on referred masks, BCE null term on presence, and (with ``aux_head``) an
    auxiliary per-pixel category cross-entropy on the visual encoder's pixel features."""
    logits, presence, extra = model(batch["images"], batch["mels"], batch["hidden"], batch["tmask"], return_aux=True)
    b, t = logits.shape[:2]
    up = F.interpolate(logits.flatten(0, 1)[:, None], scale_factor=2.0, mode="bilinear", align_corners=False)[:, 0]
    target = batch["masks"].flatten(0, 1)
    keep = batch["present"].repeat_interleave(t) > 0.5
    zero = logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(up[keep], target[keep]) if keep.any() else zero
    dice = dice_loss(up[keep], target[keep]) if keep.any() else zero
    null = F.binary_cross_entropy_with_logits(presence, batch["present"][:, None].expand(b, t))
    aux = zero
    if aux_head is not None:
        aux = F.cross_entropy(aux_head(extra["pixel"].flatten(0, 1)), batch["categories"].flatten(0, 1))
    coarse = extra["coarse"].flatten(0, 1)  # (BT, G, G) vs the GT area fraction per cell
    g = coarse.shape[-1]
    coarse_gt = F.adaptive_avg_pool2d(target[:, None], g)[:, 0]
    coarse_loss = F.binary_cross_entropy_with_logits(coarse[keep], coarse_gt[keep]) if keep.any() else zero
    loss = bce + dice + null + AUX_WEIGHT * (aux + coarse_loss)
    parts = {"bce": bce, "dice": dice, "null": null, "aux": aux, "coarse": coarse_loss}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


AUX_WEIGHT = 0.5
"""Weight of the auxiliary losses: per-pixel category (training-only head, not part of the
model) and the coarse target map (deep supervision of the integrated visual cues)."""


def make_aux_head(cfg: EEMCConfig) -> torch.nn.Module:
    """1x1 conv from pixel features (d) to 1 + number of scene categories (0 = background)."""
    from refavs_ros.scenes import CATEGORIES

    return torch.nn.Conv2d(cfg.d_model, 1 + len(CATEGORIES), 1)


@torch.no_grad()
def evaluate_clips(
    model: EEMC, clips: ClipSet, text: dict, batch_size: int = 16, beta: float | None = None, zero_audio: bool = False
) -> dict[str, dict[str, float]]:
    """Quick per-frame J / S by expression kind at the loss resolution (validation during training).

    Per frame, with :mod:`refavs_ros.eval.metrics`: J of ``sigmoid(logits)`` gated by presence
    > 0.5 (empty GT: TN / all); S of null clips. Returns {kind: {"J": ..., "S": ..., "n": clips}}.
    """
    from refavs_ros.eval import metrics

    model.eval()
    device = next(model.parameters()).device
    per_kind: dict[str, list[float]] = defaultdict(list)
    s_vals: dict[str, list[float]] = defaultdict(list)
    silence = audio.example_ending_at(np.zeros(0, np.float32))
    for start in range(0, len(clips), batch_size):
        idx = np.arange(start, min(start + batch_size, len(clips)))
        batch = clip_batch(clips, idx, text, device)
        if zero_audio:
            batch["mels"][:] = torch.from_numpy(silence)
        logits, presence = model(batch["images"], batch["mels"], batch["hidden"], batch["tmask"], beta=beta)
        up = F.interpolate(logits.flatten(0, 1)[:, None], scale_factor=2.0, mode="bilinear", align_corners=False)
        gate = (presence.flatten().sigmoid() > 0.5).float()[:, None, None]
        prob = (up[:, 0].sigmoid() * gate).numpy()  # (BT, S/2, S/2)
        gt = batch["masks"].flatten(0, 1).numpy() > 0.5
        t = logits.shape[1]
        for k, i in enumerate(idx):
            frames = range(k * t, (k + 1) * t)
            per_kind[clips.kinds[i]].append(float(np.mean([metrics.jaccard(prob[f], gt[f]) for f in frames])))
            if clips.present[i] < 0.5:
                s_vals[clips.kinds[i]].append(float(np.mean([metrics.s_score(prob[f]) for f in frames])))
    model.train()
    return {
        k: {"J": float(np.mean(v)), "S": float(np.mean(s_vals[k])) if s_vals[k] else float("nan"), "n": len(v)}
        for k, v in sorted(per_kind.items())
    }


def train(
    model: EEMC,
    clips: ClipSet,
    text: dict,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    max_minutes: float | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 500,
    progress: bool = True,
    aux: bool = True,
    frames: int | None = None,
) -> list[dict[str, float]]:
    """AdamW with linear warm-up and a cosine decay over the run's progress.

    With ``frames`` set, every step uses that many frames of each clip, a random increasing
    subset of the clip's frames (so the cached memory still spans the whole clip, at a random
    stride): more clips per step for the same compute.

    Progress is ``max(step / steps, elapsed / max_minutes)``, so a time-limited run still ends
    with a fully decayed learning rate when the machine is slower than planned.

    Returns:
        the loss log (one dict per 50 steps).
    """
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    aux_head = make_aux_head(model.cfg).to(device) if aux else None
    params = list(model.parameters()) + (list(aux_head.parameters()) if aux_head is not None else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = min(200, steps // 10)
    model.train()
    log: list[dict[str, float]] = []
    start = time.monotonic()
    bar = tqdm(range(steps), desc="train", disable=not progress)
    running: dict[str, float] = defaultdict(float)
    for step in bar:
        elapsed = time.monotonic() - start
        frac = max(step / steps, elapsed / (max_minutes * 60) if max_minutes else 0.0)
        if frac >= 1.0:
            bar.write(f"time budget of {max_minutes} min used at step {step}")
            break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * frac))
        idx = rng.choice(len(clips), size=batch_size, replace=False)
        sel = None if frames is None else np.sort(rng.choice(clips.images.shape[1], size=frames, replace=False))
        loss, parts = compute_loss(model, clip_batch(clips, idx, text, device, sel), aux_head)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            running[k] += v
        if (step + 1) % 50 == 0:
            entry = {k: v / 50 for k, v in running.items()} | {"step": step + 1, "minutes": (time.monotonic() - start) / 60}
            log.append(entry)
            running.clear()
            bar.set_postfix(loss=f"{entry['loss']:.3f}", null=f"{entry['null']:.3f}")
        if on_checkpoint is not None and (step + 1) % checkpoint_every == 0:
            on_checkpoint(step + 1)
    model.eval()
    return log


def build_model(cfg: EEMCConfig, seed: int) -> EEMC:
    """A freshly initialised EEMC (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    return EEMC(cfg)
