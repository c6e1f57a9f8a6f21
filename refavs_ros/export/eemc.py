"""Stage-wise ONNX export of EEMC (and its text encoder), checked against PyTorch with ONNX Runtime.

One ONNX graph per streaming stage of :data:`refavs_ros.models.eemc_stages.STAGES` (``visual``,
``audio``, ``fuse``, ``decode``), with the stage's named inputs/outputs and FIXED shapes for the
model's config (batch 1, the streaming batch), plus the frozen text encoder (``text``, run once
per command):

=====  ===========================================  ==============================
stage  inputs                                       outputs
=====  ===========================================  ==============================
text   input_ids int64 (1, L), attention_mask       text_hidden float32 (1, L, d_T)
       int64 (1, L) (1 = real token)
=====  ===========================================  ==============================

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 17 (checked
with torch 2.13: it handles every stage; the dynamo exporter needs ``onnxscript``, which is not
a dependency). Shapes are fixed, so the tracer's "converting a tensor to a Python value"
warnings (head sizes, the token-grid check) are expected and harmless; they are filtered.
Hugging Face text models are loaded with ``attn_implementation="eager"`` (plain matmul
attention, which traces into standard ONNX ops) and traced with a PADDED example so the
attention-mask path is part of the graph.

Every export is verified like segment-anything's ``scripts/export_onnx_model.py``: the graph runs
in ONNX Runtime (CPU) on seeded example inputs and the maximum absolute error of every output
against PyTorch is reported (:class:`StageExport`).

An export directory holds ``<stage>.onnx`` files and ``manifest.json`` (model fingerprint,
config, opset, torch version, per-stage I/O names and shapes and the verification errors).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from refavs_ros.errors import ModelLoadError
from refavs_ros.export.cache import (
    EXPORT_FORMAT,
    MANIFEST,
    ExportReport,
    StageExport,
    file_sha256,
    model_fingerprint,
)
from refavs_ros.export.onnx_utils import (
    OPSET,
    HalfStage,
    export_module,
    max_abs_errors,
    onnx_io_shapes,
    onnx_session,
)
from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES, StageModule, StageSpec

TEXT_STAGE = "text"
"""Name of the text-encoder graph (inputs ``input_ids``/``attention_mask``, output ``text_hidden``)."""

TEXT_SPEC = StageSpec(("input_ids", "attention_mask"), ("text_hidden",))
"""Named I/O of the text-encoder graph, in call order."""


# ------------------------------------------------------------------------------------ shapes
def stage_shapes(cfg: EEMCConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Fixed input shapes of every EEMC stage for the streaming batch of 1.

    Args:
        cfg: model config (d = ``d_model``, G*G = ``num_visual_tokens``, L = ``max_text_tokens``,
            S = ``image_size``).

    Returns:
        ``{stage: {input name: shape}}`` for the four stages of :data:`STAGES`, e.g.
        ``visual: pixel_values (1, 3, S, S)``; ``decode: beta (1,)``.
    """
    d, g, s, n_text = cfg.d_model, cfg.num_visual_tokens, cfg.image_size, cfg.max_text_tokens
    every = {
        "pixel_values": (1, 3, s, s),
        "log_mel": (1, 96, 64),
        "visual_tokens": (1, g, d),
        "audio_embedding": (1, cfg.audio_dim),
        "text_hidden": (1, n_text, cfg.text_dim),
        "text_mask": (1, n_text),
        "fused_audio": (1, 1, d),
        "fused_visual": (1, g, d),
        "text_cue": (1, n_text, d),
        "memory_audio": (1, 1, d),
        "memory_visual": (1, g, d),
        "beta": (1,),
        "pixel_features": (1, d, s // 4, s // 4),
    }
    return {name: {k: every[k] for k in spec.inputs} for name, spec in STAGES.items()}


def example_feeds(cfg: EEMCConfig, stage: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 example inputs of one stage (used for tracing, verification and benches).

    Values follow each input's domain: pixels uniform in [0, 1]; ``text_mask`` has its first
    ``max(1, L // 2)`` tokens valid and the rest padding (so masking is exercised); ``beta`` is
    ``cfg.beta``; other tensors are standard normal.

    Raises:
        KeyError: unknown stage.
    """
    shapes = stage_shapes(cfg)[stage]
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name == "pixel_values":
            arr = rng.random(shape, dtype=np.float32)
        elif name == "text_mask":
            arr = np.zeros(shape, np.float32)
            arr[:, : max(1, shape[1] // 2)] = 1.0
        elif name == "beta":
            arr = np.full(shape, cfg.beta, np.float32)
        else:
            arr = rng.standard_normal(shape, dtype=np.float32)
        feeds[name] = arr
    return feeds



def export_stage(model: EEMC, stage: str, path: str | Path, *, opset: int = OPSET, half: bool = False) -> Path:
    """Export one EEMC stage (see :data:`STAGES`) to ONNX with fixed batch-1 shapes.

    Args:
        model: the EEMC model (CPU, float32; it is put in eval mode).
        stage: ``visual``, ``audio``, ``fuse`` or ``decode``.
        path: output ``.onnx`` file.
        opset: ONNX opset (default 17).
        half: float16 weights/arithmetic with float32 I/O (:class:`HalfStage`).

    Returns:
        ``path``.

    Raises:
        KeyError: unknown stage.
        ModelLoadError: the exporter failed.
    """
    module: nn.Module = StageModule(model.eval(), stage)
    if half:
        module = HalfStage(module)
    return export_module(module, example_feeds(model.cfg, stage), STAGES[stage], path, opset=opset)


class _TextGraph(nn.Module):
    """``(input_ids, attention_mask) -> (last_hidden_state,)`` of a Hugging Face encoder."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf_model = hf_model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor]:
        return (self.hf_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,)


def load_eager_text_model(model_dir: str | Path) -> tuple[nn.Module, object]:
    """Load a local Hugging Face encoder with ``attn_implementation="eager"`` and its tokenizer.

    Raises:
        ModelLoadError: the directory cannot be loaded (named).
    """
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        hf_model = AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load text encoder from {model_dir}: {exc}") from exc
    return hf_model.eval(), tokenizer


TEXT_CHECK_SENTENCES = (
    "the dog",
    "the man playing the guitar on the left side of the stage while the crowd claps along loudly",
    "a",
)
"""Verification texts: padded, truncated to L (no padding), and one word."""


def text_feeds(tokenizer: object, text: str, max_tokens: int) -> dict[str, np.ndarray]:
    """Tokenise ``text`` like :class:`refavs_ros.models.text.TextEncoder` (pad/truncate to L).

    Returns:
        ``input_ids`` and ``attention_mask``, int64 (1, L).
    """
    enc = tokenizer(  # type: ignore[operator]
        [text], padding="max_length", truncation=True, max_length=max_tokens, return_tensors="np"
    )
    return {
        "input_ids": np.asarray(enc["input_ids"], np.int64),
        "attention_mask": np.asarray(enc["attention_mask"], np.int64),
    }


def export_eemc(
    model: EEMC,
    out_dir: str | Path,
    *,
    text_model_dir: str | Path | None = None,
    stages: Iterable[str] | None = None,
    opset: int = OPSET,
    half: bool = False,
    verify: bool = True,
) -> ExportReport:
    """Export EEMC's streaming stages (and optionally its text encoder) and verify them.

    Args:
        model: EEMC model (it is copied to CPU float32 for the export; the caller's model is
            not modified).
        out_dir: export directory (created); ``<stage>.onnx`` and ``manifest.json`` are written.
        text_model_dir: local Hugging Face directory of the text encoder to export as
            ``text.onnx`` (L = ``cfg.max_text_tokens``), or None to skip it.
        stages: subset of :data:`STAGES` to export; default all four.
        opset: ONNX opset (default 17).
        half: float16 graphs with float32 I/O (for strongly typed TensorRT FP16 builds); the
            text encoder is always exported in float32.
        verify: run every graph in ONNX Runtime (CPU) and record the max abs error of every
            output against PyTorch (:attr:`StageExport.max_abs_error`).

    Returns:
        The :class:`ExportReport` (also written to ``out_dir/manifest.json``).

    Raises:
        KeyError: unknown stage name.
        ModelLoadError: export or ONNX Runtime loading failed, or the text model cannot load.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    names = list(stages) if stages is not None else list(STAGES)
    for name in names:
        if name not in STAGES:
            raise KeyError(f"unknown stage {name!r}; expected one of {list(STAGES)}")
    records: list[StageExport] = []
    for name in names:
        t0 = time.perf_counter()
        path = export_stage(cpu_model, name, out / f"{name}.onnx", opset=opset, half=half)
        rec = StageExport(name, path.name, onnx_io_shapes(path), list(STAGES[name].outputs), seconds=time.perf_counter() - t0)
        if verify:
            reference = StageModule(cpu_model, name).eval()
            feeds = example_feeds(cpu_model.cfg, name, seed=1)  # not the tracing inputs
            rec.max_abs_error = max_abs_errors(onnx_session(path), reference, feeds, STAGES[name])
        rec.sha256 = file_sha256(path)
        records.append(rec)
    if text_model_dir is not None:
        records.append(export_text(text_model_dir, cpu_model.cfg.max_text_tokens, out / f"{TEXT_STAGE}.onnx", opset=opset, verify=verify))
    report = ExportReport(
        directory=str(out),
        format=EXPORT_FORMAT,
        fingerprint=model_fingerprint(cpu_model),
        config=cpu_model.cfg.to_dict(),
        opset=opset,
        half=half,
        torch_version=torch.__version__,
        stages=records,
        text_model=str(text_model_dir) if text_model_dir is not None else "",
    )
    (out / MANIFEST).write_text(json.dumps(report.to_dict(), indent=2))
    return report


def export_text(
    model_dir: str | Path,
    max_tokens: int,
    path: str | Path,
    *,
    opset: int = OPSET,
    verify: bool = True,
    valid_only: bool = True,
) -> StageExport:
    """Export a Hugging Face text encoder to ONNX: ``(input_ids, attention_mask) -> text_hidden``.

    Args:
        model_dir: local model directory (loaded with ``attn_implementation="eager"``).
        max_tokens: L, the fixed token count (pad/truncate length).
        path: output ``.onnx`` file.
        opset: ONNX opset.
        verify: compare with PyTorch on :data:`TEXT_CHECK_SENTENCES`.
        valid_only: compare real tokens only (EEMC masks padding out of every attention); False
            compares all L rows (the released model feeds padded rows to its fusion unmasked).

    Returns:
        The :class:`StageExport` (``max_abs_error["text_hidden"]`` is the max over the
        sentences).

    Raises:
        ModelLoadError: the model cannot load or the export fails.
    """
    path = Path(path)
    t0 = time.perf_counter()
    hf_model, tokenizer = load_eager_text_model(model_dir)
    graph = _TextGraph(hf_model).eval()
    # a padded example: the mask-handling branch of the HF model is what gets traced
    export_module(graph, text_feeds(tokenizer, TEXT_CHECK_SENTENCES[0], max_tokens), TEXT_SPEC, path, opset=opset)
    rec = StageExport(TEXT_STAGE, path.name, onnx_io_shapes(path), list(TEXT_SPEC.outputs), seconds=time.perf_counter() - t0)
    if verify:
        session = onnx_session(path)
        worst = 0.0
        for sentence in TEXT_CHECK_SENTENCES:
            feeds = text_feeds(tokenizer, sentence, max_tokens)
            valid = {"text_hidden": feeds["attention_mask"].astype(bool)[..., None]} if valid_only else None
            worst = max(worst, max_abs_errors(session, graph, feeds, TEXT_SPEC, valid)["text_hidden"])
        rec.max_abs_error = {"text_hidden": worst}
    rec.sha256 = file_sha256(path)
    return rec


