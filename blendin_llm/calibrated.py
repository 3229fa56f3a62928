"""A per-pair calibrated reliability score: P(answer is right | its uncertainty features).

``fit_score_model`` (needs scikit-learn, the ``eval`` extra) fits on labelled answers:

1. the features of ``blendin_llm.uncertainty`` (missing values replaced by their mean on the fit
   data, then standardised), a logistic regression with L2 regularisation whose strength is chosen
   by stratified cross-validation on the log-loss (``LogisticRegressionCV``);
2. a calibration map from the regression's output to a probability, fitted on out-of-fold
   predictions (so it does not learn the regression's own over-confidence): Platt scaling (a
   logistic curve on the logit) or isotonic regression (a monotone step function, linearly
   interpolated), ``"auto"`` = isotonic from 500 answers on, Platt below;
3. the flag threshold, chosen on the same out-of-fold calibrated probabilities for a stated
   target: ``precision=P`` (the kept answers, score >= threshold, are right at least a share P:
   the lowest such threshold) or ``recall=R`` (at least a share R of the wrong answers is
   flagged, score < threshold: the lowest such threshold).

A ``ScoreModel`` is plain numbers (JSON in the profile, no pickle), and ``ScoreModel.predict`` needs
only the standard library: applying a profile never imports scikit-learn. It carries fingerprints
of the models it was fitted for (``fingerprint``): a profile from another pair is refused.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError
from .uncertainty import FEATURES

FEATURE_LABELS = {
    "norm_prob": "answer probability (normalized)", "min_prob": "lowest token probability",
    "mean_negentropy": "mean token negentropy", "min_negentropy": "lowest token negentropy",
    "mean_margin": "mean top-1/top-2 margin", "intervention_rate": "intervention rate",
    "base_unsure_rate": "base-unsure rate", "alpha_mean": "mean guide weight (alpha)",
    "alpha_std": "spread of alpha", "guide_weight": "guides' share of the answer",
    "agreement_topk": "guide agreement", "divergence_mean": "mean base/guide divergence",
    "divergence_max": "largest base/guide divergence",
    "divergence_early": "divergence early in the answer",
    "divergence_late": "divergence late in the answer", "log_tokens": "answer length",
    "stopped": "answer ended by itself",
}


def _label(name: str) -> str:
    if name.startswith("base_"):
        return FEATURE_LABELS.get(name[5:], name[5:]) + " under the base"
    return FEATURE_LABELS.get(name, name)


def parse_target(text: str) -> tuple[str, float]:
    """``"precision=0.9"`` -> ("precision", 0.9); ``"recall=0.8"`` -> ("recall", 0.8)."""
    kind, eq, value = str(text).partition("=")
    kind = kind.strip().lower()
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not eq or kind not in ("precision", "recall") or not 0.0 < v <= 1.0:
        raise ConfigError(f"flag target {text!r} must be precision=P (share of kept answers that "
                          "are right) or recall=R (share of wrong answers flagged), P and R in "
                          "(0, 1]")
    return kind, v


@dataclass(frozen=True)
class ScoreModel:
    """A fitted P(correct | features), as plain numbers.

    ``features``: the names it reads; ``fill``/``mean``/``scale``: imputation value and
    standardisation per feature; ``coef``/``intercept``: the logistic regression;
    ``calibration``: ``{"method": "platt", "a": .., "b": ..}`` (p = sigmoid(a*z + b), z the
    regression's logit) or ``{"method": "isotonic", "x": [..], "y": [..]}`` (interpolated);
    ``threshold``/``target``: flag when the probability is below ``threshold``, chosen for
    ``target`` (e.g. ``"precision=0.9"``); ``strategy``/``gamma``/``alpha``: the decoding the
    fit data came from (the model is applied to answers of that strategy only);
    ``fingerprints``: {"base": .., "guides": [..]} of the models (``fingerprint``);
    ``fit``: what it was fitted on, and its out-of-fold numbers; ``force``: skip the pair check.
    """

    features: tuple[str, ...]
    fill: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    calibration: dict
    threshold: float
    target: str
    strategy: str = "blendin"
    gamma: float | None = None
    alpha: Any = None
    fingerprints: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    force: bool = False

    # -- applying (standard library only) -------------------------------------------------------
    def _z(self, feats: dict) -> list[float]:
        out = []
        for name, fill, m, s in zip(self.features, self.fill, self.mean, self.scale):
            v = feats.get(name)
            v = fill if v is None or not math.isfinite(v) else float(v)
            out.append((v - m) / s)
        return out

    def logit(self, feats: dict) -> float:
        """The regression's logit for one answer's feature dict."""
        return self.intercept + sum(c * x for c, x in zip(self.coef, self._z(feats)))

    def calibrate(self, z: float) -> float:
        """The calibration map from a logit to a probability."""
        cal = self.calibration
        if cal["method"] == "platt":
            return _sigmoid(cal["a"] * z + cal["b"])
        xs, ys = cal["x"], cal["y"]
        if z <= xs[0]:
            return ys[0]
        if z >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, z)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (z - x0) / (x1 - x0)

    def predict(self, feats: dict) -> float:
        """P(correct) for one answer's feature dict, in [0, 1]."""
        return min(1.0, max(0.0, self.calibrate(self.logit(feats))))

    def drivers(self, feats: dict, n: int = 2) -> list[str]:
        """The ``n`` features that pulled this answer's score down the most, in words."""
        parts = sorted(((c * x, name, feats.get(name)) for c, x, name in
                        zip(self.coef, self._z(feats), self.features)), key=lambda t: t[0])
        return [f"{_label(name)} {v:.2f}" if isinstance(v, (int, float)) else _label(name)
                for contrib, name, v in parts[:n] if contrib < 0]

    def applies_to(self, strategy: str) -> bool:
        return strategy == self.strategy

    # -- storage -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("force")
        return d

    @classmethod
    def from_dict(cls, data: dict, force: bool = False) -> "ScoreModel":
        """The inverse of ``to_dict``; a malformed model is a ConfigError."""
        try:
            d = dict(data)
            force = force or bool(d.pop("force", False))
            for k in ("features", "fill", "mean", "scale", "coef"):
                d[k] = tuple(d[k])
            d["features"] = tuple(str(x) for x in d["features"])
            for k in ("fill", "mean", "scale", "coef"):
                d[k] = tuple(float(x) for x in d[k])
            n = len(d["features"])
            if any(len(d[k]) != n for k in ("fill", "mean", "scale", "coef")):
                raise ValueError("feature vectors of different lengths")
            if any(s <= 0 for s in d["scale"]):
                raise ValueError("a scale is not positive")
            cal = d["calibration"]
            if cal.get("method") == "platt":
                float(cal["a"]), float(cal["b"])
            elif cal.get("method") == "isotonic":
                if len(cal["x"]) != len(cal["y"]) or not cal["x"]:
                    raise ValueError("isotonic map needs x and y of one length")
            else:
                raise ValueError(f"unknown calibration method {cal.get('method')!r}")
            d["intercept"], d["threshold"] = float(d["intercept"]), float(d["threshold"])
            parse_target(d["target"])
            return cls(**d, force=force)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the profile's score model is malformed ({e}); recreate it with "
                              "`blendin calibrate`") from None


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# -- model fingerprints --------------------------------------------------------------------------
_VOLATILE = {"transformers_version", "torch_dtype", "dtype", "use_cache", "name_or_path"}


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items())
                if not str(k).startswith("_") and k not in _VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def fingerprint(backend: Any) -> str:
    """A short hash of a model: its config (paths, versions and dtype left out), its tokenizer's
    vocabulary, and a digest of its weights (names, shapes and 64 evenly spaced values of every
    tensor, as float32). Computed once per backend (a few hundred ms for the default pair)."""
    cached = getattr(backend, "_blendin_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    model = getattr(backend, "model", None)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        h.update(json.dumps(_clean(cfg.to_dict()), sort_keys=True, default=str).encode())
    vocab = backend.vocab()
    h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode())
    if model is not None and hasattr(model, "state_dict"):
        import torch

        with torch.no_grad():
            for name, t in model.state_dict().items():
                flat = t.detach().reshape(-1)
                h.update(f"{name}:{tuple(t.shape)}".encode())
                if flat.numel():
                    m = min(64, flat.numel())  # evenly spaced, in integers (exact for any size)
                    idx = torch.arange(m, dtype=torch.int64) * (flat.numel() - 1) // max(1, m - 1)
                    h.update(flat[idx].to("cpu", torch.float32).numpy().tobytes())
    fp = h.hexdigest()[:20]
    try:
        backend._blendin_fingerprint = fp
    except AttributeError:
        pass
    return fp


def pair_fingerprints(base: Any, guides: Sequence[Any]) -> dict:
    return {"base": fingerprint(base), "guides": [fingerprint(g) for g in guides]}


def check_pair(model: ScoreModel, base: Any, guides: Sequence[Any]) -> None:
    """Raise ConfigError when ``model`` was fitted for other models (unless ``model.force``)."""
    if model.force or not model.fingerprints:
        return
    have = pair_fingerprints(base, guides)
    want = model.fingerprints
    if have != {"base": want.get("base"), "guides": list(want.get("guides") or [])}:
        names = (model.fit or {}).get("models") or {}
        raise ConfigError(
            "the reliability profile was fitted for another model pair "
            f"({names.get('base', '?')} + {', '.join(names.get('guides') or []) or '-'}; "
            f"fingerprints {want}) than the one loaded ({have}): its score would not mean "
            "P(correct) here. Fit one for this pair with `blendin calibrate`, or pass force=True "
            "(--force-profile) to apply it anyway"
        )


# -- fitting (scikit-learn) ----------------------------------------------------------------------
def _sklearn():
    try:
        import numpy as np
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
    except ImportError as e:
        raise ConfigError("fitting a score model needs scikit-learn: "
                          "pip install 'blendin-llm[eval]'") from e
    return np, IsotonicRegression, LogisticRegression, LogisticRegressionCV, StratifiedKFold, \
        cross_val_predict


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
        row = {"threshold": float(min(t, 1.0)), "precision": precision, "recall": recall,
               "kept": kept / n if n else 0.0, "met": ok}
        if ok:
            best = row
            break
    if best is None:  # not reachable: flag everything
        best = {"threshold": 1.0, "precision": 1.0, "recall": 1.0, "kept": 0.0, "met": False}
    return best


def fit_score_model(rows: Sequence[dict], correct: Sequence[bool], *, target: str = "recall=0.8",
                    calibration: str = "auto", features: Sequence[str] = FEATURES,
                    folds: int = 5, seed: int = 0, select: str = "all",
                    strategy: str = "blendin",
                    gamma: float | None = None, alpha: Any = None,
                    fingerprints: dict | None = None, about: dict | None = None) -> ScoreModel:
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
        raise ConfigError(f"fitting needs at least 2 right and 2 wrong answers; got {n_pos} right "
                          f"and {n_neg} wrong: use more (or other) labelled items")
    features = tuple(f for f in features if f in FEATURES)
    raw = np.array([[np.nan if r.get(f) is None else float(r[f]) for f in features]
                    for r in rows], dtype=float)
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

    def logloss(p):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    def lrcv():
        return LRCV(Cs=np.logspace(-3, 2, 11).tolist(), cv=cv, scoring="neg_log_loss",
                    max_iter=2000)

    candidates: dict[str, float] = {}
    with warnings.catch_warnings():  # scikit-learn 1.9 announces changes of defaults we don't use
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        chosen = "all"
        if select == "auto" and len(features) > 1:
            candidates["all"] = logloss(cvp(lrcv(), Z, y, cv=cv, method="predict_proba")[:, 1])
            for j, f in enumerate(features):
                candidates[f] = logloss(cvp(LR(C=1e4, max_iter=2000), Z[:, [j]], y, cv=cv,
                                            method="predict_proba")[:, 1])
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
        cal = {"method": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
               "y": [float(v) for v in iso.y_thresholds_]}
    model = ScoreModel(
        features=features, fill=tuple(map(float, fill)), mean=tuple(map(float, mean)),
        scale=tuple(map(float, scale)), coef=tuple(float(c) for c in lr.coef_[0]),
        intercept=float(lr.intercept_[0]), calibration=cal, threshold=0.5, target=target,
        strategy=strategy, gamma=gamma, alpha=alpha, fingerprints=fingerprints or {},
    )
    oof_p = [model.calibrate(float(z)) for z in oof]
    thr = choose_threshold(oof_p, y.astype(bool).tolist(), target)
    from .metrics import auroc, brier, ece  # local: the metrics module is small and pure

    fit = {"answers": int(len(y)), "right": n_pos, "C": C, "folds": k, "calibration": method,
           "selected": chosen, "oof_logloss_of_candidates": candidates,
           "oof_auroc": auroc(oof_p, y.tolist()), "oof_brier": brier(oof_p, y.tolist()),
           "oof_ece": ece(oof_p, y.tolist()), "threshold_on_fit": thr, **(about or {})}
    return ScoreModel(**{**asdict(model), "threshold": thr["threshold"], "fit": fit})
