"""Tests of the synthetic Ref-AVS benchmark (refavs_ros.scenes) and the refavs-scenes CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from refavs_ros import scenes
from refavs_ros.errors import ConfigError
from refavs_ros.scenes import (
    CATEGORIES,
    COLOURS,
    EXPRESSION_KINDS,
    HELD_OUT_PAIRS,
    SPLITS,
    Scene,
    SceneConfig,
    generate_scene,
    held_out_pairs_in,
    kind_for,
    media,
    plan_scene,
    planner,
)
from refavs_ros.scenes.catalog import CATEGORY_BY_NAME
from refavs_ros.scenes.render import object_sprite

SMALL = SceneConfig(width=64, height=48, fps=2.0, duration_sec=4.0)
TRAIN = SceneConfig(width=128, height=128, fps=1.0, duration_sec=8.0)


def _scenes_of(split: str, kind: str, count: int, config: SceneConfig = SMALL, variants=None, limit: int = 400):
    """The first ``count`` scenes of ``split`` with ``kind`` (and a variant in ``variants``)."""
    out = []
    for i in range(limit):
        if kind_for(split, i) != kind:
            continue
        if variants is not None and plan_scene(split, i, 0, config).variant not in variants:
            continue
        out.append(generate_scene(split, i, 0, config))
        if len(out) == count:
            break
    assert len(out) == count, f"only {len(out)} {kind} scenes in {limit} indices"
    return out


def _plans(split: str, n: int, config: SceneConfig = SMALL):
    return [plan_scene(split, i, 0, config) for i in range(n)]


# ----------------------------------------------------------------------------- API contract


def test_public_constants():
    assert SPLITS == ("train", "val", "test-seen", "test-unseen", "test-null", "test-noisy", "test-occluded")
    assert EXPRESSION_KINDS == ("semantic", "appearance", "spatial", "acoustic", "temporal", "null")
    assert 8 <= len(CATEGORIES) <= 10 and len(set(CATEGORIES)) == len(CATEGORIES)
    for a, b in HELD_OUT_PAIRS:
        assert a in CATEGORIES and b in CATEGORIES and a != b


def test_determinism_and_separate_streams():
    a = generate_scene("train", 7, seed=3, config=SMALL)
    b = generate_scene("train", 7, seed=3, config=SMALL)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.gt_masks, b.gt_masks)
    assert a.info() == b.info() and a.expression == b.expression
    others = [generate_scene("train", 8, 3, SMALL), generate_scene("train", 7, 4, SMALL),
              generate_scene("val", 7, 3, SMALL)]
    for o in others:
        assert not np.array_equal(o.frames, a.frames)
        assert not np.array_equal(o.audio, a.audio)


def test_shapes_dtypes_stamps_and_info():
    cfg = SceneConfig(width=64, height=48, fps=2.0, duration_sec=4.0, start_ns=5 * 10**9 + 3)
    s = generate_scene("test-seen", 3, 0, cfg)
    assert isinstance(s, Scene) and s.scene_id == "test-seen-000003" and s.split == "test-seen"
    assert s.kind in EXPRESSION_KINDS and isinstance(s.expression, str) and s.expression
    assert s.frames.dtype == np.uint8 and s.frames.shape == (8, 48, 64, 3)
    assert s.gt_masks.dtype == bool and s.gt_masks.shape == (8, 48, 64)
    assert s.frame_stamps_ns.dtype == np.int64
    np.testing.assert_array_equal(s.frame_stamps_ns, 5 * 10**9 + 3 + np.arange(1, 9) * 500_000_000)
    assert s.audio.dtype == np.int16 and s.audio.shape == (4 * 16000,)
    assert s.audio_start_ns == cfg.start_ns
    info = s.info()
    text = json.dumps(info)  # JSON-serialisable, no arrays
    assert json.loads(text) == info
    for key in ("scene_id", "split", "kind", "expression", "target", "objects"):
        assert key in info
    assert len(info["objects"]) == len(s.objects) >= 1
    for o in info["objects"]:
        assert o["category"] in CATEGORIES and o["colour"] in COLOURS and o["size"] in ("small", "big")
        assert len(o["bboxes"]) == 8 and all(0 <= k < 4 for k in o["sounding_slots"])
    # 3 fps over 4 s: frames at 0, 1/3, ..., 11/3 s
    three_fps = SceneConfig(width=48, height=48, fps=3.0, duration_sec=4.0)
    assert generate_scene("val", 0, 0, three_fps).frames.shape[0] == 12


def test_invalid_inputs_raise_config_error():
    with pytest.raises(ConfigError, match="split"):
        generate_scene("testing", 0)
    with pytest.raises(ConfigError, match="index"):
        generate_scene("train", -1)
    with pytest.raises(ConfigError, match="seed"):
        generate_scene("train", 0, seed="x")  # type: ignore[arg-type]
    for bad in (SceneConfig(width=8), SceneConfig(fps=0.0), SceneConfig(duration_sec=3.5),
                SceneConfig(duration_sec=2.0), SceneConfig(media="photos"), SceneConfig(sample_rate=100),
                SceneConfig(start_ns=-1)):
        with pytest.raises(ConfigError):
            generate_scene("train", 0, 0, bad)


def test_kind_proportions_per_block():
    kinds = Counter(kind_for("train", i) for i in range(100))
    assert kinds == {"semantic": 18, "appearance": 18, "spatial": 18, "acoustic": 18, "temporal": 18, "null": 10}
    assert {kind_for("test-null", i) for i in range(60)} == {"null"}
    assert [kind_for("val", i) for i in range(50)] != [kind_for("test-seen", i) for i in range(50)]


# ----------------------------------------------------------------------------- ground truth


def _closest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    tints = np.array([COLOURS[n] for n in names], np.float64)
    cos = tints @ rgb / (np.linalg.norm(tints, axis=1) * np.linalg.norm(rgb))
    return names[int(np.argmax(cos))]


def test_gt_mask_is_exactly_the_target_region():
    checked = Counter()
    for i in range(30):
        plan = plan_scene("train", i, 0, SMALL)
        s = generate_scene("train", i, 0, SMALL)
        if s.target is None:
            assert not s.gt_masks.any()
            continue
        tgt = s.objects[s.target]
        _, alpha, _ = object_sprite(plan.objects[s.target], SMALL)
        areas = s.gt_masks.reshape(s.gt_masks.shape[0], -1).sum(axis=1)
        # objects never overlap and stay in the frame: the full silhouette is visible every frame
        np.testing.assert_array_equal(areas, alpha.sum())
        assert tgt["areas_px"] == [int(a) for a in areas]
        for t in range(s.frames.shape[0]):
            ys, xs = np.nonzero(s.gt_masks[t])
            assert tgt["bboxes"][t] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # the masked pixels carry the target's tint
        mean_rgb = s.frames[s.gt_masks].reshape(-1, 3).mean(axis=0)
        assert _closest_colour(mean_rgb) == tgt["colour"]
        checked[s.kind] += 1
    assert len(checked) == 5


def test_objects_are_disjoint_and_fully_visible():
    for i in range(20):
        plan = plan_scene("val", i, 0, SMALL)
        s = generate_scene("val", i, 0, SMALL)
        for o, p in zip(s.objects, plan.objects):
            _, alpha, _ = object_sprite(p, SMALL)
            assert o["areas_px"] == [int(alpha.sum())] * s.frames.shape[0]


def test_objects_drift_and_masks_follow():
    moved = 0
    for s in _scenes_of("train", "semantic", 10, TRAIN):
        boxes = s.objects[s.target]["bboxes"]
        if boxes[0] != boxes[-1]:
            moved += 1
            assert not np.array_equal(s.gt_masks[0], s.gt_masks[-1])
    assert moved >= 3


# ------------------------------------------------------------------------- expression rules


def test_semantic_and_appearance_referents_are_unique():
    for s in _scenes_of("train", "semantic", 8) + _scenes_of("train", "appearance", 12):
        objs, tgt, cue = s.objects, s.objects[s.target], s.info()["cue"]
        same_cat = [o for o in objs if o["category"] == tgt["category"]]
        if s.kind == "semantic":
            assert len(same_cat) == 1
        elif s.variant == "colour":
            assert len(same_cat) == 2 and cue["colour"] == tgt["colour"]
            assert [o["colour"] for o in same_cat].count(tgt["colour"]) == 1
        elif s.variant == "size":
            assert len(same_cat) == 2 and {o["size"] for o in same_cat} == {"small", "big"}
            assert cue["size"] == tgt["size"]
        else:
            assert s.variant == "colour-any"
            assert [o["colour"] for o in objs].count(tgt["colour"]) == 1 and len(objs) >= 2


def test_spatial_relation_holds_in_every_frame():
    for s in _scenes_of("train", "spatial", 12):
        rel = s.info()["cue"]["relation"]
        tcat = s.objects[s.target]["category"]
        members = [o for o in s.objects if s.variant == "relation-any" or o["category"] == tcat]
        assert len(members) >= 2
        for t in range(s.frames.shape[0]):
            def centre(o):
                x0, y0, x1, y1 = o["bboxes"][t]
                return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
            c = centre(s.objects[s.target])
            others = [centre(o) for o in members if o["index"] != s.target]
            if rel == "left":
                assert all(c[0] < o[0] for o in others)
            elif rel == "right":
                assert all(c[0] > o[0] for o in others)
            elif rel == "top":
                assert all(c[1] < o[1] for o in others)
            elif rel == "bottom":
                assert all(c[1] > o[1] for o in others)
            else:
                assert rel == "middle" and min(o[0] for o in others) < c[0] < max(o[0] for o in others)


def test_null_expressions_name_something_absent():
    variants = Counter()
    for i in range(40):
        s = generate_scene("test-null", i, 0, SMALL)
        assert s.kind == "null" and s.target is None and not s.gt_masks.any()
        cue = s.info()["cue"]
        variants[s.variant] += 1
        if s.variant == "absent-category":
            assert cue["category"] not in {o["category"] for o in s.objects}
            spec = CATEGORY_BY_NAME[cue["category"]]
            assert any(n in s.expression for n in (spec.name,) + spec.synonyms)
        else:
            assert s.variant == "absent-colour"
            assert cue["colour"] not in {o["colour"] for o in s.objects} and cue["colour"] in s.expression
    assert variants["absent-category"] >= 30
    train_null = [p for p in _plans("train", 200) if p.kind == "null"]
    assert 15 <= len(train_null) <= 25


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _residual(audio: np.ndarray, ref: np.ndarray) -> float:
    """RMS (full scale 1) of ``audio`` minus its least-squares fit by ``ref``."""
    y = audio.astype(np.float64) / 32767.0
    x = ref.astype(np.float64)
    return float(np.sqrt(np.mean((y - (x @ y) / (x @ x) * x) ** 2)))


def _centroid_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64)))
    return float((spec * np.fft.rfftfreq(x.size, 1.0 / rate)).sum() / spec.sum())


@pytest.mark.parametrize("mode", ["auto", "procedural"])
def test_big_objects_sound_an_octave_lower(mode):
    for cat in CATEGORIES:
        small = media.looped_sound(cat, "small", mode, 16000, 32000)
        big = media.looped_sound(cat, "big", mode, 16000, 32000)
        ratio = _centroid_hz(big, 16000) / _centroid_hz(small, 16000)
        assert 0.4 < ratio < 0.7, (cat, mode, ratio)
        assert np.sqrt(np.mean(small.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-3)


def test_acoustic_lookalikes_differ_only_by_audio():
    sizes, n = Counter(), 0
    for s in _scenes_of("train", "acoustic", 12, variants=("sounding-noun", "sounding-any")):
        tgt = s.objects[s.target]
        twins = [o for o in s.objects if o["category"] == tgt["category"] and o["index"] != s.target]
        assert len(twins) == 1
        twin = twins[0]
        assert twin["colour"] == tgt["colour"] and {twin["size"], tgt["size"]} == {"small", "big"}
        assert tgt["sounding_slots"] == [0, 1, 2, 3] and twin["sounding_slots"] == []
        if s.variant == "sounding-any":
            assert [o["index"] for o in s.objects if o["sounding_slots"]] == [s.target]
        # the soundtrack carries the target's size-specific pitch, not the twin's
        own = media.looped_sound(tgt["category"], tgt["size"], "auto", 16000, s.audio.size)
        other = media.looped_sound(tgt["category"], twin["size"], "auto", 16000, s.audio.size)
        assert _corr(s.audio, own) > _corr(s.audio, other) + 0.2
        sizes[tgt["size"]] += 1
        n += 1
    assert sizes["big"] >= 2 and sizes["small"] >= 2  # the picture cannot tell which one


def test_loudness_expressions_are_12_db_apart():
    for s in _scenes_of("train", "acoustic", 6, variants=("louder", "quieter")):
        sounding = [o for o in s.objects if o["sounding_slots"]]
        assert len(sounding) == 2 and sounding[0]["category"] != sounding[1]["category"]
        tgt = s.objects[s.target]
        other = next(o for o in sounding if o["index"] != s.target)
        diff = tgt["gain_db"] - other["gain_db"]
        assert diff == pytest.approx(12.0 if s.variant == "louder" else -12.0)


def test_temporal_slots_match_the_expression():
    sr = 16000
    for s in _scenes_of("train", "temporal", 12, TRAIN):
        tgt = s.objects[s.target]
        sounding = [o for o in s.objects if o["sounding_slots"]]
        assert len(sounding) == 2
        other = next(o for o in sounding if o["index"] != s.target)
        if s.variant == "first":
            assert tgt["sounding_slots"][0] == 0 and other["sounding_slots"][0] >= 2
            # slot 0 of the soundtrack is the target's sound alone (plus faint noise); from the
            # other's first slot on, the target alone no longer explains it
            own = media.looped_sound(tgt["category"], tgt["size"], "auto", sr, s.audio.size)
            k = other["sounding_slots"][0]
            alone = _residual(s.audio[sr // 10 : sr - sr // 10], own[sr // 10 : sr - sr // 10])
            mixed = _residual(s.audio[k * sr + sr // 10 : (k + 1) * sr - sr // 10],
                              own[k * sr + sr // 10 : (k + 1) * sr - sr // 10])
            assert alone < 0.01 and mixed > max(0.02, 3 * alone)
        elif s.variant == "last":
            assert other["sounding_slots"][0] == 0 and tgt["sounding_slots"][0] >= 2
        else:
            assert tgt["sounding_slots"] == list(range(8))
            slots = other["sounding_slots"]
            assert slots[0] >= 1 and len(slots) < 8 - slots[0]  # starts late, then pauses


# ------------------------------------------------------------------------------- split rules


def test_category_sampler_respects_held_out_pairs():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        cats = planner.sample_categories(rng, "train", int(rng.integers(1, 5)))
        if cats is not None:
            assert len(set(cats)) == len(cats) and not held_out_pairs_in(cats)
    for _ in range(500):
        cats = planner.sample_categories(rng, "test-unseen", int(rng.integers(2, 5)))
        assert tuple(sorted(cats[:2])) in {tuple(sorted(p)) for p in HELD_OUT_PAIRS}


def test_held_out_pairs_only_in_test_unseen():
    for split in ("train", "val", "test-seen", "test-null"):
        for p in _plans(split, 200 if split == "train" else 40):
            assert not held_out_pairs_in([o.category for o in p.objects]), p.scene_id
    for p in _plans("test-unseen", 60):
        pairs = held_out_pairs_in([o.category for o in p.objects])
        assert pairs
        if p.target is not None:
            assert any(p.objects[p.target].category in pair for pair in pairs)


# ------------------------------------------------------------------------------------ media


def test_procedural_media_keep_the_scene_content():
    cfg = SceneConfig(width=64, height=48, fps=1.0, duration_sec=4.0, media="procedural")
    for i in range(6):
        s = generate_scene("train", i, 0, cfg)
        a = generate_scene("train", i, 0, SceneConfig(width=64, height=48, fps=1.0, duration_sec=4.0))
        assert s.expression == a.expression and s.target == a.target
        assert [o["category"] for o in s.objects] == [o["category"] for o in a.objects]
        for o in s.objects:
            assert o["image_source"].startswith("procedural:") and o["sound_source"].startswith("synth:")
        if s.target is not None:
            assert s.gt_masks.any(axis=(1, 2)).all()


def test_missing_tools_fall_back_to_synthetic_sounds(monkeypatch):
    media.category_sound.cache_clear()
    media.looped_sound.cache_clear()
    try:
        monkeypatch.setattr(media.shutil, "which", lambda name: None)
        monkeypatch.setattr(media, "FREEDESKTOP_DIR", "/nonexistent")
        for cat in CATEGORIES:
            snd = media.category_sound(cat, "auto")
            assert snd.source.startswith("synth:") and snd.wave.dtype == np.float32 and snd.wave.size > 1000
        s = generate_scene("train", 1, 0, SMALL)
        assert all(o["sound_source"].startswith("synth:") for o in s.objects)
        assert any("fallback" in o["sound_source"] for o in s.objects) or all(
            CATEGORY_BY_NAME[o["category"]].sound[0] == "synth" for o in s.objects)
    finally:
        media.category_sound.cache_clear()
        media.looped_sound.cache_clear()


def test_auto_media_use_real_photos_and_recordings():
    for cat in CATEGORIES:
        sprite = media.category_sprite(cat, "auto")
        assert sprite.source.startswith("skimage.data.")
        assert sprite.alpha.shape == media.sprite_shape(CATEGORY_BY_NAME[cat].aspect)
        assert 0.25 < sprite.alpha.mean() < 0.95
    recorded = [media.category_sound(c, "auto").source for c in CATEGORIES]
    if media.shutil.which("sox") and media.shutil.which("espeak-ng"):
        assert sum(src.startswith(("freedesktop:", "espeak-ng:")) for src in recorded) >= 6


# --------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_cli_writes_readable_bags(tmp_path, storage, capsys):
    from rosbags.highlevel import AnyReader

    from refavs_ros.rosio import msgs
    from refavs_ros.tools.scenes_cli import main

    out = tmp_path / "bags"
    rc = main([str(out), "--split", "test-seen", "--count", "2", "--seed", "1", "--storage", storage,
               "--width", "64", "--height", "48", "--fps", "1", "--duration", "4", "--quiet"])
    assert rc == 0
    assert "wrote 2 test-seen scene bags" in capsys.readouterr().out
    cfg = SceneConfig(width=64, height=48, fps=1.0, duration_sec=4.0)
    for index in range(2):
        scene = generate_scene("test-seen", index, 1, cfg)
        bag = out / scene.scene_id
        assert (bag / "metadata.yaml").is_file()
        counts, texts, audio = Counter(), {}, []
        with AnyReader([bag], default_typestore=msgs.typestore()) as reader:
            for conn, _, raw in reader.messages():
                counts[conn.topic] += 1
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic in ("/refavs/command", "/refavs/scene_info"):
                    texts[conn.topic] = msg.data
                elif conn.topic == "/audio":
                    audio.append(np.asarray(msg.audio.audio_data.int16_data))
                elif conn.topic == "/refavs/gt_mask":
                    assert msg.encoding == "mono8" and (msg.height, msg.width) == (48, 64)
        assert counts["/camera/image_raw"] == 4 and counts["/refavs/gt_mask"] == 4
        assert counts["/refavs/command"] == 1 and counts["/refavs/scene_info"] == 1
        assert counts["/audio"] == -(-4 * 16000 // 512)
        np.testing.assert_array_equal(np.concatenate(audio)[: scene.audio.size], scene.audio)
        assert texts["/refavs/command"] == scene.expression
        assert json.loads(texts["/refavs/scene_info"])["scene_id"] == scene.scene_id


def test_cli_errors_exit_2(tmp_path, capsys):
    from refavs_ros.tools.scenes_cli import main

    assert main([str(tmp_path / "x"), "--split", "train", "--duration", "3.5", "--quiet"]) == 2
    assert "duration_sec" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "--split", "nope"]) == 2
    assert main([str(tmp_path / "x"), "--split", "train", "--count", "-1"]) == 2
    args = [str(tmp_path / "y"), "--split", "val", "--count", "1", "--width", "48", "--height", "48",
            "--duration", "4", "--quiet"]
    assert main(args) == 0
    assert main(args) == 2  # exists already, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_package_exports():
    for name in scenes.__all__:
        assert hasattr(scenes, name)
