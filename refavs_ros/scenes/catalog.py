"""Fixed vocabulary of the synthetic Ref-AVS benchmark: categories, colours, sizes, held-out pairs.

Everything here is static data; nothing is loaded. The media recipes name where a category's
picture and sound come from (``refavs_ros.scenes.media`` builds them), the procedural shape and
synthetic sound are the fallbacks used when ``media="procedural"`` or a real medium is missing.

Design source: Ref-AVS paper (Wang et al., ECCV 2024) section 3.3 (expression dimensions) and
section 3.6 (seen / unseen / null test subsets). Unlike the paper, "unseen" here means unseen
category *combinations* (:data:`HELD_OUT_PAIRS`), because every category must be learnable from
the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS: tuple[str, ...] = ("train", "val", "test-seen", "test-unseen", "test-null", "test-noisy", "test-occluded")
"""Benchmark splits. Each split draws from its own random stream. ``test-noisy`` and
``test-occluded`` have test-seen's distribution plus ambient noise (20/10/5/0 dB by index) or an
occluded referent in every scene (``refavs_ros.scenes.noise`` / ``occlusion``)."""

EXPRESSION_KINDS: tuple[str, ...] = ("semantic", "appearance", "spatial", "acoustic", "temporal", "null")
"""Expression kinds (Ref-AVS section 3.3 and Fig. 4 of the supplement, plus the null subset)."""


@dataclass(frozen=True)
class CategorySpec:
    """One object category and the recipes of its picture and sound.

    Attributes:
        name: category noun used in expressions ("cup").
        synonyms: alternative nouns sometimes used in expressions ("mug").
        aspect: sprite height / width (both photo and procedural sprites use it, so the scene
            layout never depends on which media were available).
        photo: key of the photo cut-out recipe in ``media`` (a scikit-image bundled photo).
        shape: procedural fallback shape ("disc", "square", "triangle", "star", ...).
        sound: ``(kind, argument)``: ``("freedesktop", "bell")`` is
            ``/usr/share/sounds/freedesktop/stereo/bell.oga``; ``("espeak", text)`` is espeak-ng
            speech of ``text``; ``("synth", name)`` is a synthetic sound of ``media``.
        espeak_args: extra espeak-ng arguments (voice, pitch 0..99, speed in words/min).
        synth: synthetic fallback sound name (always available).
    """

    name: str
    synonyms: tuple[str, ...]
    aspect: float
    photo: str
    shape: str
    sound: tuple[str, str]
    espeak_args: tuple[str, ...]
    synth: str


CATEGORY_SPECS: tuple[CategorySpec, ...] = (
    CategorySpec("person", ("astronaut", "woman"), 1.15, "astronaut", "star",
                 ("espeak", "hello there, how are you?"), ("-v", "en-us+f3", "-p", "50", "-s", "165"),
                 "voice"),
    CategorySpec("cat", ("kitten", "kitty"), 1.0, "chelsea", "triangle",
                 ("espeak", "meeow, meeow"), ("-v", "en+f4", "-p", "99", "-s", "120"), "meow"),
    CategorySpec("cup", ("mug", "coffee cup"), 0.95, "coffee", "square",
                 ("freedesktop", "complete"), (), "ding"),
    CategorySpec("rocket", ("spaceship",), 2.0, "rocket", "diamond",
                 ("synth", "roar"), (), "roar"),
    CategorySpec("clock", ("alarm clock",), 1.0, "clock", "disc",
                 ("freedesktop", "alarm-clock-elapsed"), (), "beep"),
    CategorySpec("horse", ("pony",), 0.85, "horse", "hexagon",
                 ("espeak", "neeeigh, neigh"), ("-v", "en+m7", "-p", "15", "-s", "110"), "neigh"),
    CategorySpec("camera", ("camcorder", "video camera"), 0.75, "camcorder", "cross",
                 ("freedesktop", "camera-shutter"), (), "click"),
    CategorySpec("motorcycle", ("motorbike", "bike"), 0.7, "motorcycle", "ellipse",
                 ("synth", "engine"), (), "engine"),
    CategorySpec("bell", ("gong",), 1.0, "bell", "ring",
                 ("freedesktop", "bell"), (), "chime"),
)
"""The 9 categories, each with its own picture and its own sound."""

CATEGORIES: tuple[str, ...] = tuple(c.name for c in CATEGORY_SPECS)
"""Category names, in catalogue order."""

CATEGORY_BY_NAME: dict[str, CategorySpec] = {c.name: c for c in CATEGORY_SPECS}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40),
    "green": (50, 195, 70),
    "blue": (55, 105, 240),
    "yellow": (240, 215, 45),
}
"""Object tints (RGB, 0..255). An object's pixels are its photo's luminance times the tint."""

SIZE_LABELS: tuple[str, ...] = ("small", "big")
"""Size labels. The sprite's longer side is a fraction of min(width, height) in SIZE_RANGES."""

SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.23, 0.27), "big": (0.38, 0.43)}
"""Longer sprite side as a fraction of min(width, height), per size label (uniform range)."""

PITCH_FACTORS: dict[str, float] = {"small": 1.0, "big": 0.5}
"""Frequency factor of an object's sound per size label: a big object sounds one octave lower
(and twice as slow), as a physically larger resonator would. Applied by resampling."""

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("cat", "clock"),
    ("person", "bell"),
    ("cup", "horse"),
    ("rocket", "camera"),
    ("motorcycle", "cat"),
    ("bell", "cup"),
)
"""Category pairs that never co-occur in train / val / test-seen / test-null scenes. Every
test-unseen scene contains at least one of them, and its target belongs to that pair."""

_HELD_OUT_SET = frozenset(frozenset(p) for p in HELD_OUT_PAIRS)


def is_held_out_pair(a: str, b: str) -> bool:
    """Whether categories ``a`` and ``b`` form one of :data:`HELD_OUT_PAIRS` (order-free)."""
    return frozenset((a, b)) in _HELD_OUT_SET


def held_out_pairs_in(categories: list[str] | tuple[str, ...] | set[str]) -> list[tuple[str, str]]:
    """The held-out pairs whose both categories occur in ``categories``.

    Args:
        categories: category names of a scene (duplicates allowed).

    Returns:
        The matching pairs of :data:`HELD_OUT_PAIRS`, in catalogue order.
    """
    present = set(categories)
    return [p for p in HELD_OUT_PAIRS if p[0] in present and p[1] in present]
