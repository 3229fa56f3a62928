"""Per-response reliability: signals gathered while decoding, a score, and flags.

The score (in [0, 1]) is a weighted mean of three components, each in [0, 1]:

* confidence = exp(mean log p(token)) of the emitted tokens in the distribution they were chosen
  from (the geometric-mean token probability);
* stability  = 1 - min(1, r / (2 * max_intervention_rate)), r the share of steps where the base was
  unsure (top-1 < gamma): 1 when the base never needed help, 0.5 at the threshold, 0 at twice it;
* consensus  = (agreement_topk + (1 - mean_divergence)) / 2 over the consulted steps (1 if none).

Weights come from ``ReliabilityConfig.weights``: default 0.5, 0.5, 0. Consensus is reported but
not scored: on a development set of default-pair answers it separated right from wrong answers no
better than chance, while stability did best (docs/results.md, "Score variants", compares the
weightings on the results' answers).
"""

from __future__ import annotations

import math

from .config import BlendConfig
from .results import GuideStats, Reliability, ScoreComponents, TraceEntry


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


class ReliabilityTracker:
    """Accumulates plain-float sums per step; ``finish()`` builds the Reliability record."""

    def __init__(self, config: BlendConfig, strategy: str, guide_names: list[str], gated: bool,
                 trace: bool, weights: list[float] | None = None,
                 mitigations: list[str] | None = None) -> None:
        self.config = config
        self.strategy = strategy
        self.gated = gated  # the strategy consults exactly when the base is unsure
        self.names = guide_names
        g = len(guide_names)
        self.tokens = 0
        self.uncertain = 0
        self.interventions = 0
        self.sum_base_top1 = 0.0
        self.sum_logprob = 0.0
        self.sum_base_logprob = 0.0
        self.g_alpha = [0.0] * g
        self.g_top1 = [0.0] * g
        self.g_agree1 = [0.0] * g
        self.g_agreek = [0.0] * g
        self.g_js = [0.0] * g
        self.trace: list[TraceEntry] | None = [] if trace else None
        self.weights = weights or [1.0] * g
        self.mitigations = mitigations or []

    def step(self, base_top1: float, prob: float, base_prob: float) -> None:
        self.tokens += 1
        self.uncertain += base_top1 < self.config.gamma
        self.sum_base_top1 += base_top1
        self.sum_logprob += math.log(max(prob, 1e-30))
        self.sum_base_logprob += math.log(max(base_prob, 1e-30))

    def consulted(self, alphas: list[float], top1: list[float], agree1: list[float],
                  agreek: list[float], js: list[float]) -> None:
        self.interventions += 1
        for i in range(len(alphas)):
            self.g_alpha[i] += alphas[i]
            self.g_top1[i] += top1[i]
            self.g_agree1[i] += agree1[i]
            self.g_agreek[i] += agreek[i]
            self.g_js[i] += js[i]

    def finish(self, capped: int = 0, intervention_cap: float | None = None) -> Reliability:
        cfg, rc = self.config, self.config.reliability
        n, k, g = self.tokens, self.interventions, len(self.names)
        guides = [
            GuideStats(
                name=name, consulted=k,
                mean_alpha=_mean(self.g_alpha[i], k),
                mean_weight=_mean(self.g_alpha[i] / g, k),
                agreement_top1=_mean(self.g_agree1[i], k),
                agreement_topk=_mean(self.g_agreek[i], k),
                mean_top1=_mean(self.g_top1[i], k),
                mean_divergence=_mean(self.g_js[i], k),
                weight=self.weights[i],
            )
            for i, name in enumerate(self.names)
        ]

        def over_guides(vals: list[float]) -> float | None:
            return _mean(sum(vals) / g, k) if g else None

        agree_k = over_guides(self.g_agreek)
        js = over_guides(self.g_js)
        rate = k / n if n else 0.0
        unsure = self.uncertain / n if n else 0.0
        mean_logprob = _mean(self.sum_logprob, n)

        confidence = math.exp(mean_logprob) if mean_logprob is not None else 0.0
        cap = rc.max_intervention_rate
        stability = 1.0 - min(1.0, unsure / (2 * cap)) if cap > 0 else float(unsure == 0)
        consensus = 1.0 if k == 0 or agree_k is None else (agree_k + (1.0 - js)) / 2
        w = rc.weights
        score = (w[0] * confidence + w[1] * stability + w[2] * consensus) / sum(w)
        score = min(1.0, max(0.0, score))

        reasons = []
        if unsure > cap:
            what = "intervention rate" if self.gated else "base-uncertain step rate"
            reasons.append(f"{what} {unsure:.2f} > {cap:.2f}")
        if score < rc.min_score:
            reasons.append(f"reliability score {score:.2f} < {rc.min_score:.2f}")
        if k and agree_k is not None and agree_k < rc.min_agreement:
            reasons.append(
                f"guide agreement {agree_k:.2f} < {rc.min_agreement:.2f} "
                f"(guide's top token in the base's top-{cfg.agreement_top_k})"
            )
        if k and js is not None and js > rc.max_divergence:
            reasons.append(f"mean divergence {js:.2f} > {rc.max_divergence:.2f} bits")

        mitigations = list(self.mitigations)
        if capped:
            mitigations.append(f"intervention cap {intervention_cap:.2f}: the guides were kept out "
                               f"at {capped} step(s) where the base was unsure")
        return Reliability(
            strategy=self.strategy,
            tokens=n,
            interventions=k,
            intervention_rate=rate,
            base_unsure_rate=unsure,
            mean_alpha=over_guides(self.g_alpha),
            agreement_top1=over_guides(self.g_agree1),
            agreement_topk=agree_k,
            agreement_k=cfg.agreement_top_k,
            mean_base_top1=_mean(self.sum_base_top1, n),
            mean_divergence=js,
            mean_logprob=mean_logprob,
            base_mean_logprob=_mean(self.sum_base_logprob, n),
            guides=guides,
            score=score,
            components=ScoreComponents(
                confidence=confidence, stability=stability, consensus=consensus
            ),
            flagged=bool(reasons),
            reasons=reasons,
            mitigations=mitigations,
            trace=self.trace,
        )


def check_reliability(reliability: Reliability | dict, *, min_score: float | None = None,
                      allow_flagged: bool = False, answer: str | None = None) -> None:
    """Raise ``LowReliabilityError`` when the record is flagged (unless ``allow_flagged``) or its
    score is below ``min_score``; return None otherwise."""
    from .errors import LowReliabilityError

    rec = reliability.model_dump() if isinstance(reliability, Reliability) else dict(reliability)
    why = []
    if rec.get("flagged") and not allow_flagged:
        why.append("flagged: " + "; ".join(rec.get("reasons") or []))
    if min_score is not None and rec.get("score", 0.0) < min_score:
        why.append(f"score {rec.get('score', 0.0):.2f} < required {min_score:.2f}")
    if why:
        raise LowReliabilityError("low-reliability answer (" + "; ".join(why) + ")", rec, answer)
