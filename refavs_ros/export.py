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
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from refavs_ros.errors import ConfigError, ModelLoadError
from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES, StageModule, StageSpec

OPSET = 17
"""ONNX opset of every exported graph."""

EXPORT_FORMAT = "refavs_ros.onnx.v1"
"""``format`` value of ``manifest.json``; a cache directory with another value is re-exported."""

MANIFEST = "manifest.json"
"""File name of the export manifest inside an export directory."""

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


# ------------------------------------------------------------------------------ fingerprints
def model_fingerprint(model: nn.Module, cfg: EEMCConfig | None = None) -> str:
    """SHA-256 (hex) of a model's config and every state-dict tensor (name, dtype, shape, bytes).

    Two models with equal weights and config get the same fingerprint, whatever device they are
    on; it keys the ONNX export cache (:func:`cached_export_dir`).

    Args:
        model: the module (EEMC or any ``nn.Module``).
        cfg: its config; default ``model.cfg`` when present.
    """
    h = hashlib.sha256()
    cfg = cfg if cfg is not None else getattr(model, "cfg", None)
    if cfg is not None:
        h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes (keys TensorRT engines by their ONNX source)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Root of the export/engine cache.

    ``$REFAVS_ROS_CACHE`` if set, else ``$XDG_CACHE_HOME/refavs_ros``, else
    ``~/.cache/refavs_ros``.
    """
    if os.environ.get("REFAVS_ROS_CACHE"):
        return Path(os.environ["REFAVS_ROS_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "refavs_ros"


# ------------------------------------------------------------------------------------ export
class HalfStage(nn.Module):
    """A stage with float16 weights and arithmetic but float32 inputs and outputs.

    Used for TensorRT's strongly typed FP16 builds (TensorRT >= 11 has no FP16 builder flag: the
    precision must be in the graph). Inputs are cast to float16 at the graph entry and outputs
    back to float32 at the exit, so the named I/O stays float32 like every other backend.

    Args:
        module: a stage module; it is deep-copied and converted with ``.half()``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        outs = self.module(*(x.half() for x in inputs))
        return tuple(o.float() for o in outs)


def export_module(
    module: nn.Module,
    feeds: Mapping[str, np.ndarray],
    spec: StageSpec,
    path: str | Path,
    *,
    opset: int = OPSET,
) -> Path:
    """Trace ``module(*feeds in spec order)`` into an ONNX file with fixed shapes.

    Args:
        module: callable module returning a tuple of tensors in ``spec.outputs`` order.
        feeds: example inputs by name (their shapes become the graph's fixed shapes).
        spec: input and output names.
        path: output ``.onnx`` file (parent directories are created).
        opset: ONNX opset.

    Returns:
        ``path``.

    Raises:
        ModelLoadError: the exporter failed (the message names the file and the cause).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in spec.inputs)
    module = module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # fixed shapes: shape-derived Python values are constants on purpose
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(spec.inputs),
                output_names=list(spec.outputs),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types; re-raised with context
        raise ModelLoadError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    demote_float64(path)
    return path


def demote_float64(path: str | Path) -> int:
    """Rewrite float64 computations of an ONNX graph to float32, in place.

    The TorchScript exporter turns some shape arithmetic of traced code into float64 (e.g. the
    reference points of Mask2Former's deformable attention); that breaks ``GridSample`` in ONNX
    Runtime (grid must match the input type) and TensorRT has no float64. In eager PyTorch those
    values are float32, so the rewrite restores the traced module's arithmetic. Graph inputs and
    outputs are never float64 here; the verification against PyTorch checks the result.

    Changes: ``Cast(to=DOUBLE)`` -> ``Cast(to=FLOAT)``; float64 ``Constant`` / ``ConstantOfShape``
    values and initializers -> float32; inferred ``value_info`` is dropped (re-inferred by the
    consumers).

    Returns:
        Number of rewritten items (0: file untouched).
    """
    import onnx
    from onnx import numpy_helper

    double, single = onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT
    model = onnx.load(str(path))
    changed = 0

    def demote(tensor: onnx.TensorProto) -> None:
        arr = numpy_helper.to_array(tensor).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))

    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == double:
                attr.i = single
                changed += 1
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == double:
                demote(attr.t)
                changed += 1
    for init in model.graph.initializer:
        if init.data_type == double:
            demote(init)
            changed += 1
    if changed:
        del model.graph.value_info[:]
        onnx.save(model, str(path))
    return changed


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


# ------------------------------------------------------------------------------ verification
def onnx_session(path: str | Path, providers: Iterable[str] = ("CPUExecutionProvider",)):
    """ONNX Runtime session over ``path`` (verification helper; see the ORT backend for serving).

    Raises:
        ModelLoadError: ONNX Runtime cannot load the file.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def max_abs_errors(
    session: object,
    reference: Callable[..., tuple[Tensor, ...]],
    feeds: Mapping[str, np.ndarray],
    spec: StageSpec,
    valid: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| of every output on one set of inputs.

    Args:
        session: an ``onnxruntime.InferenceSession`` of the graph.
        reference: the PyTorch module/callable the graph was exported from.
        feeds: inputs by name.
        spec: I/O names.
        valid: optional boolean masks by output name, broadcastable to the output, selecting
            the elements compared (e.g. only the real text tokens).

    Returns:
        ``{output name: max abs error}`` (float, same units as the output).
    """
    # the exporter drops inputs the traced computation never reads (e.g. a pyramid level that
    # a shallow decoder does not use); feed what the graph has
    graph_inputs = {i.name for i in session.get_inputs()}  # type: ignore[attr-defined]
    outs = session.run(list(spec.outputs), {k: feeds[k] for k in spec.inputs if k in graph_inputs})  # type: ignore[attr-defined]
    with torch.no_grad():
        ref = reference(*(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in spec.inputs))
    errors = {}
    for name, got, want in zip(spec.outputs, outs, ref):
        diff = np.abs(np.asarray(got, np.float64) - want.double().numpy())
        if valid is not None and name in valid:
            diff = diff[np.broadcast_to(valid[name], diff.shape)]
        errors[name] = float(diff.max()) if diff.size else 0.0
    return errors


# ------------------------------------------------------------------------------- whole model
@dataclass
class StageExport:
    """One exported graph.

    Attributes:
        stage: stage name (``visual``, ``audio``, ``fuse``, ``decode``, ``text``).
        file: file name inside the export directory.
        inputs: input name -> [shape, dtype].
        outputs: output names in order.
        max_abs_error: output name -> max |ORT - PyTorch| on the verification inputs (empty when
            not verified). For ``text`` only real (unpadded) tokens are compared: padded
            positions are masked out of every attention in EEMC.
        seconds: export wall time (s).
        sha256: SHA-256 of the ONNX bytes (keys TensorRT engines).
    """

    stage: str
    file: str
    inputs: dict[str, list]
    outputs: list[str]
    max_abs_error: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    sha256: str = ""


@dataclass
class ExportReport:
    """Result of :func:`export_eemc`; also the content of ``manifest.json``.

    Attributes:
        directory: export directory.
        format: :data:`EXPORT_FORMAT`.
        fingerprint: :func:`model_fingerprint` of the exported model.
        config: the model config (``EEMCConfig.to_dict()``).
        opset: ONNX opset.
        half: graphs are float16 inside (float32 I/O).
        torch_version: exporter's torch version.
        stages: one :class:`StageExport` per graph.
        text_model: directory of the exported text encoder, or "" when not exported.
    """

    directory: str
    format: str
    fingerprint: str
    config: dict
    opset: int
    half: bool
    torch_version: str
    stages: list[StageExport]
    text_model: str = ""

    @property
    def max_error(self) -> float:
        """Largest verification error over every output of every stage (0 when unverified)."""
        return max((e for s in self.stages for e in s.max_abs_error.values()), default=0.0)

    def stage(self, name: str) -> StageExport:
        """The :class:`StageExport` of ``name``.

        Raises:
            KeyError: the stage was not exported.
        """
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(f"stage {name!r} not in export {self.directory}")

    def to_dict(self) -> dict:
        """JSON-serialisable dict (the manifest)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExportReport:
        """Inverse of :meth:`to_dict`."""
        stages = [StageExport(**s) for s in data["stages"]]
        return cls(**{**data, "stages": stages})

    def table(self) -> str:
        """Plain-text table: stage, file size, output, max abs error."""
        lines = [f"{'stage':<8} {'file':<12} {'MiB':>7}  {'output':<16} {'max |ORT-torch|':>16}"]
        for s in self.stages:
            size = (Path(self.directory) / s.file).stat().st_size / 2**20
            errs = s.max_abs_error or {o: float("nan") for o in s.outputs}
            for i, (out, err) in enumerate(errs.items()):
                head = f"{s.stage:<8} {s.file:<12} {size:>7.2f}" if i == 0 else " " * 29
                lines.append(f"{head}  {out:<16} {err:>16.3e}")
        return "\n".join(lines)


def _onnx_io(path: Path) -> dict[str, list]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    io = {}
    for value in graph.input:
        t = value.type.tensor_type
        io[value.name] = [[d.dim_value for d in t.shape.dim], onnx.TensorProto.DataType.Name(t.elem_type).lower()]
    return io


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
        rec = StageExport(name, path.name, _onnx_io(path), list(STAGES[name].outputs), seconds=time.perf_counter() - t0)
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
    rec = StageExport(TEXT_STAGE, path.name, _onnx_io(path), list(TEXT_SPEC.outputs), seconds=time.perf_counter() - t0)
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


def read_manifest(directory: str | Path) -> ExportReport:
    """Read ``manifest.json`` of an export directory.

    Raises:
        ModelLoadError: missing or unreadable manifest, or a graph file it lists is missing.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        report = ExportReport.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot read export manifest {path}: {exc}") from exc
    for s in report.stages:
        if not (directory / s.file).is_file():
            raise ModelLoadError(f"export {directory} lists {s.file} but the file is missing")
    report.directory = str(directory)
    return report


def cached_export_dir(
    model: EEMC, cache_dir: str | Path | None = None, *, half: bool = False, opset: int = OPSET, verify: bool = True
) -> ExportReport:
    """Export directory of ``model`` in the cache, exporting only when it is not there yet.

    The directory is ``<cache_dir>/onnx/eemc-<profile>-<fingerprint[:16]>[-fp16]``; it is
    reused when its manifest has the same format, fingerprint, opset and precision and every
    graph file exists. A new export is written to a temporary sibling and renamed into place,
    so concurrent starts never see half-written files.

    Args:
        model: EEMC model.
        cache_dir: cache root; None = :func:`default_cache_dir`.
        half: float16 graphs (see :func:`export_eemc`).
        opset: ONNX opset.
        verify: verify a NEW export against PyTorch.

    Returns:
        The :class:`ExportReport` of the (existing or new) export.

    Raises:
        ModelLoadError: export failed or the cache directory cannot be written.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = model_fingerprint(model)
    target = root / "onnx" / f"eemc-{model.cfg.profile}-{fingerprint[:16]}{'-fp16' if half else ''}"
    if (target / MANIFEST).is_file():
        try:
            report = read_manifest(target)
        except ModelLoadError:
            report = None
        if (
            report is not None
            and report.format == EXPORT_FORMAT
            and report.fingerprint == fingerprint
            and report.opset == opset
            and report.half == half
            and {s.stage for s in report.stages} >= set(STAGES)
        ):
            return report
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        export_eemc(model, tmp, opset=opset, half=half, verify=verify)
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same export first
        report = read_manifest(target)  # directory now names the final location
        (target / MANIFEST).write_text(json.dumps(report.to_dict(), indent=2))
    except OSError as exc:
        raise ModelLoadError(f"cannot write the ONNX export cache {target}: {exc}") from exc
    return report


def check_tolerance(report: ExportReport, atol: float) -> list[str]:
    """Outputs whose verification error exceeds ``atol``, as ``"stage.output=err"`` strings.

    Raises:
        ConfigError: ``atol`` is negative.
    """
    if atol < 0:
        raise ConfigError(f"atol must be >= 0, got {atol}")
    return [
        f"{s.stage}.{name}={err:.3e}"
        for s in report.stages
        for name, err in s.max_abs_error.items()
        if not err <= atol
    ]


# --------------------------------------------------------------------------- official model
OFFICIAL_STAGES: dict[str, StageSpec] = {
    "visual": StageSpec(
        ("pixel_values",), ("swin_last", "multi_scale_0", "multi_scale_1", "multi_scale_2", "mask_features")
    ),
    "audio": StageSpec(("log_mel",), ("audio_embedding",)),
    "fuse": StageSpec(("visual_tokens", "audio_embeddings", "text_hidden"), ("prompts",)),
    "decode": StageSpec(
        ("multi_scale_0", "multi_scale_1", "multi_scale_2", "mask_features", "prompts"), ("mask_logits",)
    ),
}
"""Named I/O of the released model's graphs (``refavs_ros.models.official.OfficialEEMC``):

* ``visual``: normalised pixels (1, 3, 384, 384) -> last Swin stage (1, 1024, 12, 12), the 3
  pixel-decoder maps (1, 256, 12|24|48, ...) and mask features (1, 256, 96, 96) (per frame);
* ``audio``: VGGish, log-mel (1, 96, 64) -> (1, 128);
* ``fuse``: the fusion over a FULL window of T frames (tokens (1, T, 144, 1024), audio
  (1, T, 128), text (1, 25, 768)) -> prompts of the newest frame (1, Ns, 256);
* ``decode``: prompted Mask2Former decoder + query weighting -> logits (1, 256, 256).
"""


class _OfficialVisual(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        f = self.net.encode_frames(pixel_values)
        return (f.swin_last, *f.multi_scale, f.mask_features)


class _OfficialFuse(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, visual_tokens: Tensor, audio_embeddings: Tensor, text_hidden: Tensor) -> tuple[Tensor]:
        return (self.net.fuse(visual_tokens, audio_embeddings, text_hidden, last_frames=1),)


class _OfficialDecode(nn.Module):
    def __init__(self, net: nn.Module, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.net = net
        self.output_size = tuple(output_size)

    def forward(self, ms0: Tensor, ms1: Tensor, ms2: Tensor, mask_features: Tensor, prompts: Tensor) -> tuple[Tensor]:
        cls_logits, mask_logits = self.net.decode_queries((ms0, ms1, ms2), mask_features, prompts)
        return (self.net.query_weighted_logits(cls_logits, mask_logits, self.output_size),)


class _OfficialAudio(nn.Module):
    def __init__(self, vggish: nn.Module) -> None:
        super().__init__()
        self.vggish = vggish

    def forward(self, log_mel: Tensor) -> tuple[Tensor]:
        return (self.vggish(log_mel),)


def official_feeds(net: nn.Module, window: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Seeded example inputs of every official graph at batch 1 and window ``window``.

    The decoder inputs are the visual stage's real outputs on a random image and the prompts are
    the fusion's real output, so the decoder is checked on in-distribution values.
    """
    from refavs_ros.models.official import visual_tokens

    g = torch.Generator().manual_seed(seed)
    h, w = net.image_size
    px = torch.randn(1, 3, h, w, generator=g)
    with torch.no_grad():
        feats = net.encode_frames(px)
        tokens = visual_tokens(feats.swin_last)  # (1, S, C)
        tok = torch.randn(1, window, *tokens.shape[1:], generator=g) * tokens.std()
        tok[:, -1] = tokens[0]
        aud = torch.randn(1, window, net.audio_proj[0].in_features, generator=g)
        txt = torch.randn(1, TEXT_TOKENS_OFFICIAL, net.text_proj[0].in_features, generator=g)
        prompts = net.fuse(tok, aud, txt, last_frames=1)
    return {
        "visual": {"pixel_values": px.numpy()},
        "audio": {"log_mel": torch.randn(1, 96, 64, generator=g).numpy()},
        "fuse": {"visual_tokens": tok.numpy(), "audio_embeddings": aud.numpy(), "text_hidden": txt.numpy()},
        "decode": {
            "multi_scale_0": feats.multi_scale[0].numpy(),
            "multi_scale_1": feats.multi_scale[1].numpy(),
            "multi_scale_2": feats.multi_scale[2].numpy(),
            "mask_features": feats.mask_features.numpy(),
            "prompts": prompts.numpy(),
        },
    }


TEXT_TOKENS_OFFICIAL = 25
"""Expression length of the released model in tokens (DistilRoBERTa)."""


def export_official(
    net: nn.Module,
    out_dir: str | Path,
    *,
    window: int = 10,
    vggish: nn.Module | None = None,
    text_model_dir: str | Path | None = None,
    output_size: tuple[int, int] = (256, 256),
    opset: int = OPSET,
    verify: bool = True,
) -> ExportReport:
    """Export the released model (:class:`refavs_ros.models.official.OfficialEEMC`) stage-wise.

    Graphs and names: :data:`OFFICIAL_STAGES`. The fusion graph is exported for the steady-state
    window of ``window`` frames only (``nn.MultiheadAttention`` bakes the sequence length into
    a traced graph; the shorter start-up windows of ``OfficialStreamEngine`` would need one graph
    per length). No ONNX/TensorRT backend runs these graphs yet: ``OfficialStreamEngine`` calls
    PyTorch directly; the graphs are for deployment tooling (trtexec, ONNX Runtime sessions).

    Args:
        net: the released model (CPU float32 copy is exported; the caller's model is untouched).
        out_dir: export directory (``<stage>.onnx`` + ``manifest.json``).
        window: frames per fusion window (10 released).
        vggish: the VGGish network to export as ``audio`` (skipped when None).
        text_model_dir: DistilRoBERTa directory to export as ``text`` (L = 25; all 25 rows are
            verified since the released fusion uses padded rows too), or None.
        output_size: (height, width) of the decoder's logits in pixels (256x256 released).
        opset: ONNX opset.
        verify: check every graph with ONNX Runtime against PyTorch.

    Returns:
        The :class:`ExportReport` (``config`` holds ``{"model": "official", "window": ...}``).

    Raises:
        ModelLoadError: an export or an ONNX Runtime load failed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu_net = copy.deepcopy(net).float().cpu().eval()
    modules: dict[str, nn.Module] = {
        "visual": _OfficialVisual(cpu_net),
        "fuse": _OfficialFuse(cpu_net),
        "decode": _OfficialDecode(cpu_net, output_size),
    }
    if vggish is not None:
        modules["audio"] = _OfficialAudio(copy.deepcopy(vggish).float().cpu().eval())
    trace = official_feeds(cpu_net, window, seed=0)
    check = official_feeds(cpu_net, window, seed=1)
    records = []
    for name in ("visual", "audio", "fuse", "decode"):
        if name not in modules:
            continue
        spec = OFFICIAL_STAGES[name]
        t0 = time.perf_counter()
        path = export_module(modules[name].eval(), trace[name], spec, out / f"{name}.onnx", opset=opset)
        rec = StageExport(name, path.name, _onnx_io(path), list(spec.outputs), seconds=time.perf_counter() - t0)
        if verify:
            rec.max_abs_error = max_abs_errors(onnx_session(path), modules[name], check[name], spec)
        rec.sha256 = file_sha256(path)
        records.append(rec)
    if text_model_dir is not None:
        records.append(
            export_text(text_model_dir, TEXT_TOKENS_OFFICIAL, out / f"{TEXT_STAGE}.onnx", opset=opset, verify=verify,
                        valid_only=False)
        )
    report = ExportReport(
        directory=str(out),
        format=EXPORT_FORMAT,
        fingerprint=model_fingerprint(cpu_net, None),
        config={"model": "official", "window": window, "image_size": list(cpu_net.image_size),
                "output_size": list(output_size)},
        opset=opset,
        half=False,
        torch_version=torch.__version__,
        stages=records,
        text_model=str(text_model_dir) if text_model_dir is not None else "",
    )
    (out / MANIFEST).write_text(json.dumps(report.to_dict(), indent=2))
    return report
