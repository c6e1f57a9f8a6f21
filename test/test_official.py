"""The published Ref-AVS model (refavs_ros.models.official) on tiny random configs.

Oracles used: (1) transformers' own checkpoint-key conversion, for the Swin key map; (2) a
literal transcription, in this file, of the released fusion code (views, per-frame loop,
``mha_mm`` on the un-permuted tensor) and of the released query-weighting post-processor;
(3) transformers' own ``Mask2FormerForUniversalSegmentation.forward``, for the decoder path.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_official_helpers import (
    TINY_IMAGE,
    TINY_TEXT_DIM,
    randomize_,
    tiny_m2f_config,
    tiny_model,
)
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)

from refavs_ros.errors import InputError, ModelLoadError
from refavs_ros.models.official import (
    AdaptedDeformableAttention,
    OfficialEEMC,
    cached_memory,
    visual_tokens,
)
from refavs_ros.models.official_keys import local_key_to_released, released_key_to_local

SWIN = "model_v.model.pixel_level_module.encoder."


@pytest.fixture(scope="module")
def model() -> OfficialEEMC:
    return tiny_model()


def _inputs(t: int = 3, n_audio: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(t, 3, TINY_IMAGE, TINY_IMAGE, generator=g),
        torch.randn(n_audio, 128, generator=g),
        torch.randn(25, TINY_TEXT_DIM, generator=g),
    )


# ------------------------------------------------------------------------------- key mapping


def test_released_names_round_trip_every_tensor():
    src = tiny_model(seed=3)
    randomize_(src, seed=5)
    released = src.released_state_dict()
    assert not any(".swin." in k for k in released)
    assert f"{SWIN}encoder.layers.2.blocks.1.attention.self.query.weight" in released
    assert f"{SWIN}encoder.layers.2.blocks.1.output.dense.bias" in released
    assert f"{SWIN}encoder.layers.0.blocks.0.attention.self.relative_position_index" in released
    assert released[f"{SWIN}encoder.layers.0.blocks.0.attention.self.relative_position_index"].dim() == 2
    dst = OfficialEEMC.from_state_dict(released, tiny_m2f_config(), num_heads=8)
    report = dst.load_report
    assert report.ok and report.renamed > 0 and report.dropped_index_buffers == 5
    assert sorted(report.optional_missing) == [f"{SWIN}swin.layernorm.bias", f"{SWIN}swin.layernorm.weight"]
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    checked = 0
    for key, value in src_sd.items():
        if key in report.optional_missing:
            continue
        assert torch.equal(dst_sd[key], value), key
        checked += 1
    assert checked == len(src_sd) - 2


def test_key_map_agrees_with_transformers_own_conversion(tmp_path):
    """transformers 5 converts 4.x Swin checkpoints itself; our map must put every tensor in the same place."""
    src = tiny_model(seed=4)
    randomize_(src, seed=6)
    released = src.released_state_dict()
    plain = {
        k[len("model_v."):]: v.contiguous().clone()
        for k, v in released.items()
        if k.startswith("model_v.") and "avs_adapt" not in k and "ref_avs_attn" not in k
    }
    cfg = tiny_m2f_config()
    cfg.save_pretrained(tmp_path)
    save_file(plain, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    hf = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    ours = {k[len("model_v."):]: v for k, v in src.state_dict().items() if k.startswith("model_v.")}
    hf_sd = hf.state_dict()
    common = [k for k in hf_sd if k in ours and "swin.layernorm" not in k]
    assert len(common) == len(hf_sd) - 2
    swin_keys = [k for k in common if ".swin." in k]
    assert len(swin_keys) > 50
    for key in common:
        assert torch.equal(hf_sd[key], ours[key]), key


def test_full_size_released_names_and_shapes():
    """Names and shapes the released code (transformers 4.30.2, Swin-B, 1024-d fusion) saves."""
    # backbone config as the hub's config.json has it (no image_size: SwinConfig's default 224 applies)
    swin = {"model_type": "swin", "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
            "window_size": 12, "drop_path_rate": 0.3, "out_features": ["stage1", "stage2", "stage3", "stage4"]}
    with torch.device("meta"):
        net = OfficialEEMC(Mask2FormerConfig(backbone_config=swin, num_labels=150))
    released = net.released_state_dict()
    expected = {
        f"{SWIN}embeddings.patch_embeddings.projection.weight": (128, 3, 4, 4),
        f"{SWIN}encoder.layers.2.blocks.17.attention.self.query.weight": (512, 512),
        f"{SWIN}encoder.layers.2.blocks.17.attention.self.relative_position_bias_table": (529, 16),
        f"{SWIN}encoder.layers.3.blocks.1.attention.self.relative_position_index": (144, 144),
        f"{SWIN}encoder.layers.3.blocks.1.intermediate.dense.weight": (4096, 1024),
        f"{SWIN}encoder.layers.2.downsample.reduction.weight": (1024, 2048),
        f"{SWIN}hidden_states_norms.stage4.weight": (1024,),
        "model_v.model.pixel_level_module.decoder.encoder.layers.5.self_attn.avs_adapt.0.weight": (64, 256),
        "model_v.model.pixel_level_module.decoder.encoder.layers.5.self_attn.avs_adapt.2.weight": (256, 64),
        "model_v.model.transformer_module.ref_avs_attn.query_embedding.weight": (256, 256),
        "model_v.model.transformer_module.ref_avs_attn.beta_source_pool": (1,),
        "model_v.model.transformer_module.decoder.layers.8.cross_attn.in_proj_weight": (768, 256),
        "model_v.model.transformer_module.queries_features.weight": (100, 256),
        "model_v.class_predictor.weight": (151, 256),
        "audio_proj.0.weight": (2048, 128),
        "text_proj.0.weight": (2048, 768),
        "prompt_proj.2.weight": (256, 2048),
        "mha_A_T.in_proj_weight": (3072, 1024),
        "mha_V_T.out_proj.weight": (1024, 1024),
        "mha_mm.in_proj_bias": (3072,),
    }
    for key, shape in expected.items():
        assert tuple(released[key].shape) == shape, key
    assert not any(".swin." in k or "q_proj" in k for k in released if k.startswith(SWIN))
    assert sum(1 for k in released if k.endswith("relative_position_index")) == 24
    assert sum(1 for k in released if "avs_adapt" in k) == 6 * 4
    assert net.dim_v == 1024 and net.prompt_dim == 256 and net.image_size == (384, 384)


def test_key_functions_are_inverse_and_reject_unknown():
    assert released_key_to_local(f"{SWIN}encoder.layers.1.blocks.0.attention.self.key.bias") == (
        f"{SWIN}swin.encoder.layers.1.blocks.0.attention.k_proj.bias"
    )
    assert released_key_to_local(f"{SWIN}encoder.layers.1.blocks.0.output.dense.weight") == (
        f"{SWIN}swin.encoder.layers.1.blocks.0.mlp.fc2.weight"
    )
    assert released_key_to_local(f"{SWIN}encoder.layers.1.blocks.0.attention.output.dense.weight") == (
        f"{SWIN}swin.encoder.layers.1.blocks.0.attention.o_proj.weight"
    )
    assert released_key_to_local(f"{SWIN}encoder.layers.1.blocks.0.attention.self.relative_position_index") is None
    assert released_key_to_local("mha_mm.in_proj_weight") == "mha_mm.in_proj_weight"
    assert released_key_to_local(f"{SWIN}encoder.layers.1.blocks.0.weird.weight").startswith("?")
    for key in tiny_model().state_dict():
        if "swin.layernorm" in key:
            with pytest.raises(KeyError):
                local_key_to_released(key)
        else:
            assert released_key_to_local(local_key_to_released(key)) == key


def test_from_state_dict_reports_problems_by_name(model):
    good = model.released_state_dict()
    dropped = dict(good)
    del dropped["mha_V_T.in_proj_weight"]
    dropped["extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelLoadError) as info:
        OfficialEEMC.from_state_dict(dropped, tiny_m2f_config(), num_heads=8)
    assert "mha_V_T.in_proj_weight" in str(info.value) and "extra.weight" in str(info.value)
    shaped = dict(good)
    shaped["prompt_proj.2.bias"] = torch.zeros(7)
    with pytest.raises(ModelLoadError, match="prompt_proj.2.bias"):
        OfficialEEMC.from_state_dict(shaped, tiny_m2f_config(), num_heads=8)
    bad_index = dict(good)
    key = f"{SWIN}encoder.layers.0.blocks.0.attention.self.relative_position_index"
    bad_index[key] = bad_index[key].flip(0)
    with pytest.raises(ModelLoadError, match="relative_position_index"):
        OfficialEEMC.from_state_dict(bad_index, tiny_m2f_config(), num_heads=8)
    with pytest.raises(ModelLoadError, match="audio_proj"):
        OfficialEEMC.from_state_dict({"foo": torch.zeros(1)}, tiny_m2f_config())
    # DataParallel prefix and CUDA-saved files are fine
    prefixed = {f"module.{k}": v for k, v in good.items()}
    assert OfficialEEMC.from_state_dict(prefixed, tiny_m2f_config(), num_heads=8).load_report.ok


# ------------------------------------------------------------------------ released semantics


def _released_fusion(m: OfficialEEMC, swin_last: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, bsz: int):
    """Literal transcription of the released fusion (models/avs_model.py), tensors as released."""
    frame_n = swin_last.shape[0] // bsz
    dim_v, hw = swin_last.shape[1], swin_last.shape[2] * swin_last.shape[3]
    feat_aud = m.audio_proj(audio).view(bsz, audio.shape[-2], dim_v)
    feat_text = m.text_proj(text).view(bsz, text.shape[-2], dim_v)
    feat_vis = swin_last.view(bsz, dim_v, hw, frame_n).view(bsz, -1, dim_v)
    fa = torch.concat((feat_aud, feat_text), dim=1).permute(1, 0, 2)
    fv = torch.concat((feat_vis, feat_text), dim=1).permute(1, 0, 2)
    fa, _ = m.mha_A_T(fa, fa, fa)
    fv, _ = m.mha_V_T(fv, fv, fv)
    na, nv = feat_aud.shape[1], feat_vis.shape[1]

    def memory(x):
        return x * (1 + 1) - torch.cumsum(x, dim=0) / torch.arange(1, x.shape[0] + 1).view(-1, 1, 1)

    cues_a = memory(fa[:na]).permute(1, 0, 2)
    cues_v = memory(fv[:nv]).permute(1, 0, 2)
    cues_t = (feat_text + fa[na:].permute(1, 0, 2) + fv[nv:].permute(1, 0, 2)) / torch.tensor(3.0)
    tag_a = torch.full([bsz, 1, dim_v], 0)
    tag_v = torch.full([bsz, 1, dim_v], 1)
    cues_v = cues_v.view(bsz, frame_n, hw, dim_v)
    prompts = []
    for f in range(frame_n):
        mm = torch.concat([cues_a, tag_a, cues_v[:, f], tag_v, cues_t], dim=1)
        mm, _ = m.mha_mm(mm, mm, mm)
        prompts.append(mm)
    prompts = torch.stack(prompts).permute(1, 0, 2, 3).contiguous().view(bsz * frame_n, prompts[0].shape[-2], dim_v)
    return m.prompt_proj(prompts)


@pytest.mark.parametrize("bsz", [1, 2])
def test_fuse_equals_released_code(model, bsz):
    g = torch.Generator().manual_seed(bsz)
    t = 3
    with torch.no_grad():
        feats = model.encode_frames(torch.randn(bsz * t, 3, TINY_IMAGE, TINY_IMAGE, generator=g))
        audio = torch.randn(bsz, 4, 128, generator=g)
        text = torch.randn(bsz, 25, TINY_TEXT_DIM, generator=g)
        ref = _released_fusion(model, feats.swin_last, audio, text, bsz)
        tokens = visual_tokens(feats.swin_last)
        ours = model.fuse(tokens.reshape(bsz, t, *tokens.shape[1:]), audio, text)
        last = model.fuse(tokens.reshape(bsz, t, *tokens.shape[1:]), audio, text, last_frames=1)
    s = feats.swin_last.shape[2] * feats.swin_last.shape[3]
    assert ours.shape == (bsz * t, 4 + 1 + s + 1 + 25, model.prompt_dim)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, ref.view(bsz, t, *ref.shape[1:])[:, -1], rtol=1e-4, atol=1e-5)


def test_mha_mm_at_batch_one_is_a_per_token_linear_map(model):
    x = torch.randn(1, 7, model.dim_v)
    with torch.no_grad():
        out = model.mha_mm(x, x, x)[0]
        w_v = model.mha_mm.in_proj_weight[2 * model.dim_v:]
        b_v = model.mha_mm.in_proj_bias[2 * model.dim_v:]
        lin = model.mha_mm.out_proj(x @ w_v.T + b_v)
    torch.testing.assert_close(out, lin, rtol=1e-5, atol=1e-5)


def test_cached_memory_formula():
    x = torch.randn(5, 2, 3)
    out = cached_memory(x, 1.0)
    for i in range(5):
        torch.testing.assert_close(out[i], 2 * x[i] - x[: i + 1].mean(0))


def test_visual_tokens_are_channel_major_chunks():
    x = torch.arange(2 * 8 * 2 * 2, dtype=torch.float32).reshape(2, 8, 2, 2)
    tok = visual_tokens(x)
    assert tok.shape == (2, 4, 8)
    assert torch.equal(tok[1, 0], x[1].reshape(-1)[:8])  # channels 0-1 of frame 1, not a pixel


def test_adapter_replaces_attention_output():
    torch.manual_seed(0)
    attn = AdaptedDeformableAttention(32, 2)
    hidden = torch.randn(1, 4 + 1 + 1, 32)
    kwargs = {
        "hidden_states": hidden, "attention_mask": None, "encoder_hidden_states": hidden,
        "reference_points": torch.rand(1, 6, 3, 2), "spatial_shapes_list": [(2, 2), (1, 1), (1, 1)],
    }
    out, _ = attn(**kwargs)
    plain, _ = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.forward(attn, **kwargs)
    torch.testing.assert_close(out, attn.avs_adapt(plain))
    layers = tiny_model().model_v.model.pixel_level_module.decoder.encoder.layers
    assert all(isinstance(layer.self_attn, AdaptedDeformableAttention) for layer in layers)


def test_decoder_equals_transformers_when_prompt_attention_is_neutral():
    """With sigmoid(beta) = 0 the prompt attention is the identity: the rest must be HF's Mask2Former."""
    net = tiny_model(seed=2)
    ref_attn = net.model_v.model.transformer_module.ref_avs_attn
    with torch.no_grad():
        ref_attn.beta_source_attn.fill_(-1e4)
        ref_attn.beta_source_pool.fill_(-1e4)
        pixels = torch.randn(2, 3, TINY_IMAGE, TINY_IMAGE)
        feats = net.encode_frames(pixels)
        cls_ours, masks_ours = net.decode_queries(feats.multi_scale, feats.mask_features, torch.randn(2, 9, 32))
        hf = net.model_v(pixel_values=pixels)
    torch.testing.assert_close(cls_ours, hf.class_queries_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masks_ours, hf.masks_queries_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.swin_last, hf.encoder_last_hidden_state)


def test_query_weighting_equals_released_post_processor(model):
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(2, 5, 4, generator=g)
    masks = torch.randn(2, 5, 16, 16, generator=g)
    # released Mask2FormerImageProcessorForRefAVS.post_process_semantic_segmentation, AVS_BINARY
    pair = torch.concat([cls[:, :, 0].view(2, 5, 1), cls[:, :, -1].view(2, 5, 1)], dim=-1)
    up = F.interpolate(masks, size=(TINY_IMAGE, TINY_IMAGE), mode="bilinear", align_corners=False)
    seg = torch.einsum("bqc, bqhw -> bchw", pair.softmax(dim=-1)[..., :-1], up)
    ref = torch.stack([F.interpolate(seg[i][None], size=[256, 256], mode="bilinear", align_corners=False)[0][0]
                       for i in range(2)])
    torch.testing.assert_close(model.query_weighted_logits(cls, masks), ref, rtol=1e-5, atol=1e-5)
    assert model.query_weighted_logits(cls, masks, (40, 70)).shape == (2, 40, 70)


# ------------------------------------------------------------------------ shapes and devices


def test_forward_clip_shapes_and_batching(model):
    pixels, audio, text = _inputs()
    with torch.no_grad():
        out = model.forward_clip(pixels, audio, text)
        batch = model.forward_batch(pixels[None], audio[None], text[None])
        src = model.forward_clip(pixels, audio, text, output_size=(30, 50))
        pair = model.forward_batch(torch.stack([pixels, pixels.flip(0)]), torch.stack([audio, audio]),
                                   torch.stack([text, text]))
    assert out.shape == (3, 256, 256) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(batch[0], out)
    assert src.shape == (3, 30, 50)
    assert pair.shape == (2, 3, 256, 256)
    # released batching: mha_mm attends across clips, so a clip's result depends on its batch mates
    assert not torch.allclose(pair[0], out, atol=1e-6)
    with pytest.raises(InputError):
        model.forward_clip(pixels[0], audio, text)
    with pytest.raises(InputError):
        model.forward_batch(pixels[None], audio, text[None])


def test_audio_and_text_change_the_output(model):
    pixels, audio, text = _inputs()
    with torch.no_grad():
        base = model.forward_clip(pixels, audio, text)
        other_audio = model.forward_clip(pixels, audio + 1.0, text)
        other_text = model.forward_clip(pixels, audio, text + 0.5 * torch.randn_like(text))
        rolled_text = model.forward_clip(pixels, audio, torch.roll(text, 1, 0))
        rolled_audio = model.forward_clip(pixels, torch.roll(audio, 1, 0), text)
    assert (base - other_audio).abs().max() > 1e-4
    assert (base - other_text).abs().max() > 1e-4
    # no positions after the text encoder: text tokens form a set; audio steps do not (cached memory)
    torch.testing.assert_close(rolled_text, base, rtol=1e-4, atol=1e-5)
    assert (base - rolled_audio).abs().max() > 1e-6


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_device_independence(model, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    pixels, audio, text = _inputs(t=2)
    with torch.no_grad():
        ref = model.forward_clip(pixels, audio, text)
        net = tiny_model().to(device)
        out = net.forward_clip(pixels.to(device), audio.to(device), text.to(device))
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- export-friendliness


class _FusionStage(torch.nn.Module):
    def __init__(self, net: OfficialEEMC) -> None:
        super().__init__()
        self.net = net

    def forward(self, tokens, audio, text):
        return self.net.fuse(tokens, audio, text, last_frames=1)


class _EncodeStage(torch.nn.Module):
    def __init__(self, net: OfficialEEMC) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values):
        return tuple(self.net.encode_frames(pixel_values)[::2])  # swin_last, mask_features


class _DecodeStage(torch.nn.Module):
    def __init__(self, net: OfficialEEMC) -> None:
        super().__init__()
        self.net = net

    def forward(self, ms0, ms1, ms2, mask_features, prompts):
        return self.net.decode_queries((ms0, ms1, ms2), mask_features, prompts)


def _our_tracer_warnings(records) -> list[str]:
    return [f"{w.filename}:{w.lineno} {w.message}" for w in records
            if issubclass(w.category, torch.jit.TracerWarning) and w.filename.endswith("official.py")]


def test_fusion_stage_exports_to_onnx_and_matches(model):
    """Fixed-shape export per window length (torch's MultiheadAttention bakes its sequence length in)."""
    ort = pytest.importorskip("onnxruntime")
    g = torch.Generator().manual_seed(0)
    for frames in (4, 1):
        tokens = torch.randn(1, frames, 4, model.dim_v, generator=g)
        audio = torch.randn(1, frames, 128, generator=g)
        text = torch.randn(1, 25, TINY_TEXT_DIM, generator=g)
        buf = io.BytesIO()
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            torch.onnx.export(
                _FusionStage(model), (tokens, audio, text), buf, dynamo=False,
                input_names=["visual_tokens", "audio_embeddings", "text_hidden"], output_names=["prompts"],
            )
        assert _our_tracer_warnings(records) == []
        sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        feed = {"visual_tokens": tokens.numpy(), "audio_embeddings": audio.numpy(), "text_hidden": text.numpy()}
        (got,) = sess.run(None, feed)
        with torch.no_grad():
            ref = model.fuse(tokens, audio, text, last_frames=1)
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-3, atol=1e-4)


def test_encode_and_decode_stages_trace_without_data_dependent_code_of_ours(model):
    """torch.jit.trace raises TracerWarnings for data-dependent Python; none may come from official.py."""
    pixels = torch.randn(1, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        feats = model.encode_frames(pixels)
    prompts = torch.randn(1, 9, model.prompt_dim)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        traced = torch.jit.trace(_DecodeStage(model), (*feats.multi_scale, feats.mask_features, prompts),
                                 check_trace=False)
        torch.jit.trace(_EncodeStage(model), (pixels,), check_trace=False)
    assert _our_tracer_warnings(records) == []
    with torch.no_grad():
        cls_t, masks_t = traced(*feats.multi_scale, feats.mask_features, prompts)
        cls_e, masks_e = model.decode_queries(feats.multi_scale, feats.mask_features, prompts)
    torch.testing.assert_close(cls_t, cls_e)
    torch.testing.assert_close(masks_t, masks_e)
