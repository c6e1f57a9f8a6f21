"""refavs_ros: Referring Audio-Visual Segmentation (Ref-AVS, ECCV 2024) for robots.

The package is layered with one direction of dependency::

    refavs_ros.ros  (rclpy nodes)  ->  core  <-  refavs_ros.tools (CLIs), refavs_ros.eval

The core (``audio``, ``models``, ``predictor``, ``conversions``, ``msgs``, ``scenes``) never
imports rclpy or ROS message packages; ROS messages are handled through duck typing or through
rosbags' message classes.
"""

__version__ = "0.1.0"
