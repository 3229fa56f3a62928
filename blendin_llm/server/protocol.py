"""OpenAI request and response shapes <-> ``BlendedLLM`` calls and results. Type mapping only:
every rule about decoding, blending and validation stays in the engine.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..config import BlendConfig, SamplingParams
from ..errors import GenerationArgumentError, PromptError
from ..results import BlendResult, TokenLogprob

# OpenAI fields mapped to the engine's names (the rest of the known ones are handled below)
_RENAMED = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens"}
_DIRECT = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
)
# OpenAI fields accepted and not used by the engine (they only describe the request)
_IGNORED = ("user", "metadata", "store", "service_tier", "stream", "stream_options", "model", "n")
# BlendIn's own per-request settings: sampling extras and the scalar BlendConfig fields
_EXTRA_SAMPLING = ("top_k", "repetition_penalty", "no_repeat_ngram_size", "ignore_eos", "trace")


def blend_fields() -> tuple[str, ...]:
    """The BlendConfig fields a request may set (scalars: strategy, gamma, alpha, ...)."""
    default = BlendConfig()
    return tuple(
        name
        for name in BlendConfig.model_fields
        if isinstance(getattr(default, name), (str, int, float, type(None)))
    )


def request_schema(route: str) -> dict[str, Any]:
    """The JSON schema of a request body, for the OpenAPI document (``/docs``): OpenAI's fields and
    BlendIn's, each with the bounds and description of the engine field it maps to
    (``SamplingParams``, ``BlendConfig``), so the server documents exactly what the engine checks.

    Args:
        route: "chat" (``/v1/chat/completions``) or "completions" (``/v1/completions``).

    Returns:
        A JSON schema object.
    """
    sampling = SamplingParams.model_json_schema()["properties"]
    blend = BlendConfig.model_json_schema()["properties"]
    props: dict[str, Any] = {}
    if route == "chat":
        props["messages"] = {
            "type": "array",
            "items": {"type": "object"},
            "description": "The conversation: {role, content} objects (text content).",
        }
        props["max_completion_tokens"] = sampling["max_new_tokens"]
        props["logprobs"] = {"type": "boolean", "description": "Return each token's log-prob."}
        props["top_logprobs"] = sampling["logprobs"]
    else:
        props["prompt"] = {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "integer"}},
            ],
            "description": "Text continued as is (no template), or its token ids.",
        }
        props["logprobs"] = sampling["logprobs"]
        props["return_tokens_as_token_ids"] = {
            "type": "boolean",
            "description": "Log-prob tokens as 'token_id:<id>' (vLLM's convention).",
        }
    props["model"] = {"type": "string", "description": "The served model's name."}
    props["max_tokens"] = sampling["max_new_tokens"]
    props["stream"] = {"type": "boolean", "description": "Answer as server-sent events."}
    props["stop"] = {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": sampling["stop"]["description"],
    }
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        props[name] = sampling[name]
    for name in _EXTRA_SAMPLING:
        if name in sampling:
            props[name] = sampling[name]
    props["tools"] = {"type": "array", "items": {"type": "object"}, "description": "OpenAI tools."}
    props["tool_choice"] = {"description": "'auto', 'none', 'required' or a named function."}
    props["response_format"] = {"type": "object", "description": "json_object or json_schema."}
    props["trace"] = {"type": "boolean", "description": "Return the per-token trace."}
    for name in blend_fields():
        if "$ref" not in json.dumps(blend[name]):  # the scalar settings
            props[name] = blend[name]
    required = ["messages"] if route == "chat" else ["prompt"]
    return {"type": "object", "properties": props, "required": required}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _text_content(content: Any, i: int) -> Any:
    """A message's content as the engine reads it: text parts joined; other parts refused."""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (
                isinstance(part, Mapping)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise PromptError(
                    f"messages[{i}]: content part of type {kind!r} is not "
                    "supported; send text parts ({'type': 'text', 'text': ...})"
                )
            texts.append(part["text"])
        return "".join(texts)
    return content


def chat_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise PromptError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise PromptError(f"messages[{i}] must be an object with 'role' and 'content'")
        m = dict(m)
        if "content" in m:
            m["content"] = _text_content(m["content"], i)
        out.append(m)
    return out


def call_kwargs(body: Mapping[str, Any], extra_ok: tuple[str, ...]) -> dict[str, Any]:
    """The ``BlendedLLM.stream`` keyword arguments of a request body (its prompt excluded).

    Unknown fields are refused (GenerationArgumentError): a typo would otherwise be ignored."""
    known = (
        set(_RENAMED)
        | set(_DIRECT)
        | set(_IGNORED)
        | set(_EXTRA_SAMPLING)
        | set(extra_ok)
        | {
            "messages",
            "prompt",
            "stop",
            "logprobs",
            "top_logprobs",
            "echo",
            "suffix",
            "best_of",
            "return_tokens_as_token_ids",
        }
    )
    unknown = sorted(set(body) - known)
    if unknown:
        raise GenerationArgumentError(
            f"unknown field(s) {unknown}; OpenAI fields, and BlendIn's "
            f"{sorted(set(_EXTRA_SAMPLING) | set(extra_ok))}, are accepted"
        )
    n = body.get("n", 1)
    if n not in (1, None):
        raise GenerationArgumentError("n must be 1: one answer per request")
    for field in ("echo", "suffix"):
        if body.get(field):
            raise GenerationArgumentError(f"{field!r} is not supported")
    if body.get("best_of") not in (None, 1):
        raise GenerationArgumentError("best_of must be 1")
    kw: dict[str, Any] = {}
    for src, dst in _RENAMED.items():
        if body.get(src) is not None:
            kw[dst] = body[src]
    for k in _DIRECT + _EXTRA_SAMPLING + tuple(extra_ok):
        if body.get(k) is not None:
            kw[k] = body[k]
    if body.get("stop") is not None:
        kw["stop"] = body["stop"]
    lp = body.get("logprobs")
    if isinstance(lp, bool):  # chat: logprobs true/false, top_logprobs k
        kw["logprobs"] = lp
        if body.get("top_logprobs") is not None:
            kw["top_logprobs"] = body["top_logprobs"]
    elif lp is not None:  # completions: logprobs k
        kw["logprobs"], kw["top_logprobs"] = True, lp
    return kw


def usage(result: BlendResult) -> dict:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def tool_calls(result: BlendResult) -> list[dict]:
    return [
        {
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
        }
        for c in result.tool_calls
    ]


def _logprob_entry(lp: TokenLogprob) -> dict:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top_logprobs
        ],
    }


def chat_completion(rid: str, model: str, result: BlendResult, logprobs: bool) -> dict:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text if result.text or not result.tool_calls else None,
    }
    if result.tool_calls:
        message["tool_calls"] = tool_calls(result)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": result.finish_reason,
                "logprobs": {"content": [_logprob_entry(x) for x in result.logprobs or []]}
                if logprobs
                else None,
            }
        ],
        "usage": usage(result),
        "reliability": result.reliability.model_dump(mode="json"),
    }


def chat_chunk(
    rid: str,
    model: str,
    delta: dict,
    finish: str | None = None,
    logprob: TokenLogprob | None = None,
    **extra: Any,
) -> dict:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    if logprob is not None:
        choice["logprobs"] = {"content": [_logprob_entry(logprob)]}
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        **extra,
    }


def completion_prompt(prompt: Any) -> Any:
    """A completions request's prompt as the engine takes it: a ``RawPrompt`` (no template), of
    text or of token ids (OpenAI's ``prompt`` may be a string or a list of token ids; one prompt
    per request)."""
    from ..prompts import RawPrompt

    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return RawPrompt(text=prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) for i in prompt):
        return RawPrompt(ids=prompt)
    raise PromptError("'prompt' must be a string or a list of token ids (one prompt per request)")


def text_completion(
    rid: str, model: str, result: BlendResult, logprobs: bool, token_ids: bool = False
) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": result.text,
                "finish_reason": result.finish_reason,
                "logprobs": completion_logprobs(result.logprobs or [], token_ids)
                if logprobs
                else None,
            }
        ],
        "usage": usage(result),
        "reliability": result.reliability.model_dump(mode="json"),
    }


def completion_logprobs(lps: list[TokenLogprob], token_ids: bool = False) -> dict:
    """OpenAI's completions ``logprobs``; with ``token_ids`` (vLLM's
    ``return_tokens_as_token_ids``) tokens are written ``"token_id:<id>"``, which keeps tokens of
    equal text apart."""

    def name(t: Any) -> str:
        return f"token_id:{t.id}" if token_ids and t.id is not None else t.token

    return {
        "tokens": [name(x) for x in lps],
        "token_logprobs": [x.logprob for x in lps],
        "top_logprobs": [{name(t): t.logprob for t in x.top_logprobs} for x in lps],
        "text_offset": [],
    }


def completion_chunk(
    rid: str,
    model: str,
    text: str,
    finish: str | None = None,
    logprobs: dict | None = None,
    **extra: Any,
) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
        **extra,
    }


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
