"""EEMC (Expression Enhancing with Multimodal Cues), paper Sec. 4, as a causal streaming model.

Pipeline per frame tau (shapes for one frame, N = batch * time):

    image (N, 3, S, S) --VisualEncoder--> visual tokens F_V' (N, G*G, d) + pixel features (N, d, S/4, S/4)
    log-mel (N, 96, 64) --AudioEncoder--> F_A (N, d_A) --audio_proj--> F_A' (N, 1, d)
    text hidden (N, L, d_T) --text_proj--> F_T' (N, L, d)

    Temporal bi-modal transformer (Sec. 4.3, Eq. 1), per frame:
        [F_A'; F_T'] -> self-attention -> F^_A (N, 1, d), F^_TA (N, L, d)
        [F_V'; F_T'] -> self-attention -> F^_V (N, G*G, d), F^_TV (N, L, d)
    Cached memory (Eq. 2-3): Q_M = (1 + beta) F^_M(tau) - beta C_M(tau),
        C_M(tau) = mean of F^_M over the earlier memory entries (0 when there is none),
        over a sliding window of the last W entries.
    Q_T = mean(F_T', F^_TA, F^_TV)
    Decode-stage position (cfg.decode_position, our addition): Q_V += fixed 2-D sinusoidal
        encoding of each token's grid cell.
    Modality encoding + multimodal integration transformer (Sec. 4.4, Eq. 4):
        Q_m = MF([Q_A; (beta C_A); [aud]; Q_V; [vis]; Q_T])   (N, 1 (+1) + 1 + G*G + 1 + L, d)
        (the memory token beta C_A only with cfg.memory_token, our addition)
    CATF (Eq. 5): mask queries q (N_q, d) cross-attend Q_m  -> q_Q
    Cue-prompted pixel embedding (our addition): the G*G integrated visual cues of Q_m, upsampled
        to S/4 and projected, are added to the pixel features, giving the decoder a direct
        spatial path from the expression to the pixels; a linear head on them predicts a coarse
        G x G target map whose upsampled logits are added to the mask logits.
    Mask decoder: q_Q attends the pixel features; per-query masks = MLP(q_Q) . pixel embedding;
        one referred mask = sum_q softmax(score_q) mask_q  (N, S/4, S/4)  [logits]
    Null reference: presence logit from the score-weighted query  (N,)

The released code (GeWu-Lab/Ref-AVS) differs from this (see ``refavs_ros.models.official``);
this module follows the paper and is causal: frame tau only sees frames <= tau.

The model is split into stages with named tensors so that backends (PyTorch, ONNX Runtime,
TensorRT) can run each one: :meth:`EEMC.encode_visual`, :meth:`EEMC.encode_audio`,
:meth:`EEMC.fuse` and :meth:`EEMC.decode`. :meth:`EEMC.forward` is the batch (clip) path used
for training and as the reference for the streaming path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refavs_ros.models.config import EEMCConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNAct(nn.Sequential):
    """3x3 (or k x k) convolution + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DownBlock(nn.Module):
    """Stride-2 conv followed by a residual 3x3 conv: (N, cin, H, W) -> (N, cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = ConvBNAct(cin, cout, stride=2)
        self.conv = ConvBNAct(cout, cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return x + self.conv(x)


class VisualEncoder(nn.Module):
    """Convolutional pyramid + FPN, the visual representation F_V of paper Sec. 4.2.

    Input: pixel values float32 (N, 3, S, S) in [0, 1] (RGB; ImageNet normalisation is applied
    inside). Output: visual tokens (N, G*G, d) from the stride-16 map average-pooled to G x G,
    with a learned 2-D position embedding; pixel features (N, d, S/4, S/4) from an FPN over
    strides 4-16 plus a projection of normalised (x, y) coordinates (so spatial expressions such
    as "on the left" can be resolved by the mask decoder).
    """

    def __init__(self, cfg: EEMCConfig) -> None:
        super().__init__()
        c1, c2, c3, c4 = cfg.backbone_channels
        d = cfg.d_model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stage1 = DownBlock(3, c1)  # stride 2
        self.stage2 = DownBlock(c1, c2)  # stride 4
        self.stage3 = DownBlock(c2, c3)  # stride 8
        self.stage4 = DownBlock(c3, c4)  # stride 16
        self.lat4 = nn.Conv2d(c4, d, 1)
        self.lat3 = nn.Conv2d(c3, d, 1)
        self.lat2 = nn.Conv2d(c2, d, 1)
        self.out = ConvBNAct(d, d)
        self.coord_proj = nn.Conv2d(2, d, 1)
        side = cfg.image_size // 4
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)  # (1, 2, S/4, S/4)
        self.token_grid = cfg.token_grid
        self.token_pos = nn.Parameter(torch.zeros(1, cfg.num_visual_tokens, d))
        nn.init.trunc_normal_(self.token_pos, std=0.02)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        x = (pixel_values - self.mean) / self.std
        c2 = self.stage2(self.stage1(x))  # (N, c2, S/4, S/4)
        c3 = self.stage3(c2)  # (N, c3, S/8, S/8)
        c4 = self.stage4(c3)  # (N, c4, S/16, S/16)
        p4 = self.lat4(c4)
        p3 = self.lat3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        p2 = self.lat2(c2) + F.interpolate(p3, scale_factor=2.0, mode="nearest")
        pixel = self.out(p2) + self.coord_proj(self.coords)  # (N, d, S/4, S/4)
        g = self.token_grid
        pooled = p4 if p4.shape[-1] == g else F.adaptive_avg_pool2d(p4, g)  # (N, d, G, G)
        tokens = pooled.flatten(2).transpose(1, 2) + self.token_pos  # (N, G*G, d)
        return tokens, pixel


class AudioEncoder(nn.Module):
    """Small VGGish-like CNN: log-mel example (N, 96, 64) -> embedding (N, d_A).

    Three stride-2 conv blocks give (N, 64, 12, 8); time is averaged, frequency is kept (pitch
    matters: it is flattened), then a linear layer maps to d_A (128, like VGGish).
    """

    def __init__(self, cfg: EEMCConfig) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvBNAct(1, 16, 2), ConvBNAct(16, 32, 2), ConvBNAct(32, 64, 2))
        self.fc = nn.Linear(64 * 8, cfg.audio_dim)

    def forward(self, log_mel: Tensor) -> Tensor:
        x = self.convs(log_mel[:, None])  # (N, 64, 12, 8): channels, time, frequency
        return self.fc(x.mean(dim=2).flatten(1))  # (N, d_A)


class Attention(nn.Module):
    """Multi-head attention with plain matmuls (exports to ONNX/TensorRT without custom ops).

    q (N, Lq, d), kv (N, Lk, d), key_bias (N, 1, 1, Lk) additive (0 = keep, -1e4 = ignore) or
    None -> (N, Lq, d).
    """

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, q: Tensor, kv: Tensor, key_bias: Tensor | None = None) -> Tensor:
        n, lq, d = q.shape
        h = self.heads
        qh = self.q(q).view(n, lq, h, d // h).transpose(1, 2)  # (N, h, Lq, d/h)
        kh = self.k(kv).view(n, -1, h, d // h).transpose(1, 2)  # (N, h, Lk, d/h)
        vh = self.v(kv).view(n, -1, h, d // h).transpose(1, 2)
        att = qh @ kh.transpose(-1, -2) / math.sqrt(d // h)  # (N, h, Lq, Lk)
        if key_bias is not None:
            att = att + key_bias
        out = att.softmax(dim=-1) @ vh  # (N, h, Lq, d/h)
        return self.o(out.transpose(1, 2).reshape(n, lq, d))


class FeedForward(nn.Sequential):
    """Position-wise MLP d -> ffn -> d with GELU."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))


class SelfAttentionLayer(nn.Module):
    """Pre-norm transformer encoder layer: MF(.) of paper Eq. 1 and Eq. 4."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn)

    def forward(self, x: Tensor, key_bias: Tensor | None = None) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, key_bias)
        return x + self.ffn(self.norm2(x))


class CrossAttentionLayer(nn.Module):
    """Pre-norm decoder layer: cross-attention to a source, self-attention, FFN (CATF, Eq. 5)."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm_c = nn.LayerNorm(d)
        self.norm_s = nn.LayerNorm(d)
        self.cross = Attention(d, heads)
        self.norm1 = nn.LayerNorm(d)
        self.self_attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn)

    def forward(self, q: Tensor, src: Tensor, key_bias: Tensor | None = None) -> Tensor:
        q = q + self.cross(self.norm_c(q), self.norm_s(src), key_bias)
        y = self.norm1(q)
        q = q + self.self_attn(y, y)
        return q + self.ffn(self.norm2(q))


def _key_bias(valid: Tensor, prefix: int) -> Tensor:
    """Additive attention bias over [prefix always-valid tokens ; text tokens].

    valid: text mask (N, L) float or bool, 1 = real token. Returns (N, 1, 1, prefix + L) in the
    mask's floating dtype (float32 for a bool mask), so float16 graphs stay float16.
    """
    dtype = valid.dtype if valid.is_floating_point() else torch.float32
    keep = torch.cat([torch.ones_like(valid[:, :1]).expand(-1, prefix), valid], dim=1).to(dtype)
    return ((1.0 - keep) * -1e4)[:, None, None, :]


def sinusoidal_grid(grid: int, d: int) -> Tensor:
    """Fixed 2-D sinusoidal position encoding of a ``grid`` x ``grid`` token grid (row-major).

    Half of the ``d`` channels encode x, half y (DETR-style): for each axis, sin/cos of the cell
    centre in [0, 1] times ``2 pi * 2^k``, k = 0 .. d/4 - 1 (frequencies 1 .. 2^(d/4-1) cycles
    over the frame, capped at grid / 2 so no two cells alias).

    Returns:
        float32 (1, grid * grid, d), values in [-1, 1].

    Raises:
        ValueError: ``d`` not divisible by 4.
    """
    if d % 4:
        raise ValueError(f"sinusoidal_grid needs d divisible by 4, got {d}")
    n = d // 4
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid  # (G,)
    freqs = torch.clamp(2.0 ** torch.arange(n, dtype=torch.float64), max=grid / 2.0) * math.pi  # (n,)
    phase = torch.linspace(0.0, math.pi / 2, n, dtype=torch.float64)  # decorrelate the capped ones
    ang = centres[:, None] * freqs[None, :] * 2.0 + phase[None, :]  # (G, n)
    axis = torch.cat([ang.sin(), ang.cos()], dim=1)  # (G, d/2)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    enc = torch.cat([axis[xs.flatten()], axis[ys.flatten()]], dim=1)  # (G*G, d)
    return enc[None].to(torch.float32)


class EEMC(nn.Module):
    """The EEMC model of paper Sec. 4 (see module docstring for the dataflow).

    Args:
        cfg: sizes and switches; see :class:`EEMCConfig`. The text encoder is not part of this
            module (it is frozen and run once per command); EEMC consumes its hidden states.
    """

    def __init__(self, cfg: EEMCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, ffn = cfg.d_model, cfg.num_heads, cfg.ffn_dim
        self.visual = VisualEncoder(cfg)
        self.audio = AudioEncoder(cfg)
        self.audio_proj = nn.Sequential(nn.Linear(cfg.audio_dim, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.at_fusion = nn.ModuleList(SelfAttentionLayer(d, h, ffn) for _ in range(cfg.num_layers))
        self.vt_fusion = nn.ModuleList(SelfAttentionLayer(d, h, ffn) for _ in range(cfg.num_layers))
        self.aud_token = nn.Parameter(torch.zeros(1, 1, d))
        self.vis_token = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.trunc_normal_(self.aud_token, std=0.02)
        nn.init.trunc_normal_(self.vis_token, std=0.02)
        self.integration = nn.ModuleList(SelfAttentionLayer(d, h, ffn) for _ in range(cfg.num_layers))
        self.queries = nn.Parameter(torch.zeros(1, cfg.num_queries, d))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.catf = nn.ModuleList(CrossAttentionLayer(d, h, ffn) for _ in range(cfg.num_layers))
        self.cue_to_pixel = nn.Conv2d(d, d, 1)
        self.coarse_head = nn.Linear(d, 1)
        self.pixel_attn = CrossAttentionLayer(d, h, ffn)
        self.mask_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.query_score = nn.Linear(d, 1)
        self.presence = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))
        if cfg.decode_position:
            self.register_buffer("cue_position", sinusoidal_grid(cfg.token_grid, d), persistent=False)

    # ----------------------------------------------------------------- stages (streaming units)
    def encode_visual(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame stage: (N, 3, S, S) in [0, 1] -> tokens (N, G*G, d), pixels (N, d, S/4, S/4)."""
        return self.visual(pixel_values)

    def encode_audio(self, log_mel: Tensor) -> Tensor:
        """Per-audio-example stage: log-mel (N, 96, 64) -> audio embedding F_A (N, d_A)."""
        return self.audio(log_mel)

    def fuse(
        self, visual_tokens: Tensor, audio_embedding: Tensor, text_hidden: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Temporal bi-modal transformer of one frame (paper Eq. 1 and Q_T of Sec. 4.3).

        Args:
            visual_tokens: F_V' (N, G*G, d).
            audio_embedding: F_A (N, d_A).
            text_hidden: text-encoder hidden states (N, L, d_T).
            text_mask: (N, L) float, 1 for real tokens, 0 for padding.

        Returns:
            fused_audio F^_A (N, 1, d), fused_visual F^_V (N, G*G, d), and the text cue
            Q_T = mean(F_T', F^_TA, F^_TV) (N, L, d). F^_A and F^_V feed the cached memory.
        """
        t = self.text_proj(text_hidden)  # F_T' (N, L, d)
        fa, fta = self.fuse_audio_text(audio_embedding, t, text_mask)
        fv, ftv = self.fuse_visual_text(visual_tokens, t, text_mask)
        return fa, fv, (t + fta + ftv) / 3.0

    def fuse_audio_text(self, audio_embedding: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """A-T half of Eq. 1: audio F_A (N, d_A), projected text F_T' (N, L, d), mask (N, L) ->
        F^_A (N, 1, d), F^_TA (N, L, d)."""
        a = self.audio_proj(audio_embedding)[:, None]  # F_A' (N, 1, d)
        x = torch.cat([a, text], dim=1)  # (N, 1 + L, d)
        bias = _key_bias(text_mask, 1)
        for layer in self.at_fusion:
            x = layer(x, bias)
        return x[:, :1], x[:, 1:]

    def fuse_visual_text(self, visual_tokens: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """V-T half of Eq. 1: F_V' (N, G*G, d), F_T' (N, L, d), mask (N, L) -> F^_V (N, G*G, d),
        F^_TV (N, L, d)."""
        nv = visual_tokens.shape[1]
        y = torch.cat([visual_tokens, text], dim=1)  # (N, G*G + L, d)
        bias = _key_bias(text_mask, nv)
        for layer in self.vt_fusion:
            y = layer(y, bias)
        return y[:, :nv], y[:, nv:]

    def decode(
        self,
        fused_audio: Tensor,
        fused_visual: Tensor,
        text_cue: Tensor,
        text_mask: Tensor,
        memory_audio: Tensor,
        memory_visual: Tensor,
        beta: Tensor,
        pixel_features: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Cached memory (Eq. 2), modality encoding, integration (Eq. 4), CATF (Eq. 5), masks.

        The final logits are the query masks plus a coarse G x G target map predicted from the
        integrated visual cues, upsampled (see :meth:`decode_with_coarse`).

        Args:
            fused_audio: F^_A(tau) (N, 1, d).
            fused_visual: F^_V(tau) (N, G*G, d).
            text_cue: Q_T (N, L, d).
            text_mask: (N, L) float, 1 = real token.
            memory_audio: C_A(tau) (N, 1, d), mean of earlier F^_A (zeros when none, Eq. 3).
            memory_visual: C_V(tau) (N, G*G, d).
            beta: (1,) float, Eq. 2 sensitivity; 0 turns the cached memory off.
            pixel_features: (N, d, S/4, S/4).

        Returns:
            mask logits (N, S/4, S/4) and presence logit (N,) (null reference when negative).
        """
        logits, presence, _ = self.decode_with_coarse(
            fused_audio, fused_visual, text_cue, text_mask, memory_audio, memory_visual, beta, pixel_features
        )
        return logits, presence

    def decode_with_coarse(
        self,
        fused_audio: Tensor,
        fused_visual: Tensor,
        text_cue: Tensor,
        text_mask: Tensor,
        memory_audio: Tensor,
        memory_visual: Tensor,
        beta: Tensor,
        pixel_features: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`decode` that also returns the coarse target-map logits (N, G, G) (deep supervision)."""
        qa = (1.0 + beta) * fused_audio - beta * memory_audio  # Q_A, Eq. 2
        qv = (1.0 + beta) * fused_visual - beta * memory_visual  # Q_V, Eq. 2
        if self.cfg.decode_position:
            qv = qv + self.cue_position  # explicit grid position where spatial words are decoded
        n = qa.shape[0]
        parts = [qa]
        if self.cfg.memory_token:
            parts.append(beta * memory_audio)  # the audio history itself (0 with the memory off)
        if self.cfg.modality_tokens:
            parts.append(self.aud_token.expand(n, -1, -1))
        start = sum(p.shape[1] for p in parts)  # index of the first visual cue
        parts.append(qv)
        if self.cfg.modality_tokens:
            parts.append(self.vis_token.expand(n, -1, -1))
        parts.append(text_cue)
        cues = torch.cat(parts, dim=1)  # (N, P + L, d)
        bias = _key_bias(text_mask, cues.shape[1] - text_cue.shape[1])
        for layer in self.integration:
            cues = layer(cues, bias)  # Q_m
        q = self.queries.expand(n, -1, -1)  # (N, N_q, d)
        for layer in self.catf:
            q = layer(q, cues, bias)  # q_Q, Eq. 5
        # the integrated visual cues (one per token-grid cell) also prompt the pixel embedding:
        # upsampled to S/4 and added, so the decoder sees where the expression points
        g = self.cfg.token_grid
        grid = cues[:, start : start + g * g].transpose(1, 2).reshape(n, -1, g, g)  # (N, d, G, G)
        size = pixel_features.shape[-2:]
        pixel_features = pixel_features + self.cue_to_pixel(
            F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        )  # (N, d, S/4, S/4)
        pix = F.avg_pool2d(pixel_features, 2).flatten(2).transpose(1, 2)  # (N, (S/8)^2, d)
        q = self.pixel_attn(q, pix)
        masks = torch.einsum("nqd,ndhw->nqhw", self.mask_embed(q), pixel_features)  # (N, N_q, h, w)
        weights = self.query_score(q).softmax(dim=1)  # (N, N_q, 1)
        coarse = self.coarse_head(grid.flatten(2).transpose(1, 2)).reshape(n, g, g)  # (N, G, G)
        logits = (weights[..., None] * masks).sum(dim=1) + F.interpolate(
            coarse[:, None], size=size, mode="bilinear", align_corners=False
        )[:, 0]  # (N, h, w)
        presence = self.presence((weights * q).sum(dim=1)).squeeze(-1)  # (N,)
        return logits, presence, coarse

    # ----------------------------------------------------------------------- batch (clip) path
    def forward(
        self,
        pixel_values: Tensor,
        log_mel: Tensor,
        text_hidden: Tensor,
        text_mask: Tensor,
        beta: float | None = None,
        window: int | None = None,
        return_aux: bool = False,
        frame_index: Tensor | None = None,
        memory_entries: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """Clip forward: every frame of a clip, each frame seeing only itself and earlier ones.

        Args:
            pixel_values: (B, T', 3, S, S) float32 in [0, 1].
            log_mel: (B, T, 96, 64) float32, the audio example aligned with each time step.
            text_hidden: (B, L, d_T) text-encoder hidden states.
            text_mask: (B, L) float, 1 = real token.
            beta: Eq. 2 sensitivity; None = ``cfg.beta``.
            window: cached-memory window W in steps (C averages the last W earlier steps);
                None = from the beginning of the clip (paper Eq. 3).
            return_aux: also return a dict with the visual encoder's pixel features
                ``pixel`` (B, T', d, S/4, S/4), the coarse target-map logits ``coarse``
                (B, T', G, G) and the audio cached memory ``memory_audio`` (B, T', 1, d), for
                auxiliary training losses.
            frame_index: None (T' == T: every step has its frame, the streaming computation)
                or int64 (T',) / (B, T') increasing positions of the given frames among the T
                audio steps (training on a subset of frames): the audio branch and its cached
                memory then run over all T steps exactly as in streaming, the visual memory over
                the T' given frames only.
            memory_entries: None (every step enters the cached memory) or bool (T,) / (B, T):
                the audio steps that are memory entries, as the streaming predictor commits one
                frame per ``frame_stride_sec`` (clips above 1 frame per second); every step reads
                the entries before it (:func:`causal_memory`). The visual memory takes the
                entries among the given frames.

        Returns:
            mask logits (B, T', S/4, S/4) and presence logits (B, T') [, aux dict].

        Raises:
            ValueError: frame/audio step counts disagree without ``frame_index``, or a
                ``frame_index`` / ``memory_entries`` of the wrong shape.
        """
        b, tv = pixel_values.shape[:2]
        ta = log_mel.shape[1]
        if frame_index is None:
            if tv != ta:
                raise ValueError(f"{tv} frames but {ta} audio steps; pass frame_index to train on a subset")
            sel = None
        else:
            sel = frame_index.to(device=log_mel.device, dtype=torch.long)
            if sel.shape not in ((tv,), (b, tv)):
                raise ValueError(f"frame_index must be ({tv},) or ({b}, {tv}), got {tuple(sel.shape)}")
            if sel.dim() == 1:
                sel = sel[None].expand(b, -1)
            rows = torch.arange(b, device=sel.device)[:, None]
        tokens, pixel = self.encode_visual(pixel_values.flatten(0, 1))  # (BT', G*G, d), (BT', d, h, w)
        audio = self.encode_audio(log_mel.flatten(0, 1))  # (BT, d_A)
        th = text_hidden[:, None].expand(-1, ta, -1, -1).flatten(0, 1)  # (BT, L, d_T)
        tm = text_mask[:, None].expand(-1, ta, -1).flatten(0, 1)  # (BT, L)
        text = self.text_proj(th)  # F_T' (BT, L, d)
        fa, fta = self.fuse_audio_text(audio, text, tm)  # every audio step

        def pick(x: Tensor) -> Tensor:  # (BT, ...) -> (BT', ...) at the given frames
            return x if sel is None else x.unflatten(0, (b, ta))[rows, sel].flatten(0, 1)

        text_v, tm_v = pick(text), pick(tm)
        fv, ftv = self.fuse_visual_text(tokens, text_v, tm_v)
        tcue = (text_v + pick(fta) + ftv) / 3.0
        entries_v = None
        if memory_entries is not None:
            memory_entries = memory_entries.to(device=log_mel.device, dtype=torch.bool)
            if memory_entries.shape not in ((ta,), (b, ta)):
                raise ValueError(f"memory_entries must be ({ta},) or ({b}, {ta}), got {tuple(memory_entries.shape)}")
            memory_entries = memory_entries.expand(b, ta)
            entries_v = memory_entries if sel is None else memory_entries[rows, sel]  # (B, T')
        mem_a = pick(causal_memory(fa.unflatten(0, (b, ta)), window, memory_entries).flatten(0, 1))
        mem_v = causal_memory(fv.unflatten(0, (b, tv)), window, entries_v).flatten(0, 1)
        fa_v = pick(fa)
        beta_t = torch.tensor([self.cfg.beta if beta is None else beta], dtype=fa.dtype, device=fa.device)
        logits, presence, coarse = self.decode_with_coarse(fa_v, fv, tcue, tm_v, mem_a, mem_v, beta_t, pixel)
        out = (logits.unflatten(0, (b, tv)), presence.unflatten(0, (b, tv)))
        if return_aux:
            return out + (
                {
                    "pixel": pixel.unflatten(0, (b, tv)),
                    "coarse": coarse.unflatten(0, (b, tv)),
                    "memory_audio": mem_a.unflatten(0, (b, tv)),
                },
            )
        return out


def causal_memory(features: Tensor, window: int | None = None, entries: Tensor | None = None) -> Tensor:
    """Cached memory C(tau) of paper Eq. 3 for every step of a clip, in float64 sums.

    The streaming predictor commits a frame to the memory only when ``frame_stride_sec`` (1 s)
    passed since the last entry, so at a camera rate above 1 Hz only some steps are entries
    (``refavs_ros.predictor``); ``entries`` says which, and every step, entry or not, reads the
    mean of the entries before it, as the stream does.

    Args:
        features: F^ (B, T, K, d).
        window: average over the last ``window`` earlier entries; None = all earlier entries.
        entries: bool (T,) or (B, T): steps that enter the memory; None = every step.

    Returns:
        C (B, T, K, d): C[:, tau] = mean of F^ over the last ``window`` entries strictly before
        tau (0 where there is none; with ``entries`` None, C[:, tau] = mean(F^[:, max(0,
        tau-W):tau])).

    Raises:
        ValueError: ``entries`` not (T,) or (B, T).
    """
    b, t = features.shape[:2]
    x = features.to(torch.float64)
    if entries is None:
        keep = torch.ones(b, t, dtype=torch.float64, device=features.device)
    else:
        if entries.shape not in ((t,), (b, t)):
            raise ValueError(f"entries must be ({t},) or ({b}, {t}), got {tuple(entries.shape)}")
        keep = entries.to(device=features.device, dtype=torch.float64).expand(b, t)
    # entries before step tau (exclusive), and the prefix sums P[k] of the first k entries
    before = torch.cat([keep.new_zeros(b, 1), keep.cumsum(dim=1)[:, :-1]], dim=1).long()  # (B, T)
    rank = (before + 1) * keep.long()  # 1-based position of each entry among the entries, 0 = not one
    prefix = x.new_zeros((b, t + 1) + x.shape[2:])  # (B, T+1, K, d): slot k holds entry k
    prefix.index_put_((torch.arange(b, device=x.device)[:, None].expand(b, t), rank), x * keep[:, :, None, None],
                      accumulate=True)
    prefix[:, 0] = 0.0  # slot 0 collected the non-entries (weighted 0)
    prefix = prefix.cumsum(dim=1)  # P[k] = sum of the first k entries
    lo = torch.zeros_like(before) if window is None else torch.clamp(before - window, min=0)
    rows = torch.arange(b, device=x.device)[:, None]
    total = prefix[rows, before] - prefix[rows, lo]  # (B, T, K, d)
    count = (before - lo).clamp(min=1).to(torch.float64)[:, :, None, None]
    return (total / count).to(features.dtype)
