"""Replay a rosbag2 through refavs_node on simulated time.

Usage::

    ros2 launch refavs_ros refavs_replay.launch.py bag:=/path/to/bag
    ros2 launch refavs_ros refavs_replay.launch.py bag:=/path/to/bag rate:=0.5 \
        image_topic:=/camera/image_raw audio_topic:=/audio

refavs_node starts with ``use_sim_time:=true``; once it reports the lifecycle state ``active``
(model loaded, subscriptions up) this file runs ``ros2 bag play <bag> --clock``, so the first
frames and the command recorded at the start of the bag are not lost while the model loads. The
player publishes /clock from the recorded time line, so timers, the inference rate and the
command timeout follow the bag. Equivalent by hand, in two terminals::

    ros2 launch refavs_ros refavs.launch.py use_sim_time:=true
    ros2 bag play /path/to/bag --clock     # after the node logged "active"

Bags written by ``refavs-bench2bag`` use /camera/image_raw, /audio and /refavs/command: the
defaults here (namespace refavs). Record the outputs with
``ros2 bag record /refavs/mask /refavs/detections /refavs/active_command``.
Only launch / launch_ros APIs are used (no eval).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, RegisterEventHandler
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    """Build the launch description (see the module docstring)."""
    arguments = [
        DeclareLaunchArgument("bag", description="rosbag2 directory or file to play (required)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate factor"),
        DeclareLaunchArgument("namespace", default_value="refavs",
                              description="namespace of refavs_node and its outputs"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="image topic in the bag"),
        DeclareLaunchArgument("audio_topic", default_value="/audio",
                              description="audio topic in the bag"),
        DeclareLaunchArgument("command_topic", default_value="command",
                              description="command topic (relative: in the namespace)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("refavs_ros"), "config", "refavs.yaml"]),
                              description="YAML parameter file of refavs_node"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
    ]
    image_topic = LaunchConfiguration("image_topic")
    refavs_node = LifecycleNode(
        package="refavs_ros",
        executable="refavs_node",
        name="refavs_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": True, "autostart": True}],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
            ("audio", LaunchConfiguration("audio_topic")),
            ("command", LaunchConfiguration("command_topic")),
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    player = ExecuteProcess(
        cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock",
             "--rate", LaunchConfiguration("rate")],
        output="screen",
    )
    start_player_when_active = RegisterEventHandler(
        OnStateTransition(target_lifecycle_node=refavs_node, goal_state="active", entities=[player])
    )
    return LaunchDescription([*arguments, refavs_node, start_player_when_active])
