"""``voice_command_node``: spoken commands from the audio topic to the command topic (issue 9).

A lifecycle node with the conventions of ``refavs_node`` (autostart; configure = read
parameters and load the recogniser; activate = subscribe; deactivate = unsubscribe and keep the
recogniser; cleanup = free it). It subscribes ``audio`` (the same message types as
``refavs_node``) and publishes

* ``command`` (``std_msgs/String``, reliable, volatile, depth 10): every accepted command, the
  text ``refavs_node`` takes unchanged;
* ``voice/transcript`` (``std_msgs/String``): every recognised utterance, accepted or not, as
  JSON (:func:`refavs_ros.node.voice.transcript_json`: text, confidence, reason...);
* ``/diagnostics``: utterances, commands, rejections by reason, VAD / decoding time, audio
  rejected by reason.

Everything but the rclpy wiring is ROS-free: :class:`refavs_ros.voice.VoiceCommandRecognizer`
and the parameter schema :data:`refavs_ros.node.voice.VOICE_NODE_PARAMETERS`. A bad audio
message is logged (throttled) and counted, never fatal.
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import String

from refavs_ros.errors import RefAvsError
from refavs_ros.node.diagnostics import LogThrottle
from refavs_ros.node.params import COMMAND_QOS, DIAGNOSTICS_QOS, qos_spec
from refavs_ros.node.voice import (
    VOICE_NODE_PARAMETERS,
    recognizer_config_from_params,
    transcript_json,
)
from refavs_ros.ros.common import (
    AutostartMixin,
    diagnostic_array,
    run_node,
    to_qos_profile,
)
from refavs_ros.rosio import conversions

NODE_NAME = "voice_command_node"
DIAGNOSTICS_PERIOD_SEC = 1.0
LOG_THROTTLE_SEC = 5.0
_SPECS = {spec.name: spec for spec in VOICE_NODE_PARAMETERS}


class VoiceCommandNode(AutostartMixin, LifecycleNode):
    """Managed node turning speech on ``audio`` into commands on ``command``.

    Args:
        node_name: ROS node name.
        **kwargs: passed to ``rclpy.lifecycle.LifecycleNode``.
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in VOICE_NODE_PARAMETERS:
            descriptor = ParameterDescriptor(description=spec.description,
                                             additional_constraints=spec.constraints_text(),
                                             read_only=spec.read_only)
            if spec.type is float and spec.min_value is not None:
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(spec.min_value), to_value=float(spec.max_value), step=0.0)]
            elif spec.type is int and spec.min_value is not None:
                descriptor.integer_range = [IntegerRange(
                    from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)]
            self.declare_parameter(spec.name, spec.default, descriptor)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._lock = threading.Lock()
        self._throttle = LogThrottle(LOG_THROTTLE_SEC)
        self._recognizer: Any = None
        self._audio_class: type | None = None
        self._audio_rate = 16000
        self._audio_channels = 1
        self._rejections: Counter[str] = Counter()
        self._pubs: dict[str, Any] = {}
        self._sub: Any = None
        self._diag_pub: Any = None
        self._diag_timer: Any = None
        self._lifecycle = "unconfigured"
        self.configure_error = ""
        """Why the last configure transition failed ("" after a success)."""

    # ------------------------------------------------------------------------------ parameters
    def _values(self) -> dict[str, Any]:
        return {spec.name: self.get_parameter(spec.name).value for spec in VOICE_NODE_PARAMETERS}

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            spec = _SPECS.get(param.name)
            if spec is None:
                continue
            stage_reason = None
            if spec.read_only:
                stage_reason = f"'{param.name}' is read only at node start"
            elif spec.stage == "configure" and self._recognizer is not None:
                stage_reason = (f"'{param.name}' is read at configure: deactivate and clean up the node first, "
                                "then set it and configure again")
            reason = stage_reason
            if reason is None:
                try:
                    spec.validate(param.value)
                except RefAvsError as exc:
                    reason = str(exc)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            if param.name == "confidence_threshold" and self._recognizer is not None:
                from dataclasses import replace

                with self._lock:
                    self._recognizer.config = replace(self._recognizer.config,
                                                      confidence_threshold=float(param.value))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, load the VAD and the recogniser, create the publishers."""
        from refavs_ros.voice import VoiceCommandRecognizer

        try:
            values = self._values()
            config, msg_type, rate, channels = recognizer_config_from_params(values)
            audio_class = conversions.import_audio_class(msg_type)
            recognizer = VoiceCommandRecognizer(config, on_transcript=self._on_transcript)
        except RefAvsError as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - rclpy would turn it into a silent ERROR
            self.configure_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {self.configure_error}\n{traceback.format_exc()}")
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        with self._lock:
            self._recognizer = recognizer
        self._audio_class, self._audio_rate, self._audio_channels = audio_class, rate, channels
        self._audio_qos = to_qos_profile(qos_spec(values["audio_qos"], values["audio_qos_depth"]))
        self._pubs = {
            "command": self.create_lifecycle_publisher(String, "command", to_qos_profile(COMMAND_QOS)),
            "transcript": self.create_lifecycle_publisher(String, "voice/transcript", to_qos_profile(COMMAND_QOS)),
        }
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", to_qos_profile(DIAGNOSTICS_QOS))
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_SEC, self._on_diagnostics)
        self._lifecycle = "inactive"
        self.get_logger().info(f"configured: backend {config.backend}, vocabulary "
                               f"{recognizer.vocabulary.source or 'built in'}, wake phrase "
                               f"{config.wake_phrase or '(none)'}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to ``audio`` and enable the publishers."""
        self._sub = self.create_subscription(self._audio_class, "audio", self._on_audio, self._audio_qos)
        self._lifecycle = "active"
        self.get_logger().info(f"active: listening on audio ({self._audio_class.__name__})")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe; keep the recogniser (an utterance in progress is dropped)."""
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        with self._lock:
            if self._recognizer is not None:
                self._recognizer.reset()
        self._lifecycle = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the recogniser and the publishers."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, from any primary state."""
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything and go back to unconfigured."""
        self.on_shutdown(state)
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        self._diag_timer = self._diag_pub = None
        with self._lock:
            if self._recognizer is not None:
                self._recognizer.close()  # its speculative-recognition worker thread
            self._recognizer = None
        self._lifecycle = "unconfigured"

    # ------------------------------------------------------------------------------ callbacks
    def _reject(self, reason: str, detail: str, trace: str = "") -> None:
        self._rejections[f"audio: {reason}"] += 1
        suppressed = self._throttle.check(reason)
        if suppressed is not None:
            more = f" ({suppressed} more suppressed)" if suppressed else ""
            self.get_logger().warning(f"dropped audio ({reason}): {detail}{more}" + (f"\n{trace}" if trace else ""))

    def _on_audio(self, msg: Any) -> None:
        try:
            if hasattr(msg, "header"):
                stamp_ns = conversions.stamp_to_ns(msg.header.stamp)
                samples, rate = conversions.audio_to_array(msg, sample_rate=self._audio_rate,
                                                           channels=self._audio_channels)
            else:  # ros-drivers AudioData: no header; first sample = arrival - duration
                samples, rate = conversions.audio_to_array(msg, sample_rate=self._audio_rate,
                                                           channels=self._audio_channels)
                stamp_ns = self.get_clock().now().nanoseconds - samples.shape[0] * 1_000_000_000 // rate
            with self._lock:
                if self._recognizer is None:
                    return
                commands = self._recognizer.push_audio(stamp_ns, samples, rate)
        except RefAvsError as exc:
            self._reject(getattr(exc, "reason", None) or type(exc).__name__, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a message must never kill the node
            self._reject(f"unexpected {type(exc).__name__}", str(exc), traceback.format_exc())
            return
        for cmd in commands:
            self.get_logger().info(f"voice command: '{cmd.text}' (confidence {cmd.confidence:.2f})")
            self._pubs["command"].publish(String(data=cmd.text))

    def _on_transcript(self, transcript: Any) -> None:
        pub = self._pubs.get("transcript")
        if pub is not None:
            pub.publish(String(data=transcript_json(transcript)))
        if not transcript.accepted:
            self.get_logger().debug(f"heard {transcript.describe()}")

    def _on_diagnostics(self) -> None:
        with self._lock:
            rec = self._recognizer
            values = dict(rec.diagnostics()) if rec is not None else {}
        rejected = sum(self._rejections.values())
        values.update({k: v for k, v in self._rejections.items()})
        level, message = (DiagnosticStatus.OK, "listening") if self._lifecycle == "active" else (
            DiagnosticStatus.WARN, self._lifecycle)
        if rejected and self._lifecycle == "active":
            level, message = DiagnosticStatus.WARN, f"listening; {rejected} audio messages rejected"
        array = diagnostic_array(self, level=level[0], part="voice", message=message, hardware_id="microphone",
                                 values=sorted(values.items()))
        if self._diag_pub is not None:
            self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run refavs_ros voice_command_node``: configure and activate
    (autostart), then spin (see :func:`refavs_ros.ros.common.run_node`).

    Returns:
        process exit code: 0 after a clean shutdown, 1 when the node could not be built.
    """
    return run_node(VoiceCommandNode, NODE_NAME, bring_up=True, args=args)


if __name__ == "__main__":
    raise SystemExit(main())
