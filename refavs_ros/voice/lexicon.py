"""Pronunciation variants from espeak-ng's lexicon, in ARPAbet, for the command vocabulary.

pocketsphinx's dictionary (CMUdict) has one or two pronunciations per word; speakers (and
speech synthesizers) say many words differently ("camera" as two syllables, a flapped t in
"little"). :func:`espeak_pronunciations` asks espeak-ng (``--ipa``) how it pronounces each word
and maps the IPA to CMUdict's ARPAbet phone set, so the variants can be added to the
vocabulary file's ``pronunciations`` (the grammar backend registers them as alternates,
``word(2)``). Run it as a tool to print the YAML block::

    python -m refavs_ros.voice.lexicon [config/voice_vocabulary.yaml] [--voice en-us]

The mapping follows the IPA charts of CMUdict's 39 phones; stress and length marks are
dropped, syllabic consonants get a schwa (``l̩`` -> ``AH L``), the flap ``ɾ`` becomes ``D``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from refavs_ros.errors import ConfigError

IPA_TO_ARPABET: dict[str, str] = {
    # diphthongs and long vowels first (longest match wins)
    "aɪə": "AY ER", "aɪ": "AY", "aʊ": "AW", "eɪ": "EY", "oʊ": "OW", "əʊ": "OW", "ɔɪ": "OY", "ɪə": "IH R",
    "ɛə": "EH R", "ʊə": "UH R", "ɑː": "AA", "ɔː": "AO", "iː": "IY", "uː": "UW", "ɜː": "ER", "ɚ": "ER",
    "ɝ": "ER", "tʃ": "CH", "dʒ": "JH", "l̩": "AH L", "n̩": "AH N", "m̩": "AH M",
    "ɑ": "AA", "æ": "AE", "ʌ": "AH", "ə": "AH", "ɐ": "AH", "ɔ": "AO", "ɒ": "AA", "ɛ": "EH", "e": "EH",
    "ɪ": "IH", "ᵻ": "IH", "i": "IY", "ʊ": "UH", "u": "UW", "o": "OW", "a": "AE", "ɜ": "ER",
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "ɡ": "G", "f": "F", "v": "V",
    "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "m": "M", "n": "N",
    "ŋ": "NG", "l": "L", "j": "Y", "w": "W", "ɹ": "R", "r": "R", "ɾ": "D", "x": "K", "ɬ": "L",
}
"""IPA symbol -> ARPAbet phones (CMUdict set)."""

_SKIP = set("ˈˌː ‍-_ʔ̃.")


def ipa_to_arpabet(ipa: str) -> str:
    """Convert an IPA transcription (espeak-ng ``--ipa`` output) to ARPAbet.

    Args:
        ipa: e.g. ``"kˈæmɹə"``.

    Returns:
        Space-separated ARPAbet phones, e.g. ``"K AE M R AH"``.

    Raises:
        ConfigError: a symbol without a mapping (named).
    """
    out: list[str] = []
    i = 0
    keys = sorted(IPA_TO_ARPABET, key=len, reverse=True)
    while i < len(ipa):
        if ipa[i] in _SKIP:
            i += 1
            continue
        for k in keys:
            if ipa.startswith(k, i):
                out.append(IPA_TO_ARPABET[k])
                i += len(k)
                break
        else:
            raise ConfigError(f"no ARPAbet mapping for IPA symbol {ipa[i]!r} in {ipa!r}")
    return " ".join(out)


def espeak_pronunciations(words: list[str], voice: str = "en-us") -> dict[str, str]:
    """espeak-ng's pronunciation of each word, in ARPAbet.

    Args:
        words: lower-case words.
        voice: espeak-ng voice whose lexicon is used.

    Returns:
        word -> ARPAbet phones.

    Raises:
        ConfigError: espeak-ng is not installed, fails, or prints an unmappable symbol.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("espeak-ng is not installed (apt-get install espeak-ng)")
    out = {}
    for w in words:
        try:
            res = subprocess.run([exe, "-q", "-v", voice, "--ipa", w], check=True, capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigError(f"espeak-ng failed on {w!r}: {exc}") from None
        out[w] = ipa_to_arpabet(res.stdout.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    """Print a ``pronunciations`` YAML block of espeak-ng variants that the dictionary lacks."""
    from refavs_ros.voice.asr import _import_pocketsphinx
    from refavs_ros.voice.vocabulary import Vocabulary

    p = argparse.ArgumentParser(prog="python -m refavs_ros.voice.lexicon", description=__doc__.split("\n")[0])
    p.add_argument("vocabulary", nargs="?", default=None, help="vocabulary YAML (default: the shipped one)")
    p.add_argument("--voice", action="append", default=None, help="espeak-ng voice(s) (default en-us)")
    args = p.parse_args(argv)
    vocab = Vocabulary.load(args.vocabulary)
    ps = _import_pocketsphinx()
    d = ps.Decoder(lm=None, loglevel="FATAL")
    voices = args.voice or ["en-us"]
    print("pronunciations:")
    words = sorted(vocab.words())
    variants: dict[str, list[str]] = {}
    for voice in voices:
        for w, phones in espeak_pronunciations(words, voice).items():
            known = set(vocab.pronunciation_list(w))
            k = 1
            while True:
                name = w if k == 1 else f"{w}({k})"
                ph = d.lookup_word(name)
                if ph is None:
                    break
                known.add(ph)
                k += 1
            if phones not in known and phones not in variants.get(w, []):
                variants.setdefault(w, []).append(phones)
    for w in words:
        allp = vocab.pronunciation_list(w) + variants.get(w, [])
        if allp:
            print(f"  {w}: [{', '.join(allp)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
