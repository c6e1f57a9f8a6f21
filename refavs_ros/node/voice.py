"""In-process voice commands for the message pipeline (``voice_commands: true`` in refavs_node,
``refavs-replay --voice``): the robot's microphone feeds both the audio memory and the
recogniser, and a recognised command replaces the command in force.

The person giving the command is not the sounding object the command refers to ("the dog that
is barking" is said by a person), so once an utterance is accepted as a command its span is
suppressed in the predictor's audio buffer (zeroed or attenuated, ``suppression``): frames
stepped afterwards do not hear the speaker. Because an utterance is only known to be a command
when it has ended, the suppression is retroactive; with no command in force before it (the
usual case), no frame has heard it at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refavs_ros.errors import ConfigError
from refavs_ros.voice.recognizer import VoiceCommand, VoiceCommandRecognizer

SUPPRESSION_MODES = ("zero", "attenuate", "off")
"""What happens to a command utterance in the audio memory."""


@dataclass(frozen=True)
class VoiceOptions:
    """Audio suppression of command utterances.

    Attributes:
        suppression: one of :data:`SUPPRESSION_MODES`.
        attenuation_db: gain reduction (dB, > 0) of ``"attenuate"``.
        pad_sec: extra time (s) suppressed before and after the utterance's span. The span is
            the utterance as the VAD cut it, which already holds ``VadConfig.speech_pad_sec``
            (0.3 s) of padding on each side; 0 by default: with 0.15 s more, the zeroed scene
            sound that is not speech cost 0.009 of J end to end (bench/VOICE_RESULTS.md).
    """

    suppression: str = "zero"
    attenuation_db: float = 30.0
    pad_sec: float = 0.0

    def validated(self) -> VoiceOptions:
        """Return self after checking the fields.

        Raises:
            ConfigError: naming the offending field.
        """
        if self.suppression not in SUPPRESSION_MODES:
            raise ConfigError(f"voice suppression must be one of {SUPPRESSION_MODES}, got {self.suppression!r}")
        if not 0.0 < float(self.attenuation_db) <= 120.0:
            raise ConfigError(f"voice attenuation_db must be in (0, 120] dB, got {self.attenuation_db!r}")
        if not 0.0 <= float(self.pad_sec) <= 1.0:
            raise ConfigError(f"voice pad_sec must be in [0, 1] s, got {self.pad_sec!r}")
        return self

    @property
    def gain(self) -> float | None:
        """Linear gain applied to the utterance (None = no suppression)."""
        if self.suppression == "off":
            return None
        return 0.0 if self.suppression == "zero" else float(10.0 ** (-self.attenuation_db / 20.0))


@dataclass
class EmittedCommand:
    """A command the stage produced, with when it was produced.

    Attributes:
        command: the :class:`~refavs_ros.voice.VoiceCommand`.
        chunk_end_ns: stamp (ns) one sample past the audio chunk that completed it.
        wall_sec: wall time (s) spent on that chunk by the recogniser (VAD + decoding).
        suppressed_samples: 16 kHz samples suppressed in the predictor's buffer.
    """

    command: VoiceCommand
    chunk_end_ns: int
    wall_sec: float
    suppressed_samples: int = 0

    @property
    def emitted_ns(self) -> int:
        """Stamp-time of the command's publication: chunk end + processing time (ns)."""
        return self.chunk_end_ns + int(self.wall_sec * 1e9)


@dataclass
class VoiceStage:
    """The recogniser next to the predictor: audio in, commands out, command speech suppressed.

    Args:
        recognizer: a :class:`~refavs_ros.voice.VoiceCommandRecognizer`.
        options: :class:`VoiceOptions` (validated here).
    """

    recognizer: VoiceCommandRecognizer
    options: VoiceOptions = field(default_factory=VoiceOptions)
    emitted: list[EmittedCommand] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.options = self.options.validated()

    def push(self, stamp_ns: int, samples: np.ndarray, sample_rate: int, predictor) -> list[VoiceCommand]:
        """Feed a decoded audio chunk (already pushed to ``predictor``) to the recogniser.

        Args:
            stamp_ns: stamp of the chunk's first sample (ns). samples: PCM (N,) or (N, C).
            sample_rate: Hz. predictor: the :class:`~refavs_ros.predictor.StreamingPredictor`
                whose buffered audio is suppressed over each accepted command's span.

        Returns:
            The accepted commands (usually none).

        Raises:
            InputError: as :meth:`VoiceCommandRecognizer.push_audio`.
        """
        t0 = time.perf_counter()
        cmds = self.recognizer.push_audio(stamp_ns, samples, sample_rate)
        wall = time.perf_counter() - t0
        chunk_end = int(stamp_ns) + int(np.asarray(samples).shape[0]) * 1_000_000_000 // int(sample_rate)
        for cmd in cmds:
            self.emitted.append(EmittedCommand(cmd, chunk_end, wall, self.suppress(predictor, cmd)))
        return cmds

    def suppress(self, predictor, cmd: VoiceCommand) -> int:
        """Apply the suppression to ``cmd``'s span (padded); return the samples changed."""
        gain = self.options.gain
        if gain is None:
            return 0
        pad = int(self.options.pad_sec * 1e9)
        return int(predictor.suppress_audio(cmd.start_ns - pad, cmd.end_ns + pad, gain))

    def reset(self) -> None:
        """New stream (a new bag, a time jump): the recogniser forgets its utterance in progress."""
        self.recognizer.reset()

    def close(self) -> None:
        """Stop the recogniser's worker thread (:meth:`VoiceCommandRecognizer.close`)."""
        self.recognizer.close()


# ------------------------------------------------------------------ voice_command_node parameters


def _voice_parameters():
    from refavs_ros.node.params import (
        CONFIGURE,
        DYNAMIC,
        QOS_PROFILES,
        STARTUP,
        ParamSpec,
    )
    from refavs_ros.rosio.msgs import AUDIO_MSG_TYPES
    from refavs_ros.voice.asr import BACKENDS

    return (
        ParamSpec("backend", "fusion", "speech recogniser: fusion (Moonshine-base and pocketsphinx candidates "
                  "rescored with Moonshine-tiny; refavs-voice-models fetch), moonshine (Moonshine searched inside the "
                  "vocabulary's sentences), grammar (pocketsphinx + the vocabulary's "
                  "JSGF grammar), pocketsphinx (general language model), whisper (local model directory)",
                  CONFIGURE, choices=BACKENDS),
        ParamSpec("vocabulary_path", "", "command vocabulary YAML; empty = the shipped "
                  "config/voice_vocabulary.yaml", CONFIGURE),
        ParamSpec("whisper_dir", "", "local Whisper model directory (save_pretrained layout; backend whisper)",
                  CONFIGURE),
        ParamSpec("moonshine_dir", "", "Moonshine model directory (backends fusion, moonshine); empty = the one "
                  "refavs-voice-models fetch installs", CONFIGURE),
        ParamSpec("rescore_dir", "", "Moonshine-tiny directory that rescores (backend fusion); empty = the one "
                  "refavs-voice-models fetch installs", CONFIGURE),
        ParamSpec("wake_phrase", "", "words a command must start with (removed from the command); empty = none",
                  CONFIGURE),
        ParamSpec("match", "", "open-vocabulary backends: grammar (a sentence of the vocabulary), vocabulary "
                  "(mentions an object noun) or any; empty = grammar", CONFIGURE,
                  choices=("", "grammar", "vocabulary", "any")),
        ParamSpec("confidence_threshold", -1.0, "minimum recogniser confidence of a published command; "
                  "negative = the backend's own (fusion: 0.3 from its scorer file; others 0.1)", DYNAMIC, -1.0, 1.0),
        ParamSpec("vad_threshold", 0.5, "silero-vad speech probability that starts an utterance", CONFIGURE,
                  0.01, 0.99),
        ParamSpec("min_speech_sec", 0.25, "utterances with less speech (s) are ignored", CONFIGURE, 0.0, 10.0),
        ParamSpec("min_silence_sec", 0.3, "silence (s) that ends an utterance (floor of the command latency)",
                  CONFIGURE, 0.05, 5.0),
        ParamSpec("max_utterance_sec", 10.0, "utterances are cut and recognised at this length (s)", CONFIGURE,
                  1.0, 30.0),
        ParamSpec("speculative_sec", 0.05, "pause (s) after which backends fusion / moonshine start recognising the "
                  "utterance so far, while the VAD waits out min_silence_sec; 0 = off", CONFIGURE, 0.0, 5.0),
        ParamSpec("commander_drop_db", 10.0, "utterances this many dB below the last accepted command (within "
                  "30 s) are not the commander and are dropped; negative = off", CONFIGURE, -1.0, 60.0),
        ParamSpec("asr_threads", 1, "onnxruntime threads of backends fusion / moonshine (fusion's pocketsphinx "
                  "worker process takes another core)", CONFIGURE, 1, 64),
        ParamSpec("audio_msg_type", "AudioStamped", "audio message type on the audio topic "
                  "(audio_common_msgs/<type>)", CONFIGURE, choices=AUDIO_MSG_TYPES),
        ParamSpec("audio_sample_rate", 16000, "sample rate (Hz) of ros-drivers AudioData(Stamped) input",
                  CONFIGURE, 1000, 384000),
        ParamSpec("audio_channels", 1, "interleaved channels of ros-drivers AudioData(Stamped) input",
                  CONFIGURE, 1, 64),
        ParamSpec("audio_qos", "sensor_data", "QoS profile of the audio subscription", CONFIGURE,
                  choices=QOS_PROFILES),
        ParamSpec("audio_qos_depth", 100, "history depth of the audio subscription (chunks)", CONFIGURE, 1, 10000),
        ParamSpec("autostart", True, "configure and activate the node at start", STARTUP),
    )


VOICE_NODE_PARAMETERS = _voice_parameters()
"""Parameter schema of ``voice_command_node`` (``config/voice_command.yaml`` mirrors it)."""


def recognizer_config_from_params(values: dict) -> tuple[Any, str, int, int]:
    """Validated :class:`~refavs_ros.voice.RecognizerConfig` (+ audio decoding settings) from
    ``voice_command_node`` parameter values.

    Args:
        values: ``{name: value}`` for every parameter of :data:`VOICE_NODE_PARAMETERS`.

    Returns:
        ``(config, audio_msg_type, audio_sample_rate, audio_channels)``.

    Raises:
        ConfigError: a value of the wrong type or out of range (the parameter is named).
    """
    from refavs_ros.voice import RecognizerConfig, VadConfig

    v = {spec.name: spec.validate(values[spec.name]) for spec in VOICE_NODE_PARAMETERS}
    vad = VadConfig(threshold=v["vad_threshold"], min_speech_sec=v["min_speech_sec"],
                    min_silence_sec=v["min_silence_sec"], speech_pad_sec=min(VadConfig.speech_pad_sec, v["min_silence_sec"]),
                    max_utterance_sec=v["max_utterance_sec"])
    config = RecognizerConfig(backend=v["backend"], vocabulary_path=v["vocabulary_path"], whisper_dir=v["whisper_dir"],
                              moonshine_dir=v["moonshine_dir"], rescore_dir=v["rescore_dir"], wake_phrase=v["wake_phrase"],
                              confidence_threshold=v["confidence_threshold"],
                              match=v["match"], vad=vad, speculative_sec=v["speculative_sec"],
                              commander_drop_db=v["commander_drop_db"],
                              asr_threads=v["asr_threads"]).validated()
    return config, v["audio_msg_type"], v["audio_sample_rate"], v["audio_channels"]


def transcript_json(transcript) -> str:
    """The ``voice/transcript`` message text of a :class:`~refavs_ros.voice.Transcript`: JSON with
    ``text, confidence, accepted, reason, start_ns, end_ns, backend, decode_ms, warnings``."""
    import json

    return json.dumps({
        "text": transcript.text, "confidence": round(float(transcript.confidence), 4),
        "accepted": transcript.accepted, "reason": transcript.reason, "start_ns": int(transcript.start_ns),
        "end_ns": int(transcript.end_ns), "backend": transcript.backend,
        "decode_ms": round(1000.0 * transcript.decode_sec, 2), "warnings": list(transcript.warnings),
    })


def voice_stage_from_settings(settings, on_transcript=None) -> VoiceStage | None:
    """The in-process :class:`VoiceStage` of ``refavs_node`` (None when ``voice_commands`` is off).

    Args:
        settings: :class:`refavs_ros.node.params.NodeSettings`.
        on_transcript: called with every :class:`~refavs_ros.voice.Transcript`.

    Raises:
        ConfigError, ModelLoadError, BackendUnavailableError: from the recogniser (a missing
        vocabulary file or Whisper directory is named).
    """
    if not settings.voice_commands:
        return None
    from refavs_ros.voice import RecognizerConfig

    config = RecognizerConfig(backend=settings.voice_backend, vocabulary_path=settings.voice_vocabulary_path,
                              whisper_dir=settings.voice_whisper_dir, moonshine_dir=settings.voice_moonshine_dir,
                              rescore_dir=settings.voice_rescore_dir,
                              wake_phrase=settings.voice_wake_phrase,
                              confidence_threshold=settings.voice_confidence_threshold)
    recognizer = VoiceCommandRecognizer(config, on_transcript=on_transcript)
    return VoiceStage(recognizer, VoiceOptions(suppression=settings.voice_suppression,
                                               attenuation_db=settings.voice_attenuation_db))
