"""Turning a prompt (a string or chat messages) into each model's own prompt text.

Every model renders the conversation its own way: a chat template where its tokenizer has one
(typical of guides), plain ``User: ...\\nAssistant:`` turns for base models, or the raw string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .config import ModelSpec
from .errors import PromptError
from .text import lone_surrogate
from .tools import call_arguments

Message = dict[str, Any]


class RawPrompt:
    """A prompt every model continues as it is, with no chat template or turns: what
    OpenAI-compatible ``/v1/completions`` servers do. ``text`` is encoded by each model's tokenizer
    (with its own special tokens, e.g. BOS); ``ids`` are the base's token ids, fed as they are
    (guides that share the base's vocabulary get the same ids, the others the decoded text). The
    answer is the continuation: no turn stops, no tools.

    Args:
        text: the prompt text (or give ``ids``).
        ids: the prompt as the base's token ids.
    """

    __slots__ = ("text", "ids")

    def __init__(self, text: str | None = None, ids: Sequence[int] | None = None) -> None:
        if (text is None) == (ids is None):
            raise PromptError("RawPrompt takes text= or ids=, one of them")
        if text is not None:
            if not isinstance(text, str) or not text:
                raise PromptError("a raw prompt's text must be a non-empty string")
            _check_text(text, "the prompt")
        else:
            if (
                isinstance(ids, (str, bytes))
                or not isinstance(ids, Sequence)
                or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
            ):
                raise PromptError(
                    "a raw prompt's ids must be a non-empty list of token ids (integers >= 0)"
                )
            ids = list(ids)
        self.text, self.ids = text, ids

    def __repr__(self) -> str:
        return (
            f"RawPrompt(text={self.text!r})"
            if self.ids is None
            else f"RawPrompt(ids=<{len(self.ids)} ids>)"
        )

    def as_record(self) -> str | list[int]:
        """What an audit record keeps of it."""
        if self.ids is not None:
            return list(self.ids)
        assert self.text is not None  # one of the two is given
        return self.text


PromptLike = str | RawPrompt | Sequence[Mapping[str, Any] | tuple[str, str]]

_ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"human": "user", "ai": "assistant"}


def _tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
        raise PromptError(f"message {i}: tool_calls must be a list of calls")
    out = []
    for c in calls:
        fn = c.get("function", c) if isinstance(c, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise PromptError(
                f"message {i}: each tool call must be {{'id': ..., 'name': ..., 'arguments': {{...}}}}"
                f" or OpenAI's {{'id': ..., 'function': {{'name': ..., 'arguments': '...'}}}}, got {c!r}"
            )
        out.append({"id": c.get("id"), "name": fn["name"], "arguments": call_arguments(fn)})
    return out


def _check_text(text: str, where: str) -> None:
    """Text every tokenizer can encode: no lone surrogate (half of a UTF-16 pair)."""
    at = lone_surrogate(text)
    if at is not None:
        raise PromptError(
            f"{where} has a lone surrogate {text[at]!r} at character {at}, which is not valid "
            "Unicode text and cannot be encoded; remove it, or decode the input with "
            "errors='replace'"
        )


def normalize_messages(prompt: PromptLike) -> list[Message]:
    """Validate a prompt and return it as ``[{"role": ..., "content": ...}, ...]``.

    Besides system/user/assistant turns, a conversation may carry tool use: assistant messages with
    ``tool_calls`` (their content may then be empty or None) and ``tool`` messages with the
    results (``tool_call_id``, optional ``name``)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty; pass some text or at least one user message")
        _check_text(prompt, "the prompt")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        raise PromptError(
            f"prompt must be a string or a list of messages, got {type(prompt).__name__}"
        )
    if len(prompt) == 0:
        raise PromptError("the message list is empty; add at least one user message")
    out: list[Message] = []
    for i, m in enumerate(prompt):
        if isinstance(m, tuple) and len(m) == 2:
            m = {"role": m[0], "content": m[1]}
        elif not (isinstance(m, Mapping) and "role" in m and ("content" in m or "tool_calls" in m)):
            raise PromptError(
                f"message {i} must be a {{'role': ..., 'content': ...}} dict or a (role, content) "
                f"tuple, got {m!r}"
            )
        role = m["role"]
        if not isinstance(role, str):
            raise PromptError(
                f"message {i} has a role of type {type(role).__name__}; a role is a string, one "
                f"of {', '.join(_ROLES)}"
            )
        role = _ROLE_ALIASES.get(role, role)
        if role not in _ROLES:
            raise PromptError(
                f"message {i} has role {role!r}; supported roles are {', '.join(_ROLES)}"
            )
        content = m.get("content")
        calls = m.get("tool_calls") if role == "assistant" else None
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise PromptError(
                f"message {i} content must be text (str), got {type(content).__name__}; "
                "images and other content parts are not supported"
            )
        _check_text(content, f"message {i} content")
        msg: Message = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = _tool_calls(calls, i)
        if role == "tool":
            msg["tool_call_id"] = m.get("tool_call_id")
            msg["name"] = m.get("name")
        out.append(msg)
    if not any(m["content"].strip() or m.get("tool_calls") for m in out if m["role"] != "system"):
        raise PromptError("the messages have no non-empty user or assistant content")
    return out


def resolved_format(spec: ModelSpec, tokenizer: Any) -> str:
    if spec.prompt_format != "auto":
        return spec.prompt_format
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


def turn_stops(spec: ModelSpec, tokenizer: Any) -> tuple[str, ...]:
    """Stop strings that end an answer where a plain-format model starts the next user turn."""
    if resolved_format(spec, tokenizer) != "plain" or not spec.user_prefix.strip():
        return ()
    return (spec.turn_separator + spec.user_prefix.rstrip(),)


def render_prompt(
    messages: list[Message], spec: ModelSpec, tokenizer: Any, answer_prefix: str = ""
) -> tuple[str, bool]:
    """Return (prompt text, whether the tokenizer should add its special tokens). The answer
    starts with ``answer_prefix`` (a prefill), which the model continues."""
    fmt = resolved_format(spec, tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if spec.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": spec.system_prompt}, *messages]

    if fmt == "raw":
        return "\n".join(m["content"] for m in messages) + answer_prefix, True
    if fmt == "chat":
        if not has_template:
            raise PromptError(
                f"model {spec.name or spec.source!r} has no chat template; use "
                "prompt_format='plain' (or 'raw') in its ModelSpec"
            )
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + answer_prefix, False
    # plain turns for base models
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(spec.system_prefix + m["content"])
        elif m["role"] == "user":
            parts.append(spec.user_prefix + m["content"])
        else:
            parts.append(f"{spec.assistant_prefix} {m['content']}")
    parts.append(spec.assistant_prefix + (" " + answer_prefix if answer_prefix else ""))
    return spec.turn_separator.join(parts), True
