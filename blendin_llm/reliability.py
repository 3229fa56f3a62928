"""Per-response reliability: signals gathered while decoding, features, a score, and flags.

Per step the decoding loop hands the tracker plain floats (the top-K log-probabilities of the
final and of the base's distribution, the chosen token's log-probability in both, and at
consulted steps the guides' alpha, agreement and divergence). ``finish`` builds the record over the
answer's steps only (a stop string's tokens are decoded but are not part of the answer):
``features`` (``blendin_llm.uncertainty``), the legacy summary fields, the score and the flags.

**Score.** With a score model (``ReliabilityConfig.score_model``, from a profile written by
``blendin calibrate`` for this pair and strategy) the score is its calibrated P(correct), and the
answer is flagged when the score is below the model's threshold. Otherwise the score is a weighted
mean (``ReliabilityConfig.weights``, default 1, 0, 0) of three components in [0, 1]:

* confidence = exp(mean log p(token)) of the answer's tokens in the distribution they were chosen
  from: the normalized sequence probability (UQLM's ``normalized_probability``);
* stability  = 1 - min(1, r / (2 * max_intervention_rate)), r the share of steps where the base was
  unsure (top-1 < gamma): 1 when the base never needed help, 0.5 at the threshold, 0 at twice it;
* consensus  = (agreement_topk + (1 - mean_divergence)) / 2 over the consulted steps (1 if none).

With the default weights the score is the normalized probability: an honest, uncalibrated
baseline (docs/results.md compares it with the calibrated score). Its flags are the thresholds of
``ReliabilityConfig``; the agreement and divergence flags need ``min_consulted`` consulted steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .config import BlendConfig
from .observers import StepOutput
from .results import GuideStats, Reliability, ScoreComponents, TraceEntry
from .strategies import unsure
from .uncertainty import Step, dist_stats
from .uncertainty import features as answer_features


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


class ReliabilityTracker:
    """Keeps each step's numbers (plain floats); ``finish()`` builds the Reliability record over
    the answer's steps."""

    def __init__(
        self,
        config: BlendConfig,
        strategy: str,
        guide_names: list[str],
        gated: bool,
        trace: bool,
        weights: list[float] | None = None,
        mitigations: list[str] | None = None,
    ) -> None:
        self.config = config
        self.strategy = strategy
        self.gated = gated  # the strategy consults exactly when the base is unsure
        self.names = guide_names
        self.steps: list[Step] = []
        self.guide_rows: list[tuple | None] = []  # per step: per-guide numbers when consulted
        self._pending: tuple | None = None
        self.trace: list[TraceEntry] | None = [] if trace else None
        self.weights = weights or [1.0] * len(guide_names)
        self.mitigations = mitigations or []

    def observe(self, out: StepOutput) -> None:
        """A decoding step's output (the tracker is one of the loop's observers): the guides'
        numbers when they were consulted, then the step's."""
        c = out.choice
        if c.guide_stats is not None:
            self.consulted(*c.guide_stats)
        self.step(c.base_top, c.base_lp, c.final_top, c.lp)

    def consulted(
        self,
        alphas: list[float],
        top1: list[float],
        agree1: list[float],
        agreek: list[float],
        js: list[float],
    ) -> None:
        """The guides' numbers at this step (one value per guide); called before ``step``."""
        self._pending = (alphas, top1, agree1, agreek, js)

    def step(
        self,
        base_top: Sequence[float],
        base_lp: float,
        final_top: Sequence[float] | None = None,
        final_lp: float | None = None,
    ) -> None:
        """One decoding step: the base's top-K log-probs (decreasing) and the chosen token's
        log-prob under the base; the same for the final distribution when it differs from the
        base's (the guides were consulted)."""
        b1, b2, bn = dist_stats(base_top)
        base = (base_lp, b1, b2, bn)
        if final_top is None:
            final = base if final_lp is None else (final_lp, b1, b2, bn)
        else:
            assert final_lp is not None  # given with final_top
            f1, f2, fn = dist_stats(final_top)
            final = (final_lp, f1, f2, fn)
        g = self._pending
        self._pending = None
        if g is None:
            self.steps.append(Step(final, base, unsure(b1, self.config.gamma)))
        else:
            n = len(g[0])
            self.steps.append(
                Step(
                    final,
                    base,
                    unsure(b1, self.config.gamma),
                    sum(g[0]) / n,
                    sum(g[3]) / n,
                    sum(g[4]) / n,
                )
            )
        self.guide_rows.append(g)

    def finish(
        self,
        capped: int = 0,
        intervention_cap: float | None = None,
        answer_tokens: int | None = None,
        stopped: bool = False,
        eos: bool = False,
        top_k_approximation: int | None = None,
    ) -> Reliability:
        """The record of the first ``answer_tokens`` steps (default: all), the last of which is an
        EOS token when ``eos``. Its statistics are over the answer's text tokens (the EOS step is
        counted in ``tokens`` but not scored: OpenAI-shaped log-probs, which UQLM scores, do not
        list it either). ``stopped``: the answer ended by itself (EOS or a stop string) rather
        than at the token budget."""
        cfg, rc = self.config, self.config.reliability
        n_all = len(self.steps)
        n_answer = n_all if answer_tokens is None else max(0, min(answer_tokens, n_all))
        n = max(0, n_answer - 1) if eos else n_answer  # the scored steps
        steps, grows = self.steps[:n], [r for r in self.guide_rows[:n] if r is not None]
        g, k = len(self.names), len(grows)

        def per_guide(col: int, i: int) -> float | None:
            return _mean(sum(r[col][i] for r in grows), k)

        guides = [
            GuideStats(
                name=name,
                consulted=k,
                mean_alpha=per_guide(0, i),
                mean_weight=None if k == 0 else sum(r[0][i] for r in grows) / k / g,
                agreement_top1=per_guide(2, i),
                agreement_topk=per_guide(3, i),
                mean_top1=per_guide(1, i),
                mean_divergence=per_guide(4, i),
                weight=self.weights[i],
            )
            for i, name in enumerate(self.names)
        ]

        def over_guides(col: int) -> float | None:
            return _mean(sum(sum(r[col]) / g for r in grows), k) if g else None

        agree_k, js = over_guides(3), over_guides(4)
        rate = k / n if n else 0.0
        unsure = sum(s.unsure for s in steps) / n if n else 0.0
        mean_logprob = _mean(sum(s.final[0] for s in steps), n)
        feats = answer_features(steps, stopped)

        confidence = math.exp(mean_logprob) if mean_logprob is not None else 0.0
        cap = rc.max_intervention_rate
        stability = 1.0 - min(1.0, unsure / (2 * cap)) if cap > 0 else float(unsure == 0)
        consensus = 1.0 if k == 0 or agree_k is None or js is None else (agree_k + (1.0 - js)) / 2
        w = rc.weights
        score = min(
            1.0, max(0.0, (w[0] * confidence + w[1] * stability + w[2] * consensus) / sum(w))
        )
        source, threshold, target = "weights", None, None
        if w[1] == 0 and w[2] == 0:
            source = "normalized_probability"

        reasons = []
        model = rc.score_model
        if model is not None and model.applies_to(self.strategy) and n:
            score = model.predict(feats)
            source, threshold, target = "profile", model.threshold, model.target
            if score < threshold:
                why = (
                    f"calibrated P(correct) {score:.2f} < {threshold:.2f} (threshold for "
                    f"{target} on the profile's fit data)"
                )
                drivers = model.drivers(feats)
                if drivers:
                    why += "; lowest signals: " + ", ".join(drivers)
                reasons.append(why)
        else:
            if model is not None:
                source = f"{source} (profile fitted for {model.strategy!r}, not {self.strategy!r})"
            if unsure > cap:
                what = "intervention rate" if self.gated else "base-uncertain step rate"
                reasons.append(
                    f"{what} {unsure:.2f} > {cap:.2f} ({round(unsure * n)} of {n} steps)"
                )
            if score < rc.min_score:
                reasons.append(f"reliability score {score:.2f} < {rc.min_score:.2f}")
            if k >= rc.min_consulted and agree_k is not None and agree_k < rc.min_agreement:
                reasons.append(
                    f"guide agreement {agree_k:.2f} < {rc.min_agreement:.2f} "
                    f"(guide's top token in the base's top-{cfg.agreement_top_k}; over {k} "
                    "consulted steps)"
                )
            if k >= rc.min_consulted and js is not None and js > rc.max_divergence:
                reasons.append(
                    f"mean divergence {js:.2f} > {rc.max_divergence:.2f} bits (over "
                    f"{k} consulted steps)"
                )

        mitigations = list(self.mitigations)
        if capped:
            mitigations.append(
                f"intervention cap {intervention_cap:.2f}: the guides were kept out "
                f"at {capped} step(s) where the base was unsure"
            )
        trace = self.trace
        if trace is not None:
            for e in trace[n:]:
                e.scored = False
        return Reliability(
            strategy=self.strategy,
            tokens=n_answer,
            unscored_tokens=n_all - n_answer,
            interventions=k,
            intervention_rate=rate,
            base_unsure_rate=unsure,
            mean_alpha=over_guides(0),
            agreement_top1=over_guides(2),
            agreement_topk=agree_k,
            agreement_k=cfg.agreement_top_k,
            mean_base_top1=_mean(sum(s.base[1] for s in steps), n),
            mean_divergence=js,
            mean_logprob=mean_logprob,
            base_mean_logprob=_mean(sum(s.base[0] for s in steps), n),
            guides=guides,
            features=feats,
            score=score,
            score_source=source,
            threshold=threshold,
            flag_target=target,
            components=ScoreComponents(
                confidence=confidence, stability=stability, consensus=consensus
            ),
            flagged=bool(reasons),
            reasons=reasons,
            mitigations=mitigations,
            top_k_approximation=top_k_approximation,
            trace=trace,
        )


def check_reliability(
    reliability: Reliability | dict,
    *,
    min_score: float | None = None,
    allow_flagged: bool = False,
    answer: str | None = None,
) -> None:
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
