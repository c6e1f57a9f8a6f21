"""The package layout keeps one direction of dependency (README "Layout", docs/ros.md).

Every ``import`` of a ``refavs_ros`` module, at module level or inside a function, is read with
``ast`` and checked against the layer ranks below: a module may import its own part and parts of
a LOWER rank only; the parts "beside" the core (tools, evaluation, scenes, training) may import
the core but are never imported by it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "refavs_ros"

RANK = {
    "errors": 0,
    "resources": 1,
    "audio": 1, "overlay": 1, "geometry": 1, "models": 1, "rosio": 1,
    "export": 2,
    "backends": 3,
    "engines": 4,
    "predictor": 5, "voice": 5,
    "node": 6,
    "ros": 7,
}
"""ros -> node -> predictor -> engines -> backends -> export -> models (and the base modules)."""
BESIDE = {"eval", "scenes", "training", "tools"}
"""Import the core, never imported by it (tools may import the other BESIDE parts)."""


def _part(module: str) -> str:
    """``refavs_ros.node.pipeline`` -> ``node``; ``refavs_ros`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported refavs_ros module) for every import in a file, ``from refavs_ros import x``
    resolved to ``refavs_ros.x``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("refavs_ros")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("refavs_ros"):
            if node.module == "refavs_ros":
                out += [(node.lineno, f"refavs_ros.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _modules() -> list[tuple[str, Path]]:
    return [
        (".".join(("refavs_ros", *p.relative_to(PACKAGE).with_suffix("").parts)), p)
        for p in sorted(PACKAGE.rglob("*.py"))
    ]


def test_every_part_has_a_rank_or_is_beside_the_core() -> None:
    parts = {_part(m) for m, _ in _modules()} - {"", "__init__", "_msg"}
    unknown = parts - set(RANK) - BESIDE
    assert not unknown, f"new package parts need a place in the layout: {sorted(unknown)}"


@pytest.mark.parametrize("module, path", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_import_runs_upward(module: str, path: Path) -> None:
    own = _part(module)
    problems = []
    for line, target in _imports(path):
        dest = _part(target)
        if dest in ("", own) or own in ("", "__init__"):
            continue
        if dest in BESIDE:
            if own not in BESIDE or (dest == "tools" and own != "tools"):
                problems.append(f"{path.name}:{line} imports {target} (beside the core)")
            continue
        if own in BESIDE:
            continue
        if RANK[dest] >= RANK[own]:
            problems.append(f"{path.name}:{line} imports {target} (rank {RANK[dest]} >= {RANK[own]})")
    assert not problems, "; ".join(problems)


def test_only_ros_imports_rclpy() -> None:
    offenders = []
    for module, path in _modules():
        if _part(module) == "ros":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module}: {n}" for n in names if n.split(".")[0] == "rclpy"]
    assert not offenders
