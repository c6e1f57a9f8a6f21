"""Tests of refavs_ros.node.params (parameter schema and policy of refavs_node)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from refavs_ros.errors import ConfigError
from refavs_ros.node.params import (
    CONFIGURE,
    DYNAMIC,
    PARAMETERS,
    POLL_PERIOD_SEC,
    STARTUP,
    NodeSettings,
    check_parameter_change,
    inference_period_sec,
    param_defaults,
    param_spec,
    qos_spec,
)
from refavs_ros.predictor import PredictorConfig

REPO = Path(__file__).resolve().parents[1]


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


def test_pretrained_kwargs_and_device_resolution() -> None:
    s = NodeSettings.from_params({"engine_cache_dir": "/tmp/engines", "backend": "tensorrt"})
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


def test_docs_parameter_table_lists_every_parameter() -> None:
    text = (REPO / "docs" / "ros.md").read_text().split("## Parameters", 1)[1]
    for spec in PARAMETERS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"docs/ros.md has no row for {spec.name}"
        assert f"| {spec.stage} |" in row, spec.name


def test_engine_path_is_a_deprecated_alias_of_engine_cache_dir() -> None:
    old = NodeSettings.from_params({"engine_path": "/tmp/old"})
    assert old.pretrained_kwargs(lambda: False)["engine_dir"] == "/tmp/old"
    assert any("deprecated" in w and "engine_cache_dir" in w for w in old.deprecations())
    both = NodeSettings.from_params({"engine_path": "/tmp/old", "engine_cache_dir": "/tmp/new"})
    assert both.pretrained_kwargs(lambda: False)["engine_dir"] == "/tmp/new"
    assert any("ignored" in w for w in both.deprecations())
    assert NodeSettings.from_params({}).deprecations() == []
