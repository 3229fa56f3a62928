"""What a generation returns: pydantic models, serialisable with ``.model_dump()``."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from .tools import InvalidToolCall, ToolCall


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens of the base model's prompt")
    completion_tokens: int = Field(
        description="tokens of the answer (EOS included); tokens decoded only to recognise a stop "
        "string are not counted (they are in ``token_ids``)"
    )
    total_tokens: int
    guide_tokens_computed: int = Field(
        0, description="tokens the guides ran a forward pass over (prompt and catch-up included)"
    )


class TraceEntry(BaseModel):
    """One decoding step (only with ``trace=True``)."""

    index: int
    token_id: int
    text: str = Field(description="text this token released (may be '' while held back)")
    source: Literal["base", "blend"] = Field(
        description="'base': the base was confident and decided alone; 'blend': the guides were "
        "consulted and the strategy combined the distributions"
    )
    alpha: float | None = Field(None, description="mean guide weight at this step")
    base_top1: float = Field(description="the base's top-1 probability")
    base_prob: float = Field(description="the base's probability of the chosen token")
    guide_prob: float | None = Field(
        None, description="the guides' (mean) probability of the chosen token"
    )
    prob: float = Field(description="probability of the chosen token in the final distribution")
    scored: bool = Field(
        True,
        description="False for the EOS token and for tokens decoded after the answer ended "
        "(a stop string's): the reliability statistics leave them out",
    )


class GuideStats(BaseModel):
    """Per-guide signals, over the steps where the guides were consulted."""

    name: str
    consulted: int
    mean_alpha: float | None = None
    mean_weight: float | None = Field(
        None, description="share of the final distribution this guide had (alpha / n_guides)"
    )
    agreement_top1: float | None = None
    agreement_topk: float | None = None
    mean_top1: float | None = Field(None, description="the guide's mean top-1 probability")
    mean_divergence: float | None = Field(
        None, description="mean Jensen-Shannon divergence to the base, in bits ([0, 1])"
    )
    weight: float = Field(1.0, description="run-time mitigation weight on this guide's alpha")


class ScoreComponents(BaseModel):
    confidence: float
    stability: float
    consensus: float


class Reliability(BaseModel):
    """How far to trust one response. Every field is documented in the README."""

    strategy: str
    tokens: int = Field(
        description="the answer's tokens (EOS included); the statistics are over "
        "its text tokens (EOS excluded)"
    )
    unscored_tokens: int = Field(
        0, description="tokens decoded after the answer ended (a stop string's), not scored"
    )
    interventions: int
    intervention_rate: float
    base_unsure_rate: float = Field(
        0.0, description="share of steps where the base's top-1 probability was below gamma"
    )
    mean_alpha: float | None = None
    agreement_top1: float | None = None
    agreement_topk: float | None = None
    agreement_k: int
    mean_base_top1: float | None = None
    mean_divergence: float | None = None
    mean_logprob: float | None = Field(
        None, description="mean log-probability of the emitted tokens in the final distribution"
    )
    base_mean_logprob: float | None = Field(
        None, description="mean log-probability of the emitted tokens under the base alone"
    )
    guides: list[GuideStats] = Field(default_factory=list)
    features: dict[str, float | None] = Field(
        default_factory=dict,
        description="single-generation uncertainty features of the answer, names in "
        "blendin_llm.uncertainty.FEATURES",
    )
    score: float = Field(
        description="with a profile: its calibrated P(correct) for this pair; "
        "without: see score_source"
    )
    score_source: str = Field(
        "normalized_probability",
        description="what the score is: 'profile' (calibrated P(correct)), "
        "'normalized_probability' (the answer's normalized probability, uncalibrated) or "
        "'weights' (ReliabilityConfig.weights over components)",
    )
    threshold: float | None = Field(None, description="with a profile: flagged = score < threshold")
    flag_target: str | None = Field(
        None,
        description="with a profile: the target the threshold was chosen for on its fit "
        "data, e.g. 'precision=0.9' (kept answers) or 'recall=0.8' (wrong answers flagged)",
    )
    components: ScoreComponents
    flagged: bool
    reasons: list[str] = Field(default_factory=list)
    top_k_approximation: int | None = Field(
        None,
        description="k when a model was known by its top-k log-probs only (a remote "
        "server): the choice was made among the union of the top-k lists, and the signals were "
        "computed from them; None when every distribution was whole",
    )
    mitigations: list[str] = Field(
        default_factory=list,
        description="run-time mitigations applied to this response (down-weighted or switched-off "
        "guides, intervention cap)",
    )
    trace: list[TraceEntry] | None = None


class TopLogprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float
    id: int | None = Field(
        None,
        exclude=True,
        description="the token's id in the base's "
        "vocabulary (not in OpenAI's shape: left out of dumps)",
    )


class TokenLogprob(BaseModel):
    """A generated token's log-probability in the final (blended) distribution, OpenAI-shaped."""

    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprob] = Field(default_factory=list)
    id: int | None = Field(
        None,
        exclude=True,
        description="the token's id in the base's "
        "vocabulary (not in OpenAI's shape: left out of dumps)",
    )


def new_result_id() -> str:
    """A fresh answer id, OpenAI-style: ``"cmpl-"`` and 32 hex digits of a random UUID."""
    return "cmpl-" + uuid.uuid4().hex


class BlendResult(BaseModel):
    id: str = Field(
        default_factory=new_result_id,
        description="this answer's id, unique (the key of its audit record)",
    )
    text: str = Field(description="the answer's text (tool-call markup excluded)")
    finish_reason: Literal["stop", "length", "tool_calls"]
    stop_sequence: str | None = Field(
        None, description="the stop string that ended generation, or the EOS token's text"
    )
    token_ids: list[int]
    usage: Usage
    reliability: Reliability
    model: str
    elapsed_s: float
    tool_calls: list[ToolCall] = Field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = Field(
        None, description="one entry per streamed token, with logprobs=True"
    )


class StreamEvent(BaseModel):
    """One event of ``BlendedLLM.stream``: a token's released text, or (``done``) the final result.

    The ``text`` of all events concatenated equals ``result.text``.
    """

    text: str
    token_id: int | None = None
    index: int | None = None
    consulted: bool = False
    alpha: float | None = None
    prob: float | None = None
    logprob: TokenLogprob | None = None
    done: bool = False
    result: BlendResult | None = None
