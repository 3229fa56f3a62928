"""``ChatBlendIn``: a LangChain chat model over a ``BlendedLLM``. It maps types and nothing else:
messages in, ``AIMessage`` / ``AIMessageChunk`` out, with usage, finish reason, the reliability
record and (on request) OpenAI-shaped log-probs of the blended distribution."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

import jsonschema
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import (
    BaseChatModel,
    LangSmithParams,
    generate_from_stream,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, SecretStr, ValidationError

from blendin_llm import BlendResult, StreamEvent, check_reliability
from blendin_llm.errors import ConfigError, PromptError, settings_error
from blendin_llm.options import OPTION_NAMES, build_llm, call_options, describe, merge_stops
from blendin_llm.sources import DEFAULT_GUIDE

# per-call keyword arguments that LangChain itself passes to a chat model and that mean nothing to
# the engine: ``stream`` (a streaming request, already honoured by LangChain) and the tracing
# arguments (``ls_*``; ``structured_output_format`` is their old name). Every other argument goes
# to the engine, which raises a typed error naming any it does not know.
_FRAMEWORK_KWARGS = frozenset({"stream", "structured_output_format"})


# -- messages in -------------------------------------------------------------------------------
def _text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call"):
            continue  # the same call is in the message's tool_calls
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise PromptError(
                f"message {i} has a {kind!r} content block; these models read text only "
                "(images, audio and files are not supported)"
            )
    return "".join(parts)


def to_core_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the engine's ``{"role", "content", ...}`` dicts."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text(m.content, i)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text(m.content, i)})
        elif isinstance(m, AIMessage):
            msg: dict[str, Any] = {"role": "assistant", "content": _text(m.content, i)}
            if m.tool_calls:
                msg["tool_calls"] = [
                    {"id": c.get("id"), "name": c["name"], "arguments": c["args"]}
                    for c in m.tool_calls
                ]
            out.append(msg)
        elif isinstance(m, ToolMessage):
            out.append(
                {
                    "role": "tool",
                    "content": _text(m.content, i),
                    "tool_call_id": m.tool_call_id,
                    "name": m.name,
                }
            )
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _text(m.content, i)})
        else:
            raise PromptError(
                f"message {i} is a {type(m).__name__}; ChatBlendIn takes System, Human, AI, Tool "
                "and Chat messages"
            )
    return out


# -- results out -------------------------------------------------------------------------------
def _logprobs(entries: list | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": [e.model_dump() for e in entries]}


def _final_metadata(res: BlendResult) -> dict[str, Any]:
    meta = {
        "id": res.id,  # the answer's id, also its audit record's (BlendedLLM(audit=...))
        "model_name": res.model,
        "model_provider": "blendin",
        "finish_reason": res.finish_reason,
        "stop_sequence": res.stop_sequence,
        "reliability": res.reliability.model_dump(),
    }
    return meta


def _usage(res: BlendResult) -> dict[str, int]:
    u = res.usage
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def to_ai_message(res: BlendResult) -> AIMessage:
    meta = _final_metadata(res)
    if res.logprobs is not None:
        meta["logprobs"] = _logprobs(res.logprobs)
    return AIMessage(
        content=res.text,
        tool_calls=[
            {"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"}
            for c in res.tool_calls
        ],
        invalid_tool_calls=[
            {
                "name": c.name,
                "args": c.arguments,
                "id": c.id,
                "error": c.error,
                "type": "invalid_tool_call",
            }
            for c in res.invalid_tool_calls
        ],
        usage_metadata=_usage(res),
        response_metadata=meta,
    )


def to_chunk(event: StreamEvent) -> AIMessageChunk:
    """A token's chunk carries its text (and log-prob); the last one carries everything else."""
    if not event.done:
        meta = {} if event.logprob is None else {"logprobs": _logprobs([event.logprob])}
        return AIMessageChunk(content=event.text, response_metadata=meta)
    res = event.result
    calls = [
        {
            "name": c.name,
            "args": json.dumps(c.arguments, ensure_ascii=False),
            "id": c.id,
            "index": i,
            "type": "tool_call_chunk",
        }
        for i, c in enumerate(res.tool_calls)
    ]
    calls += [
        {
            "name": c.name,
            "args": c.arguments,
            "id": c.id,
            "index": len(calls) + i,
            "type": "tool_call_chunk",
        }
        for i, c in enumerate(res.invalid_tool_calls)
    ]
    return AIMessageChunk(
        content=event.text,
        tool_call_chunks=calls,
        usage_metadata=_usage(res),
        response_metadata=_final_metadata(res),
        chunk_position="last",
    )


class _Chunker:
    """Stream events in, chunks out, one chunk per piece of text, so that ``on_llm_new_token``
    (which LangChain calls once per chunk) runs once per token with text and never for an empty
    closing chunk.

    A token whose text the engine holds back (an incomplete character, a possible stop string)
    gives no chunk: its log-prob rides with the chunk that releases the text. The closing record
    (usage, finish reason, reliability, tool calls; ``chunk_position="last"``) joins the answer's
    last text chunk, so each text chunk is passed on when the next event arrives."""

    def __init__(self) -> None:
        self.ready: AIMessageChunk | None = None  # text, passed on at the next event
        self.carry: AIMessageChunk | None = None  # held-back tokens: log-probs without text

    def push(self, event: StreamEvent) -> list[ChatGenerationChunk]:
        chunk = to_chunk(event)
        if self.carry is not None:
            chunk, self.carry = self.carry + chunk, None
        if event.done:
            if self.ready is None:
                out = [chunk]
            elif event.text:  # text released at the end: a chunk of its own
                out = [self.ready, chunk]
            else:
                out = [self.ready + chunk]
        elif not event.text:
            self.carry, out = chunk, []
        else:
            out = [] if self.ready is None else [self.ready]
            self.ready = chunk
        return [ChatGenerationChunk(message=m) for m in out]


def _require_call(name: str) -> Runnable[AIMessage, AIMessage]:
    """Raises ``OutputParserException`` when the message has no complete call of tool ``name``
    (e.g. the answer ended inside the call), instead of letting the parser return None."""

    def check(msg: AIMessage) -> AIMessage:
        if any(c["name"] == name for c in msg.tool_calls):
            return msg
        why = "; ".join(c.get("error") or "" for c in msg.invalid_tool_calls)
        raise OutputParserException(
            f"the answer has no complete call of {name!r}"
            + (f": {why}" if why else " (it answered in text)"),
            llm_output=msg.text or json.dumps([c.get("args") for c in msg.invalid_tool_calls]),
        )

    return RunnableLambda(check, name="require_tool_call")


def _schema_check(schema: dict[str, Any]) -> Runnable[Any, Any]:
    """Validates parsed output against a JSON Schema (``jsonschema``): required keys, types,
    enums, ranges. Raises ``OutputParserException`` naming the first violation."""
    validator_cls = jsonschema.validators.validator_for(schema)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(
            f"the structured-output schema is not a valid JSON Schema: {e.message}"
        ) from None
    validator = validator_cls(schema)

    def check(obj: Any) -> Any:
        error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
        if error is not None:
            where = "" if not error.path else f" at {error.json_path}"
            raise OutputParserException(
                f"the answer does not match the schema{where}: {error.message}",
                llm_output=json.dumps(obj, ensure_ascii=False),
            )
        return obj

    return RunnableLambda(check, name="check_json_schema")


def _as_parser_error(parser: Runnable) -> Runnable:
    """A pydantic ``ValidationError`` from parsing becomes ``OutputParserException``, the error
    LangChain's structured output promises."""

    def parse(msg: AIMessage) -> Any:
        try:
            return parser.invoke(msg)
        except ValidationError as e:
            raise OutputParserException(
                f"the answer does not match the schema: {e}", llm_output=msg.text
            ) from e

    return RunnableLambda(parse, name="parse_structured_output")


def _settings_error(e: ValidationError) -> ConfigError:
    """A pydantic error on the constructor's arguments, as the library's ConfigError."""
    own = sorted(set(ChatBlendIn.model_fields) - set(BaseChatModel.model_fields))
    return settings_error(
        "ChatBlendIn",
        e.errors(),
        f"{', '.join(own)}, and LangChain's callbacks, tags, metadata, ...",
    )


# -- the model ---------------------------------------------------------------------------------
class ChatBlendIn(BaseChatModel):
    """A base model steered by guide models (BlendIn), as a LangChain chat model.

    Made like any LangChain chat model, ``ChatBlendIn(model="gemma-3-270m")``: ``model`` is the
    base (a preset name, a directory, a ``.gguf`` file, a hub id, a ``ModelSpec`` or a
    ``(model, tokenizer)`` pair), steered by the default guide (the preset
    ``"smollm2-135m-instruct"``) unless ``guides=`` names others (``guides=[]``: none). Or share a
    loaded engine: ``ChatBlendIn(llm=blended)`` (``blended.as_langchain()``).

    Every setting is checked when the object is made, by the engine's own rules; a bad one raises
    ``ConfigError`` saying what is allowed. Per-call keyword arguments (``invoke(..., seed=3)``)
    reach the engine; one it does not know raises a typed error naming it.

    Every answer's ``response_metadata["reliability"]`` is the engine's reliability record;
    ``reliability_gate()`` turns a flagged answer into ``LowReliabilityError`` for fallbacks.
    """

    llm: Any = Field(
        default=None, exclude=True, description="a loaded BlendedLLM to share (instead of model=)"
    )
    model: Any = Field(
        default=None,
        exclude=True,
        description=(
            "the base model: a preset name ('gemma-3-270m'), a directory, a .gguf file, a hub id, "
            "a ModelSpec or a (model, tokenizer) pair"
        ),
    )
    base: Any = Field(default=None, exclude=True, description="the same as model=")
    guides: Any = Field(
        default=None,
        exclude=True,
        description=(f"the guide model(s) for model=; default [{DEFAULT_GUIDE!r}], [] for none"),
    )
    config: Any = Field(
        default=None, exclude=True, description="the BlendConfig of the engine built from model="
    )
    model_name: str | None = Field(
        default=None, description=("the name in traces; defaults to the engine's (base+guides)")
    )
    max_tokens: int = Field(default=256, strict=True, description="most tokens in an answer (>= 1)")
    temperature: float = Field(
        default=0.0,
        strict=True,
        description=describe("temperature"),
    )
    top_p: float = Field(default=1.0, strict=True, description=describe("top_p"))
    top_k: int = Field(default=0, strict=True, description=describe("top_k"))
    seed: int | None = Field(default=None, strict=True, description=describe("seed"))
    stop: list[str] | None = Field(
        default=None,
        alias="stop_sequences",
        description=(
            "stop strings; a call's stop= adds to them (blendin_llm.options: stop is merged)"
        ),
    )
    logprobs: bool = Field(
        default=False,
        strict=True,
        description="OpenAI-shaped log-probs in response_metadata['logprobs']",
    )
    top_logprobs: int = Field(default=0, strict=True, description="alternatives per token, 0-20")
    repetition_penalty: float | None = Field(
        default=None,
        strict=True,
        description=describe("repetition_penalty", "None = the engine's default."),
    )
    frequency_penalty: float | None = Field(
        default=None,
        strict=True,
        description=describe("frequency_penalty", "None = the engine's default."),
    )
    presence_penalty: float | None = Field(
        default=None,
        strict=True,
        description=describe("presence_penalty", "None = the engine's default."),
    )
    no_repeat_ngram_size: int | None = Field(
        default=None,
        strict=True,
        description=describe("no_repeat_ngram_size", "None = the engine's default."),
    )
    strategy: str | None = Field(
        default=None,
        description=describe("strategy", "A per-model override; None = the engine's config."),
    )
    gamma: float | None = Field(
        default=None,
        strict=True,
        description=describe("gamma", "A per-model override; None = the engine's config."),
    )
    alpha: float | Literal["auto"] | None = Field(
        default=None,
        description=describe("alpha", "A per-model override; None = the engine's config."),
    )
    streaming: bool = Field(
        default=False,
        description=(
            "invoke() decodes through the stream, so callbacks get each piece of text as it comes"
        ),
    )
    # LangChain's standard parameters that mean nothing for local models: accepted, unused
    timeout: float | None = Field(
        default=None, description="accepted for compatibility; local models"
    )
    max_retries: int = Field(default=0, description="accepted for compatibility; nothing to retry")
    api_key: SecretStr | None = Field(
        default=None, exclude=True, description="accepted for compatibility; nothing is remote"
    )
    base_url: str | None = Field(
        default=None, description="accepted for compatibility; nothing is remote"
    )

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _settings_error(e) from None
        self._build()

    def _build(self) -> None:
        """Checks the settings (before loading anything), then loads the engine if asked to
        (``blendin_llm.options.build_llm``: the same rules as the LlamaIndex face)."""
        self.llm = build_llm(
            self._fields(),
            owner="ChatBlendIn",
            llm=self.llm,
            model=self.model,
            base=self.base,
            guides=self.guides,
            config=self.config,
        )
        # the sources are spent: a copy made from this object's fields (LangChain's
        # configurable_fields does that) shares the engine instead of loading it again
        self.model = self.base = self.guides = self.config = None
        if self.model_name is None:
            self.model_name = self.llm.name
        if self.profile is None:
            self.profile = {
                "max_input_tokens": self.llm.context_window,
                "text_inputs": True,
                "tool_calling": True,
                "structured_output": True,
            }
            if self.profile["max_input_tokens"] is None:
                del self.profile["max_input_tokens"]

    def _fields(self) -> dict[str, Any]:
        """This model's settings, for ``blendin_llm.options`` (LangChain's names)."""
        return {n: getattr(self, n) for n in OPTION_NAMES if n in type(self).model_fields}

    def _opts(
        self, stop: list[str] | None = None, call: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The engine's ``stream()`` keyword arguments for one call: this model's settings and
        the call's arguments, by ``blendin_llm.options.call_options`` (a call's ``stop`` adds to
        the model's; every other argument replaces the setting of its name)."""
        call = {
            k: v
            for k, v in (call or {}).items()
            if k not in _FRAMEWORK_KWARGS and not k.startswith("ls_")
        }
        return call_options(self._fields(), stop, **call)

    @property
    def _llm_type(self) -> str:
        return "blendin-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "strategy": self.strategy or self.llm.config.strategy,
            "gamma": self.gamma if self.gamma is not None else self.llm.config.gamma,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="blendin",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = stops
        return params

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: Any = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """Answer many inputs at once: the engine decodes them together (continuous batching),
        so by default up to its ``max_batch_size`` are sent at a time (``max_concurrency`` in
        ``config`` overrides it). Each answer is the one ``invoke`` gives."""
        width = self.llm.max_batch_size

        def with_width(c: Any) -> Any:
            c = dict(c or {})
            c.setdefault("max_concurrency", width)
            return c

        config = [with_width(c) for c in config] if isinstance(config, list) else with_width(config)
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        return self._result(
            self.llm.generate(to_core_messages(messages), **self._opts(stop, kwargs))
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(
            await self.llm.agenerate(to_core_messages(messages), **self._opts(stop, kwargs))
        )

    def _result(self, res: BlendResult) -> ChatResult:
        msg = to_ai_message(res)
        info = {"finish_reason": res.finish_reason}
        if res.logprobs is not None:
            info["logprobs"] = msg.response_metadata["logprobs"]
        return ChatResult(
            generations=[ChatGeneration(message=msg, generation_info=info)],
            llm_output={"model_name": res.model, "token_usage": _usage(res)},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunker = _Chunker()
        for event in self.llm.stream(to_core_messages(messages), **self._opts(stop, kwargs)):
            for chunk in chunker.push(event):
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        chunker = _Chunker()
        async for event in self.llm.astream(to_core_messages(messages), **self._opts(stop, kwargs)):
            for chunk in chunker.push(event):
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    # -- tools and structured output -------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools are described to the models and calls are parsed into ``AIMessage.tool_calls``.
        ``tool_choice``: "auto", "none", "any"/"required"/True, or a tool's name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | Any]:
        """Answers parsed into ``schema`` (a pydantic class, TypedDict or JSON schema).
        "function_calling" forces a call of a tool shaped like the schema; "json_mode" and
        "json_schema" make the answer one JSON object, with the schema in the prompt.

        Output that does not meet the schema raises ``OutputParserException`` (or is returned as
        ``parsing_error`` with ``include_raw=True``): unparseable JSON, no complete call (e.g. the
        answer ended inside it), and, for pydantic classes, their validation; TypedDict and JSON
        Schema dicts are validated with ``jsonschema`` (required keys, types, enums, ...)."""
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        fmt = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if method == "function_calling":
            tool = convert_to_openai_tool(schema)["function"]
            name = tool["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=fmt)
            parser: Runnable = _require_call(name) | (
                _as_parser_error(PydanticToolsParser(tools=[schema], first_tool_only=True))
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
                | _schema_check(tool.get("parameters") or {})
            )
        elif method in ("json_mode", "json_schema"):
            json_schema = convert_to_json_schema(schema)
            llm = self.bind(
                response_format={"type": "json_schema", "schema": json_schema},
                ls_structured_output_format=fmt,
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)
                if is_pydantic
                else JsonOutputParser() | _schema_check(json_schema)
            )
        else:
            raise ValueError(
                f"method must be function_calling, json_mode or json_schema, got {method!r}"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")


def reliability_gate(
    min_score: float | None = None, allow_flagged: bool = False
) -> Runnable[AIMessage, AIMessage]:
    """A runnable that passes an ``AIMessage`` through, or raises ``LowReliabilityError`` when its
    reliability record is flagged (or scores below ``min_score``).

    >>> safe = (chat | reliability_gate()).with_fallbacks([other_chat])
    """

    def gate(msg: AIMessage) -> AIMessage:
        rec = msg.response_metadata.get("reliability")
        if rec is None:
            raise ValueError("this message has no reliability record; gate ChatBlendIn's output")
        check_reliability(rec, min_score=min_score, allow_flagged=allow_flagged, answer=msg.text)
        return msg

    return RunnableLambda(gate, name="reliability_gate")
