"""Tests of refavs_ros.node.inputs (the callbacks -> inference timer hand-off of refavs_node)."""

from __future__ import annotations

import threading

import pytest

from refavs_ros.node.inputs import (
    TIME_JUMP_BACK_NS,
    CommandState,
    InputBuffer,
    RateMeter,
)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


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


def test_latest_image_policy_drops_unprocessed_frames() -> None:
    buf: InputBuffer[str] = InputBuffer()
    for i in range(5):  # camera faster than the model: 5 frames before one take
        buf.offer_image(1_000 + i, f"img{i}")
    batch = buf.take()
    assert batch.image is not None and batch.image.item == "img4" and batch.image.stamp_ns == 1_004
    assert buf.counters().images_dropped == 4
    assert buf.take().image is None  # nothing new: no re-processing of the same frame


def test_older_image_does_not_replace_the_waiting_one() -> None:
    buf: InputBuffer[str] = InputBuffer()
    buf.offer_image(2_000, "new")
    buf.offer_image(1_500, "late")  # older than the waiting one (e.g. a second publisher)
    assert buf.take().image.item == "new"
    assert buf.counters().images_stale == 1
    buf.offer_image(2_000, "duplicate")  # judged by the pipeline, not the buffer
    assert buf.take().image.item == "duplicate"


def test_time_jump_replaces_the_waiting_image() -> None:
    buf: InputBuffer[str] = InputBuffer()
    buf.offer_image(10 * TIME_JUMP_BACK_NS, "a")
    buf.offer_image(1, "looped")  # a bag loop: much older, so not a late frame
    assert buf.take().image.item == "looped"
    assert buf.counters().images_stale == 0


def test_audio_bounded_in_order_and_command_latest() -> None:
    buf: InputBuffer[int] = InputBuffer(max_audio_chunks=3)
    for i in range(5):
        buf.offer_audio(i * 100, i)
    buf.offer_command("  the dog ")
    buf.offer_command(" the red car")
    batch = buf.take()
    assert [a.item for a in batch.audio] == [2, 3, 4]
    assert batch.command == " the red car"  # as received: the command rule is the pipeline's
    assert buf.counters().audio_dropped == 2
    again = buf.take()
    assert again.audio == [] and again.command is None and again.image is None


def test_blank_command_is_handed_on_unchanged() -> None:
    buf: InputBuffer[int] = InputBuffer()
    buf.offer_command("   ")
    assert buf.take().command == "   "


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
    buf.offer_image(1, 3)
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


