"""One mapping from a framework face's settings and a call's arguments to ``BlendedLLM.stream``'s
keyword arguments, shared by the LangChain and LlamaIndex faces so that the same option means the
same thing in both.

The rules:

- a setting left at None is the engine's default; every other setting is passed on;
- a call's argument replaces the setting of the same name, except ``stop``: a call's stop strings
  are added to the ones set on the model (stop strings configured once always apply, as in
  LangChain's ``bind(stop=...)`` and OpenAI's API);
- ``max_tokens`` (OpenAI's and both frameworks' name) is the engine's ``max_new_tokens``;
- the blend's settings (``strategy``, ``gamma``, ``alpha``) go to the call's config overrides;
- anything else a call passes goes to the engine, which refuses an unknown name with a typed error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .config import SamplingParams

RENAMED = {"max_tokens": "max_new_tokens"}
SAMPLING = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "logprobs", "top_logprobs",
            "repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram_size")
BLEND = ("strategy", "gamma", "alpha")


def call_options(settings: Mapping[str, Any], call: Mapping[str, Any] | None = None,
                 ignore: Iterable[str] = ()) -> dict[str, Any]:
    """``BlendedLLM.stream`` keyword arguments for a face's ``settings`` and a ``call``.

    Args:
        settings: the face's fields by name (OpenAI-style ``max_tokens`` accepted), None meaning
            the engine's default.
        call: one call's keyword arguments (``stop`` among them).
        ignore: call arguments the framework passes that mean nothing to the engine.

    Returns:
        The keyword arguments, with ``stop`` the model's stop strings followed by the call's.
    """
    opts: dict[str, Any] = {}
    for name, value in settings.items():
        name = RENAMED.get(name, name)
        if value is not None and (name in SAMPLING or name in BLEND or name == "stop"):
            opts[name] = value
    stop = list(opts.pop("stop", None) or [])
    skip = set(ignore)
    for name, value in (call or {}).items():
        if name in skip:
            continue
        if name == "stop":
            stop += [value] if isinstance(value, str) else list(value or [])
        else:
            opts[RENAMED.get(name, name)] = value
    opts["stop"] = list(dict.fromkeys(stop))
    return opts


def check_options(opts: Mapping[str, Any]) -> SamplingParams:
    """The ``SamplingParams`` of ``call_options``'s result: checks the sampling options now (a
    face's constructor), raising ``GenerationArgumentError`` for a bad value."""
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    kwargs = {k: v for k, v in opts.items() if k in names}
    kwargs["stop"] = tuple(opts.get("stop") or ())
    kwargs["logprobs"] = (opts.get("top_logprobs") or 0) if opts.get("logprobs") or \
        opts.get("top_logprobs") else None
    return SamplingParams(**kwargs)
