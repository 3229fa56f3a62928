"""How well a confidence number tells right answers from wrong ones (pure Python, no numpy).

* ``auroc``: area under the ROC curve (ties count half): the chance that a random right answer
  scores above a random wrong one. 0.5 = chance.
* ``prr``: prediction-rejection ratio (LM-Polygraph): answers are rejected from the least confident
  up; the area under "accuracy of the kept answers vs share rejected" is placed between random
  rejection (0) and the oracle that rejects exactly the wrong answers first (1).
* ``ece``: expected calibration error of a probability, 10 equal-width bins, weighted by count.
* ``brier``: mean squared error of a probability against 0/1 correctness.
* ``risk_coverage``: (coverage, risk) when keeping the most confident answers: the curve a
  selective-prediction plot draws.

Ties in a score are averaged over (their order is not information).
"""

from __future__ import annotations

from collections.abc import Sequence


def _clean(
    scores: Sequence[float | None], correct: Sequence[bool | None]
) -> list[tuple[float, bool]]:
    pairs = [
        (float(s), bool(c))
        for s, c in zip(scores, correct)
        if s is not None and c is not None and s == s
    ]
    return pairs


def auroc(scores: Sequence[float | None], correct: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for predicting ``correct``; None when only one class
    is present."""
    pairs = _clean(scores, correct)
    pos = sum(c for _, c in pairs)
    neg = len(pairs) - pos
    if not pos or not neg:
        return None
    ranked = sorted(pairs, key=lambda x: x[0])
    r_pos, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        rank = (i + j) / 2 + 1
        r_pos += rank * sum(c for _, c in ranked[i : j + 1])
        i = j + 1
    return (r_pos - pos * (pos + 1) / 2) / (pos * neg)


def _tie_averaged(pairs: list[tuple[float, bool]]) -> list[float]:
    """Correctness sorted by increasing score, each tie group replaced by its mean."""
    ranked = sorted(pairs, key=lambda x: x[0])
    out: list[float] = []
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        m = sum(c for _, c in ranked[i : j + 1]) / (j - i + 1)
        out += [m] * (j - i + 1)
        i = j + 1
    return out


def _rejection_area(values: list[float]) -> float:
    """Mean over rejection counts 0..n-1 of the mean of the kept values (rejecting from the
    front of ``values``)."""
    n = len(values)
    suffix, total = 0.0, 0.0
    for i in range(n - 1, -1, -1):
        suffix += values[i]
        total += suffix / (n - i)
    return total / n


def prr(scores: Sequence[float | None], correct: Sequence[bool]) -> float | None:
    """Prediction-rejection ratio in (-inf, 1]; None when all answers are right or all wrong."""
    pairs = _clean(scores, correct)
    pos = sum(c for _, c in pairs)
    if not pairs or pos in (0, len(pairs)):
        return None
    acc = pos / len(pairs)
    oracle = _rejection_area(sorted(float(c) for _, c in pairs))
    return (_rejection_area(_tie_averaged(pairs)) - acc) / (oracle - acc)


def ece(probs: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float | None:
    """Expected calibration error over ``bins`` equal-width bins of [0, 1]."""
    pairs = _clean(probs, correct)
    if not pairs:
        return None
    sums = [[0.0, 0.0, 0] for _ in range(bins)]
    for p, c in pairs:
        b = min(bins - 1, max(0, int(p * bins)))
        sums[b][0] += p
        sums[b][1] += c
        sums[b][2] += 1
    return sum(abs(s - k) for s, k, n in sums if n) / len(pairs)


def brier(probs: Sequence[float], correct: Sequence[bool]) -> float | None:
    """Mean of (p - correct)^2."""
    pairs = _clean(probs, correct)
    return sum((p - c) ** 2 for p, c in pairs) / len(pairs) if pairs else None


def risk_coverage(scores: Sequence[float], correct: Sequence[bool]) -> list[tuple[float, float]]:
    """(coverage, error rate of the kept answers), keeping the k most confident, k = n .. 1
    (ties averaged)."""
    pairs = _clean(scores, correct)
    vals = _tie_averaged(pairs)  # increasing confidence
    n = len(vals)
    out, right = [], 0.0
    for k in range(1, n + 1):  # keep the k most confident
        right += vals[n - k]
        out.append((k / n, 1.0 - right / k))
    return out[::-1]
