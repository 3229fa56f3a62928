"""Typed errors. Every error says what to do about it; none leaves a BlendedLLM unusable."""

from __future__ import annotations


class BlendInError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(BlendInError, ValueError):
    """A configuration value is out of range or inconsistent (gamma, alpha, strategy, ...)."""


class PromptError(BlendInError, ValueError):
    """The prompt or the messages cannot be rendered or do not fit the model."""


class GenerationArgumentError(BlendInError, ValueError):
    """A per-call argument (max_new_tokens, stop strings, sampling) is invalid."""


class BusyError(BlendInError, TimeoutError):
    """A call waited longer than ``BlendedLLM(lock_timeout=...)``: for a row in the running batch
    (``max_batch_size`` calls were decoding and it was still queued), for its next token, or for
    the models while encoding its prompt. Retry, send fewer calls at a time, raise
    ``max_batch_size``, or raise ``lock_timeout``."""


class ModelLoadError(BlendInError, RuntimeError):
    """A model or tokenizer could not be loaded from the given source."""


class IncompatibleModelsError(BlendInError, ValueError):
    """Base and guide cannot be blended as given (different vocabularies, different devices)."""


class LowReliabilityError(BlendInError):
    """An answer's reliability record is flagged (or its score is below a required minimum).

    Raised on request, by ``check_reliability`` and the framework gates built on it, so that a
    chain can fall back (``.with_fallbacks``) or route the answer to review. ``reliability`` holds
    the record (a dict) and ``answer`` the text that was judged."""

    def __init__(self, message: str, reliability: dict, answer: str | None = None) -> None:
        super().__init__(message)
        self.reliability = reliability
        self.answer = answer


class DatasetError(BlendInError, ValueError):
    """An evaluation data set cannot be read: missing file, unknown format, no usable item."""


class EvalError(BlendInError, RuntimeError):
    """An evaluation run cannot proceed as asked (output not writable, mismatched resume, ...)."""


class AuditError(BlendInError, RuntimeError):
    """The audit log cannot do what was asked: its database is unreachable or not writable, a
    record id is appended twice, or the log was written by a newer version. The message says what
    to do; the ``AuditLog`` stays usable (a lost connection is opened again on the next call)."""


class RemoteModelError(BlendInError, RuntimeError):
    """A remote model's server (``RemoteModel``: vLLM, SGLang, ``blendin serve``, ...) could not
    give what was asked: it is unreachable, refused the request, kept failing after the retries,
    or answers without the top-k log-probs blending needs. ``status`` is the HTTP status, when
    there was one. The message says what to change (a server flag, the URL, the model name)."""

    retry_after: float | None = None  # seconds a 429/5xx answer asked to wait (Retry-After)

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteTimeoutError(RemoteModelError, TimeoutError):
    """A remote model's server did not answer within ``RemoteModel(timeout=...)``, retries
    included."""


def settings_error(owner: str, errors: list[dict], arguments: str) -> ConfigError:
    """A pydantic validation error on a framework face's constructor, as a ``ConfigError`` that
    names each bad or unknown argument; ``arguments`` lists the accepted ones for the hint shown
    when an argument is unknown. Used by both faces, so they word the same mistake the same way.

    Args:
        owner: the class being built, e.g. "ChatBlendIn".
        errors: ``ValidationError.errors()``.
        arguments: what the class accepts, shown after an unknown argument.

    Returns:
        The ConfigError to raise.
    """
    parts = []
    for err in errors:
        field = ".".join(str(x) for x in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown argument {field}={err['input']!r}")
        else:
            parts.append(f"{field}={err['input']!r}: {err['msg']}")
    msg = f"{owner}: {'; '.join(parts)}"
    if any(err["type"] == "extra_forbidden" for err in errors):
        msg += f" (its arguments: {arguments})"
    return ConfigError(msg)
