"""LlamaIndex face of blendin-llm: the ``BlendIn`` LLM and reliability for query engines."""

from blendin_llm.errors import LowReliabilityError

from .base import (
    BlendIn,
    BlendInReliabilityEvent,
    ReliableQueryEngine,
    to_core_messages,
    with_reliability,
)

__all__ = [
    "BlendIn",
    "BlendInReliabilityEvent",
    "ReliableQueryEngine",
    "with_reliability",
    "LowReliabilityError",
    "to_core_messages",
]
