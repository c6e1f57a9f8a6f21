"""ROS message I/O without rclpy: message definitions (rosbags type store), message <-> numpy
conversions through a :class:`~refavs_ros.rosio.conversions.MessageFactory`, and rosbag2
reading/writing. Used by the node (with rclpy's classes) and the bag tools (with rosbags')."""
