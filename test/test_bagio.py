"""Tests of refavs_ros.rosio.msgs (type store) and refavs_ros.rosio.bagio (scene bags, stamp-ordered reading)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from refavs_ros.errors import BagError, ConfigError, InputError
from refavs_ros.rosio import bagio, conversions, msgs

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- type store


def test_typestore_registers_mgonzs13_audio_and_vision_msgs():
    store = msgs.typestore()
    assert store is msgs.typestore()  # cached
    info = dict(store.fielddefs[msgs.AUDIO_INFO][1])
    assert [name for name, _ in store.fielddefs[msgs.AUDIO_INFO][1]] == ["format", "channels", "rate", "chunk"]
    assert info["format"][1] == ("int32", 0)
    data_fields = [name for name, _ in store.fielddefs[msgs.AUDIO_DATA][1]]
    assert data_fields == ["float32_data", "int32_data", "int16_data", "int8_data", "uint8_data"]
    assert [n for n, _ in store.fielddefs[msgs.AUDIO][1]] == ["audio_data", "info"]
    assert [n for n, _ in store.fielddefs[msgs.AUDIO_STAMPED][1]] == ["header", "audio"]
    assert msgs.AUDIO_DATA_STAMPED not in store.types
    # vision_msgs 4.x layout: bbox.center.position.x, results[].hypothesis.class_id
    assert [n for n, _ in store.fielddefs[msgs.POSE2D][1]] == ["position", "theta"]
    assert [n for n, _ in store.fielddefs[msgs.OBJECT_HYPOTHESIS][1]] == ["class_id", "score"]
    assert [n for n, _ in store.fielddefs[msgs.DETECTION2D][1]] == ["header", "results", "bbox", "id"]


def test_typestore_round_trips_audio_stamped_cdr():
    store = msgs.typestore()
    T = store.types
    header = T[msgs.HEADER](stamp=T[msgs.TIME](sec=3, nanosec=5), frame_id="mic")
    empty = {k: np.zeros(0, dt) for k, dt in [("float32_data", np.float32), ("int32_data", np.int32),
                                             ("int8_data", np.int8), ("uint8_data", np.uint8)]}
    data = T[msgs.AUDIO_DATA](int16_data=np.arange(-3, 4, dtype=np.int16), **empty)
    info = T[msgs.AUDIO_INFO](format=msgs.PA_INT16, channels=1, rate=16000, chunk=7)
    msg = T[msgs.AUDIO_STAMPED](header=header, audio=T[msgs.AUDIO](audio_data=data, info=info))
    raw = store.serialize_cdr(msg, msgs.AUDIO_STAMPED)
    back = store.deserialize_cdr(raw, msgs.AUDIO_STAMPED)
    np.testing.assert_array_equal(back.audio.audio_data.int16_data, np.arange(-3, 4))
    assert back.audio.info.format == 8 and back.header.frame_id == "mic"


def test_ros_drivers_variant_is_separate():
    store = msgs.typestore(msgs.AUDIO_ROS_DRIVERS)
    assert store is not msgs.typestore()
    assert [n for n, _ in store.fielddefs[msgs.AUDIO_DATA][1]] == ["data"]
    assert [n for n, _ in store.fielddefs[msgs.AUDIO_DATA_STAMPED][1]] == ["header", "audio"]
    assert msgs.AUDIO_STAMPED not in store.types
    assert msgs.DETECTION2D_ARRAY in store.types


def test_unknown_variant_and_type_raise_config_error():
    with pytest.raises(ConfigError, match="variant"):
        msgs.typestore("nope")
    with pytest.raises(ConfigError, match="not in"):
        msgs.message_class("foo_msgs/msg/Bar")
    assert msgs.message_class("sensor_msgs/Image") is msgs.typestore().types[msgs.IMAGE]


def test_msg_texts_found_after_non_editable_wheel_install(tmp_path):
    """Build a wheel of the repository and import refavs_ros.rosio.msgs from the unpacked wheel only."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "refavs_ros", "msg", "resource", "package.xml"):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy(path, src / name)
    if not (src / "package.xml").exists():  # data file of the ROS install; irrelevant here
        (src / "package.xml").write_text("<package/>\n")
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels)],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build wheels here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "refavs_ros/_msg/audio_common_msgs/AudioStamped.msg" in names
    assert "refavs_ros/_msg/ros-drivers/audio_common_msgs/AudioData.msg" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from refavs_ros.rosio import msgs; import sys; "
        "print(msgs.msg_dir()); print(len(msgs.typestore().types)); "
        "print(msgs.AUDIO_STAMPED in msgs.typestore().types)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env, check=True).stdout.split()
    assert Path(out[0]) == site / "refavs_ros" / "_msg"
    assert out[2] == "True"


# --------------------------------------------------------------------------- scene bags

def make_scene(num_frames=4, height=6, width=8, audio_seconds=1.0, seed=0, split="test_s", kind="seen"):
    """A duck-typed refavs_ros.scenes.Scene with random content."""
    rng = np.random.default_rng(seed)
    start = 1_700_000_000 * 10**9
    scene = SimpleNamespace(
        scene_id=f"scene{seed}", split=split, kind=kind, expression=f"the object number {seed}",
        frames=rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8),
        frame_stamps_ns=start + np.arange(num_frames, dtype=np.int64) * 250_000_000,
        audio=rng.integers(-30000, 30000, int(16000 * audio_seconds), dtype=np.int16),
        audio_start_ns=start - 100_000_000,
        gt_masks=rng.random((num_frames, height, width)) > 0.6,
    )
    scene.info = lambda: {"scene_id": scene.scene_id, "split": split, "kind": kind,
                          "expression": scene.expression}
    return scene


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_scene_bag_content(tmp_path, storage):
    scene = make_scene()
    path = bagio.write_scene_bag(scene, tmp_path / "bag", storage)
    assert (path / "metadata.yaml").is_file()
    topics = [bagio.TOPIC_COMMAND, bagio.TOPIC_SCENE_INFO, bagio.TOPIC_AUDIO, bagio.TOPIC_IMAGE,
              bagio.TOPIC_GT_MASK]
    with bagio.BagReader(path) as bag:
        assert bag.topics == {
            bagio.TOPIC_COMMAND: msgs.STRING, bagio.TOPIC_SCENE_INFO: msgs.STRING,
            bagio.TOPIC_AUDIO: msgs.AUDIO_STAMPED, bagio.TOPIC_IMAGE: msgs.IMAGE,
            bagio.TOPIC_GT_MASK: msgs.IMAGE,
        }
        order = bag.read_sorted(topics)
    assert order.total_out_of_order == 0
    by_topic = {t: [m for m in order.messages if m.topic == t] for t in topics}
    (command,) = by_topic[bagio.TOPIC_COMMAND]
    assert command.message.data == scene.expression
    assert command.stamp_ns == scene.audio_start_ns  # header-less: the scene's earliest stamp
    assert json.loads(by_topic[bagio.TOPIC_SCENE_INFO][0].message.data) == scene.info()
    # audio: 512-sample chunks stamped at their first sample
    chunks = by_topic[bagio.TOPIC_AUDIO]
    assert len(chunks) == -(-len(scene.audio) // 512)
    for i, m in enumerate(chunks):
        assert m.stamp_ns == scene.audio_start_ns + round(i * 512 * 1e9 / 16000)
        assert m.message.audio.info.chunk == 512 and m.message.audio.info.rate == 16000
    audio = np.concatenate([conversions.audio_to_array(m.message)[0] for m in chunks])
    np.testing.assert_array_equal(audio, scene.audio)
    # frames and GT masks share the header
    images, gts = by_topic[bagio.TOPIC_IMAGE], by_topic[bagio.TOPIC_GT_MASK]
    assert [m.stamp_ns for m in images] == scene.frame_stamps_ns.tolist() == [m.stamp_ns for m in gts]
    for t, (img, gt) in enumerate(zip(images, gts)):
        assert img.message.encoding == "rgb8" and img.message.header.frame_id == "camera"
        assert gt.message.header.frame_id == "camera"
        np.testing.assert_array_equal(conversions.image_to_array(img.message), scene.frames[t])
        np.testing.assert_array_equal(conversions.image_to_array(gt.message), scene.gt_masks[t] * 255)
    # sorted by stamp; on equal stamps the earlier-listed topic first
    keys = [(m.stamp_ns, topics.index(m.topic)) for m in order.messages]
    assert keys == sorted(keys)


def test_scene_bag_rejects_bad_scenes_and_existing_paths(tmp_path):
    scene = make_scene()
    bagio.write_scene_bag(scene, tmp_path / "bag")
    with pytest.raises(BagError, match="exists already"):
        bagio.write_scene_bag(scene, tmp_path / "bag")
    bagio.write_scene_bag(make_scene(seed=1), tmp_path / "bag", overwrite=True)
    with bagio.BagReader(tmp_path / "bag") as bag:
        assert bag.first_message(bagio.TOPIC_COMMAND).message.data == "the object number 1"
    bad = make_scene()
    bad.gt_masks = bad.gt_masks[:, :2]
    with pytest.raises(InputError, match="gt_masks"):
        bagio.write_scene_bag(bad, tmp_path / "bad")
    bad = make_scene()
    bad.audio = bad.audio.astype(np.float32)
    with pytest.raises(InputError, match="int16"):
        bagio.write_scene_bag(bad, tmp_path / "bad2")
    with pytest.raises(BagError, match="unknown bag storage"):
        bagio.write_scene_bag(make_scene(), tmp_path / "bad3", storage="rosbag1")


def test_out_of_order_header_stamps_are_sorted_and_counted(tmp_path):
    stamps = [5, 1, 3, 2, 8]  # header stamps (s); receive times increase
    with bagio.BagWriter(tmp_path / "bag") as bag:
        for i, s in enumerate(stamps):
            img = conversions.array_to_image(np.full((2, 2), i, np.uint8), "mono8", stamp_ns=s * 10**9)
            bag.write(bagio.TOPIC_IMAGE, msgs.IMAGE, img, (10 + i) * 10**9)
    order = bagio.read_sorted(tmp_path / "bag", [bagio.TOPIC_IMAGE])
    assert [m.stamp_ns // 10**9 for m in order.messages] == sorted(stamps)
    # message content follows its stamp, receive times are kept
    assert [int(conversions.image_to_array(m.message)[0, 0]) for m in order.messages] == [1, 3, 2, 0, 4]
    assert [m.log_time_ns // 10**9 for m in order.messages] == [11, 13, 12, 10, 14]
    # stamps 1, 3 and 2 arrived after the stamp-5 message: three late messages
    assert order.out_of_order == {bagio.TOPIC_IMAGE: 3}


def test_missing_path_topic_and_corrupt_files(tmp_path):
    with pytest.raises(BagError, match="bag not found"):
        bagio.BagReader(tmp_path / "nope")
    path = bagio.write_scene_bag(make_scene(), tmp_path / "bag")
    with pytest.raises(BagError, match=r"topic /nope not found .*available topics: .*/camera/image_raw \(sensor_msgs/msg/Image\)"):
        bagio.read_sorted(path, ["/nope"], required=["/nope"])
    with bagio.BagReader(path) as bag:
        with pytest.raises(BagError, match="expected std_msgs/msg/String"):
            bag.require(bagio.TOPIC_IMAGE, [msgs.STRING])
    storage = path / "bag.mcap"
    data = storage.read_bytes()
    for name, content in [("truncated", data[: len(data) // 2]), ("empty", b""),
                          ("garbage", b"\x89MCAP0\r\n" + bytes(range(256)) * 8)]:
        broken = tmp_path / name
        shutil.copytree(path, broken)
        (broken / "bag.mcap").write_bytes(content)
        with pytest.raises(BagError, match=f"{name}"):
            with bagio.BagReader(broken) as bag:
                bag.read_sorted([bagio.TOPIC_IMAGE])
    not_a_bag = tmp_path / "dir"
    not_a_bag.mkdir()
    with pytest.raises(BagError, match="not a rosbag2"):
        bagio.BagReader(not_a_bag)


def test_bare_storage_files_and_bag_discovery(tmp_path):
    root = tmp_path / "bags"
    bagio.write_scene_bag(make_scene(seed=1), root / "seen" / "a")
    bagio.write_scene_bag(make_scene(seed=2), root / "seen" / "b", storage="sqlite3")
    bagio.write_scene_bag(make_scene(seed=3), root / "null" / "c")
    loose = root / "loose"
    loose.mkdir()
    shutil.copy(root / "null" / "c" / "c.mcap", loose / "copy.mcap")  # storage file without metadata
    found = bagio.find_bags(root)
    assert found == [root / "loose", root / "null" / "c", root / "seen" / "a", root / "seen" / "b"]
    assert bagio.resolve_bag(loose) == loose / "copy.mcap"
    with bagio.BagReader(loose / "copy.mcap") as bag:
        assert bag.first_message(bagio.TOPIC_COMMAND).message.data == "the object number 3"
    assert bagio.find_bags(root / "seen" / "a") == [root / "seen" / "a"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no rosbag2"):
        bagio.find_bags(tmp_path / "empty")


def test_ros_drivers_audio_bag_is_decoded(tmp_path):
    store = msgs.typestore(msgs.AUDIO_ROS_DRIVERS)
    T = store.types
    samples = np.arange(-8, 8, dtype=np.int16)
    msg = T[msgs.AUDIO_DATA_STAMPED](
        header=conversions.make_header(123),
        audio=T[msgs.AUDIO_DATA](data=np.frombuffer(samples.astype("<i2").tobytes(), np.uint8)),
    )
    with bagio.BagWriter(tmp_path / "bag", storage="sqlite3", audio_variant=msgs.AUDIO_ROS_DRIVERS) as bag:
        bag.write("/audio", msgs.AUDIO_DATA_STAMPED, msg, 123)
    (m,) = bagio.read_sorted(tmp_path / "bag", ["/audio"]).messages
    out, rate = conversions.audio_to_array(m.message, sample_rate=16000, channels=1)
    np.testing.assert_array_equal(out, samples)
    assert m.stamp_ns == 123
