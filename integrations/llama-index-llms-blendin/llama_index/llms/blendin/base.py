"""``BlendIn``: a LlamaIndex LLM over a ``BlendedLLM``. It maps types and nothing else: LlamaIndex
chat messages in, ``ChatResponse`` / ``CompletionResponse`` out, with the reliability record,
finish reason and token counts in ``additional_kwargs`` and (on request) log-probs.

Query engines drop ``additional_kwargs``, so every answer also dispatches a
``BlendInReliabilityEvent`` through LlamaIndex instrumentation; ``with_reliability(engine)``
collects those events into each ``Response.metadata``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Optional

from blendin_llm.options import call_options, check_options
from blendin_llm import BlendConfig, BlendedLLM, BlendResult, StreamEvent, check_reliability
from blendin_llm.errors import (
    ConfigError,
    GenerationArgumentError,
    PromptError,
    settings_error,
)
from blendin_llm.sources import DEFAULT_GUIDE
from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    LogProb,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError

dispatcher = get_dispatcher(__name__)

_ROLES = {MessageRole.SYSTEM: "system", MessageRole.DEVELOPER: "system", MessageRole.USER: "user",
          MessageRole.ASSISTANT: "assistant", MessageRole.CHATBOT: "assistant",
          MessageRole.MODEL: "assistant", MessageRole.TOOL: "tool"}


class BlendInReliabilityEvent(BaseEvent):
    """Dispatched once per answer of a ``BlendIn`` LLM."""

    model_name: str
    reliability: dict
    finish_reason: str
    text: str

    @classmethod
    def class_name(cls) -> str:
        return "BlendInReliabilityEvent"


# -- messages in -------------------------------------------------------------------------------
def to_core_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as the engine's ``{"role", "content", ...}`` dicts."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = _ROLES.get(m.role)
        if role is None:
            raise PromptError(f"message {i} has role {m.role.value!r}; BlendIn takes system, user, "
                              "assistant and tool messages")
        texts, calls = [], list(m.additional_kwargs.get("tool_calls") or [])
        for block in m.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolCallBlock):
                if not any(c.get("id") == block.tool_call_id for c in calls if isinstance(c, dict)):
                    calls.append({"id": block.tool_call_id, "name": block.tool_name,
                                  "arguments": block.tool_kwargs})
            elif not isinstance(block, ThinkingBlock):
                raise PromptError(
                    f"message {i} has a {type(block).__name__}; these models read text only "
                    "(images, audio, video and documents are not supported)"
                )
        msg: dict[str, Any] = {"role": role, "content": "".join(texts)}
        if calls and role == "assistant":
            msg["tool_calls"] = calls
        if role == "tool":
            msg["tool_call_id"] = m.additional_kwargs.get("tool_call_id")
            msg["name"] = m.additional_kwargs.get("name")
        out.append(msg)
    return out


# -- results out -------------------------------------------------------------------------------
def _logprobs(entries: list | None) -> Optional[list[list[LogProb]]]:
    if entries is None:
        return None
    return [[LogProb(token=e.token, logprob=e.logprob, bytes=e.bytes)]
            + [LogProb(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top_logprobs]
            for e in entries]


def _extras(res: BlendResult) -> dict[str, Any]:
    return {"reliability": res.reliability.model_dump(), "finish_reason": res.finish_reason,
            "stop_sequence": res.stop_sequence, "model_name": res.model,
            "prompt_tokens": res.usage.prompt_tokens,
            "completion_tokens": res.usage.completion_tokens,
            "total_tokens": res.usage.total_tokens}


def _message(text: str, res: BlendResult | None) -> ChatMessage:
    kwargs = {}
    if res is not None and res.tool_calls:
        kwargs["tool_calls"] = [c.model_dump() for c in res.tool_calls]
    if res is not None and res.invalid_tool_calls:
        kwargs["invalid_tool_calls"] = [c.model_dump() for c in res.invalid_tool_calls]
    blocks: list = [TextBlock(text=text)]
    if res is not None:
        blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments)
                   for c in res.tool_calls]
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=kwargs)


def _dispatch(res: BlendResult) -> None:
    dispatcher.event(BlendInReliabilityEvent(
        model_name=res.model, reliability=res.reliability.model_dump(),
        finish_reason=res.finish_reason, text=res.text))


def to_chat_response(res: BlendResult) -> ChatResponse:
    _dispatch(res)
    return ChatResponse(message=_message(res.text, res), raw=res.model_dump(),
                        logprobs=_logprobs(res.logprobs), additional_kwargs=_extras(res))


def to_stream_response(event: StreamEvent, text: str) -> ChatResponse:
    """``text`` is the answer so far; the last response carries the record and the calls."""
    if not event.done:
        lp = None if event.logprob is None else _logprobs([event.logprob])
        return ChatResponse(message=_message(text, None), delta=event.text, logprobs=lp)
    res = event.result
    _dispatch(res)
    return ChatResponse(message=_message(text, res), delta=event.text, raw=res.model_dump(),
                        additional_kwargs=_extras(res))


# -- the LLM -----------------------------------------------------------------------------------
_PENALTIES = ("repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram_size")
# the fields that are engine options (``blendin_llm.options``)
_SETTINGS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "logprobs",
             "top_logprobs", *_PENALTIES, "strategy", "gamma", "alpha")


def _settings_error(e: ValidationError) -> ConfigError:
    """A pydantic error on the constructor's arguments, as the library's ConfigError."""
    own = sorted(set(BlendIn.model_fields) - set(FunctionCallingLLM.model_fields))
    return settings_error("BlendIn", e.errors(), f"llm, model, base, guides, config, {', '.join(own)}, and LlamaIndex's callback_manager, system_prompt, ...")


class BlendIn(FunctionCallingLLM):
    """A base model steered by guide models (BlendIn), as a LlamaIndex LLM.

    Made like any LlamaIndex LLM, ``BlendIn(model="gemma-3-270m")``: ``model`` is the base (a
    preset name, a directory, a ``.gguf`` file, a hub id, a ``ModelSpec`` or a
    ``(model, tokenizer)`` pair), steered by the default guide (the preset
    ``"smollm2-135m-instruct"``) unless ``guides=`` names others (``guides=[]``: none), with
    ``config=`` (a ``BlendConfig``). Or share a loaded engine: ``BlendIn(llm=blended)``
    (``blended.as_llama_index()``).

    Every setting is checked when the object is made, by the engine's own rules; a bad one raises
    ``ConfigError`` saying what is allowed. Per-call keyword arguments (``complete(..., seed=3)``)
    reach the engine; one it does not know raises a typed error naming it.
    """

    model_name: str = Field(default="", description="defaults to the engine's name (base+guides)")
    max_new_tokens: int = Field(default=256, strict=True, description="most tokens in an answer (>= 1)")
    temperature: float = Field(default=0.0, strict=True, description="0 = greedy; sampling applies to the "
                               "blended distribution")
    top_p: float = Field(default=1.0, strict=True, description="nucleus sampling, in (0, 1]")
    top_k: int = Field(default=0, strict=True, description="top-k sampling, 0 = off")
    seed: Optional[int] = Field(default=None, strict=True, description="makes sampled answers reproducible")
    context_window: Optional[int] = Field(
        default=None, gt=0, strict=True, description="defaults to the blend's: the smallest of its models'")
    stop: Optional[list[str]] = Field(default=None, description="stop strings (a call's stop= "
                                      "replaces them)")
    logprobs: bool = Field(default=False, strict=True, description="log-probs on each response")
    top_logprobs: int = Field(default=0, strict=True, description="alternatives per token, 0-20")
    repetition_penalty: Optional[float] = Field(default=None, strict=True, description=(
        "transformers' repetition penalty, > 0 (1.0 = off): a token already in the answer has its "
        "probability raised to this power; None = the engine's default"))
    frequency_penalty: Optional[float] = Field(default=None, strict=True, description=(
        "OpenAI's frequency penalty, in [-2, 2] (0 = off): a token's log-prob is lowered by this "
        "much for each time it is already in the answer; None = the engine's default"))
    presence_penalty: Optional[float] = Field(default=None, strict=True, description=(
        "OpenAI's presence penalty, in [-2, 2] (0 = off): a token's log-prob is lowered by this "
        "much once it is in the answer; None = the engine's default"))
    no_repeat_ngram_size: Optional[int] = Field(default=None, strict=True, description=(
        "transformers' no_repeat_ngram_size, >= 0 (0 = off): no n-gram of this size occurs twice "
        "in the answer; None = the engine's default"))
    strategy: Optional[str] = Field(default=None, description="per-model override of the strategy")
    gamma: Optional[float] = Field(default=None, strict=True, description="per-model override of gamma (>= 0)")
    alpha: Optional[float | Literal["auto"]] = Field(
        default=None, description="per-model override of alpha ([0, 1] or 'auto')")

    model_config = ConfigDict(extra="forbid")

    _llm: BlendedLLM = PrivateAttr()

    def __init__(self, llm: BlendedLLM | None = None, model: Any = None, base: Any = None,
                 guides: Any = None, config: BlendConfig | None = None, **kwargs: Any) -> None:
        if llm is not None:
            if not isinstance(llm, BlendedLLM):
                hint = f"; to load a model by name use model={llm!r}" if isinstance(llm, str) else ""
                raise ConfigError(f"llm must be a loaded BlendedLLM, got {type(llm).__name__}{hint}")
            given = [n for n, v in (("model", model), ("base", base), ("guides", guides),
                                    ("config", config)) if v is not None]
            if given:
                raise ConfigError(f"pass either llm= (a loaded engine) or model=/guides=/config= "
                                  f"(an engine to load), not both; got llm= and {', '.join(given)}=")
            blend_config = llm.config
        else:
            if model is not None and base is not None:
                raise ConfigError("model= and base= both name the base model; pass one")
            if model is None and base is None:
                raise ConfigError("BlendIn needs model= (the base: a preset such as "
                                  "'gemma-3-270m', a directory, a .gguf file, a hub id) or "
                                  "llm=BlendedLLM(...)")
            blend_config = BlendConfig() if config is None else config
            if not isinstance(blend_config, BlendConfig):
                raise ConfigError(f"config must be a BlendConfig, got {type(config).__name__}")
        try:
            super().__init__(**kwargs)
        except ValidationError as e:
            raise _settings_error(e) from None
        blend_config = self._check(blend_config)  # before loading anything
        if llm is None:  # the engine it builds has this LLM's strategy, gamma and alpha
            llm = BlendedLLM(model if model is not None else base,
                             [DEFAULT_GUIDE] if guides is None else guides, blend_config)
        llm._resolve_config(self._overrides())  # e.g. a strategy that needs a guide
        self._llm = llm
        self.model_name = self.model_name or llm.name

    def _check(self, config: BlendConfig) -> BlendConfig:
        """The settings through the engine's own rules (SamplingParams, BlendConfig); returns
        ``config`` with this LLM's strategy, gamma and alpha."""
        try:
            check_options(self._opts({}))
        except GenerationArgumentError as e:
            raise ConfigError(f"BlendIn: {e}") from None
        return dataclasses.replace(config, **self._overrides())  # ConfigError for a bad value

    def _overrides(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in ("strategy", "gamma", "alpha")
                if getattr(self, n) is not None}

    def _opts(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """This LLM's settings and a call's keyword arguments as the engine's ``stream()``
        keyword arguments (``blendin_llm.options.call_options``: a call's stop strings add to the
        LLM's; unknown names are the engine's to reject)."""
        return call_options({n: getattr(self, n) for n in _SETTINGS}, kwargs)

    @property
    def engine(self) -> BlendedLLM:
        return self._llm

    @classmethod
    def class_name(cls) -> str:
        return "BlendIn_LLM"

    @property
    def metadata(self) -> LLMMetadata:
        ctx = self.context_window or self._llm.context_window or 4096
        return LLMMetadata(context_window=ctx, num_output=self.max_new_tokens, is_chat_model=True,
                           is_function_calling_model=True, model_name=self.model_name)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        opts = self._opts(kwargs)
        return to_chat_response(self._llm.generate(to_core_messages(messages), **opts))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        events = self._llm.stream(to_core_messages(messages), **self._opts(kwargs))

        def gen() -> ChatResponseGen:
            text = ""
            for event in events:
                text += event.text
                yield to_stream_response(event, text)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        opts = self._opts(kwargs)
        return to_chat_response(await self._llm.agenerate(to_core_messages(messages), **opts))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any
                           ) -> ChatResponseAsyncGen:
        core, opts = to_core_messages(messages), self._opts(kwargs)

        async def gen() -> ChatResponseAsyncGen:
            text = ""
            async for event in self._llm.astream(core, **opts):
                text += event.text
                yield to_stream_response(event, text)

        return gen()

    # completions are one user turn of a chat
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any
                        ) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any
                        ) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any
                               ) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # -- tools ---------------------------------------------------------------------------------
    def _prepare_chat_with_tools(self, tools: Sequence[Any], user_msg: Any = None,
                                 chat_history: Optional[list[ChatMessage]] = None,
                                 verbose: bool = False, allow_parallel_tool_calls: bool = False,
                                 tool_required: bool = False, **kwargs: Any) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg)
                            if isinstance(user_msg, str) else user_msg)
        # a program passes tool_choice=None when it has no preference
        choice = kwargs.pop("tool_choice", None) or ("required" if tool_required else "auto")
        return {"messages": messages, "tools": [t.metadata.to_openai_tool() for t in tools],
                "tool_choice": choice, "parallel_tool_calls": allow_parallel_tool_calls, **kwargs}

    def get_tool_calls_from_response(self, response: ChatResponse,
                                     error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected at least one tool call, got none: {response.message.content!r}")
        return [ToolSelection(tool_id=c["id"], tool_name=c["name"], tool_kwargs=c["arguments"])
                for c in calls]


# -- reliability for query engines ---------------------------------------------------------------
_sinks: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("blendin_sinks", default=())


class _Recorder(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "BlendInReliabilityRecorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, BlendInReliabilityEvent):
            for sink in _sinks.get():
                sink.append(event)


_recorder: _Recorder | None = None


def _ensure_recorder() -> None:
    global _recorder
    if _recorder is None:
        _recorder = _Recorder()
        get_dispatcher().add_event_handler(_recorder)


@contextlib.contextmanager
def _recording() -> Iterator[list]:
    """Collects the reliability events dispatched inside the block (this context only)."""
    records: list = []
    token = _sinks.set((*_sinks.get(), records))
    try:
        yield records
    finally:
        _sinks.reset(token)


class ReliableQueryEngine:
    """Wraps a query engine: each ``Response.metadata`` gets ``"reliability"`` (the record of
    the answer's last LLM call, the one that wrote the final text), ``"reliability_records"``
    (every call's) and ``"flagged"``. With ``raise_on_low=True`` (or ``min_score``) a low answer
    raises ``LowReliabilityError`` instead, for a caller that routes or retries."""

    def __init__(self, query_engine: Any, *, raise_on_low: bool = False,
                 min_score: float | None = None) -> None:
        _ensure_recorder()
        self.query_engine = query_engine
        self.raise_on_low = raise_on_low or min_score is not None
        self.min_score = min_score

    def _attach(self, response: Any, records: list) -> Any:
        if not records:
            raise RuntimeError("no BlendIn answer was recorded; is Settings.llm a BlendIn LLM?")
        rec = records[-1].reliability
        response.metadata = dict(response.metadata or {})
        response.metadata.update(reliability=rec, flagged=rec["flagged"],
                                 reliability_records=[r.reliability for r in records])
        if self.raise_on_low:
            check_reliability(rec, min_score=self.min_score, answer=str(response))
        return response

    def query(self, query: Any) -> Any:
        with _recording() as records:
            response = self.query_engine.query(query)
        return self._attach(response, records)

    async def aquery(self, query: Any) -> Any:
        with _recording() as records:
            response = await self.query_engine.aquery(query)
        return self._attach(response, records)


def with_reliability(query_engine: Any, **kwargs: Any) -> ReliableQueryEngine:
    """``with_reliability(index.as_query_engine()).query(q).metadata["reliability"]``."""
    return ReliableQueryEngine(query_engine, **kwargs)
