"""Training pipeline: preprocessing parity with the predictor, loss decrease, the CLI."""

from __future__ import annotations

import numpy as np
import torch

from refavs_ros import audio, training
from refavs_ros.engines.eemc import preprocess_image
from refavs_ros.models.checkpoint import load_eemc
from refavs_ros.models.text import TextEncoder
from refavs_ros.scenes import CATEGORIES, SceneConfig, generate_scene

SCENE_KW = dict(width=96, height=72, fps=1.0, duration_sec=4.0, media="procedural")


def test_scene_arrays_match_the_predictor_preprocessing():
    scene = generate_scene("train", 3, 0, SceneConfig(**SCENE_KW))
    images, mels, masks, cats = training.scene_to_arrays(scene, 64)
    assert images.shape == (4, 64, 64, 3) and mels.shape == (4, 96, 64) and masks.shape == (4, 32, 32)
    assert cats.shape == (4, 16, 16)
    ref = preprocess_image(scene.frames[2], 64)
    assert np.abs(images[2].transpose(2, 0, 1) / 255.0 - ref).max() <= 0.5 / 255 + 1e-6
    # the audio example of frame i is the 0.975 s ending at the frame stamp (as the predictor does)
    end = (int(scene.frame_stamps_ns[1]) - scene.audio_start_ns) // 62500
    wave = scene.audio.astype(np.float32) / 32768.0
    want = audio.log_mel_spectrogram(np.concatenate([np.zeros(max(0, audio.EXAMPLE_SAMPLES - end), np.float32),
                                                     wave[max(0, end - audio.EXAMPLE_SAMPLES):end]]))
    np.testing.assert_allclose(mels[1].astype(np.float32), want, atol=2e-2)
    # category map: the target's pixels carry its category id
    if scene.target is not None:
        cat = 1 + CATEGORIES.index(scene.objects[scene.target]["category"])
        assert (cats[0] == cat).any()
    assert set(np.unique(cats)) <= set(range(len(CATEGORIES) + 1))


def test_training_reduces_the_loss_and_clipset_round_trips(tiny_cfg, tmp_path):
    clips = training.build_clips("train", 6, 0, tiny_cfg.image_size, SCENE_KW, workers=1, progress=False)
    clips.save(tmp_path / "clips")
    again = training.ClipSet.load(tmp_path / "clips")
    np.testing.assert_array_equal(again.images, clips.images)
    assert again.expressions == clips.expressions and again.kinds == clips.kinds
    enc = TextEncoder.from_pretrained(tiny_cfg.text_model, tiny_cfg.max_text_tokens)
    text = training.encode_expressions(enc, clips.expressions)
    model = training.build_model(tiny_cfg, 0)
    device = torch.device("cpu")
    batch = training.clip_batch(clips, np.arange(6), text, device)
    with torch.no_grad():
        before, _ = training.compute_loss(model.train(), batch, training.make_aux_head(tiny_cfg))
    log = training.train(model, clips, text, steps=60, batch_size=4, lr=3e-3, progress=False, frames=2)
    assert len(log) == 1 and log[-1]["loss"] < float(before)
    model.train()
    with torch.no_grad():
        after, _ = training.compute_loss(model, batch)
    assert float(after) < float(before)
    result = training.evaluate_clips(model, clips, text)
    assert set(result) == set(clips.kinds) and all(0.0 <= r["J"] <= 1.0 for r in result.values())


def test_train_cli_writes_loadable_weights(tmp_path, capsys):
    from refavs_ros.tools.train import main

    out = tmp_path / "m.safetensors"
    code = main(["--out", str(out), "--train-count", "4", "--val-count", "2", "--steps", "3", "--batch-size", "2",
                 "--width", "96", "--height", "72", "--duration", "4", "--quiet", "--threads", "1"])
    assert code == 0
    model, meta = load_eemc(out)
    assert model.cfg.profile == "tiny" and "refavs-train" in meta["command"] and meta["steps"] == "0"
    assert "val" in capsys.readouterr().out
