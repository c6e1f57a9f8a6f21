"""Voice commands (refavs_ros.voice, issue 9): vocabulary, VAD segmentation, recogniser decisions,
the pocketsphinx grammar backend on espeak-ng speech, Whisper from a local directory, spoken scenes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from refavs_ros.errors import ConfigError, InputError, ModelLoadError
from refavs_ros.voice import (
    Hypothesis,
    RecognizerConfig,
    UtteranceSegmenter,
    VadConfig,
    Vocabulary,
    VoiceCommandRecognizer,
    check_clip,
    normalise_text,
)
from refavs_ros.voice.vad import WINDOW

RATE = 16000
T0 = 1_700_000_000 * 10**9
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.load()


def say(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> np.ndarray:
    from refavs_ros.scenes.speech import synthesize

    return synthesize(text, voice, rate, pitch)


def with_floor(x: np.ndarray, seed: int = 0, level: float = 0.003) -> np.ndarray:
    """A microphone-like noise floor (real microphones never deliver digital silence)."""
    return (x + level * np.random.default_rng(seed).standard_normal(x.size)).astype(np.float32)


# ------------------------------------------------------------------------------- vocabulary


def test_normalise_text():
    assert normalise_text("Where is the red-coloured Cup?") == "where is the red coloured cup"
    assert normalise_text("  the   top-most,  object ") == "the top most object"
    assert normalise_text("?!") == ""


def test_default_vocabulary_covers_every_scene_expression(vocab):
    from refavs_ros.scenes import SPLITS, plan_scene

    for split in SPLITS:
        for i in range(0, 400, 3):
            expr = plan_scene(split, i, 11).expression
            assert vocab.matches(expr), (split, i, expr)


def test_vocabulary_rejects_non_commands(vocab):
    for text in ("what time is it", "hello there how are you", "the", "", "cup the", "the dog that barks loud"):
        assert not vocab.matches(text), text
    assert vocab.mentions("is there a cup over there")
    assert not vocab.mentions("hello there")


def test_jsgf_grammar_text(vocab):
    jsgf = vocab.to_jsgf()
    assert jsgf.startswith("#JSGF V1.0;")
    assert "public <utterance> = <r_command>;" in jsgf
    assert "<r_objects> = (" in jsgf and "camera" in jsgf
    assert "[ hey robot ] <r_command>" in vocab.to_jsgf("Hey, robot")
    with pytest.raises(ConfigError, match="wake phrase"):
        vocab.to_jsgf("robot 2000")


def test_vocabulary_user_extension(tmp_path):
    p = tmp_path / "v.yaml"
    p.write_text("objects: [teapot, red car]\nrules:\n  command: \"[ find ] the <objects> [ please ]\"\n"
                 "pronunciations:\n  teapot: T IY P AA T\n")
    v = Vocabulary.load(p)
    assert v.matches("find the red car please") and v.matches("the teapot")
    assert not v.matches("the cup")
    assert v.pronunciation_list("teapot") == ["T IY P AA T"]


@pytest.mark.parametrize("content, message", [
    ("objects: [cup]\n", "no rule 'command'"),
    ("objects: [cup]\nrules:\n  command: the <things>\n", "undefined"),
    ("rules:\n  a: <b>\n  b: <a>\n  command: <a>\n", "recursive"),
    ("rules:\n  command: the Cup\n", "bad word"),
    ("rules:\n  command: the ( cup\n", "missing"),
    ("rules:\n  command: the cup\npronunciations:\n  cup: k ah p\n", "ARPAbet"),
    ("nouns: [cup]\nrules:\n  command: the cup\n", "unknown keys"),
    ("- just\n- a list\n", "mapping"),
    ("rules: [\n", "not valid YAML"),
])
def test_bad_vocabulary_files(tmp_path, content, message):
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Vocabulary.load(p)


def test_unknown_vocabulary_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        Vocabulary.load(missing)
    with pytest.raises(ConfigError, match="nope.yaml"):
        VoiceCommandRecognizer(RecognizerConfig(vocabulary_path=str(missing)), backend=_FakeBackend(),
                               vad=lambda w: 0.0)


# --------------------------------------------------------------------------------- segmenter


def _feed(seg: UtteranceSegmenter, probs, amp=0.1):
    out = []
    for k, p in enumerate(probs):
        window = np.full(WINDOW, amp if p > 0.5 else amp / 1000, np.float32)
        s = seg.push(window, p)
        if s is not None:
            out.append((k, s))
    return out


def test_segmenter_hysteresis_min_speech_and_silence():
    cfg = VadConfig(threshold=0.5, neg_threshold=0.3, min_speech_sec=0.25, min_silence_sec=0.3,
                    speech_pad_sec=0.1, level_drop_db=0, min_level_above_ambient_db=-1)
    seg = UtteranceSegmenter(cfg)
    # 10 silent windows, 20 speech windows with a dip to 0.4 (kept by hysteresis), then silence
    probs = [0.0] * 10 + [0.9] * 10 + [0.4] * 3 + [0.9] * 7 + [0.0] * 20
    out = _feed(seg, probs)
    assert len(out) == 1
    k, s = out[0]
    assert s.start == 10 * WINDOW and s.end == 30 * WINDOW
    need = int(np.ceil(0.3 * RATE / WINDOW))  # windows of silence that end it
    assert k == 30 + need - 1
    pad = round(0.1 * RATE)
    assert s.audio.size == 20 * WINDOW + 2 * pad
    # a short blip (< min_speech) is dropped
    assert _feed(UtteranceSegmenter(cfg), [0.0] * 5 + [0.9] * 3 + [0.0] * 20) == []


def test_segmenter_max_length_and_flush():
    cfg = VadConfig(max_utterance_sec=1.0, level_drop_db=0, min_level_above_ambient_db=-1)
    out = _feed(UtteranceSegmenter(cfg), [0.9] * 80)
    assert out and all(s.truncated for _, s in out)
    assert all(s.end - s.start <= RATE + WINDOW for _, s in out)
    seg = UtteranceSegmenter(VadConfig(level_drop_db=0, min_level_above_ambient_db=-1))
    _feed(seg, [0.9] * 20)
    assert seg.in_speech and seg.flush() is not None and not seg.in_speech


def test_segmenter_level_drop_ends_quieter_speech():
    cfg = VadConfig(level_drop_db=20.0, min_level_above_ambient_db=-1)
    seg = UtteranceSegmenter(cfg)
    out = []
    for k in range(80):  # loud speech for 20 windows, then speech 30 dB quieter
        amp = 0.3 if k < 20 else 0.3 * 10 ** (-30 / 20)
        s = seg.push(np.full(WINDOW, amp, np.float32), 0.9)
        if s is not None:
            out.append(s)
    assert out and out[0].end == 20 * WINDOW


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"neg_threshold": 0.9}, {"min_silence_sec": 0.0},
                                    {"speech_pad_sec": 0.5, "min_silence_sec": 0.3}, {"max_utterance_sec": 100}])
def test_vad_config_validation(kwargs):
    with pytest.raises(ConfigError):
        VadConfig(**kwargs).validated()


# ------------------------------------------------------------------------------- recogniser


class _FakeBackend:
    """Returns scripted hypotheses, one per utterance."""

    name = "fake"
    constrained = False

    def __init__(self, *hyps: Hypothesis) -> None:
        self.hyps = list(hyps)
        self.calls = []

    def transcribe(self, samples_16k):
        self.calls.append(samples_16k.size)
        return self.hyps.pop(0) if self.hyps else Hypothesis("", 0.0)


def _energy_vad(window):
    return 0.95 if float(np.abs(window).max()) > 0.05 else 0.02


def _burst_stream(spans_sec, total_sec=6.0, amp=0.3):
    x = np.zeros(int(total_sec * RATE), np.float32)
    for a, b in spans_sec:
        t = np.arange(int(a * RATE), int(b * RATE))
        x[t] = amp * np.sin(2 * np.pi * 220 * t / RATE)
    return x


def _stream(rec, x, rate=RATE, chunk=512, t0=T0):
    out = []
    for i in range(0, len(x), chunk):
        out.extend(rec.push_audio(t0 + round(i * 1e9 / rate), x[i : i + chunk], rate))
    out.extend(rec.flush())
    return out


def test_recognizer_accepts_and_stamps_commands(vocab):
    seen = []
    backend = _FakeBackend(Hypothesis("the red cup", 0.9), Hypothesis("what time is it", 0.99),
                           Hypothesis("the sounding cat", 0.05))
    rec = VoiceCommandRecognizer(RecognizerConfig(confidence_threshold=0.5), backend=backend, vocabulary=vocab,
                                 vad=_energy_vad, on_transcript=seen.append)
    cmds = _stream(rec, _burst_stream([(0.5, 1.5), (2.5, 3.2), (4.0, 5.0)]))
    assert [c.text for c in cmds] == ["the red cup"]
    c = cmds[0]
    assert abs(c.start_ns - (T0 + 0.5e9)) <= 0.04e9 and abs(c.end_ns - (T0 + 1.5e9)) <= 0.04e9
    assert [t.reason for t in seen] == ["accepted", "not a command", "low confidence"]
    assert seen[1].text == "what time is it" and seen[1].command is None  # transcript kept for debugging
    assert rec.diagnostics()["commands"] == 1 and rec.diagnostics()["reason:not a command"] == 1


class _LengthBackend(_FakeBackend):
    """'the red cup' for utterances of at least ``long_sec``, 'the bell' for shorter ones."""

    def __init__(self, long_sec: float) -> None:
        super().__init__()
        self.long = int(long_sec * RATE)

    def transcribe(self, samples_16k):
        self.calls.append(samples_16k.size)
        return Hypothesis("the red cup" if samples_16k.size >= self.long else "the bell", 0.9)


def test_speculative_recognition_starts_in_the_pause_and_is_used(vocab):
    backend = _LengthBackend(0.0)
    rec = VoiceCommandRecognizer(RecognizerConfig(speculative_sec=0.1), backend=backend, vocabulary=vocab,
                                 vad=_energy_vad)
    x = _burst_stream([(0.5, 1.5)], total_sec=3.0)
    cmds, calls_at_end = [], None
    for i in range(0, len(x), 512):
        got = rec.push_audio(T0 + round(i * 1e9 / RATE), x[i : i + 512], RATE)
        if got:
            calls_at_end = list(backend.calls)
        cmds += got
    assert [c.text for c in cmds] == ["the red cup"]
    # one call, made during the pause on the utterance so far: 0.3 s pad + 1 s speech + 0.1-0.16 s of pause
    # (the final segment would be 1.6 s: 0.3 s pad on both sides)
    assert calls_at_end == backend.calls and len(backend.calls) == 1
    assert 1.4 * RATE <= backend.calls[0] < 1.5 * RATE
    assert rec.stats["speculations"] == 1 and rec.stats["speculation_hits"] == 1
    rec.close()


def test_speculation_is_dropped_when_speech_resumes(vocab):
    backend = _LengthBackend(1.8)
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=backend, vocabulary=vocab, vad=_energy_vad)
    cmds = _stream(rec, _burst_stream([(0.5, 1.5), (1.7, 2.2)], total_sec=4.0))
    assert [c.text for c in cmds] == ["the red cup"]  # the whole utterance, not the stale guess "the bell"
    assert len(backend.calls) == 2 and backend.calls[0] < 1.8 * RATE <= backend.calls[1]
    assert rec.stats["speculations"] == 2 and rec.stats["speculation_hits"] == 1


class _SlowCancellable(_LengthBackend):
    """Takes up to 2 s per utterance unless cancelled, checking its event like the Moonshine search."""

    cancellable = True

    def __init__(self, long_sec: float) -> None:
        super().__init__(long_sec)
        self.cancelled = []

    def transcribe(self, samples_16k, cancel=None):
        import time as _time

        from refavs_ros.voice.asr import RecognitionCancelled

        t_end = _time.monotonic() + 2.0
        while _time.monotonic() < t_end and samples_16k.size < self.long:
            if cancel is not None and cancel.is_set():
                self.cancelled.append(samples_16k.size)
                raise RecognitionCancelled("stale")
            _time.sleep(0.005)
        return super().transcribe(samples_16k)


def test_a_stale_speculation_is_stopped_not_waited_for(vocab):
    import time as _time

    backend = _SlowCancellable(1.8)  # the guess of the first 1.5 s would take 2 s; the whole utterance is quick
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=backend, vocabulary=vocab, vad=_energy_vad)
    x = _burst_stream([(0.5, 1.5), (1.7, 2.2)], total_sec=4.0)
    t0 = _time.monotonic()
    cmds = []
    for i in range(0, len(x), 512):
        cmds += rec.push_audio(T0 + round(i * 1e9 / RATE), x[i : i + 512], RATE)
        _time.sleep(0.002)  # let the worker thread start the guess
    assert [c.text for c in cmds] == ["the red cup"]
    assert len(backend.cancelled) == 1 and backend.cancelled[0] < 1.8 * RATE  # the stale guess stopped early
    assert _time.monotonic() - t0 < 1.8  # not the 2 s the guess would have taken
    rec.close()


@pytest.mark.parametrize("drop_db, memory_sec, expected", [
    (10.0, 30.0, ["the red cup"]),  # 18 dB quieter, 0.4 s after the command: someone else
    (-1.0, 30.0, ["the red cup", "the bell"]),  # gate off
    (10.0, 0.1, ["the red cup", "the bell"]),  # the command is too long ago to be the reference
    (25.0, 30.0, ["the red cup", "the bell"]),  # within the allowed drop
])
def test_a_much_quieter_voice_after_a_command_is_not_the_commander(vocab, drop_db, memory_sec, expected):
    backend = _FakeBackend(Hypothesis("the red cup", 0.9), Hypothesis("the bell", 0.9))
    rec = VoiceCommandRecognizer(RecognizerConfig(commander_drop_db=drop_db, commander_memory_sec=memory_sec),
                                 backend=backend, vocabulary=vocab, vad=_energy_vad)
    x = _burst_stream([(0.5, 1.5)], total_sec=4.0, amp=0.5) + _burst_stream([(2.5, 3.2)], total_sec=4.0, amp=0.063)
    assert [c.text for c in _stream(rec, x)] == expected
    if len(expected) == 1:
        quiet = rec.transcripts[-1]
        assert quiet.reason == "too quiet" and "dB below the last command" in quiet.warnings[0]
        assert quiet.text == "" and quiet.decode_sec == 0.0  # its recognition (a speculation) is not used
    # a new stream forgets the commander's level
    rec.reset()
    assert rec._commander is None


def test_commander_gate_settings_are_checked():
    with pytest.raises(ConfigError, match="commander_memory_sec"):
        RecognizerConfig(commander_memory_sec=-1.0).validated()
    with pytest.raises(ConfigError, match="commander_drop_db"):
        RecognizerConfig(commander_drop_db=float("nan")).validated()


def test_speculation_off_recognises_the_final_segment(vocab):
    backend = _LengthBackend(0.0)
    rec = VoiceCommandRecognizer(RecognizerConfig(speculative_sec=0.0), backend=backend, vocabulary=vocab,
                                 vad=_energy_vad)
    assert [c.text for c in _stream(rec, _burst_stream([(0.5, 1.5)], total_sec=3.0))] == ["the red cup"]
    assert len(backend.calls) == 1 and abs(backend.calls[0] - 1.6 * RATE) <= WINDOW
    assert rec.stats["speculations"] == 0
    with pytest.raises(ConfigError, match="speculative_sec"):
        RecognizerConfig(speculative_sec=0.3).validated()


def test_recognizer_any_rate_and_channels(vocab):
    backend = _FakeBackend(Hypothesis("the bell", 0.9))
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=backend, vocabulary=vocab, vad=_energy_vad)
    x16 = _burst_stream([(1.0, 2.0)], total_sec=4.0)
    from scipy.signal import resample_poly

    x48 = resample_poly(x16, 3, 1).astype(np.float32)
    stereo = (np.stack([x48, x48], axis=1) * 32767).astype(np.int16)
    cmds = _stream(rec, stereo, rate=48000, chunk=1536)
    assert [c.text for c in cmds] == ["the bell"] and abs(cmds[0].start_ns - (T0 + 1e9)) <= 0.04e9


def test_recognizer_wake_phrase(vocab):
    backend = _FakeBackend(Hypothesis("the red cup", 0.9), Hypothesis("robot the red cup", 0.9))
    rec = VoiceCommandRecognizer(RecognizerConfig(wake_phrase="Robot"), backend=backend, vocabulary=vocab,
                                 vad=_energy_vad)
    cmds = _stream(rec, _burst_stream([(0.5, 1.5), (2.5, 3.5)]))
    assert [c.text for c in cmds] == ["the red cup"]
    assert [t.reason for t in rec.transcripts] == ["no wake phrase", "accepted"]


def test_recognizer_match_modes(vocab):
    for mode, expected in (("grammar", []), ("vocabulary", ["bring me the cup"]), ("any", ["bring me the cup"])):
        rec = VoiceCommandRecognizer(RecognizerConfig(match=mode), backend=_FakeBackend(Hypothesis("bring me the cup", 0.9)),
                                     vocabulary=vocab, vad=_energy_vad)
        assert [c.text for c in _stream(rec, _burst_stream([(0.5, 1.5)], 3.0))] == expected, mode


def test_recognizer_silence_and_nonspeech_give_nothing(vocab):
    backend = _FakeBackend(Hypothesis("the cup", 0.99))
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=backend, vocabulary=vocab, vad=lambda w: 0.01)
    assert _stream(rec, _burst_stream([(0.5, 3.0)], 4.0)) == []
    assert backend.calls == []  # no ASR without speech


def test_recognizer_stream_gap_and_jump_back(vocab):
    backend = _FakeBackend(Hypothesis("the cup", 0.9), Hypothesis("the bell", 0.9))
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=backend, vocabulary=vocab, vad=_energy_vad)
    x = _burst_stream([(0.5, 2.0)], 2.0)
    got = []
    for i in range(0, 24000, 512):  # speech still going at 1.5 s when the audio drops out ...
        got += rec.push_audio(T0 + round(i * 1e9 / RATE), x[i : i + 512], RATE)
    got += rec.push_audio(T0 + 3 * 10**9, np.zeros(512, np.float32), RATE)  # ... and returns 1.5 s later
    assert [c.text for c in got] == ["the cup"] and rec.stats["gaps"] == 1
    rec.push_audio(T0, np.zeros(512, np.float32), RATE)  # bag loop: back in time
    assert rec.stats["jumps_back"] == 1 and not rec.in_speech


def test_recognizer_bad_input(vocab):
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=_FakeBackend(), vocabulary=vocab, vad=_energy_vad)
    with pytest.raises(InputError, match="no audio"):
        rec.push_audio(T0, np.zeros(0, np.int16), RATE)
    with pytest.raises(InputError, match="NaN"):
        rec.push_audio(T0, np.array([0.0, np.nan], np.float32), RATE)
    with pytest.raises(InputError, match="stamp_ns"):
        rec.push_audio(1.5, np.zeros(10, np.int16), RATE)
    with pytest.raises(InputError, match="sample_rate"):
        rec.push_audio(T0, np.zeros(10, np.int16), 0)
    with pytest.raises(ConfigError, match="backend"):
        RecognizerConfig(backend="kaldi").validated()
    with pytest.raises(ConfigError, match="confidence_threshold"):
        RecognizerConfig(confidence_threshold=2.0).validated()


def test_check_clip_errors():
    with pytest.raises(InputError, match="no audio"):
        check_clip(np.zeros(0, np.int16), RATE)
    with pytest.raises(InputError, match="silence only"):
        check_clip(np.zeros(RATE, np.int16), RATE)
    with pytest.raises(InputError, match="clipped"):
        check_clip(np.full(RATE, 32767, np.int16), RATE)
    with pytest.raises(InputError, match="NaN"):
        check_clip(np.full(RATE, np.nan, np.float32), RATE)
    assert check_clip((_burst_stream([(0.1, 0.5)], 1.0) * 32767).astype(np.int16), RATE).shape == (RATE,)


def test_recognize_offline_errors(vocab):
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=_FakeBackend(), vocabulary=vocab, vad=lambda w: 0.01)
    with pytest.raises(InputError, match="no speech found"):
        rec.recognize(with_floor(np.zeros(RATE, np.float32), level=0.01), RATE)
    with pytest.raises(InputError, match="silence only"):
        rec.recognize(np.zeros(RATE, np.int16), RATE)


def test_clipped_utterance_is_flagged(vocab):
    backend = _FakeBackend(Hypothesis("the cup", 0.9))
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=backend, vocabulary=vocab, vad=_energy_vad)
    x = np.clip(_burst_stream([(0.5, 1.5)], 3.0, amp=3.0), -1, 1)
    assert [c.text for c in _stream(rec, x)] == ["the cup"]
    assert "clipped" in rec.transcripts[-1].warnings[0] and rec.stats["clipped"] == 1


# ------------------------------------------------------------------ real VAD and pocketsphinx


def test_silero_vad_probabilities():
    from refavs_ros.voice.vad import SileroVad

    vad = SileroVad()
    silence = [vad(np.zeros(WINDOW, np.float32)) for _ in range(20)]
    assert max(silence) < 0.2
    vad.reset()
    with pytest.raises(InputError):
        vad(np.zeros(100, np.float32))


@needs_espeak
def test_silero_vad_detects_speech():
    from refavs_ros.voice.vad import SileroVad

    vad = SileroVad()
    x = with_floor(say("the dog that is barking"))
    probs = [vad(x[i : i + WINDOW]) for i in range(0, x.size - WINDOW, WINDOW)]
    assert max(probs) > 0.8 and np.mean(np.asarray(probs) > 0.5) > 0.4


@needs_espeak
def test_grammar_backend_recognises_espeak_commands(vocab):
    from refavs_ros.voice.asr import GrammarBackend

    backend = GrammarBackend(vocab)
    ok = 0
    texts = ("the sounding cup", "the object on the left", "the first object to make a sound",
             "where is the red coloured cat", "the one that never stops sounding")
    for i, text in enumerate(texts):
        hyp = backend.transcribe(with_floor(say(text, "en-us"), seed=i))
        ok += hyp.text == normalise_text(text)
        assert 0.0 <= hyp.confidence <= 1.0 and hyp.decode_sec > 0
    assert ok >= 4, ok


@needs_espeak
def test_end_to_end_streamed_command_and_no_command_from_noise(vocab):
    rec = VoiceCommandRecognizer(RecognizerConfig(), vocabulary=vocab)
    speech = say("the object that keeps making a sound", "en-us")
    x = with_floor(np.zeros(4 * RATE, np.float32))
    x[RATE : RATE + speech.size] += speech
    cmds = _stream(rec, (x * 32767).astype(np.int16))
    assert [c.text for c in cmds] == ["the object that keeps making a sound"]
    end = T0 + round((RATE + speech.size) * 1e9 / RATE)
    assert abs(cmds[0].end_ns - end) < 0.2e9
    rng = np.random.default_rng(1)
    t = np.arange(6 * RATE) / RATE
    noise = np.concatenate([0.1 * rng.standard_normal(3 * RATE), 0.3 * np.sin(2 * np.pi * 440 * t[: 3 * RATE])])
    assert _stream(rec, noise.astype(np.float32)) == []


@needs_espeak
def test_cmn_estimator_matches_pocketsphinx_batch_mean():
    """The running estimate from 512-sample blocks equals the mean pocketsphinx's batch CMN
    computes over the whole utterance (same front end), utterance after utterance, and it
    moves with the signal level."""
    import pocketsphinx

    from refavs_ros.voice.asr import CmnEstimator, _cmn_vec, _pcm16

    x = with_floor(0.1 * say("where is the right motorcycle"), level=0.001)
    batch = pocketsphinx.Decoder(samprate=RATE, loglevel="FATAL", dither=True, lm=None)
    batch.add_jsgf_string("g", "#JSGF V1.0;\ngrammar g;\npublic <a> = the;\n")
    batch.activate_search("g")
    batch.start_utt()
    batch.process_raw(_pcm16(x), False, True)
    batch.end_utt()
    want = _cmn_vec(batch.get_cmn(False))
    # fresh noise-removal statistics per utterance, as the batch decoder's first utterance has
    est = CmnEstimator(pocketsphinx.Decoder(samprate=RATE, loglevel="FATAL", dither=True, lm=None), fresh_noise=True)
    for prior in (None, want + 5.0):  # the reference value does not matter
        est.begin(prior)
        for i in range(0, x.size, WINDOW):
            est.add(_pcm16(x[i : i + WINDOW]), x[i : i + WINDOW].size)
        got = est.mean()
        est.close()
        assert est.frames == pytest.approx(x.size / 160, abs=4)
        np.testing.assert_allclose(got, want, atol=0.25)
    est.begin()
    est.add(_pcm16(0.1 * x), x.size)  # 20 dB quieter: the energy term c0 drops, the rest stays
    assert est.mean()[0] < want[0] - 1.0
    est.close()


@needs_espeak
def test_grammar_backend_streamed_utterance_cmn_equals_whole(vocab):
    """cmn="utterance": decoding trails the audio by cmn_lag_sec and the last part is decoded
    at end(); fed in VAD windows or whole, the result is the same command."""
    from refavs_ros.voice.asr import GrammarBackend

    backend = GrammarBackend(vocab)
    assert backend.cmn == "utterance" and backend.streaming
    for i, text in enumerate(("the object that keeps making a sound", "the cup")):
        x = with_floor(np.concatenate([np.zeros(4800, np.float32), say(text), np.zeros(4800, np.float32)]), seed=i)
        whole = backend.transcribe(x)
        backend.begin()
        for k in range(0, x.size, WINDOW):
            backend.feed(x[k : k + WINDOW])
        streamed = backend.end()
        assert whole.text == streamed.text == text
        assert streamed.confidence == pytest.approx(whole.confidence, abs=0.15)
    backend.begin()
    backend.feed(x[:WINDOW])
    backend.cancel()  # abandoned utterance: nothing left over for the next one
    assert backend.transcribe(x).text == "the cup"


@needs_espeak
def test_grammar_backend_batch_cmn_is_not_streamed(vocab):
    from refavs_ros.voice.asr import GrammarBackend

    backend = GrammarBackend(vocab, cmn="batch")
    assert not backend.streaming
    x = with_floor(say("the sounding cup"))
    assert backend.transcribe(x).text == "the sounding cup"
    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=backend, vocabulary=vocab, vad=_energy_vad)
    assert not rec._streaming


@pytest.mark.parametrize("kwargs, message", [
    ({"cmn": "prior"}, "cmn must be one of"),
    ({"cmn_lag_sec": -0.1}, "cmn_lag_sec"),
    ({"cmn_update_sec": 0.0}, "cmn_update_sec"),
    ({"topn": 0}, "topn"),
    ({"topn": 4.0}, "topn"),
])
def test_grammar_backend_bad_settings(vocab, kwargs, message):
    from refavs_ros.voice.asr import GrammarBackend

    with pytest.raises(ConfigError, match=message):
        GrammarBackend(vocab, **kwargs)


def test_default_vocabulary_is_the_benchmark_world(vocab):
    """Words the scene world never uses are not in the default grammar (each is one more
    confusion: "right" heard as "white"); users add theirs in their own file."""
    from refavs_ros.scenes.catalog import CATEGORY_SPECS, COLOURS

    assert vocab.list_words("colours") == set(COLOURS)
    nouns = {w for c in CATEGORY_SPECS for n in (c.name, *c.synonyms) for w in n.split()}
    assert nouns <= vocab.list_words("objects")
    for text in ("the white cup", "the second object to make a sound", "the object on the middle",
                 "the dog that is barking"):
        assert not vocab.matches(text), text
    assert vocab.matches("the cup in the middle") and vocab.matches("the bell that is ringing")


def test_pocketsphinx_lm_backend_runs():
    from refavs_ros.voice.asr import PocketsphinxLMBackend

    hyp = PocketsphinxLMBackend().transcribe(with_floor(np.zeros(RATE, np.float32)))
    assert isinstance(hyp.text, str) and 0.0 <= hyp.confidence <= 1.0
    with pytest.raises(ModelLoadError, match="missing.lm"):
        PocketsphinxLMBackend(lm="/nonexistent/missing.lm")


def test_grammar_backend_missing_pronunciation(tmp_path):
    from refavs_ros.voice.asr import GrammarBackend

    v = Vocabulary.from_dict({"rules": {"command": "the zorblax"}})
    with pytest.raises(ConfigError, match="zorblax"):
        GrammarBackend(v)


# ----------------------------------------------------------------------------------- Whisper


def _tiny_whisper(directory):
    """A random 1-layer Whisper with a byte-level tokenizer, saved like a downloaded checkpoint;
    its output layer is rigged to always say "h" so the text path is exercised."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = WhisperTokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                          "<|notimestamps|>"]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")}
    proc = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    cfg = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, d_model=16, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_source_positions=1500, max_target_positions=64,
                        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
                        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    with torch.no_grad():
        emb = model.model.decoder.embed_tokens.weight  # tied to the output projection
        emb.zero_()
        emb[vocab["h"]] = 1.0
        model.model.decoder.layer_norm.weight.zero_()
        model.model.decoder.layer_norm.bias.fill_(1.0)
    model.generation_config.decoder_start_token_id = ids["<|startoftranscript|>"]
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


def test_whisper_backend_from_local_directory(tmp_path, vocab):
    from refavs_ros.voice.asr import WhisperBackend

    d = _tiny_whisper(tmp_path / "whisper-tiny-random")
    backend = WhisperBackend(d, max_new_tokens=6)
    hyp = backend.transcribe(with_floor(np.zeros(RATE, np.float32), level=0.05))
    assert hyp.text == "hhhhhh" and 0.9 < hyp.confidence <= 1.0 and hyp.decode_sec > 0
    rec = VoiceCommandRecognizer(RecognizerConfig(backend="whisper", whisper_dir=str(d)), vocabulary=vocab,
                                 vad=_energy_vad)
    assert rec.backend.name == "whisper"
    assert _stream(rec, _burst_stream([(0.5, 1.5)], 3.0)) == []  # "hhhhhh" is not a command
    assert rec.transcripts[-1].reason == "not a command" and rec.transcripts[-1].text.startswith("h")


def test_whisper_missing_directory_is_named(tmp_path):
    missing = tmp_path / "whisper-small"
    with pytest.raises(ModelLoadError, match="whisper-small"):
        VoiceCommandRecognizer(RecognizerConfig(backend="whisper", whisper_dir=str(missing)), vad=lambda w: 0.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        VoiceCommandRecognizer(RecognizerConfig(backend="whisper", whisper_dir=str(tmp_path / "empty")),
                               vad=lambda w: 0.0)


# ------------------------------------------------------------------------------ spoken scenes


@needs_espeak
def test_speak_scene_mixes_at_the_requested_snr():
    from refavs_ros.scenes import SceneConfig, generate_scene
    from refavs_ros.scenes.speech import speak_scene, synthesize

    cfg = SceneConfig(width=64, height=64, fps=1.0)
    scene = generate_scene("test-seen", 3, 0, cfg)
    spoken = speak_scene(scene, 10.0, 0)
    sc = spoken.info()["spoken_command"]
    assert sc["text"] == scene.expression and spoken.expression == scene.expression
    assert spoken.info()["command_source"] == "spoken"
    np.testing.assert_array_equal(spoken.frames, scene.frames)
    a = int((sc["start_ns"] - scene.audio_start_ns) * RATE // 10**9)
    b = int((sc["end_ns"] - scene.audio_start_ns) * RATE // 10**9)
    orig = scene.audio.astype(np.float64)
    out = spoken.audio.astype(np.float64)
    # outside the speech the scene is unchanged up to one common gain (<= 1: peak protection)
    k = float(np.dot(out[:a], orig[:a]) / np.dot(orig[:a], orig[:a]))
    assert 0.1 < k <= 1.0 + 1e-3
    assert np.abs(out[:a] - k * orig[:a]).max() <= 1.5 and np.abs(out[b + 1 :] - k * orig[b + 1 :]).max() <= 1.5
    speech = out[a:b] - k * orig[a:b]
    snr = 10 * np.log10(np.mean(speech**2) / np.mean((k * orig[a:b]) ** 2))
    assert abs(snr - 10.0) < 0.3, snr
    assert speak_scene(scene, 10.0, 0).info()["spoken_command"] == sc  # deterministic
    assert sc["voice"] == speak_scene(scene, 0.0, 0).info()["spoken_command"]["voice"]  # same speaker per scene
    with pytest.raises(ConfigError):
        speak_scene(scene, 99.0)
    with pytest.raises(ConfigError):
        synthesize("   ")


@needs_espeak
def test_speak_scene_clean_mutes_the_scene():
    from refavs_ros.scenes import SceneConfig, generate_scene
    from refavs_ros.scenes.speech import (
        CLEAN_FLOOR_DBFS,
        CLEAN_SPEECH_DBFS,
        speak_scene,
    )

    scene = generate_scene("test-seen", 3, 0, SceneConfig(width=64, height=64, fps=1.0))
    clean = speak_scene(scene, None, 0, clean=True)
    sc = clean.info()["spoken_command"]
    assert sc["snr_db"] is None and sc["voice"] == speak_scene(scene, 10.0, 0).info()["spoken_command"]["voice"]
    x = clean.audio.astype(np.float64) / 32768.0
    a = int((sc["start_ns"] - scene.audio_start_ns) * RATE // 10**9)
    b = int((sc["end_ns"] - scene.audio_start_ns) * RATE // 10**9)
    assert abs(10 * np.log10(np.mean(x[:a] ** 2)) - CLEAN_FLOOR_DBFS) < 1.0  # the floor only
    assert abs(10 * np.log10(np.mean(x[a:b] ** 2)) - CLEAN_SPEECH_DBFS) < 0.5
    with pytest.raises(ConfigError):
        speak_scene(scene, None, 0)


@needs_espeak
def test_spoken_command_bags_have_no_text_command(tmp_path):
    from refavs_ros.rosio.bagio import TOPIC_COMMAND, TOPIC_SCENE_INFO, BagReader
    from refavs_ros.tools.scenes_cli import main

    assert main([str(tmp_path), "--split", "val", "--count", "1", "--width", "64", "--height", "64",
                 "--fps", "1", "--spoken-command", "5", "--quiet"]) == 0
    bag = next(tmp_path.iterdir())
    with BagReader(bag) as r:
        topics = r.topics
        assert TOPIC_COMMAND not in topics
        msg = r.first_message(TOPIC_SCENE_INFO)
    info = json.loads(msg.message.data)
    assert info["spoken_command"]["snr_db"] == 5.0 and info["spoken_command"]["text"] == info["expression"]


# ----------------------------------------------------- in-process mode: pipeline, replay --voice


def test_predictor_suppress_audio_span():
    from refavs_ros.predictor import AudioRing

    ring = AudioRing()
    ring.push(T0, np.ones(RATE, np.float32))
    assert ring.scale_span(T0 + 250_000_000, T0 + 500_000_000, 0.0) == RATE // 4
    assert ring.data[: RATE // 4].min() == 1.0 and ring.data[RATE // 4 : RATE // 2].max() == 0.0
    assert ring.data[RATE // 2 :].min() == 1.0
    assert ring.scale_span(T0 + 2 * 10**9, T0 + 3 * 10**9, 0.0) == 0  # not buffered


def test_voice_stage_in_the_pipeline_sets_the_command_and_suppresses_the_speech(vocab):
    from refavs_ros.node.pipeline import MessagePipeline
    from refavs_ros.node.voice import VoiceOptions, VoiceStage
    from refavs_ros.rosio import conversions

    class _Pred:  # the part of StreamingPredictor the pipeline and the stage use
        command = ""

        def __init__(self):
            self.suppressed = []

        def set_command(self, text):
            self.command = text

        def push_audio(self, stamp_ns, samples, rate):
            pass

        def suppress_audio(self, a, b, gain):
            self.suppressed.append((a, b, gain))
            return 1

        def reset_memory(self):
            pass

    rec = VoiceCommandRecognizer(RecognizerConfig(), backend=_FakeBackend(Hypothesis("the red cup", 0.9)),
                                 vocabulary=vocab, vad=_energy_vad)
    pred = _Pred()
    pipe = MessagePipeline(pred, voice=VoiceStage(rec, VoiceOptions(suppression="attenuate", attenuation_db=20, pad_sec=0.15)))
    x = (_burst_stream([(0.5, 1.5)], 3.0) * 32767).astype(np.int16)
    changes = []
    for i in range(0, x.size, 512):
        msg = conversions.array_to_audio_stamped(x[i : i + 512], RATE, T0 + round(i * 1e9 / RATE), "mic", chunk=512)
        changes += pipe.handle_audio(msg)
    assert [c.text for c in changes] == ["the red cup"] and pred.command == "the red cup"
    (a, b, gain), = pred.suppressed
    assert abs(a - (T0 + 0.35e9)) < 0.05e9 and abs(b - (T0 + 1.65e9)) < 0.05e9 and gain == pytest.approx(0.1)
    emitted = pipe.voice.emitted[0]
    assert emitted.emitted_ns >= emitted.command.end_ns
    with pytest.raises(ConfigError):
        VoiceOptions(suppression="mute").validated()


@needs_espeak
def test_replay_voice_on_a_spoken_command_bag(tmp_path, capsys):
    from refavs_ros.tools.replay import main as replay_main
    from refavs_ros.tools.scenes_cli import main as scenes_main

    # test-seen scene 1 of seed 9 at 64x64: "the rocket on the right" -- a semantic/spatial command
    assert scenes_main([str(tmp_path / "bags"), "--split", "test-seen", "--count", "2", "--seed", "9", "--width",
                        "64", "--height", "64", "--fps", "1", "--spoken-command", "20", "--quiet"]) == 0
    metrics = tmp_path / "m.json"
    assert replay_main([str(tmp_path / "bags"), "--voice", "--no-progress", "--metrics-json", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "voice: 2 spoken commands" in out
    voice = json.loads(metrics.read_text())["voice"]
    assert voice["scenes"] == 2 and 0.0 <= voice["exact_match"] <= 1.0 and voice["wer"] is not None
    assert voice["audio_hours"] == pytest.approx(16 / 3600, rel=0.05)
    # without --voice a spoken-command bag has no command: a clear error
    assert replay_main([str(tmp_path / "bags"), "--no-progress"]) == 2
    assert "no command" in capsys.readouterr().err


def test_voice_node_yaml_matches_the_parameter_schema():
    import yaml

    from refavs_ros.node.voice import (
        VOICE_NODE_PARAMETERS,
        recognizer_config_from_params,
    )
    from refavs_ros.resources import find_shipped

    values = yaml.safe_load(find_shipped("config/voice_command.yaml").read_text())["/**"]["ros__parameters"]
    assert set(values) == {s.name for s in VOICE_NODE_PARAMETERS}
    for spec in VOICE_NODE_PARAMETERS:
        assert values[spec.name] == spec.default and type(values[spec.name]) is type(spec.default), spec.name
    config, msg_type, rate, channels = recognizer_config_from_params(values)
    assert config.backend == "fusion" and msg_type == "AudioStamped" and (rate, channels) == (16000, 1)
    with pytest.raises(ConfigError, match="confidence_threshold"):
        recognizer_config_from_params({**values, "confidence_threshold": 3.0})


@needs_espeak
def test_replay_voice_starts_every_bag_without_a_command(tmp_path):
    from refavs_ros.node.voice import VoiceStage
    from refavs_ros.predictor import StreamingPredictor
    from refavs_ros.tools.replay import replay_bag
    from refavs_ros.tools.scenes_cli import main as scenes_main

    assert scenes_main([str(tmp_path), "--split", "test-seen", "--count", "1", "--seed", "9", "--width", "64",
                        "--height", "64", "--fps", "2", "--spoken-command", "20", "--quiet"]) == 0
    predictor = StreamingPredictor.from_pretrained()
    predictor.set_command("the command of an earlier bag")
    stage = VoiceStage(VoiceCommandRecognizer(RecognizerConfig()))
    report = replay_bag(next(tmp_path.iterdir()), predictor, voice=stage, warn=lambda t: None)
    assert report.no_command >= 2  # the first frames come before the spoken command is recognised
    assert "the command of an earlier bag" not in [p for p in report.commands]
