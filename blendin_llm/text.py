"""Text out of tokens: incremental detokenization and stop strings with hold-back."""

from __future__ import annotations

import re
from typing import Any, Sequence


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


class StopMatcher:
    """Releases text only when it can no longer be the start of a stop string.

    ``push(delta)`` returns ``(text to emit, matched stop string or None)``. A stop string split
    across tokens is never emitted, not even in part; text after a match is not emitted (it is
    kept in ``after`` for a caller that wants it).
    """

    __slots__ = ("stops", "held", "after", "_max_hold")

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.held = ""
        self.after = ""
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1

    def push(self, delta: str) -> tuple[str, str | None]:
        if not self.stops:
            return delta, None
        buf = self.held + delta
        best, hit = -1, None
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (best == -1 or i < best):
                best, hit = i, s
        if hit is not None:
            self.held = ""
            self.after = buf[best + len(hit):]
            return buf[:best], hit
        keep = 0
        for n in range(min(self._max_hold, len(buf)), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                keep = n
                break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class LeadingSpace:
    """Drops the one space that separates a plain-format answer from its ``Assistant:`` prefix."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False

    def push(self, delta: str) -> tuple[str, str | None]:
        if self.started or not delta:
            return delta, None
        self.started = True
        return (delta[1:] if delta[0] == " " else delta), None

    def flush(self) -> str:
        return ""


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text`` (which no UTF-8 encoder accepts), or None.

    Such text comes from ``json.loads('"\\\\ud800"')`` or from bytes decoded with
    ``errors='surrogateescape'`` (a non-UTF-8 command-line argument)."""
    m = _SURROGATE.search(text)
    return None if m is None else m.start()
