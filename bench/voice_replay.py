"""Spoken vs typed commands on the same scenes, end to end through refavs-replay.

Writes each scene twice with ``refavs-scenes`` (typed: the command on /refavs/command;
spoken: ``--spoken-command SNR``, the command only in the audio) and replays them through the
shipped model: typed, and ``--voice`` with the command utterance suppressed in the audio memory
(``zero``) and not (``off``). Reports J / F / S of each run over the frames it scored, and the
typed J over the SAME frames the spoken run scored (a spoken command is only in force once it
has been said and recognised, so the spoken run scores the later frames of each clip), plus the
voice metrics of ``refavs-replay --voice`` (exact match, WER, latency, false commands).

    nice -n 15 python bench/voice_replay.py --split test-seen --count 200 --seed 9 --snr 20 \
        --work /tmp/voice_replay --json bench/voice_replay.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


class FrameRecorder:
    """A MetricAccumulator that also keeps every scored frame's scores per clip, in order."""

    def __init__(self) -> None:
        from refavs_ros.eval.metrics import MetricAccumulator

        self.acc = MetricAccumulator()
        self.frames: dict[str, list] = defaultdict(list)

    def process(self, probability, gt, *, groups, clip):
        from refavs_ros.eval.metrics import frame_scores

        self.frames[Path(clip).name].append(frame_scores(probability, gt))
        return self.acc.process(probability, gt, groups=groups, clip=clip)

    def evaluate(self):
        return self.acc.evaluate()


def _j_s(frames) -> tuple[float | None, float | None, int]:
    js = [f.j for f in frames]  # per-frame mode J: every frame (true-negative fraction on empty GT)
    ss = [f.s for f in frames if f.gt_empty]
    return (float(np.mean(js)) if js else None, float(np.mean(ss)) if ss else None, len(frames))


def run(root: Path, voice, predictor):
    from refavs_ros.rosio.bagio import find_bags
    from refavs_ros.tools.replay import replay_bag, summarize

    rec = FrameRecorder()
    reports = [replay_bag(b, predictor, accumulator=rec, voice=voice, warn=lambda t: None) for b in find_bags(root)]
    return summarize(rec, reports), rec.frames, reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="test-seen")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--snr", type=float, default=20.0)
    p.add_argument("--work", default="/tmp/voice_replay")
    p.add_argument("--json", default="")
    p.add_argument("--modes", nargs="+", default=["zero", "off"], choices=["zero", "attenuate", "off"],
                   help="suppression modes to replay (default: zero off)")
    p.add_argument("--pad-sec", type=float, default=None, help="VoiceOptions.pad_sec (default: its default)")
    args = p.parse_args(argv)

    from refavs_ros.node.voice import VoiceOptions, VoiceStage
    from refavs_ros.predictor import StreamingPredictor
    from refavs_ros.tools.scenes_cli import main as scenes
    from refavs_ros.voice import RecognizerConfig, VoiceCommandRecognizer

    work = Path(args.work)
    typed, spoken = work / "typed", work / f"spoken{args.snr:g}"
    common = ["--split", args.split, "--count", str(args.count), "--seed", str(args.seed), "--quiet"]
    if not typed.exists():
        scenes([str(typed), *common])
    if not spoken.exists():
        scenes([str(spoken), *common, "--spoken-command", str(args.snr)])
    predictor = StreamingPredictor.from_pretrained(threads=1)
    recognizer = VoiceCommandRecognizer(RecognizerConfig())
    out = {"split": args.split, "count": args.count, "seed": args.seed, "snr_db": args.snr,
           "load_avg": os.getloadavg(), "runs": {}}
    t0 = time.perf_counter()
    # the typed run does not depend on the recogniser, only on the bags and the weights
    from refavs_ros.resources import default_weights_path, file_sha256

    cache = work / f"typed_results-{file_sha256(default_weights_path())[:16]}.pkl"
    if cache.exists():
        typed_summary, typed_frames = pickle.loads(cache.read_bytes())
    else:
        typed_summary, typed_frames, _ = run(typed, None, predictor)
        cache.write_bytes(pickle.dumps((typed_summary, dict(typed_frames))))
    out["runs"]["typed"] = {k: typed_summary[k] for k in ("J", "F", "S", "frames", "latency_ms")}
    print(f"typed: J {typed_summary['J']}, F {typed_summary['F']}, S {typed_summary['S']}", flush=True)
    pad = {} if args.pad_sec is None else {"pad_sec": args.pad_sec}
    out["pad_sec"] = VoiceOptions(**pad).pad_sec
    for mode in args.modes:
        stage = VoiceStage(recognizer, VoiceOptions(suppression=mode, **pad))
        summ, frames, _ = run(spoken, stage, predictor)
        # typed over the same frames: the last K typed frames of each clip, K = frames the spoken run scored
        same = [f for clip, fr in frames.items() for f in typed_frames.get(clip, [])[len(typed_frames.get(clip, [])) - len(fr):]]
        spoken_frames = [f for fr in frames.values() for f in fr]
        j_t, s_t, _ = _j_s(same)
        j_s, s_s, n_s = _j_s(spoken_frames)
        out["runs"][f"spoken-{mode}"] = {
            "J": summ["J"], "F": summ["F"], "S": summ["S"], "frames": summ["frames"], "voice": summ.get("voice"),
            "same_frames": {"spoken_J": j_s, "typed_J": j_t, "spoken_S": s_s, "typed_S": s_t, "frames": n_s},
        }
        v = summ.get("voice") or {}
        print(f"spoken, suppression {mode}: J {summ['J']}, F {summ['F']}, S {summ['S']}; same frames: spoken J "
              f"{j_s} vs typed J {j_t} over {n_s} frames; voice exact {v.get('exact_match')}, WER {v.get('wer')}, "
              f"false {v.get('extra_commands')}", flush=True)
    out["wall_sec"] = time.perf_counter() - t0
    out["load_avg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
