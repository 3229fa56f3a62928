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
   agreement predicted little on the default pair (the first release's docs/results.md,
   "Per-answer signals", commit 82773d3).
   Alpha mode: "auto", unless auto alpha hardly varies (std < 0.05), then that fixed value (same
   behaviour, simpler to audit). A *bad* pair's profile uses ``base_only``.

4. With labelled items (``EvalItem``s whose answers can be scored: an ``answer`` or a ``label``),
   the pass-2 answers are scored by rules and a calibrated score model P(correct | features) is
   fitted on them (``fit_score_model`` below, scikit-learn): with the profile
   loaded, ``reliability.score`` is that probability and ``flagged`` means score < the threshold
   chosen for ``flag_target``. ``gamma=`` fixes gamma and skips pass 1 (no recommendation).

The profile (JSON) holds the models (names and fingerprints), the recommended BlendConfig, the
verdict and the numbers, and the score model (plain numbers); ``BlendedLLM.from_profile(path)``
or ``BlendConfig.from_profile(path)`` load it. A profile whose score model was fitted for other
models is refused by ``BlendedLLM`` (``force=True`` applies it anyway).
"""

from __future__ import annotations

import datetime
import json
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import PROFILE_VERSION, BlendConfig
from ..errors import ConfigError
from ..score_model import ScoreModel, pair_fingerprints, parse_target
from ..uncertainty import FEATURES

GAMMAS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
VERDICT = {
    "good_max_rate": 0.20,
    "good_min_agreement": 0.5,
    "bad_rate": 0.35,
    "bad_agreement": 0.25,
}


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
    score_model: Any = None  # a score_model.ScoreModel when labelled items were given
    records: list = field(default_factory=list)  # the pass-2 eval records (labelled items)
    no_score_model: str | None = None  # why labelled items gave no score model

    def to_profile(self) -> dict:
        config = self.config.to_dict()
        config["reliability"].pop("score_model", None)  # stored on its own, below
        return {
            "blendin_profile": PROFILE_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "models": self.models,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "config": config,
            "prompts": self.prompts,
            "measurements": self.measurements,
            "predicted_intervention_rate": {str(k): v for k, v in self.predicted_rate.items()},
            "score_model": None if self.score_model is None else self.score_model.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.write_text(json.dumps(self.to_profile(), indent=1))
        except OSError as e:
            raise ConfigError(
                f"cannot write the profile to {str(path)!r}: {e.strerror or e}"
            ) from None
        return path


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _gold(item: Any) -> bool:
    return getattr(item, "answer", None) is not None or getattr(item, "label", None) is not None


def calibrate(
    llm: Any,
    prompts: list[Any],
    *,
    max_new_tokens: int = 32,
    target_rate: float = 0.20,
    progress: Any = None,
    gamma: float | None = None,
    flag_target: str = "recall=0.8",
    calibration: str = "auto",
    out: Any = None,
    settings: dict | None = None,
) -> Calibration:
    """Judge the pair on ``prompts`` and, when they are labelled, fit its score model.

    Args:
        llm: the BlendedLLM (with at least one guide).
        prompts: strings or messages (pair judgment only), or ``EvalItem``s of a data set: when
            they carry answers or labels, the pass-2 answers are scored and a score model is
            fitted (see the module doc).
        max_new_tokens: the answers' token budget.
        target_rate: the intervention rate the recommended gamma should stay under.
        progress: called once per answer.
        gamma: fix gamma (skips the base-only pass and the recommendation).
        flag_target: the flag threshold's target, ``precision=P`` or ``recall=R``.
        calibration: ``platt``, ``isotonic`` or ``auto``.
        out: a directory for the pass-2 records (resumable, as ``blendin eval --out``).
        settings: extra run settings stored with the records (data options).

    Returns:
        The Calibration (``.save(path)`` writes the profile).
    """

    if not prompts:
        raise ConfigError("calibrate needs at least one prompt")
    if not 0 < target_rate <= 1:
        raise ConfigError(f"target_rate must be in (0, 1], got {target_rate!r}")
    if not llm.guides:
        raise ConfigError("calibrate judges a base/guide pair: the BlendedLLM has no guide")
    parse_target(flag_target)
    items = [p for p in prompts if hasattr(p, "prompt")]
    labelled = len(items) == len(prompts) and all(_gold(it) for it in items)
    texts = [p.prompt if hasattr(p, "prompt") else p for p in prompts]
    tick = progress or (lambda: None)
    predicted: dict[float, float] = {}
    if gamma is None:
        top1: list[float] = []
        for p in texts:
            res = llm.generate(p, max_new_tokens=max_new_tokens, strategy="base_only", trace=True)
            top1 += [e.base_top1 for e in res.reliability.trace if e.scored]
            tick()
        n_steps = max(1, len(top1))
        predicted = {g: sum(t < g for t in top1) / n_steps for g in GAMMAS}
        fitting = [g for g in GAMMAS if predicted[g] <= target_rate]
        gamma = max(fitting) if fitting else GAMMAS[0]

    pass2 = llm.config.replace(strategy="blendin", gamma=gamma, alpha="auto")
    records: list[dict] = []
    if labelled:
        from .datasets import Dataset
        from .runner import run_eval

        saved = llm.config
        llm.config = pass2
        try:
            records = run_eval(
                llm,
                [Dataset("calibrate", "items", items)],
                ["blendin"],
                out=out,
                max_new_tokens=max_new_tokens,
                progress=False,
                settings=settings,
                on_record=lambda r: tick(),
            )
        finally:
            llm.config = saved
        rels = [r["reliability"] for r in records]
    else:
        rels = []
        for p in texts:
            res = llm.generate(
                p,
                max_new_tokens=max_new_tokens,
                strategy="blendin",
                alpha="auto",
                gamma=gamma,
                trace=True,
            )
            rels.append(res.reliability.model_dump())
            tick()
    alphas = [
        e["alpha"]
        for r in rels
        for e in (r.get("trace") or [])
        if e["alpha"] is not None and e.get("scored", True)
    ]
    steps = sum(r["tokens"] for r in rels)
    consults = sum(r["interventions"] for r in rels)
    rate = consults / steps if steps else 0.0

    def weighted(attr: str) -> float | None:  # over consulted steps
        num = sum(r[attr] * r["interventions"] for r in rels if r[attr] is not None)
        return num / consults if consults else None

    agreement = weighted("agreement_topk")
    m = {
        "intervention_rate": rate,
        "predicted_intervention_rate": predicted.get(gamma),
        "agreement_topk": agreement,
        "agreement_top1": weighted("agreement_top1"),
        "mean_divergence": weighted("mean_divergence"),
        "mean_alpha": _mean(alphas),
        "alpha_std": statistics.pstdev(alphas) if len(alphas) > 1 else None,
        "mean_base_top1": _mean([r["mean_base_top1"] for r in rels]),
        "flagged": sum(r["flagged"] for r in rels) / len(rels),
        "mean_score": sum(r["score"] for r in rels) / len(rels),
    }
    if records:
        scored = [r for r in records if r["correct"] is not None]
        m["accuracy"] = (sum(bool(r["correct"]) for r in scored) / len(scored)) if scored else None
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
        reasons.append(
            f"intervention rate {rate:.2f} <= {v['good_max_rate']:.2f} and agreement "
            f"{'-' if agreement is None else f'{agreement:.2f}'} >= "
            f"{v['good_min_agreement']:.2f}"
        )
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
    config = llm.config.replace(strategy=strategy, gamma=gamma, alpha=alpha)
    models = {
        "base": llm.base.spec.source or llm.base.name,
        "guides": [g.spec.source or g.name for g in llm.guides],
    }

    def result(score_model: Any = None, why: str | None = None) -> Calibration:
        return Calibration(
            verdict, reasons, gamma, alpha, config, len(prompts), predicted, m, models,
            score_model, records, why,
        )  # fmt: skip

    if labelled:
        scored = [r for r in records if r["correct"] is not None]
        fps = pair_fingerprints(llm.base, llm.guides)
        models["fingerprints"] = fps
        right = sum(bool(r["correct"]) for r in scored)
        if min(right, len(scored) - right) < 2:
            why = (
                f"no score model: fitting needs at least 2 right and 2 wrong answers, the pair "
                f"answered {right} of {len(scored)} right; use more (or other) labelled items"
            )
            return result(None, why)
        score_model = fit_score_model(
            [r["reliability"]["features"] for r in scored],
            [bool(r["correct"]) for r in scored],
            target=flag_target,
            calibration=calibration,
            strategy="blendin",
            gamma=gamma,
            alpha="auto",
            fingerprints=fps,
            about={
                "models": {"base": models["base"], "guides": models["guides"]},
                "data": settings or {},
                "max_new_tokens": max_new_tokens,
                "items": [[r["task"], r["item_id"]] for r in scored],
            },
        )
        # it scores the answers of the strategy it was fitted on (blendin), also when the verdict
        # recommends base_only: per call, strategy="blendin" answers get the calibrated score
        rel = config.reliability.replace(score_model=score_model)
        config = config.replace(reliability=rel)
        return result(score_model)
    return result()


# -- fitting (scikit-learn) ----------------------------------------------------------------------
def _sklearn() -> tuple[Any, ...]:
    try:
        import numpy as np
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
    except ImportError as e:
        raise ConfigError(
            "fitting a score model needs scikit-learn: pip install 'blendin-llm[eval]'"
        ) from e
    return (
        np,
        IsotonicRegression,
        LogisticRegression,
        LogisticRegressionCV,
        StratifiedKFold,
        cross_val_predict,
    )


def choose_threshold(probs: Sequence[float], correct: Sequence[bool], target: str) -> dict:
    """The flag threshold for ``target`` on (probability, correct) pairs; returns ``threshold``
    and what it achieves there (``precision`` of kept, ``recall`` of wrong answers, ``kept``
    share, ``met``: whether the target was reached)."""
    kind, goal = parse_target(target)
    pairs = sorted(zip(probs, correct))
    n = len(pairs)
    n_wrong = sum(1 for _, c in pairs if not c)
    cands = sorted(set(p for p, _ in pairs)) + [1.0 + 1e-9]
    best = None
    # flagged = score < t. Scan t from low (few flags) to high.
    flagged_wrong = flagged = 0
    j = 0
    for t in cands:
        while j < n and pairs[j][0] < t:
            flagged += 1
            flagged_wrong += not pairs[j][1]
            j += 1
        kept = n - flagged
        kept_right = (n - n_wrong) - (flagged - flagged_wrong)
        precision = kept_right / kept if kept else 1.0
        recall = flagged_wrong / n_wrong if n_wrong else 1.0
        ok = (kept > 0 and precision >= goal) if kind == "precision" else recall >= goal
        row = {
            "threshold": float(min(t, 1.0)),
            "precision": precision,
            "recall": recall,
            "kept": kept / n if n else 0.0,
            "met": ok,
        }
        if ok:
            best = row
            break
    if best is None:  # not reachable: flag everything
        best = {"threshold": 1.0, "precision": 1.0, "recall": 1.0, "kept": 0.0, "met": False}
    return best


def fit_score_model(
    rows: Sequence[dict],
    correct: Sequence[bool],
    *,
    target: str = "recall=0.8",
    calibration: str = "auto",
    features: Sequence[str] = FEATURES,
    folds: int = 5,
    seed: int = 0,
    select: str = "all",
    strategy: str = "blendin",
    gamma: float | None = None,
    alpha: Any = None,
    fingerprints: dict | None = None,
    about: dict | None = None,
) -> ScoreModel:
    """Fit a ScoreModel on answers' feature dicts ``rows`` and their ``correct`` labels.

    Args:
        rows: one feature dict per answer (``reliability.features``).
        correct: whether each answer was right.
        target: the flag threshold's target, ``precision=P`` or ``recall=R``.
        calibration: ``"platt"``, ``"isotonic"`` or ``"auto"`` (isotonic from 500 answers on).
        features: the feature names to use (default: all of ``FEATURES``).
        folds: cross-validation folds (for the regularisation, the model choice, the calibration
            map and the threshold); fewer when a class has fewer answers.
        select: ``"all"`` (default): the regression over every feature; ``"auto"``: that, or a
            regression on one feature alone, whichever has the lower out-of-fold log-loss on the
            fit data (nested cross-validation): with about a hundred answers the many-feature
            regression is noisy, and a single strong signal may predict as well.
        strategy, gamma, alpha: the decoding the answers came from (stored, checked when applied).
        fingerprints: the pair's ``pair_fingerprints`` (stored; empty = not checked).
        about: extra facts stored in ``fit`` (data, models).

    Returns:
        The ScoreModel; ``fit`` holds its out-of-fold AUROC, Brier score, ECE and threshold
        numbers on the fit data.
    """
    np, Iso, LR, LRCV, SKF, cvp = _sklearn()
    parse_target(target)
    if calibration not in ("auto", "platt", "isotonic"):
        raise ConfigError(f"calibration must be auto, platt or isotonic, got {calibration!r}")
    y = np.array([bool(c) for c in correct], dtype=int)
    if len(rows) != len(y):
        raise ConfigError("rows and correct labels differ in length")
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < 2:
        raise ConfigError(
            f"fitting needs at least 2 right and 2 wrong answers; got {n_pos} right "
            f"and {n_neg} wrong: use more (or other) labelled items"
        )
    features = tuple(f for f in features if f in FEATURES)
    raw = np.array(
        [[np.nan if r.get(f) is None else float(r[f]) for f in features] for r in rows], dtype=float
    )
    fill = np.nanmean(np.where(np.isfinite(raw), raw, np.nan), axis=0)
    fill = np.where(np.isfinite(fill), fill, 0.0)
    X = np.where(np.isfinite(raw), raw, fill)
    mean, scale = X.mean(0), X.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    Z = (X - mean) / scale
    k = max(2, min(folds, n_pos, n_neg))
    cv = SKF(n_splits=k, shuffle=True, random_state=seed)
    if select not in ("auto", "all"):
        raise ConfigError(f"select must be auto or all, got {select!r}")

    def logloss(p: Any) -> float:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def lrcv() -> Any:
        return LRCV(
            Cs=np.logspace(-3, 2, 11).tolist(), cv=cv, scoring="neg_log_loss", max_iter=2000
        )

    candidates: dict[str, float] = {}
    with warnings.catch_warnings():  # scikit-learn 1.9 announces changes of defaults we don't use
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        chosen = "all"
        if select == "auto" and len(features) > 1:
            candidates["all"] = logloss(cvp(lrcv(), Z, y, cv=cv, method="predict_proba")[:, 1])
            for j, f in enumerate(features):
                candidates[f] = logloss(
                    cvp(LR(C=1e4, max_iter=2000), Z[:, [j]], y, cv=cv, method="predict_proba")[:, 1]
                )
            chosen = min(candidates, key=lambda c: (candidates[c], c != "all"))
        if chosen == "all":
            lr = lrcv().fit(Z, y)
            C = float(np.atleast_1d(lr.C_)[0])
        else:
            j = features.index(chosen)
            features, fill, mean, scale = (chosen,), fill[[j]], mean[[j]], scale[[j]]
            Z, C = Z[:, [j]], 1e4
            lr = LR(C=C, max_iter=2000).fit(Z, y)
        # out-of-fold logits with the chosen C: what the calibration map and threshold see
        oof = cvp(LR(C=C, max_iter=2000), Z, y, cv=cv, method="decision_function")
    method = calibration if calibration != "auto" else ("isotonic" if len(y) >= 500 else "platt")
    if method == "platt":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            pl = LR(C=1e6, max_iter=2000).fit(oof.reshape(-1, 1), y)
        cal = {"method": "platt", "a": float(pl.coef_[0, 0]), "b": float(pl.intercept_[0])}
    else:
        iso = Iso(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(oof, y)
        cal = {
            "method": "isotonic",
            "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_],
        }
    model = ScoreModel(
        features=features,
        fill=tuple(map(float, fill)),
        mean=tuple(map(float, mean)),
        scale=tuple(map(float, scale)),
        coef=tuple(float(c) for c in lr.coef_[0]),
        intercept=float(lr.intercept_[0]),
        calibration=cal,
        threshold=0.5,
        target=target,
        strategy=strategy,
        gamma=gamma,
        alpha=alpha,
        fingerprints=fingerprints or {},
    )
    oof_p = [model.calibrate(float(z)) for z in oof]
    thr = choose_threshold(oof_p, y.astype(bool).tolist(), target)
    from .metrics import auroc, brier, ece

    fit = {
        "answers": int(len(y)),
        "right": n_pos,
        "C": C,
        "folds": k,
        "calibration": method,
        "selected": chosen,
        "oof_logloss_of_candidates": candidates,
        "oof_auroc": auroc(oof_p, y.tolist()),
        "oof_brier": brier(oof_p, y.tolist()),
        "oof_ece": ece(oof_p, y.tolist()),
        "threshold_on_fit": thr,
        **(about or {}),
    }
    return ScoreModel(**{**asdict(model), "threshold": thr["threshold"], "fit": fit})
