"""Loaders for the published Ref-AVS model and its sub-models, from local directories only.

No hub access at run time: every ``from_pretrained`` call uses ``local_files_only=True`` and a
missing directory or file raises :class:`~refavs_ros.errors.ModelLoadError` naming it.

``models_dir`` layout (fetch once on a connected machine, see ``docs/official.md``)::

    models_dir/
      mask2former-swin-base-ade-semantic/   config.json, preprocessor_config.json
                                            (the Mask2Former weights are NOT needed: the Ref-AVS
                                            checkpoint contains the whole Mask2Former)
      distilroberta-base/                   config.json, model.safetensors (or pytorch_model.bin),
                                            tokenizer files (vocab.json, merges.txt, ...)
      vggish/vggish.pth                     torchvggish's vggish-10086976.pth (renamed or linked)

The Ref-AVS checkpoint itself (``ckpt_best_miou.pth``) is passed separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from refavs_ros.errors import InputError, ModelLoadError
from refavs_ros.models.official import TEXT_TOKENS, OfficialEEMC, as_mask2former_config
from refavs_ros.models.vggish import VGGish, load_vggish

MASK2FORMER_DIR = "mask2former-swin-base-ade-semantic"
"""Sub-directory of ``models_dir`` with the Mask2Former config and image-processor config."""
TEXT_DIR = "distilroberta-base"
"""Sub-directory of ``models_dir`` with DistilRoBERTa (``distilbert/distilroberta-base``)."""
VGGISH_FILE = "vggish/vggish.pth"
"""Path under ``models_dir`` of the VGGish weights."""


def _require_dir(path: Path, what: str, needs: tuple[str, ...] = ("config.json",)) -> Path:
    if not path.is_dir():
        raise ModelLoadError(f"{what} directory not found: {path}")
    for name in needs:
        if not (path / name).is_file():
            raise ModelLoadError(f"{what}: {path / name} is missing")
    return path


def load_mask2former_config(path: str | Path):
    """Read the Mask2Former config (``facebook/mask2former-swin-base-ade-semantic``).

    Args:
        path: directory with ``config.json``.

    Returns:
        ``transformers.Mask2FormerConfig``.

    Raises:
        ModelLoadError: directory or ``config.json`` missing or unreadable.
    """
    return as_mask2former_config(_require_dir(Path(path), "Mask2Former config"))


class ImagePreprocessor:
    """The Mask2Former image processor of the released pipeline, on uint8 RGB arrays.

    Resizes to the configured size WITHOUT keeping the aspect ratio (384x384, PIL bilinear),
    rescales by 1/255 and normalises with the ImageNet mean/std (``preprocessor_config.json`` of
    ``facebook/mask2former-swin-base-ade-semantic``), through transformers'
    ``Mask2FormerImageProcessorPil`` (the PIL backend; no torchvision needed).

    Args:
        processor: a transformers Mask2Former image processor.
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        size = processor.size
        self.size = (int(size["height"]), int(size["width"]))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ImagePreprocessor:
        """Load from a directory with ``preprocessor_config.json``.

        Raises:
            ModelLoadError: directory or file missing or unreadable.
        """
        from transformers.models.mask2former.image_processing_pil_mask2former import (
            Mask2FormerImageProcessorPil,
        )

        path = _require_dir(Path(path), "Mask2Former image processor", ("preprocessor_config.json",))
        try:
            return cls(Mask2FormerImageProcessorPil.from_pretrained(str(path), local_files_only=True))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the image processor config in {path}: {exc}") from exc

    def __call__(self, images: list[np.ndarray] | np.ndarray) -> Tensor:
        """Preprocess frames.

        Args:
            images: one uint8 (H, W, 3) RGB array or a list of them (any sizes).

        Returns:
            float32 (N, 3, H_net, W_net) normalised pixel values (CPU).

        Raises:
            InputError: not uint8 (H, W, 3).
        """
        if isinstance(images, np.ndarray):
            images = [images]
        for img in images:
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                what = f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
                raise InputError(f"images must be uint8 (H, W, 3) RGB, got {what}")
        out = self.processor(images=list(images), return_tensors="pt")
        return out["pixel_values"].to(torch.float32)


class OfficialTextEncoder(nn.Module):
    """DistilRoBERTa features of a referring expression, as the released dataset code makes them.

    Released ``REFAVS.get_text_emb``: tokenizer with ``max_length=25``, ``padding="max_length"``,
    ``truncation=True``; the encoder gets ``input_ids`` AND the tokenizer's ``attention_mask``;
    all 25 ``last_hidden_state`` rows (pad positions included) go on to the fusion, which sees
    no mask.

    Args:
        tokenizer: a transformers tokenizer.
        model: a transformers encoder returning ``last_hidden_state``.
        max_tokens: sequence length (25).
    """

    def __init__(self, tokenizer, model: nn.Module, max_tokens: int = TEXT_TOKENS) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.max_tokens = int(max_tokens)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", max_tokens: int = TEXT_TOKENS
    ) -> OfficialTextEncoder:
        """Load tokenizer and encoder from a local directory (``distilroberta-base``).

        Raises:
            ModelLoadError: directory/config missing or unreadable.
        """
        from transformers import AutoModel, AutoTokenizer

        path = _require_dir(Path(path), "text encoder (DistilRoBERTa)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the text encoder from {path}: {exc}") from exc
        return cls(tokenizer, model.to(device), max_tokens)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states (768 for DistilRoBERTa)."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, text: str) -> Tensor:
        """Encode one expression.

        Args:
            text: the referring expression (non-empty).

        Returns:
            float32 (25, hidden) ``last_hidden_state`` on the encoder's device.

        Raises:
            InputError: empty text.
        """
        if not isinstance(text, str) or not text.strip():
            raise InputError("the referring expression is empty")
        inputs = self.tokenizer(
            text, max_length=self.max_tokens, padding="max_length", truncation=True, return_tensors="pt"
        )
        dev = next(self.model.parameters()).device
        feed = {k: inputs[k].to(dev) for k in ("input_ids", "attention_mask")}
        return self.model(**feed).last_hidden_state[0].to(torch.float32)


def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read the released ``ckpt_best_miou.pth`` (saved from CUDA) onto the CPU.

    Args:
        path: the checkpoint file (a plain state dict; ``{"state_dict": ...}`` / ``{"model": ...}``
            wrappers are unwrapped).

    Returns:
        dict name -> CPU tensor (released key names).

    Raises:
        ModelLoadError: missing or unreadable file, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Ref-AVS checkpoint not found: {path} (expected ckpt_best_miou.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise ModelLoadError(f"cannot read the Ref-AVS checkpoint {path}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state dict of tensors")
    return dict(state)


@dataclass
class OfficialComponents:
    """Everything the published model needs at inference.

    Attributes:
        model: the released Mask2Former + EEMC fusion.
        image_processor: frames -> normalised 384x384 pixel values.
        text_encoder: expression -> (25, 768) hidden states.
        vggish: log-mel examples -> (N, 128) embeddings.
        device: torch device of all three networks.
    """

    model: OfficialEEMC
    image_processor: ImagePreprocessor
    text_encoder: OfficialTextEncoder
    vggish: VGGish
    device: torch.device


def load_official(
    checkpoint: str | Path, models_dir: str | Path, device: str | torch.device = "cpu"
) -> OfficialComponents:
    """Load the released checkpoint and the sub-models from ``models_dir`` (layout above).

    Args:
        checkpoint: ``ckpt_best_miou.pth``.
        models_dir: directory laid out as in the module docstring.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns:
        :class:`OfficialComponents` in eval mode on ``device``.

    Raises:
        ModelLoadError: a file or directory is missing, unreadable or incompatible (named).
        BackendUnavailableError: a CUDA device was asked for but is not available.
    """
    from refavs_ros.errors import BackendUnavailableError

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device!r} requested but CUDA is not available")
    root = Path(models_dir)
    if not root.is_dir():
        raise ModelLoadError(f"models_dir not found: {root}")
    m2f_dir = root / MASK2FORMER_DIR
    config = load_mask2former_config(m2f_dir)
    processor = ImagePreprocessor.from_pretrained(m2f_dir)
    text = OfficialTextEncoder.from_pretrained(root / TEXT_DIR, device=dev)
    vggish = load_vggish(root / VGGISH_FILE, device=dev)
    try:
        model = OfficialEEMC.from_state_dict(load_checkpoint(checkpoint), config, image_size=processor.size)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{checkpoint}: {exc}") from None
    if model.text_proj[0].in_features != text.hidden_size:
        raise ModelLoadError(
            f"{checkpoint} expects text features of width {model.text_proj[0].in_features}, "
            f"but {root / TEXT_DIR} has hidden size {text.hidden_size}"
        )
    return OfficialComponents(model.to(dev).eval(), processor, text, vggish, dev)
