"""Static checks of the launch files (run everywhere, no ROS needed): valid Python, only launch /
launch_ros imports, no eval/exec, the documented arguments, and remappings of the node's inputs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"
MAIN_ARGS = {"namespace", "image_topic", "audio_topic", "command_topic", "params_file", "use_sim_time",
             "autostart", "log_level", "start_microphone", "depth_enabled", "depth_topic", "depth_info_topic",
             "start_voice", "voice_params_file"}
REPLAY_ARGS = {"bag", "rate", "namespace", "image_topic", "audio_topic", "command_topic", "params_file",
               "log_level"}


def _tree(name: str) -> ast.Module:
    return ast.parse((LAUNCH_DIR / name).read_text(), filename=name)


def _calls(tree: ast.Module, func_name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == func_name]


def _declared_arguments(tree: ast.Module) -> set[str]:
    return {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}


@pytest.mark.parametrize("name", ["refavs.launch.py", "refavs_replay.launch.py"])
def test_launch_file_is_plain_launch_python(name: str) -> None:
    tree = _tree(name)
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert modules <= {"launch", "launch_ros"}, modules
    for forbidden in ("eval", "exec", "__import__", "compile"):
        assert not _calls(tree, forbidden), f"{name} calls {forbidden}()"
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert ast.get_docstring(tree)


def test_main_launch_arguments_and_remappings() -> None:
    tree = _tree("refavs.launch.py")
    assert _declared_arguments(tree) == MAIN_ARGS
    source = (LAUNCH_DIR / "refavs.launch.py").read_text()
    for remap in ('("image", image_topic)', '("image/compressed", [image_topic, "/compressed"])',
                  '("audio", audio_topic)', '("command", command_topic)', '("depth/image", depth_topic)',
                  '("depth/camera_info", depth_info_topic)'):
        assert remap in source
    lifecycle, voice = _calls(tree, "LifecycleNode")
    keywords = {k.arg: k.value for k in lifecycle.keywords}
    assert keywords["executable"].value == "refavs_node" and keywords["package"].value == "refavs_ros"
    voice_kw = {k.arg: k.value for k in voice.keywords}  # start_voice: voice_command_node -> command_topic
    assert voice_kw["executable"].value == "voice_command_node" and "condition" in voice_kw
    (mic,) = [c for c in _calls(tree, "Node")]
    assert {k.arg for k in mic.keywords} >= {"condition", "remappings"}


def test_replay_launch_plays_the_bag_with_clock_once_active() -> None:
    tree = _tree("refavs_replay.launch.py")
    assert _declared_arguments(tree) == REPLAY_ARGS
    source = (LAUNCH_DIR / "refavs_replay.launch.py").read_text()
    assert '"--clock"' in source and '"use_sim_time": True' in source
    (handler,) = _calls(tree, "OnStateTransition")
    goal = next(k.value.value for k in handler.keywords if k.arg == "goal_state")
    assert goal == "active"
