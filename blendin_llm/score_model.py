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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

FEATURE_LABELS = {
    "norm_prob": "answer probability (normalized)",
    "min_prob": "lowest token probability",
    "mean_negentropy": "mean token negentropy",
    "min_negentropy": "lowest token negentropy",
    "mean_margin": "mean top-1/top-2 margin",
    "intervention_rate": "intervention rate",
    "base_unsure_rate": "base-unsure rate",
    "alpha_mean": "mean guide weight (alpha)",
    "alpha_std": "spread of alpha",
    "guide_weight": "guides' share of the answer",
    "agreement_topk": "guide agreement",
    "divergence_mean": "mean base/guide divergence",
    "divergence_max": "largest base/guide divergence",
    "divergence_early": "divergence early in the answer",
    "divergence_late": "divergence late in the answer",
    "log_tokens": "answer length",
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
        raise ConfigError(
            f"flag target {text!r} must be precision=P (share of kept answers that "
            "are right) or recall=R (share of wrong answers flagged), P and R in "
            "(0, 1]"
        )
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
        parts = sorted(
            (
                (c * x, name, feats.get(name))
                for c, x, name in zip(self.coef, self._z(feats), self.features)
            ),
            key=lambda t: t[0],
        )
        return [
            f"{_label(name)} {v:.2f}" if isinstance(v, (int, float)) else _label(name)
            for contrib, name, v in parts[:n]
            if contrib < 0
        ]

    def applies_to(self, strategy: str) -> bool:
        return strategy == self.strategy

    # -- storage -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("force")
        return d

    @classmethod
    def from_dict(cls, data: dict, force: bool = False) -> ScoreModel:
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
            raise ConfigError(
                f"the profile's score model is malformed ({e}); recreate it with "
                "`blendin calibrate`"
            ) from None


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# -- model fingerprints --------------------------------------------------------------------------
_VOLATILE = {"transformers_version", "torch_dtype", "dtype", "use_cache", "name_or_path"}


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: _clean(v)
            for k, v in sorted(obj.items())
            if not str(k).startswith("_") and k not in _VOLATILE
        }
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
