"""Stage-wise ONNX export of the released EEMC (:class:`refavs_ros.models.official.OfficialEEMC`)."""


from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

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
)
from refavs_ros.models.eemc_stages import StageSpec

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
        rec = StageExport(name, path.name, onnx_io_shapes(path), list(spec.outputs), seconds=time.perf_counter() - t0)
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
