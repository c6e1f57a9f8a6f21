"""``refavs-replay``: run the streaming predictor over recorded rosbag2 bags and score it.

Example::

    refavs-replay bags/test-seen --metrics-json seen.json
    refavs-replay my_robot.mcap --command "the person who is speaking" --output out_bag \\
        --overlay-dir overlays

For every bag (a bag, or every bag under a directory) the tool reads the image, audio, command
and ground-truth topics with rosbags, sorts them by HEADER stamp, and feeds them to a
:class:`refavs_ros.predictor.StreamingPredictor` the way the ROS node does: every audio chunk
stamped at or before an image is pushed before that image, then ``push_image`` and ``step``.
It reports J / F / S in per-frame mode (:mod:`refavs_ros.eval.metrics`) per subset (the
``split`` of ``/refavs/scene_info``, else the bag's parent folder name), per expression kind and
over all bags, and the end-to-end latency per frame (decode of the image message -> prediction
ready, ms). See ``docs/replay.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from refavs_ros.errors import BagError, ConfigError, InputError, RefAvsError
from refavs_ros.eval.metrics import MetricAccumulator
from refavs_ros.geometry import GeometryConfig, bbox_iou
from refavs_ros.node.depth import TargetLocator
from refavs_ros.node.pipeline import MessagePipeline, PipelineOptions
from refavs_ros.rosio import bagio, conversions, msgs

PROG = "refavs-replay"


class Predictor(Protocol):
    """What the replay needs from a predictor (:class:`refavs_ros.predictor.StreamingPredictor`)."""

    def set_command(self, text: str) -> None: ...

    def push_audio(self, stamp_ns: int, samples: np.ndarray, sample_rate: int) -> None: ...

    def push_image(self, stamp_ns: int, image: np.ndarray) -> None: ...

    def step(self) -> Any: ...

    def reset_memory(self) -> None: ...


@dataclass(frozen=True)
class ReplayOptions:
    """Topic names and decoding options of a replay.

    Attributes:
        image_topic: ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic.
        audio_topic: ``audio_common_msgs/AudioStamped`` (mgonzs13) or ``AudioDataStamped``
            (ros-drivers) topic.
        command_topic: ``std_msgs/String`` with the referring expression (optional in the bag).
        gt_topic: ``sensor_msgs/Image`` mono8 ground-truth masks, same stamps as the images
            (optional; no metrics without it).
        scene_info_topic: ``std_msgs/String`` JSON with ``split`` / ``kind`` (optional).
        command: command text overriding the bag's command topic for the whole bag.
        audio_rate: Hz of ros-drivers raw audio (ignored for mgonzs13 AudioStamped).
        audio_channels: channels of ros-drivers raw audio.
        audio_format: sample format of ros-drivers raw audio (S16LE, ...).
        require_audio: fail when the audio topic is missing (else the model hears silence).
        depth_topic: registered ``sensor_msgs/Image`` depth (16UC1 mm / 32FC1 m).
        camera_info_topic: ``sensor_msgs/CameraInfo`` of the depth image.
        depth: None = compute the 3-D target when the bag has ``depth_topic``; False = never;
            True = require the depth topics.
        geometry: thresholds and standoff of the 3-D target.
        max_depth_skew_sec: largest depth-to-colour stamp difference paired (s).
    """

    image_topic: str = bagio.TOPIC_IMAGE
    audio_topic: str = bagio.TOPIC_AUDIO
    command_topic: str = bagio.TOPIC_COMMAND
    gt_topic: str = bagio.TOPIC_GT_MASK
    scene_info_topic: str = bagio.TOPIC_SCENE_INFO
    command: str | None = None
    audio_rate: int = 16000
    audio_channels: int = 1
    audio_format: str = "S16LE"
    require_audio: bool = True
    depth_topic: str = bagio.TOPIC_DEPTH
    camera_info_topic: str = bagio.TOPIC_CAMERA_INFO
    depth: bool | None = None
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    max_depth_skew_sec: float = 0.05


@dataclass
class FrameGeometry:
    """3-D and box figures of one scored frame (bags with depth and/or GT masks).

    Attributes:
        gt_present: the GT mask is non-empty (the target is visible).
        found: the prediction reports the target present.
        mask_iou: IoU of the published mask and the GT mask (0 when either is empty, 1 when
            both are).
        bbox_iou: IoU of the detection box (main region) and the GT mask's box.
        bbox_iou_all: IoU of the box of every above-threshold pixel (before the component
            filter) and the GT box.
        status: ``"known"`` or the unknown reason of the 3-D target; None without depth.
        error_m: distance (m) between the 3-D target point and the scene's true centroid, or
            None (unknown point or no truth).
    """

    gt_present: bool
    found: bool
    mask_iou: float
    bbox_iou: float
    bbox_iou_all: float
    status: str | None = None
    error_m: float | None = None


@dataclass
class BagReport:
    """What happened while replaying one bag.

    Attributes:
        path: the bag.
        subset: subset name (scene_info ``split`` or the parent folder name).
        kind: expression kind from scene_info, or None.
        images: image messages read.
        predictions: frames for which the predictor returned a prediction.
        scored: frames scored against a GT mask.
        no_command: frames stepped while no command was set (no prediction).
        dropped_images: images the predictor rejected (e.g. not newer than the previous one).
        dropped_audio: audio chunks that could not be decoded or were rejected.
        missing_gt: predicted frames without a GT mask of the same stamp (GT topic present).
        out_of_order: per topic, messages whose header stamp went backwards in receive order.
        latencies_ms: end-to-end latency per predicted frame (ms).
        commands: the command texts in force, in order of appearance.
        geometry: per scored frame, the 3-D and box figures (:class:`FrameGeometry`).
        depth: the bag was replayed with depth (3-D target computed).
        voice: with ``--voice``, what the recogniser did on this bag (:func:`voice_record`).
    """

    path: Path
    subset: str
    kind: str | None
    images: int = 0
    predictions: int = 0
    scored: int = 0
    no_command: int = 0
    dropped_images: int = 0
    dropped_audio: int = 0
    missing_gt: int = 0
    out_of_order: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    geometry: list[FrameGeometry] = field(default_factory=list)
    depth: bool = False
    voice: dict[str, Any] | None = None


def _scene_info(bag: bagio.BagReader, topic: str) -> dict:
    if topic not in bag.topics:
        return {}
    first = bag.first_message(topic)
    if first is None:
        return {}
    try:
        info = json.loads(first.message.data)
    except (json.JSONDecodeError, AttributeError) as exc:
        raise BagError(f"{topic} in {bag.path} is not JSON: {exc}") from exc
    return info if isinstance(info, dict) else {}


def replay_bag(
    path: str | Path,
    predictor: Predictor,
    *,
    options: ReplayOptions = ReplayOptions(),
    accumulator: MetricAccumulator | None = None,
    output: str | Path | None = None,
    storage: str = "mcap",
    overlay_dir: str | Path | None = None,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    voice: Any = None,
) -> BagReport:
    """Replay one bag through ``predictor`` in header-stamp order and score it.

    The predictor's memory is reset first (one bag = one clip). Messages of the command, audio,
    image and GT topics are sorted by header stamp (command and audio before the image at equal
    stamps), so every audio chunk stamped at or before an image is pushed before that image.
    Every message goes through :class:`refavs_ros.node.pipeline.MessagePipeline`, the code
    ``refavs_node`` runs on live messages (decoding, command rule, stale/time-jump policy,
    stepping, output messages); the wall time from decoding an image to its output messages is
    the frame's end-to-end latency.

    Args:
        path: bag (directory, ``.mcap`` or ``.db3``).
        predictor: any object with ``set_command``, ``push_audio``, ``push_image``, ``step`` and
            ``reset_memory`` (the :class:`refavs_ros.predictor.StreamingPredictor` contract);
            ``step`` returns None or an object with ``mask`` bool (H, W), ``probability`` float
            (H, W) in [0, 1] at the source size, ``score``, ``found``, ``bbox``, ``command``.
        options: topics and decoding options.
        accumulator: receives every scored frame under the groups ``"subset:<name>"``,
            ``"kind:<kind>"`` (when known) and ``"all"``; clip id = the bag path.
        output: result bag to write (``/refavs/mask``, ``/refavs/detections``,
            ``/refavs/active_command``); None = none.
        storage: storage of the result bag, ``"mcap"`` or ``"sqlite3"``.
        overlay_dir: folder for one overlay PNG per predicted frame; None = none.
        progress: optional tqdm-like object; ``update(1)`` per image, ``total`` grown per bag.
        warn: callback for non-fatal problems (default: print to stderr).
        voice: a :class:`refavs_ros.node.voice.VoiceStage`: the command is recognised from the
            bag's audio (the command topic is ignored) and ``report.voice`` records the
            recognition against ``scene_info["spoken_command"]`` when the bag has one.

    Returns:
        A :class:`BagReport`.

    Raises:
        BagError: unreadable bag, missing image (or required audio) topic, wrong topic types,
            no command at all, or GT masks of another size than the images.
    """
    path = Path(path)
    warn = warn or (lambda text: print(f"{PROG}: warning: {text}", file=sys.stderr))
    with bagio.BagReader(path) as bag:
        bag.require(options.image_topic, [msgs.IMAGE, msgs.COMPRESSED_IMAGE])
        topics = bag.topics
        has_audio = options.audio_topic in topics
        if has_audio:
            bag.require(options.audio_topic, [msgs.AUDIO_STAMPED, msgs.AUDIO_DATA_STAMPED])
        elif options.require_audio:
            bag.require(options.audio_topic)  # raises, naming the available topics
        else:
            warn(f"{path}: no audio topic {options.audio_topic}; the model hears silence")
        has_gt = options.gt_topic in topics
        if has_gt:
            bag.require(options.gt_topic, [msgs.IMAGE])
        has_command_topic = options.command_topic in topics
        if has_command_topic:
            bag.require(options.command_topic, [msgs.STRING])
        if voice is not None:
            has_command_topic = False  # the command comes from the audio
        if options.command is None and not has_command_topic and voice is None:
            raise BagError(
                f"no command for {path}: pass --command TEXT or record {options.command_topic} (std_msgs/String)"
            )
        info = _scene_info(bag, options.scene_info_topic)
        use_depth = options.depth is not False and options.depth_topic in topics
        if options.depth and not use_depth:
            bag.require(options.depth_topic)  # raises, naming the available topics
        if use_depth:
            bag.require(options.depth_topic, [msgs.IMAGE])
            bag.require(options.camera_info_topic, [msgs.CAMERA_INFO])
        read_topics = [options.audio_topic, options.image_topic, options.gt_topic]
        if use_depth:  # paired depth and camera info before the image of the same stamp
            read_topics[1:1] = [options.depth_topic, options.camera_info_topic]
        if options.command is None and has_command_topic:
            read_topics.insert(0, options.command_topic)
        order = bag.read_sorted(read_topics)
    subset = str(info.get("split") or path.resolve().parent.name)
    kind = info.get("kind")
    report = BagReport(path=path, subset=subset, kind=str(kind) if kind else None, out_of_order=order.out_of_order,
                       depth=use_depth)
    truth = info.get("target_centroid_m") if use_depth else None
    if order.total_out_of_order:
        warn(f"{path}: {order.total_out_of_order} message(s) with out-of-order header stamps "
             f"{ {t: n for t, n in order.out_of_order.items() if n} } were sorted by stamp")
    gt_by_stamp = {m.stamp_ns: m.message for m in order.messages if m.topic == options.gt_topic}
    groups = [f"subset:{subset}", "all"] + ([f"kind:{kind}"] if kind else [])
    images = [m for m in order.messages if m.topic == options.image_topic]
    if progress is not None:
        progress.total = (progress.total or 0) + len(images)
        progress.refresh()
    if overlay_dir is not None:
        Path(overlay_dir).mkdir(parents=True, exist_ok=True)

    pipeline = MessagePipeline(
        predictor,  # type: ignore[arg-type]  # any object with the StreamingPredictor contract
        options=PipelineOptions(
            audio_sample_rate=options.audio_rate, audio_channels=options.audio_channels,
            audio_format=options.audio_format,
        ),
        locator=TargetLocator(options.geometry, max_depth_skew_sec=options.max_depth_skew_sec) if use_depth else None,
        voice=voice,
    )
    pipeline.reset()
    if voice is not None:  # the command must be said in this bag: none is in force at its start
        voice.emitted.clear()
        predictor.set_command("")
    writing = bagio.BagWriter(output, storage=storage) if output is not None else contextlib.nullcontext()
    with writing as writer:

        def record(change: Any, stamp_ns: int) -> None:
            report.commands.append(change.text)
            if writer is not None:
                writer.write(bagio.TOPIC_ACTIVE_COMMAND, msgs.STRING, change.message, stamp_ns, qos=bagio.LATCHED_QOS)

        def command(text: str, stamp_ns: int) -> None:
            try:
                change = pipeline.handle_command(text, stamp_ns)
            except InputError as exc:
                warn(f"{path}: command {text!r} rejected at {stamp_ns} ns: {exc}")
                return
            if change is None:
                return
            report.commands.append(change.text)
            if writer is not None:
                writer.write(bagio.TOPIC_ACTIVE_COMMAND, msgs.STRING, change.message, stamp_ns, qos=bagio.LATCHED_QOS)

        if options.command is not None:
            command(options.command, images[0].stamp_ns if images else 0)
        audio_warned = False
        index = 0
        for item in order.messages:
            if item.topic == options.command_topic and options.command is None:
                command(str(item.message.data), item.stamp_ns)
            elif item.topic == options.audio_topic:
                try:
                    for change in pipeline.handle_audio(item.message, item.stamp_ns):
                        record(change, item.stamp_ns)
                except InputError as exc:
                    report.dropped_audio += 1
                    if not audio_warned:
                        warn(f"{path}: audio chunk at {item.stamp_ns} ns dropped: {exc}")
                        audio_warned = True
            elif use_depth and item.topic == options.depth_topic:
                pipeline.handle_depth(item.message, item.stamp_ns)
            elif use_depth and item.topic == options.camera_info_topic:
                pipeline.handle_camera_info(item.message, item.stamp_ns)
            elif item.topic == options.image_topic:
                report.images += 1
                centroid = truth[index] if isinstance(truth, list) and index < len(truth) else None
                _replay_image(item, pipeline, report, gt_by_stamp if has_gt else None,
                              accumulator, groups, writer, overlay_dir, index, warn, centroid)
                index += 1
                if progress is not None:
                    progress.update(1)
    if voice is not None:  # an utterance still in progress at the end of the bag is not recognised
        report.voice = voice_record(voice.emitted, info.get("spoken_command"),
                                    _audio_seconds(order.messages, options.audio_topic))
    if has_gt and report.missing_gt:
        warn(f"{path}: {report.missing_gt} predicted frame(s) had no GT mask with the same stamp")
    return report


def _audio_seconds(messages: Sequence[bagio.BagMessage], topic: str) -> float:
    stamps = [m.stamp_ns for m in messages if m.topic == topic]
    if len(stamps) < 2:
        return 0.0
    step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return (stamps[-1] - stamps[0] + step) / 1e9


def voice_record(emitted: Sequence[Any], spoken: dict | None, audio_sec: float) -> dict[str, Any]:
    """Score the voice commands of one bag against its ground truth.

    Args:
        emitted: the :class:`refavs_ros.node.voice.EmittedCommand` s of the bag, in order.
        spoken: ``scene_info["spoken_command"]`` (``text``, ``end_ns``, ...) or None (a bag
            without a spoken command: every recognised command is a false one).
        audio_sec: audio replayed (s).

    Returns:
        ``{"reference", "commands": [{"text", "confidence", "start_ns", "end_ns", "emitted_ns"}],
        "final", "exact", "word_errors", "words", "latency_ms" (first exact command's
        publication minus the end of the speech, or None), "extra_commands" (commands other than
        the first exact one), "audio_sec"}``. ``final`` is the last recognised command, the one in
        force at the end of the bag ("" when none).
    """
    from refavs_ros.voice import normalise_text

    ref = normalise_text(spoken["text"]).split() if spoken else None
    cmds = [{"text": e.command.text, "confidence": round(float(e.command.confidence), 4),
             "start_ns": int(e.command.start_ns), "end_ns": int(e.command.end_ns), "emitted_ns": int(e.emitted_ns)}
            for e in emitted]
    final = cmds[-1]["text"] if cmds else ""
    first_ok = next((c for c in cmds if ref is not None and c["text"].split() == ref), None)
    return {
        "reference": " ".join(ref) if ref is not None else None,
        "commands": cmds,
        "final": final,
        "exact": None if ref is None else final.split() == ref,
        "word_errors": None if ref is None else word_errors(ref, final.split()),
        "words": None if ref is None else len(ref),
        "latency_ms": None if first_ok is None else (first_ok["emitted_ns"] - int(spoken["end_ns"])) / 1e6,
        "extra_commands": len(cmds) - (first_ok is not None),
        "audio_sec": float(audio_sec),
    }


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)]


def voice_summary(reports: Sequence[BagReport]) -> dict[str, Any] | None:
    """Aggregate :attr:`BagReport.voice` over bags (None when no bag was replayed with --voice).

    Returns:
        ``{"scenes" (bags with a spoken command), "exact_match", "wer", "latency_ms": {p50, p95,
        max, mean, frames}, "extra_commands", "audio_hours", "false_commands_per_hour"}``;
        false commands = every recognised command other than the first exact one per bag.
    """
    recs = [r.voice for r in reports if r.voice is not None]
    if not recs:
        return None
    spoken = [v for v in recs if v["reference"] is not None]
    extra = sum(v["extra_commands"] for v in recs)
    hours = sum(v["audio_sec"] for v in recs) / 3600.0
    words = sum(v["words"] for v in spoken)
    return {
        "scenes": len(spoken),
        "exact_match": (sum(bool(v["exact"]) for v in spoken) / len(spoken)) if spoken else None,
        "wer": (sum(v["word_errors"] for v in spoken) / words) if words else None,
        "latency_ms": _percentiles([v["latency_ms"] for v in spoken if v["latency_ms"] is not None]),
        "extra_commands": extra,
        "audio_hours": hours,
        "false_commands_per_hour": extra / hours if hours else None,
    }


def _replay_image(
    item: bagio.BagMessage,
    pipeline: MessagePipeline,
    report: BagReport,
    gt_by_stamp: dict[int, Any] | None,
    accumulator: MetricAccumulator | None,
    groups: list[str],
    writer: bagio.BagWriter | None,
    overlay_dir: str | Path | None,
    index: int,
    warn: Callable[[str], None],
    centroid: Sequence[float] | None = None,
) -> None:
    try:
        frame = pipeline.handle_image(item.message, stamp_ns=item.stamp_ns)
    except InputError as exc:
        report.dropped_images += 1
        warn(f"{report.path}: image at {item.stamp_ns} ns dropped: {exc}")
        return
    if frame is None:
        report.no_command += 1
        return
    prediction = frame.prediction
    report.predictions += 1
    report.latencies_ms.append(frame.latency_ms)
    probability = np.asarray(prediction.probability)
    if gt_by_stamp is not None:
        gt_msg = gt_by_stamp.get(item.stamp_ns)
        if gt_msg is None:
            report.missing_gt += 1
        else:
            gt = conversions.image_to_array(gt_msg)
            gt = gt if gt.ndim == 2 else gt[..., 0]
            if gt.shape != probability.shape:
                raise BagError(
                    f"{report.path}: GT mask at {item.stamp_ns} ns is {gt.shape[1]}x{gt.shape[0]}, "
                    f"the prediction {probability.shape[1]}x{probability.shape[0]}; GT must match the image size"
                )
            if accumulator is not None:
                accumulator.process(probability, gt != 0, groups=groups, clip=str(report.path))
            report.scored += 1
            report.geometry.append(_frame_geometry(frame, gt != 0, centroid))
    if writer is not None:
        writer.write(bagio.TOPIC_MASK, msgs.IMAGE, frame.mask, item.stamp_ns)
        writer.write(bagio.TOPIC_DETECTIONS, msgs.DETECTION2D_ARRAY, frame.detections, item.stamp_ns)
        target = frame.target
        if target is not None and target.target_point is not None:
            writer.write(bagio.TOPIC_TARGET_POINT, msgs.POINT_STAMPED, target.target_point, item.stamp_ns)
            writer.write(bagio.TOPIC_GOAL_POSE, msgs.POSE_STAMPED, target.goal_pose, item.stamp_ns)
            writer.write(bagio.TOPIC_DETECTIONS_3D, msgs.DETECTION3D_ARRAY, target.detections_3d, item.stamp_ns)
            writer.write(bagio.TOPIC_MARKER, msgs.MARKER, target.marker, item.stamp_ns)
    if overlay_dir is not None:
        target = Path(overlay_dir) / f"{index:06d}_{item.stamp_ns}.png"
        if not cv2.imwrite(str(target), pipeline.render_overlay(frame.rgb, prediction)):
            raise BagError(f"cannot write overlay {target}")


def _frame_geometry(frame: Any, gt: np.ndarray, centroid: Sequence[float] | None) -> FrameGeometry:
    """Box IoUs, mask IoU and 3-D error of one scored frame."""
    from refavs_ros.predictor import mask_bbox

    pred = frame.prediction
    mask = np.asarray(pred.mask, dtype=bool)
    union = int(np.count_nonzero(mask | gt))
    mask_iou = 1.0 if union == 0 else int(np.count_nonzero(mask & gt)) / union
    gt_box = mask_bbox(gt)
    all_box = getattr(pred, "unfiltered_bbox", pred.bbox)
    out = FrameGeometry(gt_present=gt_box is not None, found=bool(pred.found), mask_iou=float(mask_iou),
                        bbox_iou=bbox_iou(pred.bbox, gt_box), bbox_iou_all=bbox_iou(all_box, gt_box))
    target = frame.target
    if target is not None:
        out.status = target.status
        if target.target.known and centroid is not None:
            out.error_m = float(np.linalg.norm(np.asarray(target.target.point) - np.asarray(centroid, dtype=float)))
    return out


def summarize_geometry(frames: Sequence[FrameGeometry], *, success_m: float = 0.2,
                       iou_min: float = 0.5) -> dict[str, Any]:
    """3-D and box figures over scored frames (issue 10).

    Args:
        frames: :class:`FrameGeometry` of every scored frame.
        success_m: a 3-D point is a success when its error is at most this (m).
        iou_min: the "geometry judged apart from segmentation" subset: frames with mask IoU >= it.

    Returns:
        ``{"bbox": {"frames", "iou_main", "iou_all"}`` (mean over frames where the target is
        visible and found), ``"depth_frames"`` and, with depth, ``"3d"``: for each subset
        ``"visible"`` (every frame whose GT target is visible), ``"found"`` (visible and
        reported present) and ``"iou>=0.5"`` (found with mask IoU >= ``iou_min``):
        ``frames``, ``known`` (a point was published), ``median_m`` / ``p95_m`` / ``mean_m`` of
        the error over known points, ``success_rate`` (error <= ``success_m`` over ALL frames of
        the subset: unknown and not-found frames count as failures), and ``unknown`` (counts by
        reason).
    """
    visible_found = [f for f in frames if f.gt_present and f.found]
    out: dict[str, Any] = {
        "bbox": {
            "frames": len(visible_found),
            "iou_main": float(np.mean([f.bbox_iou for f in visible_found])) if visible_found else None,
            "iou_all": float(np.mean([f.bbox_iou_all for f in visible_found])) if visible_found else None,
        },
        "depth_frames": sum(f.status is not None for f in frames),
    }
    depth = [f for f in frames if f.status is not None and f.gt_present]
    if not depth:
        return out
    subsets = {
        "visible": depth,
        "found": [f for f in depth if f.found],
        f"iou>={iou_min:g}": [f for f in depth if f.found and f.mask_iou >= iou_min],
    }
    out["3d"] = {}
    for name, group in subsets.items():
        errors = np.asarray([f.error_m for f in group if f.error_m is not None], dtype=np.float64)
        unknown = Counter(f.status for f in group if f.error_m is None)
        out["3d"][name] = {
            "frames": len(group),
            "known": int(errors.size),
            "median_m": float(np.median(errors)) if errors.size else None,
            "p95_m": float(np.percentile(errors, 95)) if errors.size else None,
            "mean_m": float(errors.mean()) if errors.size else None,
            "success_rate": float(np.count_nonzero(errors <= success_m) / len(group)) if group else None,
            "unknown": dict(sorted(unknown.items())),
        }
    out["success_m"] = success_m
    return out


# --------------------------------------------------------------------------- many bags


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "mean": None, "frames": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
        "frames": int(arr.size),
    }


def _output_for(root: Path, bag: Path, output: Path | None, single: bool) -> Path | None:
    if output is None:
        return None
    if single:
        return output
    rel = bag.relative_to(root)
    return output / (rel.with_suffix("") if bag.is_file() else rel)


def replay(
    root: str | Path,
    predictor: Predictor,
    *,
    options: ReplayOptions = ReplayOptions(),
    output: str | Path | None = None,
    storage: str = "mcap",
    overlay_dir: str | Path | None = None,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    voice: Any = None,
) -> tuple[dict[str, Any], list[BagReport]]:
    """Replay a bag or every bag under a directory and aggregate the metrics.

    Args:
        root: a bag, or a directory whose sub-folders hold bags (see
            :func:`refavs_ros.rosio.bagio.find_bags`).
        predictor: see :func:`replay_bag` (reused across bags; its memory is reset per bag).
        options: topics and decoding options.
        output: result bag (single bag) or a directory receiving one result bag per input bag at
            the same relative path.
        storage: storage of the result bags.
        overlay_dir: overlay folder (one sub-folder per bag when replaying a directory).
        progress: tqdm-like progress bar.
        warn: warning callback.
        voice: a :class:`refavs_ros.node.voice.VoiceStage` (see :func:`replay_bag`); the summary
            then has a ``"voice"`` entry (:func:`voice_summary`).

    Returns:
        ``(summary, reports)``. ``summary`` is the metrics JSON: ``{"subsets": {name: {...}},
        "kinds": {kind: {...}}, "all": {...}, "J", "F", "S" (of "all"), "latency_ms": {"p50",
        "p95", "max", "mean", "frames"}, "bags": N, "frames": {...}}``; each group holds ``J``,
        ``F``, ``S`` (None where undefined), ``frames`` (scored), ``f_frames``, ``s_frames``
        and ``bags``.

    Raises:
        BagError: no bag found, or any bag error (the bag is named).
    """
    root = Path(root)
    bags = bagio.find_bags(root)
    single = len(bags) == 1 and bags[0] == root
    output_path = Path(output) if output is not None else None
    if output_path is not None and not single:
        output_path.mkdir(parents=True, exist_ok=True)
    accumulator = MetricAccumulator()
    reports = []
    for bag in bags:
        overlays = None
        if overlay_dir is not None:
            overlays = Path(overlay_dir) if single else Path(overlay_dir) / bag.relative_to(root)
        reports.append(replay_bag(
            bag, predictor, options=options, accumulator=accumulator,
            output=_output_for(root, bag, output_path, single), storage=storage,
            overlay_dir=overlays, progress=progress, warn=warn, voice=voice,
        ))
    return summarize(accumulator, reports), reports


def summarize(accumulator: MetricAccumulator, reports: Sequence[BagReport]) -> dict[str, Any]:
    """Build the metrics JSON (see :func:`replay`) from an accumulator and the bag reports."""
    results = accumulator.evaluate()

    def group(key: str, bag_count: int) -> dict[str, Any]:
        r = results.get(key, {})
        return {
            "J": r.get("J"), "F": r.get("F"), "S": r.get("S"),
            "frames": r.get("frames", 0), "f_frames": r.get("f_frames", 0), "s_frames": r.get("s_frames", 0),
            "bags": bag_count,
        }

    subsets = sorted({r.subset for r in reports})
    kinds = sorted({r.kind for r in reports if r.kind})
    summary: dict[str, Any] = {
        "subsets": {s: group(f"subset:{s}", sum(r.subset == s for r in reports)) for s in subsets},
        "kinds": {k: group(f"kind:{k}", sum(r.kind == k for r in reports)) for k in kinds},
        "all": group("all", len(reports)),
    }
    summary.update({name: summary["all"][name] for name in ("J", "F", "S")})
    summary["latency_ms"] = _percentiles([v for r in reports for v in r.latencies_ms])
    summary["bags"] = len(reports)
    summary["frames"] = {
        name: sum(getattr(r, name) for r in reports)
        for name in ("images", "predictions", "scored", "no_command", "dropped_images", "dropped_audio", "missing_gt")
    }
    summary["out_of_order"] = sum(sum(r.out_of_order.values()) for r in reports)
    summary["geometry"] = summarize_geometry([g for r in reports for g in r.geometry])
    voice = voice_summary(reports)
    if voice is not None:
        summary["voice"] = voice
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable table of a :func:`replay` summary (J and F as %, like the paper's J)."""

    def fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    lines = [f"{'group':<24}{'bags':>6}{'frames':>8}{'J %':>9}{'F':>8}{'S':>8}"]

    def row(name: str, g: dict[str, Any]) -> None:
        lines.append(f"{name:<24}{g['bags']:>6}{g['frames']:>8}{fmt(g['J'], 100, 2):>9}"
                     f"{fmt(g['F']):>8}{fmt(g['S']):>8}")

    for name, g in summary["subsets"].items():
        row(f"subset {name}", g)
    for name, g in summary["kinds"].items():
        row(f"kind {name}", g)
    row("all", summary["all"])
    lat = summary["latency_ms"]
    if lat["frames"]:
        lines.append(f"latency (end-to-end, ms): p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  "
                     f"max {lat['max']:.1f}  over {lat['frames']} frames")
    else:
        lines.append("latency: no predicted frame")
    frames = summary["frames"]
    notes = [f"{k.replace('_', ' ')} {v}" for k, v in frames.items() if v and k not in ("images", "predictions", "scored")]
    if notes or summary["out_of_order"]:
        lines.append("notes: " + ", ".join(notes + ([f"out-of-order stamps {summary['out_of_order']}"]
                                                    if summary["out_of_order"] else [])))
    geo = summary.get("geometry") or {}
    box = geo.get("bbox") or {}
    if box.get("frames"):
        lines.append(f"bbox IoU vs GT box over {box['frames']} found frames: main region {box['iou_main']:.3f}, "
                     f"all above-threshold pixels {box['iou_all']:.3f}")
    for name, g in (geo.get("3d") or {}).items():
        if not g["frames"]:
            continue
        med = "-" if g["median_m"] is None else f"{g['median_m']:.3f}"
        p95 = "-" if g["p95_m"] is None else f"{g['p95_m']:.3f}"
        unknown = ", ".join(f"{k} {v}" for k, v in g["unknown"].items()) or "none"
        lines.append(f"3-D target ({name}, {g['frames']} frames): error median {med} m, p95 {p95} m, "
                     f"success (<= {geo['success_m']:g} m) {g['success_rate'] * 100:.1f} %; "
                     f"{g['known']} points, no point: {unknown}")
    voice = summary.get("voice")
    if voice is not None:
        lat = voice["latency_ms"]
        lines.append(
            f"voice: {voice['scenes']} spoken commands, exact match {fmt(voice['exact_match'], 100, 1)} %, "
            f"WER {fmt(voice['wer'], 100, 1)} %, utterance end -> command p50 {fmt(lat['p50'], 1, 0)} ms "
            f"p95 {fmt(lat['p95'], 1, 0)} ms, false commands {voice['extra_commands']} "
            f"({fmt(voice['false_commands_per_hour'], 1, 1)} per hour of audio)")
    lines.append("J: mean IoU (%, paper scale); F: F-measure (beta^2 0.3); S: null-frame false positives "
                 "(lower is better); per-frame mode, see docs/replay.md")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``refavs-replay``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Replay rosbag2 bags (MCAP or sqlite3) through the Ref-AVS streaming predictor; "
        "report J/F/S against GT masks and end-to-end latency.",
    )
    p.add_argument("bag", metavar="BAG", help="a bag (directory, .mcap or .db3) or a directory of bags")
    p.add_argument("--command", help="referring expression for every bag (default: the bag's command topic)")
    p.add_argument("--image-topic", default=bagio.TOPIC_IMAGE, help=f"(default {bagio.TOPIC_IMAGE})")
    p.add_argument("--audio-topic", default=bagio.TOPIC_AUDIO, help=f"(default {bagio.TOPIC_AUDIO})")
    p.add_argument("--command-topic", default=bagio.TOPIC_COMMAND, help=f"(default {bagio.TOPIC_COMMAND})")
    p.add_argument("--gt-topic", default=bagio.TOPIC_GT_MASK, help=f"(default {bagio.TOPIC_GT_MASK})")
    p.add_argument("--scene-info-topic", default=bagio.TOPIC_SCENE_INFO, help=f"(default {bagio.TOPIC_SCENE_INFO})")
    p.add_argument("--no-audio", action="store_true", help="allow bags without the audio topic (silence)")
    p.add_argument("--audio-rate", type=int, default=16000,
                   help="Hz of ros-drivers AudioDataStamped raw PCM (default 16000)")
    p.add_argument("--audio-channels", type=int, default=1, help="channels of ros-drivers raw PCM (default 1)")
    p.add_argument("--audio-format", default="S16LE", help="sample format of ros-drivers raw PCM (default S16LE)")
    p.add_argument("--output", metavar="OUT_BAG", help="write /refavs/mask, /refavs/detections, "
                   "/refavs/active_command (and, with depth, /refavs/target_point, goal_pose, detections_3d, "
                   "debug/marker) to this bag (a directory of bags for a directory input)")
    p.add_argument("--storage", choices=bagio.STORAGES, default="mcap", help="storage of --output (default mcap)")
    p.add_argument("--metrics-json", metavar="FILE", help="write the metrics and latency as JSON")
    p.add_argument("--overlay-dir", metavar="DIR", help="write one overlay PNG per predicted frame")
    p.add_argument("--weights", help="model weights (default: the shipped tiny EEMC)")
    p.add_argument("--model", default="eemc", choices=("eemc", "official"), help="model family (default eemc)")
    p.add_argument("--models-dir", help="sub-model directory (official model) or text encoder directory")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt"),
                   help="inference backend (default torch)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--engine-dir", default=None,
                   help="cache root of exported ONNX graphs / TensorRT engines (default: $REFAVS_ROS_CACHE or "
                        "~/.cache/refavs_ros)")
    p.add_argument("--precision", default="fp16", choices=("fp16", "fp32"), help="TensorRT precision (default fp16)")
    p.add_argument("--num-frames", type=int, default=None, help="cached-memory window in frames (default: model config)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU inference threads (default 1: steadiest latency next to other processes; 0 = all cores)")
    p.add_argument("--zero-audio", action="store_true", help="ablation: the model hears silence instead of the audio")
    p.add_argument("--beta", type=float, default=None,
                   help="cached-memory sensitivity (paper Eq. 2); 0 = cached memory off (ablation); default: model's")
    p.add_argument("--depth-topic", default=bagio.TOPIC_DEPTH, help=f"(default {bagio.TOPIC_DEPTH})")
    p.add_argument("--camera-info-topic", default=bagio.TOPIC_CAMERA_INFO, help=f"(default {bagio.TOPIC_CAMERA_INFO})")
    p.add_argument("--no-depth", action="store_true", help="ignore depth topics (no 3-D target)")
    p.add_argument("--standoff", type=float, default=GeometryConfig.standoff_m,
                   help=f"goal distance before the target (m, default {GeometryConfig.standoff_m})")
    p.add_argument("--max-depth-skew", type=float, default=0.05,
                   help="largest |depth stamp - image stamp| paired (s, default 0.05)")
    p.add_argument("--voice", action="store_true",
                   help="recognise the command from the bag's audio (refavs_ros.voice; the command topic is "
                        "ignored) and report exact match, WER, utterance end -> command latency and false "
                        "commands against scene_info's spoken_command")
    p.add_argument("--voice-backend", default="fusion",
                   help="voice ASR backend: fusion (default), moonshine, grammar, pocketsphinx, whisper")
    p.add_argument("--voice-vocabulary", default="", help="voice vocabulary YAML (default: the shipped one)")
    p.add_argument("--whisper-dir", default="", help="local Whisper model directory (--voice-backend whisper)")
    p.add_argument("--moonshine-dir", default="",
                   help="Moonshine model directory (--voice-backend fusion / moonshine; default: refavs-voice-models "
                        "fetch's)")
    p.add_argument("--rescore-dir", default="",
                   help="Moonshine-tiny directory (--voice-backend fusion; default: refavs-voice-models fetch's)")
    p.add_argument("--voice-suppression", default="zero", choices=("zero", "attenuate", "off"),
                   help="what the command utterance becomes in the audio memory (default zero)")
    p.add_argument("--voice-attenuation-db", type=float, default=30.0, help="dB of --voice-suppression attenuate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_voice(args: argparse.Namespace) -> Any:
    """The :class:`refavs_ros.node.voice.VoiceStage` of ``--voice`` (None without it).

    Raises:
        ConfigError, ModelLoadError, BackendUnavailableError: from the recogniser.
    """
    if not args.voice:
        return None
    from refavs_ros.node.voice import VoiceOptions, VoiceStage
    from refavs_ros.voice import RecognizerConfig, VoiceCommandRecognizer

    rec = VoiceCommandRecognizer(RecognizerConfig(backend=args.voice_backend, vocabulary_path=args.voice_vocabulary,
                                                  whisper_dir=args.whisper_dir, moonshine_dir=args.moonshine_dir,
                                                  rescore_dir=args.rescore_dir))
    return VoiceStage(rec, VoiceOptions(suppression=args.voice_suppression,
                                        attenuation_db=args.voice_attenuation_db))


def build_predictor(args: argparse.Namespace) -> Predictor:
    """Create the :class:`~refavs_ros.predictor.StreamingPredictor` described by the CLI arguments.

    Raises:
        ModelLoadError, BackendUnavailableError, ConfigError: from ``from_pretrained``.
    """
    from refavs_ros.predictor import PredictorConfig, StreamingPredictor

    overrides: dict = {"zero_audio": bool(args.zero_audio), "beta": args.beta}
    if args.num_frames is not None:
        overrides["num_frames"] = args.num_frames
    config = PredictorConfig(**overrides)
    return StreamingPredictor.from_pretrained(
        args.weights, config=config, model=args.model, backend=args.backend, device=args.device,
        models_dir=args.models_dir, threads=args.threads or None, engine_dir=args.engine_dir,
        precision=args.precision,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``refavs-replay``.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success; 2 on bad input (missing/corrupt bag, missing topic, bad option, missing
        weights), with a one-line message on stderr and no traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.beta is not None and args.beta < 0:
            raise ConfigError(f"--beta must be >= 0, got {args.beta}")
        if args.num_frames is not None and args.num_frames < 1:
            raise ConfigError(f"--num-frames must be >= 1, got {args.num_frames}")
        if args.audio_rate <= 0 or args.audio_channels <= 0:
            raise ConfigError("--audio-rate and --audio-channels must be positive")
        bagio.find_bags(args.bag)  # fail on a missing bag before loading the model
        options = ReplayOptions(
            image_topic=args.image_topic, audio_topic=args.audio_topic, command_topic=args.command_topic,
            gt_topic=args.gt_topic, scene_info_topic=args.scene_info_topic, command=args.command,
            audio_rate=args.audio_rate, audio_channels=args.audio_channels, audio_format=args.audio_format,
            require_audio=not args.no_audio, depth_topic=args.depth_topic,
            camera_info_topic=args.camera_info_topic, depth=False if args.no_depth else None,
            geometry=GeometryConfig(standoff_m=args.standoff), max_depth_skew_sec=args.max_depth_skew,
        )
        voice = build_voice(args)
        predictor = build_predictor(args)
        from tqdm import tqdm

        try:
            with tqdm(total=0, desc=PROG, unit="frame", disable=args.no_progress, file=sys.stderr) as bar:
                summary, _ = replay(
                    args.bag, predictor, options=options, output=args.output, storage=args.storage,
                    overlay_dir=args.overlay_dir, progress=bar, voice=voice,
                )
        finally:
            if voice is not None:
                voice.close()  # the recogniser's worker thread and process
        print(format_summary(summary))
        if args.metrics_json:
            target = Path(args.metrics_json)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except RefAvsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
