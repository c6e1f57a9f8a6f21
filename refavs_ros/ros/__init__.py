"""ROS 2 adapters (rclpy). The only part of refavs_ros that imports rclpy or ROS messages."""
