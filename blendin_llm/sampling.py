"""Choosing a token from the final distribution: penalties, then greedy or sampling.

The order at each step (``Generation._choose``):

1. the final log-distribution: the base's log-probs, or the blend when the guides were consulted;
2. the logits processors (``build_processors``): the penalties a call asked for, each a small
   object that changes the log-distribution and is told every chosen token (``push``); the result
   is renormalised, and it is the distribution the token is chosen from and log-probs report;
3. greedy argmax, or temperature -> top-k -> top-p -> one inverse-CDF draw with the step's
   uniform from ``SeedStream``.

Every penalty counts the tokens of the answer only (as OpenAI's frequency/presence penalties
do), never the prompt's: a factual answer must be free to use the question's words.
"""

from __future__ import annotations

import secrets
from typing import Protocol

import numpy as np
import torch

from .config import SamplingParams

_NEG_INF = float("-inf")


class SeedStream:
    """The uniforms of one call: one per step, each a function of (seed, step) only.

    Counter-based (numpy's Philox): the key is 128 bits hashed by ``numpy.random.SeedSequence``
    from the whole seed, so every bit of any Python integer matters (negative seeds are mapped
    injectively onto the non-negative ones first); the counter is the step. Nothing is shared
    with other calls or threads, and a row's draws do not depend on what else is decoded beside
    it. ``seed=None`` draws 128 bits of entropy from the OS.
    """

    __slots__ = ("key",)

    def __init__(self, seed: int | None) -> None:
        if seed is None:
            entropy = secrets.randbits(128)
        else:
            entropy = 2 * seed if seed >= 0 else -2 * seed - 1  # zigzag: injective onto >= 0
        self.key = np.random.SeedSequence(entropy).generate_state(2, np.uint64)

    def uniform(self, step: int) -> float:
        """A uniform float in [0, 1) with 53 random bits, for decoding step ``step``."""
        counter = np.array([step, 0, 0, 0], dtype=np.uint64)
        raw = int(np.random.Philox(key=self.key, counter=counter).random_raw())
        return (raw >> 11) * (1.0 / (1 << 53))


def sample(logp: torch.Tensor, params: SamplingParams, u: float) -> torch.Tensor:
    """Draw a token id (0-d tensor) from log-probabilities ``logp`` [V] with the uniform ``u``.

    Temperature scales log-probabilities (p ** (1/T), renormalised), then top-k keeps the k most
    likely tokens, then top-p keeps the smallest set whose probability reaches p (never fewer than
    the most likely token). The token is the one whose cumulative-probability interval holds
    ``u`` (inverse CDF, summed in float64), so a token of probability 0 is never drawn. The most
    likely log-prob is subtracted before dividing by T, so no temperature, however small,
    overflows: as T -> 0 this becomes greedy decoding.
    """
    d = logp - logp.max()
    scores = torch.where(d == 0, d, d / params.temperature)  # 0 / tiny T would be 0/0 in float32
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, _NEG_INF)
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        p = sorted_scores.softmax(-1)
        drop = p.cumsum(-1) - p >= params.top_p  # keep the token that crosses p
        drop[0] = False  # a top_p below float32's resolution still keeps the most likely token
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, _NEG_INF))
    cdf = scores.softmax(-1).double().cumsum(-1)
    i = torch.searchsorted(cdf, cdf[-1:] * u, right=True)[0]
    return i.clamp(max=cdf.shape[0] - 1)


# -- logits processors ----------------------------------------------------------------------------
class LogitsProcessor(Protocol):
    """One change to the final log-distribution (in the spirit of transformers' LogitsProcessor).

    ``__call__(logd)`` returns changed scores (the chain renormalises once at the end);
    ``push(token)`` is told each chosen token."""

    def __call__(self, logd: torch.Tensor) -> torch.Tensor: ...

    def push(self, token: int) -> None: ...


class RepetitionPenalty:
    """transformers' ``repetition_penalty`` on log-probs: a token already in the answer has its
    log-prob multiplied by ``penalty`` (p -> p ** penalty before renormalising; HF's rule for a
    negative logit, and every log-prob is negative). 1.0 = off, > 1 discourages repeats."""

    __slots__ = ("penalty", "seen")

    def __init__(self, penalty: float, width: int, device: torch.device) -> None:
        self.penalty = penalty
        self.seen = torch.zeros(width, dtype=torch.bool, device=device)

    def __call__(self, logd: torch.Tensor) -> torch.Tensor:
        return torch.where(self.seen, logd * self.penalty, logd)

    def push(self, token: int) -> None:
        self.seen[token] = True


class FrequencyPresencePenalty:
    """OpenAI's penalties: ``logit -= count * frequency + (count > 0) * presence``, with counts
    of each token in the answer so far. Both in [-2, 2]; 0 = off; positive discourages repeats."""

    __slots__ = ("frequency", "presence", "counts")

    def __init__(self, frequency: float, presence: float, width: int, device: torch.device) -> None:
        self.frequency = frequency
        self.presence = presence
        self.counts = torch.zeros(width, dtype=torch.float32, device=device)

    def __call__(self, logd: torch.Tensor) -> torch.Tensor:
        c = self.counts
        return logd - c * self.frequency - (c > 0).to(c.dtype) * self.presence

    def push(self, token: int) -> None:
        self.counts[token] += 1.0


class NoRepeatNGram:
    """transformers' ``no_repeat_ngram_size``: a token that would complete an n-gram already in the
    answer is banned. When every token with any probability would be banned, the ban is lifted
    for that step (there is nothing else to say)."""

    __slots__ = ("n", "history", "seen")

    def __init__(self, n: int) -> None:
        self.n = n
        self.history: list[int] = []
        self.seen: dict[tuple[int, ...], set[int]] = {}

    def __call__(self, logd: torch.Tensor) -> torch.Tensor:
        k = self.n - 1
        if len(self.history) < k:
            return logd
        banned = self.seen.get(tuple(self.history[len(self.history) - k :]))
        if not banned:
            return logd
        out = logd.index_fill(0, torch.tensor(sorted(banned), device=logd.device), _NEG_INF)
        return out if bool(torch.isfinite(out).any()) else logd

    def push(self, token: int) -> None:
        h = self.history
        h.append(token)
        if len(h) >= self.n:
            gram = tuple(h[len(h) - self.n :])
            self.seen.setdefault(gram[:-1], set()).add(gram[-1])


class NoTokenMask:
    """Ids at or past ``start`` have no token in the tokenizer (a model's padded embedding rows):
    they are never chosen."""

    __slots__ = ("start",)

    def __init__(self, start: int) -> None:
        self.start = start

    def __call__(self, logd: torch.Tensor) -> torch.Tensor:
        out = logd.clone()
        out[self.start :] = _NEG_INF
        return out

    def push(self, token: int) -> None:
        pass


def build_processors(
    params: SamplingParams, width: int, n_tokens: int, device: torch.device
) -> list[LogitsProcessor]:
    """The processors a call needs, in order; empty when every penalty is off (then the choice is
    exactly what it is without them). ``width``: the logits' width; ``n_tokens``: how many ids
    the tokenizer has (ids past it are masked)."""
    procs: list[LogitsProcessor] = []
    if n_tokens < width:
        procs.append(NoTokenMask(n_tokens))
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenalty(params.repetition_penalty, width, device))
    if params.frequency_penalty or params.presence_penalty:
        procs.append(
            FrequencyPresencePenalty(
                params.frequency_penalty, params.presence_penalty, width, device
            )
        )
    if params.no_repeat_ngram_size:
        procs.append(NoRepeatNGram(params.no_repeat_ngram_size))
    return procs


def apply_processors(procs: list[LogitsProcessor], logd: torch.Tensor) -> torch.Tensor:
    """The processed, renormalised log-distribution."""
    for p in procs:
        logd = p(logd)
    return torch.log_softmax(logd, -1)
