"""``refavs-eval-bench``: evaluate the published Ref-AVS checkpoint on Ref-AVS Bench.

Example::

    refavs-eval-bench /data/REFAVS --split test_s --checkpoint ckpt_best_miou.pth \\
        --models-dir /data/refavs_models --metrics-json seen.json

Inputs per clip follow the released pipeline (``datasets/dataset_refavs.py``): 10 frames through
the Mask2Former image processor (384x384), VGGish embeddings of the whole ``audio.wav``
(one per 0.96 s, 16 kHz mono), DistilRoBERTa features of the expression (25 tokens), ground
truth resized to 256x256.

Modes (``shared/design/metrics.md``):

* ``benchmark`` (default): the released test loop -- clips are run 4 at a time through
  ``OfficialEEMC.forward_batch`` (``mha_mm`` attends across the 4 clips of a batch exactly as
  in the released code) and J / F / S are means over batches of 40 frames in ``metadata.csv``
  order (:func:`refavs_ros.eval.metrics.benchmark_metrics` applied batch by batch).
* ``per-frame``: each clip alone (batch 1, deployment semantics), per-frame metrics averaged
  over frames (:class:`refavs_ros.eval.metrics.MetricAccumulator`). ``--inference stream``
  additionally restricts frame k to the window of frames 0..k (the node's sliding window at
  start-up), i.e. a causal reading of the clip.

The paper reports J (as %) and F on ``test_s`` / ``test_u`` and S on ``test_n``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from refavs_ros import audio as audio_fe
from refavs_ros.errors import InputError, RefAvsError
from refavs_ros.eval.dataset import FRAMES_PER_CLIP, BenchEntry, RefAvsBench
from refavs_ros.eval.metrics import MetricAccumulator, benchmark_metrics
from refavs_ros.models.official import FrameFeatures, OfficialEEMC, visual_tokens
from refavs_ros.models.official_loaders import OfficialComponents, load_official

PROG = "refavs-eval-bench"
BENCHMARK_CLIPS_PER_BATCH = 4
"""Released test DataLoader batch size (clips)."""


@dataclass
class ClipInputs:
    """Network inputs and ground truth of one clip.

    Attributes:
        pixel_values: float32 (10, 3, 384, 384) normalised frames.
        audio: float32 (E, 128) VGGish embeddings (E = 10 for 10 s of audio).
        text: float32 (25, 768) DistilRoBERTa hidden states.
        gt: bool (10, 256, 256) ground truth.
    """

    pixel_values: torch.Tensor
    audio: torch.Tensor
    text: torch.Tensor
    gt: np.ndarray


@torch.no_grad()
def clip_inputs(bench: RefAvsBench, entry: BenchEntry, parts: OfficialComponents) -> ClipInputs:
    """Load and encode one clip's frames, audio, expression and ground truth.

    Raises:
        InputError: missing or unreadable media (path named).
    """
    dev = parts.device
    pixels = parts.image_processor(bench.load_frames(entry)).to(dev)
    wav = bench.load_audio_16k(entry)
    mel = audio_fe.log_mel_examples(wav, audio_fe.SAMPLE_RATE)
    if mel.shape[0] == 0:  # shorter than 0.975 s: one left-padded example
        mel = audio_fe.example_ending_at(wav)[None]
    emb = parts.vggish(torch.from_numpy(mel).to(dev))
    text = parts.text_encoder.encode(entry.expression).to(dev)
    return ClipInputs(pixels, emb, text, bench.load_gt(entry))


@torch.no_grad()
def stream_clip_logits(model: OfficialEEMC, inputs: ClipInputs, window: int = FRAMES_PER_CLIP) -> torch.Tensor:
    """Logits of each frame k fused over frames max(0, k-window+1)..k only (causal reading).

    Audio step k is paired with frame k (E must be >= the number of frames; extra steps unused).

    Returns:
        float32 (T, 256, 256).
    """
    t = inputs.pixel_values.shape[0]
    if inputs.audio.shape[0] < t:
        raise InputError(f"stream inference needs one audio step per frame, got {inputs.audio.shape[0]} for {t}")
    feats = model.encode_frames(inputs.pixel_values)
    tokens = visual_tokens(feats.swin_last)  # (T, S, C)
    out = []
    for k in range(t):
        lo = max(0, k - window + 1)
        prompts = model.fuse(tokens[None, lo : k + 1], inputs.audio[None, lo : k + 1], inputs.text[None], last_frames=1)
        frame = FrameFeatures(
            feats.swin_last[k : k + 1], tuple(x[k : k + 1] for x in feats.multi_scale), feats.mask_features[k : k + 1]
        )
        out.append(model.decode(frame, prompts)[0])
    return torch.stack(out)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, unit="clip")


@torch.no_grad()
def evaluate_benchmark(
    bench: RefAvsBench,
    entries: Sequence[BenchEntry],
    parts: OfficialComponents,
    *,
    clips_per_batch: int = BENCHMARK_CLIPS_PER_BATCH,
    progress: bool = False,
) -> dict:
    """Benchmark-compatible evaluation (released batching of clips and of metrics).

    Returns:
        ``{"J", "F", "S", "batches", "audio_truncated"}``: J/F/S fractions averaged over
        batches of ``clips_per_batch * 10`` frames; ``audio_truncated`` lists uids whose audio
        steps were cut to their batch's shortest (the released code cannot stack unequal ones).
    """
    per_batch: list[dict[str, float]] = []
    truncated: list[str] = []
    groups = [list(entries[i : i + clips_per_batch]) for i in range(0, len(entries), clips_per_batch)]
    for group in _progress(groups, progress, "batches"):
        clips = [clip_inputs(bench, e, parts) for e in group]
        steps = min(c.audio.shape[0] for c in clips)
        truncated += [e.uid for e, c in zip(group, clips) if c.audio.shape[0] != steps]
        logits = parts.model.forward_batch(
            torch.stack([c.pixel_values for c in clips]),
            torch.stack([c.audio[:steps] for c in clips]),
            torch.stack([c.text for c in clips]),
        )  # (B, 10, 256, 256)
        gt = np.concatenate([c.gt for c in clips])
        frames = logits.reshape(-1, *logits.shape[2:]).float().cpu().numpy()
        per_batch.append(benchmark_metrics(frames, gt, frames_per_batch=len(frames)))
    result = {k: float(np.mean([b[k] for b in per_batch])) for k in ("J", "F", "S")}
    result.update(batches=len(per_batch), audio_truncated=truncated)
    return result


@torch.no_grad()
def evaluate_per_frame(
    bench: RefAvsBench,
    entries: Sequence[BenchEntry],
    parts: OfficialComponents,
    *,
    inference: str = "clip",
    average: str = "frame",
    progress: bool = False,
) -> dict:
    """Per-frame evaluation, each clip alone at batch 1.

    Args:
        inference: ``"clip"`` (whole clip fused at once) or ``"stream"`` (frame k sees frames
            0..k only).
        average: ``"frame"`` or ``"clip"`` (MetricAccumulator mode).

    Returns:
        ``MetricAccumulator.evaluate()`` of the group ``"all"`` (J, F, S and frame counts).
    """
    if inference not in ("clip", "stream"):
        raise InputError(f"inference must be 'clip' or 'stream', got {inference!r}")
    acc = MetricAccumulator(mode=average)
    for entry in _progress(entries, progress, "clips"):
        inputs = clip_inputs(bench, entry, parts)
        if inference == "clip":
            logits = parts.model.forward_clip(inputs.pixel_values, inputs.audio, inputs.text)
        else:
            logits = stream_clip_logits(parts.model, inputs)
        prob = torch.sigmoid(logits.float()).cpu().numpy()
        for i in range(prob.shape[0]):
            acc.process(prob[i], inputs.gt[i], groups=("all",), clip=entry.uid)
    return acc.evaluate()["all"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Evaluate the published Ref-AVS checkpoint on Ref-AVS Bench.")
    p.add_argument("data_dir", metavar="DATA_DIR", help="Ref-AVS Bench root (metadata.csv, media/, gt_mask/)")
    p.add_argument(
        "--split",
        required=True,
        choices=("test_s", "test_u", "test_n", "val"),
        help="test_s (seen), test_u (unseen), test_n (null) or val",
    )
    p.add_argument("--checkpoint", required=True, help="the released ckpt_best_miou.pth")
    p.add_argument(
        "--models-dir",
        required=True,
        help="directory with mask2former-swin-base-ade-semantic/, distilroberta-base/, vggish/vggish.pth",
    )
    p.add_argument(
        "--mode",
        choices=("benchmark", "per-frame"),
        default="benchmark",
        help="benchmark: released batching (default); per-frame: clips alone, per-frame averages",
    )
    p.add_argument(
        "--inference",
        choices=("clip", "stream"),
        default="clip",
        help="per-frame mode only: whole clip (default) or causal window 0..k",
    )
    p.add_argument("--average", choices=("frame", "clip"), default="frame", help="per-frame mode: average over")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N rows of the split")
    p.add_argument("--metrics-json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code (0 ok, 2 on a RefAvsError)."""
    args = build_parser().parse_args(argv)
    try:
        if args.limit is not None and args.limit < 1:
            raise InputError(f"--limit must be >= 1, got {args.limit}")
        bench = RefAvsBench(args.data_dir)
        entries = bench.entries(args.split, limit=args.limit)
        if not entries:
            raise InputError(f"split {args.split!r} has no rows in {bench.metadata_path}")
        parts = load_official(args.checkpoint, args.models_dir, args.device)
        t0 = time.perf_counter()
        if args.mode == "benchmark":
            metrics = evaluate_benchmark(bench, entries, parts, progress=not args.no_progress)
        else:
            metrics = evaluate_per_frame(
                bench, entries, parts, inference=args.inference, average=args.average, progress=not args.no_progress
            )
        seconds = time.perf_counter() - t0
    except RefAvsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "split": args.split,
        "mode": args.mode,
        "inference": args.inference if args.mode == "per-frame" else "clip-batch",
        "clips": len(entries),
        "frames": len(entries) * FRAMES_PER_CLIP,
        "frames_per_batch": BENCHMARK_CLIPS_PER_BATCH * FRAMES_PER_CLIP if args.mode == "benchmark" else 1,
        "checkpoint": str(args.checkpoint),
        "device": str(parts.device),
        "metrics": metrics,
        "seconds": seconds,
        "seconds_per_clip": seconds / len(entries),
        "reported_in_paper": "S" if args.split == "test_n" else "J (x100) and F",
    }
    _print_summary(result)
    if args.metrics_json:
        path = Path(args.metrics_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _print_summary(result: dict) -> None:
    m = result["metrics"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(
        f"{PROG}: split {result['split']}, mode {result['mode']} ({result['inference']}), "
        f"{result['clips']} clips / {result['frames']} frames, {result['seconds_per_clip']:.2f} s per clip"
    )
    j = m.get("J")
    print(
        f"  J = {fmt(j)} ({'n/a' if j is None else f'{100 * j:.2f}'} %)   F = {fmt(m.get('F'))}   "
        f"S = {fmt(m.get('S'))}   [paper reports {result['reported_in_paper']}]"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
