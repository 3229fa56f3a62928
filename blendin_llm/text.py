"""Text out of tokens: incremental detokenization and stop strings with hold-back."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas whose concatenation is the decoded text.

    It decodes a short window (tokens since the last emitted boundary), so the cost per token does
    not grow with the length of the answer, and it holds back an incomplete UTF-8 character (the
    replacement character at the end of a window) until the bytes that complete it arrive.
    """

    __slots__ = ("tokenizer", "ids", "prefix_offset", "read_offset")

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :] if text.startswith(prefix) else ""


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text`` (which no UTF-8 encoder accepts), or None.

    Such text comes from ``json.loads('"\\\\ud800"')`` or from bytes decoded with
    ``errors='surrogateescape'`` (a non-UTF-8 command-line argument)."""
    m = _SURROGATE.search(text)
    return None if m is None else m.start()
