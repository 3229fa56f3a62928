"""Choosing a token from a distribution: greedy, or temperature / top-k / top-p sampling."""

from __future__ import annotations

import torch

from .config import SamplingParams


def sample(logp: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Draw a token id (0-d tensor) from log-probabilities ``logp`` [V].

    Temperature scales log-probabilities (p ** (1/T), renormalised), then top-k keeps the k most
    likely tokens, then top-p keeps the smallest set whose probability reaches p.
    """
    scores = logp / params.temperature
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum - sorted_scores.softmax(-1) >= params.top_p  # keep the token that crosses p
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[0]
