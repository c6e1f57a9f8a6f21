"""Shared fixtures: tiny random models created and saved by the tests themselves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.text import bundled_minilm_dir

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_tiny_text_model(directory: Path, hidden: int = 32) -> Path:
    """Save a random 2-layer BERT (MiniLM's tokenizer) with ``save_pretrained`` into ``directory``."""
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    src = bundled_minilm_dir()
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, directory / name)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """Directory of a tiny random BERT text encoder (hidden 32) loadable with from_pretrained."""
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_text"))


@pytest.fixture(scope="session")
def tiny_cfg(tiny_text_dir) -> EEMCConfig:
    """A small EEMC config (64 px input, d 32) using the tiny text encoder, with the decode-stage
    position encoding and the audio memory token of the shipped model."""
    return EEMCConfig(
        profile="test", image_size=64, backbone_channels=(8, 8, 16, 16), d_model=32, num_heads=2,
        num_layers=1, num_queries=4, ffn_dim=64, token_grid=4, text_dim=32, max_text_tokens=12,
        text_model=str(tiny_text_dir), decode_position=True, memory_token=True,
    )


@pytest.fixture(scope="session")
def tiny_weights(tiny_cfg, tmp_path_factory) -> Path:
    """A safetensors file of a random tiny EEMC (BatchNorm statistics randomised too)."""
    from refavs_ros.models.checkpoint import save_eemc
    from refavs_ros.models.eemc import EEMC

    torch.manual_seed(1)
    model = EEMC(tiny_cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return save_eemc(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors")
