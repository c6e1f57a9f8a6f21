"""Builders of tiny random stand-ins for the published model and its sub-models (no tests here).

Used by ``test_official.py``, ``test_official_stream.py`` and ``test_refavs_bench.py``. Every file
is written at run time into a temporary directory with the same layout and formats as the real
ones (``models_dir`` of ``refavs_ros.models.official_loaders``, a released-style checkpoint).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import Mask2FormerConfig, SwinConfig

from refavs_ros.models.official import OfficialEEMC
from refavs_ros.models.official_loaders import MASK2FORMER_DIR, TEXT_DIR, VGGISH_FILE
from refavs_ros.models.vggish import VGGish

TINY_IMAGE = 64
TINY_TEXT_DIM = 32  # hidden size of conftest.make_tiny_text_model
TINY_VGGISH_CHANNELS = (4, 4, 8, 8, 8, 8)


def tiny_m2f_config(image_size: int = TINY_IMAGE) -> Mask2FormerConfig:
    """A Mask2Former config with the released structure at toy widths (Swin 4 stages)."""
    swin = SwinConfig(
        image_size=image_size, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        dim_feedforward=64, encoder_layers=2, decoder_layers=3, num_queries=5, num_attention_heads=2, num_labels=3,
    )


def tiny_model(seed: int = 0, text_dim: int = TINY_TEXT_DIM) -> OfficialEEMC:
    """A tiny random OfficialEEMC (fusion width 128 = 16 * 8, 8 heads as released)."""
    torch.manual_seed(seed)
    model = OfficialEEMC(
        tiny_m2f_config(), audio_dim=128, text_dim=text_dim, proj_hidden=48, num_heads=8, image_size=TINY_IMAGE
    )
    with torch.no_grad():  # make the released extras non-trivial
        tm = model.model_v.model.transformer_module.ref_avs_attn
        tm.beta_source_pool.fill_(0.3)
        tm.beta_source_attn.fill_(-0.2)
        tm.out_projection.weight.mul_(30.0)  # let the prompts move the queries visibly
    return model.eval()


def randomize_(model: torch.nn.Module, seed: int = 1) -> None:
    """Overwrite every floating tensor of the state dict with distinct random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=g) * 0.1)


def tiny_preprocessor_config(size: int = TINY_IMAGE) -> dict:
    """The hub ``preprocessor_config.json`` of mask2former-swin-base-ade-semantic at toy size."""
    return {
        "_max_size": 2048, "do_normalize": True, "do_rescale": True, "do_resize": True, "ignore_index": 255,
        "image_mean": [0.48500001430511475, 0.4560000002384186, 0.4059999883174896],
        "image_processor_type": "Mask2FormerImageProcessor",
        "image_std": [0.2290000021457672, 0.2239999920129776, 0.22499999403953552],
        "num_labels": 150, "reduce_labels": False, "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": size, "width": size}, "size_divisor": 32,
    }


def tiny_vggish(seed: int = 0) -> VGGish:
    """A VGGish with toy widths (input 96x64 and output 128 as released)."""
    torch.manual_seed(seed)
    return VGGish(channels=TINY_VGGISH_CHANNELS, hidden=16).eval()


def make_models_dir(root: Path, text_dir: Path) -> Path:
    """Write a ``models_dir`` with tiny sub-models in the documented layout."""
    m2f = root / MASK2FORMER_DIR
    m2f.mkdir(parents=True, exist_ok=True)
    tiny_m2f_config().save_pretrained(m2f)
    (m2f / "preprocessor_config.json").write_text(json.dumps(tiny_preprocessor_config()))
    shutil.copytree(text_dir, root / TEXT_DIR, dirs_exist_ok=True)
    (root / VGGISH_FILE).parent.mkdir(parents=True, exist_ok=True)
    sd = tiny_vggish().state_dict()
    sd["pproc._pca_matrix"] = torch.eye(128)  # torchvggish-style extras are ignored
    torch.save(sd, root / VGGISH_FILE)
    return root


def make_checkpoint(path: Path, model: OfficialEEMC) -> Path:
    """Save ``model`` as the released checkpoint would be: released key names, plain state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in model.released_state_dict().items()}, path)
    return path
