"""The pocketsphinx worker process of the ``fusion`` backend (``python -m refavs_ros.voice.ps_worker``).

pocketsphinx holds the GIL while it decodes, so :class:`refavs_ros.voice.fusion.PocketsphinxProposer`
runs it in this separate interpreter, started with :mod:`subprocess` (not :mod:`multiprocessing`,
whose spawn start method re-runs the parent's ``__main__`` script in the child).

Protocol on stdin / stdout (binary):

* first, one JSON line: ``{"lists", "rules", "pronunciations", "wake_phrase"}`` (the vocabulary);
  answer: one JSON line ``{"ready": true}`` or ``{"error": "..."}`` (then the worker exits);
* then, per utterance: an 8-byte little-endian sample count N and N float32 little-endian
  samples (16 kHz mono); answer: ``{"text": "..."}`` (normalised 1-best, "" if none) or
  ``{"error": "..."}``. End of input (the parent closed the pipe) ends the worker.
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np

MAX_SAMPLES = 64 * 16000
"""Longest utterance accepted (64 s at 16 kHz, Moonshine's limit too)."""


def _reply(out, obj: dict) -> None:
    out.write((json.dumps(obj) + "\n").encode())
    out.flush()


def _read_exact(inp, n: int) -> bytes | None:
    """``n`` bytes from a blocking buffered stream (its ``read(n)`` returns fewer only at end of
    input); None at end of input."""
    data = inp.read(n)
    return data if len(data) == n else None


def serve(inp, out) -> int:
    """Run the protocol above on binary streams ``inp`` / ``out``; returns the exit code."""
    from refavs_ros.voice.asr import GrammarBackend
    from refavs_ros.voice.vocabulary import Vocabulary

    line = inp.readline()
    if not line:
        return 0
    try:
        cfg = json.loads(line)
        backend = GrammarBackend(Vocabulary(cfg["lists"], cfg["rules"], cfg.get("pronunciations") or {}),
                                 cfg.get("wake_phrase", ""), cmn="batch", garbage=False)
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which raises)
        _reply(out, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _reply(out, {"ready": True})
    while True:
        head = _read_exact(inp, 8)
        if head is None:
            return 0
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAMPLES:
            _reply(out, {"error": f"utterance of {n} samples is longer than {MAX_SAMPLES}"})
            return 1
        data = _read_exact(inp, 4 * n)
        if data is None:
            return 0
        try:
            text = backend.transcribe(np.frombuffer(data, "<f4").astype(np.float32)).text
            _reply(out, {"text": text})
        except Exception as exc:  # noqa: BLE001  (one bad utterance must not end the worker)
            _reply(out, {"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
