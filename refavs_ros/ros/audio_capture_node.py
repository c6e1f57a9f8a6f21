"""``audio_capture_node``: microphone -> ``audio_common_msgs/AudioStamped`` (mgonzs13 layout).

Thin rclpy adapter over :class:`refavs_ros.node.capture.MicrophoneCapture` (sounddevice / PortAudio).
Each message holds one chunk of int16 samples (``info.format`` = paInt16 = 8, interleaved
channels) and is stamped with the ROS-clock time of the chunk's FIRST sample, derived from
PortAudio's ADC timestamp (see :mod:`refavs_ros.node.capture` for the derivation and the fallback).
QoS: sensor data (best effort, depth 10), like mgonzs13/audio_common's capturer.

Parameters (read at start): ``device`` (str: "" = default input, an index, or a name
substring), ``rate`` (Hz, default 16000), ``channels`` (default 1), ``chunk`` (frames per
message, default 512 = 32 ms at 16 kHz), ``frame_id`` (default "microphone").
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data

from refavs_ros.node.capture import MicrophoneCapture, load_sounddevice
from refavs_ros.ros.common import run_node
from refavs_ros.rosio import conversions

NODE_NAME = "audio_capture_node"
PUBLISH_PERIOD_SEC = 0.005
"""Period (s) of the timer draining captured chunks to the publisher (< one 512-frame chunk)."""


class AudioCaptureNode(Node):
    """Publishes the microphone on ``audio`` as ``audio_common_msgs/AudioStamped``.

    Args:
        node_name: ROS node name.
        sounddevice_module: the sounddevice module (default: imported with a clear error when
            PortAudio is missing).
        **kwargs: passed to ``rclpy.node.Node``.

    Raises:
        BackendUnavailableError: PortAudio missing, no input device, or the device rejects the
            parameters (the message names the device and the settings).
        ConfigError: parameters out of range, or audio_common_msgs (mgonzs13) not importable.
    """

    def __init__(self, node_name: str = NODE_NAME, sounddevice_module: Any = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        device = self.declare_parameter(
            "device", "", ParameterDescriptor(description='input device: "" = default, an index, or a name substring',
                                              read_only=True)).value
        rate = self.declare_parameter(
            "rate", 16000, ParameterDescriptor(description="sample rate (Hz)", read_only=True,
                                               integer_range=[IntegerRange(from_value=8000, to_value=192000, step=1)])).value
        channels = self.declare_parameter(
            "channels", 1, ParameterDescriptor(description="channels", read_only=True,
                                               integer_range=[IntegerRange(from_value=1, to_value=32, step=1)])).value
        chunk = self.declare_parameter(
            "chunk", 512, ParameterDescriptor(description="frames per message", read_only=True,
                                              integer_range=[IntegerRange(from_value=16, to_value=65536, step=1)])).value
        self._frame_id = self.declare_parameter(
            "frame_id", "microphone", ParameterDescriptor(description="header.frame_id", read_only=True)).value
        audio_stamped = conversions.import_audio_class("AudioStamped")  # clear error if mgonzs13 msgs are missing
        self._factory = conversions.ClassFactory.importing()
        self._pub = self.create_publisher(audio_stamped, "audio", qos_profile_sensor_data)
        sd = sounddevice_module if sounddevice_module is not None else load_sounddevice()
        self._capture = MicrophoneCapture(
            sd, device=device, sample_rate=rate, channels=channels, chunk=chunk,
            ros_now_ns=lambda: self.get_clock().now().nanoseconds,
        )
        self._capture.start()
        self._timer = self.create_timer(PUBLISH_PERIOD_SEC, self._drain)
        self._reported_overflows = 0
        self.get_logger().info(
            f"capturing from device {self._capture.device_index} ({self._capture.device_name}): "
            f"{rate} Hz, {channels} channel(s), {chunk} frames per message"
        )

    def _drain(self) -> None:
        while (item := self._capture.get(timeout=0)) is not None:
            stamp_ns, samples = item  # int16 (chunk, channels)
            self._pub.publish(conversions.array_to_audio_stamped(
                samples, self._capture.rate, stamp_ns, self._frame_id, chunk=self._capture.chunk,
                factory=self._factory,
            ))
        lost = self._capture.overflows + self._capture.dropped_chunks
        if lost != self._reported_overflows:
            self.get_logger().warning(f"audio input overflowed or chunks dropped ({lost} so far)")
            self._reported_overflows = lost

    def destroy_node(self) -> None:
        """Stop the PortAudio stream, then destroy the node."""
        self._capture.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run refavs_ros audio_capture_node``.

    Returns:
        0 after a clean shutdown, 1 when the microphone cannot be opened (reason logged).
    """
    return run_node(AudioCaptureNode, NODE_NAME, args=args)


if __name__ == "__main__":
    raise SystemExit(main())
