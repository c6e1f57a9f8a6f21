"""Stage-wise ONNX export: named fixed-shape opset-17 graphs that match PyTorch (<= 1e-4), the
manifest, the export cache and the refavs-export CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from refavs_ros.errors import ModelLoadError
from refavs_ros.export.cache import (
    MANIFEST,
    cached_export_dir,
    check_tolerance,
    model_fingerprint,
    read_manifest,
)
from refavs_ros.export.eemc import (
    TEXT_STAGE,
    example_feeds,
    export_eemc,
    export_stage,
    stage_shapes,
)
from refavs_ros.export.onnx_utils import max_abs_errors, onnx_session
from refavs_ros.models.checkpoint import load_eemc
from refavs_ros.models.eemc_stages import STAGES, StageModule
from refavs_ros.models.text import TextEncoder
from refavs_ros.tools.export import main as export_main

ATOL = 1e-4  # float32 ONNX Runtime vs PyTorch, every output of every stage


@pytest.fixture(scope="module")
def model(tiny_weights):
    net, _ = load_eemc(tiny_weights)
    return net


@pytest.fixture(scope="module")
def export(model, tiny_text_dir, tmp_path_factory):
    return export_eemc(model, tmp_path_factory.mktemp("export"), text_model_dir=tiny_text_dir)


def _dims(value_info) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def test_graphs_have_stage_names_fixed_shapes_and_opset_17(export, model):
    shapes = stage_shapes(model.cfg)
    for stage, spec in STAGES.items():
        graph = onnx.load(f"{export.directory}/{stage}.onnx")
        onnx.checker.check_model(graph)
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
        assert [i.name for i in graph.graph.input] == list(spec.inputs)
        assert [o.name for o in graph.graph.output] == list(spec.outputs)
        for value in graph.graph.input:
            assert tuple(_dims(value)) == shapes[stage][value.name], (stage, value.name)
        for value in graph.graph.output:
            assert -1 not in _dims(value) and 0 not in _dims(value), (stage, value.name)
    text = onnx.load(f"{export.directory}/{TEXT_STAGE}.onnx").graph
    n = model.cfg.max_text_tokens
    assert [(i.name, tuple(_dims(i))) for i in text.input] == [("input_ids", (1, n)), ("attention_mask", (1, n))]
    assert [o.name for o in text.output] == ["text_hidden"]
    assert tuple(_dims(text.output[0])) == (1, n, model.cfg.text_dim)


def test_every_output_is_verified_within_tolerance(export):
    assert {s.stage for s in export.stages} == set(STAGES) | {TEXT_STAGE}
    for s in export.stages:
        assert set(s.max_abs_error) == set(s.outputs)
        assert all(np.isfinite(e) for e in s.max_abs_error.values())
    assert check_tolerance(export, ATOL) == [], export.table()
    table = export.table()
    for s in export.stages:
        for out in s.outputs:
            assert out in table


def test_verification_catches_a_graph_that_differs_from_pytorch(model, tmp_path):
    path = export_stage(model, "audio", tmp_path / "audio.onnx")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.audio.fc.bias.add_(0.5)
    feeds = example_feeds(model.cfg, "audio", seed=1)
    same = max_abs_errors(onnx_session(path), StageModule(model, "audio"), feeds, STAGES["audio"])
    moved = max_abs_errors(onnx_session(path), StageModule(other, "audio"), feeds, STAGES["audio"])
    assert same["audio_embedding"] <= ATOL
    assert moved["audio_embedding"] == pytest.approx(0.5, abs=1e-3)


def test_manifest_round_trip(export, model):
    report = read_manifest(export.directory)
    assert report.fingerprint == model_fingerprint(model) == export.fingerprint
    assert report.opset == 17 and report.half is False
    assert report.config == model.cfg.to_dict()
    assert [s.stage for s in report.stages] == [s.stage for s in export.stages]
    assert report.stage("decode").inputs["beta"] == [[1], "float"]
    assert all(len(s.sha256) == 64 for s in report.stages)


def test_manifest_listing_a_missing_graph_is_an_error(model, tmp_path):
    export_eemc(model, tmp_path, stages=["audio"], verify=False)
    (tmp_path / "audio.onnx").unlink()
    with pytest.raises(ModelLoadError, match="audio.onnx"):
        read_manifest(tmp_path)


def test_text_graph_matches_the_pytorch_text_encoder(export, tiny_text_dir, model):
    from refavs_ros.backends.onnx_backend import OnnxTextEncoder

    reference = TextEncoder(tiny_text_dir, model.cfg.max_text_tokens)
    onnx_text = OnnxTextEncoder(f"{export.directory}/{TEXT_STAGE}.onnx", tiny_text_dir)
    assert onnx_text.max_tokens == model.cfg.max_text_tokens
    long_text = "the brown dog that barks at the red ball near the big window on the left side of the room"
    for text in ["a cat", "the man with the guitar", long_text]:
        want_h, want_m = reference.encode([text])
        got_h, got_m = onnx_text.encode([text])
        np.testing.assert_array_equal(got_m, want_m)
        valid = want_m.astype(bool)
        assert np.abs(got_h - want_h)[valid].max() <= ATOL, text
    assert onnx_text.encode([long_text])[1].all()  # truncated to L: no padding at all


def test_fingerprint_follows_the_weights(model):
    same = copy.deepcopy(model)
    assert model_fingerprint(same) == model_fingerprint(model)
    with torch.no_grad():
        same.queries.add_(1e-3)
    assert model_fingerprint(same) != model_fingerprint(model)


def test_export_cache_is_reused_and_keyed_by_weights(model, tmp_path):
    first = cached_export_dir(model, tmp_path)
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "onnx").rglob("*.onnx")}
    again = cached_export_dir(model, tmp_path)
    assert again.directory == first.directory
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "onnx").rglob("*.onnx")} == stamp
    assert json.loads((tmp_path / "onnx" / first.directory.split("/")[-1] / MANIFEST).read_text())["directory"] == first.directory
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.presence[1].bias.add_(1.0)
    moved = cached_export_dir(other, tmp_path)
    assert moved.directory != first.directory and moved.fingerprint == model_fingerprint(other)
    # a broken manifest makes the next start re-export instead of failing
    (tmp_path / "onnx" / first.directory.split("/")[-1] / MANIFEST).write_text("{not json")
    repaired = cached_export_dir(model, tmp_path)
    assert repaired.directory == first.directory and read_manifest(repaired.directory).fingerprint == first.fingerprint


def test_fp16_graphs_keep_float32_io_and_stay_close(model, tmp_path):
    report = export_eemc(model, tmp_path, stages=["visual", "fuse", "decode"], half=True)
    for s in report.stages:
        graph = onnx.load(f"{tmp_path}/{s.file}").graph
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*graph.input, *graph.output])
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
        # float16 arithmetic: ~1e-3 relative on O(1) activations
        assert 0 < max(s.max_abs_error.values()) <= 5e-2, s


def test_cli_exports_and_reports(tiny_weights, tmp_path, capsys):
    out = tmp_path / "cli"
    code = export_main(["--weights", str(tiny_weights), "--out", str(out), "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert {s["stage"] for s in report["stages"]} == set(STAGES) | {TEXT_STAGE}
    assert all((out / s["file"]).is_file() for s in report["stages"])
    assert "max |ORT-torch|" in printed and "mask_logits" in printed


def test_cli_exit_codes(tiny_weights, tmp_path, capsys):
    out = tmp_path / "strict"
    code = export_main(["--weights", str(tiny_weights), "--out", str(out), "--no-text", "--atol", "0"])
    report = read_manifest(out)
    assert code == (1 if check_tolerance(report, 0.0) else 0)
    assert export_main(["--weights", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert export_main(["--profile", "base", "--weights", str(tiny_weights), "--out", str(out)]) == 2
    assert "profile" in capsys.readouterr().err


# ----------------------------------------------------------------------- released (official) model
def _has_float64(path) -> bool:
    graph = onnx.load(str(path)).graph
    casts = [a.i for n in graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    consts = [a.t.data_type for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    inits = [t.data_type for t in graph.initializer]
    return onnx.TensorProto.DOUBLE in casts + consts + inits


def test_official_stages_export_and_match_pytorch(tiny_text_dir, tmp_path):
    from test_official_helpers import tiny_model, tiny_vggish

    from refavs_ros.export.official import OFFICIAL_STAGES, export_official

    net = tiny_model()
    report = export_official(net, tmp_path, window=3, vggish=tiny_vggish(), text_model_dir=tiny_text_dir)
    assert [s.stage for s in report.stages] == ["visual", "audio", "fuse", "decode", TEXT_STAGE]
    for s in report.stages:
        graph = onnx.load(str(tmp_path / s.file)).graph
        spec = OFFICIAL_STAGES.get(s.stage)
        if spec is not None:
            assert [o.name for o in graph.output] == list(spec.outputs)
            # inputs keep their names; the exporter may drop one the tiny decoder never reads
            assert {i.name for i in graph.input} <= set(spec.inputs)
        # Mask2Former's deformable attention traces into float64 arithmetic; it must be gone
        # (ONNX Runtime's GridSample and TensorRT need float32)
        assert not _has_float64(tmp_path / s.file), s.stage
    fuse_in = {k: v[0] for k, v in report.stage("fuse").inputs.items()}
    # the window axis is dynamic (0 = symbolic dim), the text length fixed
    assert fuse_in["visual_tokens"][:2] == [1, 0] and fuse_in["audio_embeddings"][:2] == [1, 0]
    assert fuse_in["text_hidden"][:2] == [1, 25] and fuse_in["beta"] == [1]
    assert report.stage("decode").inputs["prompts"][0][:2] == [1, 0]
    assert report.config["dynamic_window"] is True and report.config["verified_windows"] == [1, 2, 3]
    assert report.stage("decode").max_abs_error["mask_logits"] >= 0
    assert check_tolerance(report, ATOL) == [], report.table()


def test_cli_exports_the_official_model(tiny_text_dir, tmp_path):
    from test_official_helpers import make_checkpoint, make_models_dir, tiny_model

    models_dir = make_models_dir(tmp_path / "models", tiny_text_dir)
    ckpt = make_checkpoint(tmp_path / "ckpt_best_miou.pth", tiny_model())
    out = tmp_path / "official"
    code = export_main(["--profile", "official", "--weights", str(ckpt), "--models-dir", str(models_dir),
                        "--out", str(out), "--window", "2"])
    assert code == 0
    report = read_manifest(out)
    assert report.config["model"] == "official" and report.config["window"] == 2
    assert {s.stage for s in report.stages} == {"visual", "audio", "fuse", "decode", TEXT_STAGE}
    assert export_main(["--profile", "official", "--out", str(out)]) == 2  # no weights / models dir
