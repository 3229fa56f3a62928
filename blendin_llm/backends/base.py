"""The one small protocol every model sits behind: next-token logits with incremental state.

A backend holds a loaded model and its tokenizer and no per-sequence state. Per-sequence state (a KV
cache, the tokens it covers) lives in a ``SequenceState`` that the engine owns, so several sequences
can later be decoded as a batch, and a remote backend (an OpenAI-compatible server) can keep its own
kind of state behind the same calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from ..config import ModelSpec
from ..errors import PromptError
from ..prompts import Message, render_prompt
from ..text import lone_surrogate


class SequenceState:
    """What a backend knows about one sequence: the token ids it has consumed, and its cache."""

    __slots__ = ("tokens", "cache")

    def __init__(self, cache: Any = None) -> None:
        self.tokens: list[int] = []
        self.cache = cache

    def __len__(self) -> int:
        return len(self.tokens)


class ModelBackend(ABC):
    """Interface of a model: prompt encoding, detokenization, and incremental next-token logits."""

    spec: ModelSpec
    tokenizer: Any

    @property
    def name(self) -> str:
        return self.spec.name or self.spec.source or type(self).__name__

    # -- facts about the model -------------------------------------------------------------
    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def logits_width(self) -> int:
        """Width of the logits ``forward`` returns (may exceed the tokenizer's size: padding)."""

    @property
    @abstractmethod
    def context_length(self) -> int | None:
        """Most positions the model can attend to, or None if unknown/unbounded."""

    @property
    @abstractmethod
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def n_tokens(self) -> int:
        """How many token ids the tokenizer has (ids from it up to ``logits_width`` have no text)."""
        return len(self.tokenizer)

    def vocab(self) -> dict[str, int]:
        """Token string -> id; two backends with equal vocabularies share token ids."""
        return self.tokenizer.get_vocab()

    # -- text ------------------------------------------------------------------------------
    def encode_prompt(self, messages: list[Message], answer_prefix: str = "") -> list[int]:
        text, add_special = render_prompt(messages, self.spec, self.tokenizer, answer_prefix)
        at = lone_surrogate(text)
        if at is not None:  # from tool descriptions, call arguments, a template: any text part
            raise PromptError(
                f"the prompt rendered for {self.name!r} has a lone surrogate {text[at]!r} at "
                f"character {at} (...{text[max(0, at - 30) : at]!r}); it is not valid Unicode "
                "text: remove it from the messages, tools or schema, or decode them with "
                "errors='replace'"
            )
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """A raw prompt's tokens (a completion prompt: no template, the tokenizer's own special
        tokens added, as OpenAI-compatible servers' ``/v1/completions`` do)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_pieces(self) -> list[tuple[str, list[int]]]:
        """(text, bytes) of every token id, for log-prob reports; computed once per backend."""
        pieces = getattr(self, "_pieces", None)
        if pieces is None:
            from ..vocab import token_bytes

            raw, specials = token_bytes(self.tokenizer)
            raw += [None] * max(0, self.logits_width - len(raw))
            pieces = [
                (b.decode("utf-8", errors="replace"), list(b))
                if b is not None
                else ((t := specials.get(i, "")), list(t.encode()))
                for i, b in enumerate(raw)
            ]
            self._pieces = pieces
        return pieces

    # -- incremental computation -------------------------------------------------------------
    @abstractmethod
    def new_state(self) -> SequenceState: ...

    @abstractmethod
    def forward(self, state: SequenceState, ids: list[int], n_last: int = 1) -> torch.Tensor:
        """Consume ``ids`` (appended to the state) and return float32 logits [logits_width] of the
        token that follows (with ``n_last > 1``: [n_last, logits_width] for the last ``n_last``
        positions, ``n_last <= len(ids)``). Cached positions are never recomputed."""

    def forward_batch(
        self, states: list[SequenceState], ids: list[list[int]], n_last: list[int]
    ) -> list[torch.Tensor]:
        """``forward`` for several sequences at once (continuous batching): one result per
        sequence, each exactly what ``forward`` gives for it. This default runs them one by one;
        a backend that can share a pass among sequences overrides it. A backend whose calls
        fail one sequence at a time (a remote server) may put the exception in that sequence's
        place; ``forward`` raises it."""
        return [self.forward(s, i, n) for s, i, n in zip(states, ids, n_last)]

    @abstractmethod
    def rollback(self, state: SequenceState, length: int) -> None:
        """Forget everything after the first ``length`` tokens of the state."""

    # -- for backends that run elsewhere (``blendin_llm.backends.remote``) -----------------------
    @property
    def top_k_approximation(self) -> int | None:
        """None when ``forward`` gives the whole distribution; k when only the top-k log-probs are
        known (a remote server): the rest of the mass is spread evenly over the other ids, and the
        engine then chooses tokens among the union of the top-k lists of the distributions that
        took part (``Generation``)."""
        return None

    def set_sampling(
        self, state: SequenceState, temperature: float, top_p: float, top_k: int, seed: int | None
    ) -> None:
        """How the sequence of ``state`` samples, for a backend that samples ahead by itself (a
        remote server proposing a chunk of tokens); others ignore it."""

    def proposal(self, state: SequenceState) -> int | None:
        """The token the model itself sampled to follow ``state`` (a remote server's own draw,
        from its whole distribution), or None. The engine takes it at a step where no guide was
        consulted and nothing changes the base's distribution, so sampled answers keep the
        base's exact distribution there."""
        return None

    def release(self, state: SequenceState) -> None:
        """The sequence is finished: let go of what it holds besides its cache (a remote request
        still arriving). The default holds nothing else."""

    def cancel(self, state: SequenceState) -> None:
        """The sequence was abandoned (called from the caller's thread): stop its work in flight
        (a remote request). The default has nothing to stop."""
