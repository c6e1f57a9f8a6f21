"""The command vocabulary: word lists and rules from YAML -> a JSGF grammar and a matcher.

One file (``config/voice_vocabulary.yaml``, see its header for the format) defines what a spoken
robot command can be. :class:`Vocabulary` turns it into

* a JSGF grammar (W3C *JSpeech Grammar Format*, https://www.w3.org/TR/jsgf/) that the
  ``grammar`` ASR backend hands to pocketsphinx (``Decoder.set_jsgf_string``), so speech is
  only ever decoded into sentences of the grammar;
* a regular expression over normalised text with the same language, so a transcript of an
  open-vocabulary backend (pocketsphinx general LM, Whisper) can be checked against it;
* the set of words, so missing pronunciations are found before decoding.

Rules use a small JSGF subset: words, ``( a | b )`` alternatives, ``[ x ]`` optional parts and
``<name>`` references to a word list or another rule (no weights, tags, ``*`` or ``+``). The
rule ``command`` is the sentence start (JSGF ``public <command>``). The list ``templates`` of a
vocabulary file becomes the rule ``template``: the alternatives of all its expansions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from refavs_ros.errors import ConfigError

DEFAULT_VOCABULARY = "config/voice_vocabulary.yaml"
"""Shipped default vocabulary (relative to the package share directory)."""

LIST_KEYS = ("objects", "generic", "colours", "sizes", "positions", "ordinals", "sound_verbs", "loudness",
             "prefixes")
"""Word-list keys of a vocabulary file (all optional; a list entry may have several words)."""

TOP_RULE = "command"
"""Name of the sentence-start rule."""

_WORD_RE = re.compile(r"^[a-z][a-z']*$")
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_TOKEN_RE = re.compile(r"\s*(<[A-Za-z0-9_]+>|[()\[\]|]|[^\s()\[\]|<>]+)")
_PHONE_RE = re.compile(r"^[A-Z]{1,2}$")


def normalise_text(text: str) -> str:
    """Canonical form of a command for matching and scoring.

    Lower case; hyphens, underscores and slashes become spaces; every other character that is
    not a letter, digit, apostrophe or space is dropped; runs of spaces collapse. For example
    ``"Where is the red-coloured cup?"`` -> ``"where is the red coloured cup"``.

    Args:
        text: any string.

    Returns:
        The normalised text (possibly empty).
    """
    t = str(text).lower().replace("-", " ").replace("_", " ").replace("/", " ")
    t = re.sub(r"[^a-z0-9' ]+", " ", t)
    return " ".join(t.split())


# ------------------------------------------------------------------------ expansion syntax tree


@dataclass(frozen=True)
class _Word:
    word: str


@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Seq:
    items: tuple


@dataclass(frozen=True)
class _Alt:
    options: tuple


@dataclass(frozen=True)
class _Opt:
    item: object


def parse_expansion(text: str, where: str = "expansion") -> object:
    """Parse a JSGF-subset expansion into a syntax tree.

    Args:
        text: e.g. ``"the [ <colours> ] ( cup | mug )"``.
        where: what is parsed, for error messages (``"rule 'premod'"``).

    Returns:
        A tree of private node classes (word, reference, sequence, alternatives, optional).

    Raises:
        ConfigError: unbalanced brackets, empty alternatives, or a token that is not a
            lower-case word or ``<name>`` (named, with the text).
    """
    tokens = [m.group(1) for m in _TOKEN_RE.finditer(str(text))]
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", str(text)):
        raise ConfigError(f"{where}: cannot read {text!r} (only words, ( | ), [ ] and <name> are allowed)")
    pos = 0

    def alternatives(closing: str | None) -> object:
        nonlocal pos
        options = [sequence(closing)]
        while pos < len(tokens) and tokens[pos] == "|":
            pos += 1
            options.append(sequence(closing))
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def sequence(closing: str | None) -> object:
        nonlocal pos
        items: list = []
        while pos < len(tokens) and tokens[pos] not in ("|", ")", "]"):
            tok = tokens[pos]
            pos += 1
            if tok in ("(", "["):
                inner = alternatives(")" if tok == "(" else "]")
                want = ")" if tok == "(" else "]"
                if pos >= len(tokens) or tokens[pos] != want:
                    raise ConfigError(f"{where}: missing {want!r} in {text!r}")
                pos += 1
                items.append(_Opt(inner) if tok == "[" else inner)
            elif tok.startswith("<"):
                name = tok[1:-1]
                if not _NAME_RE.match(name):
                    raise ConfigError(f"{where}: bad reference {tok!r} in {text!r} (lower case names only)")
                items.append(_Ref(name))
            else:
                if not _WORD_RE.match(tok):
                    raise ConfigError(f"{where}: bad word {tok!r} in {text!r} (lower-case letters and "
                                      "apostrophes only; split hyphenated words)")
                items.append(_Word(tok))
        if not items:
            raise ConfigError(f"{where}: empty alternative in {text!r}")
        return items[0] if len(items) == 1 else _Seq(tuple(items))

    tree = alternatives(None)
    if pos != len(tokens):
        raise ConfigError(f"{where}: unexpected {tokens[pos]!r} in {text!r}")
    return tree


def _jsgf(node: object) -> str:
    if isinstance(node, _Word):
        return node.word
    if isinstance(node, _Ref):
        return f"<{node.name}>"
    if isinstance(node, _Seq):
        return " ".join(_jsgf(i) for i in node.items)
    if isinstance(node, _Alt):
        return "( " + " | ".join(_jsgf(o) for o in node.options) + " )"
    if isinstance(node, _Opt):
        return f"[ {_jsgf(node.item)} ]"
    raise TypeError(node)


def _refs(node: object) -> set[str]:
    if isinstance(node, _Ref):
        return {node.name}
    if isinstance(node, _Seq):
        return set().union(*(_refs(i) for i in node.items))
    if isinstance(node, _Alt):
        return set().union(*(_refs(o) for o in node.options))
    if isinstance(node, _Opt):
        return _refs(node.item)
    return set()


def _words(node: object) -> set[str]:
    if isinstance(node, _Word):
        return {node.word}
    if isinstance(node, _Seq):
        return set().union(*(_words(i) for i in node.items))
    if isinstance(node, _Alt):
        return set().union(*(_words(o) for o in node.options))
    if isinstance(node, _Opt):
        return _words(node.item)
    return set()


# ------------------------------------------------------------------------------- vocabulary


@dataclass
class Vocabulary:
    """A command vocabulary: word lists, JSGF-subset rules and extra pronunciations.

    Build it with :meth:`load` (a YAML file) or :meth:`from_dict`.

    Attributes:
        lists: word-list name -> entries (each entry one or more lower-case words).
        rules: rule name -> expansion text; must contain :data:`TOP_RULE` (``command``).
        pronunciations: word -> ARPAbet phones (``"L EH F T M OW S T"``) or a list of them: for
            words the recogniser's dictionary lacks, and extra variants of words it has (the
            grammar backend adds them as alternates ``word(2)``, ``word(3)``, ...).
        source: the file it came from ("" when built from a dict).
    """

    lists: dict[str, list[str]]
    rules: dict[str, str]
    pronunciations: dict[str, str | list[str]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self._trees: dict[str, object] = {}
        where = f" of {self.source}" if self.source else ""
        for name, entries in self.lists.items():
            if not _NAME_RE.match(name):
                raise ConfigError(f"vocabulary{where}: bad list name {name!r}")
            if not isinstance(entries, list) or not entries:
                raise ConfigError(f"vocabulary{where}: list {name!r} must be a non-empty list of words")
            options = []
            for e in entries:
                words = normalise_text(str(e)).split()
                if not words or not all(_WORD_RE.match(w) for w in words):
                    raise ConfigError(f"vocabulary{where}: bad entry {e!r} in list {name!r}")
                options.append(_Seq(tuple(_Word(w) for w in words)) if len(words) > 1 else _Word(words[0]))
            self._trees[name] = options[0] if len(options) == 1 else _Alt(tuple(options))
        for name, text in self.rules.items():
            if not _NAME_RE.match(name):
                raise ConfigError(f"vocabulary{where}: bad rule name {name!r}")
            if name in self._trees:
                raise ConfigError(f"vocabulary{where}: {name!r} is both a word list and a rule")
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"vocabulary{where}: rule {name!r} must be a non-empty string")
            self._trees[name] = parse_expansion(text, f"vocabulary{where}: rule {name!r}")
        if TOP_RULE not in self.rules:
            raise ConfigError(f"vocabulary{where}: no rule {TOP_RULE!r} (the sentence start)")
        for name, tree in self._trees.items():
            missing = _refs(tree) - set(self._trees)
            if missing:
                raise ConfigError(f"vocabulary{where}: rule {name!r} refers to undefined {sorted(missing)}")
        self._check_no_recursion()
        for word, value in self.pronunciations.items():
            variants = value if isinstance(value, list) else [value]
            for phones in variants:
                if not _WORD_RE.match(str(word)) or not isinstance(phones, str) or not phones.split() or not all(
                        _PHONE_RE.match(p) for p in phones.split()):
                    raise ConfigError(f"vocabulary{where}: bad pronunciation {word!r}: {phones!r} "
                                      "(ARPAbet phones in capitals, e.g. 'K AE T')")
        self._regex_cache: dict[str, re.Pattern] = {}

    def _check_no_recursion(self) -> None:
        state: dict[str, int] = {}

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ConfigError(f"vocabulary: recursive rules {' -> '.join(path + (name,))} are not supported")
            state[name] = 1
            for ref in sorted(_refs(self._trees[name])):
                visit(ref, path + (name,))
            state[name] = 2

        visit(TOP_RULE, ())

    # ------------------------------------------------------------------------- constructors

    @classmethod
    def from_dict(cls, data: dict, source: str = "") -> Vocabulary:
        """Build from the parsed YAML mapping (keys: the :data:`LIST_KEYS` lists, any other
        list under ``lists``, ``rules``, ``templates`` (-> rule ``template``), ``pronunciations``).

        Raises:
            ConfigError: unknown keys or malformed content (named).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"vocabulary {source or ''}: top level must be a mapping, got {type(data).__name__}")
        known = set(LIST_KEYS) | {"lists", "rules", "templates", "pronunciations"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"vocabulary {source}: unknown keys {unknown}; expected some of {sorted(known)}")
        lists = {k: list(data[k]) if isinstance(data[k], list) else data[k] for k in LIST_KEYS if k in data}
        extra = data.get("lists") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"vocabulary {source}: 'lists' must be a mapping of name -> words")
        lists.update(extra)
        rules = data.get("rules") or {}
        prons = data.get("pronunciations") or {}
        if not isinstance(rules, dict) or not isinstance(prons, dict):
            raise ConfigError(f"vocabulary {source}: 'rules' and 'pronunciations' must be mappings")
        templates = data.get("templates")
        if templates is not None:
            if (not isinstance(templates, list) or not templates
                    or not all(isinstance(t, str) and t.strip() for t in templates)):
                raise ConfigError(f"vocabulary {source}: 'templates' must be a non-empty list of expansions")
            if "template" in rules:
                raise ConfigError(f"vocabulary {source}: define 'templates' or a rule 'template', not both")
            rules = {**rules, "template": " | ".join(f"( {t} )" for t in templates)}
        return cls(lists=lists, rules={str(k): v for k, v in rules.items()},
                   pronunciations={str(k): ([str(x) for x in v] if isinstance(v, list) else str(v))
                                   for k, v in prons.items()}, source=source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Vocabulary:
        """Read a vocabulary YAML file.

        Args:
            path: the file; None = the shipped default :data:`DEFAULT_VOCABULARY`.

        Returns:
            The :class:`Vocabulary`.

        Raises:
            ConfigError: the file does not exist (its path named), is not valid YAML, or its
                content is malformed.
        """
        if path is None:
            from refavs_ros.errors import ModelLoadError
            from refavs_ros.resources import find_shipped

            try:
                path = find_shipped(DEFAULT_VOCABULARY)
            except ModelLoadError as exc:  # report as a config problem
                raise ConfigError(f"default voice vocabulary not found: {exc}") from None
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"voice vocabulary file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"voice vocabulary file {str(p)!r} is not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(p))

    # ---------------------------------------------------------------------------- outputs

    def pronunciation_list(self, word: str) -> list[str]:
        """The vocabulary's own pronunciations of ``word`` (ARPAbet strings; [] when none)."""
        value = self.pronunciations.get(word)
        if value is None:
            return []
        return list(value) if isinstance(value, list) else [value]

    def words(self) -> set[str]:
        """Every word the grammar can produce (lower case)."""
        return set().union(*(_words(t) for t in self._trees.values()))

    def list_words(self, name: str) -> set[str]:
        """Words of one list (e.g. ``"objects"``); empty set for an unknown list."""
        tree = self._trees.get(name) if name in self.lists else None
        return _words(tree) if tree is not None else set()

    def used_rules(self, top: str = TOP_RULE) -> list[str]:
        """Names of the lists and rules reachable from ``top``, ``top`` first."""
        order, seen = [], set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            order.append(name)
            for ref in sorted(_refs(self._trees[name])):
                visit(ref)

        visit(top)
        return order

    def sentence_count(self, top: str = TOP_RULE) -> int:
        """Number of word sequences rule ``top`` expands to (duplicates counted; no recursion).

        Raises:
            ConfigError: unknown rule.
        """
        if top not in self._trees:
            raise ConfigError(f"vocabulary has no rule or list {top!r}")
        memo: dict[int, int] = {}

        def count(node: object) -> int:
            key = id(node)
            if key not in memo:
                if isinstance(node, _Word):
                    memo[key] = 1
                elif isinstance(node, _Ref):
                    memo[key] = count(self._trees[node.name])
                elif isinstance(node, _Seq):
                    n = 1
                    for item in node.items:
                        n *= count(item)
                    memo[key] = n
                elif isinstance(node, _Alt):
                    memo[key] = sum(count(o) for o in node.options)
                else:  # _Opt
                    memo[key] = 1 + count(node.item)
            return memo[key]

        return count(self._trees[top])

    def sentences(self, top: str = TOP_RULE, limit: int = 200_000) -> list[str]:
        """Every sentence of rule ``top``: distinct normalised strings, sorted.

        The ``moonshine`` backend searches exactly this set (a token prefix tree of it). The
        default vocabulary has 21 570 (about 0.02 s to enumerate).

        Args:
            top: the rule to expand (default: the sentence start ``command``).
            limit: refuse grammars with more expansions than this.

        Raises:
            ConfigError: unknown rule, or more than ``limit`` expansions (with the count).
        """
        n = self.sentence_count(top)
        if n > limit:
            raise ConfigError(f"vocabulary{' ' + self.source if self.source else ''} expands to {n} sentences, "
                              f"more than {limit}: narrow its rules (or use the 'grammar' backend, which "
                              "searches the grammar without listing it)")

        def expand(node: object) -> list[tuple[str, ...]]:
            if isinstance(node, _Word):
                return [(node.word,)]
            if isinstance(node, _Ref):
                return expand(self._trees[node.name])
            if isinstance(node, _Seq):
                out: list[tuple[str, ...]] = [()]
                for item in node.items:
                    tails = expand(item)
                    out = [a + b for a in out for b in tails]
                return out
            if isinstance(node, _Alt):
                return [s for o in node.options for s in expand(o)]
            return [()] + expand(node.item)  # _Opt

        return sorted({" ".join(words) for words in expand(self._trees[top]) if words})

    def to_jsgf(self, wake_phrase: str = "", grammar_name: str = "refavs_commands") -> str:
        """The JSGF grammar text (JSGF V1.0) with public rule ``<utterance>``.

        Args:
            wake_phrase: when not empty, an OPTIONAL leading phrase (``[ hey robot ]``): the
                decoder can then tell a command with its wake phrase from one without, and the
                recogniser rejects the latter.
            grammar_name: the JSGF grammar name.

        Returns:
            The grammar text; rule names are prefixed ``r_`` so they cannot clash with JSGF
            keywords.

        Raises:
            ConfigError: a wake phrase with characters other than letters and spaces.
        """
        lines = ["#JSGF V1.0;", f"grammar {grammar_name};"]
        wake = normalise_text(wake_phrase)
        if wake and not all(_WORD_RE.match(w) for w in wake.split()):
            raise ConfigError(f"wake phrase {wake_phrase!r} must be words of letters")
        top = f"[ {wake} ] <r_{TOP_RULE}>" if wake else f"<r_{TOP_RULE}>"
        lines.append(f"public <utterance> = {top};")
        for name in self.used_rules():
            body = _jsgf(self._trees[name])
            body = re.sub(r"<([a-z0-9_]+)>", r"<r_\1>", body)
            lines.append(f"<r_{name}> = {body};")
        return "\n".join(lines) + "\n"

    def _regex(self, node: object) -> str:
        if isinstance(node, _Word):
            return re.escape(node.word) + " "
        if isinstance(node, _Ref):
            return self._regex(self._trees[node.name])
        if isinstance(node, _Seq):
            return "".join(self._regex(i) for i in node.items)
        if isinstance(node, _Alt):
            return "(?:" + "|".join(self._regex(o) for o in node.options) + ")"
        if isinstance(node, _Opt):
            return "(?:" + self._regex(node.item) + ")?"
        raise TypeError(node)

    def pattern(self, top: str = TOP_RULE) -> re.Pattern:
        """Compiled regex of rule ``top`` over normalised text plus a trailing space.

        Use :meth:`matches` rather than this directly.
        """
        if top not in self._regex_cache:
            if top not in self._trees:
                raise ConfigError(f"vocabulary has no rule or list {top!r}")
            self._regex_cache[top] = re.compile(self._regex(self._trees[top]))
        return self._regex_cache[top]

    def matches(self, text: str) -> bool:
        """Whether the normalised ``text`` is a sentence of the grammar (rule ``command``)."""
        t = normalise_text(text)
        return bool(t) and self.pattern().fullmatch(t + " ") is not None

    def mentions(self, text: str, lists: tuple[str, ...] = ("objects", "generic")) -> bool:
        """Whether ``text`` contains at least one word of the given lists (a looser test than
        :meth:`matches`, for open-vocabulary transcripts)."""
        words = set(normalise_text(text).split())
        return any(words & self.list_words(name) for name in lists)
