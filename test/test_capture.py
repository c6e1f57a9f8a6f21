"""Tests of refavs_ros.node.capture (microphone core of audio_capture_node), without a microphone.

A fake sounddevice module stands in for PortAudio so the callback path (stamping, int16
conversion, re-chunking, queueing) and the device errors are exercised here; one test imports
the real sounddevice and accepts either a working module or the clear error.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from refavs_ros.errors import BackendUnavailableError, ConfigError
from refavs_ros.node.capture import (
    MAX_ADC_AGE_SEC,
    MicrophoneCapture,
    Rechunker,
    first_sample_stamp_ns,
    load_sounddevice,
    select_input_device,
    to_int16,
)

DEVICES = [
    {"name": "HDMI out", "max_input_channels": 0},
    {"name": "Built-in Mic", "max_input_channels": 2},
    {"name": "USB Audio Device", "max_input_channels": 1},
]


# ---------------------------------------------------------------- device selection


def test_no_input_device_is_a_clear_error() -> None:
    with pytest.raises(BackendUnavailableError, match="no audio input device"):
        select_input_device([{"name": "HDMI out", "max_input_channels": 0}], "", None)
    with pytest.raises(BackendUnavailableError, match="no audio input device"):
        select_input_device([], "", None)


def test_device_selection_rules() -> None:
    assert select_input_device(DEVICES, "", 2) == 2  # PortAudio default input
    assert select_input_device(DEVICES, "", None) == 1  # first device with inputs
    assert select_input_device(DEVICES, "", 0) == 1  # default has no inputs
    assert select_input_device(DEVICES, "2", None) == 2
    assert select_input_device(DEVICES, "usb", None) == 2
    with pytest.raises(BackendUnavailableError, match="not an input device.*1: Built-in Mic"):
        select_input_device(DEVICES, "0", None)
    with pytest.raises(BackendUnavailableError, match="matches 'webcam'"):
        select_input_device(DEVICES, "webcam", None)


def test_real_sounddevice_import_works_or_fails_clearly() -> None:
    try:
        sd = load_sounddevice()
    except BackendUnavailableError as exc:
        assert "libportaudio2" in str(exc) or "sounddevice" in str(exc)
        return
    devices = list(sd.query_devices())
    if not any(d["max_input_channels"] > 0 for d in devices):
        with pytest.raises(BackendUnavailableError, match="no audio input device"):
            select_input_device(devices, "", None)


# ---------------------------------------------------------------- conversion and stamps


def test_to_int16() -> None:
    f = np.array([[-1.5], [-1.0], [0.0], [0.5], [1.0]], np.float32)
    out = to_int16(f)
    assert out.dtype == np.int16 and out.shape == (5, 1)
    assert out[0, 0] == -32768 and out[1, 0] == -32767 and out[3, 0] == 16384 and out[4, 0] == 32767
    i = np.array([1, -2], np.int16)
    j = to_int16(i)
    assert j is not i and j.tolist() == [1, -2]
    with pytest.raises(ConfigError):
        to_int16(np.array([1], np.int32))


def test_stamp_uses_adc_time_when_plausible() -> None:
    # block captured 40 ms before the callback: first sample 40 ms before ROS now
    stamp = first_sample_stamp_ns(10_000_000_000, 512, 16000, adc_time=5.000, current_time=5.040,
                                  input_latency_sec=0.1)
    assert stamp == 10_000_000_000 - 40_000_000


@pytest.mark.parametrize("adc, current", [(0.0, 5.04), (5.0, 4.0), (1.0, 1.0 + MAX_ADC_AGE_SEC + 1.0)])
def test_stamp_falls_back_to_duration_plus_latency(adc: float, current: float) -> None:
    stamp = first_sample_stamp_ns(10_000_000_000, 512, 16000, adc_time=adc, current_time=current,
                                  input_latency_sec=0.010)
    assert stamp == 10_000_000_000 - 32_000_000 - 10_000_000  # 512 / 16 kHz = 32 ms, + 10 ms


def test_rechunker_fixed_chunks_exact_stamps() -> None:
    r = Rechunker(chunk=4, sample_rate=1000)  # 1 ms per frame
    out = r.push(np.arange(10, dtype=np.int16).reshape(10, 1), 1_000_000_000)
    assert [s for s, _ in out] == [1_000_000_000, 1_004_000_000]
    assert out[1][1][:, 0].tolist() == [4, 5, 6, 7]
    out = r.push(np.arange(10, 16, dtype=np.int16).reshape(6, 1), 1_010_000_000)  # contiguous
    assert [s for s, _ in out] == [1_008_000_000, 1_012_000_000]
    assert out[0][1][:, 0].tolist() == [8, 9, 10, 11]


def test_rechunker_discards_partial_chunk_on_gap() -> None:
    r = Rechunker(chunk=4, sample_rate=1000)
    r.push(np.zeros((6, 1), np.int16), 0)  # 2 frames pending, next expected at 6 ms
    out = r.push(np.ones((4, 1), np.int16), 50_000_000)  # 44 ms gap (overflow)
    assert len(out) == 1 and out[0][0] == 50_000_000 and out[0][1].min() == 1


def test_rechunker_rejects_bad_args() -> None:
    with pytest.raises(ConfigError):
        Rechunker(0, 16000)


# ---------------------------------------------------------------- capture with a fake PortAudio


class FakePortAudioError(Exception):
    pass


class FakeStream:
    instances: list["FakeStream"] = []

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.latency = 0.02
        self.started = self.closed = False
        FakeStream.instances.append(self)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True


def fake_sd(devices: list[dict], default: int = -1, reject: bool = False) -> SimpleNamespace:
    def input_stream(**kwargs: object) -> FakeStream:
        if reject:
            raise FakePortAudioError("Invalid sample rate")
        return FakeStream(**kwargs)

    return SimpleNamespace(
        query_devices=lambda: devices,
        default=SimpleNamespace(device=[default, -1]),
        InputStream=input_stream,
        PortAudioError=FakePortAudioError,
    )


def _capture(sd: SimpleNamespace, now: list[int], **kw: object) -> MicrophoneCapture:
    args = dict(device="", sample_rate=16000, channels=1, chunk=512, ros_now_ns=lambda: now[0])
    args.update(kw)
    return MicrophoneCapture(sd, **args)  # type: ignore[arg-type]


def test_capture_opens_device_and_queues_stamped_int16_chunks() -> None:
    now = [7_000_000_000]
    cap = _capture(fake_sd(DEVICES, default=2), now)
    cap.start()
    stream = FakeStream.instances[-1]
    assert stream.started and stream.kwargs["device"] == 2 and stream.kwargs["blocksize"] == 512
    assert stream.kwargs["dtype"] == "int16" and stream.kwargs["samplerate"] == 16000
    assert cap.device_name == "USB Audio Device"
    block = (np.arange(512, dtype=np.int16) % 100).reshape(512, 1)
    cap._callback(block, 512, SimpleNamespace(inputBufferAdcTime=3.0, currentTime=3.05), None)
    item = cap.get(timeout=0)
    assert item is not None
    stamp, samples = item
    assert stamp == 7_000_000_000 - 50_000_000
    assert samples.dtype == np.int16 and samples.shape == (512, 1)
    np.testing.assert_array_equal(samples, block)
    assert cap.get(timeout=0) is None
    cap.stop()
    assert stream.closed
    cap.stop()  # idempotent


def test_capture_without_input_device_fails_clearly() -> None:
    cap = _capture(fake_sd([{"name": "HDMI", "max_input_channels": 0}]), [0])
    with pytest.raises(BackendUnavailableError, match="no audio input device"):
        cap.start()


def test_capture_device_rejecting_settings_fails_clearly() -> None:
    cap = _capture(fake_sd(DEVICES, reject=True), [0], sample_rate=44100)
    with pytest.raises(BackendUnavailableError, match="rejected 44100 Hz.*Invalid sample rate"):
        cap.start()


def test_capture_queue_is_bounded_and_drops_oldest() -> None:
    now = [10**10]
    cap = _capture(fake_sd(DEVICES), now, chunk=16, max_queued_chunks=2)
    cap.start()
    for k in range(4):
        now[0] += 1_000_000
        cap._callback(np.full((16, 1), k, np.int16), 16, SimpleNamespace(inputBufferAdcTime=0.0, currentTime=0.0), None)
    assert cap.dropped_chunks == 2
    assert [cap.get(timeout=0)[1][0, 0] for _ in range(2)] == [2, 3]


def test_capture_rejects_bad_parameters() -> None:
    sd = fake_sd(DEVICES)
    for kw in (dict(sample_rate=100), dict(channels=0), dict(chunk=4)):
        with pytest.raises(ConfigError):
            _capture(sd, [0], **kw)
