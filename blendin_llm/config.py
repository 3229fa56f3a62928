"""Configuration objects: how to blend (BlendConfig), when to flag (ReliabilityConfig), how to
mitigate unreliable guides (MitigationConfig), how to sample (SamplingParams) and where a model
comes from (ModelSpec).

They are frozen pydantic models: each field carries its constraints and its description (the
docstring under it), so the same objects check per-call options, document the faces' and the
server's settings, and round-trip to profiles (``to_dict`` / ``from_dict``). A bad value raises
``ConfigError`` (``GenerationArgumentError`` for the per-call ``SamplingParams``) with one message
per problem that says what is allowed, never pydantic's ``ValidationError``. ``replace(**changes)``
gives a checked copy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from .errors import BlendInError, ConfigError, GenerationArgumentError
from .score_model import ScoreModel
from .text import lone_surrogate

Alpha = float | Literal["auto"]


@dataclasses.dataclass(frozen=True)
class Allowed:
    """Field metadata: the values a field takes, in words, for the error message of a bad one."""

    text: str


Unit = Annotated[float, Field(ge=0.0, le=1.0, strict=True), Allowed("a number in [0, 1]")]
"""A number in [0, 1] (int or float, not bool or str)."""
Count = Annotated[int, Field(ge=1, strict=True), Allowed("an integer >= 1")]
"""An integer >= 1 (not bool)."""


def explain(cls: type[_Settings], exc: ValidationError) -> str:
    """pydantic's errors as one message in the project's words: ``<name> must be <allowed>, got
    <value>`` per problem; a validator's own message (a rule across fields, a registry lookup) is
    kept whole."""
    out = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        name = cls._prefix + field
        if err["type"] == "value_error":
            error = err.get("ctx", {}).get("error")
            out.append(str(error) if error is not None else err["msg"])
        elif err["type"] == "extra_forbidden":
            out.append(
                f"{cls.__name__} has no field {field!r}; its fields are "
                f"{', '.join(cls.model_fields)}"
            )
        else:
            # a nested config checks itself in its own __init__: its errors arrive as value_error
            info = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
            words = next(
                (m.text for m in (info.metadata if info else ()) if isinstance(m, Allowed)), None
            )
            what = words or err["msg"][0].lower() + err["msg"][1:]
            out.append(f"{name} must be {what}, got {err['input']!r}")
    return "; ".join(dict.fromkeys(out))


class _Settings(BaseModel):
    """A frozen, checked settings object (the base of every config here)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        arbitrary_types_allowed=True,
        use_attribute_docstrings=True,
        protected_namespaces=(),
    )
    _error: ClassVar[type[BlendInError]] = ConfigError
    """The error a bad value raises."""
    _prefix: ClassVar[str] = ""
    """How error messages name a field: "" (a call's keyword) or "<Class>." (a nested setting)."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise self._error(explain(type(self), e)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, checked like a new object (unknown fields are an error).

        Args:
            **changes: field values to set.

        Returns:
            A new object of the same class.
        """
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**values, **changes})

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (nested configs as dicts), for JSON and ``from_dict``."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The inverse of ``to_dict`` (unknown keys are an error).

        Args:
            data: field values; nested configs may be dicts.

        Returns:
            The checked object.
        """
        if not isinstance(data, dict):
            raise cls._error(f"{cls.__name__} needs a dict of its fields, got {data!r}")
        return cls(**data)


class ReliabilityConfig(_Settings):
    """How an answer's signals become ``score``, ``flagged`` and ``reasons``.

    With ``score_model`` (a ``blendin_llm.score_model.ScoreModel``, from a profile written by
    ``blendin calibrate``) the score is its P(correct | features) for this pair, and an answer is
    flagged when the score is below the model's threshold (chosen on the fit data for a stated
    target); the thresholds here are then not used. Without one, the score is the weighted
    signals and the thresholds flag.
    """

    _prefix: ClassVar[str] = "ReliabilityConfig."

    max_intervention_rate: Unit = 0.20
    """Above this share of consulted steps the pair is out of its depth on the answer (the
    paper: ~20 %)."""
    min_score: Unit = 0.5
    """A score below it flags the answer."""
    min_agreement: Unit = 0.5
    """Share of interventions where the guide's top token is in the base's top-k; below it flags."""
    max_divergence: Unit = 0.5
    """Mean Jensen-Shannon divergence at interventions, normalised to [0, 1]; above it flags."""
    weights: tuple[float, float, float] = (1.0, 0.0, 0.0)
    """Weights of (confidence, stability, consensus) in the score (normalised); the default makes
    the score the normalised probability of the answer (confidence)."""
    min_consulted: Count = 3
    """The agreement and divergence flags need at least this many consulted steps (one step of
    disagreement says little about an answer)."""
    score_model: Any = None
    """A ``ScoreModel`` (or its dict) fitted by ``blendin calibrate`` for this pair, or None."""

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, w: Any) -> tuple[float, float, float]:
        ok = isinstance(w, (tuple, list)) and len(w) == 3
        ok = ok and all(
            isinstance(x, numbers.Real) and not isinstance(x, bool) and float(x) >= 0 for x in w
        )
        if not ok or sum(w) <= 0:
            raise ValueError(
                "ReliabilityConfig.weights must be three non-negative numbers "
                f"(confidence, stability, consensus) with a positive sum, got {w!r}"
            )
        return (float(w[0]), float(w[1]), float(w[2]))

    @field_validator("score_model", mode="before")
    @classmethod
    def _score_model(cls, model: Any) -> Any:
        if isinstance(model, dict):
            return ScoreModel.from_dict(model)
        if model is not None and not isinstance(model, ScoreModel):
            raise ValueError(
                "ReliabilityConfig.score_model must be a ScoreModel (from a profile), its dict, "
                f"or None; got {type(model).__name__}"
            )
        return model

    @field_serializer("score_model")
    def _dump_score_model(self, model: Any) -> Any:
        return None if model is None else dataclasses.asdict(model)


class MitigationConfig(_Settings):
    """Run-time mitigation of unreliable guidance (on when ``BlendConfig.mitigation`` is set).

    Guide health: each guide's agreement with the base (top-k, at consulted steps) and the share
    of steps where the base was unsure are tracked across responses as running averages. After
    ``min_responses`` responses a guide whose running agreement is below ``off_agreement`` is
    switched off (not run at all); one below ``min_agreement``, or with a running unsure-step rate
    above ``max_intervention_rate``, has its alpha multiplied by ``downweight``. It recovers when
    its numbers do. A switched-off guide is consulted again (down-weighted) every ``probe_every``
    responses to re-measure it.
    """

    _prefix: ClassVar[str] = "MitigationConfig."

    guide_health: Annotated[bool, Field(strict=True), Allowed("True or False")] = True
    """Track each guide's health and act on it (False turns this part off)."""
    min_agreement: Unit = 0.3
    """Running agreement below it down-weights the guide."""
    off_agreement: Unit = 0.15
    """Running agreement below it switches the guide off (<= ``min_agreement``)."""
    max_intervention_rate: Unit = 0.5
    """Running unsure-step rate above it down-weights the guide."""
    downweight: Unit = 0.5
    """The factor on a down-weighted guide's alpha."""
    min_responses: Count = 3
    """Responses seen before a guide is judged."""
    decay: Unit = 0.7
    """Weight of the past in the running averages."""
    probe_every: Count = 10
    """A switched-off guide is consulted again every this many responses."""
    intervention_cap: Annotated[
        float | None,
        Field(ge=0.0, le=1.0, strict=True),
        Allowed("a number in [0, 1] or None"),
    ] = None
    """Per response, the guides are consulted at no more than this share of the steps so far
    (the base decides alone beyond it); None = no cap."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.off_agreement > self.min_agreement:
            raise ValueError(
                "MitigationConfig.off_agreement must be <= min_agreement "
                f"(got {self.off_agreement} > {self.min_agreement})"
            )
        return self


class BlendConfig(_Settings):
    """How the base and the guides are combined at each step.

    Every scalar field is also a per-call option (``llm.generate(..., gamma=0.3)``), a face
    setting and a server request field; ``blendin calibrate`` writes one into a profile.
    """

    strategy: str = "blendin"
    """A registered strategy name (``blendin_llm.available_strategies()``)."""
    gamma: Annotated[
        float,
        Field(ge=0.0, strict=True),
        Allowed("a number >= 0 (0 = never consult the guide, > 1 = always)"),
    ] = 0.4
    """The guides are consulted when the base's top-1 probability is below it."""
    alpha: Alpha = "auto"
    """The guide weight in [0, 1], or ``"auto"`` for the confidence-based rule."""
    agreement_top_k: Count = 10
    """k of "the guide's top token is in the base's top-k" (the agreement signal)."""
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    """How the signals become a score and flags."""
    mitigation: MitigationConfig | None = None
    """Run-time mitigation of unreliable guides (down-weighting, switching off, an intervention
    cap); None (default) = off."""

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, name: Any) -> str:
        from .strategies import available_strategies  # late: strategies import this module

        if not isinstance(name, str) or name not in available_strategies():
            raise ValueError(
                f"unknown strategy {name!r}; choose one of {', '.join(available_strategies())}"
            )
        return name

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha(cls, a: Any) -> Any:
        if a == "auto" and isinstance(a, str):
            return a
        if not isinstance(a, numbers.Real) or isinstance(a, bool) or not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1] or 'auto', got {a!r}")
        return float(a)

    @classmethod
    def from_profile(cls, path: Any) -> BlendConfig:
        """The recommended config of a profile written by ``blendin calibrate``.

        Args:
            path: the profile (JSON).

        Returns:
            Its config, with the profile's score model when it has one.
        """
        return load_profile(path)["config"]

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the settings a call may override (every field).

        Returns:
            The field names.
        """
        return tuple(cls.model_fields)


TEMPERATURE_MAX = 2.0
"""The largest temperature a call accepts (OpenAI's bound): above it every answer is noise."""


def _real(name: str, what: str, lo: float, hi: float, lo_open: bool = False) -> BeforeValidator:
    """A validator: a finite real number (numpy's too, not bool) in [lo, hi] (or (lo, hi]), as a
    float; else GenerationArgumentError with ``<name> must be <what>``."""

    def check(value: Any) -> float:
        v = math.nan
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                v = float(value)
            except OverflowError:  # an integer beyond any float
                pass
        if not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi):
            raise GenerationArgumentError(f"{name} must be {what}, got {value!r}")
        return v

    return BeforeValidator(check)


def _integer(
    name: str, what: str, lo: float, hi: float = math.inf, optional: bool = False
) -> BeforeValidator:
    """A validator: an integer (Python or numpy, not bool; numpy's bool is no numbers.Integral)
    in [lo, hi], as an int (or None when ``optional``); else GenerationArgumentError with
    ``<name> must be <what>``."""

    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        if (
            not isinstance(value, numbers.Integral)
            or isinstance(value, bool)
            or not lo <= int(value) <= hi
        ):
            raise GenerationArgumentError(f"{name} must be {what}, got {value!r}")
        return int(value)

    return BeforeValidator(check)


def _stops(value: Any) -> tuple[str, ...]:
    E = GenerationArgumentError
    stop = (value,) if isinstance(value, str) else value
    if not isinstance(stop, (tuple, list)):
        raise E(f"stop must be a string or a list of strings, got {value!r}")
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
    return tuple(dict.fromkeys(stop))


class SamplingParams(_Settings):
    """Per-call decoding options. ``temperature == 0`` (the default) is greedy decoding.

    Every value is checked on construction (a ``GenerationArgumentError`` says what is allowed);
    numpy numbers are accepted and stored as Python numbers. Sampling applies to the final
    distribution: penalties, temperature, then top-k, then top-p.

    The penalties (all off by default; off gives exactly the output without them) change the final
    distribution (the base's, or the blend when the guides were consulted) before the token is
    chosen, counting the tokens of the answer only, never the prompt; the gate and the reliability
    signals still read the models' own distributions (see ``blendin_llm.sampling``).
    """

    _error: ClassVar[type[BlendInError]] = GenerationArgumentError

    max_new_tokens: Annotated[
        int, Field(ge=1), _integer("max_new_tokens", "an integer >= 1", 1)
    ] = 128
    """The most tokens the answer may have."""
    temperature: Annotated[
        float,
        Field(ge=0, le=TEMPERATURE_MAX),
        _real(
            "temperature",
            f"a finite number in [0, {TEMPERATURE_MAX:g}] (0 = greedy)",
            0.0,
            TEMPERATURE_MAX,
        ),
    ] = 0.0
    """0 = greedy (the default) up to 2 (OpenAI's bound); sampling applies to the final (blended)
    distribution."""
    top_p: Annotated[
        float, Field(gt=0, le=1), _real("top_p", "a number in (0, 1]", 0.0, 1.0, lo_open=True)
    ] = 1.0
    """Nucleus sampling: the smallest set of tokens with this much probability (1 = off)."""
    top_k: Annotated[int, Field(ge=0), _integer("top_k", "an integer >= 0 (0 = off)", 0)] = 0
    """Sample among the k most likely tokens only (0 = off)."""
    seed: Annotated[
        int | None, _integer("seed", "an integer or None", -math.inf, optional=True)
    ] = None
    """Any integer, however large or negative; every bit of it matters. A seeded call gives the
    same answer every time, whatever runs beside it; an unseeded call draws 128 bits of entropy
    (``sampling.SeedStream``)."""
    stop: Annotated[tuple[str, ...], BeforeValidator(_stops)] = ()
    """Strings that end the answer (not included in it); a string or a list."""
    ignore_eos: Annotated[bool, Field(strict=True), Allowed("True or False")] = False
    """Keep generating past EOS tokens and a plain-format base's end of turn (for benchmarks;
    the stop strings asked for still apply)."""
    logprobs: Annotated[
        int | None,
        Field(ge=0, le=20),
        _integer("top_logprobs", "an integer in [0, 20]", 0, 20, optional=True),
    ] = None
    """None (off), or report each token's log-prob in the final distribution with this many
    alternatives (0-20)."""
    repetition_penalty: Annotated[
        float,
        Field(gt=0),
        _real("repetition_penalty", "a finite number > 0 (1.0 = off)", 0.0, math.inf, lo_open=True),
    ] = 1.0
    """transformers' semantics, > 0, 1.0 = off: a token already in the answer has its log-prob
    multiplied by it (p -> p ** penalty, renormalised)."""
    frequency_penalty: Annotated[
        float,
        Field(ge=-2, le=2),
        _real("frequency_penalty", "a number in [-2, 2] (0 = off)", -2.0, 2.0),
    ] = 0.0
    """OpenAI's semantics, in [-2, 2], 0 = off: ``log p -= count * frequency_penalty``."""
    presence_penalty: Annotated[
        float,
        Field(ge=-2, le=2),
        _real("presence_penalty", "a number in [-2, 2] (0 = off)", -2.0, 2.0),
    ] = 0.0
    """OpenAI's semantics, in [-2, 2], 0 = off: ``log p -= (count > 0) * presence_penalty``."""
    no_repeat_ngram_size: Annotated[
        int, Field(ge=0), _integer("no_repeat_ngram_size", "an integer >= 0 (0 = off)", 0)
    ] = 0
    """transformers' semantics, 0 = off: no n-gram of this size occurs twice in the answer."""

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (temperature 0)."""
        return self.temperature == 0.0


PromptFormat = Literal["auto", "chat", "plain", "raw"]
_UNSET: Any = object()


class ModelSpec(_Settings):
    """Where a model comes from and how it wants its prompt.

    ``ModelSpec("path/or/hub-id", ...)`` (the source may be given by position), or
    ``ModelSpec(model=..., tokenizer=...)`` with already-loaded transformers objects (then
    ``source`` is only a name).
    """

    _prefix: ClassVar[str] = "ModelSpec."

    source: Annotated[str, Allowed("a local path or model id (a string)")] = ""
    """A local directory or hub id for transformers (a preset name goes through ``sources``)."""
    dtype: Annotated[
        Literal["auto", "float32", "bfloat16", "float16"],
        Allowed("one of auto, float32, bfloat16, float16"),
    ] = "auto"
    """"auto" is the checkpoint's dtype on a GPU; on a CPU, bfloat16 where the CPU computes it
    natively and faster, float32 elsewhere (``blendin_llm.backends.cpu``; ``BLENDIN_CPU_DTYPE``
    overrides)."""
    device: Annotated[str, Allowed("a device name")] = "cpu"
    """"cpu", "cuda", "cuda:1", ..."""
    prompt_format: Annotated[PromptFormat, Allowed("one of auto, chat, plain, raw")] = "auto"
    """"chat" uses the tokenizer's chat template; "plain" renders ``User: ...\\nAssistant:`` turns
    (the prefixes below) for base models; "raw" feeds a string prompt verbatim (message contents
    joined by newlines); "auto" = "chat" when the tokenizer has a chat template, else "plain"."""
    system_prompt: Annotated[str | None, Allowed("a string or None")] = None
    """Prepended as a system turn unless the messages bring their own."""
    user_prefix: Annotated[str, Allowed("a string")] = "User: "
    """The "plain" format's user turn prefix."""
    assistant_prefix: Annotated[str, Allowed("a string")] = "Assistant:"
    """The "plain" format's assistant turn prefix (the answer follows it)."""
    system_prefix: Annotated[str, Allowed("a string")] = ""
    """The "plain" format's system turn prefix."""
    turn_separator: Annotated[str, Allowed("a string")] = "\n"
    """Between the "plain" format's turns."""
    name: Annotated[str | None, Allowed("a string or None")] = None
    """The model's name in results and logs (default: from the source)."""
    trust_remote_code: Annotated[bool, Field(strict=True), Allowed("True or False")] = False
    """Let transformers run the checkpoint's own code (only for sources you trust)."""
    model: Any = Field(default=None, repr=False, exclude=True)
    """An already-loaded transformers model (with ``tokenizer``)."""
    tokenizer: Any = Field(default=None, repr=False, exclude=True)
    """An already-loaded tokenizer (with ``model``)."""

    def __init__(self, source: str = _UNSET, /, **data: Any) -> None:
        """A checked spec.

        Args:
            source: the ``source`` field, by position.
            **data: the other fields (above).
        """
        if source is not _UNSET:
            data["source"] = source
        super().__init__(**data)

    @field_validator(
        "system_prompt",
        "user_prefix",
        "assistant_prefix",
        "system_prefix",
        "turn_separator",
        mode="before",
    )
    @classmethod
    def _valid_text(cls, v: Any, info: Any) -> Any:
        if isinstance(v, str):
            at = lone_surrogate(v)
            if at is not None:
                raise ValueError(
                    f"ModelSpec.{info.field_name} has a lone surrogate {v[at]!r} at character "
                    f"{at}, which is not valid Unicode text; remove it (or decode with "
                    "errors='replace')"
                )
        return v

    @model_validator(mode="after")
    def _source(self) -> Self:
        if (self.model is None) != (self.tokenizer is None):
            raise ValueError("ModelSpec needs both model and tokenizer, or neither")
        if self.model is None and not self.source.strip():
            raise ValueError(
                "ModelSpec.source must be a non-empty local path or model id "
                "(or pass model= and tokenizer= objects)"
            )
        return self


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
        config = config.replace(reliability=config.reliability.replace(score_model=model))
    data["config"] = config
    return data
