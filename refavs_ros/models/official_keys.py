"""Released checkpoint key names (transformers 4.30.2) <-> local names (installed transformers).

The released ``ckpt_best_miou.pth`` (GeWu-Lab/Ref-AVS) is a plain state dict saved from the
:class:`refavs_ros.models.official.OfficialEEMC` module tree under transformers 4.30.2. Only the
Swin backbone's names changed since; this module is the explicit, table-driven map in both
directions (:func:`released_key_to_local`, :func:`local_key_to_released`) and the conversion
with its report (:func:`convert_released_state_dict`, :class:`LoadReport`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from refavs_ros.errors import ModelLoadError

# --------------------------------------------------------------------------------------------
# Released checkpoint key names (transformers 4.30.2) <-> local names (installed transformers)
# --------------------------------------------------------------------------------------------

_BACKBONE = "model_v.model.pixel_level_module.encoder."
# Inside one Swin block: (4.30.2 name, installed name). A trailing "." means "followed by
# weight/bias"; the others are whole names.
_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layernorm_before.", "layernorm_before."),
    ("layernorm_after.", "layernorm_after."),
)
_RELEASED_INDEX = "attention.self.relative_position_index"
_RELEASED_BLOCK = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_LOCAL_BLOCK = re.compile(r"^swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_OPTIONAL_LOCAL = (
    # SwinModel's final LayerNorm: created by the installed SwinBackbone, absent from the 4.30.2
    # SwinBackbone, and unused for the backbone's feature maps (they are taken before it).
    re.compile(r"^model_v\.model\.pixel_level_module\.encoder\.swin\.layernorm\.(weight|bias)$"),
    # Mask2Former loss class weights: training only.
    re.compile(r"^model_v\.criterion\.empty_weight$"),
)


def _rename_inner(inner: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    for old, new in pairs:
        if inner == old or (old.endswith(".") and inner.startswith(old)):
            return new + inner[len(old) :]
    return None


def _released_index_key(key: str) -> tuple[int, int] | None:
    """(stage, block) when ``key`` is a released Swin ``relative_position_index`` buffer."""
    if not key.startswith(_BACKBONE):
        return None
    m = _RELEASED_BLOCK.match(key[len(_BACKBONE) :])
    if m and m.group(3) == _RELEASED_INDEX:
        return int(m.group(1)), int(m.group(2))
    return None


def released_key_to_local(key: str) -> str | None:
    """Map one key of the released checkpoint (transformers 4.30.2 names) to this module's name.

    Args:
        key: a released key, e.g.
            ``model_v.model.pixel_level_module.encoder.encoder.layers.2.blocks.17.attention.self.query.weight``.

    Returns:
        The local key (e.g. ``...encoder.swin.encoder.layers.2.blocks.17.attention.q_proj.weight``);
        the key itself outside the Swin backbone (those names did not change); ``None`` for a
        Swin ``relative_position_index`` buffer (recomputed locally, compared on load); and the
        key prefixed with ``"?"`` for a backbone key that matches no known 4.30.2 name.
    """
    if not key.startswith(_BACKBONE):
        return key
    rest = key[len(_BACKBONE) :]
    if rest.startswith("embeddings.") or re.match(r"^encoder\.layers\.\d+\.downsample\.", rest):
        return f"{_BACKBONE}swin.{rest}"
    if rest.startswith("hidden_states_norms."):
        return key
    m = _RELEASED_BLOCK.match(rest)
    if m:
        if m.group(3) == _RELEASED_INDEX:
            return None
        inner = _rename_inner(m.group(3), _BLOCK_RENAMES)
        if inner is not None:
            return f"{_BACKBONE}swin.encoder.layers.{m.group(1)}.blocks.{m.group(2)}.{inner}"
    return "?" + key


def local_key_to_released(key: str) -> str:
    """Inverse of :func:`released_key_to_local` for every parameter/persistent buffer name.

    Args:
        key: a key of :meth:`OfficialEEMC.state_dict`.

    Returns:
        The name the released checkpoint uses for that tensor.

    Raises:
        KeyError: a backbone key with no 4.30.2 counterpart (e.g. ``swin.layernorm``).
    """
    if not key.startswith(_BACKBONE):
        return key
    rest = key[len(_BACKBONE) :]
    if rest.startswith("swin.embeddings.") or re.match(r"^swin\.encoder\.layers\.\d+\.downsample\.", rest):
        return _BACKBONE + rest[len("swin.") :]
    if rest.startswith("hidden_states_norms."):
        return key
    m = _LOCAL_BLOCK.match(rest)
    if m:
        inner = _rename_inner(m.group(3), tuple((new, old) for old, new in _BLOCK_RENAMES))
        if inner is not None:
            return f"{_BACKBONE}encoder.layers.{m.group(1)}.blocks.{m.group(2)}.{inner}"
    raise KeyError(f"{key} has no counterpart in the released (transformers 4.30.2) checkpoint")


@dataclass
class LoadReport:
    """What :func:`convert_released_state_dict` did.

    Attributes:
        renamed: number of keys whose name changed (Swin backbone).
        dropped_index_buffers: number of Swin ``relative_position_index`` buffers dropped after
            checking that they equal the recomputed index.
        missing: local keys the checkpoint does not provide (required ones make loading fail).
        optional_missing: local keys allowed to be absent (see ``_OPTIONAL_LOCAL``).
        unexpected: checkpoint keys with no local destination.
        shape_mismatch: ``(key, checkpoint shape, local shape)`` for every disagreement.
    """

    renamed: int = 0
    dropped_index_buffers: int = 0
    missing: list[str] = field(default_factory=list)
    optional_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing required is missing, left over or mis-shaped."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def format(self, limit: int = 20) -> str:
        """A readable multi-line summary (at most ``limit`` names per list)."""

        def names(items: list) -> str:
            shown = "\n    ".join(str(x) for x in items[:limit])
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"\n    {shown}{more}" if items else " none"

        return (
            f"renamed {self.renamed} Swin keys; dropped {self.dropped_index_buffers} relative_position_index buffers\n"
            f"  missing ({len(self.missing)}):{names(self.missing)}\n"
            f"  unexpected ({len(self.unexpected)}):{names(self.unexpected)}\n"
            f"  shape mismatch ({len(self.shape_mismatch)}):{names(self.shape_mismatch)}\n"
            f"  allowed missing ({len(self.optional_missing)}):{names(self.optional_missing)}"
        )


def strip_module_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove a ``module.`` prefix left by DataParallel, when every key has it."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def convert_released_state_dict(
    state_dict: Mapping[str, Tensor], reference: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], LoadReport]:
    """Rename a released state dict to local names and compare it with a reference state dict.

    Args:
        state_dict: the released checkpoint (4.30.2 names), tensors on any device.
        reference: :meth:`OfficialEEMC.reference_tensors` of the model to load into (names,
            shapes, and the recomputed ``relative_position_index`` buffers for the comparison).

    Returns:
        ``(converted, report)``: the tensors under local names (only keys present in
        ``reference``), and the :class:`LoadReport`.

    Raises:
        ModelLoadError: a ``relative_position_index`` buffer differs from the recomputed one
            (the checkpoint was made with another window size).
    """
    report = LoadReport()
    converted: dict[str, Tensor] = {}
    index_buffers = {k: v for k, v in _named_relative_index(reference)}
    for key, value in strip_module_prefix(state_dict).items():
        local = released_key_to_local(key)
        if local is None:
            expected = index_buffers.get(_released_index_key(key))
            if expected is None:
                report.unexpected.append(key)
            elif value.numel() != expected.numel() or not torch.equal(
                value.reshape(-1).to("cpu", torch.long), expected.reshape(-1).to("cpu", torch.long)
            ):
                raise ModelLoadError(
                    f"checkpoint buffer {key} differs from the Swin relative position index of a window of "
                    f"the configured size; the checkpoint was made for another Swin configuration"
                )
            else:
                report.dropped_index_buffers += 1
            continue
        if local.startswith("?") or local not in reference:
            report.unexpected.append(key)
            continue
        if local != key:
            report.renamed += 1
        if tuple(value.shape) != tuple(reference[local].shape):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(reference[local].shape)))
            continue
        converted[local] = value
    for key in reference:
        if key in converted or key.endswith("relative_position_index"):
            continue
        if any(p.match(key) for p in _OPTIONAL_LOCAL):
            report.optional_missing.append(key)
        else:
            report.missing.append(key)
    return converted, report


def _named_relative_index(reference: Mapping[str, Tensor]):
    """Yield ((stage, block), index) for the local relative_position_index buffers, if present."""
    pattern = re.compile(
        r"^model_v\.model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
        r"attention\.relative_position_bias\.relative_position_index$"
    )
    for key, value in reference.items():
        m = pattern.match(key)
        if m:
            yield (int(m.group(1)), int(m.group(2))), value




def released_index_buffers(reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The Swin ``relative_position_index`` buffers of ``reference`` under their released names,
    2-D (window area x window area, int64) as transformers 4.30.2 saved them."""
    out: dict[str, Tensor] = {}
    for (layer, block), index in _named_relative_index(reference):
        area = round(index.numel() ** 0.5)
        out[f"{_BACKBONE}encoder.layers.{layer}.blocks.{block}.attention.self.relative_position_index"] = (
            index.reshape(area, area)
        )
    return out
