"""Voice-command benchmark: spoken-command scenes through the recogniser (no predictor).

For each scene of a split, the scene's expression is spoken with espeak-ng into its audio at
each SNR (refavs_ros.scenes.speech.speak_scene), the audio is streamed through
VoiceCommandRecognizer in 512-sample chunks stamped like the scene bags, and the recognised
commands are compared with the ground truth:

* exact match: the command in force at the end of the scene (the last accepted one) equals the
  ground truth after normalisation (lower case, no punctuation, hyphens as spaces);
* WER: word error rate of that command (no command = all words deleted), corpus level;
* latency: stamp of the chunk that completed the command + the wall time spent on that chunk,
  minus the stamp of the end of the speech (ground truth) -- "utterance end -> command"; with
  ``--realtime`` the audio is fed at its real rate and the command's wall-clock time is used
  (the only honest figure for speculative recognition, which works during the pause);
* extra commands: accepted commands other than the first correct one (scene sounds such as the
  person's espeak "hello there" can be heard as commands).

Usage (niced, it is long)::

    nice -n 15 python bench/voice_commands.py --split test-seen --count 200 --seed 9 \
        --snr clean 20 10 5 0 --json bench/voice_commands.json

Latency on a quiet machine (run un-niced, nothing else running; prints p50/p95 per level)::

    python bench/voice_commands.py --count 200 --snr 20

Prints one line per SNR and a per-voice breakdown; ``--errors`` lists every miss.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict

import numpy as np


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists (substitutions + deletions + insertions)."""
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
            prev, d[j] = d[j], cur
    return d[len(hyp)]


def run_scene(rec, scene, chunk: int = 512, realtime: bool = False):
    """Stream a scene's audio through ``rec``; return [(command, emit time on the stamp clock, ns)].

    Offline (default) chunks are pushed as fast as the recogniser takes them and a command's
    emit time is the end of the chunk that completed it plus the wall time of that push: work
    the recogniser did earlier (speculative recognition during a pause) is not credited.
    ``realtime`` paces the chunks like a microphone (each pushed once its last sample has been
    "captured") and the emit time is the wall clock mapped onto the stamps: what a live robot
    sees.
    """
    from refavs_ros.rosio.bagio import audio_chunks

    rec.reset()
    out = []
    a0 = int(scene.audio_start_ns)
    wall0 = time.perf_counter()
    for stamp, samples in audio_chunks(scene.audio, a0, int(scene.sample_rate), chunk):
        chunk_end = stamp + round(len(samples) * 1e9 / scene.sample_rate)
        if realtime:
            delay = (chunk_end - a0) / 1e9 - (time.perf_counter() - wall0)
            if delay > 0:
                time.sleep(delay)
        t0 = time.perf_counter()
        cmds = rec.push_audio(stamp, samples, int(scene.sample_rate))
        now = time.perf_counter()
        emit = a0 + int((now - wall0) * 1e9) if realtime else chunk_end + int((now - t0) * 1e9)
        for c in cmds:
            out.append((c, emit))
    end = int(scene.audio_start_ns) + round(scene.audio.size * 1e9 / scene.sample_rate)
    for c in rec.flush():
        out.append((c, end))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="test-seen")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--start-index", type=int, default=0)
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--snr", nargs="+", default=["20", "10", "5", "0"],
                   help="SNR levels (dB); 'clean' = the speech alone, scene sounds muted")
    p.add_argument("--cmn", default=None, choices=["utterance", "live", "batch"],
                   help="grammar backend cepstral mean normalisation (default: the backend's)")
    p.add_argument("--backend", default=None, help="ASR backend (default: the recogniser's)")
    p.add_argument("--speculative", type=float, default=None,
                   help="speculative_sec of the recogniser (default: the config's; 0 = off)")
    p.add_argument("--moonshine-dir", default="", help="Moonshine model directory (default: the installed default)")
    p.add_argument("--gate-db", type=float, default=None,
                   help="VAD min_level_above_ambient_db (default: the config's; negative = off)")
    p.add_argument("--threshold", type=float, default=None, help="confidence threshold (default: config)")
    p.add_argument("--commander-drop-db", type=float, default=None,
                   help="RecognizerConfig.commander_drop_db (default: config; negative = off)")
    p.add_argument("--min-silence", type=float, default=None)
    p.add_argument("--json", default="")
    p.add_argument("--errors", action="store_true")
    p.add_argument("--realtime", action="store_true",
                   help="feed the audio at its real rate (latency as a live robot sees it; 8 s per scene)")
    args = p.parse_args(argv)

    from refavs_ros.scenes import generate_scene
    from refavs_ros.scenes.speech import speak_scene
    from refavs_ros.voice import (
        RecognizerConfig,
        VadConfig,
        VoiceCommandRecognizer,
        normalise_text,
    )

    kw = {}
    if args.threshold is not None:
        kw["confidence_threshold"] = args.threshold
    if args.commander_drop_db is not None:
        kw["commander_drop_db"] = args.commander_drop_db
    vad_kw = {}
    if args.min_silence is not None:
        vad_kw.update(min_silence_sec=args.min_silence, speech_pad_sec=min(VadConfig.speech_pad_sec, args.min_silence))
    if args.gate_db is not None:
        vad_kw.update(min_level_above_ambient_db=args.gate_db)
    if vad_kw:
        kw["vad"] = VadConfig(**vad_kw)
    if args.backend is not None:
        kw["backend"] = args.backend
    if args.speculative is not None:
        kw["speculative_sec"] = args.speculative
    if args.moonshine_dir:
        kw["moonshine_dir"] = args.moonshine_dir
    heard: list = []
    backend = None
    if args.cmn is not None:
        from refavs_ros.voice import Vocabulary
        from refavs_ros.voice.asr import GrammarBackend

        backend = GrammarBackend(Vocabulary.load(None), cmn=args.cmn)
    rec = VoiceCommandRecognizer(RecognizerConfig(**kw), on_transcript=heard.append,
                                 backend=backend)
    print(f"load average at start {[round(x, 2) for x in os.getloadavg()]} ({os.cpu_count()} CPUs); latency "
          "figures include any wait for the CPU", flush=True)
    scenes = [generate_scene(args.split, i, args.seed)
              for i in range(args.start_index, args.start_index + args.count)]
    results = {"split": args.split, "count": args.count, "seed": args.seed, "backend": rec.backend.name, "realtime": args.realtime,
               "config": {k: str(v) for k, v in rec.config.__dict__.items()}, "load_avg": os.getloadavg(),
               "cpu": platform.processor() or platform.machine(), "levels": {}}
    for level in args.snr:
        clean = level == "clean"
        snr = None if clean else float(level)
        exact = 0
        errs = words = 0
        lat = []
        lat_detail = []
        extra = 0
        none = 0
        per_voice: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        misses = []
        reasons: Counter[str] = Counter()
        t0 = time.perf_counter()
        audio_sec = 0.0
        for scene in scenes:
            spoken = speak_scene(scene, snr, args.seed, clean=clean)
            sc = spoken.meta["spoken_command"]
            audio_sec += spoken.audio.size / spoken.sample_rate
            heard.clear()
            hits, specs = rec.stats["speculation_hits"], rec.stats["speculations"]
            cmds = run_scene(rec, spoken, realtime=args.realtime)
            for tr in heard:
                reasons[tr.reason] += 1
            ref = normalise_text(sc["text"]).split()
            final = cmds[-1][0].text.split() if cmds else []
            ok = final == ref
            exact += ok
            errs += word_errors(ref, final)
            words += len(ref)
            none += not cmds
            per_voice[sc["voice"]][0] += ok
            per_voice[sc["voice"]][1] += 1
            first_ok = next(((c, t) for c, t in cmds if c.text.split() == ref), None)
            if first_ok is not None:
                lat.append((first_ok[1] - sc["end_ns"]) / 1e6)
                tr = next((t for t in heard if t.command is first_ok[0]), None)
                lat_detail.append({"scene": spoken.scene_id, "ms": round(lat[-1], 1),
                                   "decode_ms": round(1000 * tr.decode_sec, 1) if tr else None,
                                   "speculations": rec.stats["speculations"] - specs,
                                   "speculation_hits": rec.stats["speculation_hits"] - hits})
            extra += len(cmds) - (1 if first_ok is not None else 0)
            if not ok:
                misses.append({"scene": spoken.scene_id, "ref": " ".join(ref), "got": [c.text for c, _ in cmds],
                               "voice": sc["voice"], "rate": sc["rate_wpm"], "pitch": sc["pitch"],
                               "heard": [t.describe() for t in heard]})
        wall = time.perf_counter() - t0
        n = len(scenes)
        lvl = {
            "snr_db": "clean" if clean else snr, "scenes": n, "exact_match": exact / n, "wer": errs / max(words, 1),
            "no_command": none, "extra_commands": extra,
            "latency_ms_p50": float(np.percentile(lat, 50)) if lat else None,
            "latency_ms_p95": float(np.percentile(lat, 95)) if lat else None,
            "latency_ms_max": float(np.max(lat)) if lat else None,
            "latency_detail": lat_detail,
            "real_time_factor": wall / audio_sec, "per_voice": {k: v[0] / v[1] for k, v in sorted(per_voice.items())},
            "transcript_reasons": dict(reasons), "misses": misses,
        }
        results["levels"]["clean" if clean else str(snr)] = lvl
        print(f"{'clean' if clean else f'SNR {snr:>4.0f} dB'}: exact {100 * lvl['exact_match']:.1f} % ({exact}/{n}), WER {100 * lvl['wer']:.1f} %, "
              f"no command {none}, extra commands {extra}, latency p50 {lvl['latency_ms_p50'] or 0:.0f} ms "
              f"p95 {lvl['latency_ms_p95'] or 0:.0f} ms, RTF {lvl['real_time_factor']:.3f}; per voice "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in lvl["per_voice"].items()), flush=True)
        if args.errors:
            for m in misses:
                print("   miss", m["scene"], repr(m["ref"]), "->", m["got"], m["voice"], m["rate"], m["pitch"], m["heard"])
    results["load_avg_end"] = os.getloadavg()
    print(f"load average at end {[round(x, 2) for x in results['load_avg_end']]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
