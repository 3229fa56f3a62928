"""What a generation returns: pydantic models, serialisable with ``.model_dump()``."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from .tools import InvalidToolCall, ToolCall


class Usage(BaseModel):
    """Token counts of one answer, OpenAI-shaped."""

    prompt_tokens: int = Field(description="tokens of the base model's prompt")
    completion_tokens: int = Field(
        description="tokens of the answer (EOS included); tokens decoded only to recognise a stop "
        "string are not counted (they are in ``token_ids``)"
    )
    total_tokens: int = Field(description="prompt_tokens + completion_tokens")
    guide_tokens_computed: int = Field(
        0, description="tokens the guides ran a forward pass over (prompt and catch-up included)"
    )


class TraceEntry(BaseModel):
    """One decoding step (only with ``trace=True``)."""

    index: int = Field(description="the step's position in the answer (0 = first token)")
    token_id: int = Field(description="the chosen token's id in the base's vocabulary")
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

    name: str = Field(description="the guide's name")
    consulted: int = Field(description="steps at which this guide was consulted")
    mean_alpha: float | None = Field(None, description="its mean weight alpha over those steps")
    mean_weight: float | None = Field(
        None, description="share of the final distribution this guide had (alpha / n_guides)"
    )
    agreement_top1: float | None = Field(
        None, description="share of those steps where its top token was the base's top token"
    )
    agreement_topk: float | None = Field(
        None, description="share of those steps where its top token was in the base's top-k"
    )
    mean_top1: float | None = Field(None, description="the guide's mean top-1 probability")
    mean_divergence: float | None = Field(
        None, description="mean Jensen-Shannon divergence to the base, in bits ([0, 1])"
    )
    weight: float = Field(1.0, description="run-time mitigation weight on this guide's alpha")


class ScoreComponents(BaseModel):
    """The parts of the weighted score (``ReliabilityConfig.weights``)."""

    confidence: float = Field(description="the answer's normalized probability")
    stability: float = Field(description="how steady the token probabilities were over the answer")
    consensus: float = Field(description="how much the guides agreed with the base where consulted")


class Reliability(BaseModel):
    """How far to trust one response. Every field is documented in the README."""

    strategy: str = Field(description="the strategy that produced the answer")
    tokens: int = Field(
        description="the answer's tokens (EOS included); the statistics are over "
        "its text tokens (EOS excluded)"
    )
    unscored_tokens: int = Field(
        0, description="tokens decoded after the answer ended (a stop string's), not scored"
    )
    interventions: int = Field(description="steps at which the guides were consulted")
    intervention_rate: float = Field(
        description="interventions / scored steps (pairs above ~0.2 tend to do badly)"
    )
    base_unsure_rate: float = Field(
        0.0, description="share of steps where the base's top-1 probability was below gamma"
    )
    mean_alpha: float | None = Field(
        None, description="mean guide weight alpha over the interventions (mean over guides)"
    )
    agreement_top1: float | None = Field(
        None,
        description="share of interventions where the guide's top token equals the base's top token",
    )
    agreement_topk: float | None = Field(
        None,
        description="share of interventions where the guide's top token is in the base's top-k",
    )
    agreement_k: int = Field(description="the k of agreement_topk (BlendConfig.agreement_top_k)")
    mean_base_top1: float | None = Field(None, description="the base's mean top-1 probability")
    mean_divergence: float | None = Field(
        None,
        description="mean Jensen-Shannon divergence between base and guide at interventions, in bits ([0, 1])",
    )
    mean_logprob: float | None = Field(
        None, description="mean log-probability of the emitted tokens in the final distribution"
    )
    base_mean_logprob: float | None = Field(
        None, description="mean log-probability of the emitted tokens under the base alone"
    )
    guides: list[GuideStats] = Field(default_factory=list, description="per-guide signals")
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
    components: ScoreComponents = Field(description="the weighted score's parts")
    flagged: bool = Field(
        description="whether the answer should not be trusted as is (route, review or retry it)"
    )
    reasons: list[str] = Field(
        default_factory=list, description="why it is flagged (or what was noted), in words"
    )
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
    trace: list[TraceEntry] | None = Field(
        None, description="with trace=True: one entry per decoding step"
    )


class TopLogprob(BaseModel):
    """An alternative token at a step, OpenAI-shaped."""

    token: str = Field(description="the token's text")
    bytes: list[int] = Field(description="its UTF-8 bytes")
    logprob: float = Field(description="its log-probability in the final distribution")
    id: int | None = Field(
        None,
        exclude=True,
        description="the token's id in the base's "
        "vocabulary (not in OpenAI's shape: left out of dumps)",
    )


class TokenLogprob(BaseModel):
    """A generated token's log-probability in the final (blended) distribution, OpenAI-shaped."""

    token: str = Field(description="the token's text")
    bytes: list[int] = Field(description="its UTF-8 bytes")
    logprob: float = Field(description="its log-probability in the final distribution")
    top_logprobs: list[TopLogprob] = Field(
        default_factory=list, description="the most likely tokens at this step, most likely first"
    )
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
    """One whole answer: its text and tokens, why it ended, usage, tool calls, log-probs, and the
    reliability record that says how far to trust it."""

    id: str = Field(
        default_factory=new_result_id,
        description="this answer's id, unique (the key of its audit record)",
    )
    text: str = Field(description="the answer's text (tool-call markup excluded)")
    finish_reason: Literal["stop", "length", "tool_calls"] = Field(
        description="'stop' (EOS or a stop string), 'length' (max_new_tokens) or 'tool_calls'"
    )
    stop_sequence: str | None = Field(
        None, description="the stop string that ended generation, or the EOS token's text"
    )
    token_ids: list[int] = Field(
        description="the answer's token ids in the base's vocabulary (a stop string's tokens included)"
    )
    usage: Usage = Field(description="token counts")
    reliability: Reliability = Field(
        description="how far to trust this answer (flagged, score, signals)"
    )
    model: str = Field(description="the blend's name (base+guides)")
    elapsed_s: float = Field(description="wall time of the call, in seconds")
    tool_calls: list[ToolCall] = Field(
        default_factory=list, description="the tool calls the answer made (with tools=)"
    )
    invalid_tool_calls: list[InvalidToolCall] = Field(
        default_factory=list, description="calls that could not be parsed, with the error"
    )
    logprobs: list[TokenLogprob] | None = Field(
        None, description="one entry per streamed token, with logprobs=True"
    )


class StreamEvent(BaseModel):
    """One event of ``BlendedLLM.stream``: a token's released text, or (``done``) the final result.

    The ``text`` of all events concatenated equals ``result.text``.
    """

    text: str = Field(
        description="the text this token released (may be '' while a stop string or tool call is held back)"
    )
    token_id: int | None = Field(None, description="the token's id (None on the final event)")
    index: int | None = Field(None, description="the token's position in the answer")
    consulted: bool = Field(False, description="whether the guides were consulted at this step")
    alpha: float | None = Field(
        None, description="the mean guide weight at this step, when consulted"
    )
    prob: float | None = Field(
        None, description="the token's probability in the final distribution"
    )
    logprob: TokenLogprob | None = Field(
        None, description="with logprobs=True: the token's log-prob and alternatives"
    )
    done: bool = Field(False, description="True on the last event, which carries result")
    result: BlendResult | None = Field(None, description="the BlendResult, on the last event")
