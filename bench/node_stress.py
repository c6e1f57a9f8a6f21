"""refavs_node under stress in a real ROS 2 graph: the long runs of issue 8 part 4.

Everything runs in ONE process: ``refavs_node`` (the real rclpy lifecycle node) and a peer node
that publishes its inputs and collects its outputs, in one rclpy context, over Fast DDS on
loopback (:mod:`bench.graph`). Four modes, run from the repository root (figures and the
commands that produced them: ``bench/RESULTS.md``, "Node under stress")::

    python -m bench.node_stress malformed --per-topic 1000 --json bench/results_node_malformed.json
    python -m bench.node_stress latency --minutes 5 --json bench/results_node_latency.json
    python -m bench.node_stress lifecycle --cycles 8 --json bench/results_node_lifecycle.json
    nice -n 15 python -m bench.node_stress soak --minutes 60 --json bench/results_node_soak.json

* ``malformed``: ``--per-topic`` generated bad messages (``bench/malformed.py``) on each of
  ``image``, ``audio``, ``command`` and ``image/compressed`` (a second node with
  ``image_transport: compressed``), one at a time, a good frame every ``--good-every``; reports
  messages per topic and class, rejections by reason (from the node's counters, checked against
  ``/diagnostics``), messages rejected for another reason than expected, lost messages, good
  frames answered, outputs for bad messages, and whether the node is still active.
* ``latency``: a camera at ``--rate`` Hz (640x480 rgb8 frames of a generated scene, audio in
  32 ms chunks) for ``--minutes``, with a model slower than the camera (``--profile base``: the
  paper's model size, random weights); per minute p50 / p95 / max of receive -> publish (the
  node's image callback to the end of its publishing) and header stamp -> publish (the camera
  stamps frames with the wall clock when it publishes them), frames answered and frames
  dropped by the latest-frame policy; the slope of the per-minute p95 (ms per minute).
* ``soak``: a generated scene written to a rosbag2 and replayed through the node in a loop
  (raw CDR from the bag, deserialised by rclpy, restamped with the wall clock so time runs on),
  for ``--minutes``; per minute: frames answered, p50 / p95 / max latency, RSS, load average.
  Verdicts: RSS growth after ``--warmup`` minutes <= 5 %, p95 of the last 10 minutes within
  1.2x of the first 10 (after warm-up).
* ``lifecycle``: deactivate / activate / cleanup / configure cycles through the lifecycle
  services while a 30 Hz camera streams; RSS when unconfigured, configured and after each
  cleanup, whether the predictor object survived cleanup, outputs while inactive.

Every mode records the machine's load average at the start and end (other jobs on a shared
machine disturb latency figures; say so when they do).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

SEC = 1_000_000_000


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max())}


def _header() -> dict[str, Any]:
    import torch

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.node_stress " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_start": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "nice": os.nice(0),
    }


def _silence_opencv() -> None:
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # older OpenCV
        pass


# --------------------------------------------------------------------------------- malformed
def run_malformed(args: argparse.Namespace) -> dict[str, Any]:
    from bench import malformed
    from bench.graph import NodeGraph, ros_context, stamp_of, wait_until
    from refavs_ros.resources import default_weights_path

    _silence_opencv()
    out: dict[str, Any] = {"topics": {}, "nodes": []}
    params = {"weights_path": str(default_weights_path()), "device": "cpu", "publish_debug": False,
              "mask_threshold": 0.4, "score_threshold": 0.0}
    with ros_context() as ctx:
        for compressed, topics in ((False, (malformed.IMAGE, malformed.AUDIO, malformed.COMMAND)),
                                   (True, (malformed.COMPRESSED,))):
            g = NodeGraph(ctx, params | ({"image_transport": "compressed"} if compressed else {}),
                          compressed=compressed)
            try:
                g.start()
                g.send_command("the dog")
                clock = malformed.StampClock(1_700_000_000 * SEC)
                good_sent: list[int] = []
                audio_end: list[int | None] = [None]
                rng = np.random.default_rng(0)

                def good(_sent: int = 0) -> None:
                    if _sent % args.good_every:
                        return
                    stamp = clock.next()
                    start = stamp - SEC if audio_end[0] is None else audio_end[0]
                    n = max(1, (stamp - start) * 16000 // SEC)
                    before = g.node._buffer.counters().audio_received
                    g.audio_pub.publish(g.audio_message(start, (rng.standard_normal(n) * 3000).astype(np.int16)))
                    wait_until(lambda: g.node._buffer.counters().audio_received > before)
                    audio_end[0] = start + n * SEC // 16000
                    pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
                    g.image_pub.publish(g.image_message(stamp, pixels))
                    g.masks.wait_for(lambda items: any(stamp_of(m) == stamp for m in items), 30.0)
                    good_sent.append(stamp)

                good()
                for k, topic in enumerate(topics):
                    t0 = time.monotonic()
                    report = malformed.publish_bad(g, topic, args.per_topic, clock, seed=args.seed + k,
                                                   audio_end_ns=lambda: audio_end[0], between=good)
                    good()
                    out["topics"][topic] = {
                        "sent": report.sent, "lost": report.lost, "by_class": dict(report.by_label),
                        "rejections": dict(report.rejections), "unexpected": report.unexpected[:20],
                        "unexpected_count": len(report.unexpected), "seconds": time.monotonic() - t0,
                    }
                    print(f"{topic}: {report.sent} sent in {report.seconds:.0f} s, lost {report.lost}, "
                          f"unexpected {len(report.unexpected)}", flush=True)
                # raw CDR garbage on each input: never reaches the node's callbacks
                before = g.node._buffer.counters()
                rejected = sum(g.rejections().values())
                garbage = malformed.garbage_cdr(np.random.default_rng(args.seed), args.garbage)
                for pub in (g.image_pub, g.audio_pub, g.command_pub):
                    for raw in garbage:
                        pub.publish(raw)
                time.sleep(1.0)
                after = g.node._buffer.counters()
                good()
                counts = g.rejections()
                diag = g.wait_diagnostics(lambda v: all(v.get(f"rejected {key}") == str(n) for key, n in counts.items()))
                answered = sorted(s for s in good_sent if s in g.published)
                out["nodes"].append({
                    "image_transport": "compressed" if compressed else "raw",
                    "good_frames_sent": len(good_sent), "good_frames_answered": len(answered),
                    "outputs_for_bad_messages": len(set(g.published) - set(good_sent)),
                    "rejections": dict(sorted(counts.items())),
                    "diagnostics_match": bool(diag),
                    "diagnostics_lifecycle": diag.get("lifecycle state"),
                    "diagnostics_bad_messages": diag.get("bad messages dropped"),
                    "garbage_cdr_per_topic": args.garbage,
                    "garbage_seen_by_callbacks": (after.images_received - before.images_received)
                    + (after.audio_received - before.audio_received),
                    "garbage_rejections": sum(counts.values()) - rejected,
                    "command_in_force": g.node._pipeline.command,
                })
            finally:
                g.close()
    return out


def render_malformed(result: dict[str, Any]) -> str:
    lines = ["| topic | bad messages | classes | lost | rejected for another reason | seconds |",
             "|---|---|---|---|---|---|"]
    for topic, r in result["topics"].items():
        classes = ", ".join(f"{k} {v}" for k, v in sorted(r["by_class"].items()))
        lines.append(f"| `{topic}` | {r['sent']} | {classes} | {r['lost']} | {r['unexpected_count']} | {r['seconds']:.0f} |")
    lines += ["", "| node | good frames sent / answered | outputs for bad messages | still active | /diagnostics = counters | raw CDR garbage (per topic) seen by callbacks |",
              "|---|---|---|---|---|---|"]
    for n in result["nodes"]:
        lines.append(f"| image_transport {n['image_transport']} | {n['good_frames_sent']} / {n['good_frames_answered']} | "
                     f"{n['outputs_for_bad_messages']} | {n['diagnostics_lifecycle']} | {n['diagnostics_match']} "
                     f"({n['diagnostics_bad_messages']} bad messages) | {n['garbage_cdr_per_topic']}: "
                     f"{n['garbage_seen_by_callbacks']} |")
    nodes = result["nodes"]
    lines += ["", "Rejections by reason, as `/diagnostics` shows them (`rejected <kind>: <reason>`):", "",
              "| reason | " + " | ".join(f"node with image_transport {n['image_transport']}" for n in nodes) + " |",
              "|---|" + "---|" * len(nodes)]
    reasons = sorted({k for n in nodes for k in n["rejections"]})
    lines += [f"| `{k}` | " + " | ".join(str(n["rejections"].get(k, 0)) for n in nodes) + " |" for k in reasons]
    lines.append("| total | " + " | ".join(str(sum(n["rejections"].values())) for n in nodes) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ camera
class Camera:
    """Publishes prebuilt frames (and audio chunks) at a fixed rate from a thread, each stamped
    with the wall clock (``time.time_ns``) when it is published, on an absolute schedule."""

    def __init__(self, graph: Any, frames: list[Any], audio: list[tuple[int, Any]], rate_hz: float,
                 audio_period_ns: int) -> None:
        self.g, self.frames, self.audio = graph, frames, audio
        self.period = 1.0 / rate_hz
        self.audio_period_ns = audio_period_ns
        self.sent = 0
        self.late = 0  # publishes more than one period behind schedule
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        g = self.g
        start = time.monotonic()
        next_audio_ns = time.time_ns()
        k_audio = 0
        while not self._stop.is_set():
            now_ns = time.time_ns()
            while next_audio_ns + self.audio_period_ns <= now_ns:  # audio chunks up to now
                _, msg = self.audio[k_audio % len(self.audio)]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(next_audio_ns, SEC)
                g.audio_pub.publish(msg)
                next_audio_ns += self.audio_period_ns
                k_audio += 1
            frame = self.frames[self.sent % len(self.frames)]
            frame.header.stamp.sec, frame.header.stamp.nanosec = divmod(time.time_ns(), SEC)
            g.image_pub.publish(frame)
            self.sent += 1
            due = start + self.sent * self.period
            delay = due - time.monotonic()
            if delay < -self.period:
                self.late += 1
            if delay > 0:
                self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _scene_messages(width: int, height: int, fps: float, seconds: int, tmp: Path) -> tuple[list[Any], list[tuple[int, Any]], str, int]:
    """A generated scene written to a rosbag2 and read back as rclpy messages (raw CDR
    deserialised by rclpy, as ``ros2 bag play`` publishes): (frames, audio chunks, command,
    audio chunk period ns)."""
    from rclpy.serialization import deserialize_message

    from bench.graph import FACTORY  # noqa: F401 - imports the message packages
    from refavs_ros.rosio import bagio
    from refavs_ros.scenes import SceneConfig, generate_scene

    cfg = SceneConfig(width=width, height=height, fps=fps, duration_sec=float(seconds), snr_db=10.0)
    scene = next(s for s in (generate_scene("test-seen", i, 2026, cfg) for i in range(40)) if s.kind == "semantic")
    bag_path = bagio.write_scene_bag(scene, tmp / "scene_bag")
    from audio_common_msgs.msg import AudioStamped
    from sensor_msgs.msg import Image

    frames, audio = [], []
    with bagio.BagReader(bag_path) as bag:
        reader = bag.reader
        conns = [c for c in reader.connections if c.topic in (bagio.TOPIC_IMAGE, bagio.TOPIC_AUDIO)]
        for conn, _, raw in reader.messages(connections=conns):
            if conn.topic == bagio.TOPIC_IMAGE:
                frames.append(deserialize_message(bytes(raw), Image))
            else:
                msg = deserialize_message(bytes(raw), AudioStamped)
                audio.append((len(audio), msg))
    period = bagio.AUDIO_CHUNK * SEC // bagio.AUDIO_RATE
    return frames, audio, scene.expression, period


# ----------------------------------------------------------------------------------- latency
def _stream(args: argparse.Namespace, *, minutes: float, width: int, height: int, scene_fps: float,
            scene_seconds: int, weights: Path | None, label: str, sample_rss: bool) -> dict[str, Any]:
    """Shared by latency and soak: a camera at args.rate through the node for ``minutes``."""
    from bench.graph import NodeGraph, load_average, ros_context, rss_bytes

    per_minute: list[dict[str, Any]] = []
    samples: list[tuple[np.ndarray, np.ndarray]] = []  # per minute: receive->publish, stamp->publish (ms)
    with tempfile.TemporaryDirectory() as tmp, ros_context() as ctx:
        frames, audio, expression, audio_period = _scene_messages(width, height, scene_fps, scene_seconds, Path(tmp))
        params = {"device": "cpu", "publish_debug": False}
        if weights is not None:
            params["weights_path"] = str(weights)
        g = NodeGraph(ctx, params, keep_outputs=False)
        g.record_frames = False
        lock = threading.Lock()
        bucket: dict[str, list[float]] = {"recv": [], "stamp": [], "infer": []}

        def on_frame(stamp_ns: int, received: float | None, mono: float, wall_ns: int, frame: Any) -> None:
            with lock:
                if received is not None:
                    bucket["recv"].append((mono - received) * 1e3)
                bucket["stamp"].append((wall_ns - stamp_ns) / 1e6)
                bucket["infer"].append(float(frame.prediction.timings_ms.get("total", float("nan"))))

        g.on_frame = on_frame
        try:
            g.start()
            g.send_command(expression)
            camera = Camera(g, frames, audio, args.rate, audio_period)
            t_start = time.monotonic()
            camera.start()
            counters0 = g.node._buffer.counters()
            sent0 = 0
            n_minutes = int(np.ceil(minutes))
            for minute in range(n_minutes):
                end = t_start + min(minute + 1, minutes) * 60.0
                rss_samples = []
                while time.monotonic() < end:
                    time.sleep(min(10.0, max(0.0, end - time.monotonic())))
                    if sample_rss:
                        gc.collect()
                        rss_samples.append(rss_bytes())
                with lock:
                    recv, stamp, infer = bucket["recv"], bucket["stamp"], bucket["infer"]
                    bucket = {"recv": [], "stamp": [], "infer": []}
                samples.append((np.asarray(recv, np.float32), np.asarray(stamp, np.float32)))
                counters = g.node._buffer.counters()
                row = {
                    "minute": minute + 1,
                    "frames_sent": camera.sent - sent0,
                    "frames_answered": len(stamp),
                    "frames_dropped_newer": counters.images_dropped - counters0.images_dropped,
                    "receive_to_publish_ms": _percentiles(recv),
                    "stamp_to_publish_ms": _percentiles(stamp),
                    "inference_ms_mean": float(np.nanmean(infer)) if infer else None,
                    "load1": load_average()[0],
                    "camera_late": camera.late,
                }
                if sample_rss:
                    row["rss_mib"] = rss_samples[-1] / 2**20 if rss_samples else rss_bytes() / 2**20
                    row["rss_mib_max"] = max(rss_samples) / 2**20 if rss_samples else row["rss_mib"]
                per_minute.append(row)
                sent0, counters0 = camera.sent, counters
                r, s = row["receive_to_publish_ms"], row["stamp_to_publish_ms"]
                print(f"[{label}] minute {minute + 1}: {row['frames_answered']} answered of {row['frames_sent']} sent, "
                      f"receive->publish p50 {r['p50']:.1f} p95 {r['p95']:.1f} max {r['max']:.1f} ms, "
                      f"stamp->publish p95 {s['p95']:.1f} ms, inference {row['inference_ms_mean']:.1f} ms, "
                      + (f"RSS {row['rss_mib']:.1f} MiB, " if sample_rss else "")
                      + f"load {row['load1']:.2f}", flush=True)
            camera.stop()
            values = g.diagnostics_values()
        finally:
            g.close()
    return {"per_minute": per_minute, "samples": samples, "frame_size": [width, height], "rate_hz": args.rate,
            "lifecycle_at_end": values.get("lifecycle state"), "rejections_at_end": values.get("bad messages dropped"),
            "time_jumps_at_end": values.get("time jumps (memory reset)")}


def _slope(ys: list[float]) -> float:
    x = np.arange(1, len(ys) + 1, dtype=np.float64)
    return float(np.polyfit(x, np.asarray(ys, np.float64), 1)[0]) if len(ys) >= 2 else 0.0


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    from bench.graph import make_weights

    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(args.profile, Path(tmp) / "weights")
        result = _stream(args, minutes=args.minutes, width=640, height=480, scene_fps=args.rate, scene_seconds=4,
                         weights=weights, label="latency", sample_rss=False)
    rows = result["per_minute"]
    p95 = [r["receive_to_publish_ms"]["p95"] for r in rows]
    s95 = [r["stamp_to_publish_ms"]["p95"] for r in rows]
    result.update(profile=args.profile,
                  slope_receive_p95_ms_per_min=_slope(p95), slope_stamp_p95_ms_per_min=_slope(s95),
                  last_over_first_receive_p95=p95[-1] / p95[0] if p95 and p95[0] else None,
                  model_slower_than_camera=all((r["inference_ms_mean"] or 0) > 1e3 / args.rate for r in rows))
    return result


def render_stream(result: dict[str, Any], rss: bool = False) -> str:
    head = ("| minute | sent | answered | dropped (newer frame) | receive->publish p50 / p95 / max ms "
            "| stamp->publish p50 / p95 / max ms | inference mean ms |" + (" RSS MiB |" if rss else "") + " load 1 min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["per_minute"]:
        a, b = r["receive_to_publish_ms"], r["stamp_to_publish_ms"]
        fmt = lambda p: f"{p['p50']:.1f} / {p['p95']:.1f} / {p['max']:.1f}" if p["n"] else "n/a"  # noqa: E731
        lines.append(f"| {r['minute']} | {r['frames_sent']} | {r['frames_answered']} | {r['frames_dropped_newer']} | "
                     f"{fmt(a)} | {fmt(b)} | {r['inference_ms_mean']:.1f} |"
                     + (f" {r['rss_mib']:.1f} |" if rss else "") + f" {r['load1']:.2f} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- soak
def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    result = _stream(args, minutes=args.minutes, width=320, height=240, scene_fps=args.rate, scene_seconds=20,
                     weights=None, label="soak", sample_rss=True)
    rows = result["per_minute"]
    warm = [r for r in rows if r["minute"] > args.warmup]
    if warm:
        base = warm[0]["rss_mib"]
        result["rss_after_warmup_mib"] = base
        result["rss_end_mib"] = rows[-1]["rss_mib"]
        result["rss_max_after_warmup_mib"] = max(r["rss_mib_max"] for r in warm)
        result["rss_growth_pct"] = 100.0 * (rows[-1]["rss_mib"] - base) / base
        result["rss_max_growth_pct"] = 100.0 * (result["rss_max_after_warmup_mib"] - base) / base
    window = min(10, max(1, len(warm) // 2))
    if len(warm) >= 2 * window:  # exact p95 over each window's samples
        samples = result["samples"][args.warmup:]
        for index, key in enumerate(("receive_to_publish_ms", "stamp_to_publish_ms")):
            first = np.concatenate([m[index] for m in samples[:window]])
            last = np.concatenate([m[index] for m in samples[-window:]])
            f, l = float(np.percentile(first, 95)), float(np.percentile(last, 95))
            result[f"{key}_p95_first"], result[f"{key}_p95_last"] = f, l
            result[f"{key}_p95_ratio"] = l / f
        result["window_minutes"] = window
        load = [r["load1"] for r in warm]
        result["load1_first_window_mean"] = float(np.mean(load[:window]))
        result["load1_last_window_mean"] = float(np.mean(load[-window:]))
    return result


# --------------------------------------------------------------------------------- lifecycle
def run_lifecycle(args: argparse.Namespace) -> dict[str, Any]:
    from lifecycle_msgs.msg import Transition

    from bench.graph import NodeGraph, make_weights, ros_context, rss_bytes

    def change(g: NodeGraph, transition: int) -> bool:
        return g.change_state(transition, timeout=120)

    def settled_rss() -> float:
        gc.collect()
        time.sleep(0.5)
        gc.collect()
        return rss_bytes() / 2**20

    cycles = []
    with tempfile.TemporaryDirectory() as tmp, ros_context() as ctx:
        weights = make_weights(args.profile, Path(tmp) / "weights")
        frames, audio, expression, audio_period = _scene_messages(640, 480, args.rate, 4, Path(tmp))
        params = {"device": "cpu", "publish_debug": False, "autostart": False}
        if weights is not None:
            params["weights_path"] = str(weights)
        g = NodeGraph(ctx, params, keep_outputs=False)
        g.record_frames = False
        outputs = [0]
        g.on_frame = lambda *a: outputs.__setitem__(0, outputs[0] + 1)
        camera = Camera(g, frames, audio, args.rate, audio_period)
        try:
            rss_unconfigured = settled_rss()
            camera.start()
            for cycle in range(args.cycles):
                row: dict[str, Any] = {"cycle": cycle + 1}
                ok = change(g, Transition.TRANSITION_CONFIGURE)
                row["rss_configured_mib"] = settled_rss()
                ok &= change(g, Transition.TRANSITION_ACTIVATE)
                g.send_command(expression)
                n0 = outputs[0]
                time.sleep(args.active_sec)
                row["outputs_active"] = outputs[0] - n0
                row["rss_active_mib"] = rss_bytes() / 2**20
                ok &= change(g, Transition.TRANSITION_DEACTIVATE)
                time.sleep(0.3)
                n1 = len(g.masks)
                time.sleep(1.0)
                row["outputs_while_inactive"] = len(g.masks) - n1
                predictor = weakref.ref(g.node._pipeline.predictor)
                ok &= change(g, Transition.TRANSITION_CLEANUP)
                row["rss_after_cleanup_mib"] = settled_rss()
                row["predictor_freed"] = predictor() is None
                row["transitions_ok"] = bool(ok)
                cycles.append(row)
                print(f"[lifecycle] cycle {cycle + 1}: configured {row['rss_configured_mib']:.1f} MiB, active "
                      f"{row['rss_active_mib']:.1f} MiB ({row['outputs_active']} outputs), after cleanup "
                      f"{row['rss_after_cleanup_mib']:.1f} MiB, predictor freed {row['predictor_freed']}, "
                      f"outputs while inactive {row['outputs_while_inactive']}", flush=True)
        finally:
            camera.stop()
            last_error = g.node._status.last_error
            g.close()
    return {"profile": args.profile, "rss_unconfigured_mib": rss_unconfigured, "cycles": cycles,
            "last_error": last_error, "camera_rate_hz": args.rate}


def render_lifecycle(result: dict[str, Any]) -> str:
    lines = [f"RSS unconfigured (camera not yet streaming): {result['rss_unconfigured_mib']:.1f} MiB", "",
             "| cycle | RSS configured MiB | RSS active MiB | outputs while active | outputs while inactive "
             "| RSS after cleanup MiB | predictor freed | transitions ok |", "|---|---|---|---|---|---|---|---|"]
    for r in result["cycles"]:
        lines.append(f"| {r['cycle']} | {r['rss_configured_mib']:.1f} | {r['rss_active_mib']:.1f} | {r['outputs_active']} | "
                     f"{r['outputs_while_inactive']} | {r['rss_after_cleanup_mib']:.1f} | {r['predictor_freed']} | "
                     f"{r['transitions_ok']} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run one mode; writes ``--json`` (and prints a markdown table); returns the exit code."""
    p = argparse.ArgumentParser(prog="bench.node_stress", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("malformed", help="generated bad messages on every input")
    m.add_argument("--per-topic", type=int, default=1000)
    m.add_argument("--good-every", type=int, default=50, help="a good frame after every N bad messages")
    m.add_argument("--garbage", type=int, default=100, help="raw CDR garbage messages per topic")
    m.add_argument("--seed", type=int, default=0)
    lat = sub.add_parser("latency", help="a 30 Hz camera and a slower model")
    lat.add_argument("--minutes", type=float, default=5.0)
    lat.add_argument("--rate", type=float, default=30.0)
    lat.add_argument("--profile", choices=["tiny", "base"], default="base")
    soak = sub.add_parser("soak", help="bag replay in a loop for an hour")
    soak.add_argument("--minutes", type=float, default=60.0)
    soak.add_argument("--rate", type=float, default=15.0)
    soak.add_argument("--warmup", type=int, default=5, help="minutes before RSS and latency are compared")
    lc = sub.add_parser("lifecycle", help="transitions while images stream")
    lc.add_argument("--cycles", type=int, default=8)
    lc.add_argument("--rate", type=float, default=30.0)
    lc.add_argument("--active-sec", type=float, default=3.0)
    lc.add_argument("--profile", choices=["tiny", "base"], default="base")
    for sp in (m, lat, soak, lc):
        sp.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    header = _header()
    print(f"bench.node_stress {args.mode}: {header['cpus']} CPUs, load {header['load_start']}, nice {header['nice']}",
          flush=True)
    run = {"malformed": run_malformed, "latency": run_latency, "soak": run_soak, "lifecycle": run_lifecycle}[args.mode]
    result = run(args)
    header["load_end"] = os.getloadavg()
    result = {"header": header, **result}
    render = {"malformed": render_malformed, "latency": render_stream,
              "soak": lambda r: render_stream(r, rss=True), "lifecycle": render_lifecycle}[args.mode]
    print(render(result))
    result.pop("samples", None)
    summary = {k: v for k, v in result.items() if k not in ("per_minute", "cycles", "topics", "nodes")}
    print(json.dumps(summary, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
