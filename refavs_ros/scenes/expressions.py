"""Referring-expression templates of the synthetic benchmark (several wordings per cue).

The templates follow the Ref-AVS expression table (supplement Fig. 4: "[object]", "The [surface]
[object]", "The sounding [object]", "The object making the [volume sup] sound", "The [time]
object to make a sound", "The object that keeps making sound at all times", ...) and its three
rules (section 3.3): uniqueness, necessity, clarity. The planner only calls a template when the
scene makes it unique and necessary; this module only words it.
"""

from __future__ import annotations

import numpy as np

from refavs_ros.scenes.catalog import CATEGORY_BY_NAME

SEMANTIC = ("the {n}", "the {n}", "{n}", "the {n} in the scene", "the only {n}", "the {n} in the picture")

COLOUR = ("the {c} {n}", "the {c} {n}", "the {n} that is {c}", "the {c}-coloured {n}", "the {n} in {c}")
COLOUR_ANY = ("the {c} object", "the {c} thing", "the object that is {c}", "the {c} one")
SIZE = {
    "big": ("the big {n}", "the bigger {n}", "the large {n}", "the larger {n}", "the {n} that is bigger"),
    "small": ("the small {n}", "the smaller {n}", "the little {n}", "the {n} that is smaller"),
}

SPATIAL_ANY = {
    "left": ("the object on the left", "the leftmost object", "the one on the left",
             "the object furthest to the left"),
    "right": ("the object on the right", "the rightmost object", "the one on the right",
              "the object furthest to the right"),
    "top": ("the top-most object", "the object at the top", "the highest object", "the uppermost object"),
    "bottom": ("the object at the bottom", "the lowest object", "the bottom-most object", "the one at the bottom"),
    "middle": ("the object in the middle", "the middle object", "the one in the middle"),
}
SPATIAL_NOUN = {
    "left": ("the {n} on the left", "the left {n}", "the leftmost {n}"),
    "right": ("the {n} on the right", "the right {n}", "the rightmost {n}"),
    "top": ("the upper {n}", "the {n} at the top", "the higher {n}"),
    "bottom": ("the lower {n}", "the {n} at the bottom", "the bottom {n}"),
}

SOUNDING_NOUN = ("the sounding {n}", "the {n} that is making a sound", "the {n} making a sound",
                 "the {n} that makes noise", "the noisy {n}", "the {n} you can hear")
SOUNDING_ANY = ("the sounding object", "the object making a sound", "the thing that makes the sound",
                "the one you can hear", "the object that is making noise")
LOUDNESS = {
    "louder": ("the object making the louder sound", "the louder object", "the object with the loudest sound",
               "the one that sounds louder", "the loudest sounding object"),
    "quieter": ("the object making the quieter sound", "the quieter object", "the object with the softer sound",
                "the one that sounds quieter"),
}

TEMPORAL = {
    "first": ("the first object to make a sound", "the object that makes a sound first",
              "the one that starts sounding first", "the object that sounds before the {o}",
              "the object making a sound before the {o}"),
    "last": ("the last object to start sounding", "the object that starts making a sound later",
             "the one that starts sounding last", "the object that sounds after the {o}",
             "the object that starts making a sound after the {o}"),
    "continuous": ("the object that keeps making a sound", "the object that sounds all the time",
                   "the object making a continuous sound", "the one that never stops sounding",
                   "the object that keeps sounding while the {o} stops"),
}

NULL_FORMS = ("the {n}", "the {n}", "the {c} {n}", "the big {n}", "the small {n}", "the {n} on the left",
              "the {n} on the right", "the sounding {n}", "the {n} that is making a sound",
              "the first {n} to make a sound", "the louder {n}")

PREFIXES = ("segment ", "find ", "show me ", "locate ", "where is ")
"""Optional command prefixes (a robot is told what to segment)."""


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    """One template, uniformly."""
    return options[int(rng.integers(len(options)))]


def noun(rng: np.random.Generator, category: str, synonym_prob: float = 0.2) -> str:
    """The category's name, or with probability ``synonym_prob`` one of its synonyms."""
    spec = CATEGORY_BY_NAME[category]
    if spec.synonyms and rng.random() < synonym_prob:
        return pick(rng, spec.synonyms)
    return spec.name


def finish(rng: np.random.Generator, text: str, prefix_prob: float = 0.2) -> str:
    """Optionally prepend a command verb ("segment the cat", "where is the cat?")."""
    if rng.random() < prefix_prob:
        prefix = pick(rng, PREFIXES)
        return prefix + text + ("?" if prefix == "where is " else "")
    return text
