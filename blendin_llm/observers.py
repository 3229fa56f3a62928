"""What one decoding step produced, and the observers that record it.

The decoding loop (``Generation.run``) chooses a token (``Choice``), lets it join the answer
(``StepOutput``: the text it adds, what reaches the caller, whether the answer ends there) and hands
that to its observers, in the spirit of transformers' logits processors: each has one job. The
reliability tracker (``ReliabilityTracker.observe``) keeps the step's signals, ``TraceRecorder``
the per-token trace, ``LogprobRecorder`` the log-probs of the tokens whose text reached the caller.
Observers read; none changes the choice or the state of the decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from .results import TokenLogprob, TraceEntry


@dataclass
class Choice:
    """One step's chosen token with the numbers of its choice (plain floats, read back once)."""

    token: int
    prob: float  # its probability in the distribution it was chosen from
    base_prob: float  # ... and in the base's
    base_top1: float  # the base's top-1 probability (the gate reads it)
    consulted: bool  # the guides were consulted
    base_top: list[float]  # the base's top-K log-probs (uncertainty features)
    base_lp: float  # the chosen token's log-prob under the base
    alpha: float | None = None  # the guides' mean weight, when consulted
    guide_prob: float | None = None  # the token's mean probability under the guides
    logprob: TokenLogprob | None = None  # the OpenAI-shaped log-prob, when asked for
    final_top: list[float] | None = None  # the final distribution's top-K, when it differs
    lp: float | None = None  # ... and the token's log-prob in it
    steered: bool = False  # the token differs from the one the base alone would have chosen
    # per guide, when consulted: alpha, top-1 probability, top-1 agreement, top-k agreement, JS
    guide_stats: tuple[list[float], ...] | None = None


class StepOutput(NamedTuple):
    """A chosen token after it joined the answer."""

    step: int  # the step's position in the answer, from 0
    choice: Choice
    text: str  # the text it adds to the decoded answer ("" for an EOS token)
    released: str | None  # the text released to the caller now; None: no event at this step
    last: bool  # the answer ends here (an EOS token, a stop string, a filter's end)


class StepObserver(Protocol):
    """Something that records each step's output (see the module's docstring)."""

    def observe(self, out: StepOutput) -> None: ...


class TraceRecorder:
    """The per-token trace (``Reliability.trace``): one ``TraceEntry`` per step."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[TraceEntry]) -> None:
        self.entries = entries

    def observe(self, out: StepOutput) -> None:
        c = out.choice
        self.entries.append(
            TraceEntry(
                index=out.step,
                token_id=c.token,
                text=out.text,
                source="blend" if c.consulted else "base",
                alpha=c.alpha,
                base_top1=c.base_top1,
                base_prob=c.base_prob,
                guide_prob=c.guide_prob,
                prob=c.prob,
            )
        )


class LogprobRecorder:
    """The log-probs of the tokens whose step released text to the caller (an EOS token and a
    token that only completed a stop string release none, as in OpenAI's log-probs)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[TokenLogprob] = []

    def observe(self, out: StepOutput) -> None:
        if out.released is not None:
            assert out.choice.logprob is not None  # chosen with log-probs when they are asked for
            self.items.append(out.choice.logprob)
