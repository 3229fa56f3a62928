"""Text filters: what decides, as the answer's text arrives piece by piece, which text is released
to the caller and where the answer ends (stop strings, a JSON object's end, a tool call's markup).

Every filter follows ``TextFilter``: ``push(delta)`` takes the newly decoded text and returns
``(text to release, None)``, or ``(text to release, stop)`` once the answer ends here (``stop``: the
stop string that matched, or ``""`` when the filter itself ended the answer); ``flush()`` releases
what is held back when the answer ends for another reason. The generic ones live here; the JSON and
tool-call filters are in ``blendin_llm.tools``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class TextFilter(Protocol):
    """A filter over the answer's text (see the module's docstring)."""

    def push(self, delta: str) -> tuple[str, str | None]: ...

    def flush(self) -> str: ...


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
            self.after = buf[best + len(hit) :]
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


class FilterChain:
    """Several text filters in a row; text a filter releases passes through the ones after it.
    When one ends the answer, the later ones release what they hold."""

    __slots__ = ("filters",)

    def __init__(self, filters: Sequence[TextFilter]) -> None:
        self.filters = list(filters)

    def push(self, delta: str) -> tuple[str, str | None]:
        text, hit = delta, None
        for f in self.filters:
            text, h = f.push(text)
            if hit is not None:
                text += f.flush()
            elif h is not None:
                hit = h
        return text, hit

    def flush(self) -> str:
        text = ""
        for f in self.filters:
            text = f.push(text)[0] + f.flush()
        return text


class StoppingCriteria:
    """Where an answer ends, asked at each chosen token: at an EOS token (the base's, or a guide's
    at a step where the guides were consulted: a guide that chose to end the answer ends it), or
    where the text filter ends it (a stop string, a JSON object's end, a tool call's markup). The
    token budget bounds the decoding loop itself.

    Args:
        base_eos: the base's end-of-sequence ids (empty with ``ignore_eos``).
        guide_eos: the guides' end-of-sequence ids, in the base's ids (empty with ``ignore_eos``).
        text: the answer's text filter (its stop strings, its JSON or tool-call filter).
    """

    __slots__ = ("base_eos", "guide_eos", "text")

    def __init__(self, base_eos: frozenset[int], guide_eos: frozenset[int], text: TextFilter):
        self.base_eos = base_eos
        self.guide_eos = guide_eos
        self.text = text

    def at_eos(self, token: int, consulted: bool) -> bool:
        """Whether the token ends the answer as an end-of-sequence token."""
        return token in self.base_eos or (consulted and token in self.guide_eos)

    def push(self, delta: str) -> tuple[str, str | None]:
        """The text filter's ``push``: (text to release, the stop found or None)."""
        return self.text.push(delta)

    def flush(self) -> str:
        """The text filter's ``flush``: what it held back, when the answer ends for another
        reason."""
        return self.text.flush()

    def stop_start(self, hit: str, text_end: int) -> int:
        """Where the stop string ``hit``, just matched in the decoded text up to ``text_end``,
        starts: the answer ends there (text a ``StopMatcher`` saw after the match is not part of
        it)."""
        filters = self.text.filters if isinstance(self.text, FilterChain) else [self.text]
        matcher = next((f for f in filters if isinstance(f, StopMatcher)), None)
        return text_end - len(hit) - len(matcher.after if matcher is not None else "")
