"""Voice commands: a spoken referring expression becomes the command, offline (issue 9).

``VoiceCommandRecognizer`` takes the same stamped audio chunks as the predictor; silero-vad
cuts utterances, an ASR backend (by default Moonshine searched inside the command grammar,
installed by ``refavs-voice-models fetch``; pocketsphinx with the same grammar; the general
pocketsphinx language model; or Whisper from a local directory) transcribes them, and only
transcripts that are commands of the vocabulary, with the wake phrase when one is set and a
confidence above the threshold, become :class:`VoiceCommand` s.

ROS-free; the nodes in ``refavs_ros.ros`` wire it to topics. See README "Voice commands".
"""

from refavs_ros.voice.asr import BACKENDS, AsrBackend, Hypothesis, build_backend
from refavs_ros.voice.recognizer import (
    MATCH_MODES,
    RecognizerConfig,
    Transcript,
    VoiceCommand,
    VoiceCommandRecognizer,
    check_clip,
)
from refavs_ros.voice.vad import SileroVad, UtteranceSegmenter, VadConfig
from refavs_ros.voice.vocabulary import Vocabulary, normalise_text

__all__ = [
    "BACKENDS",
    "MATCH_MODES",
    "AsrBackend",
    "Hypothesis",
    "RecognizerConfig",
    "SileroVad",
    "Transcript",
    "UtteranceSegmenter",
    "VadConfig",
    "Vocabulary",
    "VoiceCommand",
    "VoiceCommandRecognizer",
    "build_backend",
    "check_clip",
    "normalise_text",
]
