"""Latency of the FULL-SIZE published Ref-AVS model (random weights): per window and per new frame.

Run from the repository root::

    python3 -m bench.official_window_latency [--repeats 2] [--threads N] [--device cpu] [--json F]

The model is built locally with the released sizes -- Mask2Former with a Swin-B backbone (embed
128, depths 2-2-18-2, heads 4-8-16-32, window 12, 384x384, 150 ADE labels), the 6 pixel-decoder
adapters, the prompt attention and the 1024-d EEMC fusion (``OfficialEEMC``) -- plus a full-size
VGGish; all weights are random (same graph and cost as the released checkpoint). Inputs are
random 640x480 RGB frames and random log-mel examples.

Reported (ms, median and minimum over ``--repeats``; on a shared machine the minimum is the
better estimate of the model's own cost):

* ``window``: one 10-frame clip the way the benchmark runs it (``forward_clip``): image
  preprocessing of 10 frames + 10 VGGish examples + backbone/pixel decoder for 10 frames + fusion
  over the window + decoding of 10 frames; with the stage split.
* ``per new frame``: the sliding-window streaming engine with a full 10-frame window
  (``OfficialStreamEngine``): ``encode_frame`` (preprocess + backbone + pixel decoder, 1 frame)
  + ``encode_audio`` (1 VGGish example) + ``step`` (fusion over the 10-frame window from cached
  tokens + decoding the newest frame); with the fusion and decode split.
* ``text``: one expression through a random DistilRoBERTa-size encoder (once per command).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from transformers import Mask2FormerConfig, RobertaConfig, RobertaModel, SwinConfig
from transformers.models.mask2former.image_processing_pil_mask2former import (
    Mask2FormerImageProcessorPil,
)

from refavs_ros.engines.official import OfficialStreamEngine
from refavs_ros.models.official import FrameFeatures, OfficialEEMC, visual_tokens
from refavs_ros.models.official_loaders import ImagePreprocessor, OfficialTextEncoder
from refavs_ros.models.vggish import VGGish

WINDOW = 10
COMMAND = "the dog that is barking on the left"


def full_size_config() -> Mask2FormerConfig:
    """facebook/mask2former-swin-base-ade-semantic sizes, built without the hub."""
    swin = SwinConfig(
        image_size=384,
        embed_dim=128,
        depths=[2, 2, 18, 2],
        num_heads=[4, 8, 16, 32],
        window_size=12,
        drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=swin,
        num_labels=150,
        feature_size=256,
        mask_feature_size=256,
        hidden_dim=256,
        encoder_layers=6,
        decoder_layers=10,
        num_queries=100,
        num_attention_heads=8,
        dim_feedforward=2048,
        encoder_feedforward_dim=1024,
        common_stride=4,
        feature_strides=[4, 8, 16, 32],
    )


def full_size_parts(seed: int = 0, with_text: bool = True):
    """Full-size model, VGGish, image processor and DistilRoBERTa-size text encoder, random weights.

    Args:
        seed: weights seed (the model and VGGish are built first, so their weights do not
            depend on ``with_text``).
        with_text: also build the random text encoder (None in its place otherwise).

    Returns:
        (OfficialEEMC, VGGish, ImagePreprocessor, OfficialTextEncoder | None), CPU float32, eval
        mode; the same ``seed`` gives the same weights (and so the same export-cache key).
    """
    from transformers import AutoTokenizer

    from refavs_ros.models.text import bundled_minilm_dir

    torch.manual_seed(seed)
    model = OfficialEEMC(full_size_config())
    vggish = VGGish()
    processor = ImagePreprocessor(
        Mask2FormerImageProcessorPil(
            do_resize=True,
            size={"height": 384, "width": 384},
            resample=2,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
            size_divisor=32,
            ignore_index=255,
            num_labels=150,
        )
    )
    if not with_text:
        return model.eval(), vggish.eval(), processor, None
    roberta = RobertaModel(
        RobertaConfig(
            num_hidden_layers=6,
            hidden_size=768,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=514,
            vocab_size=50265,
        )
    )
    text = OfficialTextEncoder(AutoTokenizer.from_pretrained(str(bundled_minilm_dir())), roberta)
    return model.eval(), vggish.eval(), processor, text.eval()


def build_engine(device: str) -> OfficialStreamEngine:
    """Full-size model, VGGish and DistilRoBERTa-size text encoder with random weights (PyTorch backend)."""
    model, vggish, processor, text = full_size_parts()
    return OfficialStreamEngine.from_modules(model, processor, text, vggish, device=device, num_frames=WINDOW)


@contextmanager
def timed(store: dict[str, float], key: str, sync: Callable[[], None]) -> Iterator[None]:
    """Store the wall time (ms) of the ``with`` body under ``store[key]`` (device synchronised)."""
    sync()
    t0 = time.perf_counter()
    yield
    sync()
    store[key] = (time.perf_counter() - t0) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--stream-repeats", type=int, default=None, help="timed new frames (default: --repeats)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    t0 = time.perf_counter()
    engine = build_engine(args.device)
    build_s = time.perf_counter() - t0
    model, vggish, dev = engine.backend.model.net, engine.backend.model.vggish, engine.backend.device
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    stream_repeats = args.stream_repeats or args.repeats
    n_img = WINDOW + max(args.repeats, stream_repeats) + 1
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n_img)]
    mels = [rng.standard_normal((96, 64)).astype(np.float32) for _ in range(n_img)]
    once: dict[str, float] = {}
    with timed(once, "text", sync):
        engine.set_command(COMMAND)
    text = engine.text_encoder.encode(COMMAND).to(dev)

    window_runs: list[dict[str, float]] = []
    frame_runs: list[dict[str, float]] = []
    with torch.inference_mode():
        # ---- one window, clip-wise (benchmark path); the first run warms up ----------------
        for rep in range(args.repeats + 1):
            t: dict[str, float] = {}
            with timed(t, "total", sync):
                with timed(t, "preprocess", sync):
                    pixels = engine.image_processor(images[:WINDOW]).to(dev)
                with timed(t, "audio", sync):
                    audio = vggish(torch.from_numpy(np.stack(mels[:WINDOW])).to(dev))
                with timed(t, "encode", sync):
                    feats = model.encode_frames(pixels)
                with timed(t, "fuse", sync):
                    prompts = model.fuse(visual_tokens(feats.swin_last)[None], audio[None], text[None])
                with timed(t, "decode", sync):
                    logits = model.decode(feats, prompts)
            assert logits.shape == (WINDOW, 256, 256)
            if rep:
                window_runs.append(t)

        # ---- streaming, per new frame with a full window ----------------------------------
        for i in range(WINDOW - 1):
            engine.step(engine.encode_frame(images[i]), engine.encode_audio(mels[i]), commit=True)
        for rep in range(stream_repeats + 1):
            i = WINDOW - 1 + rep
            t = {}
            with timed(t, "encode_frame", sync):
                frame = engine.encode_frame(images[i])
            with timed(t, "encode_audio", sync):
                emb = engine.encode_audio(mels[i])
            # the split of step(): the same fusion and decode calls, timed on their own
            tokens = torch.stack([tok for tok, _ in engine._entries] + [frame.tokens])[None]
            audios = torch.stack([a for _, a in engine._entries] + [emb])[None]
            assert tokens.shape[1] == WINDOW
            with timed(t, "fuse", sync):
                prompts = model.fuse(tokens, audios, text[None], last_frames=1)
            with timed(t, "decode", sync):
                feats = FrameFeatures(
                    frame.features["swin_last"],
                    tuple(frame.features[f"multi_scale_{i}"] for i in range(3)),
                    frame.features["mask_features"],
                )
                model.decode(feats, prompts)
            with timed(t, "step", sync):
                engine.step(frame, emb, commit=True)
            t["total"] = t["encode_frame"] + t["encode_audio"] + t["step"]
            if rep:
                frame_runs.append(t)

    med = {k: statistics.median(r[k] for r in window_runs) for k in window_runs[0]}
    med_f = {k: statistics.median(r[k] for r in frame_runs) for k in frame_runs[0]}
    low = {k: min(r[k] for r in window_runs) for k in window_runs[0]}
    low_f = {k: min(r[k] for r in frame_runs) for k in frame_runs[0]}
    print(
        f"Full-size OfficialEEMC (Swin-B 384, random weights), {n_params / 1e6:.1f} M parameters, "
        f"device {args.device}, torch threads {torch.get_num_threads()}, {platform.machine()}"
    )
    print(f"build {build_s:.1f} s; text encoding (once per command) {once['text']:.0f} ms")
    print(f"\nOne {WINDOW}-frame window, clip-wise (median / min of {args.repeats}):")
    for k in ("preprocess", "audio", "encode", "fuse", "decode"):
        print(f"  {k:<14}{med[k]:10.0f} / {low[k]:.0f} ms")
    print(f"  {'TOTAL':<14}{med['total']:10.0f} / {low['total']:.0f} ms  ({med['total'] / WINDOW:.0f} ms per frame)")
    print(f"\nStreaming, per new frame with a full {WINDOW}-frame window (median / min of {stream_repeats}):")
    for k in ("encode_frame", "encode_audio", "step"):
        print(f"  {k:<14}{med_f[k]:10.0f} / {low_f[k]:.0f} ms")
    print(f"    of which fuse {med_f['fuse']:.0f} ms, decode {med_f['decode']:.0f} ms (median)")
    print(f"  {'TOTAL':<14}{med_f['total']:10.0f} / {low_f['total']:.0f} ms  ({1000 / med_f['total']:.2f} frames/s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "device": args.device,
                    "threads": torch.get_num_threads(),
                    "params": n_params,
                    "text_ms": once["text"],
                    "window_ms": med,
                    "per_new_frame_ms": med_f,
                    "repeats": args.repeats,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
