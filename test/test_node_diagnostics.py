"""Tests of refavs_ros.node.diagnostics (the /diagnostics content and log throttling)."""

from __future__ import annotations

import math

import pytest

from refavs_ros.errors import ConfigError
from refavs_ros.node.diagnostics import (
    ERROR,
    OK,
    WARN,
    LogThrottle,
    NodeStatus,
    RollingStats,
    diagnose,
)
from refavs_ros.node.inputs import BufferCounters


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _counters(**kw: object) -> BufferCounters:
    base = dict(images_received=10, images_dropped=3, images_stale=0, audio_received=30,
                audio_dropped=0, image_rate_hz=30.0, audio_rate_hz=31.25, image_age_sec=0.03,
                audio_age_sec=0.03)
    base.update(kw)
    return BufferCounters(**base)  # type: ignore[arg-type]


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


def test_rolling_stats() -> None:
    stats = RollingStats(size=3)
    assert math.isnan(stats.mean()) and math.isnan(stats.max())
    for v in (1.0, 2.0, 3.0, 10.0):
        stats.add(v)
    assert stats.count == 3
    assert stats.mean() == pytest.approx(5.0)
    assert stats.max() == 10.0


def test_diagnose_running_ok_with_all_values() -> None:
    state = NodeStatus(lifecycle="active", command="the dog", backend="torch", device="cpu",
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
    report = diagnose(NodeStatus(**kwargs), max_av_skew_sec=1.0)
    assert report.level == level
    assert fragment in report.message


def test_diagnose_before_any_data_has_na_values() -> None:
    values = dict(diagnose(NodeStatus(lifecycle="unconfigured"), max_av_skew_sec=1.0).values)
    assert values["inference latency mean"] == "n/a" and values["image rate"] == "n/a"


def test_diagnose_lists_rejections_by_reason() -> None:
    state = NodeStatus(lifecycle="active", counters=_counters(), bad_messages=5,
                       rejections={"image: unsupported encoding": 3, "audio: empty audio": 2})
    values = dict(diagnose(state, max_av_skew_sec=1.0).values)
    assert values["rejected image: unsupported encoding"] == "3"
    assert values["rejected audio: empty audio"] == "2"
    assert values["bad messages dropped"] == "5"


def test_diagnose_counts_time_jumps() -> None:
    values = dict(diagnose(NodeStatus(lifecycle="active", time_jumps=3, audio_time_jumps=1), max_av_skew_sec=1.0).values)
    assert values["time jumps (memory reset)"] == "3" and values["audio time jumps"] == "1"
