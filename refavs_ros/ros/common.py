"""What the package's rclpy nodes share: the process entry point, the QoS mapping and the
``/diagnostics`` message.

The three executables (``refavs_node``, ``voice_command_node``, ``audio_capture_node``) start,
spin and shut down the same way (the rclpy pattern of ros2/demos ``lifecycle_py``: init, one
executor, spin until Ctrl-C or an external shutdown, destroy the node, shutdown the context)
and publish one ``diagnostic_msgs/DiagnosticStatus`` per period (REP 107 ``/diagnostics``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from refavs_ros.node.params import QosSpec

__all__ = ["AutostartMixin", "BackgroundSpin", "NodeExecutor", "diagnostic_array", "run_node", "to_qos_profile"]


class NodeExecutor(SingleThreadedExecutor):
    """The executor that spins the package's nodes (and the tests' graphs): single-threaded.

    Why not rclpy's ``MultiThreadedExecutor``: measured with the paper-sized model (``base``
    profile, about 0.2 s per inference on 2 cores) and a 30 Hz camera plus 31 Hz audio
    (``python -m bench.node_stress latency``, 2026-11-29, quiet machine), the multi-threaded
    executor answered 11 frames a minute at 2-7 s per inference: its spinning thread polls the
    ready entities and its futures in Python while the model runs and takes the GIL from it
    (py-spy: ~60 % of the process's samples in the spin thread). The single-threaded executor
    answered 314 frames a minute at 183 ms per inference and p95 215 ms from receipt to
    publication. Messages that arrive during an inference wait in the middleware: the image
    subscription keeps the latest frame (depth 1), audio keeps 100 chunks (about 3 s), and
    lifecycle and parameter services answer after the step in progress.

    ``spin_once`` also absorbs rclpy's ``InvalidHandle: cannot use Destroyable because
    destruction was requested`` (ros2/rclpy#1284, #1206: an entity destroyed by ANOTHER thread
    while the wait set is collected, e.g. a test or an application thread calling
    ``destroy_node`` / a transition): the wait set is collected again on the next iteration and
    :attr:`destroy_races` counts it. Any other exception propagates.

    Args:
        **kwargs: passed to ``rclpy.executors.SingleThreadedExecutor`` (``context``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.destroy_races = 0
        """How many times a wait set met an entity being destroyed (each time it was rebuilt)."""

    def spin_once(self, timeout_sec: float | None = None) -> None:
        """One iteration of the executor (see the class docstring for the error it absorbs)."""
        try:
            super().spin_once(timeout_sec)
        except InvalidHandle:
            self.destroy_races += 1


class BackgroundSpin:
    """Nodes spun by one :class:`NodeExecutor` in a daemon thread (in-process graphs: the tests
    and ``bench/graph.py``).

    Args:
        context: the initialised rclpy context of the nodes.
        *nodes: the nodes to spin (from now until :meth:`close`).
    """

    def __init__(self, context: Any, *nodes: Any) -> None:
        self.nodes = nodes
        self.executor = NodeExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop spinning, join the thread (up to ``timeout`` s), then destroy the nodes: in this
        order, since destroying entities the spin thread waits on raises ``InvalidHandle`` in it."""
        self.executor.shutdown()
        self.thread.join(timeout=timeout)
        for node in self.nodes:
            node.destroy_node()


class AutostartMixin:
    """Gives a lifecycle node ``bring_up()``; list it before ``LifecycleNode`` in the bases."""

    def bring_up(self) -> bool:
        """Configure, then activate when the ``autostart`` parameter is true
        (``rclpy.lifecycle.LifecycleNode.trigger_configure`` / ``trigger_activate``).

        Returns:
            True when the node ends active (or autostart is off: the node then waits for
            transitions from a lifecycle manager), False when a transition failed.
        """
        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions")
            return True
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS


def to_qos_profile(spec: QosSpec) -> QoSProfile:
    """Map a :class:`~refavs_ros.node.params.QosSpec` to an rclpy ``QoSProfile`` (KEEP_LAST of
    ``spec.depth`` messages, RELIABLE or BEST_EFFORT, TRANSIENT_LOCAL or VOLATILE)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local else DurabilityPolicy.VOLATILE,
    )


def diagnostic_array(node: Any, *, level: int, part: str, message: str, hardware_id: str,
                     values: Iterable[tuple[Any, Any]]) -> DiagnosticArray:
    """One ``DiagnosticArray`` holding the status of ``node`` (REP 107).

    Args:
        node: the rclpy node; the status is named ``<namespace>/<node name>: <part>`` and the
            array stamped with the node's clock (sim time when ``use_sim_time``).
        level: ``DiagnosticStatus.OK`` (0), ``WARN`` (1), ``ERROR`` (2) or ``STALE`` (3).
        part: what of the node the status describes (``pipeline``, ``voice``, ...).
        message: one line for the operator.
        hardware_id: the device the node runs on or reads (``cpu``, ``cuda:0``, ``microphone``).
        values: (key, value) pairs, converted with ``str``, in the given order.

    Returns:
        a ``diagnostic_msgs/DiagnosticArray`` with one status.
    """
    status = DiagnosticStatus(
        level=bytes([int(level)]),
        name=f"{node.get_namespace().rstrip('/')}/{node.get_name()}: {part}",
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=str(v)) for k, v in values],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    return array


def run_node(make_node: Callable[[], Any], name: str, *, bring_up: bool = False,
             args: list[str] | None = None) -> int:
    """Run one node on a :class:`NodeExecutor` until Ctrl-C or an external shutdown: the body of
    each executable's ``main``.

    Args:
        make_node: builds the node (after ``rclpy.init``).
        name: the node's default name, for the fatal log line when it cannot be built.
        bring_up: call ``node.bring_up()`` (the lifecycle nodes' autostart: configure, then
            activate) before spinning; when it fails the node keeps running unconfigured, so
            that the operator can fix parameters and call the transitions.
        args: command-line arguments for ``rclpy.init`` (ROS arguments included).

    Returns:
        process exit code: 0 after a clean shutdown, 1 when the node or its executor could not
        be built (the reason is logged as FATAL: a :class:`~refavs_ros.errors.RefAvsError` such
        as a microphone that cannot be opened, or any other exception).
    """
    rclpy.init(args=args)
    code = 0
    node = None
    try:
        node = make_node()
        executor = NodeExecutor()  # after rclpy.init: the default context
        executor.add_node(node)
        if bring_up and not node.bring_up():
            node.get_logger().error("autostart failed: the node stays unconfigured (see the error above); "
                                    "fix the parameters and call the configure transition")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report why the node could not start, then exit 1
        get_logger(name).fatal(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code
