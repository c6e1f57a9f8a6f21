"""The published Ref-AVS model (EEMC) as its released code computes it, on current transformers.

Source of every rule below: the public repository GeWu-Lab/Ref-AVS, files ``models/avs_model.py``
(fusion), ``models/local/mask2former/model_m2f.py`` (adapters, prompt injection),
``models/local/mask2former/refavs_transformer.py`` (prompt attention) and
``models/local/mask2former/image_processor_m2f.py`` (query weighting). See also
``shared/design/official-eemc.md``. The released code pins transformers 4.30.2; this module runs
the same computation on the installed transformers (5.x) by wrapping its Mask2Former modules:

* :class:`AdaptedDeformableAttention` replaces the self-attention of each of the 6 pixel-decoder
  layers: the released ``avs_adapt`` MLP (256 -> 64 -> 256, ReLU) is applied to the output of the
  deformable attention (after ``output_proj``, before the layer's residual add).
* :class:`RefAvsPromptAttention` (``ref_avs_attn``) is registered on the Mask2Former transformer
  module; :meth:`OfficialEEMC.decode` runs the transformer-module steps in order and lets the 100
  query features attend to the prompts once before the masked-attention decoder.
* The fusion (``audio_proj``, ``text_proj``, ``prompt_proj``, ``mha_A_T``, ``mha_V_T``,
  ``mha_mm``, cached memory with beta = 1, constant modality tokens) is :meth:`OfficialEEMC.fuse`.

The released code runs Mask2Former twice per call (the first pass only for the Swin features);
both passes share the same backbone and pixel-decoder output in eval, so here it is computed once
per frame (:meth:`OfficialEEMC.encode_frames`) and can be cached by the caller.

Checkpoint keys: the released ``ckpt_best_miou.pth`` is a plain state dict saved from this
module tree under transformers 4.30.2. Only the Swin backbone's names changed since; the explicit
map is :mod:`refavs_ros.models.official_keys`, and
:meth:`OfficialEEMC.from_state_dict` asserts that no key is missing or left over.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)

from refavs_ros.errors import InputError, ModelLoadError
from refavs_ros.models.official_keys import (
    convert_released_state_dict,
    local_key_to_released,
    released_index_buffers,
    strip_module_prefix,
)

IMAGE_SIZE = (384, 384)
"""(height, width) in pixels of the released network input (``preprocessor_config.json``)."""
MASK_SIZE = (256, 256)
"""(height, width) in pixels of the released output logits (``target_sizes=[[256, 256]]``)."""
TEXT_TOKENS = 25
"""Referring-expression length in tokens (DistilRoBERTa, padded/truncated, released)."""
CACHE_MEM_BETA = 1.0
"""Cached-memory sensitivity beta of the released code (``cache_mem_beta = 1``, not saved)."""


# --------------------------------------------------------------------------------------------
# Modules added to Mask2Former by the released code
# --------------------------------------------------------------------------------------------


class RefAvsPromptAttention(nn.Module):
    """``ref_avs_attn``: the Mask2Former queries attend once to the multimodal prompts.

    Released ``REF_AVS_Transformer`` (``refavs_transformer.py``)::

        out = q + sigmoid(beta_source_attn) * MHA(q, prompts, prompts)
                + sigmoid(beta_source_pool) * mean_over_prompts(prompts)

    with separate q/k/v/out linear maps (no norm, no dropout) and scaling ``head_dim ** -0.5``.

    Args:
        embed_dim: query and prompt width (Mask2Former ``hidden_dim``; 256 released).
        num_heads: attention heads (4 released).
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.query_embedding = nn.Linear(embed_dim, embed_dim)
        self.key_embedding = nn.Linear(embed_dim, embed_dim)
        self.value_embedding = nn.Linear(embed_dim, embed_dim)
        self.out_projection = nn.Linear(embed_dim, embed_dim)
        self.beta_source_pool = nn.Parameter(torch.ones(1))
        self.beta_source_attn = nn.Parameter(torch.ones(1))

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        """Prompt the queries.

        Args:
            target: query features, float (Q, N, D), sequence-first as in Mask2Former.
            source: prompts, float (N, S, D), batch-first.

        Returns:
            float (Q, N, D): the prompted query features.
        """
        h, d = self.num_heads, self.head_dim
        # reshapes with the traced sizes: the prompt count S stays dynamic in an exported graph (it
        # grows with the fusion window); Tensor.unflatten would bake it in
        q = _split_heads(self.query_embedding(target.transpose(0, 1)), h, d).transpose(1, 2)  # (N, h, Q, d)
        k = _split_heads(self.key_embedding(source), h, d).permute(0, 2, 3, 1)  # (N, h, d, S)
        v = _split_heads(self.value_embedding(source), h, d).transpose(1, 2)  # (N, h, S, d)
        weights = torch.softmax(torch.matmul(q, k) * self.scaling, dim=-1)  # (N, h, Q, S)
        attended = torch.matmul(weights, v).transpose(1, 2).flatten(-2)  # (N, Q, D)
        out = torch.sigmoid(self.beta_source_attn) * self.out_projection(attended)  # (N, Q, D)
        pool = torch.sigmoid(self.beta_source_pool) * source.mean(dim=1)  # (N, D)
        return target + out.transpose(0, 1) + pool.unsqueeze(0)


class AdaptedDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """Pixel-decoder deformable attention followed by the released ``avs_adapt`` adapter.

    Released ``Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttentionForRefAVS``: the output
    of ``output_proj`` goes through ``avs_adapt = Linear(D, D//4), ReLU, Linear(D//4, D)`` and
    REPLACES the attention output (the layer then adds its residual as usual).

    Args:
        embed_dim: pixel-decoder width (``feature_size``; 256 released).
        num_heads: deformable attention heads.
        n_levels: feature levels (3, hard-coded in Mask2Former).
        n_points: sampling points (4, hard-coded in Mask2Former).
    """

    def __init__(self, embed_dim: int, num_heads: int, n_levels: int = 3, n_points: int = 4) -> None:
        super().__init__(embed_dim, num_heads, n_levels, n_points)
        self.avs_adapt = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 4),
            nn.ReLU(),
            nn.Linear(embed_dim // 4, embed_dim),
        )

    def forward(self, *args, **kwargs):  # type: ignore[override]
        """Same arguments and outputs as the parent; the attention output is adapted."""
        output, attention_weights = super().forward(*args, **kwargs)
        return self.avs_adapt(output), attention_weights


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class FrameFeatures(NamedTuple):
    """Per-frame output of the Swin backbone and pixel decoder (computed once, cacheable).

    Attributes:
        swin_last: last Swin stage after its stage norm, float (N, C, h, w); C = 1024,
            h = w = 12 for Swin-B at 384x384 (the released ``encoder_last_hidden_state``).
        multi_scale: the 3 pixel-decoder feature maps, low to high resolution, each float
            (N, D, h_l, w_l); D = 256; 12x12, 24x24, 48x48 released.
        mask_features: per-pixel embeddings, float (N, D, H/4, W/4) (96x96 released).
    """

    swin_last: Tensor
    multi_scale: tuple[Tensor, Tensor, Tensor]
    mask_features: Tensor


def visual_tokens(swin_last: Tensor) -> Tensor:
    """Cut each frame's last Swin stage into the released visual tokens.

    The released code views the contiguous (frames, C, h, w) tensor as (B, C, h*w, T) and then
    (B, T*h*w, C): tokens are ``C`` CONSECUTIVE values of the channel-major memory (not spatial
    positions); the ``h*w`` tokens of frame f are the memory of frame f.

    Args:
        swin_last: float (T, C, h, w).

    Returns:
        float (T, h*w, C): token k of frame f = values ``[k*C, (k+1)*C)`` of ``swin_last[f]``
        flattened channel-major.
    """
    t, c, h, w = swin_last.shape
    return swin_last.contiguous().reshape(t, h * w, c)


def cached_memory(x: Tensor, beta: float | Tensor) -> Tensor:
    """Released ``process_with_cached_memory`` along the FIRST axis (tokens).

    ``out_l = (1 + beta) * x_l - mean(x_1 .. x_l)`` (paper Eq. 2-3 as coded). The running count
    ``l`` is a cumulative sum of ones, so a traced graph keeps the token axis dynamic.

    Args:
        x: float (L, ...) sequence-first.
        beta: sensitivity; 1 in the released code. A float or a float tensor broadcastable to
            ``x`` (the exported ``fuse`` graph takes it as a (1,) input).

    Returns:
        float, same shape as ``x``.
    """
    steps = torch.cumsum(torch.ones_like(x[..., :1]), dim=0)  # (L, ..., 1): 1, 2, ..., L
    return x * (beta + 1.0) - torch.cumsum(x, dim=0) / steps


def cached_memory_matmul(x: Tensor, beta: float | Tensor) -> Tensor:
    """:func:`cached_memory` with the running sum as a lower-triangular matrix product.

    Same values (float rounding aside) without a ``CumSum`` operator: TensorRT's ONNX parser
    runs ``CumSum`` as a loop with one iteration per row. Used for the short audio axis of the
    exported fusion (Na <= the window length).

    Args:
        x: float (L, B, C) sequence-first (L may be dynamic in a traced graph).
        beta: as :func:`cached_memory`.

    Returns:
        float (L, B, C).
    """
    i = torch.arange(x.shape[0], device=x.device)
    lower = (i[:, None] >= i[None, :]).to(x.dtype)  # (L, L): row l sums rows 0..l
    running = torch.matmul(lower, x.flatten(1)).view_as(x)
    steps = (i + 1).to(x.dtype).reshape(-1, 1, 1)
    return x * (beta + 1.0) - running / steps


def cached_memory_tail(x: Tensor, beta: float | Tensor, tail: int) -> Tensor:
    """The last ``tail`` rows of :func:`cached_memory`, without a ``CumSum`` operator.

    Row ``L - tail + r`` needs the running sum up to itself: the sum of all L rows minus the
    rows after it inside the tail (a ``tail x tail`` strictly upper-triangular product), so the
    cost is one reduction over L rows plus a small matrix product, and no intermediate tensor is
    ever empty (a window of one frame has no rows before its tail). Used for the newest frame's
    visual cues in the exported fusion (tail = 144 tokens, L = 144 * window).

    Args:
        x: float (L, B, C) sequence-first, L >= ``tail`` (L may be dynamic in a traced graph).
        beta: as :func:`cached_memory`.
        tail: rows wanted (static).

    Returns:
        float (tail, B, C) = ``cached_memory(x, beta)[-tail:]``.
    """
    last = x[-tail:]  # (tail, B, C)
    i = torch.arange(tail, device=x.device)
    upper = (i[None, :] > i[:, None]).to(x.dtype)  # [r, j] = 1 if j > r
    after = torch.matmul(upper, last.flatten(1)).view_as(last)  # rows after r inside the tail
    running = x.sum(dim=0, keepdim=True) - after
    length = torch.ones_like(x[:, :1, :1]).sum(dim=0, keepdim=True)  # (1, 1, 1) = L
    steps = length - (tail - 1 - i).to(x.dtype).reshape(-1, 1, 1)
    return last * (beta + 1.0) - running / steps


def self_attention(mha: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """``mha(x, x, x, need_weights=False)[0]`` written with shape-free reshapes (exportable).

    Same arithmetic as ``torch.nn.functional.multi_head_attention_forward`` without masks or
    dropout (packed in-projection, ``softmax(q k^T / sqrt(d)) v``, out-projection), float
    rounding aside. ``nn.MultiheadAttention`` bakes the sequence length of the tracing example
    into a TorchScript-exported ONNX graph; this version reshapes with the traced sizes of its
    input (``Tensor.unflatten`` would bake them too), so the sequence AND batch axes stay
    dynamic (the fusion window of :meth:`OfficialEEMC.fuse`).

    Args:
        mha: a ``batch_first=False`` ``nn.MultiheadAttention`` with a packed ``in_proj_weight``
            (query, key and value of the same width), as the released ``mha_A_T`` / ``mha_V_T``
            / ``mha_mm``.
        x: float (L, N, E) sequence-first.

    Returns:
        float (L, N, E).

    Raises:
        ValueError: ``mha`` has separate q/k/v projections or is batch-first.
    """
    if mha.in_proj_weight is None or mha.batch_first:
        raise ValueError("self_attention needs a sequence-first nn.MultiheadAttention with a packed in_proj_weight")
    e, h = mha.embed_dim, mha.num_heads
    d = e // h
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(y, h, d).permute(1, 2, 0, 3) for y in (q, k, v))  # (N, h, L, d)
    weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (d**-0.5), dim=-1)  # (N, h, L, L)
    out = torch.matmul(weights, v).permute(2, 0, 1, 3).flatten(-2)  # (L, N, E)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)


def _split_heads(x: Tensor, heads: int, head_dim: int) -> Tensor:
    """(A, B, heads * head_dim) -> (A, B, heads, head_dim) with A and B traced (not baked) when exported."""
    return x.reshape(x.shape[0], x.shape[1], heads, head_dim)


def _module_attention(mha: nn.MultiheadAttention, x: Tensor) -> Tensor:
    return mha(x, x, x, need_weights=False)[0]


class OfficialEEMC(nn.Module):
    """The released Ref-AVS model (Mask2Former Swin-B + EEMC fusion), inference only.

    Stages (each usable alone; the streaming engine caches stage 1 per frame):

    1. :meth:`encode_frames`: Swin backbone + pixel decoder (with ``avs_adapt``), per frame.
    2. :meth:`fuse`: audio/visual/text fusion over a clip or window -> per-frame prompts.
    3. :meth:`decode`: prompted Mask2Former decoder + soft query weighting -> mask logits.

    Args:
        mask2former_config: the Mask2Former config (``facebook/mask2former-swin-base-ade-semantic``
            for the released model; tiny configs for tests).
        audio_dim: audio embedding width (VGGish: 128).
        text_dim: text hidden width (DistilRoBERTa: 768).
        proj_hidden: hidden width of ``audio_proj``/``text_proj``/``prompt_proj`` (2048).
        num_heads: heads of ``mha_A_T``/``mha_V_T``/``mha_mm`` (8).
        prompt_heads: heads of ``ref_avs_attn`` (4).
        beta: cached-memory beta (1, released).
        image_size: (height, width) in pixels of the network input, i.e. of the image processor's
            output (384x384 released; the hub config's Swin ``image_size`` is not used for it).

    Attributes:
        image_size: as the argument, a tuple.
        dim_v: fusion width = channels of the last Swin stage (1024).
        prompt_dim: prompt width = Mask2Former ``hidden_dim`` (256).
        beta: cached-memory beta in use.

    The fusion width equals the last Swin stage's channels (1024 for Swin-B); the prompt width
    equals Mask2Former's ``hidden_dim`` (256).
    """

    def __init__(
        self,
        mask2former_config: Mask2FormerConfig,
        *,
        audio_dim: int = 128,
        text_dim: int = 768,
        proj_hidden: int = 2048,
        num_heads: int = 8,
        prompt_heads: int = 4,
        beta: float = CACHE_MEM_BETA,
        image_size: int | tuple[int, int] = IMAGE_SIZE,
    ) -> None:
        super().__init__()
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.model_v = Mask2FormerForUniversalSegmentation(mask2former_config)
        cfg = self.model_v.config
        plm = self.model_v.model.pixel_level_module
        for layer in plm.decoder.encoder.layers:
            old = layer.self_attn
            layer.self_attn = AdaptedDeformableAttention(old.d_model, old.n_heads, old.n_levels, old.n_points)
        self.model_v.model.transformer_module.ref_avs_attn = RefAvsPromptAttention(cfg.hidden_dim, prompt_heads)
        self.dim_v = int(plm.encoder.channels[-1])
        self.prompt_dim = int(cfg.hidden_dim)
        self.beta = float(beta)
        self.audio_proj = nn.Sequential(
            nn.Linear(audio_dim, proj_hidden), nn.ReLU(), nn.Linear(proj_hidden, self.dim_v)
        )
        self.text_proj = nn.Sequential(nn.Linear(text_dim, proj_hidden), nn.ReLU(), nn.Linear(proj_hidden, self.dim_v))
        self.prompt_proj = nn.Sequential(
            nn.Linear(self.dim_v, proj_hidden), nn.ReLU(), nn.Linear(proj_hidden, self.prompt_dim)
        )
        self.mha_A_T = nn.MultiheadAttention(self.dim_v, num_heads)
        self.mha_V_T = nn.MultiheadAttention(self.dim_v, num_heads)
        self.mha_mm = nn.MultiheadAttention(self.dim_v, num_heads)
        self.eval()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        mask2former_config: Mask2FormerConfig | str | Path,
        *,
        num_heads: int = 8,
        prompt_heads: int = 4,
        beta: float = CACHE_MEM_BETA,
        image_size: int | tuple[int, int] = IMAGE_SIZE,
    ) -> OfficialEEMC:
        """Build the model and load a state dict with the RELEASED key names.

        Fusion widths (audio, text, hidden) are read from the ``audio_proj``/``text_proj``
        shapes; the Swin/Mask2Former sizes come from ``mask2former_config``.

        Args:
            state_dict: the released ``ckpt_best_miou.pth`` content (``torch.load(...,
                map_location="cpu")``) or any state dict with the same names (transformers
                4.30.2 naming); a ``module.`` prefix on every key is accepted.
            mask2former_config: a ``Mask2FormerConfig`` or a directory/``config.json`` path.
            num_heads: heads of the three fusion attentions (8 released; not in the state dict).
            prompt_heads: heads of ``ref_avs_attn`` (4 released).
            beta: cached-memory beta (1 released; not in the state dict).
            image_size: network input size in pixels (the image processor's; 384 released).

        Returns:
            The model in eval mode on CPU, float32.

        Raises:
            ModelLoadError: required keys missing, keys left over, shapes that disagree (the
                message lists them), or a config that cannot be read.
        """
        config = as_mask2former_config(mask2former_config)
        sd = strip_module_prefix(state_dict)
        try:
            audio_dim = int(sd["audio_proj.0.weight"].shape[1])
            proj_hidden = int(sd["audio_proj.0.weight"].shape[0])
            text_dim = int(sd["text_proj.0.weight"].shape[1])
        except KeyError as exc:
            raise ModelLoadError(
                f"state dict lacks {exc.args[0]!r}: not a Ref-AVS (EEMC) checkpoint (first keys: {list(sd)[:5]})"
            ) from None
        model = cls(
            config,
            audio_dim=audio_dim,
            text_dim=text_dim,
            proj_hidden=proj_hidden,
            num_heads=num_heads,
            prompt_heads=prompt_heads,
            beta=beta,
            image_size=image_size,
        )
        converted, report = convert_released_state_dict(sd, model.reference_tensors())
        if not report.ok:
            raise ModelLoadError("the state dict does not fit the released EEMC model:\n" + report.format())
        model.load_state_dict(converted, strict=False)
        model.load_report = report
        return model.eval()

    def reference_tensors(self) -> dict[str, Tensor]:
        """``state_dict()`` plus the non-persistent Swin ``relative_position_index`` buffers.

        Returns:
            dict local name -> tensor; the reference for :func:`convert_released_state_dict`.
        """
        out = dict(self.state_dict())
        for name, buf in self.named_buffers():
            if name.endswith("relative_position_bias.relative_position_index"):
                out[name] = buf
        return out

    def released_state_dict(self) -> dict[str, Tensor]:
        """This model's weights under the released (4.30.2) names, as the checkpoint holds them.

        Includes the Swin ``relative_position_index`` buffers (2-D, as 4.30.2 saved them) and
        omits the keys 4.30.2 did not have (``swin.layernorm``).

        Returns:
            dict name -> tensor (shared storage with the model).
        """
        out: dict[str, Tensor] = {}
        for key, value in self.state_dict().items():
            if key.endswith("relative_position_bias.relative_position_index"):
                continue
            try:
                out[local_key_to_released(key)] = value
            except KeyError:
                continue
        out.update(released_index_buffers(self.reference_tensors()))
        return out

    # ---- stage 1: per frame ------------------------------------------------------------------

    def encode_frames(self, pixel_values: Tensor) -> FrameFeatures:
        """Swin backbone + pixel decoder (with adapters) for a batch of frames.

        Args:
            pixel_values: float32 (N, 3, H, W), ImageNet-normalised RGB at the network size
                (384x384 released), on the model's device.

        Returns:
            :class:`FrameFeatures` for the N frames.
        """
        if not torch.jit.is_tracing() and (pixel_values.dim() != 4 or pixel_values.shape[1] != 3):
            raise InputError(f"pixel_values must be (N, 3, H, W), got {tuple(pixel_values.shape)}")
        out = self.model_v.model.pixel_level_module(pixel_values=pixel_values)
        ms = tuple(out.decoder_hidden_states)
        return FrameFeatures(out.encoder_last_hidden_state, (ms[0], ms[1], ms[2]), out.decoder_last_hidden_state)

    # ---- stage 2: fusion ---------------------------------------------------------------------

    def fuse(
        self,
        vis_tokens: Tensor,
        audio_embeddings: Tensor,
        text_hidden: Tensor,
        last_frames: int | None = None,
        *,
        beta: float | Tensor | None = None,
        traceable: bool = False,
    ) -> Tensor:
        """The released audio-visual-text fusion -> prompts for each frame.

        Released ``REFAVS_Model_Base.forward`` (``models/avs_model.py``):

        * ``A = audio_proj(audio)`` (B, Na, C); ``T = text_proj(text)`` (B, L, C);
          ``V`` = visual tokens of all frames, frame-major (B, T*S, C);
        * ``mha_A_T`` self-attention over [A; T], ``mha_V_T`` over [V; T] (sequence-first,
          per clip; V-T crosses time);
        * cues_A / cues_V = cached memory (beta) along the audio / visual token axis;
          cues_T = (T + T-part of A-T + T-part of V-T) / 3;
        * per frame f: [cues_A; 0-token; cues_V of f; 1-token; cues_T] (Na + S + L + 2 tokens)
          through ``mha_mm`` WITHOUT permuting: attention runs across the batch (clip) axis,
          so at B = 1 it is a per-token linear map;
        * ``prompt_proj`` -> prompts.

        Every slice counts from the text end (the text length L is fixed), so with
        ``traceable=True`` an exported graph keeps the window length T (and Na) dynamic.

        Args:
            vis_tokens: float (B, T, S, C) from :func:`visual_tokens` (S = 144, C = 1024).
            audio_embeddings: float (B, Na, audio_dim) VGGish embeddings (Na = 10 for 10 s).
            text_hidden: float (B, L, text_dim) DistilRoBERTa hidden states (L = 25).
            last_frames: compute prompts only for the last ``last_frames`` frames (streaming:
                1); None = all frames. The fusion itself always spans the whole window.
            beta: cached-memory beta; None = :attr:`beta`. A (1,) tensor is accepted (the
                exported graph's input).
            traceable: the form for export (same values, float rounding aside): the three
                attentions through :func:`self_attention` instead of ``nn.MultiheadAttention``
                and, with ``last_frames``, the cached memory of only the rows needed through
                :func:`cached_memory_matmul` / :func:`cached_memory_tail` (no ``CumSum``), so a
                traced graph keeps the window length dynamic and TensorRT runs no loop.

        Returns:
            float (B * T', Na + S + L + 2, prompt_dim), clip-major (index b * T' + f), with
            T' = T or ``last_frames``.
        """
        b, t, s, c = vis_tokens.shape
        tp = t if last_frames is None else last_frames
        if last_frames is not None and not torch.jit.is_tracing() and not 1 <= last_frames <= t:
            raise InputError(f"last_frames must be in 1..{t} (frames in the window), got {last_frames}")
        attend = self_attention if traceable else _module_attention
        beta = self.beta if beta is None else beta
        feat_a = self.audio_proj(audio_embeddings)  # (B, Na, C)
        feat_t = self.text_proj(text_hidden)  # (B, L, C)
        n_t = text_hidden.shape[1]  # fixed (25 released): every slice below counts from the text end
        feat_v = vis_tokens.reshape(b, -1, c)  # (B, T*S, C)
        a_t = torch.cat([feat_a, feat_t], dim=1).transpose(0, 1)  # (Na+L, B, C)
        v_t = torch.cat([feat_v, feat_t], dim=1).transpose(0, 1)  # (T*S+L, B, C)
        a_t = attend(self.mha_A_T, a_t)
        v_t = attend(self.mha_V_T, v_t)
        cues_t = (feat_t + a_t[-n_t:].transpose(0, 1) + v_t[-n_t:].transpose(0, 1)) / 3.0  # (B, L, C)
        if traceable and last_frames is not None:  # loop-free forms, only the rows needed
            cues_a = cached_memory_matmul(a_t[:-n_t], beta).transpose(0, 1)  # (B, Na, C)
            cues_v = cached_memory_tail(v_t[:-n_t], beta, tp * s).transpose(0, 1).reshape(b, tp, s, c)
        else:
            cues_a = cached_memory(a_t[:-n_t], beta).transpose(0, 1)  # (B, Na, C)
            cues_v = cached_memory(v_t[:-n_t], beta).transpose(0, 1).reshape(b, -1, s, c)  # (B, T, S, C)
            cues_v = cues_v[:, t - tp :]
        tag_a = feat_a.new_zeros(b, tp, 1, c)  # [aud] modality token: constant 0
        tag_v = feat_a.new_ones(b, tp, 1, c)  # [vis] modality token: constant 1
        mm = torch.cat(
            [
                cues_a.unsqueeze(1).expand(b, tp, -1, c),
                tag_a,
                cues_v,
                tag_v,
                cues_t.unsqueeze(1).expand(b, tp, -1, c),
            ],
            dim=2,
        )  # (B, T', Ns, C)
        # mha_mm on (B, T'*Ns, C) with batch_first=False: sequence axis = B (clips), as released;
        # putting the frames side by side on the "batch" axis equals the released per-frame loop.
        mm = attend(self.mha_mm, mm.reshape(b, -1, c))
        mm = mm.reshape(b * tp, -1, c)
        return self.prompt_proj(mm)  # (B*T', Ns, P)

    # ---- stage 3: decode ---------------------------------------------------------------------

    def decode_queries(
        self, multi_scale: tuple[Tensor, Tensor, Tensor], mask_features: Tensor, prompts: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Prompted masked-attention decoder (released ``Mask2FormerTransformerModuleForRefAVS``).

        Args:
            multi_scale: :attr:`FrameFeatures.multi_scale` of N frames.
            mask_features: :attr:`FrameFeatures.mask_features`, float (N, D, H/4, W/4).
            prompts: float (N, Ns, D) from :meth:`fuse`.

        Returns:
            ``(class_logits, mask_logits)``: float (N, Q, num_labels + 1) from the frozen class
            head on the last decoder layer, and float (N, Q, H/4, W/4) per-query mask logits.
        """
        tm = self.model_v.model.transformer_module
        features, positions, sizes = [], [], []
        for i in range(tm.num_feature_levels):
            x = multi_scale[i]
            sizes.append(x.shape[-2:])
            pos = tm.position_embedder(x.shape, x.device, x.dtype, None).flatten(2)
            positions.append(pos.permute(2, 0, 1))  # (h*w, N, D)
            feat = tm.input_projections[i](x).flatten(2) + tm.level_embed.weight[i][None, :, None]
            features.append(feat.permute(2, 0, 1))  # (h*w, N, D)
        n = features[0].shape[1]
        query_pos = tm.queries_embedder.weight.unsqueeze(1).repeat(1, n, 1)  # (Q, N, D)
        queries = tm.queries_features.weight.unsqueeze(1).repeat(1, n, 1)
        queries = tm.ref_avs_attn(target=queries, source=prompts)
        out = tm.decoder(
            inputs_embeds=queries,
            multi_stage_positional_embeddings=positions,
            pixel_embeddings=mask_features,
            encoder_hidden_states=features,
            query_position_embeddings=query_pos,
            feature_size_list=sizes,
            output_hidden_states=False,
            output_attentions=False,
            return_dict=True,
        )
        class_logits = self.model_v.class_predictor(out.intermediate_hidden_states[-1].transpose(0, 1))
        return class_logits, out.masks_queries_logits[-1]

    def decode(self, features: FrameFeatures, prompts: Tensor, output_size: tuple[int, int] = MASK_SIZE) -> Tensor:
        """Decode frames into one mask-logit map each.

        Args:
            features: :class:`FrameFeatures` of N frames.
            prompts: float (N, Ns, D) from :meth:`fuse` (same frame order).
            output_size: (height, width) in pixels of the returned logits; (256, 256) released.

        Returns:
            float (N, H_out, W_out) mask logits (sigmoid > 0.4 for J, > 0.5 for S).
        """
        class_logits, mask_logits = self.decode_queries(features.multi_scale, features.mask_features, prompts)
        return self.query_weighted_logits(class_logits, mask_logits, output_size)

    def query_weighted_logits(
        self, class_logits: Tensor, mask_logits: Tensor, output_size: tuple[int, int] = MASK_SIZE
    ) -> Tensor:
        """Released ``post_process_semantic_segmentation`` with ``AVS_BINARY = True``.

        Weight of query q = softmax([logit of class 0, logit of the null class])[0]; the map is
        the weighted sum of the per-query mask LOGITS after bilinear upsampling to the network
        input size (x4: 96 -> 384 released), then bilinearly resized to ``output_size``.

        Args:
            class_logits: float (N, Q, K + 1).
            mask_logits: float (N, Q, h, w).
            output_size: (height, width) in pixels; the source image size gives logits "at
                source size".

        Returns:
            float (N, H_out, W_out).
        """
        # to the network input size: mask logits are at 1/common_stride (96 -> 384 released)
        stride = float(self.model_v.config.common_stride)
        masks = F.interpolate(mask_logits, scale_factor=stride, mode="bilinear", align_corners=False)
        pair = torch.stack([class_logits[..., 0], class_logits[..., -1]], dim=-1)  # (N, Q, 2)
        weights = pair.softmax(dim=-1)[..., 0]  # (N, Q)
        seg = torch.einsum("nq,nqhw->nhw", weights, masks).unsqueeze(1)  # (N, 1, H_in, W_in)
        if tuple(output_size) != tuple(self.image_size):  # seg is at the input size (static: no trace branch)
            seg = F.interpolate(seg, size=tuple(output_size), mode="bilinear", align_corners=False)
        return seg[:, 0]

    # ---- whole clips -------------------------------------------------------------------------

    def forward_batch(
        self,
        pixel_values: Tensor,
        audio_embeddings: Tensor,
        text_hidden: Tensor,
        output_size: tuple[int, int] = MASK_SIZE,
    ) -> Tensor:
        """Released computation over B clips at once (``mha_mm`` attends across the B clips).

        The benchmark evaluates test batches of 4 clips; pass them together to reproduce it.

        Args:
            pixel_values: float32 (B, T, 3, H, W) normalised frames.
            audio_embeddings: float32 (B, Na, 128).
            text_hidden: float32 (B, 25, 768).
            output_size: (height, width) of the returned logits.

        Returns:
            float32 (B, T, H_out, W_out) mask logits.
        """
        if pixel_values.dim() != 5:
            raise InputError(f"pixel_values must be (B, T, 3, H, W), got {tuple(pixel_values.shape)}")
        b, t = pixel_values.shape[:2]
        if audio_embeddings.dim() != 3 or audio_embeddings.shape[0] != b:
            raise InputError(f"audio_embeddings must be (B={b}, Na, D), got {tuple(audio_embeddings.shape)}")
        if text_hidden.dim() != 3 or text_hidden.shape[0] != b:
            raise InputError(f"text_hidden must be (B={b}, L, D), got {tuple(text_hidden.shape)}")
        feats = self.encode_frames(pixel_values.reshape(b * t, *pixel_values.shape[2:]))
        tokens = visual_tokens(feats.swin_last)  # (B*T, S, C)
        prompts = self.fuse(tokens.reshape(b, t, *tokens.shape[1:]), audio_embeddings, text_hidden)
        return self.decode(feats, prompts, output_size).reshape(b, t, *output_size)

    def forward_clip(
        self,
        pixel_values: Tensor,
        audio_embeddings: Tensor,
        text_hidden: Tensor,
        output_size: tuple[int, int] = MASK_SIZE,
    ) -> Tensor:
        """One clip at batch 1 (deployment): no ground truth input, any device.

        Args:
            pixel_values: float32 (T, 3, 384, 384), ImageNet-normalised (see
                ``official_loaders.load_image_processor``).
            audio_embeddings: float32 (Na, 128) VGGish embeddings, one per 0.96 s.
            text_hidden: float32 (25, 768) DistilRoBERTa ``last_hidden_state``.
            output_size: (height, width) of the returned logits; (256, 256) released.

        Returns:
            float32 (T, H_out, W_out) mask logits.

        Raises:
            InputError: wrong ranks.
        """
        if pixel_values.dim() != 4 or audio_embeddings.dim() != 2 or text_hidden.dim() != 2:
            raise InputError(
                "forward_clip expects pixel_values (T, 3, H, W), audio_embeddings (Na, D), text_hidden (L, D); got "
                f"{tuple(pixel_values.shape)}, {tuple(audio_embeddings.shape)}, {tuple(text_hidden.shape)}"
            )
        return self.forward_batch(pixel_values[None], audio_embeddings[None], text_hidden[None], output_size)[0]

    def forward(self, pixel_values: Tensor, audio_embeddings: Tensor, text_hidden: Tensor) -> Tensor:
        """Alias of :meth:`forward_clip` (256x256 logits)."""
        return self.forward_clip(pixel_values, audio_embeddings, text_hidden)


def as_mask2former_config(config: Mask2FormerConfig | str | Path) -> Mask2FormerConfig:
    """Accept a config object, a directory holding ``config.json``, or the json file itself."""
    if isinstance(config, Mask2FormerConfig):
        return config
    path = Path(config)
    if path.is_file():
        path = path.parent
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"Mask2Former config not found: {path / 'config.json'}")
    try:
        return Mask2FormerConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the Mask2Former config in {path}: {exc}") from exc
