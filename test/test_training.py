"""Training pipeline: preprocessing parity with the predictor, loss decrease, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refavs_ros import audio, training
from refavs_ros.engines.eemc import preprocess_image
from refavs_ros.errors import ConfigError
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
    kw = dict(SCENE_KW, noise_prob=0.5, occlusion_prob=0.5)
    clips = training.build_clips("train", 6, 0, tiny_cfg.image_size, kw, workers=1, progress=False)
    assert clips.heard.shape == (6, 4, len(CATEGORIES)) and clips.categories.shape[:2] == (6, 4)
    clips.save(tmp_path / "clips")
    again = training.ClipSet.load(tmp_path / "clips")
    np.testing.assert_array_equal(again.images, clips.images)
    np.testing.assert_array_equal(again.heard, clips.heard)
    assert again.expressions == clips.expressions and again.kinds == clips.kinds and again.video is None
    enc = TextEncoder.from_pretrained(tiny_cfg.text_model, tiny_cfg.max_text_tokens)
    text = training.encode_expressions(enc, clips.expressions)
    objective = training.EEMCObjective(training.build_model(tiny_cfg, 0), len(CATEGORIES), memory_aux=True)
    batch = training.clip_batch(clips, np.arange(6), text, torch.device("cpu"))
    objective.train()
    with torch.no_grad():
        before, parts = objective(batch)
    assert set(parts) == {"bce", "dice", "null", "aux", "coarse", "memory"} and float(parts["memory"]) > 0
    opts = training.TrainOptions(steps=40, batch_size=3, lr=3e-3, progress=False, log_every=20)
    log = training.train(objective, training.ClipDataset(clips, text, frames=2), opts)
    assert [e["step"] for e in log] == [20, 40] and log[-1]["loss"] < float(before)
    objective.train()
    with torch.no_grad():
        after, _ = objective(batch)
    assert float(after) < float(before)
    result = training.evaluate_clips(objective.model, clips, text)
    assert set(result) == set(clips.kinds) and all(0.0 <= r["J"] <= 1.0 for r in result.values())


def test_memory_entries_follow_the_streaming_commit_rule(tiny_cfg):
    assert [training.memory_every(f) for f in (0.5, 1.0, 2.0, 2.5, 30.0)] == [1, 1, 2, 3, 30]
    for fps in (1.0, 2.0, 2.5, 3.0):  # the predictor's rule: commit when >= 1 s since the last entry
        every, last, want = training.memory_every(fps), None, []
        for i in range(12):
            t = round(i / fps * 1e9)
            want.append(last is None or t - last >= 1_000_000_000)
            last = t if want[-1] else last
        assert training.memory_entries(12, every).tolist() == want
    with pytest.raises(ConfigError, match="fps"):
        training.memory_every(0.0)
    # 2-fps clips: each sample's first entry is drawn per epoch, so both phases are trained
    kw = dict(SCENE_KW, fps=2.0)
    clips = training.build_clips("train", 4, 0, tiny_cfg.image_size, kw, workers=1, progress=False)
    assert clips.num_frames == 8
    enc = TextEncoder.from_pretrained(tiny_cfg.text_model, tiny_cfg.max_text_tokens)
    text = training.encode_expressions(enc, clips.expressions)
    ds = training.ClipDataset(clips, text, frames=3, seed=0, memory_every=2)
    firsts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            e = ds[i]["memory_entries"].numpy()
            first = int(np.argmax(e))
            assert first in (0, 1) and e.tolist() == training.memory_entries(8, 2, first).tolist()
            firsts.add(first)
    assert firsts == {0, 1}
    assert "memory_entries" not in training.ClipDataset(clips, text, frames=3)[0]
    objective = training.EEMCObjective(training.build_model(tiny_cfg, 0), len(CATEGORIES), memory_aux=True)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    loss, parts = objective(batch)
    loss.backward()
    assert torch.isfinite(loss) and float(parts["memory"]) > 0
    with pytest.raises(ConfigError, match="memory_every"):
        training.ClipDataset(clips, text, memory_every=0)
    result = training.evaluate_clips(objective.model, clips, text, memory_every=2)
    assert set(result) == set(clips.kinds)


def test_heard_categories_follow_the_sounding_slots():
    scene = generate_scene("train", 3, 0, SceneConfig(**SCENE_KW))
    heard = training.heard_categories(scene)
    assert heard.shape == (4, len(CATEGORIES))
    for obj in scene.objects:  # at 1 fps frame i hears slot i
        c = CATEGORIES.index(obj["category"])
        for i in range(4):
            if i in obj["sounding_slots"]:
                assert heard[i, c] == 1
    silent = {CATEGORIES.index(o["category"]) for o in scene.objects if not o["sounding_slots"]}
    sounding = {CATEGORIES.index(o["category"]) for o in scene.objects if o["sounding_slots"]}
    for c in silent - sounding:
        assert not heard[:, c].any()


def test_kind_weights_reshape_the_training_mix():
    from collections import Counter

    from refavs_ros.errors import ConfigError
    from refavs_ros.scenes import kind_for

    plain = training.select_indices("train", 300, 0)
    assert plain == list(range(300))
    picked = training.select_indices("train", 300, 0, {"temporal": 2.0, "semantic": 0.5})
    kinds = Counter(kind_for("train", i, 0) for i in picked)
    assert len(set(picked)) == 300 and kinds["temporal"] > 2 * kinds["semantic"]
    with pytest.raises(ConfigError):
        training.select_indices("train", 10, 0, {"loud": 1.0})


def test_precision_and_schedule_rules():
    from refavs_ros.errors import ConfigError

    assert training.resolve_precision("auto", torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="CUDA"):
        training.resolve_precision("bf16", torch.device("cpu"))
    sched = training.CosineSchedule(1.0, warmup=10, steps=100, budget_s=60.0)
    assert sched.lr(0, 0.0) == pytest.approx(0.1) and sched.lr(50, 0.5) == pytest.approx(0.5)
    assert sched.progress(10, 30.0) == pytest.approx(0.5)  # time, not steps, is further along


def test_train_cli_writes_loadable_weights_and_resumes(tmp_path, capsys):
    from refavs_ros.tools.train import main

    out = tmp_path / "m.safetensors"
    args = ["--train-count", "4", "--val-count", "2", "--batch-size", "2", "--width", "96", "--height", "72",
            "--duration", "4", "--quiet", "--threads", "1", "--checkpoint-dir", str(tmp_path / "ck"),
            "--data-cache", str(tmp_path / "cache")]
    assert main(["--out", str(out), "--steps", "3", *args]) == 0
    model, meta = load_eemc(out)
    assert model.cfg.profile == "tiny" and "refavs-train" in meta["command"] and meta["steps"] == "3"
    assert model.cfg.decode_position and model.cfg.memory_token and meta["processes"] == "1"
    assert "val" in capsys.readouterr().out
    assert main(["--out", str(out), "--steps", "4", "--resume", "auto", *args]) == 0
    assert load_eemc(out)[1]["steps"] == "4"
    assert main(["--out", str(out), "--data", "nope", *args]) == 2
    assert main(["--out", str(out), "--kind-weights", "temporal:2", *args]) == 2


def test_train_cli_init_keeps_or_extends_the_decoder(tmp_path, capsys):
    """--init keeps its weights' decoder flags (with a note); --extended-decoder turns the
    parameter-free ones on and the init weights still load unchanged."""
    from refavs_ros.models.checkpoint import save_eemc
    from refavs_ros.models.config import EEMCConfig
    from refavs_ros.tools.train import main

    init = tmp_path / "paper.safetensors"
    paper = training.build_model(EEMCConfig.profile_named("tiny"), 0)
    assert not paper.cfg.decode_position and not paper.cfg.memory_token
    save_eemc(paper, init, {"note": "test"})
    args = ["--train-count", "4", "--val-count", "0", "--batch-size", "2", "--width", "96", "--height", "72",
            "--duration", "4", "--quiet", "--threads", "1", "--steps", "1", "--lr", "1e-9",
            "--data-cache", str(tmp_path / "cache"), "--init", str(init)]
    kept = tmp_path / "kept.safetensors"
    assert main(["--out", str(kept), *args]) == 0
    assert "--init keeps them" in capsys.readouterr().out
    model, _ = load_eemc(kept)
    assert not model.cfg.decode_position and not model.cfg.memory_token
    extended = tmp_path / "extended.safetensors"
    assert main(["--out", str(extended), "--extended-decoder", *args]) == 0
    model, _ = load_eemc(extended)
    assert model.cfg.decode_position and model.cfg.memory_token
    start = paper.state_dict()
    assert set(model.state_dict()) == set(start)
    assert main(["--out", str(extended), "--extended-decoder", "--paper-decoder", *args]) == 2
