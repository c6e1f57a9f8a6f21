"""``refavs_node``: rclpy lifecycle adapter over :class:`refavs_ros.predictor.StreamingPredictor`.

Thin by design: every decision that does not need rclpy lives in :mod:`refavs_ros.node.params`
(parameter schema and policy, latest-frame input buffer, command timeout, diagnostics content),
:mod:`refavs_ros.rosio.conversions` (messages <-> numpy) and :mod:`refavs_ros.overlay`. This module
maps them onto ROS entities; the interface is specified in ``docs/ros.md`` and every rclpy API
used here is listed, with the public source it was checked against, in
``docs/ros_api_checklist.md``.

Threads (MultiThreadedExecutor): subscription callbacks run in a reentrant group and only hand
messages to :class:`~refavs_ros.node.params.InputBuffer`; the inference timer and the
``enable`` / ``reset_memory`` services share a mutually exclusive group, so the predictor is only
touched by one thread at a time; lifecycle and parameter services use the default group. The
inference timer always takes the LATEST image, so latency does not grow when the camera is faster
than the model. Outputs carry the SOURCE image header, never ``now()``.
"""

from __future__ import annotations

import gc
import threading
import traceback
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
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

from refavs_ros.errors import ConfigError, InputError, RefAvsError
from refavs_ros.node.params import (
    ACTIVE_COMMAND_QOS,
    COMMAND_QOS,
    DIAGNOSTICS_QOS,
    PARAMETERS,
    CommandState,
    InputBuffer,
    LogThrottle,
    NodeSettings,
    PipelineState,
    QosSpec,
    check_parameter_change,
    diagnose,
    import_audio_class,
    overlay_caption,
)
from refavs_ros.overlay import render_overlay
from refavs_ros.predictor import StreamingPredictor
from refavs_ros.rosio import conversions

NODE_NAME = "refavs_node"
DIAGNOSTICS_PERIOD_SEC = 1.0
"""Period (s, node clock) of the ``/diagnostics`` status."""
LOG_THROTTLE_SEC = 5.0
"""At most one log line per kind of bad input per this many seconds."""


def to_qos_profile(spec: QosSpec) -> QoSProfile:
    """Map a :class:`~refavs_ros.node.params.QosSpec` to an rclpy ``QoSProfile`` (KEEP_LAST)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local else DurabilityPolicy.VOLATILE,
    )


def _cuda_available() -> bool:
    import torch  # noqa: PLC0415 - the core's dependency; imported only to resolve device 'auto'

    return bool(torch.cuda.is_available())


class RefAvsNode(LifecycleNode):
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
        self._commands = CommandState()
        # _infer_lock: held while the predictor is used or replaced (timer, services, cleanup).
        self._infer_lock = threading.Lock()
        # _pipeline_lock: guards _pipeline and _pending (read by diagnostics and parameter threads).
        self._pipeline_lock = threading.Lock()
        self._pipeline = PipelineState(lifecycle="unconfigured")
        self._settings: NodeSettings | None = None
        self._pending: NodeSettings | None = None
        self._predictor: StreamingPredictor | None = None
        self._audio_class: type | None = None
        self._inference_enabled = True
        self.configure_error = ""
        """Why the last configure transition failed ("" after a success)."""
        self._audio_end_ns: int | None = None
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
        configured = self._predictor is not None
        changes = {}
        for param in params:
            reason = check_parameter_change(param.name, param.value, configured=configured)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            if any(spec.name == param.name for spec in PARAMETERS):
                changes[param.name] = param.value
        if configured and changes:
            with self._pipeline_lock:
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
    def bring_up(self) -> bool:
        """Configure and activate when the ``autostart`` parameter is true.

        Returns:
            True when the node ends active (or autostart is off), False when a transition failed.
        """
        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions")
            return True
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, load the model, create publishers and the diagnostics timer."""
        try:
            settings = self._read_settings()
            audio_class = import_audio_class(settings.audio_msg_type)
            self.get_logger().info(
                f"loading model '{settings.model}' (weights: {settings.weights_path or 'shipped default'}, "
                f"backend {settings.backend}, device {settings.device})"
            )
            predictor = StreamingPredictor.from_pretrained(
                settings.weights, **settings.pretrained_kwargs(_cuda_available)
            )
        except RefAvsError as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - rclpy would turn it into a silent ERROR
            self.configure_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {self.configure_error}\n{traceback.format_exc()}")
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        with self._infer_lock:
            self._predictor = predictor
        with self._pipeline_lock:
            self._settings = settings
            self._pending = None
            self._pipeline = PipelineState(
                lifecycle="inactive", model=settings.model, backend=settings.backend,
                device=settings.resolved_device(_cuda_available),
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
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", to_qos_profile(DIAGNOSTICS_QOS))
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_SEC, self._on_diagnostics_timer, self._diag_group)
        self.get_logger().info(f"configured: model '{settings.model}' on {self._pipeline.device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Create subscriptions, services and the inference timer; enable the publishers."""
        with self._pipeline_lock:
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
        self._srv_handles = [
            self.create_service(SetBool, "enable", self._on_enable, callback_group=self._infer_group),
            self.create_service(Trigger, "reset_memory", self._on_reset_memory, callback_group=self._infer_group),
        ]
        self._infer_timer = self.create_timer(settings.inference_period_sec(), self._on_infer_timer, self._infer_group)
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_active_command()  # transient local: late joiners see the command in force
        with self._pipeline_lock:
            self._pipeline.lifecycle = "active"
        self.get_logger().info(
            f"active: {image_topic} ({image_type.__name__}), audio ({self._audio_class.__name__}), command"
        )
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop subscriptions, services and the timer; keep the model."""
        self._drop_active_entities()
        with self._pipeline_lock:
            self._pipeline.lifecycle = "inactive"
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
            released = self._predictor is not None
            self._predictor = None
        with self._pipeline_lock:
            self._settings = self._pending = None
            self._pipeline = PipelineState(lifecycle="unconfigured")
        self._commands = CommandState()
        if released:
            gc.collect()
            try:
                import torch  # noqa: PLC0415

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass

    # ---------------------------------------------------------------------------------- events
    def _subscription_events(self, topic: str) -> SubscriptionEventCallbacks:
        def on_incompatible(event: Any) -> None:
            with self._pipeline_lock:
                self._pipeline.qos_incompatible += 1
            self.get_logger().warning(
                f"subscription '{topic}': a publisher offers incompatible QoS "
                f"({qos_policy_name_from_kind(event.last_policy_kind)}); no messages will be received "
                f"from it (total {event.total_count}). Adjust the *_qos parameters or the publisher."
            )

        return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)

    def _publisher_events(self, topic: str) -> PublisherEventCallbacks:
        def on_incompatible(event: Any) -> None:
            with self._pipeline_lock:
                self._pipeline.qos_incompatible += 1
            self.get_logger().warning(
                f"publisher '{topic}': a subscription requests incompatible QoS "
                f"({qos_policy_name_from_kind(event.last_policy_kind)}); it will get nothing "
                f"(total {event.total_count}). Adjust output_qos or the subscriber."
            )

        return PublisherEventCallbacks(incompatible_qos=on_incompatible)

    def _bad_input(self, kind: str, exc: Exception) -> None:
        with self._pipeline_lock:
            self._pipeline.bad_messages += 1
        suppressed = self._throttle.check(kind)
        if suppressed is not None:
            more = f" ({suppressed} more suppressed)" if suppressed else ""
            self.get_logger().warning(f"dropped {kind}: {exc}{more}")

    # ------------------------------------------------------------- callbacks (buffers only)
    def _on_image(self, msg: Any) -> None:
        try:
            self._buffer.offer_image(conversions.stamp_to_ns(msg.header.stamp), msg)
        except InputError as exc:
            self._bad_input("image", exc)

    def _on_audio(self, msg: Any) -> None:
        try:
            if hasattr(msg, "header"):
                stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
            else:  # ros-drivers AudioData has no header: first sample = arrival - duration
                settings = self._settings
                frames = len(msg.data) // (2 * settings.audio_channels)  # S16LE
                stamp_ns = self.get_clock().now().nanoseconds - frames * 1_000_000_000 // settings.audio_sample_rate
            self._buffer.offer_audio(stamp_ns, msg)
        except InputError as exc:
            self._bad_input("audio", exc)

    def _on_command(self, msg: String) -> None:
        self._buffer.offer_command(msg.data)

    # ---------------------------------------------------------------------------- services
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._inference_enabled = bool(request.data)
        with self._pipeline_lock:
            self._pipeline.enabled = self._inference_enabled
        response.success = True
        response.message = "inference enabled" if self._inference_enabled else "inference disabled"
        self.get_logger().info(response.message)
        return response

    def _on_reset_memory(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._infer_lock:
            if self._predictor is None:
                response.success, response.message = False, "no model loaded"
                return response
            self._predictor.reset_memory()
            self._audio_end_ns = None
        response.success, response.message = True, "cached memory and audio buffer cleared"
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------------------- inference
    def _on_infer_timer(self) -> None:
        with self._infer_lock:
            predictor = self._predictor
            if predictor is None:
                return
            settings = self._apply_pending(predictor)
            batch = self._buffer.take()
            now_ns = self.get_clock().now().nanoseconds
            if batch.command is not None:
                self._set_command(predictor, batch.command, now_ns)
            if self._commands.expired(now_ns, settings.command_timeout_sec):
                self.get_logger().info(f"command '{self._commands.text}' expired")
                self._set_command(predictor, "", now_ns)
            if batch.time_jump:
                self.get_logger().warning("image stamps jumped back (bag loop?): memory reset")
                predictor.reset_memory()
                self._audio_end_ns = None
            for chunk in batch.audio:
                self._push_audio(predictor, settings, chunk.stamp_ns, chunk.item)
            image = batch.image
            if image is None or not self._inference_enabled or not predictor.command:
                return
            self._infer(predictor, settings, image.stamp_ns, image.item)

    def _apply_pending(self, predictor: StreamingPredictor) -> NodeSettings:
        with self._pipeline_lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._settings = pending
            settings = self._settings
        if pending is not None:
            predictor.update_config(pending.predictor_config())
        return settings

    def _set_command(self, predictor: StreamingPredictor, text: str, now_ns: int) -> None:
        try:
            predictor.set_command(text)
        except InputError as exc:
            self._bad_input("command", exc)
            return
        if self._commands.update(text, now_ns):
            self.get_logger().info(f"command: '{text}'" if text else "command cleared")
            self._publish_active_command()
        with self._pipeline_lock:
            self._pipeline.command = text

    def _push_audio(self, predictor: StreamingPredictor, settings: NodeSettings, stamp_ns: int, msg: Any) -> None:
        try:
            samples, rate = conversions.audio_to_array(
                msg, sample_rate=settings.audio_sample_rate, channels=settings.audio_channels
            )
            predictor.push_audio(stamp_ns, samples, rate)
        except InputError as exc:
            self._bad_input("audio", exc)
            return
        self._audio_end_ns = stamp_ns + samples.shape[0] * 1_000_000_000 // rate

    def _infer(self, predictor: StreamingPredictor, settings: NodeSettings, stamp_ns: int, msg: Any) -> None:
        try:
            rgb = (conversions.compressed_image_to_rgb8(msg) if isinstance(msg, CompressedImage)
                   else conversions.image_to_rgb8(msg))
            predictor.push_image(stamp_ns, rgb)
        except InputError as exc:
            self._bad_input("image", exc)
            return
        try:
            prediction = predictor.step()
            if prediction is None:
                return
            self._publish(settings, msg.header, rgb, prediction)
        except Exception as exc:  # noqa: BLE001 - the node must not die; reported in diagnostics
            with self._pipeline_lock:
                self._pipeline.last_error = f"{type(exc).__name__}: {exc}"
            suppressed = self._throttle.check("inference")
            if suppressed is not None:
                self.get_logger().error(f"inference failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return
        end_to_end_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        with self._pipeline_lock:
            self._pipeline.last_error = ""
            self._pipeline.inference_ms.add(prediction.timings_ms.get("total", float("nan")))
            self._pipeline.end_to_end_ms.add(end_to_end_ms)
            self._pipeline.av_skew_sec = (
                None if self._audio_end_ns is None else (stamp_ns - self._audio_end_ns) / 1e9
            )

    def _publish(self, settings: NodeSettings, header: Any, rgb: np.ndarray, prediction: Any) -> None:
        """Publish mask, detections and (when watched) the overlay, all with the source header."""
        self._out_pubs["mask"].publish(conversions.mask_to_image(prediction.mask, header, factory=self._factory))
        self._out_pubs["detections"].publish(
            conversions.detections_from_prediction(prediction, header, factory=self._factory)
        )
        overlay_pub = self._out_pubs["overlay"]
        if settings.publish_debug and overlay_pub.get_subscription_count() > 0:
            caption = overlay_caption(prediction.command, prediction.score, prediction.found)
            bgr = render_overlay(rgb, prediction.mask, prediction.bbox, caption)
            overlay_pub.publish(conversions.array_to_image(bgr, "bgr8", header=header, factory=self._factory))

    def _publish_active_command(self) -> None:
        pub = self._out_pubs.get("active_command")
        if pub is not None:
            pub.publish(String(data=self._commands.text))

    # --------------------------------------------------------------------------- diagnostics
    def _on_diagnostics_timer(self) -> None:
        with self._pipeline_lock:
            state = self._pipeline
            state.counters = self._buffer.counters() if state.lifecycle == "active" else None
            settings = self._settings
            report = diagnose(state, max_av_skew_sec=settings.max_av_skew_sec if settings else 1.0)
            hardware_id = state.device
        status = DiagnosticStatus(
            level=bytes([report.level]),
            name=f"{self.get_namespace().rstrip('/')}/{self.get_name()}: pipeline",
            message=report.message,
            hardware_id=hardware_id,
            values=[KeyValue(key=k, value=v) for k, v in report.values],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        if self._diag_pub is not None:
            self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run refavs_ros refavs_node``.

    Returns:
        process exit code: 0 after a clean shutdown, 1 when the node could not start or the
        autostart transitions failed.
    """
    rclpy.init(args=args)
    code = 0
    node = None
    try:
        node = RefAvsNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        if not node.bring_up():
            node.get_logger().error("autostart failed: the node stays unconfigured (see the error above); "
                                    "fix the parameters and call the configure transition")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report why the node could not start, then exit 1
        get_logger(NODE_NAME).fatal(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
