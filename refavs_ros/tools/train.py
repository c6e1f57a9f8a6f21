"""``refavs-train``: train an EEMC profile on the synthetic scenes or Ref-AVS Bench, on one CPU or
many GPUs.

Examples::

    # the shipped tiny model (one process, 2 CPU cores; see models/MODEL_CARD.md)
    refavs-train --out models/refavs_tiny.safetensors --max-minutes 60 --threads 2

    # the same code on 4 GPUs of one node, or 2 nodes x 8 GPUs (torchrun sets RANK/WORLD_SIZE)
    torchrun --nproc-per-node 4 -m refavs_ros.tools.train --profile base \\
        --data refavs-bench /data/REFAVS --out runs/base.safetensors --checkpoint-dir runs/base_ckpt
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m refavs_ros.tools.train --profile base --data refavs-bench /data/REFAVS ...

A run writes resumable checkpoints into ``--checkpoint-dir`` and continues from the newest with
``--resume auto`` (or a given ``stepNNNNNN.pt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from refavs_ros.errors import ConfigError, InputError, RefAvsError

PROFILE_RECIPES = {
    "tiny": {"lr": 2e-3, "batch_size": 16, "frames_per_clip": 4, "mask_weights": (1.0, 1.0), "steps": 20000,
             "epochs": None},
    # paper Sec. 5.1 / App. B.1 and the released run_refavs.py: AdamW lr 1e-4, batch 2 clips of
    # 10 frames, 50 epochs, lambda_bce = lambda_dice = 5
    "base": {"lr": 1e-4, "batch_size": 2, "frames_per_clip": 0, "mask_weights": (5.0, 5.0), "steps": None,
             "epochs": 50},
    # the published model fine-tuned from its released checkpoint (--init ckpt_best_miou.pth), as
    # the released run_refavs.py trains it: adapters and projections only, BCE, lr 1e-4, batch 2
    "official": {"lr": 1e-4, "batch_size": 2, "frames_per_clip": 0, "mask_weights": (1.0, 0.0), "steps": None,
                 "epochs": 50},
}
"""Default optimisation recipe per profile (any flag overrides it)."""


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of refavs-train."""
    p = argparse.ArgumentParser(prog="refavs-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("models/refavs_tiny.safetensors"),
                   help="output file: safetensors (EEMC profiles) or .pth with released key names (official)")
    p.add_argument("--profile", default="tiny", choices=sorted(PROFILE_RECIPES), help="model profile")
    p.add_argument("--data", nargs="+", default=["synthetic"], metavar="KIND [DIR]",
                   help="'synthetic' (generated scenes, default) or 'refavs-bench DIR' (Ref-AVS Bench on disk)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights: EEMC safetensors (tiny/base), or the released "
                        "ckpt_best_miou.pth (official, converted on load; needs --models-dir)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="official profile: directory with mask2former-swin-base-ade-semantic/, "
                        "distilroberta-base/, vggish/vggish.pth (see docs/official.md)")
    p.add_argument("--bench-splits", nargs=2, default=("train", "val"), metavar=("TRAIN", "VAL"),
                   help="metadata.csv splits used for training and validation with --data refavs-bench")
    p.add_argument("--mask-weights", type=float, nargs=2, default=None, metavar=("BCE", "DICE"),
                   help="mask loss weights (default: the profile's recipe)")
    p.add_argument("--train-count", type=int, default=6000, help="synthetic training scenes to generate")
    p.add_argument("--val-count", type=int, default=300, help="synthetic validation scenes (bench: val rows, 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation, initialisation and shuffling")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the profile's recipe)")
    p.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of --steps")
    p.add_argument("--batch-size", type=int, default=None, help="clips per process per micro-batch")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--frames-per-clip", type=int, default=None,
                   help="frames of each clip decoded per step (random increasing subset; the audio memory "
                        "always spans the clip); 0 = all")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default min(200, steps/10))")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 (else fp16) autocast on GPUs, fp32 on CPUs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: the local GPU if any")
    p.add_argument("--freeze-bn", action="store_true", help="BatchNorm keeps its running statistics")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-time budget of the whole run (data included); the schedule ends with it")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="write resumable checkpoints here")
    p.add_argument("--checkpoint-every", type=int, default=500, help="optimiser steps between checkpoints")
    p.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' (newest in --checkpoint-dir)")
    p.add_argument("--workers", type=int, default=1, help="processes generating scenes (rank 0 of each node)")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes per rank")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads per process")
    p.add_argument("--fps", type=float, default=1.0,
                   help="frame rate of training scenes (Hz); the cached memory takes one entry per second as the "
                        "streaming predictor does (above 1 Hz from a random first frame, so the entries' audio "
                        "falls anywhere relative to the sounds)")
    p.add_argument("--duration", type=float, default=8.0, help="training scene length (s)")
    p.add_argument("--width", type=int, default=320, help="training scene width (pixels)")
    p.add_argument("--height", type=int, default=240, help="training scene height (pixels)")
    p.add_argument("--noise-prob", type=float, default=0.5, help="share of training scenes with ambient noise")
    p.add_argument("--snr-range", type=float, nargs=2, default=(-5.0, 25.0), metavar=("LOW", "HIGH"),
                   help="SNR range (dB) of the ambient noise of training scenes")
    p.add_argument("--occlusion-prob", type=float, default=0.3, help="share of training scenes with an occluder")
    p.add_argument("--kind-weights", default="semantic=0.7,appearance=1,spatial=1.4,acoustic=1.2,temporal=1.5,null=0.8",
                   help="relative sampling weight of expression kinds in the synthetic training set ('' = as generated)")
    p.add_argument("--no-memory-aux", action="store_true", help="no heard-history loss on the audio cached memory")
    p.add_argument("--paper-decoder", action="store_true",
                   help="no decode-stage position encoding and no audio memory token (the earlier model)")
    p.add_argument("--extended-decoder", action="store_true",
                   help="turn the decode-stage position encoding and the audio memory token on over --init "
                        "weights that lack them (both add no parameters, so the weights load unchanged); "
                        "without it --init keeps the architecture of its weights")
    p.add_argument("--data-cache", type=Path, default=None,
                   help="directory to save the preprocessed clips to, or reuse them from when present")
    p.add_argument("--log-json", type=Path, default=None, help="append the loss log (JSON lines) here (rank 0)")
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
    finally:
        from refavs_ros.training import cleanup_distributed

        cleanup_distributed()


def _kind_weights(text: str) -> dict[str, float] | None:
    if not text.strip():
        return None
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--kind-weights entries are KIND=WEIGHT, got {part!r}") from None
    return out


def _data_source(values: list[str]) -> tuple[str, Path | None]:
    kind = values[0]
    if kind == "synthetic" and len(values) == 1:
        return kind, None
    if kind == "refavs-bench" and len(values) == 2:
        return kind, Path(values[1])
    raise ConfigError(f"--data must be 'synthetic' or 'refavs-bench DIR', got {' '.join(values)!r}")


def _cached_set(name: str, build, cache: Path | None, ctx):
    """Build a data set once per node (local rank 0), cache it, and load it on every rank."""
    from refavs_ros import training

    cached = cache / name if cache is not None else None
    if cached is not None and (cached / "clips.json").is_file():
        return training.ClipSet.load(cached)
    if cached is None:
        return build()
    if ctx.local_rank == 0:
        build().save(cached)
    training.barrier(ctx)
    return training.ClipSet.load(cached)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    import hashlib

    from refavs_ros import training

    t0 = time.monotonic()
    torch.set_num_threads(args.threads)
    ctx = training.setup_distributed(args.device)
    recipe = PROFILE_RECIPES[args.profile]
    source, bench_dir = _data_source(args.data)
    if args.profile == "official" and (source != "refavs-bench" or args.init is None or args.models_dir is None):
        raise ConfigError("--profile official fine-tunes the released checkpoint on Ref-AVS Bench: it needs "
                          "--data refavs-bench DIR, --init ckpt_best_miou.pth and --models-dir DIR")
    cache = args.data_cache
    if cache is None and ctx.distributed:
        cache = (args.checkpoint_dir or args.out.parent) / "data-cache"
    train_split, val_split = args.bench_splits
    command = "refavs-train " + " ".join(shlex.quote(a) for a in argv)

    # ---- model, data and objective
    if args.profile == "official":
        from refavs_ros.models.official_loaders import load_official

        parts = load_official(args.init, args.models_dir, ctx.device)
        text: dict = {}
        sets = {}
        for split, limit in ((train_split, None), (val_split, args.val_count or 0)):
            if limit == 0 and split == val_split:
                continue
            try:
                clips, t = training.build_official_bench_clips(bench_dir, split, parts, limit, not args.quiet and ctx.main)
            except InputError as exc:
                if split == val_split:
                    if ctx.main:
                        print(f"no validation: {exc}")
                    continue
                raise
            sets[split] = clips
            text.update(t)
        train_set, val_set = sets[train_split], sets.get(val_split)
        model = parts.model
        objective = training.OfficialObjective(model, tuple(args.mask_weights or recipe["mask_weights"]))
        cfg_dict = {"profile": "official", "init": str(args.init)}
    else:
        from refavs_ros.models.checkpoint import load_eemc
        from refavs_ros.models.config import EEMCConfig
        from refavs_ros.models.text import TextEncoder
        from refavs_ros.scenes import CATEGORIES

        extended = {"decode_position": True, "memory_token": True}  # parameter-free decoder additions
        cfg = EEMCConfig.profile_named(args.profile, **({} if args.paper_decoder else extended))
        init_model = None
        if args.paper_decoder and args.extended_decoder:
            raise ConfigError("--paper-decoder and --extended-decoder exclude each other")
        if args.init is not None:
            init_model, _ = load_eemc(args.init)
            cfg = init_model.cfg
            if args.extended_decoder:
                cfg = dataclasses.replace(cfg, **extended)
            elif not args.paper_decoder and not (cfg.decode_position and cfg.memory_token) and ctx.main:
                print(f"note: {args.init} has decode_position={cfg.decode_position}, memory_token={cfg.memory_token}; "
                      "--init keeps them (--extended-decoder turns both on)")
        scene_kw = dict(width=args.width, height=args.height, fps=args.fps, duration_sec=args.duration,
                        noise_prob=args.noise_prob, snr_range_db=tuple(args.snr_range),
                        occlusion_prob=args.occlusion_prob)
        weights = _kind_weights(args.kind_weights)
        sets = {}
        if source == "synthetic":
            for split, count in (("train", args.train_count), ("val", args.val_count)):
                if count == 0:
                    continue
                w = weights if split == "train" else None
                tag = hashlib.sha1(json.dumps([scene_kw, w], sort_keys=True).encode()).hexdigest()[:10]
                sets[split] = _cached_set(
                    f"v3-{split}-{count}-{args.seed}-{cfg.image_size}-{tag}",
                    lambda split=split, count=count, w=w: training.build_clips(
                        split, count, args.seed, cfg.image_size, scene_kw, args.workers, not args.quiet and ctx.main, w),
                    cache, ctx)
        else:
            root_key = hashlib.sha1(str(Path(bench_dir).resolve()).encode()).hexdigest()[:10]
            for split, limit in ((train_split, None), (val_split, args.val_count or 0)):
                if limit == 0 and split == val_split:
                    continue
                try:
                    sets[split] = _cached_set(
                        f"bench-{root_key}-{split}-{limit}-{cfg.image_size}",
                        lambda split=split, limit=limit: training.build_bench_clips(
                            bench_dir, split, cfg.image_size, limit, not args.quiet and ctx.main),
                        cache, ctx)
                except InputError as exc:
                    if split != val_split:
                        raise
                    if ctx.main:
                        print(f"no validation: {exc}")
        train_set, val_set = sets[train_split if source != "synthetic" else "train"], sets.get(
            val_split if source != "synthetic" else "val")
        encoder = TextEncoder.from_pretrained(cfg.text_model, cfg.max_text_tokens)
        text = training.encode_expressions(encoder, train_set.expressions + (val_set.expressions if val_set else []))
        model = training.build_model(cfg, args.seed)
        if init_model is not None:
            model.load_state_dict(init_model.state_dict())
        num_categories = len(CATEGORIES) if train_set.categories is not None else None
        objective = training.EEMCObjective(
            model, num_categories, memory_aux=not args.no_memory_aux and train_set.heard is not None,
            mask_weights=tuple(args.mask_weights or recipe["mask_weights"]))
        cfg_dict = cfg.to_dict()
    data_minutes = (time.monotonic() - t0) / 60
    if ctx.main:
        print(f"data: {len(train_set)} train / {len(val_set) if val_set else 0} val clips, {len(text)} expressions, "
              f"{data_minutes:.1f} min; {ctx.world} process(es) on {ctx.device}")

    # ---- optimisation
    lr = args.lr if args.lr is not None else recipe["lr"]
    batch_size = args.batch_size if args.batch_size is not None else recipe["batch_size"]
    frames = args.frames_per_clip if args.frames_per_clip is not None else recipe["frames_per_clip"]
    if args.profile == "official":
        frames = 0  # the released fusion attends across the whole clip
    # one cached-memory entry per frame_stride_sec of the predictor's default config (1 s)
    every = training.memory_every(args.fps) if source == "synthetic" else 1
    dataset = training.ClipDataset(train_set, text, frames or None, args.seed, memory_every=every)
    steps = args.steps if args.steps is not None else recipe["steps"]
    epochs = args.epochs if args.epochs is not None else (recipe["epochs"] if args.steps is None else None)
    if epochs is not None:
        per_epoch = max(1, len(train_set) // (ctx.world * batch_size * args.accum_steps))
        steps = max(1, int(round(epochs * per_epoch)))
    resume = args.resume
    if resume == "auto":
        resume = training.latest_checkpoint(args.checkpoint_dir) if args.checkpoint_dir else None
    budget = None if args.max_minutes is None else max(1.0, args.max_minutes - data_minutes)
    opts = training.TrainOptions(
        steps=steps, batch_size=batch_size, accum_steps=args.accum_steps, lr=lr, weight_decay=args.weight_decay,
        warmup=args.warmup, seed=args.seed, max_minutes=budget, precision=args.precision,
        freeze_bn=args.freeze_bn, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        resume=Path(resume) if resume else None, progress=not args.quiet, loader_workers=args.loader_workers,
    )

    def on_log(entry: dict) -> None:
        if args.log_json is not None:
            args.log_json.parent.mkdir(parents=True, exist_ok=True)
            with args.log_json.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    log = training.train(objective, dataset, opts, ctx, on_log=on_log, meta={"command": command, "config": cfg_dict})
    if not ctx.main:
        return 0

    # ---- validation and output (rank 0)
    total = (time.monotonic() - t0) / 60
    steps_done = str(log[-1]["step"] if log else 0)
    if args.profile == "official":
        val = training.evaluate_official(model, val_set, text) if val_set is not None else {}
    else:
        model.cpu()
        val = training.evaluate_clips(model, val_set, text, memory_every=every) if val_set is not None else {}
    for kind, r in val.items():
        print(f"val {kind:10s} J {r['J']:.3f}  S {r['S']:.3f}  ({r['n']} clips)")
    if args.profile == "official":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.released_state_dict().items()}, args.out)
        print(f"saved {args.out} (released key names) after {total:.1f} min ({steps_done} steps)")
        return 0
    from refavs_ros.models.checkpoint import save_eemc

    data_desc = ({"generator": "refavs_ros.scenes", "train": [args.train_count, args.seed],
                  "val": [args.val_count, args.seed], "kind_weights": weights, **scene_kw}
                 if source == "synthetic" else {"refavs_bench": str(bench_dir), "splits": [train_split, val_split]})
    meta = {
        "command": command,
        "data": json.dumps(data_desc),
        "train_minutes": f"{total:.1f}",
        "steps": steps_done,
        "processes": str(ctx.world),
        "val": json.dumps(val),
    }
    if args.init is not None:
        meta["init"] = str(args.init)
    save_eemc(model, args.out, meta)
    print(f"saved {args.out} after {total:.1f} min ({steps_done} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
