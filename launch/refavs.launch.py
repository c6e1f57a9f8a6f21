"""Launch refavs_node (lifecycle, autostart by default) and optionally the microphone node.

Usage::

    ros2 launch refavs_ros refavs.launch.py image_topic:=/camera/image_raw audio_topic:=/audio
    ros2 launch refavs_ros refavs.launch.py start_microphone:=true namespace:=robot1/refavs
    ros2 launch refavs_ros refavs.launch.py image_topic:=/camera/camera/color/image_raw \
        depth_enabled:=true depth_topic:=/camera/camera/aligned_depth_to_color/image_raw \
        depth_info_topic:=/camera/camera/aligned_depth_to_color/camera_info     # RGB-D
    ros2 launch refavs_ros refavs.launch.py start_microphone:=true start_voice:=true   # spoken commands

Arguments: namespace, image_topic, audio_topic, command_topic, params_file, use_sim_time,
autostart, log_level, start_microphone, depth_enabled, depth_topic, depth_info_topic,
start_voice, voice_params_file (see each DeclareLaunchArgument below). start_voice adds
voice_command_node, which listens on audio_topic and publishes recognised commands on
command_topic (what refavs_node subscribes to). The node's relative topics (image, image/compressed, audio,
command, depth/image, depth/camera_info) are remapped to the given topics; outputs (mask,
detections, active_command, debug/overlay, and with depth target_point, goal_pose,
detections_3d, debug/marker) live in the namespace.

Only launch / launch_ros APIs are used (no eval): the lifecycle transitions are made by the node
itself when its ``autostart`` parameter is true, so the file works on Humble and Jazzy alike.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    """Build the launch description (see the module docstring)."""
    namespace = LaunchConfiguration("namespace")
    image_topic = LaunchConfiguration("image_topic")
    audio_topic = LaunchConfiguration("audio_topic")
    command_topic = LaunchConfiguration("command_topic")
    params_file = LaunchConfiguration("params_file")
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    autostart = ParameterValue(LaunchConfiguration("autostart"), value_type=bool)
    log_level = LaunchConfiguration("log_level")
    depth_enabled = ParameterValue(LaunchConfiguration("depth_enabled"), value_type=bool)
    depth_topic = LaunchConfiguration("depth_topic")
    depth_info_topic = LaunchConfiguration("depth_info_topic")

    arguments = [
        DeclareLaunchArgument("namespace", default_value="refavs",
                              description="namespace of the nodes and their outputs"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic (image_transport compressed: "
                                          "<image_topic>/compressed is used)"),
        DeclareLaunchArgument("audio_topic", default_value="/audio",
                              description="audio topic (audio_common_msgs/AudioStamped by default)"),
        DeclareLaunchArgument("command_topic", default_value="command",
                              description="std_msgs/String referring expression topic "
                                          "(relative names resolve in the namespace)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("refavs_ros"), "config", "refavs.yaml"]),
                              description="YAML parameter file of refavs_node"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (true for ros2 bag play --clock)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate refavs_node by itself"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="ROS log level: debug, info, warn, error, fatal"),
        DeclareLaunchArgument("start_microphone", default_value="false",
                              description="also start audio_capture_node publishing on audio_topic"),
        DeclareLaunchArgument("depth_enabled", default_value="false",
                              description="subscribe a registered depth image + camera info and publish "
                                          "target_point, goal_pose, detections_3d, debug/marker"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/aligned_depth_to_color/image_raw",
                              description="sensor_msgs/Image depth registered to image_topic (16UC1 mm or "
                                          "32FC1 m; realsense2_camera: align_depth.enable:=true)"),
        DeclareLaunchArgument("depth_info_topic", default_value="/camera/aligned_depth_to_color/camera_info",
                              description="sensor_msgs/CameraInfo of the depth image"),
        DeclareLaunchArgument("start_voice", default_value="false",
                              description="also start voice_command_node: speech on audio_topic -> command_topic"),
        DeclareLaunchArgument("voice_params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("refavs_ros"), "config", "voice_command.yaml"]),
                              description="YAML parameter file of voice_command_node"),
    ]

    refavs_node = LifecycleNode(
        package="refavs_ros",
        executable="refavs_node",
        name="refavs_node",
        namespace=namespace,
        output="screen",
        parameters=[params_file, {"use_sim_time": use_sim_time, "autostart": autostart,
                                  "depth_enabled": depth_enabled}],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
            ("audio", audio_topic),
            ("command", command_topic),
            ("depth/image", depth_topic),
            ("depth/camera_info", depth_info_topic),
        ],
        arguments=["--ros-args", "--log-level", log_level],
    )

    microphone = Node(
        package="refavs_ros",
        executable="audio_capture_node",
        name="audio_capture_node",
        namespace=namespace,
        output="screen",
        parameters=[{"use_sim_time": use_sim_time}],
        remappings=[("audio", audio_topic)],
        arguments=["--ros-args", "--log-level", log_level],
        condition=IfCondition(LaunchConfiguration("start_microphone")),
    )

    voice = LifecycleNode(
        package="refavs_ros",
        executable="voice_command_node",
        name="voice_command_node",
        namespace=namespace,
        output="screen",
        parameters=[LaunchConfiguration("voice_params_file"), {"use_sim_time": use_sim_time, "autostart": autostart}],
        remappings=[("audio", audio_topic), ("command", command_topic)],
        arguments=["--ros-args", "--log-level", log_level],
        condition=IfCondition(LaunchConfiguration("start_voice")),
    )

    return LaunchDescription([*arguments, refavs_node, microphone, voice])
