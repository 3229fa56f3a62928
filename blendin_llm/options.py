"""One mapping from a framework face's settings and a call's arguments to ``BlendedLLM.stream``'s
keyword arguments, and one way to build (or share) the engine behind a face.

The LangChain face (``langchain_blendin.ChatBlendIn``) and the LlamaIndex face
(``llama_index.llms.blendin.BlendIn``) both call these functions, so an option means the same in
both and neither keeps its own copy of the mapping. The rules:

- Names: a face may spell an option the way its framework does; ``max_tokens`` (OpenAI's and
  LangChain's name) is the engine's ``max_new_tokens``. Every other name is the engine's.
- Fields set to None are left out: the engine's default applies.
- A call's argument replaces the field of the same name (``temperature``, ``seed``, ``top_k``,
  ``max_tokens``, the penalties, ``strategy``/``gamma``/``alpha``, ``logprobs``, ...).
- ``stop`` is the exception: it is **merged**. The answer stops at the model's own stop strings
  (its ``stop`` field) and at the call's, field strings first, each string once. A call cannot
  drop a model's stop strings; make a model without them for that.
- Arguments the engine does not know are passed on, and the engine raises a typed error naming
  them (``ConfigError: unknown option(s) [...]``); nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import BlendConfig, SamplingParams
from .errors import ConfigError, GenerationArgumentError

if TYPE_CHECKING:
    from .llm import BlendedLLM

# a framework's name for an engine option -> the engine's name
ENGINE_NAMES: Mapping[str, str] = {"max_tokens": "max_new_tokens"}
# the per-model settings a face may have as fields, in a face's spelling (either name of a
# renamed option); a face passes the ones it has to ``call_options`` and ``build_llm``
OPTION_NAMES: tuple[str, ...] = (
    "max_tokens",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "logprobs",
    "top_logprobs",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "no_repeat_ngram_size",
    "strategy",
    "gamma",
    "alpha",
)
# the BlendConfig fields a face may override per model (and a call per call)
_BLEND_NAMES = frozenset(BlendConfig.model_fields)


def describe(name: str, note: str = "") -> str:
    """The description of an engine setting, from the field that checks it (``SamplingParams`` or
    ``BlendConfig``), so a face documents its fields in the engine's words.

    Args:
        name: the engine's name of the setting (``temperature``, ``gamma``, ...).
        note: what the face adds (e.g. what None means there).

    Returns:
        The field's description, one line, then the note.
    """
    field = SamplingParams.model_fields.get(name) or BlendConfig.model_fields.get(name)
    if field is None or not field.description:
        raise KeyError(f"no engine setting {name!r}")
    text = " ".join(field.description.split())
    return f"{text} {note}".strip()


def merge_stops(*stops: str | Sequence[str] | None) -> list[str] | None:
    """Stop strings from several places as one list: in order, each string once.

    Args:
        *stops: None, one string, or a list of strings each (e.g. a field's, then a call's).

    Returns:
        The strings, or None when there are none.

    Raises:
        GenerationArgumentError: a value that is not a string or a list of strings.
    """
    out: list[str] = []
    for s in stops:
        if s is None:
            continue
        items = [s] if isinstance(s, str) else s
        if not isinstance(items, (list, tuple)):
            raise GenerationArgumentError(f"stop must be a string or a list of strings, got {s!r}")
        out += [x for x in items if x not in out]
    return out or None


def call_options(
    fields: Mapping[str, Any], stop: str | Sequence[str] | None = None, **call: Any
) -> dict[str, Any]:
    """``BlendedLLM.stream`` keyword arguments for one call of a face.

    Args:
        fields: the face's settings (names from ``OPTION_NAMES``; None = the engine's default).
        stop: the call's stop strings, merged with ``fields["stop"]`` (field strings first).
        **call: the call's other arguments; each replaces the field of the same name. Unknown
            names are passed on for the engine to reject by name.

    Returns:
        The keyword arguments, in the engine's names.
    """
    opts: dict[str, Any] = {}
    for name, value in fields.items():
        if value is not None and name != "stop":
            opts[ENGINE_NAMES.get(name, name)] = value
    for name, value in call.items():
        opts[ENGINE_NAMES.get(name, name)] = value
    opts["stop"] = merge_stops(fields.get("stop"), stop)
    return opts


def blend_overrides(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The settings among ``fields`` that replace fields of the engine's ``BlendConfig``
    (``strategy``, ``gamma``, ``alpha``, ...), without the unset (None) ones."""
    return {k: v for k, v in fields.items() if k in _BLEND_NAMES and v is not None}


def check_settings(
    fields: Mapping[str, Any], owner: str, config: BlendConfig | None = None
) -> BlendConfig:
    """Checks a face's settings by the engine's own rules, before any model is loaded.

    Args:
        fields: the face's settings, as for ``call_options``.
        owner: the face's class name, for the messages ("ChatBlendIn").
        config: the BlendConfig the settings override (default: ``BlendConfig()``).

    Returns:
        ``config`` with the settings' ``strategy``/``gamma``/``alpha`` (``blend_overrides``).

    Raises:
        ConfigError: a bad value, saying what is allowed (and, for a renamed option, the face's
            name of it).
    """
    opts = call_options(fields)
    sampling = set(SamplingParams.model_fields)
    kwargs = {k: v for k, v in opts.items() if k in sampling}
    kwargs["stop"] = opts["stop"] or ()
    kwargs["logprobs"] = (
        opts.get("top_logprobs", 0) if opts.get("logprobs") or opts.get("top_logprobs") else None
    )
    try:
        SamplingParams(**kwargs)
    except GenerationArgumentError as e:
        names = "".join(
            f" ({owner}'s {face} is the engine's {core})"
            for face, core in ENGINE_NAMES.items()
            if face in fields and core in str(e)
        )
        raise ConfigError(f"{owner}: {e}{names}") from None
    config = BlendConfig() if config is None else config
    return config.replace(**blend_overrides(fields))  # ConfigError for a bad value


def build_llm(
    fields: Mapping[str, Any],
    *,
    owner: str,
    llm: Any = None,
    model: Any = None,
    base: Any = None,
    guides: Any = None,
    config: Any = None,
) -> BlendedLLM:
    """The engine behind a face: ``llm`` (a loaded ``BlendedLLM``, shared), or one loaded from
    ``model`` (or ``base``), ``guides`` and ``config``. Every setting is checked first, so a bad
    one fails before anything loads.

    Args:
        fields: the face's settings, as for ``call_options``; its ``strategy``/``gamma``/
            ``alpha`` become the loaded engine's config, and must suit a shared one.
        owner: the face's class name, for the messages.
        llm: a loaded engine to share (then none of the others).
        model: the base model (a preset name, a directory, a ``.gguf`` file, a hub id, a
            ``ModelSpec`` or a ``(model, tokenizer)`` pair); ``base`` is the same.
        guides: the guide model(s) for ``model``; None = the default guide, [] = none.
        config: the ``BlendConfig`` of the engine built from ``model``.

    Returns:
        The engine.

    Raises:
        ConfigError: conflicting or missing sources, a bad setting, or settings the engine cannot
            run (e.g. a strategy that needs a guide, on an engine without one).
    """
    from .llm import BlendedLLM
    from .sources import DEFAULT_GUIDE

    if llm is not None:
        if not isinstance(llm, BlendedLLM):
            hint = f"; to load a model by name use model={llm!r}" if isinstance(llm, str) else ""
            raise ConfigError(f"llm must be a loaded BlendedLLM, got {type(llm).__name__}{hint}")
        given = [
            n
            for n, v in (("model", model), ("base", base), ("guides", guides), ("config", config))
            if v is not None
        ]
        if given:
            raise ConfigError(
                f"pass either llm= (a loaded engine) or model=/guides=/config= "
                f"(an engine to load), not both; got llm= and {', '.join(given)}="
            )
        check_settings(fields, owner, llm.config)
    else:
        if model is not None and base is not None:
            raise ConfigError("model= and base= both name the base model; pass one")
        if model is None and base is None:
            raise ConfigError(
                f"{owner} needs model= (the base: a preset such as "
                "'gemma-3-270m', a directory, a .gguf file, a hub id) or "
                "llm=BlendedLLM(...)"
            )
        if config is not None and not isinstance(config, BlendConfig):
            raise ConfigError(f"config must be a BlendConfig, got {type(config).__name__}")
        # the engine it builds has this face's strategy, gamma and alpha
        llm = BlendedLLM(
            model if model is not None else base,
            [DEFAULT_GUIDE] if guides is None else guides,
            check_settings(fields, owner, config),
        )
    llm.check_options(**blend_overrides(fields))  # e.g. a strategy that needs a guide
    return llm
