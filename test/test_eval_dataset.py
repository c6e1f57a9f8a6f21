"""Ref-AVS Bench reader, refavs-eval-bench and refavs-bench2bag on a tiny fake dataset tree.

The tree has the released on-disk layout (metadata.csv with quoted expressions, media/<folder>/
frames/*.jpg + audio.wav at different rates/channels/dtypes, gt_mask/<folder>/fid_<fid>/*.png,
null rows in null_c-/null_m- folders) and is written by the tests at run time.
"""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from scipy.io import wavfile
from test_official_helpers import make_checkpoint, make_models_dir, tiny_model

from refavs_ros.errors import InputError
from refavs_ros.eval.dataset import GT_SIZE, RefAvsBench, media_folder
from refavs_ros.eval.metrics import benchmark_metrics
from refavs_ros.models.official_loaders import load_official
from refavs_ros.rosio import bagio, conversions
from refavs_ros.tools import eval_refavs_bench as eval_bench
from refavs_ros.tools import refavs_bench_to_bag as bench2bag

# (vid, uid, split, fid, exp, frame (h, w), audio (rate, channels, dtype), gt kind)
ROWS = [
    ("-aa_0_10000", "-aa_0_10000_cat_1", "test_s", 0, "The cat, on the left.", (36, 48), (16000, 1, "int16"), "box"),
    ("-aa_0_10000", "-aa_0_10000_dog_2", "test_s", 1, "The barking dog", (36, 48), (16000, 1, "int16"), "box"),
    ("bb_5_15000", "bb_5_15000_piano_1", "train", 0, "The piano", (40, 40), (22050, 1, "int16"), "box"),
    ("bb_5_15000", "bb_5_15000_piano_2", "test_s", 0, 'The "loudest" piano', (40, 40), (22050, 1, "int16"), "box"),
    ("cc_9_19000", "cc_9_19000_man_1", "test_s", 0, "The man speaking", (30, 44), (44100, 2, "int16"), "box"),
    ("dd_1_11000", "dd_1_11000_car_3", "test_s", 0, "The car", (36, 48), (48000, 1, "float32"), "box"),
    ("ee_2_12000", "ee_2_12000_cello_1", "test_u", 0, "The cello", (36, 48), (16000, 1, "int16"), "box"),
    ("ff_3_13000", "null_c-ff_3_13000_violin_1", "test_n", 0, "The violin", (36, 48), (32000, 1, "int16"), "empty"),
    ("gg_4_14000", "null_m-gg_4_14000_flute_1", "test_n", 0, "The flute", (36, 48), (16000, 1, "int16"), "missing"),
]
EMPTY_FRAME = 3  # frame index with an empty mask in every "box" clip


def _box(i: int, h: int, w: int) -> tuple[int, int, int, int]:
    return (h // 4, w // 5 + i, h // 2 + 3, w // 2 + i)


def _write_tree(root):
    root.mkdir(parents=True, exist_ok=True)
    with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["vid", "uid", "split", "fid", "exp"])
        for vid, uid, split, fid, exp, *_ in ROWS:
            writer.writerow([vid, uid, split, fid, exp])
    rng = np.random.default_rng(0)
    for vid, uid, split, fid, exp, (h, w), (rate, channels, dtype), gt in ROWS:
        folder = media_folder(uid)
        frames = root / "media" / folder / "frames"
        frames.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img[:4, :4] = (0, 0, 255)  # BGR red corner
            cv2.imwrite(str(frames / f"{i}.jpg"), img)
        n = rate * 10
        t = np.arange(n) / rate
        tone = 0.3 * np.sin(2 * np.pi * 440.0 * t)
        data = tone if channels == 1 else np.stack([tone, 0.5 * tone], axis=1)
        data = (data * 32767).astype(np.int16) if dtype == "int16" else data.astype(np.float32)
        wavfile.write(str(root / "media" / folder / "audio.wav"), rate, data)
        if gt == "missing":
            continue
        masks = root / "gt_mask" / folder / f"fid_{fid}"
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            mask = np.zeros((h, w), np.uint8)
            if gt == "box" and i != EMPTY_FRAME:
                y0, x0, y1, x1 = _box(i, h, w)
                mask[y0:y1, x0:x1] = 255
            cv2.imwrite(str(masks / f"0000{i}.png"), mask)
    return root


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return _write_tree(tmp_path_factory.mktemp("refavs_bench") / "REFAVS")


@pytest.fixture(scope="module")
def official_files(tmp_path_factory, tiny_text_dir):
    root = tmp_path_factory.mktemp("official")
    models_dir = make_models_dir(root / "models", tiny_text_dir)
    ckpt = make_checkpoint(root / "ckpt_best_miou.pth", tiny_model(seed=5))
    return ckpt, models_dir


# ------------------------------------------------------------------------------------ reader


def test_entries_keep_file_order_and_the_folder_rule(bench_dir):
    bench = RefAvsBench(bench_dir)
    seen = bench.entries("test_s")
    assert [e.uid for e in seen] == [r[1] for r in ROWS if r[2] == "test_s"]
    assert [e.index for e in seen] == list(range(5))
    assert seen[0].folder == seen[1].folder == "-aa_0_10000" and seen[1].fid == 1
    assert seen[2].expression == 'The "loudest" piano'
    null = bench.entries("test_n")
    assert [e.folder for e in null] == ["null_c-ff_3_13000", "null_m-gg_4_14000"] and all(e.is_null for e in null)
    assert len(bench.entries("test_s", limit=2)) == 2
    assert bench.entries("val") == []
    with pytest.raises(InputError, match="unknown split"):
        bench.entries("test")


def test_media_loading(bench_dir):
    bench = RefAvsBench(bench_dir)
    entries = {e.uid: e for s in ("test_s", "test_n") for e in bench.entries(s)}
    frames = bench.load_frames(entries["cc_9_19000_man_1"])
    assert len(frames) == 10 and frames[0].shape == (30, 44, 3) and frames[0].dtype == np.uint8
    assert frames[0][1, 1, 0] > 200 and frames[0][1, 1, 2] < 60  # RGB order
    for uid, rate, shape in (("-aa_0_10000_cat_1", 16000, (160000,)), ("cc_9_19000_man_1", 44100, (441000, 2)),
                             ("dd_1_11000_car_3", 48000, (480000,))):
        samples, got_rate = bench.load_audio(entries[uid])
        assert got_rate == rate and samples.shape == shape
        mono = bench.load_audio_16k(entries[uid])
        assert mono.dtype == np.float32 and abs(mono.size - 160000) <= 1
        assert 0.2 < np.abs(mono).max() < 0.35  # the 0.3 tone survives downmix/resampling
    gt = bench.load_gt(entries["-aa_0_10000_cat_1"])
    assert gt.shape == (10, *GT_SIZE) and gt.dtype == bool
    assert not gt[EMPTY_FRAME].any()
    y0, x0, y1, x1 = _box(0, 36, 48)
    frac = gt[0].mean()
    assert abs(frac - (y1 - y0) * (x1 - x0) / (36 * 48)) < 0.03
    sy, sx = 256 / 36, 256 / 48
    assert gt[0][int((y0 + y1) / 2 * sy), int((x0 + x1) / 2 * sx)]
    assert bench.load_gt(entries["-aa_0_10000_cat_1"], size=None).shape == (10, 36, 48)
    assert not bench.load_gt(entries["null_c-ff_3_13000_violin_1"]).any()
    assert bench.load_gt(entries["null_m-gg_4_14000_flute_1"]).shape == (10, 256, 256)  # no mask folder


def test_reader_errors_name_the_file(bench_dir, tmp_path):
    with pytest.raises(InputError, match="metadata.csv"):
        RefAvsBench(tmp_path)
    (tmp_path / "metadata.csv").write_text("vid,uid,split\nx,y,test_s\n")
    with pytest.raises(InputError, match="fid"):
        RefAvsBench(tmp_path)
    broken = _write_tree(tmp_path / "broken")
    (broken / "media" / "-aa_0_10000" / "frames" / "7.jpg").unlink()
    bench = RefAvsBench(broken)
    with pytest.raises(InputError, match="7.jpg"):
        bench.load_frames(bench.entries("test_s")[0])
    (broken / "gt_mask" / "-aa_0_10000" / "fid_0" / "00002.png").unlink()
    with pytest.raises(InputError, match="00002.png"):
        bench.load_gt(bench.entries("test_s")[0])


# -------------------------------------------------------------------------------- evaluation


def test_eval_bench_benchmark_mode_matches_released_batching(bench_dir, official_files, tmp_path):
    ckpt, models_dir = official_files
    out = tmp_path / "seen.json"
    code = eval_bench.main([str(bench_dir), "--split", "test_s", "--checkpoint", str(ckpt), "--models-dir",
                            str(models_dir), "--metrics-json", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["clips"] == 5 and result["frames"] == 50 and result["metrics"]["batches"] == 2
    # reference: all logits at once, grouped by benchmark_metrics into 40-frame batches
    parts = load_official(ckpt, models_dir)
    bench = RefAvsBench(bench_dir)
    entries = bench.entries("test_s")
    logits, gts = [], []
    with torch.no_grad():
        for group in (entries[:4], entries[4:]):
            clips = [eval_bench.clip_inputs(bench, e, parts) for e in group]
            out_b = parts.model.forward_batch(torch.stack([c.pixel_values for c in clips]),
                                              torch.stack([c.audio for c in clips]),
                                              torch.stack([c.text for c in clips]))
            logits.append(out_b.reshape(-1, 256, 256).numpy())
            gts += [c.gt for c in clips]
    ref = benchmark_metrics(np.concatenate(logits), np.concatenate(gts), frames_per_batch=40)
    for k in ("J", "F", "S"):
        assert math.isclose(result["metrics"][k], ref[k], rel_tol=1e-5, abs_tol=1e-7), k
    assert 0.0 <= ref["J"] <= 1.0 and 0.0 <= ref["F"] <= 1.0


def test_eval_bench_per_frame_modes(bench_dir, official_files, tmp_path, capsys):
    ckpt, models_dir = official_files
    common = ["--checkpoint", str(ckpt), "--models-dir", str(models_dir), "--no-progress", "--mode", "per-frame"]
    res = {}
    for inference in ("clip", "stream"):
        out = tmp_path / f"{inference}.json"
        assert eval_bench.main([str(bench_dir), "--split", "test_s", "--limit", "2", "--inference", inference,
                                "--metrics-json", str(out), *common]) == 0
        res[inference] = json.loads(out.read_text())
    for r in res.values():
        m = r["metrics"]
        assert r["clips"] == 2 and m["frames"] == 20 and m["f_frames"] == 18 and m["s_frames"] == 2
    out = tmp_path / "null.json"
    assert eval_bench.main([str(bench_dir), "--split", "test_n", "--metrics-json", str(out), *common]) == 0
    null = json.loads(out.read_text())
    assert null["metrics"]["f_frames"] == 0 and null["metrics"]["S"] is not None
    assert "paper reports S" in capsys.readouterr().out


def test_stream_reading_last_frame_equals_clip_reading(bench_dir, official_files):
    ckpt, models_dir = official_files
    parts = load_official(ckpt, models_dir)
    bench = RefAvsBench(bench_dir)
    inputs = eval_bench.clip_inputs(bench, bench.entries("test_u")[0], parts)
    with torch.no_grad():
        clip = parts.model.forward_clip(inputs.pixel_values, inputs.audio, inputs.text)
        stream = eval_bench.stream_clip_logits(parts.model, inputs)
        first = parts.model.forward_clip(inputs.pixel_values[:1], inputs.audio[:1], inputs.text)
    torch.testing.assert_close(stream[-1], clip[-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stream[0], first[0], rtol=1e-4, atol=1e-4)


def test_eval_bench_errors_exit_2(bench_dir, official_files, tmp_path, capsys):
    ckpt, models_dir = official_files
    assert eval_bench.main([str(bench_dir), "--split", "test_s", "--checkpoint", str(tmp_path / "none.pth"),
                            "--models-dir", str(models_dir), "--no-progress"]) == 2
    assert "none.pth" in capsys.readouterr().err
    assert eval_bench.main([str(tmp_path), "--split", "test_s", "--checkpoint", str(ckpt),
                            "--models-dir", str(models_dir)]) == 2
    assert eval_bench.main([str(bench_dir), "--split", "val", "--checkpoint", str(ckpt),
                            "--models-dir", str(models_dir)]) == 2


# ---------------------------------------------------------------------------------- bags


def test_bench2bag_writes_replayable_bags(bench_dir, tmp_path):
    assert bench2bag.main([str(bench_dir), str(tmp_path), "--split", "test_s", "--limit", "2", "--no-progress"]) == 0
    bags = sorted((tmp_path / "test_s").iterdir())
    assert [b.name for b in bags] == ["00000_-aa_0_10000_cat_1", "00001_-aa_0_10000_dog_2"]
    bench = RefAvsBench(bench_dir)
    entry = bench.entries("test_s")[0]
    topics = [bagio.TOPIC_IMAGE, bagio.TOPIC_AUDIO, bagio.TOPIC_COMMAND, bagio.TOPIC_GT_MASK, bagio.TOPIC_SCENE_INFO]
    order = bagio.read_sorted(bags[0], topics, required=topics)
    by_topic: dict[str, list] = {t: [] for t in topics}
    for m in order.messages:
        by_topic[m.topic].append(m)
    assert len(by_topic[bagio.TOPIC_IMAGE]) == 10 and len(by_topic[bagio.TOPIC_GT_MASK]) == 10
    assert len(by_topic[bagio.TOPIC_AUDIO]) == math.ceil(160000 / 512)
    assert by_topic[bagio.TOPIC_COMMAND][0].message.data == entry.expression
    info = json.loads(by_topic[bagio.TOPIC_SCENE_INFO][0].message.data)
    assert info["split"] == "test_s" and info["kind"] == "unlabelled" and info["expression"] == entry.expression
    assert info["uid"] == entry.uid and info["source_sample_rate"] == 16000
    stamps = [m.stamp_ns for m in by_topic[bagio.TOPIC_IMAGE]]
    assert stamps == [bench2bag.START_NS + 975_000_000 + i * 1_000_000_000 for i in range(10)]
    first = conversions.image_to_array(by_topic[bagio.TOPIC_IMAGE][0].message)
    np.testing.assert_array_equal(first, bench.load_frames(entry)[0])
    gt = np.stack([conversions.image_to_array(m.message) > 0 for m in by_topic[bagio.TOPIC_GT_MASK]])
    np.testing.assert_array_equal(gt.reshape(10, 36, 48), bench.load_gt(entry, size=None))
    audio = np.concatenate([conversions.audio_to_array(m.message)[0].reshape(-1)
                            for m in by_topic[bagio.TOPIC_AUDIO]])
    expected = np.round(bench.load_audio_16k(entry) * 32767).astype(np.int16)
    np.testing.assert_array_equal(audio, expected)


def test_bench2bag_null_split_sqlite_and_existing_bags(bench_dir, tmp_path, capsys):
    args = [str(bench_dir), str(tmp_path), "--split", "test_n", "--storage", "sqlite3", "--no-progress"]
    assert bench2bag.main(args) == 0
    bags = sorted((tmp_path / "test_n").iterdir())
    assert len(bags) == 2 and any(p.suffix == ".db3" for p in bags[1].iterdir())
    order = bagio.read_sorted(bags[1], [bagio.TOPIC_GT_MASK, bagio.TOPIC_SCENE_INFO])
    infos = [json.loads(m.message.data) for m in order.messages if m.topic == bagio.TOPIC_SCENE_INFO]
    assert infos[0]["kind"] == "null"
    masks = [conversions.image_to_array(m.message) for m in order.messages if m.topic == bagio.TOPIC_GT_MASK]
    assert len(masks) == 10 and not any(m.any() for m in masks)
    assert bench2bag.main(args) == 2  # exists, no --overwrite
    assert "test_n" in capsys.readouterr().err
    assert bench2bag.main([*args, "--overwrite"]) == 0


def test_replay_runs_the_official_model_on_converted_bags(bench_dir, official_files, tmp_path):
    from refavs_ros.tools import replay

    ckpt, models_dir = official_files
    assert bench2bag.main([str(bench_dir), str(tmp_path / "bags"), "--split", "test_u", "--no-progress"]) == 0
    out = tmp_path / "replay.json"
    code = replay.main([str(tmp_path / "bags" / "test_u"), "--model", "official", "--weights", str(ckpt),
                        "--models-dir", str(models_dir), "--metrics-json", str(out), "--no-progress"])
    assert code == 0
    text = out.read_text()
    assert "test_u" in text
