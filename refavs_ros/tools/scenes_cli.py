"""``refavs-scenes``: write synthetic Ref-AVS scenes as rosbag2 bags, one bag per scene.

Example::

    refavs-scenes bags/test-seen --split test-seen --count 100 --seed 0
    refavs-scenes /tmp/small --split train --count 2 --width 128 --height 128 --fps 1 --storage sqlite3
    refavs-scenes bags/rgbd --split test-seen --count 20 --depth     # + depth and camera info

Each scene goes to ``OUT_DIR/<scene_id>/`` (topics: see :mod:`refavs_ros.rosio.bagio`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from refavs_ros.errors import RefAvsError

_DESCRIPTION = "Write synthetic Ref-AVS benchmark scenes (refavs_ros.scenes) as rosbag2 bags, one per scene."


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``refavs-scenes``."""
    from refavs_ros.scenes import SPLITS

    p = argparse.ArgumentParser(prog="refavs-scenes", description=_DESCRIPTION)
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory that receives one bag directory per scene")
    p.add_argument("--split", required=True, choices=SPLITS, help="benchmark split")
    p.add_argument("--count", type=int, default=10, help="number of scenes (default 10)")
    p.add_argument("--start-index", type=int, default=0, help="index of the first scene (default 0)")
    p.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default mcap)")
    p.add_argument("--width", type=int, default=320, help="frame width in pixels (default 320)")
    p.add_argument("--height", type=int, default=240, help="frame height in pixels (default 240)")
    p.add_argument("--fps", type=float, default=2.0, help="camera rate in Hz (default 2.0)")
    p.add_argument("--duration", type=float, default=8.0, help="scene length in whole seconds, >= 4 (default 8)")
    p.add_argument("--media", choices=("auto", "procedural"), default="auto",
                   help="auto: scikit-image photos and recorded sounds where available; "
                        "procedural: shapes and synthetic sounds only")
    p.add_argument("--snr-db", type=float, default=None,
                   help="add ambient noise (babble, hum, fans, distractor sounds) at this SNR in dB to every "
                        "scene (default: none, except test-noisy: 20/10/5/0 dB by index)")
    p.add_argument("--occlusion", type=float, default=0.0, metavar="PROB",
                   help="probability that a scene's referred object is partly covered, 25-60 %% "
                        "(default 0; test-occluded: always)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated expression kinds to keep (scenes of other kinds are skipped, "
                        "--count counts kept scenes; default: all)")
    p.add_argument("--depth", action="store_true",
                   help="also write a registered depth image (/camera/depth/image_raw, 16UC1 mm) and "
                        "/camera/camera_info per frame, and the target's 3-D centroid in the scene info")
    p.add_argument("--hfov", type=float, default=60.0,
                   help="horizontal field of view of the depth camera in degrees (default 60)")
    p.add_argument("--depth-scale", type=float, default=1.0,
                   help="depth image size / colour image size, (0, 1] (default 1)")
    p.add_argument("--spoken-command", type=float, nargs="?", const=20.0, default=None, metavar="SNR_DB",
                   help="speak the command with espeak-ng into the scene audio at this speech-to-scene SNR in dB "
                        "(voice benchmark levels 20, 10, 5, 0; default 20 when given without a value); the bag "
                        "then has no text command topic and scene_info carries the ground truth "
                        "(refavs_ros.scenes.speech). --snr-db adds ambient noise on top, as for any scene")
    p.add_argument("--overwrite", action="store_true", help="replace bags that already exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success; 2 on a usage, configuration or bag error (message on stderr).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage / help
        return int(exc.code or 0)
    if args.count < 0 or args.start_index < 0:
        print("refavs-scenes: error: --count and --start-index must be >= 0", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from refavs_ros.rosio.bagio import write_scene_bag
    from refavs_ros.scenes import EXPRESSION_KINDS, SceneConfig, generate_scene, kind_for, scene_id
    from refavs_ros.scenes.config import validate_config

    config = SceneConfig(width=args.width, height=args.height, fps=args.fps, duration_sec=args.duration,
                         media=args.media, snr_db=args.snr_db, occlusion_prob=args.occlusion,
                         depth=args.depth, hfov_deg=args.hfov, depth_scale=args.depth_scale)
    out = Path(args.out_dir)
    kinds: Counter[str] = Counter()
    t0 = time.perf_counter()
    wanted = None if args.kinds is None else [k.strip() for k in args.kinds.split(",") if k.strip()]
    if wanted is not None and (not wanted or any(k not in EXPRESSION_KINDS for k in wanted)):
        print(f"refavs-scenes: error: --kinds must name kinds of {EXPRESSION_KINDS}, got {args.kinds!r}",
              file=sys.stderr)
        return 2
    try:
        validate_config(config)
        if wanted is None:
            indices = list(range(args.start_index, args.start_index + args.count))
        else:  # the kind of an index is known without planning the scene
            indices, i = [], args.start_index
            while len(indices) < args.count and i < args.start_index + 1000 * max(1, args.count):
                if kind_for(args.split, i, args.seed) in wanted:
                    indices.append(i)
                i += 1
        out.mkdir(parents=True, exist_ok=True)
        for index in tqdm(indices, desc=f"refavs-scenes {args.split}", unit="scene", disable=args.quiet):
            scene = generate_scene(args.split, index, args.seed, config)
            if args.spoken_command is not None:
                from refavs_ros.scenes.speech import speak_scene

                scene = speak_scene(scene, args.spoken_command, args.seed)
            write_scene_bag(scene, out / scene_id(args.split, index), storage=args.storage,
                            overwrite=args.overwrite)
            kinds[scene.kind] += 1
    except (RefAvsError, OSError) as exc:
        print(f"refavs-scenes: error: {exc}", file=sys.stderr)
        return 2
    mix = ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "none"
    print(f"refavs-scenes: wrote {len(indices)} {args.split} scene bags ({args.storage}, {args.width}x{args.height}, "
          f"{args.fps:g} fps, {args.duration:g} s{', depth' if args.depth else ''}; {mix}) to {out} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
