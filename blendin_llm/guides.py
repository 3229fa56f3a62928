"""Guide adapters: how a guide reads the answer and gives its next-token distribution in the
base's token space, each owning its cache and its catch-up.

``SameVocabGuide`` shares the base's vocabulary and consumes the committed token ids; a
``CrossVocabGuide`` has its own vocabulary and reads the committed answer as bytes, in its own
tokens. Both are consulted lazily: tokens committed while a guide is not consulted cost nothing
until it is, and then it catches up in one forward pass. ``probs`` is a coroutine of requests
(``blendin_llm.model_calls``).
"""

from __future__ import annotations

import torch

from .backends.base import ModelBackend, SequenceState
from .model_calls import Forward, Steps
from .vocab import VocabMap, common_prefix, complete_utf8


class SameVocabGuide:
    """A guide that shares the base's vocabulary: it consumes the committed token ids themselves.

    Tokens chosen while it is not consulted wait in ``pending`` and are consumed, with its prompt on
    first use, in one forward pass when it is next consulted."""

    __slots__ = ("backend", "state", "pending", "eos")

    def __init__(self, backend: ModelBackend, prompt_ids: list[int]) -> None:
        self.backend = backend
        self.state: SequenceState = backend.new_state()
        self.pending: list[int] = list(prompt_ids)
        self.eos = backend.eos_token_ids

    def push(self, token: int) -> None:
        self.pending.append(token)

    def probs(self, answer_text: str, width: int) -> Steps[tuple[torch.Tensor, int]]:
        """Catch up on everything not seen yet; (distribution over base ids [width], tokens run)."""
        n = len(self.pending)
        logits = yield Forward(self.backend, self.state, self.pending)
        self.pending = []
        probs = torch.softmax(logits, -1)
        if probs.shape[0] > width:  # ids past the base's width are padding: renormalise without
            probs = probs[:width] / probs[:width].sum()
        elif probs.shape[0] < width:
            probs = torch.nn.functional.pad(probs, (0, width - probs.shape[0]))
        return probs, n


class CrossVocabGuide:
    """A guide with its own vocabulary: it reads the committed answer as bytes, in its own tokens.

    Its tokens for the answer (``path``) follow the guide's own way of writing it. When consulted,
    the first token of the new text is the guide's most likely reading of it (``VocabMap.reading``,
    from its distribution at the end of the path, which it has already): where the guide chose the
    text itself, its own tokens are kept. (A re-tokenization from scratch would, for example, merge
    SmolLM2's ``"\\n"`` + ``"\\n"`` into ``"\\n\\n"``, after which it writes something
    else.) The rest of the new text, which the guide did not choose, is tokenized as the guide's
    tokenizer does, with byte tokens for bytes that do not make a whole character yet. Where the
    text ends inside the guide's likely token, its next-text distribution is marginalised over the
    guide tokens that extend the text (``project_healed``, ``project_extensions``). The path only
    grows; a consult runs one forward pass over the new tokens after rolling back the tentative
    last token(s)."""

    __slots__ = (
        "backend",
        "state",
        "prompt",
        "vmap",
        "eos",
        "last",
        "path",
        "head",
        "end",
        "seen",
        "committed",
    )

    def __init__(self, backend: ModelBackend, prompt_ids: list[int], vmap: VocabMap) -> None:
        self.backend = backend
        self.state: SequenceState = backend.new_state()
        self.prompt = list(prompt_ids)
        self.vmap = vmap
        m = vmap.guide_to_base
        self.eos = frozenset(int(m[e]) for e in backend.eos_token_ids if e < m.shape[0])
        self.last: torch.Tensor | None = None  # the last distribution, in base space
        self.seen: bytes | None = None  # the answer bytes it was computed for
        self.committed = bytearray()  # the bytes of the committed base tokens
        self.path: list[int] = []  # the guide's tokens for the answer's first len(head) bytes
        self.head = b""
        self.end: torch.Tensor | None = None  # the guide's distribution after prompt + path

    def push(self, token: int) -> None:
        """A committed base token: its bytes count even before they make a whole character."""
        b = self.vmap.base_bytes
        self.committed += (b[token] if token < len(b) else None) or b""

    def probs(self, answer_text: str, width: int) -> Steps[tuple[torch.Tensor, int]]:
        """(distribution over base ids [width], tokens run), as a coroutine (see ``Forward``)."""
        data = bytes(self.committed)  # with bytes that do not make a whole character (yet)
        if not data.decode("utf-8", "replace").startswith(answer_text):
            data = answer_text.encode()  # a decoder that is more than the tokens' bytes
        if data == self.seen and self.last is not None:
            return self.last, 0  # nothing new since the last consult
        self.seen = data
        vm = self.vmap
        if not data.startswith(self.head):  # not a continuation of what was read so far
            self.path, self.head, self.end = [], b"", None
        rest = data[len(self.head) :]
        if not rest and self.end is not None:
            self.last = vm.project(self.end, width)
            return self.last, 0
        first: list[int] = []
        if rest and self.end is not None:
            t, inside = vm.reading(self.end, rest)
            if inside:  # the text ends inside the guide's likely token: nothing to fix yet
                return (yield from self._inside(rest, width))
            if t >= 0:
                first, rest = [t], rest[len(self._bytes([t])) :]
        tail = self._encode(rest)
        # the tail's tokens up to the last whole character before its last token are fixed; the
        # last one (and any that end inside a character) stay tentative: more text may extend them
        fixed = len(tail) - 1 if tail else 0
        while fixed > 0 and not complete_utf8(self.head[-4:] + self._bytes(first + tail[:fixed])):
            fixed -= 1
        new_path = self.path + first + tail[:fixed]
        wanted = self.prompt + new_path + tail[fixed:]
        n_last = len(tail) - fixed + 1 if tail else 1  # rows: the end of the new path .. the last
        logits, ran = yield from self._run(wanted, n_last)
        rows = torch.softmax(logits.reshape(n_last, -1), -1)
        if tail:
            self.last = vm.project_healed(rows[-2], rows[-1], tail[-1], width)
        else:
            self.last = vm.project(rows[-1], width)
        self.head += self._bytes(first + tail[:fixed])
        self.path, self.end = new_path, rows[0]
        return self.last, ran

    def _inside(self, rest: bytes, width: int) -> Steps[tuple[torch.Tensor, int]]:
        """The committed ``rest`` after the path ends inside the guide's likely next token."""
        assert self.end is not None  # called where the path's end distribution is known
        exact = self.vmap.guide_token(rest)
        if exact is None:
            self.last = self.vmap.project_extensions(self.end, rest, width)
            return self.last, 0
        logits, ran = yield from self._run(self.prompt + self.path + [exact], 1)
        self.last = self.vmap.project_healed(self.end, torch.softmax(logits, -1), exact, width)
        return self.last, ran

    def _encode(self, data: bytes) -> list[int]:
        """The guide's tokenization of ``data``; bytes that are not (yet) a whole character as
        the guide's byte tokens."""
        ids: list[int] = []
        pos = 0
        while pos < len(data):
            try:
                text, bad = data[pos:].decode(), len(data)
                end = bad
            except UnicodeDecodeError as e:
                text, bad, end = data[pos : pos + e.start].decode(), pos + e.start, pos + e.end
            if text:
                ids += self.backend.tokenizer(text, add_special_tokens=False)["input_ids"]
            for k in range(bad, end):  # (a vocabulary without byte tokens drops them)
                if (t := self.vmap.guide_token(data[k : k + 1])) is not None:
                    ids.append(t)
            pos = end
        return ids

    def _bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.vmap._g_bytes[i] or b"" for i in ids)

    def _run(self, wanted: list[int], n_last: int) -> Steps[tuple[torch.Tensor, int]]:
        """Bring the cache to ``wanted`` (rolling back what differs); (the logits of its last
        ``n_last`` positions, recomputed where they are cached already; tokens run)."""
        keep = common_prefix(self.state.tokens, wanted)
        start = min(keep, len(wanted) - n_last)
        if start < len(self.state):
            self.backend.rollback(self.state, start)
        new = wanted[start:]
        logits = yield Forward(self.backend, self.state, new, n_last)
        return logits, len(new)
