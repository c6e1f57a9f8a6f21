"""VGGish audio embedding network in PyTorch (the audio encoder of the released Ref-AVS).

Architecture: the AudioSet VGGish (Hershey et al., ICASSP 2017; TensorFlow ``vggish_slim.py``) as
ported to PyTorch by torchvggish (``harritaylor/torchvggish``, ``torchvggish/vggish.py``) and used
through towhee's ``audio_embedding.vggish`` operator by the released Ref-AVS dataset code
(``datasets/dataset_refavs.py``):

* input: log-mel examples (N, 1, 96, 64) from :func:`refavs_ros.audio.log_mel_examples`;
* ``features``: conv3x3(64) ReLU pool2 | conv(128) ReLU pool2 | conv(256) ReLU conv(256) ReLU pool2
  | conv(512) ReLU conv(512) ReLU pool2 -> (N, 512, 6, 4);
* flattened in TensorFlow's NHWC order (N, 6, 4, 512) -> 12288;
* ``embeddings``: Linear(12288, 4096) ReLU Linear(4096, 4096) ReLU Linear(4096, 128); no final ReLU
  (as ``vggish_slim`` fc2 and the embeddings Ref-AVS used; ``final_relu=True`` gives torchvggish's
  variant), no PCA/quantisation post-processing.

Weights: torchvggish's released ``vggish-10086976.pth`` or towhee's ``vggish.pth`` state dict
(same key names ``features.{0,3,6,8,11,13}.*``, ``embeddings.{0,2,4}.*``); see
:func:`load_vggish_state_dict` for the accepted variants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from refavs_ros.errors import InputError, ModelLoadError

VGGISH_CHANNELS = (64, 128, 256, 256, 512, 512)
"""Output channels of the 6 convolutions of the released VGGish."""
VGGISH_HIDDEN = 4096
EMBEDDING_SIZE = 128
_POOL_AFTER = (0, 1, 3, 5)  # conv indices followed by a 2x2 max-pool


class VGGish(nn.Module):
    """VGGish embedding network (torchvggish module layout and key names).

    Args:
        channels: output channels of the 6 convolutions (released: 64, 128, 256, 256, 512, 512).
        hidden: width of the two hidden fully connected layers (released 4096).
        embedding_size: output width (128).
        final_relu: apply a ReLU to the embedding (torchvggish does, TF VGGish fc2 does not).
    """

    def __init__(
        self,
        channels: Sequence[int] = VGGISH_CHANNELS,
        hidden: int = VGGISH_HIDDEN,
        embedding_size: int = EMBEDDING_SIZE,
        final_relu: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"VGGish has 6 convolutions, got {len(channels)} channel counts")
        layers: list[nn.Module] = []
        in_ch = 1
        for i, out_ch in enumerate(channels):
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True)]
            if i in _POOL_AFTER:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)  # conv indices 0, 3, 6, 8, 11, 13 as torchvggish
        head: list[nn.Module] = [
            nn.Linear(in_ch * 6 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, embedding_size),
        ]
        if final_relu:
            head.append(nn.ReLU(inplace=True))
        self.embeddings = nn.Sequential(*head)
        self.eval()

    def forward(self, log_mel: Tensor) -> Tensor:
        """Embed log-mel examples.

        Args:
            log_mel: float32 (N, 96, 64) or (N, 1, 96, 64) log-mel examples (0.96 s each).

        Returns:
            float32 (N, 128) embeddings.
        """
        if log_mel.dim() == 3:
            log_mel = log_mel.unsqueeze(1)
        if log_mel.dim() != 4 or tuple(log_mel.shape[1:]) != (1, 96, 64):
            raise InputError(f"VGGish expects (N, 96, 64) log-mel examples, got {tuple(log_mel.shape)}")
        x = self.features(log_mel)  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TensorFlow NHWC flatten
        return self.embeddings(x)

    @torch.no_grad()
    def embed(self, log_mel: np.ndarray) -> np.ndarray:
        """numpy convenience: float (N, 96, 64) or (96, 64) -> float32 (N, 128) or (128,)."""
        arr = np.asarray(log_mel, dtype=np.float32)
        single = arr.ndim == 2
        dev = next(self.parameters()).device
        out = self(torch.from_numpy(arr[None] if single else arr).to(dev)).cpu().numpy()
        return out[0] if single else out


def load_vggish_state_dict(model: VGGish, state_dict: Mapping[str, Tensor]) -> None:
    """Load torchvggish/towhee VGGish weights into ``model`` (strict, with a readable report).

    Accepted variants: keys ``features.*`` / ``embeddings.*`` optionally under a ``vggish.`` or
    ``model.`` prefix (whole-model checkpoints); the PCA post-processor (``pproc.*``) is ignored
    (Ref-AVS uses raw embeddings).

    Args:
        model: the network to fill.
        state_dict: tensors as saved by torchvggish / towhee.

    Raises:
        ModelLoadError: missing, unexpected or mis-shaped keys (listed).
    """
    sd: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("vggish.", "model.", "module."):
            key = key.removeprefix(prefix)
        if key.startswith(("pproc.", "_pca")):
            continue
        sd[key] = value
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatch = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatch:
        raise ModelLoadError(
            "VGGish weights do not fit the network: "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatch {mismatch[:8]}"
        )
    model.load_state_dict(sd)


def _dims_from_state_dict(state: Mapping[str, Tensor]) -> dict:
    """Network widths read from the weight shapes (the released ones for the released file)."""
    sd = {k.split("vggish.")[-1]: v for k, v in state.items()}
    try:
        channels = tuple(int(sd[f"features.{i}.weight"].shape[0]) for i in (0, 3, 6, 8, 11, 13))
        hidden = int(sd["embeddings.0.weight"].shape[0])
        embedding = int(sd["embeddings.4.weight"].shape[0])
    except KeyError as exc:
        raise ModelLoadError(f"not a VGGish state dict: key {exc.args[0]!r} missing") from None
    return {"channels": channels, "hidden": hidden, "embedding_size": embedding}


def load_vggish(path: str | Path, device: str | torch.device = "cpu", final_relu: bool = False) -> VGGish:
    """Build the released VGGish and load weights from a ``.pth`` file.

    Args:
        path: torchvggish ``vggish-10086976.pth`` or towhee ``vggish.pth`` (a state dict).
        device: torch device for the network.
        final_relu: see :class:`VGGish`.

    Returns:
        The network in eval mode; its widths are read from the weight shapes (the released
        64..512 / 4096 / 128 for the released file; smaller ones for test networks).

    Raises:
        ModelLoadError: the file is missing, unreadable, or does not fit (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"VGGish weights not found: {path} (expected torchvggish's vggish-10086976.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise ModelLoadError(f"cannot read VGGish weights {path}: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} does not hold a state dict (got {type(state).__name__})")
    try:
        model = VGGish(**_dims_from_state_dict(state), final_relu=final_relu)
        load_vggish_state_dict(model, state)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return model.to(device).eval()
