"""Render bench/VOICE_RESULTS.md from the JSON outputs of the three voice benches.

    python bench/voice_report.py --commands bench/voice_commands.json \
        --false bench/voice_false_commands.json --replay bench/voice_replay.json > bench/VOICE_RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _lvl(key: str) -> str:
    return "clean" if key == "clean" else f"{float(key):.0f} dB"


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--commands", required=True)
    p.add_argument("--false", required=True)
    p.add_argument("--replay", default="")
    args = p.parse_args(argv)
    cmd = json.load(open(args.commands))
    fal = json.load(open(args.false))
    out = ["# Voice commands: measured figures (issue 9)", ""]
    out.append(f"Recogniser: `RecognizerConfig()` defaults (silero-vad, the {cmd.get('backend', 'grammar')!r} backend "
               f"with the shipped `config/voice_vocabulary.yaml`, confidence threshold "
               f"{cmd['config'].get('confidence_threshold')}). Machine: 2-core CPU shared with other jobs; load "
               f"average at start {[round(x, 1) for x in cmd['load_avg']]}, at end "
               f"{[round(x, 1) for x in cmd.get('load_avg_end', [])]} (benches run under `nice -n 15`, so the "
               "latency figures include waiting for the CPU).")
    out += ["", f"## Spoken-command scenes ({cmd['split']}, {cmd['count']} scenes, seed {cmd['seed']})", "",
            "```", f"nice -n 15 python bench/voice_commands.py --split {cmd['split']} --count {cmd['count']} "
            f"--seed {cmd['seed']} --snr 20 10 --json 20_10.json   # and --snr 5 0 --json 5_0.json",
            "# bench/voice_commands.json = both, levels merged", "```", "",
            "| SNR | exact match | WER | no command | extra commands | end -> command p50 | p95 | max | RTF |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, lvl in cmd["levels"].items():
        out.append(f"| {_lvl(key)} | {_pct(lvl['exact_match'])} | {_pct(lvl['wer'])} | {lvl['no_command']} | "
                   f"{lvl['extra_commands']} | {_num(lvl['latency_ms_p50'], 0)} ms | {_num(lvl['latency_ms_p95'], 0)} ms | "
                   f"{_num(lvl['latency_ms_max'], 0)} ms | {_num(lvl['real_time_factor'])} |")
    out += ["", "Exact match per voice:", "", "| SNR | " + " | ".join(next(iter(cmd["levels"].values()))["per_voice"])
            + " |", "|---|" + "---|" * len(next(iter(cmd["levels"].values()))["per_voice"])]
    for key, lvl in cmd["levels"].items():
        out.append(f"| {_lvl(key)} | " + " | ".join(_pct(v) for v in lvl["per_voice"].values()) + " |")
    out += ["", "Why scenes missed (from each miss's transcripts):", ""]
    for key, lvl in cmd["levels"].items():
        cats: dict[str, int] = {}
        for m in lvl["misses"]:
            heard = m.get("heard", [])
            ref = m["ref"]
            if ref in m["got"]:
                cat = "right command, then replaced by a later false one"
            elif any(h.startswith(f'"{ref}"') and "low confidence" in h for h in heard):
                cat = "right words, rejected for low confidence"
            elif m["got"]:
                cat = "wrong command accepted"
            elif any("too quiet" in h for h in heard) and not any("low confidence" in h for h in heard):
                cat = "no command: dropped by the ambient-level gate"
            else:
                cat = "no command: wrong words rejected / nothing recognised"
            cats[cat] = cats.get(cat, 0) + 1
        out.append(f"* {_lvl(key)} ({len(lvl['misses'])} misses): "
                   + ", ".join(f"{k} {v}" for k, v in sorted(cats.items(), key=lambda kv: -kv[1])))
    out += ["", "Transcripts by reason (all utterances the VAD cut, command or scene sound):", ""]
    for key, lvl in cmd["levels"].items():
        out.append(f"* {_lvl(key)}: " + ", ".join(f"{k} {v}" for k, v in sorted(lvl["transcript_reasons"].items())))
    out += ["", "Definitions: exact match = the command in force at the end of the scene (the last accepted one) "
            "equals the ground truth after normalisation (lower case, punctuation dropped, hyphens as spaces); "
            "WER over the same final command (no command = every word deleted); latency = stamp of the audio "
            "chunk that completed the first exact command + the wall time spent on it - end of the synthesised "
            "speech; extra commands = accepted commands other than the first exact one (scene sounds heard as "
            "commands, or a wrong command before/after the right one)."]
    out += ["", f"## False commands in non-speech audio ({fal['nonspeech_minutes']:.1f} min)", "",
            "```", "nice -n 15 python bench/voice_false_commands.py --minutes 62 --json bench/voice_false_commands.json",
            "```", "", "| source | minutes | false commands | transcripts |", "|---|---|---|---|"]
    for s, v in fal["per_source"].items():
        tr = ", ".join(f"{k} {n}" for k, n in sorted(v["transcripts"].items())) or "none"
        out.append(f"| {s} | {v['minutes']:.1f} | {len(v['commands'])} | {tr} |")
    out += ["", f"Non-speech total: **{fal['false_commands']} false commands in {fal['nonspeech_minutes']:.1f} min** "
            f"({fal['false_commands_per_hour']:.2f} per hour). `speechlike` (the scene benchmark's own espeak-ng "
            "voices: the person's \"hello there, how are you?\", the cat's \"meeow\", the horse's \"neeeigh\") is "
            "speech and reported apart; its commands: " + ", ".join(repr(c) for c in fal["per_source"]["speechlike"]["commands"])
            + "."]
    if args.replay:
        rep = json.load(open(args.replay))
        out += ["", f"## End to end: spoken vs typed commands ({rep['split']}, {rep['count']} scenes, seed {rep['seed']}, "
                f"{rep['snr_db']:g} dB)", "", "```",
                f"nice -n 15 python bench/voice_replay.py --split {rep['split']} --count {rep['count']} --seed {rep['seed']} "
                f"--snr {rep['snr_db']:g} --json bench/voice_replay.json", "```", "",
                "| run | J (its frames) | F | S | frames scored | J spoken, same frames | J typed, same frames | exact match |",
                "|---|---|---|---|---|---|---|---|"]
        t = rep["runs"]["typed"]
        out.append(f"| typed (command at t=0) | {_num(t['J'])} | {_num(t['F'])} | {_num(t['S'])} | "
                   f"{t['frames'].get('scored')} | | | |")
        for name in ("spoken-zero", "spoken-off"):
            r = rep["runs"].get(name)
            if r is None:
                continue
            sf = r["same_frames"]
            v = r.get("voice") or {}
            out.append(f"| {name.replace('spoken-', 'spoken, suppression ')} | {_num(r['J'])} | {_num(r['F'])} | "
                       f"{_num(r['S'])} | {r['frames'].get('scored')} | {_num(sf['spoken_J'])} | {_num(sf['typed_J'])} | "
                       f"{_pct(v.get('exact_match'))} |")
        out += ["", "A spoken command is in force only once it has been said and recognised, so the spoken runs "
                "score the later frames of each clip (frames before a command are not predicted); \"same frames\" "
                "compares them with the typed run on exactly those frames. J here is per-frame mode over all scored "
                "frames (null frames count their true-negative fraction), as refavs-replay reports it."]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
