"""Scene realism options: ambient noise at an SNR (test-noisy) and occlusion (test-occluded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refavs_ros.errors import ConfigError
from refavs_ros.scenes import (
    CATEGORIES,
    SceneConfig,
    generate_scene,
    kind_for,
    noise,
    occlusion,
)
from refavs_ros.scenes.catalog import CATEGORY_SPECS
from refavs_ros.scenes.render import object_masks, object_sprite, render_frames

CFG = SceneConfig(width=128, height=96, fps=1.0, duration_sec=6.0)


# ------------------------------------------------------------------------------------ noise


def test_mix_at_snr_hits_the_requested_ratio():
    rng = np.random.default_rng(0)
    signal = np.zeros(16000 * 4, np.float32)
    signal[16000:32000] = 0.1 * rng.standard_normal(16000)  # one active slot
    active = np.zeros(signal.size, bool)
    active[16000:32000] = True
    track = rng.standard_normal(signal.size).astype(np.float32) * 3.0
    for snr in (20.0, 5.0, 0.0, -5.0):
        scaled = noise.mix_at_snr(track, signal, active, snr)
        p_sig = np.mean(signal[active].astype(np.float64) ** 2)
        p_noise = np.mean(scaled.astype(np.float64) ** 2)
        assert 10 * np.log10(p_sig / p_noise) == pytest.approx(snr, abs=1e-3)
    # silent scene: the reference power of one object at 0 dB gain
    scaled = noise.mix_at_snr(track, np.zeros_like(signal), np.zeros_like(active), 10.0)
    assert np.mean(scaled.astype(np.float64) ** 2) == pytest.approx(0.01 / 10, rel=1e-3)
    with pytest.raises(ValueError, match="finite"):
        noise.mix_at_snr(track, signal, active, float("nan"))
    with pytest.raises(ValueError, match="match"):
        noise.mix_at_snr(track[:10], signal, active, 0.0)


def test_ambient_components_are_unit_rms_and_deterministic():
    for kinds in (("babble",), ("hum",), ("fan",), ("distractor",), ("hum", "fan")):
        a, names = noise.ambient_noise(np.random.default_rng(3), 16000 * 3, 16000, "procedural", kinds)
        b, _ = noise.ambient_noise(np.random.default_rng(3), 16000 * 3, 16000, "procedural", kinds)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        assert len(names) == len(kinds)
    with pytest.raises(ValueError, match="subset"):
        noise.ambient_noise(np.random.default_rng(0), 100, 16000, "procedural", ("rain",))


def test_noise_sources_are_not_the_object_sounds():
    used = {spec.sound[1] for spec in CATEGORY_SPECS if spec.sound[0] == "freedesktop"}
    assert used and not used & set(noise.DISTRACTOR_SOUNDS)
    voices = {spec.espeak_args[1] for spec in CATEGORY_SPECS if spec.sound[0] == "espeak"}
    assert not voices & {args[1] for args, _ in noise.BABBLE_TALKERS}
    assert not {spec.sound[1] for spec in CATEGORY_SPECS} & {text for _, text in noise.BABBLE_TALKERS}


def test_noise_leaves_the_scene_and_adds_the_requested_snr():
    clean = generate_scene("train", 4, 0, CFG)
    noisy = generate_scene("train", 4, 0, SceneConfig(**{**CFG.__dict__, "snr_db": 0.0}))
    np.testing.assert_array_equal(clean.frames, noisy.frames)
    np.testing.assert_array_equal(clean.gt_masks, noisy.gt_masks)
    assert clean.expression == noisy.expression and "ambient" not in clean.meta
    assert noisy.meta["ambient"]["snr_db"] == 0.0 and noisy.meta["ambient"]["components"]
    diff = noisy.audio.astype(np.float64) - clean.audio.astype(np.float64)
    assert np.sqrt(np.mean(diff**2)) > 100  # clearly audible at 0 dB
    quiet = generate_scene("train", 4, 0, SceneConfig(**{**CFG.__dict__, "snr_db": 30.0}))
    diff30 = quiet.audio.astype(np.float64) - clean.audio.astype(np.float64)
    assert np.sqrt(np.mean(diff30**2)) < np.sqrt(np.mean(diff**2)) / 10  # 30 dB less noise, some limiting aside


def test_test_noisy_cycles_its_snrs_and_noise_prob_draws_from_the_range():
    snrs = [generate_scene("test-noisy", i, 0, CFG).meta["ambient"]["snr_db"] for i in range(4)]
    assert snrs == list(noise.TEST_NOISY_SNRS_DB)
    cfg = SceneConfig(**{**CFG.__dict__, "noise_prob": 0.5, "snr_range_db": (2.0, 4.0)})
    got = [noise.scene_snr("train", i, 0, cfg)[0] for i in range(200)]
    drawn = [s for s in got if s is not None]
    assert 60 < len(drawn) < 140 and all(2.0 <= s <= 4.0 for s in drawn)
    for bad in ({"snr_db": 100.0}, {"noise_prob": 1.5}, {"snr_range_db": (5.0, 1.0)}, {"occlusion_range": (0.0, 0.5)}):
        with pytest.raises(ConfigError):
            generate_scene("train", 0, 0, SceneConfig(**{**CFG.__dict__, **bad}))


# -------------------------------------------------------------------------------- occlusion


@pytest.fixture(scope="module")
def occluded():
    return [generate_scene("test-occluded", i, 0, CFG) for i in range(24)]


def test_occluded_referent_is_covered_within_range_and_gt_is_its_visible_part(occluded):
    kinds = set()
    for s in occluded:
        occ = s.meta.get("occlusion")
        assert occ is not None, s.scene_id
        kinds.add(occ["occluder"])
        frac = np.asarray(occ["fraction"])
        assert frac.shape == (s.frames.shape[0],) and frac.min() >= 0.25 and frac.max() <= 0.6
        if s.target is None:
            assert not s.gt_masks.any()
            continue
        assert occ["object"] == s.target
        from refavs_ros.scenes.planner import plan_scene

        plan = plan_scene(s.split, s.meta["index"], 0, CFG)
        full = object_masks(plan.objects[s.target], CFG)
        assert not (s.gt_masks & ~full).any()  # visible part only
        _, owner, _ = render_frames(plan, CFG, np.random.default_rng(0))  # the scene without occluder
        before = (owner == s.target).reshape(len(frac), -1).sum(1)
        visible = s.gt_masks.reshape(len(frac), -1).sum(1) / full.reshape(len(frac), -1).sum(1)
        # the fraction is of the whole silhouette; objects never overlap but for their corners
        assert (visible <= 1.0 - frac + 1e-4).all()
        np.testing.assert_allclose(visible, 1.0 - frac - (full.reshape(len(frac), -1).sum(1) - before)
                                   / full.reshape(len(frac), -1).sum(1), atol=0.02)
        for j, o in enumerate(plan.objects):  # every other object keeps >= 60 %
            if j != s.target:
                m = object_masks(o, CFG)
                seen = (s.instance_map == j).reshape(len(frac), -1).sum(1) / np.maximum(m.reshape(len(frac), -1).sum(1), 1)
                assert seen.min() >= occlusion.MIN_VISIBLE_OTHERS - 1e-6
    assert kinds == {"bar", "object"}


def test_object_occluders_keep_the_expression_unique(occluded):
    from refavs_ros.scenes.planner import plan_scene

    for s in occluded:
        occ = s.meta["occlusion"]
        if occ["occluder"] != "object":
            continue
        plan = plan_scene(s.split, s.meta["index"], 0, CFG)
        assert [o["category"] for o in s.objects[:-1]] == [o.category for o in plan.objects]
        extra = s.objects[-1]
        assert extra["role"] == "occluder" and extra["sounding_slots"] == []
        assert extra["category"] not in {o.category for o in plan.objects}
        assert extra["category"] not in (plan.cue.get("category"), plan.cue.get("other_category"))
        assert extra["colour"] != plan.cue.get("colour") and s.variant != "relation-any"


def test_occlusion_is_drawn_on_top_of_the_same_scene():
    base = SceneConfig(**{**CFG.__dict__, "occlusion_prob": 0.0})
    occ_cfg = SceneConfig(**{**CFG.__dict__, "occlusion_prob": 1.0})
    changed = 0
    for i in range(6):
        a, b = generate_scene("val", i, 0, base), generate_scene("val", i, 0, occ_cfg)
        assert a.expression == b.expression and "occlusion" not in a.meta
        if "occlusion" in b.meta:
            changed += 1
            assert (a.frames != b.frames).any()
            assert b.gt_masks.sum() <= a.gt_masks.sum()
    assert changed >= 5


def test_bar_mask_and_drawing():
    bar = {"orientation": "vertical", "centre": 0.5, "half": 0.1, "velocity": 0.0, "material": "wood"}
    m = occlusion.bar_mask(bar, CFG)
    assert m.shape == (CFG.num_frames, CFG.height, CFG.width)
    assert m[:, :, 64].all() and not m[:, :, 20].any()
    frames = np.zeros((CFG.num_frames, CFG.height, CFG.width, 3), np.uint8)
    owner = np.zeros((CFG.num_frames, CFG.height, CFG.width), np.int8)
    occlusion.draw_bars(frames, owner, [bar], CFG)
    assert (owner[m] == -1).all() and (owner[~m] == 0).all() and frames[m].max() > 0
    rgb = frames[0, 10, 64].astype(int)
    assert max(rgb) - min(rgb) < 80  # desaturated, unlike the object tints


def test_object_masks_match_the_renderer():
    s = generate_scene("train", 2, 0, CFG)
    from refavs_ros.scenes.planner import plan_scene

    plan = plan_scene("train", 2, 0, CFG)
    for j, o in enumerate(plan.objects):
        m = object_masks(o, CFG, object_sprite(o, CFG)[1])
        assert not ((s.instance_map == j) & ~m).any()


def test_scenes_cli_noise_occlusion_and_kinds(tmp_path):
    from refavs_ros.rosio import bagio
    from refavs_ros.tools.scenes_cli import main

    out = tmp_path / "bags"
    rc = main([str(out), "--split", "test-seen", "--count", "2", "--width", "64", "--height", "48", "--fps", "1",
               "--duration", "4", "--snr-db", "5", "--occlusion", "1", "--kinds", "temporal", "--quiet"])
    assert rc == 0
    bags = sorted(p for p in out.iterdir())
    assert len(bags) == 2
    for bag in bags:
        index = int(bag.name.rsplit("-", 1)[1])
        assert kind_for("test-seen", index, 0) == "temporal"
        with bagio.BagReader(bag) as reader:
            info = json.loads(reader.first_message(bagio.TOPIC_SCENE_INFO).message.data)
        assert info["ambient"]["snr_db"] == 5.0 and "occlusion" in info
    assert main([str(out), "--split", "train", "--kinds", "loud", "--quiet"]) == 2
    assert main([str(out), "--split", "train", "--snr-db", "99", "--quiet"]) == 2
    assert set(CATEGORIES)  # (keeps the import used)
