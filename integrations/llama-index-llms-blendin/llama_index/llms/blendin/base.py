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
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Optional, TypeVar

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
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictInProgressEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.program.utils import create_flexible_model
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.types import PydanticProgramMode
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from blendin_llm import BlendConfig, BlendedLLM, BlendResult, StreamEvent, check_reliability
from blendin_llm.errors import ConfigError, PromptError, settings_error
from blendin_llm.options import OPTION_NAMES, build_llm, call_options, describe

Model = TypeVar("Model", bound=BaseModel)

dispatcher = get_dispatcher(__name__)

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
}


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
            raise PromptError(
                f"message {i} has role {m.role.value!r}; BlendIn takes system, user, "
                "assistant and tool messages"
            )
        texts, calls = [], []
        for block in m.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolCallBlock):  # an assistant's call: blocks only
                calls.append(
                    {
                        "id": block.tool_call_id,
                        "name": block.tool_name,
                        "arguments": block.tool_kwargs,
                    }
                )
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
    return [
        [LogProb(token=e.token, logprob=e.logprob, bytes=e.bytes)]
        + [LogProb(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top_logprobs]
        for e in entries
    ]


def _extras(res: BlendResult) -> dict[str, Any]:
    return {
        "reliability": res.reliability.model_dump(),
        "finish_reason": res.finish_reason,
        "stop_sequence": res.stop_sequence,
        "model_name": res.model,
        "prompt_tokens": res.usage.prompt_tokens,
        "completion_tokens": res.usage.completion_tokens,
        "total_tokens": res.usage.total_tokens,
    }


def _message(text: str, res: BlendResult | None) -> ChatMessage:
    """The assistant's message: its text, and each tool call as a ``ToolCallBlock`` (the one
    place calls are; ``additional_kwargs["invalid_tool_calls"]`` holds calls that did not parse,
    for which LlamaIndex has no block)."""
    kwargs = {}
    if res is not None and res.invalid_tool_calls:
        kwargs["invalid_tool_calls"] = [c.model_dump() for c in res.invalid_tool_calls]
    blocks: list = [TextBlock(text=text)]
    if res is not None:
        blocks += [
            ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments)
            for c in res.tool_calls
        ]
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=kwargs)


def _dispatch(res: BlendResult) -> None:
    dispatcher.event(
        BlendInReliabilityEvent(
            model_name=res.model,
            reliability=res.reliability.model_dump(),
            finish_reason=res.finish_reason,
            text=res.text,
        )
    )


def to_chat_response(res: BlendResult) -> ChatResponse:
    _dispatch(res)
    return ChatResponse(
        message=_message(res.text, res),
        raw=res.model_dump(),
        logprobs=_logprobs(res.logprobs),
        additional_kwargs=_extras(res),
    )


def to_stream_response(event: StreamEvent, text: str) -> ChatResponse:
    """``text`` is the answer so far; the last response carries the record and the calls."""
    if not event.done:
        lp = None if event.logprob is None else _logprobs([event.logprob])
        return ChatResponse(message=_message(text, None), delta=event.text, logprobs=lp)
    res = event.result
    _dispatch(res)
    return ChatResponse(
        message=_message(text, res),
        delta=event.text,
        raw=res.model_dump(),
        additional_kwargs=_extras(res),
    )


# -- the LLM -----------------------------------------------------------------------------------
def _settings_error(e: ValidationError) -> ConfigError:
    """A pydantic error on the constructor's arguments, as the library's ConfigError."""
    own = sorted(set(BlendIn.model_fields) - set(FunctionCallingLLM.model_fields))
    return settings_error(
        "BlendIn",
        e.errors(),
        f"llm, model, base, guides, config, {', '.join(own)}, and LlamaIndex's callback_manager, system_prompt, ...",
    )


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
    max_new_tokens: int = Field(
        default=256, strict=True, description="most tokens in an answer (>= 1)"
    )
    temperature: float = Field(
        default=0.0,
        strict=True,
        description=describe("temperature"),
    )
    top_p: float = Field(default=1.0, strict=True, description=describe("top_p"))
    top_k: int = Field(default=0, strict=True, description=describe("top_k"))
    seed: Optional[int] = Field(default=None, strict=True, description=describe("seed"))
    context_window: Optional[int] = Field(
        default=None,
        gt=0,
        strict=True,
        description="defaults to the blend's: the smallest of its models'",
    )
    stop: Optional[list[str]] = Field(
        default=None,
        description=(
            "stop strings; a call's stop= adds to them (blendin_llm.options: stop is merged)"
        ),
    )
    logprobs: bool = Field(default=False, strict=True, description="log-probs on each response")
    top_logprobs: int = Field(default=0, strict=True, description="alternatives per token, 0-20")
    repetition_penalty: Optional[float] = Field(
        default=None,
        strict=True,
        description=describe("repetition_penalty", "None = the engine's default."),
    )
    frequency_penalty: Optional[float] = Field(
        default=None,
        strict=True,
        description=describe("frequency_penalty", "None = the engine's default."),
    )
    presence_penalty: Optional[float] = Field(
        default=None,
        strict=True,
        description=describe("presence_penalty", "None = the engine's default."),
    )
    no_repeat_ngram_size: Optional[int] = Field(
        default=None,
        strict=True,
        description=describe("no_repeat_ngram_size", "None = the engine's default."),
    )
    strategy: Optional[str] = Field(
        default=None,
        description=describe("strategy", "A per-model override; None = the engine's config."),
    )
    gamma: Optional[float] = Field(
        default=None,
        strict=True,
        description=describe("gamma", "A per-model override; None = the engine's config."),
    )
    alpha: Optional[float | Literal["auto"]] = Field(
        default=None,
        description=describe("alpha", "A per-model override; None = the engine's config."),
    )

    model_config = ConfigDict(extra="forbid")

    _llm: BlendedLLM = PrivateAttr()

    def __init__(
        self,
        llm: BlendedLLM | None = None,
        model: Any = None,
        base: Any = None,
        guides: Any = None,
        config: BlendConfig | None = None,
        **kwargs: Any,
    ) -> None:
        """Args:
            llm: a loaded ``BlendedLLM`` to share (instead of ``model``).
            model: the base model: a preset name ("gemma-3-270m"), a directory, a ``.gguf``
                file, a hub id, a ``ModelSpec`` or a ``(model, tokenizer)`` pair.
            base: the same as ``model``.
            guides: the guide model(s) for ``model``; None = the default guide, [] = none.
            config: the ``BlendConfig`` of the engine built from ``model``.
            **kwargs: the fields below, and LlamaIndex's (``callback_manager``, ...).

        Raises:
            ConfigError: a bad or unknown setting, or conflicting sources; checked before
                anything loads (``blendin_llm.options.build_llm``, as for the LangChain face).
        """
        try:
            super().__init__(**kwargs)
        except ValidationError as e:
            raise _settings_error(e) from None
        self._llm = build_llm(
            self._fields(),
            owner="BlendIn",
            llm=llm,
            model=model,
            base=base,
            guides=guides,
            config=config,
        )
        self.model_name = self.model_name or self._llm.name

    def _fields(self) -> dict[str, Any]:
        """This LLM's settings, for ``blendin_llm.options``."""
        return {n: getattr(self, n) for n in OPTION_NAMES if n in type(self).model_fields}

    def _opts(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The engine's ``stream()`` keyword arguments for one call: this LLM's settings and the
        call's arguments, by ``blendin_llm.options.call_options`` (a call's ``stop`` adds to the
        LLM's; every other argument replaces the setting of its name; ``max_tokens`` is
        ``max_new_tokens``; unknown ones are the engine's to reject)."""
        return call_options(self._fields(), **kwargs)

    @property
    def engine(self) -> BlendedLLM:
        """The ``BlendedLLM`` this LLM answers with (shared, not a copy)."""
        return self._llm

    @classmethod
    def class_name(cls) -> str:
        return "BlendIn_LLM"

    @property
    def metadata(self) -> LLMMetadata:
        ctx = self.context_window or self._llm.context_window or 4096
        return LLMMetadata(
            context_window=ctx,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model_name,
        )

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
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
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
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)

    # -- tools ---------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: Any = None,
        chat_history: Optional[list[ChatMessage]] = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg)
                if isinstance(user_msg, str)
                else user_msg
            )
        # a program passes tool_choice=None when it has no preference
        choice = kwargs.pop("tool_choice", None) or ("required" if tool_required else "auto")
        return {
            "messages": messages,
            "tools": [t.metadata.to_openai_tool() for t in tools],
            "tool_choice": choice,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The response's ``ToolCallBlock``s as ``ToolSelection``s.

        Raises:
            ValueError: no call, when ``error_on_no_tool_call`` (LlamaIndex's convention).
        """
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"expected at least one tool call, got none: {response.message.content!r}"
            )
        return [
            ToolSelection(
                tool_id=c.tool_call_id or "", tool_name=c.tool_name, tool_kwargs=c.tool_kwargs
            )
            for c in calls
        ]

    # -- structured output on the engine's JSON mode ----------------------------------------------
    def _json_request(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: Optional[dict[str, Any]],
        prompt_args: dict[str, Any],
    ) -> tuple[list[ChatMessage], dict[str, Any]]:
        dispatcher.event(
            LLMStructuredPredictStartEvent(
                output_cls=output_cls, template=prompt, template_args=prompt_args
            )
        )
        schema = output_cls.model_json_schema()
        kwargs = {
            **(llm_kwargs or {}),
            "response_format": {"type": "json_schema", "schema": schema},
        }
        return self._get_messages(prompt, **prompt_args), kwargs

    @staticmethod
    def _parsed(output_cls: type[Model], response: ChatResponse) -> Model:
        out = output_cls.model_validate_json(response.message.content or "")
        dispatcher.event(LLMStructuredPredictEndEvent(output=out))
        return out

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: Optional[dict[str, Any]] = None,
        **prompt_args: Any,
    ) -> Model:
        """An answer parsed into ``output_cls``, written in the engine's JSON mode: the schema is
        in the prompt and the answer is one JSON object (``response_format`` json_schema), so no
        tool call is needed. Another ``pydantic_program_mode`` than the default uses LlamaIndex's
        program for it instead.

        Args:
            output_cls: the pydantic class of the answer.
            prompt: the prompt template.
            llm_kwargs: per-call options for the engine (``max_tokens=``, ``seed=``, ...).
            **prompt_args: the template's variables.

        Returns:
            The parsed answer.

        Raises:
            pydantic.ValidationError: the answer is not JSON matching ``output_cls`` (e.g. it was
                cut off by ``max_new_tokens``).
        """
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._json_request(output_cls, prompt, llm_kwargs, prompt_args)
        return self._parsed(output_cls, self.chat(messages, **kwargs))

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: Optional[dict[str, Any]] = None,
        **prompt_args: Any,
    ) -> Model:
        """``structured_predict`` for asyncio."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._json_request(output_cls, prompt, llm_kwargs, prompt_args)
        return self._parsed(output_cls, await self.achat(messages, **kwargs))

    @staticmethod
    def _partial(flexible: type[BaseModel], text: str, last: Any) -> tuple[Any, Any]:
        """The fields of a JSON object read so far (``pydantic_core``'s partial JSON), as the
        flexible model LlamaIndex streams; None when nothing new was read."""
        try:
            data = pydantic_core.from_json(text or "{}", allow_partial=True)
        except ValueError:  # not even a JSON prefix (yet)
            return None, last
        if not isinstance(data, dict) or data == last:
            return None, last
        partial = flexible.model_validate(data)
        dispatcher.event(LLMStructuredPredictInProgressEvent(output=partial))
        return partial, data

    @dispatcher.span
    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: Optional[dict[str, Any]] = None,
        **prompt_args: Any,
    ) -> Iterator[Any]:
        """``structured_predict`` as it is written: partial objects (LlamaIndex's flexible model
        of ``output_cls``, fields filled as the JSON arrives), then the parsed ``output_cls``.

        Args:
            output_cls: the pydantic class of the answer.
            prompt: the prompt template.
            llm_kwargs: per-call options for the engine.
            **prompt_args: the template's variables.

        Returns:
            A generator of partial objects, ending with the parsed answer.
        """
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            yield from super().stream_structured_predict(
                output_cls, prompt, llm_kwargs, **prompt_args
            )
            return
        messages, kwargs = self._json_request(output_cls, prompt, llm_kwargs, prompt_args)
        flexible, last, response = create_flexible_model(output_cls), None, None
        for response in self.stream_chat(messages, **kwargs):
            partial, last = self._partial(flexible, response.message.content or "", last)
            if partial is not None:
                yield partial
        assert response is not None
        yield self._parsed(output_cls, response)

    @dispatcher.span
    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: BasePromptTemplate,
        llm_kwargs: Optional[dict[str, Any]] = None,
        **prompt_args: Any,
    ) -> Any:
        """``stream_structured_predict`` for asyncio.

        Args:
            output_cls: the pydantic class of the answer.
            prompt: the prompt template.
            llm_kwargs: per-call options for the engine.
            **prompt_args: the template's variables.

        Returns:
            An async generator of partial objects, ending with the parsed answer.
        """
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astream_structured_predict(
                output_cls, prompt, llm_kwargs, **prompt_args
            )
        messages, kwargs = self._json_request(output_cls, prompt, llm_kwargs, prompt_args)
        flexible = create_flexible_model(output_cls)
        responses = await self.astream_chat(messages, **kwargs)

        async def gen() -> Any:
            last, response = None, None
            async for response in responses:
                partial, last = self._partial(flexible, response.message.content or "", last)
                if partial is not None:
                    yield partial
            assert response is not None
            yield self._parsed(output_cls, response)

        return gen()


# -- reliability for query engines ---------------------------------------------------------------
_sinks: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar(
    "blendin_sinks", default=()
)


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

    def __init__(
        self, query_engine: Any, *, raise_on_low: bool = False, min_score: float | None = None
    ) -> None:
        _ensure_recorder()
        self.query_engine = query_engine
        self.raise_on_low = raise_on_low or min_score is not None
        self.min_score = min_score

    def _attach(self, response: Any, records: list) -> Any:
        if not records:
            raise RuntimeError("no BlendIn answer was recorded; is Settings.llm a BlendIn LLM?")
        rec = records[-1].reliability
        response.metadata = dict(response.metadata or {})
        response.metadata.update(
            reliability=rec,
            flagged=rec["flagged"],
            reliability_records=[r.reliability for r in records],
        )
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
