"""Stage-wise ONNX export of the released EEMC (:class:`refavs_ros.models.official_stages.OfficialStageModel`).

Graphs and names: :data:`refavs_ros.models.official_stages.OFFICIAL_STAGES`. The ``fuse`` graph
has a DYNAMIC window axis (``visual_tokens`` / ``audio_embeddings`` axis 1 = T frames, any T >= 1)
and ``decode`` a dynamic prompt axis (T + 171 prompts), so the start-up windows 1..N-1 of the
streaming engine run on the same graphs as the steady state. The fusion is traced in its
exportable form (``OfficialEEMC.fuse(traceable=True)``: shape-free attention reshapes, the cached
memory of only the newest frame without a ``CumSum``); the verification compares every graph
with the RELEASED eager computation (``nn.MultiheadAttention``, ``cumsum``) at several windows.

:func:`fp32_nodes` names the nodes of a graph that a mixed-precision (FP16) TensorRT build keeps
in FP32 (see ``docs/deploy.md``, "FP16 and the released model").
"""


from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from refavs_ros.export.cache import (
    EXPORT_FORMAT,
    MANIFEST,
    ExportReport,
    StageExport,
    file_sha256,
    model_fingerprint,
)
from refavs_ros.export.eemc import TEXT_STAGE, export_text
from refavs_ros.export.onnx_utils import (
    OPSET,
    export_module,
    max_abs_errors,
    onnx_io_shapes,
    onnx_session,
    release_memory,
)
from refavs_ros.models.official import TEXT_TOKENS, OfficialEEMC, visual_tokens
from refavs_ros.models.official_stages import OFFICIAL_DYNAMIC_AXES, OFFICIAL_STAGES, OfficialStageModel
from refavs_ros.models.vggish import VGGish

__all__ = [
    "OFFICIAL_STAGES",
    "OFFICIAL_GRAPH_VERSION",
    "TEXT_TOKENS_OFFICIAL",
    "export_official",
    "fp32_nodes",
    "official_feeds",
    "verify_windows",
]

TEXT_TOKENS_OFFICIAL = TEXT_TOKENS
"""Expression length of the released model in tokens (DistilRoBERTa)."""

RELEASE_MEMORY_BYTES = 32 << 20
"""Graphs larger than this (bytes) are followed by :func:`release_memory` (the full-size ones)."""

OFFICIAL_GRAPH_VERSION = 2
"""Version of the official graphs' layout (2: dynamic window, ``beta`` input of ``fuse``); part of
the manifest config, so a cache directory written by older code is re-exported."""


def verify_windows(window: int) -> tuple[int, ...]:
    """Fusion windows at which an export is checked: 1, 2 and ``window`` (deduplicated, sorted)."""
    return tuple(sorted({1, min(2, window), window}))


def official_feeds(model: OfficialStageModel, window: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Seeded example inputs of every official graph at batch 1 and a fusion window of ``window``.

    The decoder inputs are the visual stage's real outputs on a random image and the prompts are
    the fusion's real output at that window, so the decoder is checked on in-distribution values;
    the window's other visual tokens are random with the real tokens' spread.

    Args:
        model: the stage model.
        window: frames in the fusion window (>= 1).
        seed: random seed.

    Returns:
        ``{stage: {input name: float32 array}}`` for the stages the model has.
    """
    net = model.net
    g = torch.Generator().manual_seed(seed)
    shapes = model.input_shapes(window)
    px = torch.randn(*shapes["visual"]["pixel_values"], generator=g)
    with torch.no_grad():
        feats = net.encode_frames(px)
        tokens = visual_tokens(feats.swin_last)  # (1, S, C)
        tok = torch.randn(*shapes["fuse"]["visual_tokens"], generator=g) * tokens.std()
        tok[:, -1] = tokens[0]
        aud = torch.randn(*shapes["fuse"]["audio_embeddings"], generator=g)
        txt = torch.randn(*shapes["fuse"]["text_hidden"], generator=g)
        beta = torch.full((1,), float(net.beta))
        prompts = net.fuse(tok, aud, txt, last_frames=1, beta=beta)
    feeds = {
        "visual": {"pixel_values": px.numpy()},
        "fuse": {
            "visual_tokens": tok.numpy(),
            "audio_embeddings": aud.numpy(),
            "text_hidden": txt.numpy(),
            "beta": beta.numpy(),
        },
        "decode": {
            "multi_scale_0": feats.multi_scale[0].numpy(),
            "multi_scale_1": feats.multi_scale[1].numpy(),
            "multi_scale_2": feats.multi_scale[2].numpy(),
            "mask_features": feats.mask_features.numpy(),
            "prompts": prompts.numpy(),
        },
    }
    if model.vggish is not None:
        feeds["audio"] = {"log_mel": torch.randn(1, 96, 64, generator=g).numpy()}
    return feeds


def _as_stage_model(model: OfficialStageModel | OfficialEEMC, vggish: VGGish | None, output_size) -> OfficialStageModel:
    """A CPU float32 stage model to export from (no copy when the model is one already)."""
    if isinstance(model, OfficialStageModel):
        stage_model = model
    else:
        stage_model = OfficialStageModel(model, vggish, output_size)
    params = list(stage_model.parameters())
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params):
        return stage_model.eval()  # export from the caller's model: saves a full copy of the weights
    return copy.deepcopy(stage_model).float().cpu().eval()


def export_official(
    model: OfficialStageModel | OfficialEEMC,
    out_dir: str | Path,
    *,
    window: int = 10,
    vggish: VGGish | None = None,
    text_model_dir: str | Path | None = None,
    output_size: tuple[int, int] = (256, 256),
    stages: Iterable[str] | None = None,
    opset: int = OPSET,
    verify: bool = True,
) -> ExportReport:
    """Export the released model stage-wise (dynamic fusion window) and verify every graph.

    Memory: the graphs are exported from the caller's model when it is already on the CPU in
    float32 (no copy of the weights), one at a time, and freed heap memory is returned to the
    OS after each graph (:func:`~refavs_ros.export.onnx_utils.release_memory`), so the peak is
    the model plus the largest graph (Swin-B ``visual``) and its verification session.

    Args:
        model: an :class:`OfficialStageModel`, or the bare :class:`OfficialEEMC` with ``vggish``.
            A model on another device or dtype is copied to CPU float32 first; the caller's
            model is never modified.
        out_dir: export directory (``<stage>.onnx`` + ``manifest.json``).
        window: the largest fusion window verified (10 released); the graphs accept any window
            (dynamic axis), and are checked at :func:`verify_windows` (1, 2, ``window``).
        vggish: the VGGish to export as ``audio`` when ``model`` is a bare ``OfficialEEMC``
            (skipped when None).
        text_model_dir: DistilRoBERTa directory to export as ``text`` (L = 25; all 25 rows are
            verified since the released fusion uses padded rows too), or None.
        output_size: (height, width) of the decoder's logits in pixels (256x256 released; only
            used with a bare ``OfficialEEMC``).
        stages: subset of the stages to export (default: all the model has).
        opset: ONNX opset.
        verify: check every graph with ONNX Runtime against the eager PyTorch stage.

    Returns:
        The :class:`ExportReport` (``config`` holds ``{"model": "official", "window": window,
        "dynamic_window": True, "verified_windows": [...], ...}``).

    Raises:
        ConfigError: ``window`` < 1.
        KeyError: unknown stage name.
        ModelLoadError: an export or an ONNX Runtime load failed.
    """
    from refavs_ros.errors import ConfigError

    if window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage_model = _as_stage_model(model, vggish, output_size)
    names = list(stages) if stages is not None else [s for s in OFFICIAL_STAGES if s != "audio" or stage_model.vggish is not None]
    for name in names:
        if name not in OFFICIAL_STAGES:
            raise KeyError(f"unknown stage {name!r}; expected one of {list(OFFICIAL_STAGES)}")
    windows = verify_windows(window)
    trace = official_feeds(stage_model, window, seed=0)
    checks = {w: official_feeds(stage_model, w, seed=1) for w in windows} if verify else {}
    records = []
    for name in names:
        spec = OFFICIAL_STAGES[name]
        t0 = time.perf_counter()
        path = export_module(
            stage_model.stage_module(name, traceable=True).eval(), trace[name], spec, out / f"{name}.onnx",
            opset=opset, dynamic_axes=OFFICIAL_DYNAMIC_AXES.get(name),
        )
        rec = StageExport(name, path.name, onnx_io_shapes(path), list(spec.outputs), seconds=time.perf_counter() - t0)
        large = path.stat().st_size > RELEASE_MEMORY_BYTES
        if large:
            release_memory()
        if verify:
            session = onnx_session(path)
            reference = stage_model.stage_module(name).eval()  # the eager, released computation
            errors: dict[str, float] = {}
            for w in windows if name in OFFICIAL_DYNAMIC_AXES else windows[-1:]:
                for out_name, err in max_abs_errors(session, reference, checks[w][name], spec).items():
                    errors[out_name] = max(errors.get(out_name, 0.0), err)
            rec.max_abs_error = errors
            del session
            if large:
                release_memory()
        rec.sha256 = file_sha256(path)
        records.append(rec)
    if text_model_dir is not None:
        records.append(
            export_text(text_model_dir, TEXT_TOKENS_OFFICIAL, out / f"{TEXT_STAGE}.onnx", opset=opset, verify=verify,
                        valid_only=False)
        )
        release_memory()
    report = ExportReport(
        directory=str(out),
        format=EXPORT_FORMAT,
        fingerprint=model_fingerprint(stage_model),
        config={
            "model": "official",
            "graph_version": OFFICIAL_GRAPH_VERSION,
            "window": window,
            "dynamic_window": True,
            "verified_windows": list(windows) if verify else [],
            "image_size": list(stage_model.image_size),
            "output_size": list(stage_model.output_size),
        },
        opset=opset,
        half=False,
        torch_version=torch.__version__,
        stages=records,
        text_model=str(text_model_dir) if text_model_dir is not None else "",
    )
    (out / MANIFEST).write_text(json.dumps(report.to_dict(), indent=2))
    return report


# ------------------------------------------------------------------ FP16 mixed precision
FP32_SCOPE_RULES: tuple[tuple[str, str], ...] = (
    (
        r"/pixel_level_module/decoder/encoder/layers\.\d+/self_attn/",
        "multi-scale deformable attention (sampling offsets, attention weights, grid-sample coordinates)",
    ),
    (r"/mask_predictor(_\d+)?/", "per-query mask logits (thresholded at sigmoid 0.5 for the next layer's attention mask)"),
)
"""(regex on an ONNX node name, reason): whole sub-modules kept in FP32 in a FP16 build."""

FP32_OP_TYPES: dict[str, str] = {
    "Softmax": "softmax (attention over up to 2304 keys, -inf masks, ADE class weights)",
    "LayerNormalization": "LayerNorm (mean/variance of activations that overflow FP16)",
    "InstanceNormalization": "GroupNorm of the pixel decoder (variance in FP16)",
    "GridSample": "deformable-attention sampling",
}
"""ONNX op types kept in FP32 wherever they are (TensorRT: SOFTMAX, NORMALIZATION, GRID_SAMPLE)."""

_LOGIT_PATH_OPS = {"Add", "Mul", "Div", "Sub", "Where", "Reshape", "Transpose", "Cast", "Expand", "Unsqueeze", "Squeeze"}
_LOGIT_SOURCE_OPS = {"MatMul", "Gemm", "Einsum"}
_DATA_INPUTS = {"Where": (1, 2), "Reshape": (0,), "Expand": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Cast": (0,),
                "Transpose": (0,)}


def fp32_nodes(onnx_path: str | Path, stage: str) -> dict[str, str]:
    """Nodes of an official graph that a FP16 TensorRT build keeps in FP32, with the reason.

    Rules (Mask2Former's known FP16 hazards; ``docs/deploy.md``):

    * ``fuse``: every node (softmax over up to T*144 + 25 = 1465 keys, running sums over 1440
      tokens of 1024 values; ~17 GFLOP per step, cheap in FP32);
    * op types in :data:`FP32_OP_TYPES` (softmax, LayerNorm, GroupNorm, grid sampling);
    * the attention-logit path of every softmax: the nodes between the ``MatMul``/``Gemm``/
      ``Einsum`` that computes the logits and the softmax (scaling, relative-position bias, the
      Swin shift mask of -100 and Mask2Former's -inf attention masks);
    * the sub-modules of :data:`FP32_SCOPE_RULES` (deformable attention of the pixel decoder,
      the mask predictor whose logits set the next layer's attention mask);
    * ``decode``: the nodes at the graph's top level (the final query weighting: softmax over
      [class 0, null], the weighted sum of 100 mask logits and the resizes to 384 / 256 px).

    Args:
        onnx_path: a graph written by :func:`export_official`.
        stage: its stage name.

    Returns:
        ``{node name: reason}``; TensorRT layers are matched to these by name.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    nodes = list(graph.node)
    if stage == "fuse":
        return {n.name: "fusion stage (kept FP32 entirely)" for n in nodes}
    producer = {out: n for n in nodes for out in n.output}
    keep: dict[str, str] = {}
    scope = [(re.compile(rx), why) for rx, why in FP32_SCOPE_RULES]
    for n in nodes:
        if n.op_type in FP32_OP_TYPES:
            keep[n.name] = FP32_OP_TYPES[n.op_type]
        for rx, why in scope:
            if rx.search(n.name):
                keep.setdefault(n.name, why)
        if stage == "decode" and n.name.count("/") == 1:
            keep.setdefault(n.name, "final query weighting and resizes")
        if n.op_type == "Softmax":  # walk back to the logits' matmul
            seen: set[str] = set()
            todo = [n.input[0]]
            while todo:
                src = producer.get(todo.pop())
                if src is None or src.name in seen:
                    continue
                seen.add(src.name)
                if src.op_type in _LOGIT_SOURCE_OPS:
                    keep.setdefault(src.name, "attention logits")
                elif src.op_type in _LOGIT_PATH_OPS:
                    keep.setdefault(src.name, "attention logits")
                    todo.extend(src.input[i] for i in _DATA_INPUTS.get(src.op_type, (0, 1)) if i < len(src.input))
    return keep
