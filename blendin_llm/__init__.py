"""blendin-llm: a small aligned guide model steers a larger base model at inference time (BlendIn),
and every answer comes with a reliability record.

The errors and the configuration classes are imported at once; everything that needs torch or
transformers (``BlendedLLM``, the backends, the strategies, the result models) is imported on first
use through the module ``__getattr__`` below, so ``import blendin_llm`` and ``blendin --help`` take
a fraction of a second instead of the seconds torch and transformers need to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import BlendConfig, MitigationConfig, ModelSpec, ReliabilityConfig, SamplingParams
from .errors import (
    AuditError,
    BlendInError,
    BusyError,
    ConfigError,
    GenerationArgumentError,
    IncompatibleModelsError,
    LowReliabilityError,
    ModelLoadError,
    PromptError,
    RemoteModelError,
    RemoteTimeoutError,
)

__version__ = "0.1.0"

# public name -> the submodule that defines it (imported on first access)
_LAZY = {
    "ModelBackend": ".backends",
    "SequenceState": ".backends",
    "TransformersBackend": ".backends",
    "RemoteModel": ".backends.remote",
    "RawPrompt": ".prompts",
    "BlendedLLM": ".llm",
    "load_backend": ".llm",
    "AuditLog": ".audit",
    "AuditRecord": ".audit",
    "VerifyReport": ".audit",
    "make_entry": ".audit",
    "check_reliability": ".reliability",
    "BlendResult": ".results",
    "GuideStats": ".results",
    "Reliability": ".results",
    "StreamEvent": ".results",
    "TokenLogprob": ".results",
    "TraceEntry": ".results",
    "Usage": ".results",
    "InvalidToolCall": ".tools",
    "ToolCall": ".tools",
    "Strategy": ".strategies",
    "StepView": ".strategies",
    "available_strategies": ".strategies",
    "register_strategy": ".strategies",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the lazy names, as if imported here
    from .audit import AuditLog, AuditRecord, VerifyReport, make_entry
    from .backends import ModelBackend, SequenceState, TransformersBackend
    from .backends.remote import RemoteModel
    from .llm import BlendedLLM, load_backend
    from .prompts import RawPrompt
    from .reliability import check_reliability
    from .results import (
        BlendResult,
        GuideStats,
        Reliability,
        StreamEvent,
        TokenLogprob,
        TraceEntry,
        Usage,
    )
    from .strategies import StepView, Strategy, available_strategies, register_strategy
    from .tools import InvalidToolCall, ToolCall


def __getattr__(name: str) -> Any:
    """Import a heavy public name on first access (PEP 562) and keep it in the module."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BlendedLLM",
    "BlendConfig",
    "MitigationConfig",
    "ModelSpec",
    "ReliabilityConfig",
    "SamplingParams",
    "BlendResult",
    "Reliability",
    "GuideStats",
    "StreamEvent",
    "TraceEntry",
    "Usage",
    "Strategy",
    "StepView",
    "available_strategies",
    "register_strategy",
    "ModelBackend",
    "SequenceState",
    "TransformersBackend",
    "RemoteModel",
    "RawPrompt",
    "load_backend",
    "RemoteModelError",
    "RemoteTimeoutError",
    "AuditError",
    "BlendInError",
    "BusyError",
    "ConfigError",
    "GenerationArgumentError",
    "IncompatibleModelsError",
    "ModelLoadError",
    "PromptError",
    "LowReliabilityError",
    "check_reliability",
    "ToolCall",
    "InvalidToolCall",
    "TokenLogprob",
    "AuditLog",
    "AuditRecord",
    "VerifyReport",
    "make_entry",
    "__version__",
]
