"""Sliding-window streaming of the published (non-causal) Ref-AVS model over a stage backend.

The released model fuses a whole 10-frame clip at once (the V-T attention crosses time), so a
faithful online version keeps a window of the last ``num_frames`` frames sampled every
``frame_stride_sec`` (1 s; the predictor decides which frames are committed) together with one
VGGish embedding per frame (~10 s of audio). The stages (``OFFICIAL_STAGES``, run by any
:class:`~refavs_ros.backends.base.StageBackend`: PyTorch, ONNX Runtime or TensorRT):

* ``visual`` (Swin-B + pixel decoder at 384x384): once per NEW frame (:meth:`encode_frame`);
* ``audio`` (VGGish): once per audio example (:meth:`encode_audio`);
* DistilRoBERTa: once per command (:meth:`set_command`; PyTorch text encoder, as for EEMC);
* ``fuse``: per step, over [the last ``num_frames - 1`` committed frames ; the new frame], from
  the cached per-frame visual tokens and audio embeddings (:meth:`step`);
* ``decode``: per step, the newest frame only.

The logits of the newest frame therefore equal ``OfficialEEMC.forward_clip`` on the window's
frames (last frame) -- tested in ``test/test_engine_official.py``.

Start-up: while fewer than ``num_frames - 1`` frames are committed, the window is simply
shorter (k frames with k audio embeddings); nothing is padded. The ``fuse`` and ``decode``
graphs have a dynamic window axis, so every window length runs on the same graph/engine.

Where the backend offers ``run_tensors`` (PyTorch, TensorRT), stage outputs stay on the device
(GPU) between stages and across the window; only the final 256x256 logits are copied to the
host. Otherwise (ONNX Runtime) the engine passes numpy arrays (zero-copy CPU tensors).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from refavs_ros.backends.base import StageBackend
from refavs_ros.errors import ConfigError, InputError
from refavs_ros.models.official import CACHE_MEM_BETA, MASK_SIZE, OfficialEEMC
from refavs_ros.models.official_loaders import ImagePreprocessor, OfficialTextEncoder
from refavs_ros.models.vggish import VGGish

VISUAL_OUTPUTS = ("swin_last", "multi_scale_0", "multi_scale_1", "multi_scale_2", "mask_features")
"""Outputs of the ``visual`` stage (see ``refavs_ros.models.official_stages``)."""


@dataclass
class OfficialFrame:
    """Output of :meth:`OfficialStreamEngine.encode_frame` for one frame.

    Attributes:
        features: the ``visual`` stage's outputs at batch 1 by name (``multi_scale_0..2`` and
            ``mask_features`` are kept only for decoding this frame), float32 tensors on the
            backend's device.
        tokens: float32 (S, C) visual tokens (144 x 1024 released), the per-frame cache entry:
            the last Swin stage viewed channel-major (``models.official.visual_tokens``).
    """

    features: dict[str, Tensor]
    tokens: Tensor


class OfficialStreamEngine:
    """:class:`refavs_ros.engines.base.StreamEngine` for the released EEMC (sliding window).

    Args:
        backend: runs the stages of ``OFFICIAL_STAGES`` (``TorchBackend`` / ``OnnxRuntimeBackend``
            / ``TensorRTBackend`` over an ``OfficialStageModel``).
        image_processor: frames -> normalised pixel values at the network size.
        text_encoder: expression -> (25, text_dim) hidden states (PyTorch, once per command).
        num_frames: window length in frames, >= 1 (10 released).
        beta: cached-memory beta (None = 1, released).
        mask_size: (height, width) of the logits the backend's ``decode`` returns (256x256).
        name: identifier for diagnostics.

    Attributes:
        name: ``"official"``.
        image_size: (384, 384) network input (pixels).
        mask_size: (256, 256) logits returned by :meth:`step` (pixels).
    """

    def __init__(
        self,
        backend: StageBackend,
        image_processor: ImagePreprocessor,
        text_encoder: OfficialTextEncoder,
        *,
        num_frames: int = 10,
        beta: float | None = None,
        mask_size: tuple[int, int] = MASK_SIZE,
        name: str = "official",
    ) -> None:
        self.backend = backend
        self.image_processor = image_processor
        self.text_encoder = text_encoder.eval()
        self.name = name
        self.image_size = tuple(image_processor.size)
        self.mask_size = tuple(mask_size)
        self._run_tensors = getattr(backend, "run_tensors", None)
        self._text: Tensor | None = None  # (1, L, D_text)
        self._entries: deque[tuple[Tensor, Tensor]] = deque()  # (tokens (S, C), audio (D_a,))
        self._window = 1
        self.beta = CACHE_MEM_BETA
        self.set_beta(beta)
        self.set_window(num_frames)

    # ---------------------------------------------------------------------------- builders
    @classmethod
    def from_modules(
        cls,
        model: OfficialEEMC,
        image_processor: ImagePreprocessor,
        text_encoder: OfficialTextEncoder,
        vggish: VGGish,
        *,
        device: str | torch.device = "cpu",
        num_frames: int = 10,
        beta: float | None = None,
    ) -> OfficialStreamEngine:
        """Engine over the PyTorch backend (eager, the reference) for ready modules.

        Args:
            model: the released model (``OfficialEEMC.from_state_dict``), or a small one in tests.
            image_processor, text_encoder: as for the constructor (the text encoder is moved to
                ``device``).
            vggish: the audio encoder.
            device: torch device of every network.
            num_frames, beta: as for the constructor.
        """
        from refavs_ros.backends.torch_backend import TorchBackend
        from refavs_ros.models.official_stages import OfficialStageModel

        backend = TorchBackend(OfficialStageModel(model, vggish), device=str(device))
        return cls(backend, image_processor, text_encoder.to(device), num_frames=num_frames, beta=beta)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        models_dir: str | Path,
        device: str = "cpu",
        *,
        backend: str = "torch",
        engine_dir: str | Path | None = None,
        precision: str = "fp16",
        threads: int | None = None,
        num_frames: int = 10,
        beta: float | None = None,
    ) -> OfficialStreamEngine:
        """Load the released checkpoint and the sub-models and build the stage backend.

        A thin alias of :func:`refavs_ros.engines.build.official_engine` (see there).

        Raises:
            ModelLoadError: missing/incompatible files (named), export or engine build failed.
            BackendUnavailableError: the backend library or device is missing.
            ConfigError: unknown backend, bad device/precision.
        """
        from refavs_ros.engines.build import official_engine

        return official_engine(
            checkpoint, models_dir, backend=backend, device=device, engine_dir=engine_dir, precision=precision,
            threads=threads, num_frames=num_frames, beta=beta,
        )

    # ------------------------------------------------------------------------------ protocol
    def set_command(self, text: str) -> None:
        """Encode the expression once (DistilRoBERTa, 25 tokens); the window is kept.

        Raises:
            InputError: empty expression.
        """
        with torch.inference_mode():
            self._text = self.text_encoder.encode(text)[None].float()  # (1, 25, 768)

    def encode_frame(self, image: np.ndarray) -> OfficialFrame:
        """``visual`` stage on one frame (the expensive per-frame call).

        Args:
            image: uint8 (H, W, 3) RGB, any size (resized to 384x384 without keeping aspect).

        Raises:
            InputError: not uint8 (H, W, 3).
        """
        pixels = self.image_processor(image)  # (1, 3, 384, 384) float32, CPU
        out = self._run("visual", {"pixel_values": pixels})
        last = out["swin_last"]  # (1, C, h, w): tokens = C consecutive values, channel-major
        tokens = last.reshape(last.shape[2] * last.shape[3], last.shape[1])
        return OfficialFrame(out, tokens)

    def encode_audio(self, log_mel: np.ndarray) -> Tensor:
        """``audio`` stage (VGGish) on one log-mel example float32 (96, 64) -> embedding (128,).

        Raises:
            InputError: wrong shape or non-finite values.
        """
        arr = np.asarray(log_mel, dtype=np.float32)
        if arr.shape != (96, 64) or not np.isfinite(arr).all():
            raise InputError(f"log-mel example must be finite float32 (96, 64), got {arr.shape}")
        return self._run("audio", {"log_mel": torch.from_numpy(arr)[None]})["audio_embedding"][0]

    def step(self, frame: OfficialFrame, audio: Tensor | np.ndarray, *, commit: bool) -> tuple[np.ndarray, float]:
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
        audio = torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
        audio = audio.to(frame.tokens.device)
        window = list(self._entries)  # at most num_frames - 1 committed frames
        tokens = torch.stack([t for t, _ in window] + [frame.tokens])[None]  # (1, T, S, C)
        audios = torch.stack([a for _, a in window] + [audio])[None]  # (1, T, D_a)
        prompts = self._run(
            "fuse",
            {"visual_tokens": tokens, "audio_embeddings": audios, "text_hidden": self._text, "beta": self._beta},
        )["prompts"]
        feeds = {k: frame.features[k] for k in VISUAL_OUTPUTS[1:]}
        logits = self._run("decode", {**feeds, "prompts": prompts})["mask_logits"][0]
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
            ConfigError: ``num_frames`` < 1, or above the backend's ``max_window`` (TensorRT).
        """
        if int(num_frames) < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        limit = getattr(self.backend, "max_window", None)  # a TensorRT engine's optimization profile
        if limit is not None and int(num_frames) > limit:
            raise ConfigError(
                f"num_frames {num_frames} exceeds the {self.backend.name} engines' largest window {limit} "
                "(rebuild them with a larger max_window)"
            )
        self._window = int(num_frames)
        self._trim()

    def set_beta(self, beta: float | None) -> None:
        """Cached-memory beta of the released formula ``(1 + beta) x - mean`` (None = 1).

        It is an input of the ``fuse`` stage, so it changes on every backend without a re-export.
        Note: in the released formula the running mean is subtracted whatever beta is, so
        beta = 0 gives ``x - mean``, not "memory off".
        """
        self.beta = CACHE_MEM_BETA if beta is None else float(beta)
        self._beta = torch.tensor([self.beta], dtype=torch.float32)

    @property
    def memory_length(self) -> int:
        """Committed frames that join the next frame's window (at most ``num_frames - 1``)."""
        return len(self._entries)

    @property
    def window(self) -> int:
        """Window length in frames (the new frame included)."""
        return self._window

    # ------------------------------------------------------------------------------ helpers
    def _run(self, stage: str, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run a stage on tensors; outputs as tensors (device-resident where the backend allows)."""
        if self._run_tensors is not None:
            return self._run_tensors(stage, feeds)
        out = self.backend.run(stage, {k: v.detach().cpu().numpy() for k, v in feeds.items()})
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def _trim(self) -> None:
        while len(self._entries) > self._window - 1:
            self._entries.popleft()
