"""The one message pipeline of refavs_ros: ROS messages in -> predictor -> ROS messages out.

``refavs_node`` (through rclpy, :mod:`refavs_ros.ros.node`) and ``refavs-replay`` (through
rosbags, :mod:`refavs_ros.tools.replay`) both drive a :class:`MessagePipeline`, so a bag replayed
offline and the same messages received live give the same masks byte for byte. What it owns:

* decoding: ``sensor_msgs/Image`` (any supported encoding, honouring ``step`` and endianness) or
  ``sensor_msgs/CompressedImage`` -> RGB; ``audio_common_msgs`` audio -> samples
  (:mod:`refavs_ros.rosio.conversions`);
* the command rule (:func:`refavs_ros.models.text.check_command`: ``""`` clears, blank text is
  rejected) and the command timeout (:class:`~refavs_ros.node.inputs.CommandState`);
* the stale-frame and time-jump policy: an image not newer than the last processed one is
  rejected (reason ``"stale stamp"``) unless it is at least
  :data:`~refavs_ros.node.inputs.TIME_JUMP_BACK_NS` older, or the
  :data:`STALE_RESYNC_FRAMES`-th stale one in a row, which is a time jump (a bag played in a
  loop, a restarted driver): the cached memory and audio are reset and the frame is processed;
  :meth:`MessagePipeline.clock_jumped_back` does the same reset when the node's ROS clock
  (``/clock``) jumps back;
* stepping the predictor and building the output messages with the SOURCE header (never
  ``now()``): ``mask`` (mono8 0/255), ``detections`` (``vision_msgs/Detection2DArray``), the
  optional ``debug/overlay`` (bgr8) and ``active_command`` (``std_msgs/String``), through a
  :class:`~refavs_ros.rosio.conversions.MessageFactory` (rclpy's classes in the node, rosbags'
  in the replay tool);
* with a :class:`~refavs_ros.node.depth.TargetLocator` (``depth_enabled``): pairing the frame
  with a registered depth image and camera info by header stamp and building the 3-D outputs
  (``target_point``, ``goal_pose``, ``detections_3d``, ``debug/marker``; issue 10);
* counting rejected messages by input kind and reason (:attr:`MessagePipeline.rejections`) for
  ``/diagnostics`` and the replay summary.

Bad messages raise :class:`~refavs_ros.errors.InputError` (with a ``reason``) from the
``handle_*`` methods and leave the pipeline usable; :meth:`MessagePipeline.process` (the node's
timer) never raises for a message: it returns what was rejected, including unexpected
exceptions, so the node logs them and goes on.

Times: ``*_ns`` are integer nanoseconds of the ROS clock (header stamps).
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refavs_ros.errors import InputError
from refavs_ros.node.depth import TargetLocator, TargetOutput
from refavs_ros.node.inputs import TIME_JUMP_BACK_NS, Batch, CommandState
from refavs_ros.overlay import render_overlay
from refavs_ros.predictor import Prediction, StreamingPredictor
from refavs_ros.rosio import conversions

IMAGE, AUDIO, COMMAND, DEPTH, CAMERA_INFO = "image", "audio", "command", "depth", "camera_info"
"""Input kinds used as the first part of a rejection key."""

STALE_RESYNC_FRAMES = 5
"""This many stale stamps in a row (no newer image in between) are a time jump too: the stamps
went back by less than :data:`~refavs_ros.node.inputs.TIME_JUMP_BACK_NS` and stay there (a bag
shorter than 1 s played in a loop without ``/clock``, a driver restarted with a clock set back
a little), which would otherwise be rejected until they passed the old stamps, or forever. A
second publisher lagging behind never resyncs: the leading one's frames reset the count."""


@dataclass(frozen=True)
class PipelineOptions:
    """How input messages are decoded.

    Attributes:
        audio_sample_rate: sample rate (Hz) of ros-drivers ``AudioData(Stamped)`` raw PCM, which
            does not carry it; None = unknown (such messages are rejected). mgonzs13
            ``AudioStamped`` carries its own rate.
        audio_channels: interleaved channels of ros-drivers raw PCM; None = unknown.
        audio_format: sample format of ros-drivers raw PCM (``"S16LE"``...); None = S16LE.
    """

    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_format: str | None = None


@dataclass
class FrameOutput:
    """Everything one processed image produced.

    Attributes:
        stamp_ns: header stamp of the source image (ns).
        header: the source image's ``std_msgs/Header`` (reused by every output).
        rgb: decoded source image, uint8 (H, W, 3) RGB.
        prediction: the predictor's :class:`~refavs_ros.predictor.Prediction`.
        mask: ``sensor_msgs/Image`` mono8, 255 = target, at the source size.
        detections: ``vision_msgs/Detection2DArray`` (empty when the target is absent).
        overlay: ``sensor_msgs/Image`` bgr8 debug overlay, or None when not requested.
        latency_ms: wall time from the start of decoding to the last output message (ms).
        time_jump: True when this image's stamp jumped back and the memory was reset first.
        target: the 3-D result (messages and why they are missing) when the pipeline has a
            :class:`~refavs_ros.node.depth.TargetLocator`, else None.
    """

    stamp_ns: int
    header: Any
    rgb: np.ndarray
    prediction: Prediction
    mask: Any
    detections: Any
    overlay: Any | None
    latency_ms: float
    time_jump: bool = False
    target: TargetOutput | None = None


@dataclass(frozen=True)
class CommandChange:
    """The command in force changed.

    Attributes:
        text: the new command (``""`` = cleared).
        cause: ``"received"`` or ``"expired"`` (``command_timeout_sec`` elapsed).
        message: ``std_msgs/String`` to publish on ``active_command``.
    """

    text: str
    cause: str
    message: Any


@dataclass(frozen=True)
class Rejection:
    """A message the pipeline could not use.

    Attributes:
        kind: :data:`IMAGE`, :data:`AUDIO` or :data:`COMMAND`.
        reason: short label (:attr:`refavs_ros.errors.InputError.reason`, or
            ``"unexpected <ExceptionType>"`` for a failure that is not a bad input).
        detail: the error message.
        stamp_ns: stamp of the message (ns), when known.
        trace: formatted traceback for unexpected failures ("" for bad inputs).
    """

    kind: str
    reason: str
    detail: str
    stamp_ns: int | None = None
    trace: str = ""

    @property
    def key(self) -> str:
        """``"<kind>: <reason>"``, the counter key in :attr:`MessagePipeline.rejections`."""
        return f"{self.kind}: {self.reason}"


@dataclass
class StepOutcome:
    """What one :meth:`MessagePipeline.process` call did (the node publishes and logs it).

    Attributes:
        frame: the processed image's outputs, or None (no new image, no command, disabled, or
            the image was rejected).
        command: the command change, or None.
        time_jump: image stamps jumped back; the memory was reset.
        rejections: every message rejected in this call, in order.
    """

    frame: FrameOutput | None = None
    command: CommandChange | None = None
    time_jump: bool = False
    rejections: list[Rejection] = field(default_factory=list)


def overlay_caption(command: str, score: float | None, found: bool | None) -> str:
    """Caption of the debug overlay: the command and the presence score.

    Args:
        command: command in force ("" = none).
        score: presence probability in [0, 1], or None before any prediction.
        found: whether the target was reported present.
    """
    if not command:
        return "no command"
    if score is None:
        return f'"{command}"'
    return f'"{command}" score {score:.2f}' + ("" if found else " (absent)")


def is_compressed_image(msg: Any) -> bool:
    """True for a ``sensor_msgs/CompressedImage`` (rclpy or rosbags flavour): it has ``format``
    and no ``encoding``."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def decode_image(msg: Any) -> np.ndarray:
    """Decode an image message to uint8 (H, W, 3) RGB.

    Raises:
        InputError: unsupported encoding, inconsistent size/step/data length, undecodable bytes.
    """
    if is_compressed_image(msg):
        return conversions.compressed_image_to_rgb8(msg)
    return conversions.image_to_rgb8(msg)


class MessagePipeline:
    """Messages in -> :class:`~refavs_ros.predictor.StreamingPredictor` -> messages out.

    Not thread-safe: one thread drives it (the node's inference timer; the replay loop).

    Args:
        predictor: the streaming predictor (built by ``StreamingPredictor.from_pretrained``).
        factory: builds output messages (``ClassFactory.importing()`` in the node, the rosbags
            factory in the replay tool).
        options: audio decoding options.
        locator: pairs frames with depth and builds the 3-D outputs; None = no depth.
        voice: optional in-process voice commands (:class:`refavs_ros.node.voice.VoiceStage`):
            every decoded audio chunk also goes to the recogniser, and a recognised command is
            applied like a received one (issue 9).
    """

    def __init__(
        self,
        predictor: StreamingPredictor,
        *,
        factory: conversions.MessageFactory | None = None,
        options: PipelineOptions = PipelineOptions(),
        locator: TargetLocator | None = None,
        voice: Any = None,
    ) -> None:
        self.predictor = predictor
        self.locator = locator
        self.voice = voice
        self.factory = factory or conversions.default_factory()
        self.options = options
        self.commands = CommandState()
        self.rejections: Counter[str] = Counter()
        """Rejected messages by ``"<kind>: <reason>"`` since construction."""
        self.audio_end_ns: int | None = None
        """Stamp (ns) one sample past the newest pushed audio, None before any (or after a reset)."""
        self.last_image_ns: int | None = None
        """Stamp (ns) of the last image pushed to the predictor, None before any (or after a reset)."""
        self.time_jumps = 0
        """Time jumps (stamps back by >= 1 s, stale runs, ROS clock jumps) handled since construction."""
        self._stale_run = 0  # stale stamps in a row
        self._audio_jumps_seen = 0  # predictor.audio_time_jumps at the last processed image
        self._jump_pending = False  # clock_jumped_back() reset the memory; the next frame says so

    # -------------------------------------------------------------------------------- state
    @property
    def command(self) -> str:
        """The command in force ("" = none)."""
        return self.predictor.command

    def reset(self, *, keep_audio: bool = False) -> None:
        """Forget the cached memory, buffered audio and the stamp history (the command stays).

        Args:
            keep_audio: keep the buffered audio (see :meth:`StreamingPredictor.reset_memory`).
        """
        if keep_audio:
            self.predictor.reset_memory(keep_audio=True)
        else:  # the plain call: predictors of tools and tests may not take keep_audio
            self.predictor.reset_memory()
            self.audio_end_ns = None
        self.last_image_ns = None
        if self.voice is not None:
            self.voice.reset()

    @property
    def audio_time_jumps(self) -> int:
        """Audio time jumps of the predictor's audio buffer (0 for predictors without one)."""
        return int(getattr(self.predictor, "audio_time_jumps", 0))

    def clock_jumped_back(self) -> None:
        """The node's ROS clock jumped back (``use_sim_time``: ``/clock`` restarted, a bag played
        in a loop): reset the memory, audio and stamp history as for a time jump, so the frames
        of the new loop are processed however short the loop is. The next processed frame has
        ``time_jump`` set."""
        self.reset()
        self.time_jumps += 1
        self._stale_run = 0
        self._jump_pending = True

    def av_skew_sec(self, stamp_ns: int) -> float | None:
        """Image stamp minus the end of the newest audio (s; > 0: audio lags), None without audio."""
        return None if self.audio_end_ns is None else (stamp_ns - self.audio_end_ns) / 1e9

    def _rejected(self, kind: str, exc: InputError) -> InputError:
        self.rejections[f"{kind}: {exc.reason}"] += 1
        return exc

    # ------------------------------------------------------------------------------- inputs
    def handle_command(self, text: str, now_ns: int) -> CommandChange | None:
        """Apply a received command (``""`` clears it; see :func:`~refavs_ros.models.text.check_command`).

        Args:
            text: the command text as received.
            now_ns: ROS time of reception (ns), which starts the command timeout.

        Returns:
            The change, or None when the same command was received again (its timeout restarts).

        Raises:
            InputError: blank, too long, control characters, invalid UTF-8 or not a string; the
                command in force is unchanged.
        """
        try:
            self.predictor.set_command(text)
        except InputError as exc:
            raise self._rejected(COMMAND, exc) from None
        active = self.predictor.command
        if not self.commands.update(active, now_ns):
            return None
        return CommandChange(active, "received", conversions.string_message(active, factory=self.factory))

    def expire_command(self, now_ns: int, timeout_sec: float) -> CommandChange | None:
        """Clear the command when ``timeout_sec`` (> 0) elapsed since it was received.

        Returns:
            The change (``cause="expired"``), or None.
        """
        if not self.commands.expired(now_ns, timeout_sec):
            return None
        self.predictor.set_command("")
        self.commands.update("", now_ns)
        return CommandChange("", "expired", conversions.string_message("", factory=self.factory))

    def handle_audio(self, msg: Any, stamp_ns: int | None = None) -> list[CommandChange]:
        """Decode an audio message and push it to the predictor (and the voice stage, if any).

        Args:
            msg: ``audio_common_msgs/AudioStamped`` (mgonzs13) or ``AudioDataStamped`` /
                ``AudioData`` (ros-drivers).
            stamp_ns: stamp of the FIRST sample (ns); None = the message's ``header.stamp``
                (required for ``AudioData``, which has no header: the node stamps it on
                arrival).

        Returns:
            The command changes of voice commands this chunk completed (empty without a voice
            stage); the command's time (for its timeout) is the end of the chunk.

        Raises:
            InputError: undecodable message, no samples, bad rate/channels, NaN/inf samples, or
                a chunk that starts before the buffered audio ends.
        """
        try:
            if stamp_ns is None:
                if not hasattr(msg, "header"):
                    raise InputError("audio message has no header: pass its stamp", reason="bad stamp")
                stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
            o = self.options
            raw_format = {} if o.audio_format is None else {"sample_format": o.audio_format}
            samples, rate = conversions.audio_to_array(
                msg, sample_rate=o.audio_sample_rate, channels=o.audio_channels, **raw_format
            )
            if samples.shape[0] == 0:
                raise InputError(f"audio message stamped {stamp_ns} ns has no samples", reason="empty audio")
            self.predictor.push_audio(stamp_ns, samples, rate)
        except InputError as exc:
            raise self._rejected(AUDIO, exc) from None
        self.audio_end_ns = stamp_ns + samples.shape[0] * 1_000_000_000 // rate
        changes: list[CommandChange] = []
        if self.voice is not None:
            try:
                spoken = self.voice.push(stamp_ns, samples, rate, self.predictor)
            except InputError as exc:
                raise self._rejected(AUDIO, exc) from None
            for cmd in spoken:
                change = self.handle_command(cmd.text, self.audio_end_ns)
                if change is not None:
                    changes.append(change)
        return changes

    def handle_depth(self, msg: Any, stamp_ns: int | None = None) -> None:
        """Offer a registered depth image (decoded only if a frame is paired with it).

        Raises:
            InputError: no locator (depth disabled) or an unreadable stamp.
        """
        self._offer(DEPTH, msg, stamp_ns)

    def handle_camera_info(self, msg: Any, stamp_ns: int | None = None) -> None:
        """Offer a ``sensor_msgs/CameraInfo`` of the depth image.

        Raises:
            InputError: no locator (depth disabled) or an unreadable stamp.
        """
        self._offer(CAMERA_INFO, msg, stamp_ns)

    def _offer(self, kind: str, msg: Any, stamp_ns: int | None) -> None:
        try:
            if self.locator is None:
                raise InputError(f"{kind} received but depth is disabled", reason="depth disabled")
            stamp = conversions.stamp_to_ns(msg.header.stamp) if stamp_ns is None else int(stamp_ns)
        except InputError as exc:
            raise self._rejected(kind, exc) from None
        inputs = self.locator.inputs
        (inputs.offer_depth if kind == DEPTH else inputs.offer_camera_info)(stamp, msg)

    def handle_image(self, msg: Any, *, stamp_ns: int | None = None, overlay: bool = False) -> FrameOutput | None:
        """Decode an image, run the predictor on it and build the output messages.

        Args:
            msg: ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``.
            stamp_ns: its stamp (ns); None = ``msg.header.stamp``.
            overlay: also build the ``debug/overlay`` image.

        Returns:
            The :class:`FrameOutput`, or None when no command is in force (the image is then
            not processed).

        Raises:
            InputError: undecodable image, or a stale stamp (not newer than the last processed
                image, less than :data:`TIME_JUMP_BACK_NS` older, and fewer than
                :data:`STALE_RESYNC_FRAMES` stale ones in a row).
        """
        t0 = time.perf_counter()
        try:
            if stamp_ns is None:
                stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
            if not self.predictor.command:
                return None
            time_jump = self._check_stamp(stamp_ns)
            rgb = decode_image(msg)
            self.predictor.push_image(stamp_ns, rgb)
        except InputError as exc:
            raise self._rejected(IMAGE, exc) from None
        self.last_image_ns = stamp_ns
        self._audio_jumps_seen = self.audio_time_jumps
        prediction = self.predictor.step()
        if prediction is None:  # the command was cleared concurrently; nothing to publish
            return None
        time_jump, self._jump_pending = time_jump or self._jump_pending, False
        header = msg.header
        mask = conversions.mask_to_image(prediction.mask, header, factory=self.factory)
        detections = conversions.detections_from_prediction(prediction, header, factory=self.factory)
        overlay_msg = None
        if overlay:
            bgr = self.render_overlay(rgb, prediction)
            overlay_msg = conversions.array_to_image(bgr, "bgr8", header=header, factory=self.factory)
        target = None
        if self.locator is not None:
            target = self.locator.locate(stamp_ns, prediction, header, class_id=prediction.command, factory=self.factory)
            if target.rejection is not None:
                self._rejected(*target.rejection)
        return FrameOutput(
            stamp_ns=stamp_ns,
            header=header,
            rgb=rgb,
            prediction=prediction,
            mask=mask,
            detections=detections,
            overlay=overlay_msg,
            latency_ms=(time.perf_counter() - t0) * 1e3,
            time_jump=time_jump,
            target=target,
        )

    def _check_stamp(self, stamp_ns: int) -> bool:
        """Apply the stale-frame / time-jump policy; True when the memory was reset (jump)."""
        last = self.last_image_ns
        if last is None or stamp_ns > last:
            self._stale_run = 0
            return False
        if last - stamp_ns >= TIME_JUMP_BACK_NS or self._stale_run + 1 >= STALE_RESYNC_FRAMES:
            # audio whose buffer restarted since the last frame already follows the new time line
            self.reset(keep_audio=self.audio_time_jumps > self._audio_jumps_seen)
            self.time_jumps += 1
            self._stale_run = 0
            return True
        self._stale_run += 1
        raise InputError(
            f"image stamped {stamp_ns} ns is not newer than the last processed one ({last} ns); dropped",
            reason="stale stamp",
        )

    @staticmethod
    def render_overlay(rgb: np.ndarray, prediction: Prediction) -> np.ndarray:
        """The debug overlay of a prediction, uint8 (H, W, 3) BGR (see :mod:`refavs_ros.overlay`)."""
        caption = overlay_caption(prediction.command, prediction.score, prediction.found)
        return render_overlay(rgb, prediction.mask, prediction.bbox, caption)

    # ------------------------------------------------------------------------- node's timer
    def process(
        self,
        batch: Batch[Any],
        now_ns: int,
        *,
        enabled: bool = True,
        overlay: bool = False,
        command_timeout_sec: float = 0.0,
    ) -> StepOutcome:
        """Handle everything the node's inference timer took from its input buffer.

        Order: the newest command, the command timeout, every audio chunk (oldest first), then
        the image (skipped when ``enabled`` is False or no command is in force). Never raises
        for a message: bad inputs and unexpected failures are returned as rejections (with the
        traceback for the latter) and counted; the pipeline stays usable.

        Args:
            batch: what :meth:`refavs_ros.node.inputs.InputBuffer.take` returned.
            now_ns: ROS time now (ns).
            enabled: state of the node's ``enable`` service.
            overlay: build the debug overlay (someone subscribes to it).
            command_timeout_sec: the ``command_timeout_sec`` parameter (s; 0 = never).
        """
        out = StepOutcome()
        if batch.command is not None:
            out.command = self._guard(out, COMMAND, None, self.handle_command, batch.command, now_ns)
        expired = self.expire_command(now_ns, command_timeout_sec)
        out.command = expired or out.command
        for chunk in batch.audio:
            spoken = self._guard(out, AUDIO, chunk.stamp_ns, self.handle_audio, chunk.item, chunk.stamp_ns)
            if spoken:  # voice commands (in-process recogniser)
                out.command = spoken[-1]
        if batch.image is not None and enabled:
            image = batch.image
            out.frame = self._guard(out, IMAGE, image.stamp_ns, self.handle_image, image.item,
                                    stamp_ns=image.stamp_ns, overlay=overlay)
            out.time_jump = out.frame is not None and out.frame.time_jump
        return out

    def _guard(self, out: StepOutcome, kind: str, at_ns: int | None, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as exc:  # already counted by the handler
            out.rejections.append(Rejection(kind, exc.reason, str(exc), at_ns))
        except Exception as exc:  # noqa: BLE001 - a message must never kill the node; returned with its trace
            reason = f"unexpected {type(exc).__name__}"
            self.rejections[f"{kind}: {reason}"] += 1
            out.rejections.append(Rejection(kind, reason, str(exc), at_ns, traceback.format_exc()))
        return None
