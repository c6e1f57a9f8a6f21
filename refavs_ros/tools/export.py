"""``refavs-export``: export EEMC stage-wise to ONNX (opset 17), verify with ONNX Runtime, optionally build TensorRT engines.

Examples::

    refavs-export --out export/tiny                                 # shipped tiny weights
    refavs-export --weights my.safetensors --out export/mine
    refavs-export --profile base --random-weights --out export/base  # timing/deployment dry run
    refavs-export --out export/tiny --tensorrt --precision fp16      # + engines (GPU + TensorRT)
    refavs-export --profile official --weights ckpt_best_miou.pth --models-dir models/official --out export/official
    refavs-export --profile official --weights ckpt_best_miou.pth --models-dir models/official --out export/official \
        --tensorrt --precision fp16 --engine-dir /var/cache/refavs      # + engines (GPU + TensorRT)

Writes ``<out>/{visual,audio,fuse,decode,text}.onnx`` and ``<out>/manifest.json`` and prints
the max abs error of every output against PyTorch. Exit code: 0 ok, 1 an error exceeds
``--atol``, 2 bad input / missing files / unavailable backend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from refavs_ros.errors import ConfigError, ModelLoadError, RefAvsError


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of refavs-export."""
    p = argparse.ArgumentParser(prog="refavs-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory for the ONNX graphs and manifest.json")
    p.add_argument("--weights", type=Path, default=None,
                   help="EEMC safetensors file (default: the shipped models/refavs_tiny.safetensors); "
                        "for --profile official the released ckpt_best_miou.pth")
    p.add_argument("--profile", default=None, choices=["tiny", "base", "official"],
                   help="architecture: with --random-weights the one to build; 'official' = the released model "
                        "(needs --weights and --models-dir, or --random-weights for the Swin-B architecture)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="official: directory with the Mask2Former config, distilroberta-base and vggish (see docs/official.md)")
    p.add_argument("--window", type=int, default=10,
                   help="official: largest fusion window verified (default 10; the graphs accept any window) and the "
                        "window TensorRT optimises for")
    p.add_argument("--max-window", type=int, default=16,
                   help="official + --tensorrt: largest window of the engines' optimization profile (default 16)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights (seed --seed) for --profile instead of a weights file (graph shapes and speed are the same)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    p.add_argument("--text-model", default=None,
                   help="text encoder id or local directory to export as text.onnx (default: the model's)")
    p.add_argument("--no-text", action="store_true", help="do not export the text encoder")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--fp16-graphs", action="store_true",
                   help="float16 weights/arithmetic inside the stage graphs, float32 I/O (for strongly typed TensorRT)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="max abs error allowed per output (default 1e-4; use ~1e-1 with --fp16-graphs)")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs TensorRT and a CUDA GPU)")
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"], help="TensorRT precision (default fp16)")
    p.add_argument("--engine-dir", type=Path, default=None, help="TensorRT engine cache root (default: --out)")
    p.add_argument("--json", type=Path, default=None, help="also write the report (manifest) to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 tolerance exceeded, 2 error)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except RefAvsError as exc:
        print(f"refavs-export: error: {exc}", file=sys.stderr)
        return 2


def _load_model(args: argparse.Namespace):
    import torch

    from refavs_ros.models.checkpoint import load_eemc
    from refavs_ros.models.config import EEMCConfig
    from refavs_ros.models.eemc import EEMC
    from refavs_ros.resources import default_weights_path

    if args.random_weights:
        if args.weights is not None:
            raise ConfigError("--random-weights and --weights are mutually exclusive")
        torch.manual_seed(args.seed)
        return EEMC(EEMCConfig.profile_named(args.profile or "tiny")).eval(), "random"
    path = args.weights if args.weights is not None else default_weights_path()
    model, _meta = load_eemc(path)
    if args.profile is not None and model.cfg.profile != args.profile:
        raise ConfigError(f"{path} holds profile {model.cfg.profile!r}, not --profile {args.profile!r}")
    return model, str(path)


def _export_official(args: argparse.Namespace):
    """Export the released model; returns (ExportReport, OfficialStageModel)."""
    import torch

    from refavs_ros.export.official import export_official
    from refavs_ros.models.official_loaders import TEXT_DIR, load_official

    if args.window < 1:
        raise ConfigError(f"--window must be >= 1, got {args.window}")
    if args.random_weights:
        from transformers import Mask2FormerConfig, SwinConfig

        from refavs_ros.models.official import OfficialEEMC
        from refavs_ros.models.vggish import VGGish

        # the released architecture: Mask2Former Swin-B (ADE20k head, 150 labels) at 384 px
        swin = SwinConfig(image_size=384, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                          window_size=12, out_features=["stage1", "stage2", "stage3", "stage4"])
        torch.manual_seed(args.seed)
        net, vggish = OfficialEEMC(Mask2FormerConfig(backbone_config=swin, num_labels=150)), VGGish()
        text_dir = None if args.no_text or args.text_model is None else Path(args.text_model)
        source = "random"
    else:
        if args.weights is None or args.models_dir is None:
            raise ConfigError("--profile official needs --weights ckpt_best_miou.pth and --models-dir (or --random-weights)")
        parts = load_official(args.weights, args.models_dir)
        net, vggish = parts.model, parts.vggish
        text_dir = None if args.no_text else Path(args.text_model or args.models_dir / TEXT_DIR)
        source = str(args.weights)
    from refavs_ros.models.official_stages import OfficialStageModel

    model = OfficialStageModel(net, vggish)
    print(f"exporting the released model ({source}; dynamic window, verified up to {args.window}) to {args.out}",
          flush=True)
    t0 = time.perf_counter()
    report = export_official(model, args.out, window=args.window, text_model_dir=text_dir, opset=args.opset,
                             verify=not args.no_verify)
    print(f"export took {time.perf_counter() - t0:.1f} s", flush=True)
    return report, model


def _run(args: argparse.Namespace) -> int:
    from refavs_ros.export.cache import check_tolerance
    from refavs_ros.export.eemc import export_eemc
    from refavs_ros.models.text import resolve_text_model

    if args.profile == "official":
        if args.fp16_graphs:
            raise ConfigError("--fp16-graphs is for EEMC profiles (official FP16 engines use per-layer FP32 constraints)")
        report, model = _export_official(args)
        print(report.table())
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report.to_dict(), indent=2))
        if args.tensorrt:
            from refavs_ros.backends.tensorrt_backend import TensorRTBackend

            root = args.engine_dir or args.out
            seeded = root / "onnx" / f"official-{report.fingerprint[:16]}"
            if not seeded.exists() and not args.no_verify:  # seed the cache with this export: no second export
                import shutil

                shutil.copytree(args.out, seeded, ignore=shutil.ignore_patterns("onnx", "tensorrt"))
            t0 = time.perf_counter()
            backend = TensorRTBackend.from_model(model, cache_dir=root, precision=args.precision,
                                                 max_window=args.max_window, opt_window=args.window)
            print(f"tensorrt engines ready in {time.perf_counter() - t0:.1f} s (max window {args.max_window})")
            for stage, eng in backend.stages.items():
                print(f"tensorrt {stage:<7} {eng.path}")
        bad = [] if args.no_verify else check_tolerance(report, args.atol)
        if bad:
            print(f"refavs-export: errors above --atol {args.atol:g}: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
    model, source = _load_model(args)
    text_dir = None
    if not args.no_text:
        try:
            text_dir = resolve_text_model(args.text_model or model.cfg.text_model)
        except ModelLoadError as exc:
            print(f"refavs-export: text encoder not exported: {exc} (pass --text-model DIR or --no-text)", file=sys.stderr)
    print(f"exporting EEMC profile {model.cfg.profile!r} ({source}) to {args.out}", flush=True)
    report = export_eemc(
        model, args.out, text_model_dir=text_dir, opset=args.opset, half=args.fp16_graphs, verify=not args.no_verify
    )
    print(report.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    if args.tensorrt:
        from refavs_ros.backends.tensorrt_backend import TensorRTBackend

        engine_root = args.engine_dir or args.out
        backend = TensorRTBackend.from_model(model, cache_dir=engine_root, precision=args.precision)
        for stage, eng in backend.stages.items():
            print(f"tensorrt {stage:<7} {eng.path}")
    bad = [] if args.no_verify else check_tolerance(report, args.atol)
    if bad:
        print(f"refavs-export: errors above --atol {args.atol:g}: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
