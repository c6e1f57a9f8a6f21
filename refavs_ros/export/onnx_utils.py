"""ONNX helpers shared by every export: tracing a module to a fixed-shape graph, the float64
rewrite, float16 wrapping, and verification against PyTorch with ONNX Runtime.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 17 (checked
with torch 2.13; the dynamo exporter needs ``onnxscript``, which is not a dependency). Every
export is verified like segment-anything's ``scripts/export_onnx_model.py``: the graph runs in
ONNX Runtime (CPU) on seeded example inputs and the maximum absolute error of every output
against PyTorch is reported.
"""


from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from refavs_ros.errors import ModelLoadError
from refavs_ros.models.eemc_stages import StageSpec

OPSET = 17
"""ONNX opset of every exported graph."""


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
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> Path:
    """Trace ``module(*feeds in spec order)`` into an ONNX file (fixed shapes unless named).

    Args:
        module: callable module returning a tuple of tensors in ``spec.outputs`` order.
        feeds: example inputs by name (their shapes become the graph's fixed shapes).
        spec: input and output names.
        path: output ``.onnx`` file (parent directories are created).
        opset: ONNX opset.
        dynamic_axes: ``{input or output name: {axis: symbolic name}}`` of axes left dynamic
            (``torch.onnx.export``'s argument); the module must compute them without baking
            the example's size in (check with inputs of other sizes).

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
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types; re-raised with context
        raise ModelLoadError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    demote_float64(path)
    return path


def release_memory() -> None:
    """Return freed heap memory to the operating system (between large exports).

    ``gc.collect()`` and, on glibc, ``malloc_trim(0)``: the ONNX protobufs and traced graphs of a
    large model are freed as many small blocks that glibc would otherwise keep in the process,
    so the resident size of an export of several graphs (and of the node that exported them
    before serving) grows with every graph. No-op elsewhere.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


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


def onnx_io_shapes(path: Path) -> dict[str, list]:
    """Input name -> ``[shape, dtype name]`` of an ONNX file (dims 0 = dynamic), weights not loaded."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    io = {}
    for value in graph.input:
        t = value.type.tensor_type
        io[value.name] = [[d.dim_value for d in t.shape.dim], onnx.TensorProto.DataType.Name(t.elem_type).lower()]
    return io


