"""Shared fixtures (tiny random models created and saved by the tests themselves) and the ROS 2
test environment.

ROS 2: tests that use rclpy (marker ``ros``; modules with a module-level ``rclpy`` are marked
automatically) run against whatever ``import rclpy`` gives: a sourced ROS 2 (its PYTHONPATH
comes first) or the pinned Jazzy wheels and generated interface packages that
``scripts/install.sh`` puts into the virtual environment (``scripts/ros/interfaces.py`` explains
how they become importable without ``source``). With ``REFAVS_ROS=1`` (``.ci/run``) a missing
or broken ROS 2 is an error at session start instead of skipped tests. The run stays on this
machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) and in a domain of its own
(``ROS_DOMAIN_ID`` 1-100 derived from the process id) unless those variables are set already,
so concurrent test runs do not see each other's nodes. The terminal summary says which ROS 2 was
used and how many ROS tests ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from refavs_ros.models.config import EEMCConfig
from refavs_ros.models.text import bundled_minilm_dir

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

ROS_CHECK = """
import rclpy
from rclpy.serialization import deserialize_message, serialize_message
from audio_common_msgs.msg import AudioStamped
from vision_msgs.msg import Detection2DArray
for cls in (AudioStamped, Detection2DArray):
    assert deserialize_message(serialize_message(cls()), cls) == cls()
import audio_common_msgs, vision_msgs
print(rclpy.__file__, vision_msgs.__file__, audio_common_msgs.__file__, sep="\\n")
"""

_ros_reports: Counter = Counter()
_collect_skips: list[str] = []


def _ros_environment() -> tuple[bool, str]:
    """Check in a child interpreter that rclpy and both interface packages work (never crashes
    this process, e.g. on a broken ``.so``). Returns (ok, description or error)."""
    proc = subprocess.run(
        [sys.executable, "-c", ROS_CHECK], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode:
        return False, (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    rclpy_file, vision_file, audio_file = proc.stdout.split()
    distro = os.environ.get("ROS_DISTRO") or "jazzy wheels"
    return True, (
        f"rclpy from {Path(rclpy_file).parent} ({distro}); vision_msgs from {Path(vision_file).parent}; "
        f"audio_common_msgs from {Path(audio_file).parent}"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ros: needs rclpy and the ROS 2 message packages (run for real)")
    config._refavs_ros = _ros_environment()  # type: ignore[attr-defined]
    if os.environ.get("REFAVS_ROS") == "1" and not config._refavs_ros[0]:  # type: ignore[attr-defined]
        raise pytest.UsageError(
            "REFAVS_ROS=1 but ROS 2 is not usable here: " + config._refavs_ros[1]  # type: ignore[attr-defined]
            + " (run scripts/install.sh; see docs/ros.md)"
        )


def pytest_report_header(config: pytest.Config) -> str:
    ok, text = config._refavs_ros  # type: ignore[attr-defined]
    return f"ROS 2: {text}" if ok else f"ROS 2: not usable ({text}); ROS tests will skip"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and type(getattr(module, "rclpy", None)).__name__ == "module":
            item.add_marker(pytest.mark.ros)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        _collect_skips.append(f"{report.nodeid}: {report.longrepr[2].removeprefix('Skipped: ')}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "ros" not in report.keywords:
        return
    if report.failed:
        _ros_reports["failed"] += 1
    elif report.skipped:
        _ros_reports["skipped"] += 1
    elif report.when == "call":
        _ros_reports["passed"] += 1


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    ran = _ros_reports["passed"] + _ros_reports["failed"]
    terminalreporter.write_sep("-", "ROS 2")
    terminalreporter.write_line(pytest_report_header(config))
    terminalreporter.write_line(
        f"ROS tests (rclpy): {ran} ran ({_ros_reports['passed']} passed, {_ros_reports['failed']} failed), "
        f"{_ros_reports['skipped']} skipped"
    )
    for line in _collect_skips:
        terminalreporter.write_line(f"module skipped: {line}")


TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_tiny_text_model(directory: Path, hidden: int = 32) -> Path:
    """Save a random 2-layer BERT (MiniLM's tokenizer) with ``save_pretrained`` into ``directory``."""
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    src = bundled_minilm_dir()
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, directory / name)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    """Directory of a tiny random BERT text encoder (hidden 32) loadable with from_pretrained."""
    return make_tiny_text_model(tmp_path_factory.mktemp("tiny_text"))


@pytest.fixture(scope="session")
def tiny_cfg(tiny_text_dir) -> EEMCConfig:
    """A small EEMC config (64 px input, d 32) using the tiny text encoder, with the decode-stage
    position encoding and the audio memory token of the shipped model."""
    return EEMCConfig(
        profile="test", image_size=64, backbone_channels=(8, 8, 16, 16), d_model=32, num_heads=2,
        num_layers=1, num_queries=4, ffn_dim=64, token_grid=4, text_dim=32, max_text_tokens=12,
        text_model=str(tiny_text_dir), decode_position=True, memory_token=True,
    )


@pytest.fixture(scope="session")
def tiny_weights(tiny_cfg, tmp_path_factory) -> Path:
    """A safetensors file of a random tiny EEMC (BatchNorm statistics randomised too)."""
    from refavs_ros.models.checkpoint import save_eemc
    from refavs_ros.models.eemc import EEMC

    torch.manual_seed(1)
    model = EEMC(tiny_cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return save_eemc(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def installed_voice_model(name: str) -> Path:
    """Directory of the installed voice model ``name`` (``refavs-voice-models fetch``); skips the
    test when it is missing, or FAILS it when ``REFAVS_VOICE_MODELS_REQUIRED=1`` (``.ci/run``)."""
    from refavs_ros.voice.models import default_model_dir, verify

    d = default_model_dir(name)
    if d.is_dir() and not verify(d, name):
        return d
    if os.environ.get("REFAVS_VOICE_MODELS_REQUIRED") == "1":
        pytest.fail(f"{name} is not installed in {d} (refavs-voice-models fetch)")
    pytest.skip(f"{name} not installed (refavs-voice-models fetch)")
