"""What ``refavs_node`` does, without rclpy: parameters and QoS (:mod:`.params`), input buffering
and time policy (:mod:`.inputs`), diagnostics (:mod:`.diagnostics`), the message pipeline shared
with ``refavs-replay`` (:mod:`.pipeline`) and the microphone capture (:mod:`.capture`)."""
