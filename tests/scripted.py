"""A scripted model behind the backend protocol: it reads its rendered prompt and writes the answer
a rule gives for it, one token at a time, with a chosen top-1 probability, then EOS.

Random tiny models never write a tool call or a JSON object; this one does, deterministically, so
the tool, JSON and framework paths can be tested end to end through the real engine (blending,
filters, stop strings, streaming). ``oracle`` is the rule the framework suites use.
"""

from __future__ import annotations

import json
import math
import re
from typing import Callable

import torch

from blendin_llm import ModelBackend, ModelSpec, SequenceState


class ScriptedBackend(ModelBackend):
    def __init__(self, tokenizer, rule: Callable[[str], str], confidence: float = 0.9,
                 name: str = "scripted", prompt_format: str = "auto") -> None:
        self.tokenizer = tokenizer
        self.rule = rule
        self.spec = ModelSpec(source=name, name=name, prompt_format=prompt_format)
        self.width = len(tokenizer)
        self.low = math.log((1 - confidence) / (self.width - 1))
        self.high = math.log(confidence)
        self.prompts: list[str] = []

    device = property(lambda self: torch.device("cpu"))
    logits_width = property(lambda self: self.width)
    context_length = property(lambda self: 4096)
    eos_token_ids = property(lambda self: frozenset({self.tokenizer.eos_token_id}))

    def new_state(self) -> SequenceState:
        return SequenceState(cache={})

    def _reply(self, state: SequenceState) -> list[int]:
        c = state.cache
        if "reply" not in c:
            prompt = self.tokenizer.decode(state.tokens)
            self.prompts.append(prompt)
            answer = self.rule(prompt)
            # a prefill at the end of the prompt is the start of the answer: continue after it
            k = next((n for n in range(min(len(answer), len(prompt)), 0, -1)
                      if prompt.endswith(answer[:n])), 0)
            c["start"] = len(state.tokens)
            c["reply"] = self.tokenizer(answer[k:], add_special_tokens=False).input_ids + [
                self.tokenizer.eos_token_id]
        return c["reply"]

    def forward(self, state: SequenceState, ids: list[int], n_last: int = 1) -> torch.Tensor:
        state.tokens.extend(ids)
        reply = self._reply(state)
        rows = []
        for pos in range(len(state.tokens) - n_last, len(state.tokens)):
            i = min(max(pos + 1 - state.cache["start"], 0), len(reply) - 1)
            row = torch.full((self.width,), self.low)
            row[reply[i]] = self.high
            rows.append(row)
        return rows[0] if n_last == 1 else torch.stack(rows)

    def rollback(self, state: SequenceState, length: int) -> None:
        del state.tokens[length:]


# -- the rule ----------------------------------------------------------------------------------
_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)


def _fill(schema: dict, text: str) -> dict:
    numbers = re.findall(r"-?\d+", text)
    quoted = re.findall(r"'([^']+)'", text)
    out = {}
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type")
        if kind in ("integer", "number"):
            out[name] = int(numbers[0]) if numbers else 1
        elif kind == "boolean":
            out[name] = True
        else:
            out[name] = quoted[0] if quoted else f"{name} for {text[:30].strip()}"
    return out


def oracle(prompt: str) -> str:
    """Call a tool when tools are described and no result came back yet (the tool named in the
    question, else the first), answer JSON when JSON is asked for, and otherwise say hello
    (or report the tool's result)."""
    turns = _TURN.findall(prompt)
    system = "\n".join(c for r, c in turns if r == "system")
    users = [c for r, c in turns if r == "user"]
    last = users[-1] if users else prompt
    tools = []
    for line in system.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "parameters" in obj:
            tools.append(obj)
    if "<tool_response" in last:
        result = last.split(">", 1)[1].split("</tool_response>")[0].strip()
        return f"The tool says {result}."
    if tools:
        forced = re.search(r'"name": "([^"]+)", "arguments": \{$', prompt)
        named = [t for t in tools if t["name"] in last]
        tool = next((t for t in tools if forced and t["name"] == forced.group(1)),
                    named[0] if named else tools[0])
        call = {"name": tool["name"], "arguments": _fill(tool["parameters"], last)}
        return "<tool_call>" + json.dumps(call, ensure_ascii=False) + "</tool_call>"
    if "Reply with one JSON object" in system:
        schema = re.search(r"JSON schema:\n(.*)", system)
        schema = json.loads(schema.group(1)) if schema else {"properties": {"answer": {}}}
        return json.dumps(_fill(schema, last), ensure_ascii=False) + "\nThat is all."
    return "Hello! How can I help you today?"
