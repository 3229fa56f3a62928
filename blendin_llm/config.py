"""Configuration objects: how to blend (BlendConfig), when to flag (ReliabilityConfig), how to sample
(SamplingParams) and where a model comes from (ModelSpec).

They are plain frozen dataclasses validated on construction: a bad value raises ``ConfigError`` (or
``GenerationArgumentError`` for per-call sampling values) with a message that says what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, GenerationArgumentError

Alpha = float | Literal["auto"]


def _check_unit(name: str, value: float, err: type[Exception] = ConfigError) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise err(f"{name} must be a number in [0, 1], got {value!r}")


@dataclass(frozen=True)
class ReliabilityConfig:
    """How an answer's signals become ``score``, ``flagged`` and ``reasons``.

    With ``score_model`` (a ``blendin_llm.score_model.ScoreModel``, from a profile written by
    ``blendin calibrate``) the score is its P(correct | features) for this pair, and an answer is
    flagged when the score is below the model's threshold (chosen on the fit data for a stated
    target); the thresholds below are then not used. Without one:

    ``weights``: weights of (confidence, stability, consensus) in the score (normalised); the
      default (1, 0, 0) makes the score the normalized probability of the answer (confidence).
    ``max_intervention_rate``: above it the pair is out of its depth on this answer (paper: ~20 %).
    ``min_score``: a score below it flags the answer.
    ``min_agreement``: share of interventions where the guide's top token is in the base's top-k.
    ``max_divergence``: mean Jensen-Shannon divergence at interventions, normalised to [0, 1].
    ``min_consulted``: the agreement and divergence flags need at least this many consulted steps
      (fewer are noise: one step of disagreement says little about an answer).
    """

    max_intervention_rate: float = 0.20
    min_score: float = 0.5
    min_agreement: float = 0.5
    max_divergence: float = 0.5
    weights: tuple[float, float, float] = (1.0, 0.0, 0.0)
    min_consulted: int = 3
    score_model: Any = None

    def __post_init__(self) -> None:
        for name in ("max_intervention_rate", "min_score", "min_agreement", "max_divergence"):
            _check_unit(f"ReliabilityConfig.{name}", getattr(self, name))
        m = self.min_consulted
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f"ReliabilityConfig.min_consulted must be an integer >= 1, got {m!r}")
        if self.score_model is not None:
            from .score_model import ScoreModel

            if isinstance(self.score_model, dict):
                object.__setattr__(self, "score_model", ScoreModel.from_dict(self.score_model))
            elif not isinstance(self.score_model, ScoreModel):
                raise ConfigError(
                    "ReliabilityConfig.score_model must be a ScoreModel (from a "
                    "profile), its dict, or None"
                )
        w = tuple(self.weights)
        if len(w) != 3 or any((not isinstance(x, (int, float))) or x < 0 for x in w) or sum(w) <= 0:
            raise ConfigError(
                "ReliabilityConfig.weights must be three non-negative numbers "
                f"(confidence, stability, consensus) with a positive sum, got {self.weights!r}"
            )
        object.__setattr__(self, "weights", w)


@dataclass(frozen=True)
class MitigationConfig:
    """Run-time mitigation of unreliable guidance (on when ``BlendConfig.mitigation`` is set).

    Guide health: each guide's agreement with the base (top-k, at consulted steps) and the share of
    steps where the base was unsure are tracked across responses as running averages
    (``decay`` = weight of the past). After ``min_responses`` responses a guide whose running
    agreement is below ``off_agreement`` is switched off (not run at all); one below
    ``min_agreement``, or with a running unsure-step rate above ``max_intervention_rate``, has its
    alpha multiplied by ``downweight``. It recovers when its numbers do. A switched-off guide is
    consulted again (down-weighted) every ``probe_every`` responses to re-measure it.
    ``guide_health=False`` turns this part off.

    ``intervention_cap``: per response, the guides are consulted at no more than this share of the
    steps so far (the base decides alone beyond it); None = no cap.
    """

    guide_health: bool = True
    min_agreement: float = 0.3
    off_agreement: float = 0.15
    max_intervention_rate: float = 0.5
    downweight: float = 0.5
    min_responses: int = 3
    decay: float = 0.7
    probe_every: int = 10
    intervention_cap: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "min_agreement",
            "off_agreement",
            "max_intervention_rate",
            "downweight",
            "decay",
        ):
            _check_unit(f"MitigationConfig.{name}", getattr(self, name))
        if self.off_agreement > self.min_agreement:
            raise ConfigError(
                "MitigationConfig.off_agreement must be <= min_agreement "
                f"(got {self.off_agreement} > {self.min_agreement})"
            )
        for name in ("min_responses", "probe_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"MitigationConfig.{name} must be an integer >= 1, got {v!r}")
        if self.intervention_cap is not None:
            _check_unit("MitigationConfig.intervention_cap (or None)", self.intervention_cap)


@dataclass(frozen=True)
class BlendConfig:
    """How the base and the guides are combined at each step.

    ``strategy``: a registered strategy name (``blendin_llm.available_strategies()``).
    ``gamma``: the guide is consulted when the base's top-1 probability is below it. 0 never
      consults, anything above 1 consults at every step.
    ``alpha``: the guide weight in [0, 1], or ``"auto"`` for the confidence-based rule.
    ``agreement_top_k``: k of "guide's top token is in the base's top-k" (the agreement signal).
    ``reliability``: thresholds for flagging an answer.
    ``mitigation``: a ``MitigationConfig`` turns on run-time mitigation of unreliable guides
      (down-weighting, switching off, an intervention cap); None (default) = off.
    """

    strategy: str = "blendin"
    gamma: float = 0.4
    alpha: Alpha = "auto"
    agreement_top_k: int = 10
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)
    mitigation: MitigationConfig | None = None

    def __post_init__(self) -> None:
        from .strategies import available_strategies  # late: strategies import this module

        if not isinstance(self.strategy, str) or self.strategy not in available_strategies():
            raise ConfigError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(available_strategies())}"
            )
        g = self.gamma
        if not isinstance(g, (int, float)) or isinstance(g, bool) or math.isnan(g) or g < 0:
            raise ConfigError(
                f"gamma must be a number >= 0 (0 = never consult the guide, > 1 = always), got {g!r}"
            )
        if self.alpha != "auto":
            _check_unit("alpha (or 'auto')", self.alpha)
        k = self.agreement_top_k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"agreement_top_k must be an integer >= 1, got {k!r}")
        if not isinstance(self.reliability, ReliabilityConfig):
            raise ConfigError("reliability must be a ReliabilityConfig")
        if self.mitigation is not None and not isinstance(self.mitigation, MitigationConfig):
            raise ConfigError("mitigation must be a MitigationConfig or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_profile(cls, path: Any) -> BlendConfig:
        """The recommended config of a profile written by ``blendin calibrate``."""
        return load_profile(path)["config"]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlendConfig:
        """The inverse of ``to_dict`` (unknown keys are an error)."""
        data = dict(data)
        try:
            if isinstance(data.get("reliability"), dict):
                rel = dict(data["reliability"])
                if "weights" in rel:
                    rel["weights"] = tuple(rel["weights"])
                data["reliability"] = ReliabilityConfig(**rel)
            if isinstance(data.get("mitigation"), dict):
                data["mitigation"] = MitigationConfig(**data["mitigation"])
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"not a BlendConfig: {e}") from None


TEMPERATURE_MAX = 2.0
"""The largest temperature a call accepts (OpenAI's bound): above it every answer is noise."""


def _real(name: str, value: Any, lo: float, hi: float, what: str, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi]) as a float, else GenerationArgumentError."""
    v = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            v = float(value)
        except OverflowError:  # an integer beyond any float
            pass
    if not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi):
        raise GenerationArgumentError(f"{name} must be {what}, got {value!r}")
    return v


def _integer(name: str, value: Any, lo: int, what: str, hi: float = math.inf) -> int:
    """An integer (Python or numpy, not bool; numpy's bool is no numbers.Integral) in [lo, hi] as an int, else GenerationArgumentError."""
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or not lo <= int(value) <= hi
    ):
        raise GenerationArgumentError(f"{name} must be {what}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SamplingParams:
    """Per-call decoding options. ``temperature == 0`` (the default) is greedy decoding.

    Every value is checked on construction (a ``GenerationArgumentError`` says what is allowed);
    numpy numbers are accepted and stored as Python numbers.

    ``temperature``: 0 (greedy) to ``TEMPERATURE_MAX`` (2, OpenAI's bound); sampling applies to the
    final distribution: temperature, then top-k, then top-p (in (0, 1]).
    ``seed``: any integer, however large or negative; every bit of it matters. A seeded call gives
    the same answer every time, whatever runs beside it; an unseeded call draws 128 bits of
    entropy (``sampling.SeedStream``).
    ``ignore_eos`` keeps generating past EOS tokens (for benchmarks; stop strings still apply).
    ``logprobs``: None (off), or report each token's log-prob in the final distribution with this
    many alternatives (0-20).

    Penalties (all off by default; off gives exactly the output without them). They change the
    final distribution (the base's, or the blend when the guides were consulted) before the token
    is chosen, counting the tokens of the answer only, never the prompt; the gate and the
    reliability signals still read the models' own distributions (see ``blendin_llm.sampling``):
    ``repetition_penalty``: transformers' semantics, > 0, 1.0 = off; a token already in the answer
    has its log-prob multiplied by it (p -> p ** penalty, renormalised).
    ``frequency_penalty`` / ``presence_penalty``: OpenAI's semantics, in [-2, 2], 0 = off;
    ``log p -= count * frequency + (count > 0) * presence``.
    ``no_repeat_ngram_size``: transformers' semantics, 0 = off; no n-gram of this size occurs
    twice in the answer.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        from .text import lone_surrogate

        E = GenerationArgumentError
        put = object.__setattr__
        put(
            self,
            "max_new_tokens",
            _integer("max_new_tokens", self.max_new_tokens, 1, "an integer >= 1"),
        )
        put(
            self,
            "temperature",
            _real(
                "temperature",
                self.temperature,
                0.0,
                TEMPERATURE_MAX,
                f"a finite number in [0, {TEMPERATURE_MAX:g}] (0 = greedy)",
            ),
        )
        put(self, "top_p", _real("top_p", self.top_p, 0.0, 1.0, "a number in (0, 1]", lo_open=True))
        put(self, "top_k", _integer("top_k", self.top_k, 0, "an integer >= 0 (0 = off)"))
        if self.seed is not None:
            put(self, "seed", _integer("seed", self.seed, -math.inf, "an integer or None"))
        if not isinstance(self.ignore_eos, bool):
            raise E(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (tuple, list)):
            raise E(f"stop must be a string or a list of strings, got {self.stop!r}")
        for i, s in enumerate(stop):
            if not isinstance(s, str):
                raise E(f"stop strings must be str, got {s!r}")
            if s == "":
                raise E("stop strings must not be empty: an empty string would match at once")
            at = lone_surrogate(s)
            if at is not None:
                raise E(
                    f"stop string {i} has a lone surrogate {s[at]!r} at character {at}; "
                    "text must be valid Unicode (decode bytes with errors='replace')"
                )
        put(self, "stop", tuple(dict.fromkeys(stop)))
        if self.logprobs is not None:
            put(
                self,
                "logprobs",
                _integer("top_logprobs", self.logprobs, 0, "an integer in [0, 20]", 20),
            )
        put(
            self,
            "repetition_penalty",
            _real(
                "repetition_penalty",
                self.repetition_penalty,
                0.0,
                math.inf,
                "a finite number > 0 (1.0 = off)",
                lo_open=True,
            ),
        )
        for name in ("frequency_penalty", "presence_penalty"):
            put(
                self,
                name,
                _real(name, getattr(self, name), -2.0, 2.0, "a number in [-2, 2] (0 = off)"),
            )
        put(
            self,
            "no_repeat_ngram_size",
            _integer(
                "no_repeat_ngram_size", self.no_repeat_ngram_size, 0, "an integer >= 0 (0 = off)"
            ),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


PromptFormat = Literal["auto", "chat", "plain", "raw"]


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how it wants its prompt.

    ``source``: a local directory or hub id for transformers (more sources arrive with later releases).
    ``model`` / ``tokenizer``: already-loaded transformers objects (then ``source`` is only a name).
    ``dtype``: "auto", "float32", "bfloat16", "float16". "auto" is the checkpoint's dtype on a
    GPU; on a CPU, bfloat16 where the CPU computes it natively and faster, float32 elsewhere
    (``blendin_llm.backends.cpu``; ``BLENDIN_CPU_DTYPE`` overrides).  ``device``: "cpu", "cuda", "cuda:1", ...
    ``prompt_format``: "chat" uses the tokenizer's chat template; "plain" renders
      ``User: ...\\nAssistant:`` turns (configurable prefixes) for base models; "raw" feeds a string
      prompt verbatim (message contents are joined by newlines); "auto" = "chat" when the tokenizer
      has a chat template, else "plain".
    ``system_prompt``: prepended as a system turn unless the messages bring their own.
    """

    source: str = ""
    dtype: str = "auto"
    device: str = "cpu"
    prompt_format: PromptFormat = "auto"
    system_prompt: str | None = None
    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant:"
    system_prefix: str = ""
    turn_separator: str = "\n"
    name: str | None = None
    trust_remote_code: bool = False
    model: Any = field(default=None, repr=False, compare=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.model is None) != (self.tokenizer is None):
            raise ConfigError("ModelSpec needs both model and tokenizer, or neither")
        if self.model is None and (not isinstance(self.source, str) or not self.source.strip()):
            raise ConfigError(
                "ModelSpec.source must be a non-empty local path or model id "
                "(or pass model= and tokenizer= objects)"
            )
        if self.prompt_format not in ("auto", "chat", "plain", "raw"):
            raise ConfigError(
                f"prompt_format must be one of auto, chat, plain, raw; got {self.prompt_format!r}"
            )
        from .text import lone_surrogate

        for name in (
            "system_prompt",
            "user_prefix",
            "assistant_prefix",
            "system_prefix",
            "turn_separator",
        ):
            v = getattr(self, name)
            if v is None and name == "system_prompt":
                continue
            if not isinstance(v, str):
                raise ConfigError(f"ModelSpec.{name} must be a string, got {v!r}")
            at = lone_surrogate(v)
            if at is not None:
                raise ConfigError(
                    f"ModelSpec.{name} has a lone surrogate {v[at]!r} at character {at}, which "
                    "is not valid Unicode text; remove it (or decode with errors='replace')"
                )
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(
                f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}"
            )


# -- profiles written by ``blendin calibrate`` (``blendin_llm.eval.calibration``): a config with its
# score model; reading one needs no evaluation extra
PROFILE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no score model


def load_profile(path: str | Path, force: bool = False) -> dict:
    """Read and check a profile file written by ``blendin calibrate``.

    Args:
        path: the profile (JSON).
        force: mark its score model to be applied even to another model pair.

    Returns:
        The profile's dict; ``"config"`` is a BlendConfig, whose ``reliability.score_model`` is the
        profile's score model when it has one (it scores answers of the strategy it was fitted
        on).
    """
    from .score_model import ScoreModel

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the profile {str(path)!r}: {e}") from None
    if not isinstance(data, dict) or data.get("blendin_profile") not in READABLE_VERSIONS:
        raise ConfigError(
            f"{str(path)!r} is not a blendin profile (version "
            f"{' or '.join(map(str, READABLE_VERSIONS))})"
        )
    config = BlendConfig.from_dict(data.get("config") or {})
    sm = data.get("score_model")
    if sm is not None:
        model = ScoreModel.from_dict(sm, force=force)
        data["score_model"] = model
        rel = dataclasses.replace(config.reliability, score_model=model)
        config = dataclasses.replace(config, reliability=rel)
    data["config"] = config
    return data
