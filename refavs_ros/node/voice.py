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
        pad_sec: extra time (s) suppressed before and after the utterance's speech span.
    """

    suppression: str = "zero"
    attenuation_db: float = 30.0
    pad_sec: float = 0.15

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
