"""Scene *plans*: which objects, where, what they sound like, and what the expression says.

A plan is everything of a scene except pixels and samples; it is cheap (well under a
millisecond of numpy per object) and needs no media, so the split rules can be checked over
thousands of scenes. :func:`refavs_ros.scenes.generate_scene` renders a plan.

Sampling rules (see docs/scenes.md):

* Kinds come in blocks of 50 consecutive indices per split: 9 each of semantic, appearance,
  spatial, acoustic, temporal and 5 null (18 % / 10 %), shuffled inside the block; test-null is
  100 % null.
* Categories of a scene are distinct except for one same-category pair where a kind needs it
  (look-alikes, colour/size contrast, "the cup on the left"). Outside test-unseen no
  :data:`~refavs_ros.scenes.catalog.HELD_OUT_PAIRS` pair ever co-occurs; in test-unseen one such
  pair is always present and the target belongs to it.
* Acoustic look-alikes: two objects of the same category and colour, one small and one big
  (a big object sounds one octave lower); exactly one of them sounds, in every slot. From the
  picture alone either could be "the sounding cup".
* Objects never overlap (their whole trajectories' boxes, shrunk by 10 %, are disjoint), so an
  expression's referent stays unique over the clip (Ref-AVS uniqueness rule, section 3.3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from refavs_ros.errors import ConfigError
from refavs_ros.scenes import expressions as ex
from refavs_ros.scenes.catalog import (
    CATEGORIES,
    CATEGORY_BY_NAME,
    COLOURS,
    HELD_OUT_PAIRS,
    SIZE_RANGES,
    held_out_pairs_in,
    is_held_out_pair,
)
from refavs_ros.scenes.config import SceneConfig, validate_config, validate_split

KIND_BLOCK: tuple[str, ...] = (("semantic",) * 9 + ("appearance",) * 9 + ("spatial",) * 9 + ("acoustic",) * 9
                               + ("temporal",) * 9 + ("null",) * 5)
"""One block of 50 consecutive scene indices: the kind mix of every split but test-null."""

MAX_SPEED = 0.012
"""Largest drift speed, as a fraction of min(width, height) per second."""
SPATIAL_MARGIN = 0.08
"""A spatial relation must hold by this fraction of the frame at every frame time."""
_SHRINK = 0.9
_COLOUR_NAMES = tuple(COLOURS)


@dataclass
class ObjectPlan:
    """One object of a plan (all geometry normalised: x by width, y by height).

    Attributes:
        category: category name. colour: tint name. size: "small" or "big".
        role: "target", "contrast" (the other object the expression is contrasted with),
            "partner" (the target's held-out partner in test-unseen) or "distractor".
        sounding_slots: 1-s slots (0-based) in which the object sounds.
        gain_db: level of its sound relative to -20 dBFS RMS.
        scale: longer sprite side / min(width, height).
        flip: mirrored left-right.
        centre: (x, y) centre at t = 0, in [0, 1]. velocity: (vx, vy) per second.
        half: (half width, half height) of its box.
        essential: the expression (or the split rule) needs it; layout may drop the others.
    """

    category: str
    colour: str
    size: str
    role: str = "distractor"
    sounding_slots: tuple[int, ...] = ()
    gain_db: float = 0.0
    scale: float = 0.0
    flip: bool = False
    centre: tuple[float, float] = (0.5, 0.5)
    velocity: tuple[float, float] = (0.0, 0.0)
    half: tuple[float, float] = (0.0, 0.0)
    essential: bool = False

    def centres(self, times: np.ndarray) -> np.ndarray:
        """Centres at ``times`` (s): float64 (T, 2), normalised (x, y)."""
        return np.asarray(self.centre)[None, :] + np.asarray(self.velocity)[None, :] * times[:, None]


@dataclass
class ScenePlan:
    """A scene without pixels or samples.

    Attributes:
        split, index, seed: the generator inputs. kind: one of EXPRESSION_KINDS.
        variant: sub-kind, e.g. "colour", "sounding-noun", "louder", "first", "absent-category".
        expression: the referring expression. target: index into ``objects`` or None (null).
        objects: in drawing order (first drawn is at the bottom).
        background: {"style": int, "crop": [x, y, side] in 0..1, "tint": [r, g, b], "level",
            "contrast"}. noise_db: background noise level (dBFS RMS).
        cue: what the expression asks for, e.g. {"category": "cup", "colour": "red"},
            {"relation": "left"}, {"sounding": True}, {"loudness": "louder"},
            {"order": "first", "other_category": "cat"}; for null scenes the absent
            category and/or colour.
        bars: foreground bars drawn over everything (``refavs_ros.scenes.occlusion``; empty
            unless the scene is occluded by a bar).
    """

    split: str
    index: int
    seed: int
    kind: str
    variant: str
    expression: str
    target: int | None
    objects: list[ObjectPlan]
    background: dict = field(default_factory=dict)
    noise_db: float = -45.0
    cue: dict = field(default_factory=dict)
    bars: list = field(default_factory=list)

    @property
    def scene_id(self) -> str:
        """``"<split>-<index:06d>"``."""
        return scene_id(self.split, self.index)


def scene_id(split: str, index: int) -> str:
    """Scene id, e.g. ``scene_id("test-seen", 42) == "test-seen-000042"``."""
    return f"{split}-{index:06d}"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (SHA-256 of their ``|``-joined text)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def kind_for(split: str, index: int, seed: int = 0) -> str:
    """The expression kind of scene ``index`` of ``split`` (balanced per block of 50).

    Raises:
        ConfigError: unknown split or negative index.
    """
    validate_split(split)
    _check_index(index)
    if split == "test-null":
        return "null"
    block, pos = divmod(index, len(KIND_BLOCK))
    perm = np.random.default_rng(derive_seed("kinds", split, seed, block)).permutation(len(KIND_BLOCK))
    return KIND_BLOCK[int(perm[pos])]


def _check_index(index: int) -> None:
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ConfigError(f"scene index must be a non-negative int, got {index!r}")


# ------------------------------------------------------------------------------- categories


def sample_categories(rng: np.random.Generator, split: str, n: int) -> list[str] | None:
    """``n`` distinct categories for a scene; element 0 is the target's category.

    In test-unseen, elements 0 and 1 form one of :data:`HELD_OUT_PAIRS` (random order) and the
    rest are free. In every other split no two of the returned categories form a held-out pair.

    Args:
        rng: random stream. split: a split name. n: 1..len(CATEGORIES) (>= 2 in test-unseen).

    Returns:
        The categories, or None when the held-out rule left no candidate (caller retries).

    Raises:
        ConfigError: ``n`` out of range.
    """
    if not 1 <= n <= len(CATEGORIES) or (split == "test-unseen" and n < 2):
        raise ConfigError(f"cannot sample {n} categories for split {split!r}")
    if split == "test-unseen":
        pair = list(HELD_OUT_PAIRS[int(rng.integers(len(HELD_OUT_PAIRS)))])
        if rng.random() < 0.5:
            pair.reverse()
        pool = [c for c in CATEGORIES if c not in pair]
        rest = rng.choice(len(pool), size=n - 2, replace=False)
        return pair + [pool[int(i)] for i in rest]
    cats: list[str] = []
    while len(cats) < n:
        pool = [c for c in CATEGORIES if c not in cats and not any(is_held_out_pair(c, d) for d in cats)]
        if not pool:
            return None
        cats.append(pool[int(rng.integers(len(pool)))])
    return cats


# ---------------------------------------------------------------------------------- helpers


def _colour(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str:
    options = [c for c in _COLOUR_NAMES if c not in exclude]
    return options[int(rng.integers(len(options)))]


def _size(rng: np.random.Generator, p_big: float = 0.4) -> str:
    return "big" if rng.random() < p_big else "small"


def _random_slots(rng: np.random.Generator, n_slots: int, p_sound: float = 0.5) -> tuple[int, ...]:
    """Slots of an object whose sound is not what the expression is about."""
    if rng.random() >= p_sound:
        return ()
    if rng.random() < 0.5:  # one contiguous run of >= 2 slots
        start = int(rng.integers(0, n_slots - 1))
        length = int(rng.integers(2, n_slots - start + 1))
        return tuple(range(start, start + length))
    slots = tuple(int(k) for k in np.nonzero(rng.random(n_slots) < 0.6)[0])
    return slots or (int(rng.integers(n_slots)),)


def _gain(rng: np.random.Generator, lo: float = -9.0, hi: float = 0.0) -> float:
    return float(round(rng.uniform(lo, hi), 2))


def _swap_first_two(rng: np.random.Generator, cats: list[str]) -> None:
    """Swap target and contrast categories half of the time, so that which of two categories is
    the (invisible) loud / first one carries no category prior from the sampler's order."""
    if rng.random() < 0.5:
        cats[0], cats[1] = cats[1], cats[0]


def _extras(rng: np.random.Generator, split: str, probs: tuple[float, ...]) -> int:
    n = int(rng.choice(len(probs), p=probs))
    return max(n, 1) if split == "test-unseen" else n


def _others(rng: np.random.Generator, split: str, cats: list[str], n_slots: int, p_sound: float) -> list[ObjectPlan]:
    """Objects of ``cats[1:]``: the held-out partner (test-unseen) is essential."""
    out = []
    for i, c in enumerate(cats[1:], start=1):
        partner = split == "test-unseen" and i == 1
        out.append(ObjectPlan(c, _colour(rng), _size(rng), role="partner" if partner else "distractor",
                              sounding_slots=_random_slots(rng, n_slots, p_sound), gain_db=_gain(rng),
                              essential=partner))
    return out


# ----------------------------------------------------------------------------------- layout


def _half_extent(category: str, scale: float, width: int, height: int) -> tuple[float, float]:
    aspect = CATEGORY_BY_NAME[category].aspect
    long_px = scale * min(width, height)
    h_px, w_px = (long_px, long_px / aspect) if aspect >= 1.0 else (long_px * aspect, long_px)
    return w_px / 2.0 / width, h_px / 2.0 / height


def _try_place(rng: np.random.Generator, obj: ObjectPlan, boxes: list[np.ndarray], cfg: SceneConfig,
               tries: int = 60) -> np.ndarray | None:
    """Sample centre and velocity of ``obj`` so its trajectory box avoids ``boxes``."""
    m = min(cfg.width, cfg.height)
    hw, hh = obj.half
    dur = float(cfg.num_slots)
    for _ in range(tries):
        speed = 0.0 if rng.random() < 0.35 else rng.uniform(0.3, 1.0) * MAX_SPEED
        ang = rng.uniform(0.0, 2.0 * np.pi)
        vx, vy = speed * m / cfg.width * np.cos(ang), speed * m / cfg.height * np.sin(ang)
        dx, dy = vx * dur, vy * dur
        lo_x, hi_x = hw - min(0.0, dx), 1.0 - hw - max(0.0, dx)
        lo_y, hi_y = hh - min(0.0, dy), 1.0 - hh - max(0.0, dy)
        if lo_x > hi_x or lo_y > hi_y:
            continue
        x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        box = np.array([min(x, x + dx) - _SHRINK * hw, min(y, y + dy) - _SHRINK * hh,
                        max(x, x + dx) + _SHRINK * hw, max(y, y + dy) + _SHRINK * hh])
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
            obj.centre, obj.velocity = (float(x), float(y)), (float(vx), float(vy))
            return box
    return None


def layout(rng: np.random.Generator, objs: list[ObjectPlan], cfg: SceneConfig) -> list[ObjectPlan] | None:
    """Give every object a scale, a flip, a start centre and a drift velocity, without overlaps.

    Essential objects are placed first (largest first); a distractor that does not fit is tried
    small, then dropped. Objects stay fully inside the frame for the whole clip.

    Returns:
        The placed objects (input order, dropped distractors removed), or None when an
        essential object does not fit (caller re-plans).
    """
    for o in objs:
        lo, hi = SIZE_RANGES[o.size]
        o.scale = float(rng.uniform(lo, hi))
        o.flip = bool(rng.random() < 0.5)
        o.half = _half_extent(o.category, o.scale, cfg.width, cfg.height)
    order = sorted(range(len(objs)), key=lambda i: (not objs[i].essential, -objs[i].scale))
    boxes: list[np.ndarray] = []
    keep = [True] * len(objs)
    for i in order:
        o = objs[i]
        box = _try_place(rng, o, boxes, cfg)
        if box is None and not o.essential and o.size == "big":
            o.size = "small"
            lo, hi = SIZE_RANGES["small"]
            o.scale = float(rng.uniform(lo, hi))
            o.half = _half_extent(o.category, o.scale, cfg.width, cfg.height)
            box = _try_place(rng, o, boxes, cfg)
        if box is None:
            if o.essential:
                return None
            keep[i] = False
            continue
        boxes.append(box)
    return [o for o, k in zip(objs, keep) if k]


def frame_times(cfg: SceneConfig) -> np.ndarray:
    """Frame times in seconds: float64 (T,), ``i / fps``."""
    return np.arange(cfg.num_frames, dtype=np.float64) / float(cfg.fps)


def relation_winner(objs: list[ObjectPlan], members: list[int], relation: str, times: np.ndarray,
                    margin: float = SPATIAL_MARGIN) -> int | None:
    """The unique member that is "left"/"right"/"top"/"bottom"/"middle" of the others.

    It must hold by ``margin`` (normalised) at every time in ``times``; "middle" needs exactly
    three members and means horizontally between the other two.

    Returns:
        The winning index into ``objs``, or None if no member qualifies clearly.
    """
    if len(members) < 2 or (relation == "middle" and len(members) != 3):
        return None
    pos = np.stack([objs[i].centres(times) for i in members])  # (K, T, 2)
    axis = 1 if relation in ("top", "bottom") else 0
    v = pos[..., axis]  # (K, T)
    for k, idx in enumerate(members):
        others = np.delete(v, k, axis=0)
        if relation in ("left", "top"):
            ok = np.all(v[k] + margin < others)
        elif relation in ("right", "bottom"):
            ok = np.all(v[k] - margin > others)
        elif relation == "middle":
            lo, hi = others.min(axis=0), others.max(axis=0)
            ok = bool(np.all(lo + margin < v[k]) and np.all(v[k] + margin < hi))
        else:
            raise ValueError(f"unknown relation {relation!r}")
        if ok:
            return idx
    return None


# ------------------------------------------------------------------------------ kind builders


@dataclass
class _Draft:
    """A kind builder's output: objects (before layout) and how to word the expression."""

    variant: str
    objects: list[ObjectPlan]
    # (rng, placed objects) -> (expression, target object or None, cue), or None if no unique wording
    express: Callable[[np.random.Generator, list[ObjectPlan]], tuple[str, ObjectPlan | None, dict] | None]


def _semantic(rng: np.random.Generator, split: str, cfg: SceneConfig) -> _Draft | None:
    n = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.35, 0.15]))
    n = max(n, 2) if split == "test-unseen" else n
    cats = sample_categories(rng, split, n)
    if cats is None:
        return None
    ns = cfg.num_slots
    target = ObjectPlan(cats[0], _colour(rng), _size(rng), "target", _random_slots(rng, ns), _gain(rng), essential=True)
    objs = [target] + _others(rng, split, cats, ns, 0.5)
    if 2 <= n <= 3 and rng.random() < 0.3:  # a second instance of a non-target category
        dup = objs[1 + int(rng.integers(n - 1))]
        objs.append(ObjectPlan(dup.category, _colour(rng), _size(rng), "distractor", _random_slots(rng, ns),
                               _gain(rng)))

    def express(rng, placed):
        return ex.pick(rng, ex.SEMANTIC).format(n=ex.noun(rng, target.category)), target, {"category": target.category}

    return _Draft("category", objs, express)


def _appearance(rng: np.random.Generator, split: str, cfg: SceneConfig) -> _Draft | None:
    ns = cfg.num_slots
    u = rng.random()
    if u < 0.25:  # colour unique among all objects: "the red object"
        n = int(rng.choice([2, 3, 4], p=[0.4, 0.4, 0.2]))
        cats = sample_categories(rng, split, n)
        if cats is None:
            return None
        c = _colour(rng)
        target = ObjectPlan(cats[0], c, _size(rng), "target", _random_slots(rng, ns), _gain(rng), essential=True)
        others = _others(rng, split, cats, ns, 0.5)
        for o in others:
            o.colour = _colour(rng, exclude=(c,))
        others[0].essential = True  # a colour cue needs something to contrast with

        def express(rng, placed):
            return ex.pick(rng, ex.COLOUR_ANY).format(c=c), target, {"colour": c}

        return _Draft("colour-any", [target] + others, express)
    cats = sample_categories(rng, split, 1 + _extras(rng, split, (0.35, 0.45, 0.2)))
    if cats is None:
        return None
    x = cats[0]
    if u < 0.65:  # same category, different colours: "the red cup"
        c1 = _colour(rng)
        target = ObjectPlan(x, c1, _size(rng), "target", _random_slots(rng, ns), _gain(rng), essential=True)
        contrast = ObjectPlan(x, _colour(rng, exclude=(c1,)), _size(rng), "contrast", _random_slots(rng, ns),
                              _gain(rng), essential=True)

        def express(rng, placed):
            return ex.pick(rng, ex.COLOUR).format(c=c1, n=ex.noun(rng, x)), target, {"category": x, "colour": c1}

        variant = "colour"
    else:  # same category, different sizes: "the big cup"
        s1 = _size(rng, 0.5)
        c1 = _colour(rng)
        target = ObjectPlan(x, c1, s1, "target", _random_slots(rng, ns), _gain(rng), essential=True)
        contrast = ObjectPlan(x, c1 if rng.random() < 0.7 else _colour(rng, exclude=(c1,)),
                              "small" if s1 == "big" else "big", "contrast", _random_slots(rng, ns), _gain(rng),
                              essential=True)

        def express(rng, placed):
            return ex.pick(rng, ex.SIZE[s1]).format(n=ex.noun(rng, x)), target, {"category": x, "size": s1}

        variant = "size"
    return _Draft(variant, [target, contrast] + _others(rng, split, cats, ns, 0.5), express)


def _spatial(rng: np.random.Generator, split: str, cfg: SceneConfig) -> _Draft | None:
    ns = cfg.num_slots
    times = frame_times(cfg)
    if rng.random() < 0.6:  # relation among all objects: "the object on the left"
        n = int(rng.choice([2, 3, 4], p=[0.45, 0.4, 0.15]))
        cats = sample_categories(rng, split, n)
        if cats is None:
            return None
        objs = [ObjectPlan(c, _colour(rng), _size(rng), "distractor", _random_slots(rng, ns), _gain(rng))
                for c in cats]
        objs[0].essential = objs[1].essential = True
        allowed = set(cats[:2]) if split == "test-unseen" else set(cats)

        def express(rng, placed):
            members = list(range(len(placed)))
            options = []
            for rel in ("left", "right", "top", "bottom", "middle"):
                w = relation_winner(placed, members, rel, times)
                if w is not None and placed[w].category in allowed:
                    options.append((rel, w))
            if not options:
                return None
            rel, w = options[int(rng.integers(len(options)))]
            return ex.pick(rng, ex.SPATIAL_ANY[rel]), placed[w], {"relation": rel}

        return _Draft("relation-any", objs, express)
    cats = sample_categories(rng, split, 1 + _extras(rng, split, (0.4, 0.4, 0.2)))
    if cats is None:
        return None
    x = cats[0]
    c1 = _colour(rng)
    same_look = rng.random() < 0.5  # half of the pairs differ only in position
    a = ObjectPlan(x, c1, _size(rng), "target", _random_slots(rng, ns), _gain(rng), essential=True)
    b = ObjectPlan(x, c1 if same_look else _colour(rng), a.size if same_look else _size(rng), "contrast",
                   _random_slots(rng, ns), _gain(rng), essential=True)

    def express(rng, placed):
        pair = [i for i, o in enumerate(placed) if o is a or o is b]
        options = []
        for rel in ("left", "right", "top", "bottom"):
            w = relation_winner(placed, pair, rel, times)
            if w is not None:
                options.append((rel, w))
        if not options:
            return None
        rel, w = options[int(rng.integers(len(options)))]
        return ex.pick(rng, ex.SPATIAL_NOUN[rel]).format(n=ex.noun(rng, x)), placed[w], {"category": x, "relation": rel}

    return _Draft("relation-noun", [a, b] + _others(rng, split, cats, ns, 0.5), express)


def _acoustic(rng: np.random.Generator, split: str, cfg: SceneConfig) -> _Draft | None:
    ns = cfg.num_slots
    all_slots = tuple(range(ns))
    u = rng.random()
    if u < 0.65:  # look-alikes: same category and colour, small vs big, only one sounds
        any_object = u >= 0.45
        cats = sample_categories(rng, split, 1 + _extras(rng, split, (0.35, 0.45, 0.2)))
        if cats is None:
            return None
        x, c = cats[0], _colour(rng)
        t_size = "big" if rng.random() < 0.5 else "small"
        target = ObjectPlan(x, c, t_size, "target", all_slots, _gain(rng, -6.0, 0.0), essential=True)
        twin = ObjectPlan(x, c, "small" if t_size == "big" else "big", "contrast", (), 0.0, essential=True)
        others = _others(rng, split, cats, ns, 0.0 if any_object else 0.3)
        if any_object:

            def express(rng, placed):
                return ex.pick(rng, ex.SOUNDING_ANY), target, {"sounding": True}

            return _Draft("sounding-any", [target, twin] + others, express)

        def express(rng, placed):
            return ex.pick(rng, ex.SOUNDING_NOUN).format(n=ex.noun(rng, x)), target, {"category": x, "sounding": True}

        return _Draft("sounding-noun", [target, twin] + others, express)
    # two different categories both sounding all the time, 12 dB apart
    variant = "louder" if u < 0.9 else "quieter"
    cats = sample_categories(rng, split, 2 + int(rng.choice(2, p=[0.6, 0.4])))
    if cats is None:
        return None
    _swap_first_two(rng, cats)
    loud = _gain(rng, -4.0, 0.0)
    target = ObjectPlan(cats[0], _colour(rng), _size(rng), "target", all_slots,
                        loud if variant == "louder" else loud - 12.0, essential=True)
    other = ObjectPlan(cats[1], _colour(rng), _size(rng), "contrast", all_slots,
                       loud - 12.0 if variant == "louder" else loud, essential=True)
    extra = [ObjectPlan(c, _colour(rng), _size(rng)) for c in cats[2:]]  # silent

    def express(rng, placed):
        return ex.pick(rng, ex.LOUDNESS[variant]), target, {"loudness": variant}

    return _Draft(variant, [target, other] + extra, express)


def _temporal(rng: np.random.Generator, split: str, cfg: SceneConfig) -> _Draft | None:
    ns = cfg.num_slots
    all_slots = tuple(range(ns))
    cats = sample_categories(rng, split, 2 + int(rng.choice(2, p=[0.6, 0.4])))
    if cats is None:
        return None
    _swap_first_two(rng, cats)
    u = rng.random()
    if u < 0.4:
        variant = "first"
        k = int(rng.integers(2, ns - 1))
        t_slots, o_slots = all_slots, tuple(range(k, ns))
    elif u < 0.65:
        variant = "last"
        k = int(rng.integers(2, ns - 1))
        t_slots, o_slots = tuple(range(k, ns)), all_slots
    else:
        variant = "continuous"
        start = int(rng.integers(1, max(2, ns // 2 + 1)))
        slots, on, k = [], True, start
        while k < ns:  # alternating runs of 1-2 slots, starting with a sounding run
            run = int(rng.integers(1, 3))
            if on:
                slots.extend(range(k, min(ns, k + run)))
            k += run
            on = not on
        t_slots, o_slots = all_slots, tuple(slots)
    g = _gain(rng, -6.0, 0.0)
    target = ObjectPlan(cats[0], _colour(rng), _size(rng), "target", t_slots, g, essential=True)
    other = ObjectPlan(cats[1], _colour(rng), _size(rng), "contrast", o_slots,
                       float(round(np.clip(g + rng.uniform(-4.0, 4.0), -8.0, 0.0), 2)), essential=True)
    extra = [ObjectPlan(c, _colour(rng), _size(rng)) for c in cats[2:]]  # silent

    def express(rng, placed):
        text = ex.pick(rng, ex.TEMPORAL[variant])
        cue = {"order": variant, "other_category": other.category} if "{o}" in text else {"order": variant}
        return text.format(o=ex.noun(rng, other.category)), target, cue

    return _Draft(variant, [target, other] + extra, express)


def _null(rng: np.random.Generator, split: str, cfg: SceneConfig) -> _Draft | None:
    ns = cfg.num_slots
    n = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    n = max(n, 2) if split == "test-unseen" else n
    cats = sample_categories(rng, split, n)
    if cats is None:
        return None
    objs = [ObjectPlan(cats[0], _colour(rng), _size(rng), "distractor", _random_slots(rng, ns), _gain(rng),
                       essential=True)] + _others(rng, split, cats, ns, 0.5)
    if 2 <= n <= 3 and rng.random() < 0.3:
        dup = objs[int(rng.integers(n))]
        objs.append(ObjectPlan(dup.category, _colour(rng), _size(rng), "distractor", _random_slots(rng, ns),
                               _gain(rng)))
    absent_colours = [c for c in _COLOUR_NAMES if c not in {o.colour for o in objs}]
    if rng.random() < 0.1 and absent_colours:
        colour = absent_colours[int(rng.integers(len(absent_colours)))]
        for o in objs:
            o.essential = True  # dropping one would not break the rule, but keep the scene as drawn
        present = objs[int(rng.integers(len(objs)))].category

        def express(rng, placed):
            if rng.random() < 0.5:
                return ex.pick(rng, ex.COLOUR_ANY).format(c=colour), None, {"colour": colour}
            text = ex.pick(rng, ex.COLOUR).format(c=colour, n=ex.noun(rng, present))
            return text, None, {"category": present, "colour": colour}

        return _Draft("absent-colour", objs, express)
    absent = [c for c in CATEGORIES if c not in {o.category for o in objs}]
    q = absent[int(rng.integers(len(absent)))]
    qc = _colour(rng)

    def express(rng, placed):
        text = ex.pick(rng, ex.NULL_FORMS)
        return text.format(n=ex.noun(rng, q), c=qc), None, {"category": q, **({"colour": qc} if "{c}" in text else {})}

    return _Draft("absent-category", objs, express)


_BUILDERS = {"semantic": _semantic, "appearance": _appearance, "spatial": _spatial, "acoustic": _acoustic,
             "temporal": _temporal, "null": _null}


def plan_scene(split: str, index: int, seed: int = 0, config: SceneConfig = SceneConfig()) -> ScenePlan:
    """Plan scene ``index`` of ``split`` (deterministic in all arguments; no media needed).

    Args:
        split: one of SPLITS. index: scene number >= 0. seed: benchmark seed (any int).
        config: rendering settings; only ``duration_sec`` and the aspect ratio change the plan.

    Returns:
        The :class:`ScenePlan` (objects in drawing order, random order w.r.t. roles).

    Raises:
        ConfigError: invalid split, index, seed or config.
    """
    validate_split(split)
    _check_index(index)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    validate_config(config)
    kind = kind_for(split, index, seed)
    rng = np.random.default_rng(derive_seed("scene", split, int(index), int(seed)))
    for _ in range(200):
        draft = _BUILDERS[kind](rng, split, config)
        if draft is None:
            continue
        placed = layout(rng, draft.objects, config)
        if placed is None:
            continue
        order = [int(i) for i in rng.permutation(len(placed))]
        placed = [placed[i] for i in order]
        result = draft.express(rng, placed)
        if result is None:
            continue
        text, target_obj, cue = result
        target = None
        for i, o in enumerate(placed):
            if o is target_obj:
                target = i
                o.role = "target"
            elif o.role == "target":  # relation-noun: the relation decided which of the pair it is
                o.role = "contrast"
        text = ex.finish(rng, text)
        bg = {"style": int(rng.integers(5)), "crop": [float(v) for v in rng.uniform(0.0, 1.0, 3)],
              "tint": [float(v) for v in rng.uniform(-1.0, 1.0, 3)], "level": float(rng.uniform(0.28, 0.5)),
              "contrast": float(rng.uniform(0.12, 0.3))}
        plan = ScenePlan(split, int(index), int(seed), kind, draft.variant, text, target, placed, bg,
                         float(round(rng.uniform(-52.0, -42.0), 2)), cue)
        _check_plan(plan)
        return plan
    raise ConfigError(f"could not plan scene {scene_id(split, index)} at {config.width}x{config.height}; "
                      "is the frame too narrow for the objects?")


def _check_plan(plan: ScenePlan) -> None:
    """Internal consistency of the split rules (cheap; an AssertionError here is a bug)."""
    cats = [o.category for o in plan.objects]
    pairs = held_out_pairs_in(cats)
    if plan.split == "test-unseen":
        assert pairs, plan
        if plan.target is not None:
            tc = cats[plan.target]
            assert any(tc in p for p in pairs), plan
    else:
        assert not pairs, plan
    assert (plan.target is None) == (plan.kind == "null"), plan

