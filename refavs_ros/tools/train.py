"""``refavs-train``: train an EEMC profile on the synthetic scene benchmark on the CPU.

Example (the shipped model, see models/MODEL_CARD.md)::

    refavs-train --out models/refavs_tiny.safetensors --train-count 4000 --steps 3000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from refavs_ros.errors import RefAvsError


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of refavs-train."""
    p = argparse.ArgumentParser(prog="refavs-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("models/refavs_tiny.safetensors"), help="output safetensors file")
    p.add_argument("--profile", default="tiny", choices=["tiny", "base"], help="model profile")
    p.add_argument("--train-count", type=int, default=4000, help="training scenes to generate")
    p.add_argument("--val-count", type=int, default=300, help="validation scenes to generate")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation and initialisation")
    p.add_argument("--steps", type=int, default=3000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=16, help="clips per step")
    p.add_argument("--frames-per-clip", type=int, default=4,
                   help="frames of each clip used per step (random increasing subset); 0 = all")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop training after this many minutes")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="write intermediate checkpoints here")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--workers", type=int, default=1, help="processes generating scenes")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--fps", type=float, default=1.0, help="frame rate of training scenes (Hz); 1 = one memory entry per frame")
    p.add_argument("--duration", type=float, default=8.0, help="training scene length (s)")
    p.add_argument("--width", type=int, default=320, help="training scene width (pixels)")
    p.add_argument("--height", type=int, default=240, help="training scene height (pixels)")
    p.add_argument("--data-cache", type=Path, default=None,
                   help="directory to save the preprocessed clips to, or reuse them from when present")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args, argv if argv is not None else sys.argv[1:])
    except RefAvsError as exc:
        print(f"refavs-train: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from refavs_ros import training
    from refavs_ros.models.checkpoint import save_eemc
    from refavs_ros.models.config import EEMCConfig
    from refavs_ros.models.text import TextEncoder

    torch.set_num_threads(args.threads)
    cfg = EEMCConfig.profile_named(args.profile)
    scene_kw = dict(width=args.width, height=args.height, fps=args.fps, duration_sec=args.duration)
    t0 = time.monotonic()
    sets = {}
    for split, count in (("train", args.train_count), ("val", args.val_count)):
        key = f"v2-{split}-{count}-{args.seed}-{cfg.image_size}-" + "-".join(f"{v}" for v in scene_kw.values())
        cached = args.data_cache / key if args.data_cache is not None else None
        if cached is not None and (cached / "clips.json").is_file():
            sets[split] = training.ClipSet.load(cached)
        else:
            sets[split] = training.build_clips(split, count, args.seed, cfg.image_size, scene_kw, args.workers, not args.quiet)
            if cached is not None:
                sets[split].save(cached)
    train_set, val_set = sets["train"], sets["val"]
    encoder = TextEncoder.from_pretrained(cfg.text_model, cfg.max_text_tokens)
    text = training.encode_expressions(encoder, train_set.expressions + val_set.expressions)
    data_minutes = (time.monotonic() - t0) / 60
    print(f"data: {len(train_set)} train / {len(val_set)} val clips, {len(text)} expressions, {data_minutes:.1f} min")

    model = training.build_model(cfg, args.seed)
    command = "refavs-train " + " ".join(shlex.quote(a) for a in argv)

    def checkpoint(step: int) -> None:
        if args.checkpoint_dir is not None:
            save_eemc(model, args.checkpoint_dir / f"step{step:06d}.safetensors", {"command": command, "step": str(step)})

    budget = max(1.0, args.max_minutes - data_minutes)
    log = training.train(
        model, train_set, text, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        max_minutes=budget, on_checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, progress=not args.quiet,
        frames=args.frames_per_clip or None,
    )
    total = (time.monotonic() - t0) / 60
    val = training.evaluate_clips(model, val_set, text)
    for kind, r in val.items():
        print(f"val {kind:10s} J {r['J']:.3f}  S {r['S']:.3f}  ({r['n']} clips)")
    meta = {
        "command": command,
        "data": json.dumps({"generator": "refavs_ros.scenes", "train": [args.train_count, args.seed], "val": [args.val_count, args.seed], **scene_kw}),
        "train_minutes": f"{total:.1f}",
        "steps": str(log[-1]["step"] if log else 0),
        "val": json.dumps(val),
    }
    save_eemc(model, args.out, meta)
    print(f"saved {args.out} after {total:.1f} min ({meta['steps']} steps logged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
