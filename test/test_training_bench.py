"""refavs-train on Ref-AVS Bench (the fake tree of test_eval_dataset): EEMC profiles and the
published model fine-tuned from its released checkpoint (--init)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_eval_dataset import _write_tree
from test_official_helpers import make_checkpoint, make_models_dir, tiny_model

from refavs_ros import audio, training
from refavs_ros.eval.dataset import RefAvsBench
from refavs_ros.models.checkpoint import load_eemc
from refavs_ros.models.official import OfficialEEMC
from refavs_ros.models.official_loaders import load_checkpoint, load_official
from refavs_ros.tools.train import main


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return _write_tree(tmp_path_factory.mktemp("refavs_bench_train") / "REFAVS")


def test_bench_clips_share_videos_and_follow_the_streaming_audio_rule(bench_dir):
    clips = training.build_bench_clips(bench_dir, "test_s", 64, progress=False)
    assert len(clips) == 5 and clips.images.shape == (4, 10, 64, 64, 3) and clips.mels.shape == (4, 10, 96, 64)
    assert clips.video.tolist() == [0, 0, 1, 2, 3] and clips.masks.shape == (5, 10, 32, 32)
    assert clips.categories is None and clips.heard is None and set(clips.kinds) == {"bench"}
    bench = RefAvsBench(bench_dir)
    entry = bench.entries("test_s")[3]  # 44.1 kHz stereo clip
    wave = bench.load_audio_16k(entry)
    for i in (0, 4, 9):  # frame i is stamped at the end of second i
        want = audio.example_ending_at(wave[: (i + 1) * 16000])
        np.testing.assert_allclose(clips.mels[clips.video[3], i].astype(np.float32), want, atol=2e-2)
    gt = bench.load_gt(entry, size=(32, 32))
    np.testing.assert_array_equal(clips.masks[3], gt.astype(np.uint8))
    assert not clips.masks[0, 3].any()  # the fake tree's empty frame
    null = training.build_bench_clips(bench_dir, "test_n", 64, progress=False)
    assert null.present.tolist() == [0.0, 0.0] and set(null.kinds) == {"bench-null"}


def test_train_cli_on_refavs_bench_from_init_weights(bench_dir, tiny_weights, tmp_path, capsys):
    out = tmp_path / "bench.safetensors"
    rc = main(["--data", "refavs-bench", str(bench_dir), "--bench-splits", "test_s", "test_n", "--init",
               str(tiny_weights), "--steps", "2", "--batch-size", "2", "--quiet", "--threads", "1", "--out", str(out),
               "--data-cache", str(tmp_path / "cache")])
    assert rc == 0
    model, meta = load_eemc(out)
    assert "refavs_bench" in meta["data"] and meta["steps"] == "2" and meta["init"] == str(tiny_weights)
    before, _ = load_eemc(tiny_weights)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed  # it trained from the given weights
    printed = capsys.readouterr().out
    assert "val bench-null" in printed and "2 clips" in printed
    assert main(["--data", "refavs-bench", str(tmp_path / "missing"), "--quiet", "--out", str(out)]) == 2


def test_official_fine_tuning_trains_only_the_released_parameters(bench_dir, tiny_text_dir, tmp_path):
    models_dir = make_models_dir(tmp_path / "models", tiny_text_dir)
    ckpt = make_checkpoint(tmp_path / "ckpt_best_miou.pth", tiny_model(seed=5))
    out = tmp_path / "finetuned.pth"
    rc = main(["--profile", "official", "--data", "refavs-bench", str(bench_dir), "--init", str(ckpt),
               "--models-dir", str(models_dir), "--bench-splits", "test_s", "test_n", "--steps", "2",
               "--batch-size", "2", "--lr", "1e-2", "--quiet", "--threads", "1", "--out", str(out)])
    assert rc == 0
    old, new = load_checkpoint(ckpt), load_checkpoint(out)
    assert set(old) == set(new)
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(any(p in k for p in training.OFFICIAL_TRAINABLE) for k in changed)
    assert any("ref_avs_attn" in k for k in changed) and any("audio_proj" in k for k in changed)
    load_official(out, models_dir)  # the result loads like the released checkpoint
    assert isinstance(load_official(out, models_dir).model, OfficialEEMC)
    assert main(["--profile", "official", "--data", "synthetic", "--quiet", "--out", str(out)]) == 2
