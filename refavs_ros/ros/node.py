"""``refavs_node``: rclpy lifecycle adapter over :class:`refavs_ros.predictor.StreamingPredictor`.

Thin by design: it owns rclpy entities, callbacks, timers, lifecycle, parameters and logging.
Everything from a received message to the messages it publishes is
:class:`refavs_ros.node.pipeline.MessagePipeline`, the same code ``refavs-replay`` runs; the
parameter schema is :mod:`refavs_ros.node.params`, the thread hand-off
:mod:`refavs_ros.node.inputs` and the ``/diagnostics`` content :mod:`refavs_ros.node.diagnostics`.
The interface is specified in ``docs/ros.md``; every rclpy API used here is listed, with the
public source it was checked against, in ``docs/ros_api_checklist.md``.

A message never kills the node: callbacks catch everything, and the pipeline returns bad or
failing messages as rejections, counted by reason in ``/diagnostics`` and logged (throttled).

Threads: ``ros2 run`` spins the node on :class:`~refavs_ros.ros.common.NodeExecutor`, a
single-threaded executor (rclpy's multi-threaded one starved the model of the GIL; measured in
its docstring). The callback groups still say what may run together under a multi-threaded
executor (a component container): subscription callbacks run in a reentrant group and only hand
messages to :class:`~refavs_ros.node.inputs.InputBuffer`; the inference timer and the
``enable`` / ``reset_memory`` services share a mutually exclusive group, so the predictor is only
touched by one thread at a time; lifecycle and parameter services use the default group. The
inference timer always takes the LATEST image, so latency does not grow when the camera is faster
than the model. Outputs carry the SOURCE image header, never ``now()``.
"""

from __future__ import annotations

import gc
import threading
import traceback
from collections import Counter
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSProfile,
    qos_policy_name_from_kind,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from vision_msgs.msg import Detection2DArray

try:  # Iron and later (Jazzy)
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

from refavs_ros.errors import ConfigError, RefAvsError
from refavs_ros.node.depth import TargetLocator
from refavs_ros.node.diagnostics import LogThrottle, NodeStatus, diagnose
from refavs_ros.node.inputs import InputBuffer
from refavs_ros.node.params import (
    ACTIVE_COMMAND_QOS,
    COMMAND_QOS,
    DIAGNOSTICS_QOS,
    PARAMETERS,
    NodeSettings,
    check_parameter_change,
)
from refavs_ros.node.pipeline import (
    MessagePipeline,
    PipelineOptions,
    Rejection,
    StepOutcome,
)
from refavs_ros.node.voice import transcript_json, voice_stage_from_settings
from refavs_ros.predictor import StreamingPredictor
from refavs_ros.ros.common import (
    AutostartMixin,
    diagnostic_array,
    run_node,
    to_qos_profile,
)
from refavs_ros.rosio import conversions

NODE_NAME = "refavs_node"
DIAGNOSTICS_PERIOD_SEC = 1.0
"""Period (s, node clock) of the ``/diagnostics`` status."""
LOG_THROTTLE_SEC = 5.0
"""At most one log line per kind of bad input per this many seconds."""


def _release_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim(0)``; nothing elsewhere).

    The model's tensors are freed by ``cleanup``, but glibc keeps freed blocks in its arenas
    (one per thread that allocated: the executor's threads), so the process's RSS hardly drops;
    trimming returned 20-30 MiB per cleanup of the tiny model (bench/RESULTS.md, "Node under
    stress").
    """
    import ctypes  # noqa: PLC0415
    import ctypes.util  # noqa: PLC0415

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def _cuda_available() -> bool:
    import torch  # noqa: PLC0415 - the core's dependency; imported only to resolve device 'auto'

    return bool(torch.cuda.is_available())


class RefAvsNode(AutostartMixin, LifecycleNode):
    """Managed node segmenting the object a spoken/typed command refers to.

    Args:
        node_name: ROS node name.
        **kwargs: passed to ``rclpy.lifecycle.LifecycleNode`` (``namespace``, ``context``,
            ``parameter_overrides``, ``cli_args``...).
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self._factory = conversions.ClassFactory.importing()
        self._buffer: InputBuffer[Any] = InputBuffer()
        self._throttle = LogThrottle(LOG_THROTTLE_SEC)
        # _infer_lock: held while the pipeline is used or replaced (timer, services, cleanup).
        self._infer_lock = threading.Lock()
        # _status_lock: guards _status, _settings and _pending (diagnostics and parameter threads).
        self._status_lock = threading.Lock()
        self._status = NodeStatus(lifecycle="unconfigured")
        self._settings: NodeSettings | None = None
        self._pending: NodeSettings | None = None
        self._pipeline: MessagePipeline | None = None
        self._callback_rejections: Counter[str] = Counter()  # messages rejected before the pipeline
        self._audio_class: type | None = None
        self._locator: TargetLocator | None = None  # depth_enabled: depth hand-off and 3-D outputs
        self._inference_enabled = True
        self.configure_error = ""
        """Why the last configure transition failed ("" after a success)."""
        self._sensor_group = ReentrantCallbackGroup()
        self._infer_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._out_pubs: dict[str, Any] = {}
        self._sub_handles: list[Any] = []
        self._srv_handles: list[Any] = []
        self._infer_timer: Any = None
        self._diag_pub: Any = None
        self._diag_timer: Any = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # a backward jump of the ROS clock (use_sim_time: /clock restarted, a bag played in a loop)
        # resets the pipeline at the next inference step (the callback runs in /clock's thread)
        self._clock_jumped_back = False
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=True),
            post_callback=self._on_time_jump,
        )

    # ------------------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        for spec in PARAMETERS:
            descriptor = ParameterDescriptor(
                description=spec.description,
                additional_constraints=spec.constraints_text(),
                read_only=spec.read_only,
            )
            if spec.type is float and spec.min_value is not None:
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=float(spec.min_value), to_value=float(spec.max_value), step=0.0)
                ]
            elif spec.type is int and spec.min_value is not None:
                descriptor.integer_range = [
                    IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)
                ]
            self.declare_parameter(spec.name, spec.default, descriptor)

    def _read_settings(self) -> NodeSettings:
        return NodeSettings.from_params({spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS})

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        configured = self._pipeline is not None
        changes = {}
        for param in params:
            reason = check_parameter_change(param.name, param.value, configured=configured)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            if any(spec.name == param.name for spec in PARAMETERS):
                changes[param.name] = param.value
        if configured and changes:
            with self._status_lock:
                base = self._pending or self._settings
                try:
                    new = base.replace(**changes)
                except ConfigError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                self._pending = new
            if self._infer_timer is not None and "inference_rate_hz" in changes:
                self._infer_timer.timer_period_ns = int(new.inference_period_sec() * 1e9)
            self.get_logger().info(f"parameters updated: {changes}")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, load the model, create publishers and the diagnostics timer."""
        try:
            settings = self._read_settings()
            for warning in settings.deprecations():
                self.get_logger().warning(warning)
            audio_class = conversions.import_audio_class(settings.audio_msg_type)
            self.get_logger().info(
                f"loading model '{settings.model}' (weights: {settings.weights_path or 'shipped default'}, "
                f"backend {settings.backend}, device {settings.device})"
            )
            predictor = StreamingPredictor.from_pretrained(
                settings.weights, **settings.pretrained_kwargs(_cuda_available)
            )
            voice = voice_stage_from_settings(settings, on_transcript=self._on_voice_transcript)
        except RefAvsError as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - rclpy would turn it into a silent ERROR
            self.configure_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {self.configure_error}\n{traceback.format_exc()}")
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        options = PipelineOptions(audio_sample_rate=settings.audio_sample_rate, audio_channels=settings.audio_channels)
        locator = None
        if settings.depth_enabled:
            locator = TargetLocator(settings.geometry_config(), max_depth_skew_sec=settings.max_depth_skew_sec)
        with self._infer_lock:
            self._pipeline = MessagePipeline(predictor, factory=self._factory, options=options, locator=locator,
                                             voice=voice)
            self._locator = locator
        with self._status_lock:
            self._settings = settings
            self._pending = None
            self._status = NodeStatus(
                lifecycle="inactive", model=settings.model, backend=settings.backend,
                device=settings.resolved_device(_cuda_available), depth_enabled=settings.depth_enabled,
            )
        self._audio_class = audio_class
        out_qos = to_qos_profile(settings.output_qos_spec())
        self._out_pubs = {
            "mask": self.create_lifecycle_publisher(
                Image, "mask", out_qos, event_callbacks=self._publisher_events("mask")),
            "detections": self.create_lifecycle_publisher(
                Detection2DArray, "detections", out_qos, event_callbacks=self._publisher_events("detections")),
            "overlay": self.create_lifecycle_publisher(
                Image, "debug/overlay", out_qos, event_callbacks=self._publisher_events("debug/overlay")),
            "active_command": self.create_lifecycle_publisher(
                String, "active_command", to_qos_profile(ACTIVE_COMMAND_QOS),
                event_callbacks=self._publisher_events("active_command")),
        }
        if settings.depth_enabled:
            self._out_pubs.update(self._create_target_publishers(out_qos))
        if voice is not None:  # in-process voice commands: every hypothesis, for debugging
            self._out_pubs["voice_transcript"] = self.create_lifecycle_publisher(
                String, "voice/transcript", to_qos_profile(COMMAND_QOS),
                event_callbacks=self._publisher_events("voice/transcript"))
            self.get_logger().info(f"voice commands in-process: backend {settings.voice_backend}, "
                                   f"suppression {settings.voice_suppression}")
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", to_qos_profile(DIAGNOSTICS_QOS))
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_SEC, self._on_diagnostics_timer, self._diag_group)
        self.get_logger().info(f"configured: model '{settings.model}' on {self._status.device}")
        return TransitionCallbackReturn.SUCCESS

    def _create_target_publishers(self, qos: QoSProfile) -> dict[str, Any]:
        """Publishers of the 3-D outputs (message packages imported only when depth is enabled)."""
        from geometry_msgs.msg import PointStamped, PoseStamped  # noqa: PLC0415
        from vision_msgs.msg import Detection3DArray  # noqa: PLC0415
        from visualization_msgs.msg import Marker  # noqa: PLC0415

        topics = {"target_point": (PointStamped, "target_point"), "goal_pose": (PoseStamped, "goal_pose"),
                  "detections_3d": (Detection3DArray, "detections_3d"), "marker": (Marker, "debug/marker")}
        return {
            key: self.create_lifecycle_publisher(msg_type, topic, qos, event_callbacks=self._publisher_events(topic))
            for key, (msg_type, topic) in topics.items()
        }

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Create subscriptions, services and the inference timer; enable the publishers."""
        with self._status_lock:
            settings = self._pending or self._settings
        self._buffer.clear()
        if settings.image_transport == "compressed":
            image_type, image_topic = CompressedImage, "image/compressed"
        else:
            image_type, image_topic = Image, "image"
        self._sub_handles = [
            self.create_subscription(
                image_type, image_topic, self._on_image, to_qos_profile(settings.image_qos_spec()),
                callback_group=self._sensor_group, event_callbacks=self._subscription_events(image_topic)),
            self.create_subscription(
                self._audio_class, "audio", self._on_audio, to_qos_profile(settings.audio_qos_spec()),
                callback_group=self._sensor_group, event_callbacks=self._subscription_events("audio")),
            self.create_subscription(
                String, "command", self._on_command, to_qos_profile(COMMAND_QOS),
                callback_group=self._sensor_group, event_callbacks=self._subscription_events("command")),
        ]
        if self._locator is not None:
            from sensor_msgs.msg import CameraInfo  # noqa: PLC0415

            depth_qos = to_qos_profile(settings.depth_qos_spec())
            self._locator.inputs.clear()
            self._sub_handles += [
                self.create_subscription(
                    Image, "depth/image", self._on_depth, depth_qos, callback_group=self._sensor_group,
                    event_callbacks=self._subscription_events("depth/image")),
                self.create_subscription(
                    CameraInfo, "depth/camera_info", self._on_camera_info, depth_qos,
                    callback_group=self._sensor_group, event_callbacks=self._subscription_events("depth/camera_info")),
            ]
        self._srv_handles = [
            self.create_service(SetBool, "enable", self._on_enable, callback_group=self._infer_group),
            self.create_service(Trigger, "reset_memory", self._on_reset_memory, callback_group=self._infer_group),
        ]
        self._infer_timer = self.create_timer(settings.inference_period_sec(), self._on_infer_timer, self._infer_group)
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_active_command()  # transient local: late joiners see the command in force
        with self._status_lock:
            self._status.lifecycle = "active"
        self.get_logger().info(
            f"active: {image_topic} ({image_type.__name__}), audio ({self._audio_class.__name__}), command"
            + (", depth/image, depth/camera_info" if self._locator is not None else "")
        )
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop subscriptions, services and the timer; keep the model."""
        self._drop_active_entities()
        with self._status_lock:
            self._status.lifecycle = "inactive"
        self.get_logger().info("deactivated (model kept)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model, the publishers and the diagnostics timer."""
        self._drop_configured_entities()
        self.get_logger().info("cleaned up (model freed)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, from any primary state."""
        self._drop_active_entities()
        self._drop_configured_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything and go back to unconfigured."""
        self.get_logger().error(f"error during a transition from '{state.label}': releasing everything")
        self._drop_active_entities()
        self._drop_configured_entities()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the inference timer and wait for a step in progress, then destroy the node.

        ``Executor.shutdown()`` does not wait for running callbacks (rclpy 7.1.6: the wait is
        skipped once ``_is_shutdown`` is set), so a step could still be publishing while the
        publishers are destroyed (``InvalidHandle`` logged on every Ctrl-C / test teardown).
        """
        self._drop_active_entities()
        with self._infer_lock:  # a timer callback already dispatched returns without publishing
            self._close_voice()
            self._pipeline = None
        super().destroy_node()

    def _close_voice(self) -> None:
        if self._pipeline is not None and self._pipeline.voice is not None:
            self._pipeline.voice.close()

    def _drop_active_entities(self) -> None:
        for sub in self._sub_handles:
            self.destroy_subscription(sub)
        for srv in self._srv_handles:
            self.destroy_service(srv)
        if self._infer_timer is not None:
            self.destroy_timer(self._infer_timer)
        self._sub_handles, self._srv_handles, self._infer_timer = [], [], None
        with self._infer_lock:  # wait for an in-flight step to finish
            self._buffer.clear()

    def _drop_configured_entities(self) -> None:
        for pub in self._out_pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._out_pubs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        self._diag_timer = self._diag_pub = None
        with self._infer_lock:
            released = self._pipeline is not None
            self._close_voice()
            self._pipeline = None
            self._locator = None
        with self._status_lock:
            self._settings = self._pending = None
            self._status = NodeStatus(lifecycle="unconfigured")
        if released:
            gc.collect()
            try:
                import torch  # noqa: PLC0415

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass
            _release_heap()

    # ---------------------------------------------------------------------------------- events
    def _subscription_events(self, topic: str) -> SubscriptionEventCallbacks:
        def on_incompatible(event: Any) -> None:
            with self._status_lock:
                self._status.qos_incompatible += 1
            self.get_logger().warning(
                f"subscription '{topic}': a publisher offers incompatible QoS "
                f"({qos_policy_name_from_kind(event.last_policy_kind)}); no messages will be received "
                f"from it (total {event.total_count}). Adjust the *_qos parameters or the publisher."
            )

        return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)

    def _publisher_events(self, topic: str) -> PublisherEventCallbacks:
        def on_incompatible(event: Any) -> None:
            with self._status_lock:
                self._status.qos_incompatible += 1
            self.get_logger().warning(
                f"publisher '{topic}': a subscription requests incompatible QoS "
                f"({qos_policy_name_from_kind(event.last_policy_kind)}); it will get nothing "
                f"(total {event.total_count}). Adjust output_qos or the subscriber."
            )

        return PublisherEventCallbacks(incompatible_qos=on_incompatible)

    def _log_rejection(self, rejection: Rejection) -> None:
        """Log a rejected message, at most once per kind and reason per LOG_THROTTLE_SEC."""
        suppressed = self._throttle.check(rejection.key)
        if suppressed is None:
            return
        more = f" ({suppressed} more suppressed)" if suppressed else ""
        if rejection.trace:
            self.get_logger().error(f"{rejection.kind} failed: {rejection.detail}{more}\n{rejection.trace}")
        else:
            self.get_logger().warning(f"dropped {rejection.kind} ({rejection.reason}): {rejection.detail}{more}")

    def _callback_failed(self, kind: str, exc: Exception) -> None:
        """A subscription callback failed before the pipeline saw the message (e.g. a bad stamp)."""
        reason = getattr(exc, "reason", f"unexpected {type(exc).__name__}")
        trace = "" if isinstance(exc, RefAvsError) else traceback.format_exc()
        rejection = Rejection(kind, reason, str(exc), None, trace)
        with self._status_lock:
            self._callback_rejections[rejection.key] += 1
            self._status.rejections[rejection.key] = self._status.rejections.get(rejection.key, 0) + 1
            self._status.bad_messages += 1
        self._log_rejection(rejection)

    # ------------------------------------------------------------- callbacks (buffers only)
    def _on_image(self, msg: Any) -> None:
        try:
            self._buffer.offer_image(conversions.stamp_to_ns(msg.header.stamp), msg)
        except Exception as exc:  # noqa: BLE001 - a message must never kill the node
            self._callback_failed("image", exc)

    def _on_audio(self, msg: Any) -> None:
        try:
            if hasattr(msg, "header"):
                stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
            else:  # ros-drivers AudioData has no header: first sample = arrival - duration
                settings = self._settings
                frames = len(msg.data) // (2 * settings.audio_channels)  # S16LE
                stamp_ns = self.get_clock().now().nanoseconds - frames * 1_000_000_000 // settings.audio_sample_rate
            self._buffer.offer_audio(stamp_ns, msg)
        except Exception as exc:  # noqa: BLE001 - a message must never kill the node
            self._callback_failed("audio", exc)

    def _on_depth(self, msg: Any) -> None:
        try:
            locator = self._locator
            if locator is not None:
                locator.inputs.offer_depth(conversions.stamp_to_ns(msg.header.stamp), msg)
        except Exception as exc:  # noqa: BLE001 - a message must never kill the node
            self._callback_failed("depth", exc)

    def _on_camera_info(self, msg: Any) -> None:
        try:
            locator = self._locator
            if locator is not None:
                locator.inputs.offer_camera_info(conversions.stamp_to_ns(msg.header.stamp), msg)
        except Exception as exc:  # noqa: BLE001 - a message must never kill the node
            self._callback_failed("camera_info", exc)

    def _on_command(self, msg: String) -> None:
        try:
            self._buffer.offer_command(msg.data)
        except Exception as exc:  # noqa: BLE001 - a message must never kill the node
            self._callback_failed("command", exc)

    # ---------------------------------------------------------------------------- services
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._inference_enabled = bool(request.data)
        with self._status_lock:
            self._status.enabled = self._inference_enabled
        response.success = True
        response.message = "inference enabled" if self._inference_enabled else "inference disabled"
        self.get_logger().info(response.message)
        return response

    def _on_reset_memory(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._infer_lock:
            if self._pipeline is None:
                response.success, response.message = False, "no model loaded"
                return response
            self._pipeline.reset()
        response.success, response.message = True, "cached memory and audio buffer cleared"
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------------------- inference
    def _on_time_jump(self, jump: Any) -> None:
        """ROS clock jump callback (backward jumps and clock source changes): flag only."""
        self._clock_jumped_back = True

    def _on_infer_timer(self) -> None:
        with self._infer_lock:
            pipeline = self._pipeline
            if pipeline is None:
                return
            if self._clock_jumped_back:
                self._clock_jumped_back = False
                pipeline.clock_jumped_back()  # the next frame is logged as a time jump
            settings = self._apply_pending(pipeline.predictor)
            batch = self._buffer.take()
            overlay_pub = self._out_pubs.get("overlay")
            overlay = bool(settings.publish_debug and overlay_pub is not None and overlay_pub.get_subscription_count() > 0)
            outcome = pipeline.process(
                batch, self.get_clock().now().nanoseconds, enabled=self._inference_enabled, overlay=overlay,
                command_timeout_sec=settings.command_timeout_sec,
            )
            self._publish(outcome)
            self._update_status(pipeline, outcome)

    def _apply_pending(self, predictor: StreamingPredictor) -> NodeSettings:
        with self._status_lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._settings = pending
            settings = self._settings
        if pending is not None:
            predictor.update_config(pending.predictor_config())
            if self._locator is not None:
                self._locator.configure(pending.geometry_config(), pending.max_depth_skew_sec)
        return settings

    def _publish(self, outcome: StepOutcome) -> None:
        """Publish what one pipeline step produced; log command changes, time jumps, rejections."""
        for rejection in outcome.rejections:
            self._log_rejection(rejection)
        change = outcome.command
        if change is not None:
            if change.cause == "expired":
                self.get_logger().info("command expired")
            else:
                self.get_logger().info(f"command: '{change.text}'" if change.text else "command cleared")
            self._out_pubs["active_command"].publish(change.message)
        if outcome.time_jump:
            self.get_logger().warning(
                "time jump (image stamps or the ROS clock went back: bag loop, restarted driver or /clock): memory reset")
        frame = outcome.frame
        if frame is None:
            return
        try:
            self._out_pubs["mask"].publish(frame.mask)
            self._out_pubs["detections"].publish(frame.detections)
            if frame.overlay is not None:
                self._out_pubs["overlay"].publish(frame.overlay)
            target = frame.target
            if target is not None and target.target_point is not None:  # nothing when absent / unknown
                self._out_pubs["target_point"].publish(target.target_point)
                self._out_pubs["goal_pose"].publish(target.goal_pose)
                self._out_pubs["detections_3d"].publish(target.detections_3d)
                self._out_pubs["marker"].publish(target.marker)
        except Exception as exc:  # noqa: BLE001 - the node must not die; reported in diagnostics
            with self._status_lock:
                self._status.last_error = f"publishing failed: {type(exc).__name__}: {exc}"
            if self._throttle.check("publish") is not None:
                self.get_logger().error(f"publishing failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")

    def _update_status(self, pipeline: MessagePipeline, outcome: StepOutcome) -> None:
        frame = outcome.frame
        failures = [r for r in outcome.rejections if r.trace]
        end_to_end_ms = None if frame is None else (self.get_clock().now().nanoseconds - frame.stamp_ns) / 1e6
        with self._status_lock:
            status = self._status
            status.command = pipeline.command
            status.rejections = dict(pipeline.rejections + self._callback_rejections)
            status.bad_messages = sum(status.rejections.values())
            status.time_jumps = pipeline.time_jumps
            status.audio_time_jumps = pipeline.audio_time_jumps
            if failures:
                status.last_error = f"{failures[-1].kind} failed: {failures[-1].detail}"
            if frame is not None:
                if not failures:
                    status.last_error = ""
                status.inference_ms.add(frame.prediction.timings_ms.get("total", float("nan")))
                status.end_to_end_ms.add(end_to_end_ms)
                status.av_skew_sec = pipeline.av_skew_sec(frame.stamp_ns)
                if frame.target is not None:
                    status.target_3d = frame.target.status
                    status.target_3d_detail = frame.target.target.detail
                    status.target_3d_counts = dict(pipeline.locator.statuses) if pipeline.locator else {}

    def _on_voice_transcript(self, transcript: Any) -> None:
        """Publish a recognised utterance (in-process voice commands) on ``voice/transcript``."""
        pub = self._out_pubs.get("voice_transcript")
        if pub is not None:
            pub.publish(String(data=transcript_json(transcript)))

    def _publish_active_command(self) -> None:
        pub = self._out_pubs.get("active_command")
        pipeline = self._pipeline
        if pub is not None and pipeline is not None:
            pub.publish(conversions.string_message(pipeline.command, factory=self._factory))

    # --------------------------------------------------------------------------- diagnostics
    def _on_diagnostics_timer(self) -> None:
        with self._status_lock:
            state = self._status
            state.counters = self._buffer.counters() if state.lifecycle == "active" else None
            settings = self._settings
            report = diagnose(state, max_av_skew_sec=settings.max_av_skew_sec if settings else 1.0)
            hardware_id = state.device
        array = diagnostic_array(self, level=report.level, part="pipeline", message=report.message,
                                 hardware_id=hardware_id, values=report.values)
        if self._diag_pub is not None:
            self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run refavs_ros refavs_node``: configure and activate (autostart),
    then spin (see :func:`refavs_ros.ros.common.run_node`).

    Returns:
        process exit code: 0 after a clean shutdown, 1 when the node could not be built.
    """
    return run_node(RefAvsNode, NODE_NAME, bring_up=True, args=args)


if __name__ == "__main__":
    raise SystemExit(main())
