"""``blendin calibrate``: check a base/guide pair on your own prompts before deploying it.

1. The base alone answers N prompts; its top-1 probability at every step gives, for any gamma,
   the share of steps where the guide would be consulted. The recommended gamma is the largest of
   ``GAMMAS`` (at most 0.6) whose predicted intervention rate stays at or below ``target_rate``
   (default 0.20, the rate above which BlendIn pairs tend to fail).
2. The pair answers the same prompts with BlendIn (auto alpha) at that gamma: measured
   intervention rate, guide agreement (guide's top token among the base's top-k), divergence,
   alpha.
3. Verdict (thresholds in ``VERDICT``): *bad* when the measured intervention rate is above 0.35 or
   the agreement below 0.25 (the guide mostly pulls where the base would not go); *good* when the
   rate is at most 0.20 and the agreement at least 0.5; *risky* otherwise. The 0.20 is BlendIn's
   pair-level observation (pairs above ~20 % tend to fail); the other cut points are set around
   it. They judge a PAIR: one pair's evaluation cannot validate them, and per answer the rate and
   agreement predicted little on the default pair (docs/results.md, "Per-answer signals").
   Alpha mode: "auto", unless auto alpha hardly varies (std < 0.05), then that fixed value (same
   behaviour, simpler to audit). A *bad* pair's profile uses ``base_only``.

The profile (JSON) holds the models, the recommended BlendConfig, the verdict and the numbers;
``BlendedLLM.from_profile(path)`` or ``BlendConfig.from_profile(path)`` load it.
"""

from __future__ import annotations

import datetime
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
import dataclasses
from typing import Any

from .config import BlendConfig
from .errors import ConfigError

GAMMAS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
VERDICT = {"good_max_rate": 0.20, "good_min_agreement": 0.5, "bad_rate": 0.35,
           "bad_agreement": 0.25}
PROFILE_VERSION = 1


@dataclass
class Calibration:
    verdict: str
    reasons: list[str]
    gamma: float
    alpha: Any
    config: BlendConfig
    prompts: int
    predicted_rate: dict[float, float]
    measurements: dict[str, float | None]
    models: dict[str, Any] = field(default_factory=dict)

    def to_profile(self) -> dict:
        return {
            "blendin_profile": PROFILE_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "models": self.models, "verdict": self.verdict, "reasons": self.reasons,
            "config": self.config.to_dict(), "prompts": self.prompts,
            "measurements": self.measurements,
            "predicted_intervention_rate": {str(k): v for k, v in self.predicted_rate.items()},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.write_text(json.dumps(self.to_profile(), indent=1))
        except OSError as e:
            raise ConfigError(f"cannot write the profile to {str(path)!r}: {e.strerror or e}") \
                from None
        return path


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def calibrate(llm: Any, prompts: list[Any], *, max_new_tokens: int = 32,
              target_rate: float = 0.20, progress: Any = None) -> Calibration:
    """Run the two passes described in the module doc over ``prompts`` (strings or messages)."""
    if not prompts:
        raise ConfigError("calibrate needs at least one prompt")
    if not 0 < target_rate <= 1:
        raise ConfigError(f"target_rate must be in (0, 1], got {target_rate!r}")
    if not llm.guides:
        raise ConfigError("calibrate judges a base/guide pair: the BlendedLLM has no guide")
    tick = progress or (lambda: None)
    top1: list[float] = []
    for p in prompts:
        res = llm.generate(p, max_new_tokens=max_new_tokens, strategy="base_only", trace=True)
        top1 += [e.base_top1 for e in res.reliability.trace]
        tick()
    n_steps = max(1, len(top1))
    predicted = {g: sum(t < g for t in top1) / n_steps for g in GAMMAS}
    fitting = [g for g in GAMMAS if predicted[g] <= target_rate]
    gamma = max(fitting) if fitting else GAMMAS[0]

    rels = []
    alphas: list[float] = []
    for p in prompts:
        res = llm.generate(p, max_new_tokens=max_new_tokens, strategy="blendin", alpha="auto",
                           gamma=gamma, trace=True)
        rels.append(res.reliability)
        alphas += [e.alpha for e in res.reliability.trace if e.alpha is not None]
        tick()
    steps = sum(r.tokens for r in rels)
    consults = sum(r.interventions for r in rels)
    rate = consults / steps if steps else 0.0

    def weighted(attr: str) -> float | None:  # over consulted steps
        num = sum(getattr(r, attr) * r.interventions for r in rels if getattr(r, attr) is not None)
        return num / consults if consults else None

    agreement = weighted("agreement_topk")
    m = {
        "intervention_rate": rate, "predicted_intervention_rate": predicted[gamma],
        "agreement_topk": agreement, "agreement_top1": weighted("agreement_top1"),
        "mean_divergence": weighted("mean_divergence"), "mean_alpha": _mean(alphas),
        "alpha_std": statistics.pstdev(alphas) if len(alphas) > 1 else None,
        "mean_base_top1": _mean([r.mean_base_top1 for r in rels]),
        "flagged": sum(r.flagged for r in rels) / len(rels),
        "mean_score": sum(r.score for r in rels) / len(rels),
    }
    v = VERDICT
    reasons = []
    if rate > v["bad_rate"]:
        reasons.append(f"intervention rate {rate:.2f} > {v['bad_rate']:.2f} even at gamma {gamma}")
    if agreement is not None and agreement < v["bad_agreement"]:
        reasons.append(f"guide agreement {agreement:.2f} < {v['bad_agreement']:.2f}")
    if reasons:
        verdict = "bad"
    elif rate <= v["good_max_rate"] and (agreement is None or agreement >= v["good_min_agreement"]):
        verdict = "good"
        reasons.append(f"intervention rate {rate:.2f} <= {v['good_max_rate']:.2f} and agreement "
                       f"{'-' if agreement is None else f'{agreement:.2f}'} >= "
                       f"{v['good_min_agreement']:.2f}")
    else:
        verdict = "risky"
        if rate > v["good_max_rate"]:
            reasons.append(f"intervention rate {rate:.2f} > {v['good_max_rate']:.2f}")
        if agreement is not None and agreement < v["good_min_agreement"]:
            reasons.append(f"guide agreement {agreement:.2f} < {v['good_min_agreement']:.2f}")
    alpha: Any = "auto"
    if m["alpha_std"] is not None and m["alpha_std"] < 0.05 and m["mean_alpha"] is not None:
        alpha = round(m["mean_alpha"], 2)
    strategy = "base_only" if verdict == "bad" else "blendin"
    config = dataclasses.replace(llm.config, strategy=strategy, gamma=gamma, alpha=alpha)
    models = {"base": llm.base.spec.source or llm.base.name,
              "guides": [g.spec.source or g.name for g in llm.guides]}
    return Calibration(verdict, reasons, gamma, alpha, config, len(prompts), predicted, m, models)


def load_profile(path: str | Path) -> dict:
    """Read and check a profile file written by ``blendin calibrate``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the profile {str(path)!r}: {e}") from None
    if not isinstance(data, dict) or data.get("blendin_profile") != PROFILE_VERSION:
        raise ConfigError(f"{str(path)!r} is not a blendin profile (version {PROFILE_VERSION})")
    data["config"] = BlendConfig.from_dict(data.get("config") or {})
    return data


