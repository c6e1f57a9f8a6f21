"""Tests of refavs-replay (refavs_ros.tools.replay) with a deterministic fake predictor, plus one
end-to-end run with the real StreamingPredictor on a tiny random EEMC."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from refavs_ros.errors import BagError, InputError
from refavs_ros.eval import metrics as M
from refavs_ros.rosio import bagio, conversions, msgs
from refavs_ros.tools import replay as R

START = 1_700_000_000 * 10**9


@dataclass
class FakePrediction:
    stamp_ns: int
    mask: np.ndarray
    probability: np.ndarray
    score: float
    found: bool
    bbox: tuple | None
    command: str


class FakePredictor:
    """Deterministic stand-in: probability = red channel / 255; records every call."""

    def __init__(self):
        self.calls = []
        self.command = ""
        self.pending = None
        self.last_stepped = None

    def reset_memory(self):
        self.calls.append(("reset",))
        self.pending = None
        self.last_stepped = None

    def set_command(self, text):
        if "\x00" in text:
            raise InputError("NUL in command")
        self.calls.append(("command", text))
        self.command = text

    def push_audio(self, stamp_ns, samples, sample_rate):
        self.calls.append(("audio", stamp_ns, len(samples), sample_rate))

    def push_image(self, stamp_ns, image):
        if self.last_stepped is not None and stamp_ns <= self.last_stepped:
            raise InputError("not newer")
        assert image.dtype == np.uint8 and image.shape[2] == 3
        self.calls.append(("image", stamp_ns))
        self.pending = (stamp_ns, image)

    def step(self):
        if self.pending is None or not self.command:
            return None
        stamp_ns, image = self.pending
        self.pending = None
        self.last_stepped = stamp_ns
        self.calls.append(("step", stamp_ns))
        prob = image[..., 0].astype(np.float32) / 255.0
        mask = prob > 0.4
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if mask.any() else None
        return FakePrediction(stamp_ns, mask, prob, 0.9 if mask.any() else 0.1, bool(mask.any()), bbox, self.command)


def make_scene(seed=0, num_frames=4, height=6, width=8, split="test_s", kind="seen", null=False, noise=0):
    """A scene whose red channel is the GT mask (x255), with ``noise`` flipped red pixels per frame."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((num_frames, height, width), bool)
    if not null:
        for t in range(num_frames):
            gt[t, 1 + t % 2 : 4, 2 : 5 + t % 3] = True
    frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    red = np.where(gt, 255, 0).astype(np.uint8)
    for t in range(num_frames):
        flat = red[t].reshape(-1)
        idx = rng.choice(flat.size, size=noise, replace=False)
        flat[idx] = 255 - flat[idx]
    frames[..., 0] = red
    scene = SimpleNamespace(
        scene_id=f"{split}-{seed}", split=split, kind=kind, expression=f"thing {seed}", frames=frames,
        frame_stamps_ns=START + np.arange(num_frames, dtype=np.int64) * 500_000_000,
        audio=rng.integers(-2000, 2000, 16000 * 2, dtype=np.int16), audio_start_ns=START - 10**9,
        gt_masks=gt,
    )
    scene.info = lambda: {"scene_id": scene.scene_id, "split": split, "kind": kind}
    return scene


def test_replay_bag_feeds_audio_before_each_image_and_scores(tmp_path):
    scene = make_scene(noise=3)
    path = bagio.write_scene_bag(scene, tmp_path / "bags" / "b0")
    fake = FakePredictor()
    acc = M.MetricAccumulator()
    report = R.replay_bag(path, fake, accumulator=acc, warn=lambda text: None)
    assert report.images == report.predictions == report.scored == 4
    assert report.subset == "test_s" and report.kind == "seen" and report.commands == ["thing 0"]
    assert fake.calls[0] == ("reset",) and fake.calls[1] == ("command", "thing 0")
    # causality: before each step, exactly the chunks stamped <= the image stamp were pushed
    chunk_stamps = [scene.audio_start_ns + round(i * 1e9 / 16000) for i in range(0, len(scene.audio), 512)]
    pushed = []
    for call in fake.calls:
        if call[0] == "audio":
            pushed.append(call[1])
        elif call[0] == "step":
            assert pushed == [s for s in chunk_stamps if s <= call[1]]
    assert len(pushed) == len(chunk_stamps)
    assert [c[1] for c in fake.calls if c[0] == "step"] == scene.frame_stamps_ns.tolist()
    # metrics equal the per-frame definitions on the same arrays
    expected = [M.frame_scores(scene.frames[t, ..., 0] / 255.0, scene.gt_masks[t]) for t in range(4)]
    res = acc.evaluate()
    assert res["all"]["J"] == pytest.approx(np.mean([e.j for e in expected]))
    assert res["all"]["F"] == pytest.approx(np.mean([e.f for e in expected]))
    assert res["subset:test_s"]["frames"] == 4 and res["kind:seen"]["frames"] == 4
    assert res["all"]["J"] < 1.0  # the noise is seen
    assert len(report.latencies_ms) == 4 and all(v > 0 for v in report.latencies_ms)


def test_output_bag_and_overlays(tmp_path):
    scene = make_scene(seed=3)
    path = bagio.write_scene_bag(scene, tmp_path / "in")
    R.replay_bag(path, FakePredictor(), output=tmp_path / "out", overlay_dir=tmp_path / "ov", storage="sqlite3")
    with bagio.BagReader(tmp_path / "out") as bag:
        assert bag.topics == {bagio.TOPIC_ACTIVE_COMMAND: msgs.STRING, bagio.TOPIC_MASK: msgs.IMAGE,
                              bagio.TOPIC_DETECTIONS: msgs.DETECTION2D_ARRAY}
        order = bag.read_sorted([bagio.TOPIC_ACTIVE_COMMAND, bagio.TOPIC_MASK, bagio.TOPIC_DETECTIONS])
    masks = [m for m in order.messages if m.topic == bagio.TOPIC_MASK]
    dets = [m for m in order.messages if m.topic == bagio.TOPIC_DETECTIONS]
    assert [m.message.data for m in order.messages if m.topic == bagio.TOPIC_ACTIVE_COMMAND] == ["thing 3"]
    for t, (mask, det) in enumerate(zip(masks, dets)):
        assert mask.stamp_ns == scene.frame_stamps_ns[t] and mask.message.header.frame_id == "camera"
        assert mask.message.encoding == "mono8" and (mask.message.height, mask.message.width) == (6, 8)
        np.testing.assert_array_equal(conversions.image_to_array(mask.message), scene.gt_masks[t] * 255)
        (d,) = det.message.detections
        ys, xs = np.nonzero(scene.gt_masks[t])
        assert d.bbox.size_x == xs.max() - xs.min() + 1 and d.results[0].hypothesis.class_id == "thing 3"
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == 4
    assert cv2.imread(str(pngs[0])).shape == (6, 8, 3)


def test_command_changes_mid_bag_and_override(tmp_path):
    scene = make_scene(seed=1)
    path = tmp_path / "bag"
    with bagio.BagWriter(path) as bag:
        for i, stamp in enumerate(scene.frame_stamps_ns.tolist()):
            if i == 2:
                bag.write(bagio.TOPIC_COMMAND, msgs.STRING, conversions.string_message("second"), stamp - 1)
            bag.write(bagio.TOPIC_IMAGE, msgs.IMAGE, conversions.array_to_image(scene.frames[i], "rgb8", stamp_ns=stamp), stamp)
        bag.write(bagio.TOPIC_COMMAND, msgs.STRING, conversions.string_message("first"), START - 5)
    fake = FakePredictor()
    report = R.replay_bag(path, fake, options=R.ReplayOptions(require_audio=False), warn=lambda t: None)
    # "first" was recorded last but is stamped earliest: commands apply at their time
    assert report.commands == ["first", "second"]
    seq = [c for c in fake.calls if c[0] in ("command", "step")]
    assert [c[1] for c in seq] == ["first", START, START + 500_000_000, "second",
                                   START + 10**9, START + 1_500_000_000]
    assert report.scored == 0  # no GT topic: nothing scored, still predicted
    fake = FakePredictor()
    report = R.replay_bag(path, fake, options=R.ReplayOptions(command="override", require_audio=False),
                          warn=lambda t: None)
    assert report.commands == ["override"] and report.predictions == 4


def test_bag_errors(tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        R.replay_bag(tmp_path / "missing", FakePredictor())
    path = bagio.write_scene_bag(make_scene(), tmp_path / "bag")
    with pytest.raises(BagError, match=r"topic /cam not found .*available topics"):
        R.replay_bag(path, FakePredictor(), options=R.ReplayOptions(image_topic="/cam"))
    with pytest.raises(BagError, match="expected sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage"):
        R.replay_bag(path, FakePredictor(), options=R.ReplayOptions(image_topic=bagio.TOPIC_AUDIO))
    with pytest.raises(BagError, match="no command"):
        R.replay_bag(path, FakePredictor(), options=R.ReplayOptions(command_topic="/nothing"))


def test_directory_summary_subsets_kinds_and_null(tmp_path):
    root = tmp_path / "bags"
    bagio.write_scene_bag(make_scene(seed=1, split="test_s", kind="seen"), root / "a" / "s1")
    bagio.write_scene_bag(make_scene(seed=2, split="test_s", kind="seen", noise=4), root / "a" / "s2")
    bagio.write_scene_bag(make_scene(seed=3, split="test_n", kind="null", null=True, noise=2), root / "b" / "n1")
    no_info = make_scene(seed=4, noise=1)
    no_info.info = lambda: {}
    bagio.write_scene_bag(no_info, root / "folder_subset" / "x")
    summary, reports = R.replay(root, FakePredictor(), output=tmp_path / "out", warn=lambda t: None)
    assert [r.subset for r in reports] == ["test_s", "test_s", "test_n", "folder_subset"]
    assert set(summary["subsets"]) == {"test_s", "test_n", "folder_subset"}
    assert summary["subsets"]["test_s"]["bags"] == 2 and summary["subsets"]["test_s"]["frames"] == 8
    assert set(summary["kinds"]) == {"seen", "null"}
    null = summary["subsets"]["test_n"]
    assert null["F"] is None and null["S"] == pytest.approx(np.sqrt(2 / 48))  # 2 of 48 pixels red per frame
    assert summary["subsets"]["test_s"]["S"] is None
    assert summary["J"] == summary["all"]["J"] and summary["all"]["frames"] == 16
    assert summary["latency_ms"]["frames"] == 16 and summary["latency_ms"]["p50"] <= summary["latency_ms"]["max"]
    assert (tmp_path / "out" / "a" / "s1" / "metadata.yaml").is_file()
    assert (tmp_path / "out" / "b" / "n1" / "metadata.yaml").is_file()
    text = R.format_summary(summary)
    assert "subset test_n" in text and "p95" in text


def test_main_writes_metrics_json_and_exit_codes(tmp_path, monkeypatch, capsys):
    bagio.write_scene_bag(make_scene(seed=5, noise=2), tmp_path / "bags" / "one")
    monkeypatch.setattr(R, "build_predictor", lambda args: FakePredictor())
    out_json = tmp_path / "m.json"
    code = R.main([str(tmp_path / "bags"), "--metrics-json", str(out_json), "--no-progress"])
    assert code == 0
    data = json.loads(out_json.read_text())
    for key in ("subsets", "kinds", "all", "J", "F", "S", "latency_ms"):
        assert key in data
    assert set(data["latency_ms"]) >= {"p50", "p95", "max"}
    assert 0.0 < data["J"] < 1.0 and data["subsets"]["test_s"]["bags"] == 1
    assert "latency" in capsys.readouterr().out
    # bad inputs: exit 2, one message, no traceback
    for argv, needle in [
        ([str(tmp_path / "nope")], "bag not found"),
        ([str(tmp_path / "bags"), "--image-topic", "/x"], "topic /x not found"),
        ([str(tmp_path / "bags"), "--num-frames", "0"], "--num-frames"),
    ]:
        code = R.main(argv + ["--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err
    assert R.main(["--help"]) == 0
    assert R.main(["--storage", "zip", "x"]) == 2


def test_end_to_end_with_real_predictor(tmp_path, tiny_weights, monkeypatch):
    """The real StreamingPredictor (tiny random EEMC) through the CLI on a tiny scene bag."""
    pytest.importorskip("torch")
    scene = make_scene(seed=7, num_frames=3, height=24, width=32)
    bagio.write_scene_bag(scene, tmp_path / "bag")
    out_json = tmp_path / "m.json"
    code = R.main([str(tmp_path / "bag"), "--weights", str(tiny_weights), "--num-frames", "2",
                   "--metrics-json", str(out_json), "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["all"]["frames"] == 3 and 0.0 <= data["J"] <= 1.0
    assert data["latency_ms"]["frames"] == 3 and data["latency_ms"]["max"] > 0
    with bagio.BagReader(tmp_path / "out") as bag:
        masks = bag.read_sorted([bagio.TOPIC_MASK]).messages
    assert [m.stamp_ns for m in masks] == scene.frame_stamps_ns.tolist()
    assert (masks[0].message.height, masks[0].message.width) == (24, 32)
