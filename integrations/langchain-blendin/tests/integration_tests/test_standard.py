"""LangChain's standard integration suite (langchain-tests) on the face: random tiny models for
decoding, streaming, async, usage and stop strings; the scripted pair for tools and structured
output. Everything runs in process (no service to reach)."""

from langchain_tests.integration_tests import ChatModelIntegrationTests
from models import SCRIPTED, TINY

from langchain_blendin import ChatBlendIn


class TestChatBlendInTinyModels(ChatModelIntegrationTests):
    """Random tiny models: decoding, blending, streaming, async, usage, stop strings. They cannot
    call tools or write JSON; TestChatBlendInScripted covers those."""

    @property
    def chat_model_class(self):
        return ChatBlendIn

    @property
    def chat_model_params(self):
        return {"llm": TINY}

    @property
    def supports_model_override(self):
        return False

    @property
    def has_tool_calling(self):
        return False

    @property
    def has_structured_output(self):
        return False


class TestChatBlendInScripted(ChatModelIntegrationTests):
    """A scripted pair that follows instructions (tests/scripted.py): tool calls, tool choice,
    tool histories, structured output, JSON mode, agent loop, through the real engine."""

    @property
    def chat_model_class(self):
        return ChatBlendIn

    @property
    def chat_model_params(self):
        return {"llm": SCRIPTED}

    @property
    def supports_model_override(self):
        return False

    @property
    def supports_json_mode(self):
        return True
