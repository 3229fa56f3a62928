"""The requests a decoding coroutine makes of its models, and how to answer them one by one.

A sequence's decoding (``Generation.run``) and a guide's catch-up (``blendin_llm.guides``) are
coroutines: they yield ``Forward`` (run a model on some tokens) and ``Fetch`` (read a tensor back to
the host) and are sent the answers. ``answer``/``complete`` answer them alone; the scheduler
(``blendin_llm.scheduler``) answers many sequences' requests together, one batched forward pass per
model and one host read per round.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple, TypeVar

import torch

from .backends.base import ModelBackend, SequenceState


class Forward(NamedTuple):
    """A request to run ``backend`` on ``ids`` (appended to ``state``); the answer is the logits of
    the last ``n_last`` positions (``ModelBackend.forward``). ``step``: the base's forward that
    starts a decoding step; a batching driver runs these together, once every sequence got there."""

    backend: ModelBackend
    state: SequenceState
    ids: list[int]
    n_last: int = 1
    step: bool = False


class Fetch(NamedTuple):
    """A request to read a 1-D tensor back to the host; the answer is ``tensor.tolist()``. A
    batching driver reads the tensors of every sequence at once (one device sync per round)."""

    tensor: torch.Tensor


_T = TypeVar("_T")

# a coroutine of requests: yields ``Forward`` and ``Fetch``, is sent their answers, returns a _T
Steps = Generator[Forward | Fetch, Any, _T]


def answer(item: Forward | Fetch) -> Any:
    """The answer to one request, computed alone (no batching)."""
    if isinstance(item, Fetch):
        return item.tensor.tolist()
    return item.backend.forward(item.state, item.ids, item.n_last)


def complete(steps: Steps[_T]) -> _T:
    """Run a coroutine of requests (e.g. a guide's ``probs``) to its return value, answering each
    request alone."""
    try:
        item = next(steps)
        while True:
            item = steps.send(answer(item))
    except StopIteration as stop:
        return stop.value
