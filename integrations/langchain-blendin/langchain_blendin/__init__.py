"""LangChain face of blendin-llm: ``ChatBlendIn`` (a chat model) and ``reliability_gate``."""

from blendin_llm.errors import LowReliabilityError

from .chat_models import ChatBlendIn, reliability_gate, to_core_messages

__all__ = ["ChatBlendIn", "reliability_gate", "LowReliabilityError", "to_core_messages"]
