"""blendin-llm: a small aligned guide model steers a larger base model at inference time (BlendIn),
and every answer comes with a reliability record."""

from .backends import ModelBackend, SequenceState, TransformersBackend
from .config import BlendConfig, MitigationConfig, ModelSpec, ReliabilityConfig, SamplingParams
from .errors import (
    BlendInError,
    ConfigError,
    GenerationArgumentError,
    IncompatibleModelsError,
    LowReliabilityError,
    ModelLoadError,
    PromptError,
)
from .llm import BlendedLLM, load_backend
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
from .tools import InvalidToolCall, ToolCall
from .strategies import Strategy, StepView, available_strategies, register_strategy

__version__ = "0.1.0"

__all__ = [
    "BlendedLLM", "BlendConfig", "MitigationConfig", "ModelSpec", "ReliabilityConfig", "SamplingParams",
    "BlendResult", "Reliability", "GuideStats", "StreamEvent", "TraceEntry", "Usage",
    "Strategy", "StepView", "available_strategies", "register_strategy",
    "ModelBackend", "SequenceState", "TransformersBackend", "load_backend",
    "BlendInError", "ConfigError", "GenerationArgumentError", "IncompatibleModelsError",
    "ModelLoadError", "PromptError", "LowReliabilityError", "check_reliability", "ToolCall",
    "InvalidToolCall", "TokenLogprob", "__version__",
]
