"""False voice commands in non-speech audio: at least an hour of it through the recogniser.

The audio is a stream of 20-s blocks, round-robin over four sources, each block at a random
level (-40..-8 dBFS RMS) with random gaps, stamped continuously and streamed in 512-sample
chunks (as the microphone node publishes):

* ``object``: the scene benchmark's object sounds (refavs_ros.scenes.media: freedesktop
  recordings, synthetic roar/engine/beep/ding/click/chime/meow/neigh; big objects an octave
  lower), several overlapping; the espeak-ng animal calls ("meeow", "neeeigh") are
  synthesised speech and the person's "hello there, how are you?" is speech, so they go to a
  separate ``speechlike`` block (reported apart, not counted in the non-speech hour);
* ``freedesktop``: every sound of /usr/share/sounds/freedesktop/stereo except the spoken
  channel announcements (``audio-channel-*``);
* ``noise``: white, pink and brown noise, steady or amplitude-modulated;
* ``music``: music-like tones: random melodies of harmonic notes with attack/decay envelopes,
  chords, vibrato, at random tempi.

Reports false commands (total, per hour, per source), transcripts by reason and the real-time
factor. Run it niced (it takes several minutes)::

    nice -n 15 python bench/voice_false_commands.py --minutes 62 --json bench/voice_false_commands.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter

import numpy as np

RATE = 16000
BLOCK_SEC = 20.0


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1.0
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _place(block: np.ndarray, sound: np.ndarray, rng: np.random.Generator) -> None:
    if sound.size >= block.size:
        block += sound[: block.size]
        return
    start = int(rng.integers(0, block.size - sound.size))
    block[start : start + sound.size] += sound


def object_block(rng, speechlike: bool) -> np.ndarray:
    from refavs_ros.scenes.catalog import CATEGORY_SPECS
    from refavs_ros.scenes.media import category_sound, looped_sound

    block = np.zeros(int(BLOCK_SEC * RATE), np.float32)
    cats = [c.name for c in CATEGORY_SPECS if (c.sound[0] == "espeak") == speechlike]
    for _ in range(int(rng.integers(2, 6))):
        cat = cats[int(rng.integers(len(cats)))]
        size = "big" if rng.random() < 0.4 else "small"
        n = int(rng.uniform(1.0, 6.0) * RATE)
        wave = looped_sound(cat, size, "auto", RATE, n) if rng.random() < 0.5 else category_sound(cat, "auto").wave
        _place(block, _level(np.asarray(wave, np.float32), float(rng.uniform(-35, -12))), rng)
    return block


def freedesktop_block(rng, files: list[np.ndarray]) -> np.ndarray:
    block = np.zeros(int(BLOCK_SEC * RATE), np.float32)
    for _ in range(int(rng.integers(3, 8))):
        s = files[int(rng.integers(len(files)))]
        _place(block, _level(s, float(rng.uniform(-35, -10))), rng)
    return block


def noise_block(rng) -> np.ndarray:
    n = int(BLOCK_SEC * RATE)
    white = rng.standard_normal(n).astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        x = white
    else:
        spec = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 1.0)
        spec /= np.sqrt(f) if kind == 1 else f  # pink 1/f power, brown 1/f^2
        x = np.fft.irfft(spec, n).astype(np.float32)
    if rng.random() < 0.5:  # amplitude modulation 0.2..8 Hz
        t = np.arange(n) / RATE
        x *= (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 8.0) * t)).astype(np.float32)
    return _level(x, float(rng.uniform(-40, -12)))


def music_block(rng) -> np.ndarray:
    n = int(BLOCK_SEC * RATE)
    out = np.zeros(n, np.float32)
    tempo = rng.uniform(60, 180)  # beats per minute
    beat = int(RATE * 60 / tempo)
    base = rng.uniform(110, 440)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    pos = 0
    while pos < n:
        dur = beat * int(rng.choice([1, 1, 2, 4]))
        notes = [base * 2 ** (scale[int(rng.integers(8))] / 12)]
        if rng.random() < 0.3:  # chord
            notes += [notes[0] * 2 ** (4 / 12), notes[0] * 2 ** (7 / 12)]
        t = np.arange(min(dur, n - pos)) / RATE
        vib = 1 + 0.005 * np.sin(2 * np.pi * 5.5 * t) if rng.random() < 0.5 else 1.0
        tone = sum(sum(np.sin(2 * np.pi * f * k * vib * t) / k ** rng.uniform(1.0, 2.0) for k in range(1, 6))
                   for f in notes)
        env = np.minimum(t / 0.02, 1.0) * np.exp(-t * rng.uniform(1.0, 6.0))
        out[pos : pos + t.size] += (tone * env).astype(np.float32)
        pos += dur
    return _level(out, float(rng.uniform(-35, -10)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=62.0, help="non-speech minutes (default 62)")
    p.add_argument("--speechlike-minutes", type=float, default=10.0,
                   help="minutes of the scene's speech-like object sounds, reported apart (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)

    import tempfile

    from refavs_ros.scenes.media import _convert_with_sox
    from refavs_ros.voice import RecognizerConfig, VoiceCommandRecognizer

    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in sorted(glob.glob("/usr/share/sounds/freedesktop/stereo/*.oga")):
            if "audio-channel-" in os.path.basename(f):
                continue  # spoken announcements
            try:
                files.append(_convert_with_sox(f, tmp))
            except Exception as exc:  # noqa: BLE001 - a missing converter leaves fewer files
                print(f"skip {f}: {exc}", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    heard: list = []
    rec = VoiceCommandRecognizer(RecognizerConfig(), on_transcript=heard.append)
    sources = ["object", "freedesktop", "noise", "music"] if files else ["object", "noise", "music"]
    n_blocks = int(np.ceil(args.minutes * 60 / BLOCK_SEC))
    n_speechlike = int(np.ceil(args.speechlike_minutes * 60 / BLOCK_SEC))
    plan = [sources[i % len(sources)] for i in range(n_blocks)] + ["speechlike"] * n_speechlike
    stamp = 1_700_000_000 * 10**9
    stats = {s: {"sec": 0.0, "commands": [], "reasons": Counter()} for s in sources + ["speechlike"]}
    t0 = time.perf_counter()
    for src in plan:
        if src == "object":
            block = object_block(rng, False)
        elif src == "speechlike":
            block = object_block(rng, True)
        elif src == "freedesktop":
            block = freedesktop_block(rng, files)
        elif src == "noise":
            block = noise_block(rng)
        else:
            block = music_block(rng)
        block += rng.standard_normal(block.size).astype(np.float32) * np.float32(10 ** (-55 / 20))
        peak = float(np.abs(block).max())
        if peak > 0.95:
            block *= np.float32(0.95 / peak)
        pcm = np.round(block * 32767).astype(np.int16)
        heard.clear()
        for i in range(0, pcm.size, 512):
            for cmd in rec.push_audio(stamp + round(i * 1e9 / RATE), pcm[i : i + 512], RATE):
                stats[src]["commands"].append(cmd.text)
        stamp += round(pcm.size * 1e9 / RATE)
        stats[src]["sec"] += pcm.size / RATE
        for tr in heard:
            stats[src]["reasons"][tr.reason] += 1
    wall = time.perf_counter() - t0
    nonspeech_sec = sum(stats[s]["sec"] for s in sources)
    false = sum(len(stats[s]["commands"]) for s in sources)
    out = {
        "nonspeech_minutes": nonspeech_sec / 60, "false_commands": false,
        "false_commands_per_hour": false / (nonspeech_sec / 3600),
        "real_time_factor": wall / sum(v["sec"] for v in stats.values()), "load_avg": os.getloadavg(),
        "per_source": {s: {"minutes": v["sec"] / 60, "commands": v["commands"], "transcripts": dict(v["reasons"])}
                       for s, v in stats.items()},
        "config": {k: str(v) for k, v in rec.config.__dict__.items()},
    }
    print(f"non-speech: {out['nonspeech_minutes']:.1f} min, false commands {false} "
          f"({out['false_commands_per_hour']:.2f} per hour), RTF {out['real_time_factor']:.3f}")
    for s, v in out["per_source"].items():
        print(f"  {s:12s} {v['minutes']:6.1f} min  commands {len(v['commands'])} {v['commands'][:5]}  "
              f"transcripts {v['transcripts']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
