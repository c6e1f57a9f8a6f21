"""The EEMC streaming stages as modules with named, fixed-order inputs and outputs.

Each stage is one unit a backend runs (PyTorch eagerly, or an ONNX / TensorRT graph exported
from the same module). Shapes for the streaming batch of 1 (d = d_model, G = token grid,
L = max_text_tokens, S = image_size):

=========  ==================================================  ============================================
stage      inputs                                              outputs
=========  ==================================================  ============================================
visual     pixel_values (1, 3, S, S) float32 [0, 1] RGB        visual_tokens (1, G*G, d),
                                                               pixel_features (1, d, S/4, S/4)
audio      log_mel (1, 96, 64) float32                         audio_embedding (1, d_A)
fuse       visual_tokens, audio_embedding,                     fused_audio (1, 1, d), fused_visual (1, G*G, d),
           text_hidden (1, L, d_T), text_mask (1, L)           text_cue (1, L, d)
decode     fused_audio, fused_visual, text_cue, text_mask,     mask_logits (1, S/4, S/4), presence_logit (1,)
           memory_audio (1, 1, d), memory_visual (1, G*G, d),
           beta (1,), pixel_features
=========  ==================================================  ============================================
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from refavs_ros.models.eemc import EEMC


@dataclass(frozen=True)
class StageSpec:
    """Names of a stage's inputs and outputs, in call order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


STAGES: dict[str, StageSpec] = {
    "visual": StageSpec(("pixel_values",), ("visual_tokens", "pixel_features")),
    "audio": StageSpec(("log_mel",), ("audio_embedding",)),
    "fuse": StageSpec(
        ("visual_tokens", "audio_embedding", "text_hidden", "text_mask"),
        ("fused_audio", "fused_visual", "text_cue"),
    ),
    "decode": StageSpec(
        (
            "fused_audio",
            "fused_visual",
            "text_cue",
            "text_mask",
            "memory_audio",
            "memory_visual",
            "beta",
            "pixel_features",
        ),
        ("mask_logits", "presence_logit"),
    ),
}


class StageModule(nn.Module):
    """Wrap one EEMC stage as ``forward(*inputs) -> tuple(outputs)`` in :data:`STAGES` order.

    Args:
        model: the EEMC model (shared, not copied).
        stage: one of ``visual``, ``audio``, ``fuse``, ``decode``.

    Raises:
        KeyError: unknown stage name.
    """

    def __init__(self, model: EEMC, stage: str) -> None:
        super().__init__()
        self.spec = STAGES[stage]
        self.stage = stage
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        if self.stage == "visual":
            return m.encode_visual(*inputs)
        if self.stage == "audio":
            return (m.encode_audio(*inputs),)
        if self.stage == "fuse":
            return m.fuse(*inputs)
        return m.decode(*inputs)
