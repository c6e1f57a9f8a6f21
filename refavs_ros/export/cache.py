"""The export/engine cache: cache directory, fingerprints, export manifests and reuse.

An export directory holds ``<stage>.onnx`` files and ``manifest.json`` (model fingerprint,
config, opset, torch version, per-stage I/O names and shapes and the verification errors;
:class:`ExportReport`). :func:`cached_export_dir` reuses a directory whose manifest matches the
model (fingerprint, format, opset, precision) and exports otherwise (atomically: written to a
temporary sibling, then renamed). The ONNX Runtime and TensorRT backends key their caches here;
TensorRT engines are keyed further by the ONNX file's SHA-256 (:func:`file_sha256`).
"""


from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from refavs_ros.errors import ConfigError, ModelLoadError
from refavs_ros.export.onnx_utils import OPSET
from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.eemc import EEMC
from refavs_ros.models.eemc_stages import STAGES
from refavs_ros.resources import default_cache_dir, file_sha256  # noqa: F401  (re-exported)

EXPORT_FORMAT = "refavs_ros.onnx.v1"
"""``format`` value of ``manifest.json``; a cache directory with another value is re-exported."""

MANIFEST = "manifest.json"
"""File name of the export manifest inside an export directory."""

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
    for name, tensor in sorted(model.state_dict().items()):  # ~1 s per 500 MB of weights
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


def is_official(model: nn.Module) -> bool:
    """True for the released model's stage bundle (``OfficialStageModel``), False for EEMC."""
    return getattr(getattr(model, "cfg", None), "profile", None) == "official"


def stage_specs_of(model: nn.Module) -> dict:
    """The stage set a model is exported/run with: ``OFFICIAL_STAGES`` or EEMC's ``STAGES``."""
    if is_official(model):
        from refavs_ros.models.official_stages import OFFICIAL_STAGES

        return OFFICIAL_STAGES
    return STAGES


def cached_export_dir(
    model: EEMC | nn.Module,
    cache_dir: str | Path | None = None,
    *,
    half: bool = False,
    opset: int = OPSET,
    verify: bool = True,
) -> ExportReport:
    """Export directory of ``model`` in the cache, exporting only when it is not there yet.

    The directory is ``<cache_dir>/onnx/eemc-<profile>-<fingerprint[:16]>[-fp16]`` for EEMC and
    ``<cache_dir>/onnx/official-<fingerprint[:16]>`` for the released model
    (``OfficialStageModel``: its fingerprint hashes every weight of the checkpoint and of VGGish
    plus the graph config, i.e. it is the checkpoint's hash). It is reused when its manifest has
    the same format, fingerprint, opset, precision (and, for the released model, graph version)
    and every graph file exists. A new export is written to a temporary sibling and renamed into
    place, so concurrent starts never see half-written files.

    Args:
        model: EEMC model, or ``refavs_ros.models.official_stages.OfficialStageModel``.
        cache_dir: cache root; None = :func:`default_cache_dir`.
        half: float16 graphs (see :func:`export_eemc`; EEMC only).
        opset: ONNX opset.
        verify: verify a NEW export against PyTorch.

    Returns:
        The :class:`ExportReport` of the (existing or new) export.

    Raises:
        ConfigError: ``half`` for the released model.
        ModelLoadError: export failed or the cache directory cannot be written.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    official = is_official(model)
    if official and half:
        raise ConfigError("float16 graphs are not exported for the released model (its FP16 TensorRT engines "
                          "are built from the float32 graphs with per-layer FP32 constraints)")
    fingerprint = model_fingerprint(model)
    if official:
        from refavs_ros.export.official import OFFICIAL_GRAPH_VERSION

        target = root / "onnx" / f"official-{fingerprint[:16]}"
        graph_version = OFFICIAL_GRAPH_VERSION
    else:
        target = root / "onnx" / f"eemc-{model.cfg.profile}-{fingerprint[:16]}{'-fp16' if half else ''}"
        graph_version = None
    specs = stage_specs_of(model)
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
            and report.config.get("graph_version") == graph_version
            and {s.stage for s in report.stages} >= set(specs)
        ):
            return report
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if official:
            import time

            from refavs_ros.export.official import export_official

            print(f"refavs_ros: exporting the released model's ONNX graphs to {target} (once per checkpoint; "
                  "minutes on a small CPU)", flush=True)
            t0 = time.perf_counter()
            export_official(model, tmp, opset=opset, verify=verify)
            print(f"refavs_ros: exported in {time.perf_counter() - t0:.1f} s", flush=True)
        else:
            from refavs_ros.export.eemc import (
                export_eemc,  # the exporter needs torch.onnx; cache hits do not
            )

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


