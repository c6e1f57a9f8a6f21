"""The released model (tiny random stand-in) on the ONNX Runtime and TensorRT backends.

Oracle: the PyTorch backend (eager, the released computation: ``nn.MultiheadAttention``,
``cumsum``), itself tested against ``forward_clip`` in ``test_engine_official.py``. The full-size
architecture is checked by ``bench/official_backends.py --parity`` (too slow for the suite).

Tolerances (stated here, used below):

* ONNX Runtime vs PyTorch, float32 on the CPU: every stage output within ``ORT_ATOL`` absolute
  (measured ~1e-6 on the tiny model); streaming logits within ``ORT_ATOL`` and binary masks at
  the released J threshold (sigmoid > 0.4) equal on >= 99.99 % of pixels.
* TensorRT (GPU only): FP32 (TF32 off) within ``1e-3 * max(1, max|ref|)``; mixed FP16 within
  ``5e-2 * max(1, max|ref|)`` per stage, and binary masks at 0.4 equal on >= 99.9 % (FP32) /
  99 % (FP16) of pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_official_helpers import make_checkpoint, make_models_dir, tiny_model, tiny_vggish

from refavs_ros.backends.onnx_backend import OnnxRuntimeBackend
from refavs_ros.backends.registry import create_backend
from refavs_ros.backends.torch_backend import TorchBackend
from refavs_ros.engines.build import build_engine, official_engine
from refavs_ros.engines.official import OfficialStreamEngine
from refavs_ros.errors import BackendUnavailableError, InputError
from refavs_ros.export.cache import read_manifest
from refavs_ros.export.official import OFFICIAL_GRAPH_VERSION, fp32_nodes, official_feeds
from refavs_ros.export.cache import model_fingerprint
from refavs_ros.models.official_loaders import (
    MASK2FORMER_DIR,
    TEXT_DIR,
    ImagePreprocessor,
    OfficialTextEncoder,
    load_official,
)
from refavs_ros.models.official_stages import OFFICIAL_STAGES, OfficialStageModel

COMMAND = "the dog barking on the left"
ORT_ATOL = 1e-4
MASK_THRESHOLD = 0.4  # released J threshold (sigmoid > 0.4)

try:
    import tensorrt  # noqa: F401

    HAS_TRT = True
except ImportError:
    HAS_TRT = False
HAS_CUDA = torch.cuda.is_available()
TRT_REASON = (
    f"TensorRT parity needs the tensorrt package and a CUDA GPU (tensorrt installed: {HAS_TRT}, "
    f"torch sees a GPU: {HAS_CUDA})"
)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_text_dir):
    return make_models_dir(tmp_path_factory.mktemp("official_models"), tiny_text_dir)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A released-layout checkpoint of a tiny random model whose masks are not all one value."""
    net = tiny_model(seed=5)
    with torch.no_grad():  # spread the random model's logits (|x| < 0.5) so the masks are not all 1
        last = net.model_v.model.transformer_module.decoder.mask_predictor.mask_embedder.get_submodule("2.0")
        last.weight.mul_(40.0)
        last.bias.mul_(40.0)
    return make_checkpoint(tmp_path_factory.mktemp("official_ckpt") / "ckpt_best_miou.pth", net)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("official_cache")


@pytest.fixture(scope="module")
def stage_model(ckpt, models_dir) -> OfficialStageModel:
    parts = load_official(ckpt, models_dir)
    return OfficialStageModel(parts.model, parts.vggish)


@pytest.fixture(scope="module")
def ort_backend(stage_model, cache) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend.from_model(stage_model, cache_dir=cache)


def _clip(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(n)]
    mels = [rng.standard_normal((96, 64)).astype(np.float32) for _ in range(n)]
    return images, mels


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    return float(((sig(a) > MASK_THRESHOLD) == (sig(b) > MASK_THRESHOLD)).mean())


def test_export_has_a_dynamic_window_and_lives_in_the_cache(ort_backend, stage_model, cache):
    report = read_manifest(ort_backend.export_dir)
    assert ort_backend.export_dir.parent == cache / "onnx" and ort_backend.export_dir.name.startswith("official-")
    assert report.config["model"] == "official" and report.config["graph_version"] == OFFICIAL_GRAPH_VERSION
    assert report.stage("fuse").inputs["visual_tokens"][0] == [1, 0, 4, 128]  # 0 = the dynamic window axis
    assert report.stage("decode").inputs["prompts"][0] == [1, 0, 32]
    assert report.max_error <= ORT_ATOL, report.table()
    assert set(ort_backend.specs) == set(OFFICIAL_STAGES)


@pytest.mark.parametrize("window", [1, 2, 3, 10, 17])
def test_every_stage_matches_pytorch_at_every_window(ort_backend, stage_model, window):
    """One graph per stage serves every window (start-up 1..N-1, steady N, and beyond)."""
    ref = TorchBackend(stage_model)
    feeds = official_feeds(stage_model, window, seed=window)
    for stage in OFFICIAL_STAGES:
        want, got = ref.run(stage, feeds[stage]), ort_backend.run(stage, feeds[stage])
        assert set(got) == set(OFFICIAL_STAGES[stage].outputs)
        for name in want:
            assert got[name].shape == want[name].shape and got[name].dtype == np.float32
            assert np.abs(got[name] - want[name]).max() <= ORT_ATOL, (stage, name, window)
    assert feeds["decode"]["prompts"].shape[1] == window + 4 + 27  # Na + S + L + 2


def test_wrong_fixed_axes_are_rejected(ort_backend, stage_model):
    feeds = official_feeds(stage_model, 2)["fuse"]
    bad = dict(feeds, visual_tokens=feeds["visual_tokens"][:, :, :3])  # 3 tokens per frame, not 4
    with pytest.raises(InputError, match="visual_tokens"):
        ort_backend.run("fuse", bad)
    with pytest.raises(KeyError, match="beta"):
        ort_backend.run("fuse", {k: v for k, v in feeds.items() if k != "beta"})


def _engines(stage_model, ort_backend, models_dir, num_frames):
    processor = ImagePreprocessor.from_pretrained(models_dir / MASK2FORMER_DIR)
    text = OfficialTextEncoder.from_pretrained(models_dir / TEXT_DIR)
    engines = {
        "torch": OfficialStreamEngine(TorchBackend(stage_model), processor, text, num_frames=num_frames),
        "onnxruntime": OfficialStreamEngine(ort_backend, processor, text, num_frames=num_frames),
    }
    for e in engines.values():
        e.set_command(COMMAND)
    return engines


def test_streaming_engine_on_onnxruntime_equals_pytorch_from_start_up_to_steady_state(
    stage_model, ort_backend, models_dir
):
    engines = _engines(stage_model, ort_backend, models_dir, num_frames=4)
    images, mels = _clip(7, seed=3)
    for k, (image, mel) in enumerate(zip(images, mels)):
        (lt, pt), (lo, po) = (e.step(e.encode_frame(image), e.encode_audio(mel), commit=True) for e in engines.values())
        assert lo.shape == lt.shape == (256, 256) and lo.dtype == np.float32
        assert np.abs(lo - lt).max() <= ORT_ATOL, k
        assert _agreement(lo, lt) >= 0.9999, k
        assert po == pt == float("inf")
        assert engines["onnxruntime"].memory_length == min(k + 1, 3)
    for e in engines.values():  # beta is a graph input: changing it needs no re-export
        e.set_beta(0.5)
    (lt, _), (lo, _) = (e.step(e.encode_frame(images[0]), e.encode_audio(mels[0]), commit=False) for e in engines.values())
    assert np.abs(lo - lt).max() <= ORT_ATOL


def test_fp32_rules_select_mask2formers_fp16_hazards(ort_backend):
    import onnx

    d = ort_backend.export_dir
    visual = fp32_nodes(d / "visual.onnx", "visual")
    nodes = {n.name: n.op_type for n in onnx.load(str(d / "visual.onnx")).graph.node}
    for name, op in nodes.items():
        if op in ("Softmax", "LayerNormalization", "GridSample", "InstanceNormalization"):
            assert name in visual, name
    assert any("/decoder/encoder/layers.0/self_attn/" in n for n in visual)  # deformable attention
    # each softmax's logit MatMul is kept; the Swin MLPs are not
    assert any(nodes[n] == "MatMul" and "/attention/" in n for n in visual)
    mlp = [n for n, op in nodes.items() if op == "MatMul" and ("/intermediate/" in n or "/mlp/" in n)]
    assert mlp and not any(n in visual for n in mlp)
    decode = fp32_nodes(d / "decode.onnx", "decode")
    assert any("/mask_predictor" in n for n in decode) and "/Softmax" in decode  # final query weighting
    fuse = fp32_nodes(d / "fuse.onnx", "fuse")
    assert len(fuse) == len(onnx.load(str(d / "fuse.onnx")).graph.node)  # the fusion stays FP32


def test_builder_reuses_the_cache_and_re_exports_stale_graphs(ckpt, models_dir, cache, ort_backend, stage_model):
    export_dir = ort_backend.export_dir
    stamp = (export_dir / "manifest.json").stat().st_mtime_ns
    engine = build_engine(ckpt, model="official", backend="onnxruntime", models_dir=models_dir, engine_dir=cache,
                          num_frames=3)
    assert isinstance(engine.backend, OnnxRuntimeBackend) and engine.window == 3
    assert engine.backend.export_dir == export_dir  # same weights: the graphs the fixture exported
    assert (export_dir / "manifest.json").stat().st_mtime_ns == stamp  # nothing re-exported
    other = OfficialStageModel(tiny_model(seed=12), tiny_vggish())
    assert model_fingerprint(other)[:16] != export_dir.name.removeprefix("official-")  # other weights, other key
    # a cache written by an older graph layout is re-exported, not loaded
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["config"]["graph_version"] = OFFICIAL_GRAPH_VERSION - 1
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    again = official_engine(ckpt, models_dir, backend="onnxruntime", engine_dir=cache)
    assert again.backend.export_dir == export_dir
    assert read_manifest(export_dir).config["graph_version"] == OFFICIAL_GRAPH_VERSION


def test_node_settings_build_the_official_model_on_onnxruntime(ckpt, models_dir, cache, ort_backend):
    """The node's parameters reach the builder: model official + backend onnxruntime + engine cache."""
    from refavs_ros.node.params import NodeSettings
    from refavs_ros.predictor import StreamingPredictor

    settings = NodeSettings.from_params({
        "model": "official", "backend": "onnxruntime", "weights_path": str(ckpt), "models_dir": str(models_dir),
        "engine_cache_dir": str(cache), "num_frames": 4,
    })
    predictor = StreamingPredictor.from_pretrained(settings.weights, **settings.pretrained_kwargs(lambda: False))
    assert predictor.engine.name == "official" and predictor.engine.backend.name == "onnxruntime"
    assert predictor.engine.backend.export_dir == ort_backend.export_dir and predictor.engine.window == 4


def test_window_above_a_tensorrt_profile_is_a_config_error(stage_model, models_dir):
    from types import SimpleNamespace

    from refavs_ros.errors import ConfigError

    limited = SimpleNamespace(name="tensorrt", max_window=6, run=TorchBackend(stage_model).run)
    processor = ImagePreprocessor.from_pretrained(models_dir / MASK2FORMER_DIR)
    text = OfficialTextEncoder.from_pretrained(models_dir / TEXT_DIR)
    engine = OfficialStreamEngine(limited, processor, text, num_frames=6)
    with pytest.raises(ConfigError, match="largest window 6"):
        engine.set_window(7)
    with pytest.raises(ConfigError, match="largest window 6"):
        OfficialStreamEngine(limited, processor, text, num_frames=10)


def test_replay_on_onnxruntime_gives_the_torch_masks(ckpt, models_dir, cache, tmp_path):
    """Done-when of issue 12: refavs-replay --model official --backend onnxruntime on a bag with a
    released-layout checkpoint; masks equal the torch backend's on >= 99.99 % of pixels."""
    from test_replay import make_scene

    from refavs_ros.rosio import bagio
    from refavs_ros.tools import replay as R

    scene = make_scene(seed=3, num_frames=5, height=36, width=52)
    for t in range(len(scene.frame_stamps_ns)):  # frames 1 s apart: every frame is committed
        scene.frame_stamps_ns[t] = scene.frame_stamps_ns[0] + t * 1_000_000_000
    scene.audio = np.random.default_rng(0).integers(-2000, 2000, 16000 * 7, dtype=np.int16)
    bagio.write_scene_bag(scene, tmp_path / "bag")
    masks = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"out_{backend}"
        code = R.main([str(tmp_path / "bag"), "--model", "official", "--weights", str(ckpt), "--models-dir",
                       str(models_dir), "--backend", backend, "--engine-dir", str(cache),
                       "--num-frames", "3", "--output", str(out), "--no-progress"])
        assert code == 0, backend
        with bagio.BagReader(out) as bag:
            msgs = bag.read_sorted([bagio.TOPIC_MASK]).messages
        masks[backend] = np.stack([np.asarray(m.message.data, np.uint8).reshape(-1) for m in msgs])
    assert masks["torch"].shape == (5, 36 * 52)
    assert 0.01 < masks["torch"].mean() / 255 < 0.99  # not a trivial all-0 / all-1 mask
    assert (masks["torch"] == masks["onnxruntime"]).mean() >= 0.9999


def test_tensorrt_for_the_official_model_is_unavailable_without_a_gpu(stage_model, cache):
    if HAS_TRT and HAS_CUDA:
        pytest.skip("a GPU and TensorRT are present: the parity test below runs instead")
    with pytest.raises(BackendUnavailableError, match="TensorRT|GPU"):
        create_backend("tensorrt", stage_model, cache_dir=cache)


@pytest.mark.skipif(not (HAS_TRT and HAS_CUDA), reason=TRT_REASON)
@pytest.mark.parametrize("precision,rel_tol,agree", [("fp32", 1e-3, 0.999), ("fp16", 5e-2, 0.99)])
def test_tensorrt_matches_pytorch_at_every_window_and_caches_engines(
    stage_model, cache, models_dir, precision, rel_tol, agree
):  # pragma: no cover - GPU only
    from refavs_ros.backends.tensorrt_backend import TensorRTBackend

    trt_backend = TensorRTBackend.from_model(stage_model, cache_dir=cache, precision=precision, max_window=6,
                                             opt_window=4)
    engines = sorted((cache / "tensorrt").glob("*.engine"))
    stamps = {p: p.stat().st_mtime_ns for p in engines}
    ref = TorchBackend(stage_model)
    for window in (1, 4, 6):
        feeds = official_feeds(stage_model, window, seed=window)
        for stage in OFFICIAL_STAGES:
            want, got = ref.run(stage, feeds[stage]), trt_backend.run(stage, feeds[stage])
            for name in want:
                scale = max(1.0, float(np.abs(want[name]).max()))
                assert np.abs(got[name] - want[name]).max() <= rel_tol * scale, (precision, stage, name, window)
            if stage == "decode":
                assert _agreement(got["mask_logits"], want["mask_logits"]) >= agree
    with pytest.raises(InputError, match="optimization profile"):
        trt_backend.run("fuse", official_feeds(stage_model, 7)["fuse"])
    records = [json.loads(p.with_name(p.name + ".json").read_text()) for p in engines]
    if precision == "fp16":
        assert any(r["fp32_layers"].get("softmax", 0) > 0 for r in records)
    TensorRTBackend.from_model(stage_model, cache_dir=cache, precision=precision, max_window=6, opt_window=4)
    assert {p: p.stat().st_mtime_ns for p in engines} == stamps  # a second start rebuilds nothing


def test_fp32_constraints_pin_float_layers_only():
    """The layer walk of a mixed-precision build, on stand-ins of TensorRT's network objects
    (the real API runs only on a GPU): type rules, ONNX-name matching with the parser's suffixes,
    and no constraint on shape/index layers."""
    from types import SimpleNamespace

    from refavs_ros.backends.tensorrt_backend import apply_fp32_constraints

    trt = SimpleNamespace(
        LayerType=SimpleNamespace(SOFTMAX="softmax", NORMALIZATION="norm", GRID_SAMPLE="grid", MATRIX_MULTIPLY="mm",
                                  SHUFFLE="shuffle", ELEMENTWISE="ew"),
        float32="f32", float16="f16", int64="i64",
    )

    class Layer:
        def __init__(self, name, kind, dtype="f32", shape_tensor=False):
            self.name, self.type, self.precision = name, kind, None
            self._out = SimpleNamespace(dtype=dtype, is_shape_tensor=shape_tensor)
            self.num_outputs, self.output_types = 1, {}

        def get_output(self, k):
            return self._out

        def set_output_type(self, k, dtype):
            self.output_types[k] = dtype

    layers = [
        Layer("/enc/attention/Softmax", "softmax"),
        Layer("/enc/layernorm/LayerNormalization", "norm"),
        Layer("/enc/attention/MatMul", "mm"),  # listed node
        Layer("/enc/attention/MatMul_1", "mm"),  # another node, not listed
        Layer("/enc/attention/MatMul_output_0_shuffle", "shuffle"),  # helper layer of the listed node
        Layer("/enc/attention/MatMul_2", "ew", dtype="i64"),  # listed, but an index computation
        Layer("/enc/Shape_3", "shuffle", shape_tensor=True),
        Layer("/enc/mlp/fc1/MatMul", "mm"),
    ]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    fp32 = {"/enc/attention/MatMul": "attention logits", "/enc/attention/MatMul_2": "attention logits",
            "/enc/Shape_3": "x"}
    known = frozenset({"/enc/attention/MatMul", "/enc/attention/MatMul_1", "/enc/attention/MatMul_2", "/enc/Shape_3",
                       "/enc/mlp/fc1/MatMul"})
    counts = apply_fp32_constraints(trt, network, fp32, known)
    pinned = [layer.name for layer in layers if layer.precision == "f32"]
    assert pinned == ["/enc/attention/Softmax", "/enc/layernorm/LayerNormalization", "/enc/attention/MatMul",
                      "/enc/attention/MatMul_output_0_shuffle"]
    assert all(layer.output_types == {0: "f32"} for layer in layers if layer.name in pinned)
    assert counts == {"total layers": 8, "softmax": 1, "normalization": 1, "attention logits": 2}
