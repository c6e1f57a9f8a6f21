"""Tests of refavs_ros.node.params (ROS-free decision logic of refavs_node)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import yaml

from refavs_ros.errors import ConfigError
from refavs_ros.node.params import (
    CONFIGURE,
    DYNAMIC,
    ERROR,
    OK,
    PARAMETERS,
    POLL_PERIOD_SEC,
    STARTUP,
    TIME_JUMP_BACK_NS,
    WARN,
    BufferCounters,
    CommandState,
    InputBuffer,
    LogThrottle,
    NodeSettings,
    PipelineState,
    RateMeter,
    RollingStats,
    check_parameter_change,
    diagnose,
    inference_period_sec,
    ns_to_stamp,
    overlay_caption,
    param_defaults,
    param_spec,
    qos_spec,
    stamp_to_ns,
)
from refavs_ros.predictor import PredictorConfig

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------- parameter schema


def test_yaml_matches_schema_exactly() -> None:
    data = yaml.safe_load((REPO / "config" / "refavs.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) == {spec.name for spec in PARAMETERS}
    for spec in PARAMETERS:
        value = params[spec.name]
        # ROS types parameters from the YAML scalar: 1 is an int, 1.0 a double.
        assert type(value) is spec.type, spec.name
        assert value == spec.default, spec.name


def test_schema_defaults_are_valid_and_match_predictor_defaults() -> None:
    settings = NodeSettings.from_params({})
    assert settings.predictor_config() == PredictorConfig()
    for spec in PARAMETERS:
        assert spec.validate(spec.default) == spec.default
        assert spec.description and spec.stage in (STARTUP, CONFIGURE, DYNAMIC)
        if spec.type in (int, float):
            assert spec.min_value is not None and spec.max_value is not None, spec.name
            assert spec.min_value <= spec.default <= spec.max_value
    # thresholds, rate and window are dynamic (issue 3)
    for name in ("mask_threshold", "score_threshold", "inference_rate_hz", "window_sec", "num_frames"):
        assert param_spec(name).stage == DYNAMIC
    assert param_spec("autostart").read_only
    assert not param_spec("backend").read_only


@pytest.mark.parametrize(
    "name, value",
    [
        ("mask_threshold", 1.5),
        ("mask_threshold", "0.5"),
        ("num_frames", 0),
        ("num_frames", 2.0),
        ("backend", "tensorflow"),
        ("audio_msg_type", "AudioStampedX"),
        ("publish_debug", 1),
        ("inference_rate_hz", math.inf),
    ],
)
def test_invalid_values_rejected_with_named_parameter(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        NodeSettings.from_params({name: value})


def test_int_accepted_for_double_parameter() -> None:
    assert NodeSettings.from_params({"frame_stride_sec": 2}).frame_stride_sec == 2.0


def test_unknown_names_ignored_and_unknown_spec_raises() -> None:
    assert NodeSettings.from_params({"use_sim_time": True}).backend == "torch"
    with pytest.raises(ConfigError):
        param_spec("nope")


def test_window_sec_sets_num_frames() -> None:
    s = NodeSettings.from_params({"window_sec": 5.0, "frame_stride_sec": 0.5, "num_frames": 3})
    assert s.effective_num_frames == 10
    assert s.predictor_config().num_frames == 10
    assert NodeSettings.from_params({"num_frames": 3}).predictor_config().num_frames == 3
    with pytest.raises(ConfigError, match="frame_stride_sec"):
        NodeSettings.from_params({"window_sec": 5.0, "frame_stride_sec": 0.0})


def test_replace_validates() -> None:
    s = NodeSettings.from_params({})
    assert s.replace(mask_threshold=0.7).mask_threshold == 0.7
    with pytest.raises(ConfigError):
        s.replace(mask_threshold=7.0)


def test_parameter_change_policy() -> None:
    assert check_parameter_change("mask_threshold", 0.6, configured=True) is None
    reason = check_parameter_change("mask_threshold", 2.0, configured=True)
    assert reason is not None and "mask_threshold" in reason
    reason = check_parameter_change("backend", "onnxruntime", configured=True)
    assert reason is not None and "cleanup" in reason.replace("clean up", "cleanup")
    assert check_parameter_change("backend", "onnxruntime", configured=False) is None
    assert check_parameter_change("backend", "caffe", configured=False) is not None
    assert check_parameter_change("autostart", False, configured=False) is not None
    assert check_parameter_change("use_sim_time", True, configured=True) is None


def test_inference_period() -> None:
    assert inference_period_sec(0.0) == POLL_PERIOD_SEC
    assert inference_period_sec(4.0) == 0.25
    assert NodeSettings.from_params({"inference_rate_hz": 10.0}).inference_period_sec() == pytest.approx(0.1)
    with pytest.raises(ConfigError):
        inference_period_sec(-1.0)


def test_qos_specs() -> None:
    s = NodeSettings.from_params({})
    assert s.image_qos_spec() == qos_spec("sensor_data", 1)
    assert not s.image_qos_spec().reliable and s.image_qos_spec().depth == 1
    assert s.output_qos_spec().reliable
    assert qos_spec("reliable", 3, transient_local=True).transient_local
    with pytest.raises(ConfigError):
        qos_spec("fast", 1)
    with pytest.raises(ConfigError):
        qos_spec("reliable", 0)


def test_constraints_text_mentions_choices_range_and_stage() -> None:
    assert "torch" in param_spec("backend").constraints_text()
    assert "[0.01, 0.99]" in param_spec("mask_threshold").constraints_text()
    assert "dynamic" in param_spec("mask_threshold").constraints_text()
    assert "configure" in param_spec("image_transport").constraints_text()


def test_param_defaults_complete() -> None:
    d = param_defaults()
    assert len(d) == len(PARAMETERS) and d["autostart"] is True


# ---------------------------------------------------------------- throttling, rates, stats


def test_log_throttle_suppresses_and_counts() -> None:
    clock = FakeClock()
    throttle = LogThrottle(5.0, clock=clock)
    assert throttle.check("bad image") == 0
    assert throttle.check("bad image") is None
    assert throttle.check("bad image") is None
    assert throttle.check("bad audio") == 0  # independent key
    clock.t += 5.1
    assert throttle.check("bad image") == 2
    assert throttle.check("bad image") is None
    with pytest.raises(ConfigError):
        LogThrottle(0.0)


def test_rate_meter() -> None:
    meter = RateMeter(window_sec=2.0)
    assert meter.rate_hz(0.0) == 0.0
    for i in range(21):
        meter.tick(10.0 + i * 0.1)  # 10 Hz for 2 s
    assert meter.rate_hz(12.0) == pytest.approx(10.0)
    assert meter.last() == pytest.approx(12.0)
    assert meter.rate_hz(12.5) == pytest.approx(15 / 2.0)  # window [10.5, 12.5]: 16 ticks, decaying
    burst = RateMeter(window_sec=5.0)
    for _ in range(5):
        burst.tick(1.0)
    assert burst.rate_hz(3.0) == pytest.approx(2.0)  # 4 intervals over 2 s, not infinity
    assert meter.rate_hz(20.0) == 0.0  # everything left the window


def test_rolling_stats() -> None:
    stats = RollingStats(size=3)
    assert math.isnan(stats.mean()) and math.isnan(stats.max())
    for v in (1.0, 2.0, 3.0, 10.0):
        stats.add(v)
    assert stats.count == 3
    assert stats.mean() == pytest.approx(5.0)
    assert stats.max() == 10.0


# ---------------------------------------------------------------- input buffer


def test_latest_image_policy_drops_unprocessed_frames() -> None:
    buf: InputBuffer[str] = InputBuffer()
    for i in range(5):  # camera faster than the model: 5 frames before one take
        buf.offer_image(1_000 + i, f"img{i}")
    batch = buf.take()
    assert batch.image is not None and batch.image.item == "img4" and batch.image.stamp_ns == 1_004
    assert buf.counters().images_dropped == 4
    assert buf.take().image is None  # nothing new: no re-processing of the same frame


def test_stale_and_out_of_order_images_dropped() -> None:
    buf: InputBuffer[str] = InputBuffer()
    buf.offer_image(2_000, "new")
    buf.offer_image(1_500, "late")  # older than the waiting one
    assert buf.take().image.item == "new"
    buf.offer_image(2_000, "duplicate")
    assert buf.take().image is None
    assert buf.counters().images_stale == 2


def test_time_jump_back_detected() -> None:
    buf: InputBuffer[str] = InputBuffer()
    buf.offer_image(10 * TIME_JUMP_BACK_NS, "a")
    buf.take()
    buf.offer_image(1, "looped")
    batch = buf.take()
    assert batch.time_jump and batch.image.item == "looped"
    buf.offer_image(2, "next")
    assert not buf.take().time_jump


def test_audio_bounded_in_order_and_command_latest() -> None:
    buf: InputBuffer[int] = InputBuffer(max_audio_chunks=3)
    for i in range(5):
        buf.offer_audio(i * 100, i)
    buf.offer_command("  the dog ")
    buf.offer_command("the red car")
    batch = buf.take()
    assert [a.item for a in batch.audio] == [2, 3, 4]
    assert batch.command == "the red car"
    assert buf.counters().audio_dropped == 2
    again = buf.take()
    assert again.audio == [] and again.command is None and again.image is None


def test_empty_command_is_kept_as_clear() -> None:
    buf: InputBuffer[int] = InputBuffer()
    buf.offer_command("   ")
    assert buf.take().command == ""


def test_counters_rates_and_ages() -> None:
    clock = FakeClock(0.0)
    buf: InputBuffer[int] = InputBuffer(clock=clock)
    c = buf.counters()
    assert c.image_age_sec is None and c.images_received == 0
    for i in range(11):
        clock.t = i * 0.1
        buf.offer_image(i + 1, i)
        buf.offer_audio(i, i)
    clock.t = 1.5
    c = buf.counters()
    assert c.image_rate_hz == pytest.approx(10 / 1.5)  # 10 intervals, oldest arrival 1.5 s ago
    assert c.audio_rate_hz == pytest.approx(10 / 1.5)
    assert c.image_age_sec == pytest.approx(0.5)
    assert c.images_received == 11 and c.audio_received == 11


def test_clear_forgets_everything() -> None:
    buf: InputBuffer[int] = InputBuffer()
    buf.offer_image(5, 1)
    buf.offer_audio(5, 1)
    buf.take()
    buf.offer_image(9, 2)
    buf.clear()
    assert buf.take().image is None
    buf.offer_image(1, 3)  # older than before the clear: accepted after clear
    assert buf.take().image.item == 3


def test_buffer_thread_safety() -> None:
    buf: InputBuffer[int] = InputBuffer(max_audio_chunks=100_000)
    taken: list[int] = []
    stop = threading.Event()

    def consumer() -> None:
        while not stop.is_set():
            taken.extend(a.item for a in buf.take().audio)

    t = threading.Thread(target=consumer)
    t.start()
    threads = [threading.Thread(target=lambda k=k: [buf.offer_audio(k * 10_000 + i, k * 10_000 + i) for i in range(2000)]) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    t.join()
    taken.extend(a.item for a in buf.take().audio)
    assert sorted(taken) == sorted(k * 10_000 + i for k in range(4) for i in range(2000))


# ---------------------------------------------------------------- command state


def test_command_state_set_refresh_clear_and_timeout() -> None:
    cmd = CommandState()
    assert cmd.update("the dog", 0) is True
    assert cmd.update("the dog", 1_000) is False  # refresh only
    assert not cmd.expired(2_000_000_000, 2.0)  # 2.0 s after refresh at 1 us: not yet
    assert cmd.expired(2_100_000_000, 2.0)
    assert not cmd.expired(10**12, 0.0)  # 0 = never
    assert cmd.update("", 5) is True and cmd.text == ""
    assert not cmd.expired(10**12, 1.0)  # nothing in force


def test_command_timeout_restarts_after_clock_jump_back() -> None:
    cmd = CommandState()
    cmd.update("x", 10**12)
    assert not cmd.expired(5, 1.0)
    assert cmd.expired(5 + 2 * 10**9, 1.0)


# ---------------------------------------------------------------- diagnostics


def _counters(**kw: object) -> BufferCounters:
    base = dict(images_received=10, images_dropped=3, images_stale=0, audio_received=30,
                audio_dropped=0, image_rate_hz=30.0, audio_rate_hz=31.25, image_age_sec=0.03,
                audio_age_sec=0.03)
    base.update(kw)
    return BufferCounters(**base)  # type: ignore[arg-type]


def test_diagnose_running_ok_with_all_values() -> None:
    state = PipelineState(lifecycle="active", command="the dog", backend="torch", device="cpu",
                          model="eemc-tiny", counters=_counters(), av_skew_sec=0.01)
    state.inference_ms.add(20.0)
    state.end_to_end_ms.add(35.0)
    report = diagnose(state, max_av_skew_sec=1.0)
    assert report.level == OK and report.message == "running"
    values = dict(report.values)
    assert values["image rate"] == "30.0 Hz"
    assert values["frames dropped (newer frame arrived)"] == "3"
    assert values["inference latency mean"] == "20.0 ms"
    assert values["end-to-end latency max"] == "35.0 ms"
    assert values["A/V skew"] == "0.010 s"
    assert values["backend"] == "torch" and values["model"] == "eemc-tiny"


@pytest.mark.parametrize(
    "kwargs, level, fragment",
    [
        (dict(lifecycle="inactive"), OK, "inactive"),
        (dict(lifecycle="active", enabled=False, counters=_counters()), OK, "disabled"),
        (dict(lifecycle="active", counters=None), WARN, "no image received"),
        (dict(lifecycle="active", counters=_counters(image_age_sec=5.0)), WARN, "no image for 5.0 s"),
        (dict(lifecycle="active", counters=_counters(audio_age_sec=None)), WARN, "no audio"),
        (dict(lifecycle="active", counters=_counters(), av_skew_sec=3.0), WARN, "skew"),
        (dict(lifecycle="active", counters=_counters()), OK, "waiting for a command"),
        (dict(lifecycle="active", counters=_counters(), last_error="CUDA OOM"), ERROR, "CUDA OOM"),
    ],
)
def test_diagnose_levels(kwargs: dict, level: int, fragment: str) -> None:
    report = diagnose(PipelineState(**kwargs), max_av_skew_sec=1.0)
    assert report.level == level
    assert fragment in report.message


def test_diagnose_before_any_data_has_na_values() -> None:
    values = dict(diagnose(PipelineState(lifecycle="unconfigured"), max_av_skew_sec=1.0).values)
    assert values["inference latency mean"] == "n/a" and values["image rate"] == "n/a"


# ---------------------------------------------------------------- small helpers


def test_overlay_caption() -> None:
    assert overlay_caption("", None, None) == "no command"
    assert overlay_caption("dog", None, None) == '"dog"'
    assert overlay_caption("dog", 0.91, True) == '"dog" score 0.91'
    assert overlay_caption("dog", 0.1, False).endswith("(absent)")


def test_stamp_round_trip() -> None:
    for ns in (0, 1, 999_999_999, 1_700_000_000_123_456_789):
        sec, nanosec = ns_to_stamp(ns)
        assert 0 <= nanosec < 10**9
        assert stamp_to_ns(sec, nanosec) == ns


# ---------------------------------------------------------------- predictor construction arguments


def test_pretrained_kwargs_and_device_resolution() -> None:
    s = NodeSettings.from_params({"engine_path": "/tmp/engines", "backend": "tensorrt"})
    kw = s.pretrained_kwargs(lambda: True)
    assert kw["device"] == "cuda" and kw["engine_dir"] == "/tmp/engines" and kw["models_dir"] is None
    assert kw["backend"] == "tensorrt" and kw["model"] == "eemc" and kw["precision"] == "fp16"
    assert kw["config"] == s.predictor_config()
    assert s.weights is None
    assert s.pretrained_kwargs(lambda: False)["device"] == "cpu"
    assert NodeSettings.from_params({"device": "cuda:1"}).resolved_device(lambda: False) == "cuda:1"
    assert NodeSettings.from_params({"weights_path": "/w.safetensors"}).weights == "/w.safetensors"


@pytest.mark.parametrize("values", [{"device": "gpu"}, {"device": "cuda:x"}, {"model": "official"}])
def test_invalid_model_settings(values: dict) -> None:
    with pytest.raises(ConfigError):
        NodeSettings.from_params(values)


def test_official_model_needs_weights_and_models_dir() -> None:
    s = NodeSettings.from_params({"model": "official", "weights_path": "/c.pth", "models_dir": "/m"})
    assert s.pretrained_kwargs(lambda: False)["models_dir"] == "/m"


def test_compressed_image_decode() -> None:
    import array
    from types import SimpleNamespace

    import cv2
    import numpy as np

    from refavs_ros.errors import InputError
    from refavs_ros.rosio.conversions import compressed_image_to_rgb8

    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[:, :5] = (255, 0, 0)  # left half red
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    for data in (png.tobytes(), array.array("B", png.tobytes()), png.reshape(-1)):
        out = compressed_image_to_rgb8(SimpleNamespace(format="png", data=data))
        np.testing.assert_array_equal(out, rgb)
    with pytest.raises(InputError, match="decode"):
        compressed_image_to_rgb8(SimpleNamespace(format="jpeg", data=b"notanimage"))
    with pytest.raises(InputError, match="no data"):
        compressed_image_to_rgb8(SimpleNamespace(format="jpeg", data=b""))
    with pytest.raises(InputError, match="depth"):
        compressed_image_to_rgb8(SimpleNamespace(format="16UC1; compressedDepth", data=png.tobytes()))


def test_import_audio_class_errors_name_the_provider() -> None:
    import importlib.util

    from refavs_ros.node.params import import_audio_class

    with pytest.raises(ConfigError, match="not one of"):
        import_audio_class("Audio")
    if importlib.util.find_spec("audio_common_msgs") is None:
        with pytest.raises(ConfigError, match="mgonzs13/audio_common"):
            import_audio_class("AudioStamped")
        with pytest.raises(ConfigError, match="ros-drivers/audio_common"):
            import_audio_class("AudioDataStamped")


def test_docs_parameter_table_lists_every_parameter() -> None:
    text = (REPO / "docs" / "ros.md").read_text().split("## Parameters", 1)[1]
    for spec in PARAMETERS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"docs/ros.md has no row for {spec.name}"
        assert f"| {spec.stage} |" in row, spec.name
