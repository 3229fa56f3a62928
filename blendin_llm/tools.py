"""Tool calls and JSON answers for models of any kind, trained on a tool format or not.

Tools are described to the model in a system turn, and a call is written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes / Qwen convention, which
tool-tuned open models already follow). Earlier calls and their results are rendered into the
conversation in the same convention, so every prompt format (chat template or plain turns) can
carry them. ``tool_choice`` that demands a call starts the answer with the call's opening (a
prefill), which even a small model then completes; a JSON ``response_format`` starts it with "{".

While decoding, text filters (same interface as ``text.StopMatcher``: ``push(delta) -> (emit,
hit)``, ``flush()``) capture tool calls out of the released text and end a JSON answer when its
object closes. ``parse_tool_calls`` turns the captured text into ``ToolCall`` records, or
``InvalidToolCall`` records that say what was wrong.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from .errors import GenerationArgumentError, PromptError
from .filters import StopMatcher

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class ToolCall(BaseModel):
    """A tool call the answer made, parsed."""

    id: str = Field(description="the call's id (OpenAI-style, unique per answer)")
    name: str = Field(description="the tool's name")
    arguments: dict[str, Any] = Field(description="the call's arguments, parsed from JSON")


class InvalidToolCall(BaseModel):
    """A tool call the answer started but that could not be parsed."""

    id: str = Field(description="the call's id")
    name: str | None = Field(None, description="the tool's name, when it could be read")
    arguments: str | None = Field(None, description="the raw text of the call")
    error: str = Field(description="what was wrong with it")


# -- tools and choices -------------------------------------------------------------------------
def normalize_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Tools in the OpenAI shape ``{"type": "function", "function": {"name", "description",
    "parameters"}}`` (a bare ``{"name", "description", "parameters"}`` is accepted too)."""
    out: list[dict[str, Any]] = []
    for i, t in enumerate(tools or ()):
        fn = t.get("function", t) if isinstance(t, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise GenerationArgumentError(
                f"tool {i} must be a dict like {{'type': 'function', 'function': {{'name': ..., "
                f"'description': ..., 'parameters': {{...JSON schema...}}}}}}, got {t!r}"
            )
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise GenerationArgumentError(
                f"tool {fn['name']!r}: parameters must be a JSON schema dict"
            )
        out.append(
            {
                "name": fn["name"],
                "description": fn.get("description") or "",
                "parameters": dict(params),
            }
        )
    names = [t["name"] for t in out]
    if len(set(names)) != len(names):
        raise GenerationArgumentError(f"tool names must be unique, got {names}")
    return out


def normalize_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> str | None:
    """None (no tools), "auto", "none", "required", or the name of one tool.

    Accepts the OpenAI forms ("auto", "none", "required", {"type": "function", "function":
    {"name": ...}}) and LangChain's ("any", True, a tool name)."""
    if not tools:
        if choice not in (None, "auto", "none", False):
            raise GenerationArgumentError(f"tool_choice={choice!r} given but no tools are bound")
        return None
    if choice is None or choice == "auto":
        return "auto"
    if choice is False or choice == "none":
        return "none"
    if choice is True or choice in ("any", "required"):
        return "required" if len(tools) > 1 else tools[0]["name"]
    if isinstance(choice, Mapping):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    names = [t["name"] for t in tools]
    if isinstance(choice, str) and choice in names:
        return choice
    raise GenerationArgumentError(
        f"tool_choice must be 'auto', 'none', 'required'/'any' or one of the bound tools "
        f"{names}, got {choice!r}"
    )


def normalize_response_format(fmt: Any) -> dict[str, Any] | None:
    """None (free text), ``{"type": "json_object"}``, or ``{"type": "json_schema", "schema": {...}}``
    (OpenAI's ``{"type": "json_schema", "json_schema": {"schema": ...}}`` is accepted too)."""
    if fmt is None or fmt == {"type": "text"}:
        return None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        return {"type": "json_object", "schema": fmt.get("schema")}
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, Mapping):
            return {"type": "json_schema", "schema": dict(schema)}
    raise GenerationArgumentError(
        "response_format must be None, {'type': 'json_object'} or {'type': 'json_schema', "
        f"'json_schema': {{'schema': {{...}}}}}}, got {fmt!r}"
    )


# -- prompts -----------------------------------------------------------------------------------
def _instruction(tools: list[dict[str, Any]], choice: str | None, fmt: dict | None) -> str:
    parts = []
    if tools and choice != "none":
        assert choice is not None  # normalize_tool_choice gives one whenever there are tools
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        must = {
            "auto": "If a tool helps, call it; otherwise answer directly.",
            "required": "You must call one of the tools.",
        }.get(choice, f"You must call the tool {choice}.")
        parts.append(
            "You can call these tools (JSON schemas):\n" + listing + "\n\n"
            f"{must} To call a tool, reply with only a call like this one (with your values):\n"
            f"{_example_call(tools[0] if choice in ('auto', 'required') else _named(tools, choice))}\n"
            "Results come back in <tool_response> blocks."
        )
    if fmt is not None:
        schema = fmt.get("schema")
        parts.append(
            "Reply with one JSON object and nothing else"
            + (
                " that matches this JSON schema:\n" + json.dumps(schema, ensure_ascii=False)
                if schema
                else "."
            )
        )
    return "\n\n".join(parts)


_EXAMPLE_VALUES: dict[str | None, Any] = {
    "integer": 2,
    "number": 1.5,
    "boolean": True,
    "array": [],
    "object": {},
}


def _named(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(t for t in tools if t["name"] == name)


def _example_call(tool: dict[str, Any]) -> str:
    """A call of ``tool`` with a placeholder value of the right type for each argument (small
    models copy a schematic ``<arguments>`` literally; they copy a well-formed call's shape)."""
    props = tool["parameters"].get("properties") or {}
    args = {
        k: _EXAMPLE_VALUES.get(v.get("type") if isinstance(v, dict) else None, "...")
        for k, v in props.items()
    }
    return _call_text({"name": tool["name"], "arguments": args})


def call_arguments(call: Mapping[str, Any]) -> Any:
    """A call's arguments under any of the usual keys, decoded when they are a JSON string."""
    args = call.get("arguments", call.get("parameters", call.get("args", {})))
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            pass
    return args


def _call_text(call: Mapping[str, Any]) -> str:
    """A call (``{"name", "arguments"}``) written the way the models are asked to write one."""
    return (
        OPEN
        + json.dumps({"name": call["name"], "arguments": call["arguments"]}, ensure_ascii=False)
        + CLOSE
    )


def render_tool_turns(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    choice: str | None,
    fmt: dict | None,
) -> tuple[list[dict[str, str]], str]:
    """Plain ``{"role", "content"}`` messages that carry the tools, earlier calls and results, and
    the prefill the answer starts with ("" for none)."""
    out: list[dict[str, str]] = []
    for m in messages:
        if m["role"] == "tool":
            name = f' name="{m["name"]}"' if m.get("name") else ""
            out.append(
                {
                    "role": "user",
                    "content": f"<tool_response{name}>\n{m['content']}\n</tool_response>",
                }
            )
        elif m.get("tool_calls"):
            calls = "\n".join(_call_text(c) for c in m["tool_calls"])
            out.append(
                {
                    "role": "assistant",
                    "content": (m["content"] + "\n" + calls) if m["content"].strip() else calls,
                }
            )
        else:
            out.append({"role": m["role"], "content": m["content"]})
    instruction = _instruction(tools, choice, fmt)
    if instruction:
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + instruction}
        else:
            out.insert(0, {"role": "system", "content": instruction})
    if tools and choice == "required":
        prefix = OPEN + '{"name": "'
    elif tools and choice not in (None, "auto", "none"):
        prefix = OPEN + json.dumps({"name": choice}, ensure_ascii=False)[:-1] + ', "arguments": {'
    elif fmt is not None:
        prefix = "{"
    else:
        prefix = ""
    return out, prefix


def check_tool_history(messages: list[dict[str, Any]]) -> None:
    """Every tool result must answer a call that an earlier assistant turn made."""
    open_ids: set[str] = set()
    made_call = False
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and m.get("tool_calls"):
            made_call = True
            open_ids |= {c.get("id") for c in m["tool_calls"] if c.get("id")}
        elif m["role"] == "tool":
            cid = m.get("tool_call_id")
            if not made_call or (cid and open_ids and cid not in open_ids):
                raise PromptError(
                    f"message {i} is a tool result (tool_call_id={cid!r}) but no earlier assistant "
                    "message made that tool call; add the assistant message with its tool_calls "
                    "before the tool result"
                )


# -- parsing -----------------------------------------------------------------------------------
def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _close_braces(raw: str) -> str:
    """Small models often close the arguments but not the call ('{"name": "f", "arguments":
    {"a": 1}' then a stray character): cut after the last closing brace and close what is open."""
    state, last = JsonEnd(), None
    for i, ch in enumerate(raw):
        if state.feed(ch) >= 0:
            return raw  # complete: nothing to repair
        if ch == "}" and not state.in_str:
            last = (i + 1, state.depth)
    return raw[: last[0]] + "}" * last[1] if last and last[1] > 0 else raw


def parse_tool_calls(
    captured: str, tools: Sequence[dict[str, Any]], finished: bool
) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """Tool calls out of the captured text (every ``<tool_call>`` block, closed or not)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    names = {t["name"] for t in tools}
    dec = json.JSONDecoder()
    for block in captured.split(OPEN)[1:]:
        raw = block.split(CLOSE, 1)[0].strip()
        cid = new_call_id()
        try:
            obj, _ = dec.raw_decode(_close_braces(raw))  # ignores whatever follows the object
        except ValueError as e:
            why = (
                "the answer ended inside the tool call (raise max_tokens)"
                if not finished
                else f"the tool call is not valid JSON: {e}"
            )
            invalid.append(InvalidToolCall(id=cid, arguments=raw, error=why))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            invalid.append(
                InvalidToolCall(
                    id=cid,
                    arguments=raw,
                    error='a tool call must be {"name": ..., "arguments": {...}}',
                )
            )
            continue
        name, args = obj["name"], call_arguments(obj)
        if name not in names:
            invalid.append(
                InvalidToolCall(
                    id=cid,
                    name=name,
                    arguments=raw,
                    error=f"unknown tool {name!r}; bound tools: {sorted(names)}",
                )
            )
        elif not isinstance(args, dict):
            invalid.append(
                InvalidToolCall(
                    id=cid,
                    name=name,
                    arguments=raw,
                    error="the tool call's arguments must be a JSON object",
                )
            )
        else:
            calls.append(ToolCall(id=cid, name=name, arguments=args))
    return calls, invalid


# -- stream filters ----------------------------------------------------------------------------
class JsonEnd:
    """Tracks one JSON object through the text; ``closed`` once its outer brace closes."""

    __slots__ = ("depth", "in_str", "esc", "closed")

    def __init__(self) -> None:
        self.depth, self.in_str, self.esc, self.closed = 0, False, False, False

    def feed(self, text: str) -> int:
        """Consume text; the index just past the closing brace, or -1 while still open."""
        for i, ch in enumerate(text):
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == '"':
                    self.in_str = False
            elif ch == '"':
                self.in_str = True
            elif ch == "{":
                self.depth += 1
            elif ch == "}" and self.depth > 0:
                self.depth -= 1
                if self.depth == 0:
                    self.closed = True
                    return i + 1
        return -1


class JsonAnswer:
    """Ends the answer where its JSON object closes (anything after it is dropped)."""

    __slots__ = ("json",)

    def __init__(self) -> None:
        self.json = JsonEnd()

    def push(self, delta: str) -> tuple[str, str | None]:
        end = self.json.feed(delta)
        return (delta, None) if end < 0 else (delta[:end], "")

    def flush(self) -> str:
        return ""


class ToolCallCapture:
    """Releases text up to a ``<tool_call>`` and captures everything from there on. Without
    ``parallel`` the answer ends when the first call's JSON object closes."""

    __slots__ = ("opening", "captured", "parallel", "json")

    def __init__(self, parallel: bool = False) -> None:
        self.opening = StopMatcher([OPEN])  # holds back a tag split across tokens
        self.captured = ""
        self.parallel = parallel
        self.json: JsonEnd | None = None

    def push(self, delta: str) -> tuple[str, str | None]:
        if self.captured:
            if self.json is not None and self.json.closed:
                return "", ""  # the call is complete; nothing more belongs to it
            return "", self._capture(delta)
        before, hit = self.opening.push(delta)
        if hit is None:
            return before, None
        self.captured = OPEN
        return before, self._capture(self.opening.after)

    def _capture(self, text: str) -> str | None:
        self.captured += text
        if self.parallel:
            return None
        if self.json is None:
            self.json = JsonEnd()
        end = self.json.feed(text)
        if end >= 0:
            self.captured = self.captured[: len(self.captured) - len(text) + end] + CLOSE
            return ""
        return None

    def flush(self) -> str:
        return self.opening.flush()
