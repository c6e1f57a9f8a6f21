"""Sliding-window streaming of the published (non-causal) Ref-AVS model.

The released model fuses a whole 10-frame clip at once (the V-T attention crosses time), so a
faithful online version keeps a window of the last ``num_frames`` frames sampled every
``frame_stride_sec`` (1 s; the predictor decides which frames are committed) together with one
VGGish embedding per frame (~10 s of audio), and for every new frame:

1. runs the Swin backbone + pixel decoder on the NEW frame only (:meth:`encode_frame`);
2. recomputes the fusion over [the last ``num_frames - 1`` committed frames ; the new frame]
   from the cached per-frame visual tokens and audio embeddings (:meth:`step`);
3. decodes only the new frame with its prompts.

The logits of the newest frame therefore equal ``OfficialEEMC.forward_clip`` on the window's
frames (last frame) -- tested in ``test/test_official_stream.py``.

Start-up: while fewer than ``num_frames - 1`` frames are committed, the window is simply
shorter (k frames with k audio embeddings); nothing is padded. The released model accepts any
clip length (attention and cached memory are length-agnostic), so the first frame is fused
with itself alone, the second with the first, and so on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from refavs_ros.errors import ConfigError, InputError
from refavs_ros.models.official import (
    CACHE_MEM_BETA,
    MASK_SIZE,
    FrameFeatures,
    OfficialEEMC,
    visual_tokens,
)
from refavs_ros.models.official_loaders import (
    ImagePreprocessor,
    OfficialTextEncoder,
    load_official,
)
from refavs_ros.models.vggish import VGGish


@dataclass
class OfficialFrame:
    """Output of :meth:`OfficialStreamEngine.encode_frame` for one frame.

    Attributes:
        features: backbone + pixel-decoder output at batch 1 (kept only for decoding this frame).
        tokens: float (S, C) visual tokens (144 x 1024 released), the per-frame cache entry.
    """

    features: FrameFeatures
    tokens: Tensor


class OfficialStreamEngine:
    """:class:`refavs_ros.engines.base.StreamEngine` for the released EEMC (sliding window).

    Args:
        model: the released model (``OfficialEEMC.from_state_dict``), or a tiny one in tests.
        image_processor: frames -> normalised pixel values at the network size.
        text_encoder: expression -> (25, text_dim) hidden states.
        vggish: log-mel example -> 128-d embedding.
        device: torch device for everything (the sub-models are moved there).
        num_frames: window length in frames, >= 1 (10 released).
        name: identifier for diagnostics.

    Attributes:
        name: ``"official"``.
        image_size: (384, 384) network input (pixels).
        mask_size: (256, 256) logits returned by :meth:`step` (pixels).
    """

    def __init__(
        self,
        model: OfficialEEMC,
        image_processor: ImagePreprocessor,
        text_encoder: OfficialTextEncoder,
        vggish: VGGish,
        *,
        device: str | torch.device = "cpu",
        num_frames: int = 10,
        name: str = "official",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.text_encoder = text_encoder.to(self.device).eval()
        self.vggish = vggish.to(self.device).eval()
        self.name = name
        self.image_size = tuple(image_processor.size)
        self.mask_size = MASK_SIZE
        self._text: Tensor | None = None  # (L, D_text)
        self._entries: deque[tuple[Tensor, Tensor]] = deque()  # (tokens (S, C), audio (D_a,))
        self._window = 1
        self.set_window(num_frames)

    @classmethod
    def from_pretrained(
        cls, checkpoint: str | Path, models_dir: str | Path, device: str = "cpu"
    ) -> OfficialStreamEngine:
        """Load the released checkpoint and the sub-models (layout: ``official_loaders``).

        Args:
            checkpoint: ``ckpt_best_miou.pth``.
            models_dir: directory with ``mask2former-swin-base-ade-semantic/``,
                ``distilroberta-base/`` and ``vggish/vggish.pth``.
            device: torch device.

        Raises:
            ModelLoadError: missing/incompatible files (named).
            BackendUnavailableError: CUDA requested but unavailable.
        """
        parts = load_official(checkpoint, models_dir, device)
        return cls(parts.model, parts.image_processor, parts.text_encoder, parts.vggish, device=parts.device)

    # ------------------------------------------------------------------------------ protocol
    def set_command(self, text: str) -> None:
        """Encode the expression once (DistilRoBERTa, 25 tokens); the window is kept.

        Raises:
            InputError: empty expression.
        """
        self._text = self.text_encoder.encode(text).to(self.device)

    @torch.no_grad()
    def encode_frame(self, image: np.ndarray) -> OfficialFrame:
        """Backbone + pixel decoder on one frame (the expensive per-frame call).

        Args:
            image: uint8 (H, W, 3) RGB, any size (resized to 384x384 without keeping aspect).

        Raises:
            InputError: not uint8 (H, W, 3).
        """
        pixels = self.image_processor(image).to(self.device)  # (1, 3, 384, 384)
        feats = self.model.encode_frames(pixels)
        return OfficialFrame(feats, visual_tokens(feats.swin_last)[0])

    @torch.no_grad()
    def encode_audio(self, log_mel: np.ndarray) -> Tensor:
        """VGGish on one log-mel example float32 (96, 64) -> embedding (128,) on the device.

        Raises:
            InputError: wrong shape or non-finite values.
        """
        arr = np.asarray(log_mel, dtype=np.float32)
        if arr.shape != (96, 64) or not np.isfinite(arr).all():
            raise InputError(f"log-mel example must be finite float32 (96, 64), got {arr.shape}")
        return self.vggish(torch.from_numpy(arr)[None].to(self.device))[0]

    @torch.no_grad()
    def step(self, frame: OfficialFrame, audio: Tensor, *, commit: bool) -> tuple[np.ndarray, float]:
        """Fuse the window ending with ``frame`` and decode ``frame`` only.

        Args:
            frame: :meth:`encode_frame` output of the newest frame.
            audio: :meth:`encode_audio` output aligned with that frame.
            commit: append the frame to the window after predicting (the oldest beyond
                ``num_frames - 1`` committed frames leaves).

        Returns:
            (logits float32 (256, 256), +inf): the released model has no null score; the
            predictor thresholds the mask (sigmoid > 0.4 for J, > 0.5 for S).

        Raises:
            RuntimeError: no command was set.
        """
        if self._text is None:
            raise RuntimeError("OfficialStreamEngine.step called before set_command")
        audio = torch.as_tensor(audio, dtype=torch.float32, device=self.device).reshape(-1)
        window = list(self._entries)  # at most num_frames - 1 committed frames
        tokens = torch.stack([t for t, _ in window] + [frame.tokens])  # (T, S, C)
        audios = torch.stack([a for _, a in window] + [audio])  # (T, D_a)
        prompts = self.model.fuse(tokens[None], audios[None], self._text[None], last_frames=1)  # (1, Ns, P)
        logits = self.model.decode(frame.features, prompts, self.mask_size)[0]
        if commit:
            self._entries.append((frame.tokens, audio))
            self._trim()
        return logits.float().cpu().numpy(), float("inf")

    def reset_memory(self) -> None:
        """Empty the window (the command is kept)."""
        self._entries.clear()

    def set_window(self, num_frames: int) -> None:
        """Window length in frames (>= 1, the new frame included); older committed frames leave.

        Raises:
            ConfigError: ``num_frames`` < 1.
        """
        if int(num_frames) < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        self._window = int(num_frames)
        self._trim()

    def set_beta(self, beta: float | None) -> None:
        """Cached-memory beta of the released formula ``(1 + beta) x - mean`` (None = 1).

        Note: in the released formula the running mean is subtracted whatever beta is, so
        beta = 0 gives ``x - mean``, not "memory off".
        """
        self.model.beta = CACHE_MEM_BETA if beta is None else float(beta)

    @property
    def memory_length(self) -> int:
        """Committed frames that join the next frame's window (at most ``num_frames - 1``)."""
        return len(self._entries)

    def _trim(self) -> None:
        while len(self._entries) > self._window - 1:
            self._entries.popleft()
