"""The released EEMC as streaming stages with named inputs and outputs (what every backend runs).

:class:`OfficialStageModel` bundles the released model (:class:`~refavs_ros.models.official.OfficialEEMC`)
and its audio encoder (:class:`~refavs_ros.models.vggish.VGGish`) and exposes one module per
stage, like :mod:`refavs_ros.models.eemc_stages` does for the project's own EEMC. Shapes for the
streaming batch of 1, released sizes (T = frames in the fusion window, 1..N; N = 10 released):

=======  ============================================  ==============================================
stage    inputs                                        outputs
=======  ============================================  ==============================================
visual   pixel_values (1, 3, 384, 384) float32,        swin_last (1, 1024, 12, 12),
         ImageNet-normalised RGB                       multi_scale_0 (1, 256, 12, 12),
                                                       multi_scale_1 (1, 256, 24, 24),
                                                       multi_scale_2 (1, 256, 48, 48),
                                                       mask_features (1, 256, 96, 96)
audio    log_mel (1, 96, 64)                           audio_embedding (1, 128)
fuse     visual_tokens (1, T, 144, 1024),              prompts (1, T + 171, 256) of the NEWEST frame
         audio_embeddings (1, T, 128),
         text_hidden (1, 25, 768), beta (1,)
decode   multi_scale_0..2, mask_features (newest       mask_logits (1, 256, 256)
         frame), prompts (1, T + 171, 256)
=======  ============================================  ==============================================

``visual`` runs once per new frame, ``audio`` once per audio example, ``fuse`` once per step over
the window, ``decode`` once per step for the newest frame. The window axis T of ``fuse`` (and the
prompt axis of ``decode``, T + 171 = Na + 144 + 25 + 2) is DYNAMIC: the start-up windows
1..N-1 run on the same graph (:data:`OFFICIAL_DYNAMIC_AXES`). The text encoder (DistilRoBERTa,
once per command) stays outside the stage set, as for EEMC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from torch import Tensor, nn

from refavs_ros.models.eemc_stages import StageSpec
from refavs_ros.models.official import MASK_SIZE, TEXT_TOKENS, OfficialEEMC
from refavs_ros.models.vggish import VGGish

OFFICIAL_STAGES: dict[str, StageSpec] = {
    "visual": StageSpec(
        ("pixel_values",), ("swin_last", "multi_scale_0", "multi_scale_1", "multi_scale_2", "mask_features")
    ),
    "audio": StageSpec(("log_mel",), ("audio_embedding",)),
    "fuse": StageSpec(("visual_tokens", "audio_embeddings", "text_hidden", "beta"), ("prompts",)),
    "decode": StageSpec(
        ("multi_scale_0", "multi_scale_1", "multi_scale_2", "mask_features", "prompts"), ("mask_logits",)
    ),
}
"""Named I/O of the released model's stages, in call order (see the module table)."""

OFFICIAL_DYNAMIC_AXES: dict[str, dict[str, dict[int, str]]] = {
    "fuse": {"visual_tokens": {1: "window"}, "audio_embeddings": {1: "window"}, "prompts": {1: "prompt_tokens"}},
    "decode": {"prompts": {1: "prompt_tokens"}},
}
"""Dynamic axes of the exported graphs (``torch.onnx.export(dynamic_axes=...)``): ``window`` =
frames in the fusion window T (1..N), ``prompt_tokens`` = T + 171 (Na + S + L + 2 with Na = T)."""

FIXED_PROMPT_TOKENS = 2 + TEXT_TOKENS
"""Prompt tokens that do not depend on the window: the two modality tokens and the 25 text cues
(the other Na + S are the audio cues of the window and the newest frame's S visual cues)."""


@dataclass(frozen=True)
class OfficialGraphConfig:
    """What, besides the weights, fixes the official graphs (part of the export cache key).

    Attributes:
        image_size: network input (height, width) in pixels (384x384 released).
        output_size: ``decode`` logits (height, width) in pixels (256x256 released).
        mask2former: the Mask2Former config as a JSON string (head counts and sizes that the
            weights alone do not fix).
        fusion_heads: heads of ``mha_A_T`` / ``mha_V_T`` / ``mha_mm`` (8 released).
        prompt_heads: heads of ``ref_avs_attn`` (4 released).
        profile: ``"official"`` (names the cache directory).
    """

    image_size: tuple[int, int]
    output_size: tuple[int, int]
    mask2former: str
    fusion_heads: int
    prompt_heads: int
    profile: str = "official"

    def to_dict(self) -> dict:
        """JSON-serialisable dict (hashed into the export fingerprint)."""
        return {
            "profile": self.profile,
            "image_size": list(self.image_size),
            "output_size": list(self.output_size),
            "mask2former": self.mask2former,
            "fusion_heads": self.fusion_heads,
            "prompt_heads": self.prompt_heads,
        }


class _Visual(nn.Module):
    def __init__(self, net: OfficialEEMC) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        f = self.net.encode_frames(pixel_values)
        return (f.swin_last, *f.multi_scale, f.mask_features)


class _Audio(nn.Module):
    def __init__(self, vggish: VGGish) -> None:
        super().__init__()
        self.vggish = vggish

    def forward(self, log_mel: Tensor) -> tuple[Tensor]:
        return (self.vggish(log_mel),)


class _Fuse(nn.Module):
    def __init__(self, net: OfficialEEMC, traceable: bool) -> None:
        super().__init__()
        self.net = net
        self.traceable = traceable

    def forward(self, visual_tokens: Tensor, audio_embeddings: Tensor, text_hidden: Tensor, beta: Tensor) -> tuple[Tensor]:
        prompts = self.net.fuse(
            visual_tokens, audio_embeddings, text_hidden, last_frames=1, beta=beta, traceable=self.traceable
        )
        return (prompts,)


class _Decode(nn.Module):
    def __init__(self, net: OfficialEEMC, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.net = net
        self.output_size = tuple(output_size)

    def forward(self, ms0: Tensor, ms1: Tensor, ms2: Tensor, mask_features: Tensor, prompts: Tensor) -> tuple[Tensor]:
        cls_logits, mask_logits = self.net.decode_queries((ms0, ms1, ms2), mask_features, prompts)
        return (self.net.query_weighted_logits(cls_logits, mask_logits, self.output_size),)


class OfficialStageModel(nn.Module):
    """The released EEMC and its VGGish as the four streaming stages of :data:`OFFICIAL_STAGES`.

    Args:
        net: the released model (:meth:`OfficialEEMC.from_state_dict`), or a small one in tests.
        vggish: the audio encoder (full-size released; small in tests); None only for exports
            without the ``audio`` graph (:meth:`stage_module` then raises for ``audio``).
        output_size: (height, width) in pixels of the ``decode`` logits (256x256 released).

    Attributes:
        stages: :data:`OFFICIAL_STAGES`.
        dynamic_axes: :data:`OFFICIAL_DYNAMIC_AXES`.
        cfg: :class:`OfficialGraphConfig` (hashed into the export fingerprint with the weights).
        image_size: network input (height, width) in pixels.
        output_size: as the argument.
        tokens_per_frame: visual tokens per frame S (144 released).
        token_dim: visual token width C = fusion width (1024 released).
    """

    stages = OFFICIAL_STAGES
    dynamic_axes = OFFICIAL_DYNAMIC_AXES

    def __init__(
        self, net: OfficialEEMC, vggish: VGGish | None, output_size: tuple[int, int] = MASK_SIZE
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.vggish = vggish.eval() if vggish is not None else None
        self.output_size = tuple(int(v) for v in output_size)
        self.image_size = tuple(net.image_size)
        m2f = net.model_v.config
        self.cfg = OfficialGraphConfig(
            image_size=self.image_size,
            output_size=self.output_size,
            mask2former=json.dumps(m2f.to_dict(), sort_keys=True, default=str),
            fusion_heads=int(net.mha_mm.num_heads),
            prompt_heads=int(net.model_v.model.transformer_module.ref_avs_attn.num_heads),
        )
        stride = 32  # Swin's total downsampling; the last stage is (H/32) x (W/32)
        self.tokens_per_frame = (self.image_size[0] // stride) * (self.image_size[1] // stride)
        self.token_dim = int(net.dim_v)
        self.eval()

    def stage_module(self, stage: str, *, traceable: bool = False) -> nn.Module:
        """Module computing ``stage``: ``forward(*inputs in spec order) -> tuple(outputs)``.

        Args:
            stage: ``visual``, ``audio``, ``fuse`` or ``decode``.
            traceable: for export: the fusion's dynamic-shape, loop-free form
                (``OfficialEEMC.fuse(traceable=True)``; same values, float rounding aside).

        Raises:
            KeyError: unknown stage, or ``audio`` without a VGGish.
        """
        if stage == "visual":
            return _Visual(self.net)
        if stage == "audio":
            if self.vggish is None:
                raise KeyError("this OfficialStageModel has no VGGish, so no 'audio' stage")
            return _Audio(self.vggish)
        if stage == "fuse":
            return _Fuse(self.net, traceable)
        if stage == "decode":
            return _Decode(self.net, self.output_size)
        raise KeyError(f"unknown stage {stage!r}; expected one of {list(OFFICIAL_STAGES)}")

    def input_shapes(self, window: int) -> dict[str, dict[str, tuple[int, ...]]]:
        """Input shapes of every stage at batch 1 for a fusion window of ``window`` frames.

        Args:
            window: frames in the fusion window T (>= 1).

        Returns:
            ``{stage: {input: shape}}``; e.g. ``fuse: visual_tokens (1, T, 144, 1024)``.

        Raises:
            ValueError: ``window`` < 1.
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        h, w = self.image_size
        cfg = self.net.model_v.config
        d = int(cfg.feature_size)
        feat = int(cfg.mask_feature_size)
        s, c = self.tokens_per_frame, self.token_dim
        n_prompts = window + s + FIXED_PROMPT_TOKENS
        every = {
            "pixel_values": (1, 3, h, w),
            "log_mel": (1, 96, 64),
            "visual_tokens": (1, window, s, c),
            "audio_embeddings": (1, window, int(self.net.audio_proj[0].in_features)),
            "text_hidden": (1, TEXT_TOKENS, int(self.net.text_proj[0].in_features)),
            "beta": (1,),
            "multi_scale_0": (1, d, h // 32, w // 32),
            "multi_scale_1": (1, d, h // 16, w // 16),
            "multi_scale_2": (1, d, h // 8, w // 8),
            "mask_features": (1, feat, h // 4, w // 4),
            "prompts": (1, n_prompts, self.net.prompt_dim),
        }
        return {name: {k: every[k] for k in spec.inputs} for name, spec in OFFICIAL_STAGES.items()}
