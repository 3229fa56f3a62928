"""Single-generation uncertainty features of one answer, gathered while it is decoded.

Every feature comes from numbers the decoding loop already has (no extra forward pass): per step,
the top-``K`` log-probabilities of the final distribution the token was chosen from and of the
base's own distribution, the chosen token's log-probability in both, and at the steps where the
guides were consulted the blend's own signals (alpha, agreement, divergence). The loop hands them
over as plain floats from one small tensor per step (one device sync).

The white-box set follows UQLM's single-generation scorers (cvs-health/uqlm), each over the
answer's tokens ``t_1..t_L`` (a stop string's tokens are not part of the answer):

* ``norm_prob``: normalized sequence probability, ``exp(mean_j log p(t_j))``;
* ``min_prob``: the smallest ``p(t_j)``;
* ``mean_negentropy`` / ``min_negentropy``: per step the top-K entropy
  ``TE = -sum_k q_k log q_k`` of the K most likely tokens' probabilities renormalised to sum to 1
  (``q_k = p_k / sum p``), as negentropy ``1 - TE / log K`` (1 = all mass on one token),
  averaged / minimised over the steps;
* ``mean_margin``: the mean of ``p(top-1) - p(top-2)``.

Each is computed over the final distribution (the name as above) and over the base alone
(``base_`` prefix). The blend's own signals:

* ``intervention_rate``: share of steps where the guides were consulted;
* ``base_unsure_rate``: share of steps where the base's top-1 probability was below gamma;
* ``alpha_mean`` / ``alpha_std``: the guide weight at consulted steps (after run-time mitigation;
  mean over guides), 0 when never consulted;
* ``guide_weight``: the guides' share of the final distribution averaged over ALL steps
  (0 at steps decided by the base alone);
* ``agreement_topk``: share of consulted steps where the guide's top token is among the base's
  top-k (1 when never consulted: nothing to disagree on);
* ``divergence_mean`` / ``divergence_max``: Jensen-Shannon divergence (bits) between base and guide
  at consulted steps (0 when never consulted);
* ``divergence_early`` / ``divergence_late``: the summed divergence at consulted steps in the
  first / second half of the answer, divided by the half's length (where disagreement sits);
* ``log_tokens``: ``log(1 + L)``; ``stopped``: 1 when the answer ended by itself (EOS or a stop
  string), 0 when it ran into ``max_new_tokens``.

``FEATURES`` is the stable order; ``features()`` returns a dict with every name (None only when the
answer has no token at all).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: K of the top-K negentropy (UQLM's default number of top log-probs).
NEGENTROPY_K = 15

WHITE_BOX = ("norm_prob", "min_prob", "mean_negentropy", "min_negentropy", "mean_margin")
BLEND = (
    "intervention_rate",
    "base_unsure_rate",
    "alpha_mean",
    "alpha_std",
    "guide_weight",
    "agreement_topk",
    "divergence_mean",
    "divergence_max",
    "divergence_early",
    "divergence_late",
    "log_tokens",
    "stopped",
)
#: Every feature, in a stable order (a profile names the ones its model uses).
FEATURES: tuple[str, ...] = WHITE_BOX + tuple("base_" + f for f in WHITE_BOX) + BLEND
#: The single-number baselines an evaluation compares the score with (higher = more confident).
BASELINES: tuple[str, ...] = WHITE_BOX + tuple("base_" + f for f in WHITE_BOX)


def dist_stats(top_logprobs: Sequence[float]) -> tuple[float, float, float]:
    """(top-1 probability, top-2 probability, top-K negentropy) from a step's top-K log-probs,
    sorted in decreasing order (K = ``len(top_logprobs)`` >= 2)."""
    k = len(top_logprobs)
    ps = [math.exp(lp) for lp in top_logprobs]
    total = sum(ps)
    ent = 0.0
    for p in ps:  # entropy of the top-K renormalised to sum to 1, as UQLM computes it
        if p > 0.0:
            q = p / total
            ent -= q * math.log(q)
    return ps[0], ps[1], 1.0 - ent / math.log(k)


class Step:
    """One decoding step's numbers (plain floats). ``final`` and ``base`` are (chosen-token
    log-prob, top-1 prob, top-2 prob, negentropy); at a step the base decided alone they are the
    same tuple. ``alpha``/``agreek``/``js`` are means over the guides (None when not consulted)."""

    __slots__ = ("final", "base", "unsure", "alpha", "agreek", "js")

    def __init__(
        self,
        final: tuple,
        base: tuple,
        unsure: bool,
        alpha: float | None = None,
        agreek: float | None = None,
        js: float | None = None,
    ) -> None:
        self.final, self.base, self.unsure = final, base, unsure
        self.alpha, self.agreek, self.js = alpha, agreek, js


def _white_box(rows: list[tuple], prefix: str) -> dict[str, float]:
    n = len(rows)
    lps = [r[0] for r in rows]
    return {
        prefix + "norm_prob": math.exp(sum(lps) / n),
        prefix + "min_prob": math.exp(min(lps)),
        prefix + "mean_negentropy": sum(r[3] for r in rows) / n,
        prefix + "min_negentropy": min(r[3] for r in rows),
        prefix + "mean_margin": sum(r[1] - r[2] for r in rows) / n,
    }


def features(steps: Sequence[Step], stopped: bool) -> dict[str, float | None]:
    """The feature dict (every name of ``FEATURES``) over ``steps``, the answer's steps."""
    n = len(steps)
    if n == 0:
        return {name: None for name in FEATURES}
    out: dict[str, float | None] = {}
    out.update(_white_box([s.final for s in steps], ""))
    out.update(_white_box([s.base for s in steps], "base_"))
    consulted = [s for s in steps if s.alpha is not None]
    k = len(consulted)
    # a consulted step has all three of alpha, agreek and js
    alphas = [s.alpha for s in consulted if s.alpha is not None]
    a_mean = sum(alphas) / k if k else 0.0
    agreeks = [s.agreek for s in consulted if s.agreek is not None]
    js = [s.js for s in consulted if s.js is not None]
    half = n / 2
    early = sum(s.js for i, s in enumerate(steps) if s.js is not None and i < half)
    late = sum(s.js for i, s in enumerate(steps) if s.js is not None and i >= half)
    out.update(
        {
            "intervention_rate": k / n,
            "base_unsure_rate": sum(s.unsure for s in steps) / n,
            "alpha_mean": a_mean,
            "alpha_std": math.sqrt(sum((a - a_mean) ** 2 for a in alphas) / k) if k else 0.0,
            "guide_weight": sum(alphas) / n,
            "agreement_topk": sum(agreeks) / k if k else 1.0,
            "divergence_mean": sum(js) / k if k else 0.0,
            "divergence_max": max(js) if k else 0.0,
            "divergence_early": early / max(1.0, math.ceil(half)),
            "divergence_late": late / max(1.0, n - math.ceil(half)),
            "log_tokens": math.log1p(n),
            "stopped": 1.0 if stopped else 0.0,
        }
    )
    return out
