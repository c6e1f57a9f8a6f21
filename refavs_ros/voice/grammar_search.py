"""Grammar-constrained decoding for attention encoder-decoder recognisers (``moonshine`` backend).

An attention decoder (Moonshine, Whisper) scores any token sequence given the audio:
``log p(y | x) = sum_t log p(y_t | y_<t, x)``. Restricting its search to the sentences of the
command grammar turns an open-vocabulary recogniser into a command recogniser that can only
output commands -- the role the JSGF grammar plays for pocketsphinx -- while keeping the
model's acoustic and language knowledge. This is the token-prefix-tree ("trie") constrained
beam search of grammar-constrained / contextual-biasing ASR (e.g. Le et al., "Contextualized
streaming end-to-end speech recognition with trie-based deep biasing", Interspeech 2021; the
hard constraint used here is the limit of that bias).

* :class:`TokenTrie`: the token sequences of every grammar sentence
  (:meth:`refavs_ros.voice.vocabulary.Vocabulary.sentences`) in the surface forms the model
  writes (sentence case, optional final full stop), sharing prefixes.
* :func:`constrained_beam_search`: beam search over the trie; every finished hypothesis is a
  grammar sentence with its total log-probability (end-of-sentence token included).
  In the same decoder calls, one more row decodes greedily without the grammar: the model's own
  best guess, whose score is the reference of the confidence (a likelihood ratio, as the phone
  loop is for pocketsphinx).

The model is reached only through :class:`StepDecoder` (rows of token histories, one batched
decoder call per step), so the search is tested with a plain numpy stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from refavs_ros.errors import ConfigError

END = -1
"""Key of a trie node's finished sentence (token ids are >= 0)."""


class StepDecoder(Protocol):
    """A decoder advanced by whole batches of rows (token histories sharing one audio input).

    ``begin()`` starts with one empty row. ``advance(parents, tokens)`` builds new rows, row
    ``i`` = row ``parents[i]`` of the previous call (or the empty row) followed by
    ``tokens[i]``, and returns their next-token log-probabilities: float (len(tokens), V),
    each row a log-softmax over the vocabulary of V tokens.
    """

    def begin(self) -> None: ...

    def advance(self, parents: Sequence[int], tokens: Sequence[int]) -> np.ndarray: ...


def surface_forms(sentence: str) -> list[str]:
    """How a transcribing model writes a normalised command: as is and in sentence case, each
    with and without a final full stop (``"the cup"`` -> ``the cup``, ``The cup``, ``the cup.``,
    ``The cup.``); all normalise back to ``sentence``."""
    forms = [sentence] if not sentence or sentence[0].upper() == sentence[0] else [sentence, sentence[0].upper() + sentence[1:]]
    return [f + tail for f in forms for tail in ("", ".")]


class TokenTrie:
    """Prefix tree of token sequences, each ending in a sentence.

    ``root`` maps a token id to a child node (the same kind of dict); key :data:`END` holds the
    normalised sentence a path spells.

    Args:
        sentences: normalised sentences (e.g. ``Vocabulary.sentences()``).
        encode: text -> token ids (the model's tokenizer, no special tokens).
        forms: sentence -> the texts to encode (default :func:`surface_forms`).
        prefixes: optional leading phrases (e.g. a wake phrase); each sentence is added with and
            without each prefix (``"robot the cup"``), the prefix kept in the END text.

    Raises:
        ConfigError: no sentences, or a sentence whose encoding is empty.
    """

    def __init__(self, sentences: Iterable[str], encode: Callable[[str], list[int]], *,
                 forms: Callable[[str], list[str]] = surface_forms, prefixes: Sequence[str] = ()) -> None:
        self.root: dict = {}
        count = 0
        for sentence in sentences:
            for full in [sentence] + [f"{p} {sentence}" for p in prefixes if p]:
                for text in forms(full):
                    ids = list(encode(text))
                    if not ids:
                        raise ConfigError(f"the tokenizer encodes command {text!r} to no tokens")
                    node = self.root
                    for t in ids:
                        node = node.setdefault(t, {})
                    node[END] = full
            count += 1
        if not count:
            raise ConfigError("the grammar has no sentences to search")


@dataclass(frozen=True)
class Completion:
    """A finished hypothesis of :func:`constrained_beam_search`.

    Attributes:
        text: the normalised sentence.
        logprob: natural-log probability of its tokens and the end token given the audio.
        tokens: number of scored tokens (sentence tokens + the end token).
    """

    text: str
    logprob: float
    tokens: int

    def normalised(self, alpha: float) -> float:
        """``logprob / tokens ** alpha``: the length-normalised score (alpha 0 = none)."""
        return self.logprob / self.tokens ** alpha


@dataclass(frozen=True)
class SearchResult:
    """What :func:`constrained_beam_search` found.

    Attributes:
        completions: every finished grammar hypothesis (a sentence may appear more than once,
            from different surface forms), best total log-probability first; empty when none
            finished within the step limit.
        greedy_tokens: the model's unconstrained greedy transcript (token ids, no start / end
            token); empty when not asked for.
        greedy_logprob: its total natural-log probability, end token included when reached.
    """

    completions: list[Completion]
    greedy_tokens: list[int]
    greedy_logprob: float


def constrained_beam_search(decoder: StepDecoder, trie: TokenTrie, *, start: int, eos: int, beam: int = 8,
                            max_steps: int = 48, greedy: bool = False, margin: float = float("inf")) -> SearchResult:
    """Beam search restricted to the paths of ``trie`` (and, optionally, free greedy decoding in
    the same decoder calls).

    Every step scores each live hypothesis's allowed next tokens (its trie children, plus
    ``eos`` where the path spells a whole sentence, which finishes it), keeps the ``beam`` best
    by total log-probability and advances the decoder by one batched call. It stops when no
    hypothesis is live or after ``max_steps`` tokens. Candidates more than ``margin`` nats below
    the step's best are dropped too (the beam threshold of speech decoders), so the search ends
    once only hopeless hypotheses remain. With ``greedy``, one more row follows the
    model's arg-max token at every step until it emits ``eos``: the unconstrained reference the
    confidence is measured against, at the cost of one extra row per call instead of a second
    pass.

    Args:
        decoder: the model (:class:`StepDecoder`).
        trie: the allowed token sequences.
        start: decoder start token id. eos: end-of-sentence token id.
        beam: live hypotheses kept per step, >= 1.
        max_steps: token limit (a hypothesis still live then is dropped).
        greedy: also decode greedily (:attr:`SearchResult.greedy_tokens`).
        margin: beam threshold (nats, > 0; inf = beam width only).

    Returns:
        A :class:`SearchResult`.

    Raises:
        ConfigError: beam < 1 or max_steps < 1.
    """
    if beam < 1 or max_steps < 1 or not margin > 0:
        raise ConfigError(f"beam and max_steps must be >= 1 and margin > 0, got {beam}, {max_steps}, {margin}")
    decoder.begin()
    logp = decoder.advance([0], [start])  # (1, V): row 0 is both the greedy row and the root
    live = [(0.0, 0, trie.root, 0)]  # (score, length, node, row in logp)
    done: list[Completion] = []
    g_tokens: list[int] = []
    g_score = 0.0
    g_row: int | None = 0 if greedy else None
    for _ in range(max_steps):
        parents: list[int] = []
        tokens: list[int] = []
        if g_row is not None:
            tok = int(np.argmax(logp[g_row]))
            g_score += float(logp[g_row, tok])
            if tok == eos:
                g_row = None
            else:
                g_tokens.append(tok)
                parents.append(g_row)
                tokens.append(tok)
        candidates = []
        for score, length, node, row in live:
            lp = logp[row]
            for tok, child in node.items():
                if tok == END:
                    done.append(Completion(child, score + float(lp[eos]), length + 1))
                else:
                    candidates.append((score + float(lp[tok]), row, tok, child, length + 1))
        candidates.sort(key=lambda c: -c[0])
        kept = [c for c in candidates[:beam] if c[0] >= candidates[0][0] - margin]
        if not kept and not parents:
            break
        first = len(parents)
        g_row = 0 if parents else None
        parents += [c[1] for c in kept]
        tokens += [c[2] for c in kept]
        logp = decoder.advance(parents, tokens)
        live = [(c[0], c[4], c[3], first + i) for i, c in enumerate(kept)]
    done.sort(key=lambda c: -c.logprob)
    return SearchResult(done, g_tokens, g_score)
