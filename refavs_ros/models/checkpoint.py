"""Save and load EEMC weights as safetensors with the config in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from refavs_ros.errors import ConfigError, ModelLoadError
from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.eemc import EEMC

FORMAT = "refavs_ros.eemc.v1"
"""Value of the ``format`` metadata key written by :func:`save_eemc`."""


def save_eemc(model: EEMC, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` weights (float32) and its config to a safetensors file.

    Args:
        model: the model to save.
        path: output file (``.safetensors``); parent directories are created.
        extra: additional string metadata (e.g. training command, data seed).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict()), **(extra or {})}
    save_file(tensors, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a safetensors file (no tensors loaded).

    Raises:
        ModelLoadError: missing or unreadable file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"cannot read weights file {path}: {exc}") from exc


def load_eemc(path: str | Path, device: str = "cpu") -> tuple[EEMC, dict[str, str]]:
    """Build an EEMC from a file written by :func:`save_eemc`.

    Args:
        path: safetensors file.
        device: torch device for the weights.

    Returns:
        (model in eval mode, metadata dict).

    Raises:
        ModelLoadError: missing/corrupt file, wrong format, invalid config, or missing,
            unexpected or mis-shaped tensors (all listed).
    """
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not a refavs_ros EEMC file (format={meta.get('format')!r}, expected {FORMAT!r})")
    try:
        cfg = EEMCConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise ModelLoadError(f"{path} has an invalid model config: {exc}") from exc
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"cannot read tensors from {path}: {exc}") from exc
    model = EEMC(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise ModelLoadError(
            f"{path} does not match EEMC({cfg.profile}): missing {missing[:10]}, unexpected {unexpected[:10]}, "
            f"shape mismatch {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in shapes[:10]]}"
        )
    model.load_state_dict(state)
    return model.eval().to(torch.device(device)), meta
