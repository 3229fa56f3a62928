"""``ChatBlendIn``: a LangChain chat model over a ``BlendedLLM``. It maps types and nothing else:
messages in, ``AIMessage`` / ``AIMessageChunk`` out, with usage, finish reason, the reliability
record and (on request) OpenAI-shaped log-probs of the blended distribution."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from blendin_llm import BlendConfig, BlendedLLM, BlendResult, StreamEvent, check_reliability
from blendin_llm.errors import PromptError
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
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
from pydantic import ConfigDict, Field, model_validator

_CALL_KWARGS = ("tools", "tool_choice", "parallel_tool_calls", "response_format", "seed",
                "top_p", "top_k", "strategy", "gamma", "alpha", "trace")


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
                msg["tool_calls"] = [{"id": c.get("id"), "name": c["name"], "arguments": c["args"]}
                                     for c in m.tool_calls]
            out.append(msg)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "content": _text(m.content, i),
                        "tool_call_id": m.tool_call_id, "name": m.name})
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
        "model_name": res.model,
        "model_provider": "blendin",
        "finish_reason": res.finish_reason,
        "stop_sequence": res.stop_sequence,
        "reliability": res.reliability.model_dump(),
    }
    return meta


def _usage(res: BlendResult) -> dict[str, int]:
    u = res.usage
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def to_ai_message(res: BlendResult) -> AIMessage:
    meta = _final_metadata(res)
    if res.logprobs is not None:
        meta["logprobs"] = _logprobs(res.logprobs)
    return AIMessage(
        content=res.text,
        tool_calls=[{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"}
                    for c in res.tool_calls],
        invalid_tool_calls=[{"name": c.name, "args": c.arguments, "id": c.id, "error": c.error,
                             "type": "invalid_tool_call"} for c in res.invalid_tool_calls],
        usage_metadata=_usage(res),
        response_metadata=meta,
    )


def to_chunk(event: StreamEvent) -> AIMessageChunk:
    """A token's chunk carries its text (and log-prob); the last one carries everything else."""
    if not event.done:
        meta = {} if event.logprob is None else {"logprobs": _logprobs([event.logprob])}
        return AIMessageChunk(content=event.text, response_metadata=meta)
    res = event.result
    calls = [{"name": c.name, "args": json.dumps(c.arguments, ensure_ascii=False), "id": c.id,
              "index": i, "type": "tool_call_chunk"} for i, c in enumerate(res.tool_calls)]
    calls += [{"name": c.name, "args": c.arguments, "id": c.id, "index": len(calls) + i,
               "type": "tool_call_chunk"} for i, c in enumerate(res.invalid_tool_calls)]
    return AIMessageChunk(content=event.text, tool_call_chunks=calls, usage_metadata=_usage(res),
                          response_metadata=_final_metadata(res), chunk_position="last")


# -- the model ---------------------------------------------------------------------------------
class ChatBlendIn(BaseChatModel):
    """A base model steered by guide models (BlendIn), as a LangChain chat model.

    Build it from a loaded engine, ``ChatBlendIn(llm=blended)`` (or ``blended.as_langchain()``),
    or from the engine's own arguments: ``ChatBlendIn(base=..., guides=[...], config=...)``.

    Every answer's ``response_metadata["reliability"]`` is the engine's reliability record;
    ``reliability_gate()`` turns a flagged answer into ``LowReliabilityError`` for fallbacks.
    """

    llm: Any = Field(default=None, exclude=True, description="the BlendedLLM that does the work")
    base: Any = Field(default=None, exclude=True)
    guides: Any = Field(default=None, exclude=True)
    config: Any = Field(default=None, exclude=True)
    model_name: str | None = Field(default=None, alias="model")
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    logprobs: bool = False
    top_logprobs: int = 0
    strategy: str | None = Field(default=None, description="per-model override of the strategy")
    gamma: float | None = None
    alpha: float | Literal["auto"] | None = None
    streaming: bool = False
    timeout: float | None = Field(default=None, description="accepted for compatibility; local models")
    max_retries: int = Field(default=0, description="accepted for compatibility; nothing to retry")

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="ignore")

    @model_validator(mode="after")
    def _engine(self) -> "ChatBlendIn":
        if self.llm is None:
            if self.base is None:
                raise PromptError("ChatBlendIn needs llm=BlendedLLM(...) or base=... (and guides=...)")
            self.llm = BlendedLLM(self.base, self.guides, self.config or BlendConfig())
        elif not isinstance(self.llm, BlendedLLM):
            raise TypeError(f"llm must be a BlendedLLM, got {type(self.llm).__name__}")
        if self.model_name is None:
            self.model_name = self.llm.name
        return self

    @property
    def _llm_type(self) -> str:
        return "blendin-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "strategy": self.strategy or self.llm.config.strategy,
                "gamma": self.gamma if self.gamma is not None else self.llm.config.gamma,
                "max_tokens": self.max_tokens, "temperature": self.temperature}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="blendin", ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat", ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _call(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict
              ) -> tuple[list[dict], dict[str, Any]]:
        opts: dict[str, Any] = {
            "max_new_tokens": kwargs.pop("max_tokens", self.max_tokens),
            "temperature": kwargs.pop("temperature", self.temperature),
            "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed,
            "stop": [*(self.stop or []), *(stop or [])],
            "logprobs": kwargs.pop("logprobs", self.logprobs),
            "top_logprobs": kwargs.pop("top_logprobs", self.top_logprobs),
        }
        for name in ("strategy", "gamma", "alpha"):
            if getattr(self, name) is not None:
                opts[name] = getattr(self, name)
        opts.update({k: kwargs[k] for k in _CALL_KWARGS if kwargs.get(k) is not None})
        return to_core_messages(messages), opts

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        msgs, opts = self._call(messages, stop, kwargs)
        return self._result(self.llm.generate(msgs, **opts))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        msgs, opts = self._call(messages, stop, kwargs)
        return self._result(await self.llm.agenerate(msgs, **opts))

    def _result(self, res: BlendResult) -> ChatResult:
        msg = to_ai_message(res)
        info = {"finish_reason": res.finish_reason}
        if res.logprobs is not None:
            info["logprobs"] = msg.response_metadata["logprobs"]
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info=info)],
                          llm_output={"model_name": res.model, "token_usage": _usage(res)})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        msgs, opts = self._call(messages, stop, kwargs)
        for event in self.llm.stream(msgs, **opts):
            chunk = ChatGenerationChunk(message=to_chunk(event))
            if run_manager:
                run_manager.on_llm_new_token(event.text, chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        msgs, opts = self._call(messages, stop, kwargs)
        async for event in self.llm.astream(msgs, **opts):
            chunk = ChatGenerationChunk(message=to_chunk(event))
            if run_manager:
                await run_manager.on_llm_new_token(event.text, chunk=chunk)
            yield chunk

    # -- tools and structured output -------------------------------------------------------
    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: dict | str | bool | None = None,
                   parallel_tool_calls: bool | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools are described to the models and calls are parsed into ``AIMessage.tool_calls``.
        ``tool_choice``: "auto", "none", "any"/"required"/True, or a tool's name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: dict | type, *,
                               method: Literal["function_calling", "json_mode", "json_schema"]
                               = "function_calling",
                               include_raw: bool = False, strict: bool | None = None,
                               **kwargs: Any) -> Runnable[LanguageModelInput, dict | Any]:
        """Answers parsed into ``schema`` (a pydantic class, TypedDict or JSON schema).
        "function_calling" forces a call of a tool shaped like the schema; "json_mode" and
        "json_schema" make the answer one JSON object, with the schema in the prompt. Unparseable
        output raises ``OutputParserException`` (or is returned as ``parsing_error`` with
        ``include_raw=True``)."""
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        fmt = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=fmt)
            parser: Runnable = (PydanticToolsParser(tools=[schema], first_tool_only=True)
                                if is_pydantic else
                                JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_mode", "json_schema"):
            json_schema = convert_to_json_schema(schema)
            llm = self.bind(response_format={"type": "json_schema", "schema": json_schema},
                            ls_structured_output_format=fmt)
            parser = (PydanticOutputParser(pydantic_object=schema) if is_pydantic
                      else JsonOutputParser())
        else:
            raise ValueError(f"method must be function_calling, json_mode or json_schema, got {method!r}")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")


def reliability_gate(min_score: float | None = None, allow_flagged: bool = False
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
