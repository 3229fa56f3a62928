"""ChatBlendIn without decoding: LangChain's standard unit suite, construction, and every setting
checked up front (by ``blendin_llm.options``, the rules the LlamaIndex face shares)."""

import pytest

pytest.importorskip("langchain_core")

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec
from blendin_llm.errors import ConfigError
from langchain_blendin import ChatBlendIn

from scripted import ScriptedBackend
from tiny import make_model, make_tokenizer

TOK = make_tokenizer(chat=True)
TINY = BlendedLLM(ModelSpec(model=make_model(TOK, seed=0), tokenizer=TOK, name="tiny-base"),
                  [ModelSpec(model=make_model(TOK, seed=1, hidden=48), tokenizer=TOK,
                             name="tiny-guide")])


class TestChatBlendInUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatBlendIn

    @property
    def chat_model_params(self):
        return {"llm": TINY}

    @property
    def supports_model_override(self):
        return False  # the models are loaded objects; a name cannot swap them per call


@pytest.mark.parametrize("kwargs, match", [
    ({"llm": "x"}, "llm must be a loaded BlendedLLM.*model='x'"),
    ({"llm": TINY, "model": "gemma-3-270m"}, "either llm="),
    ({"model": "a", "base": "b"}, "model= and base="),
    ({}, "needs model="),
    ({"llm": TINY, "max_tokens": -5}, "max_new_tokens must be .*got -5.*max_tokens"),
    ({"llm": TINY, "max_tokens": "many"}, "max_tokens='many'"),
    ({"llm": TINY, "max_tokens": 5.0}, "max_tokens=5.0"),
    ({"llm": TINY, "logprobs": "yes"}, "logprobs='yes': Input should be a valid boolean"),
    ({"llm": TINY, "temperature": -1}, "temperature must be .*got -1"),
    ({"llm": TINY, "top_p": 0}, "top_p must be .*got"),
    ({"llm": TINY, "top_k": -1}, "top_k must be .*got -1"),
    ({"llm": TINY, "stop": [""]}, "stop strings must not be empty"),
    ({"llm": TINY, "top_logprobs": 50}, "top_logprobs must be .*got 50"),
    ({"llm": TINY, "strategy": "bogus"}, "unknown strategy 'bogus'; choose one of"),
    ({"llm": TINY, "gamma": -0.1}, "gamma must be .*got -0.1"),
    ({"llm": TINY, "alpha": 2.0}, "alpha .*must be .*got 2.0"),
    ({"llm": TINY, "max_toks": 5}, "unknown argument max_toks=5 .*max_tokens"),
    ({"llm": BlendedLLM(TINY.base, config=BlendConfig(strategy="base_only")),
      "strategy": "blendin"}, "needs at least one guide"),
    ({"llm": TINY, "config": BlendConfig()}, "either llm="),
    ({"model": "tiny", "config": {"gamma": 0.5}}, "config must be a BlendConfig"),
])
def test_bad_construction_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        ChatBlendIn(**kwargs)
    assert type(err.value) is ConfigError


def test_settings_are_checked_before_anything_loads():
    # a source that does not exist would be a ModelLoadError; the bad setting is found first
    for bad in ({"max_tokens": 0}, {"strategy": "bogus"}, {"temperature": float("nan")}):
        with pytest.raises(ConfigError):
            ChatBlendIn(model="/nonexistent/model", **bad)


def _says(text, **kwargs):
    return ChatBlendIn(llm=BlendedLLM(ScriptedBackend(TOK, lambda p: text),
                                      config=BlendConfig(strategy="base_only")), **kwargs)


def test_an_invalid_json_schema_is_a_config_error():
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        _says("{}").with_structured_output(
            {"title": "T", "type": "object", "properties": {"a": {"type": "no-such-type"}}},
            method="json_mode")


# -- what the blend can hold ------------------------------------------------------------------
def test_profile_reports_the_smallest_context_window_of_the_blend():
    guide = make_model(TOK, seed=1, hidden=48)
    guide.config.max_position_embeddings = 128  # the guide holds less than the base (256)
    blend = BlendedLLM(ModelSpec(model=TINY.base.model, tokenizer=TOK, name="b"),
                       [ModelSpec(model=guide, tokenizer=TOK, name="g")])
    assert blend.context_window == 128
    assert ChatBlendIn(llm=blend).profile["max_input_tokens"] == 128


@pytest.mark.parametrize("kwargs, match", [
    ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
    ({"frequency_penalty": 2.5}, r"frequency_penalty must be a number in \[-2, 2\]"),
    ({"presence_penalty": -3.0}, r"presence_penalty must be a number in \[-2, 2\]"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be an integer >= 0"),
    ({"no_repeat_ngram_size": 2.0}, "no_repeat_ngram_size=2.0"),
])
def test_bad_penalties_are_config_errors_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ChatBlendIn(llm=TINY, **kwargs)


def test_every_own_field_is_documented():
    own = set(ChatBlendIn.model_fields) - set(BaseChatModel.model_fields)
    assert own >= {"llm", "model", "max_tokens", "stop", "seed", "top_k", "streaming"}
    undocumented = sorted(n for n in own if not (ChatBlendIn.model_fields[n].description or "").strip())
    assert undocumented == []


def test_call_options_follow_the_shared_rule():
    chat = ChatBlendIn(llm=TINY, max_tokens=40, stop=["a", "b"], seed=3, top_k=5, gamma=0.5)
    opts = chat._opts(["b", "c"], {"seed": 9, "max_tokens": 7, "stream": True,
                                   "ls_structured_output_format": {}})
    # stop merged (model's first, each once); every other call argument replaces the setting
    assert opts["stop"] == ["a", "b", "c"]
    assert (opts["seed"], opts["top_k"], opts["max_new_tokens"], opts["gamma"]) == (9, 5, 7, 0.5)
    assert "max_tokens" not in opts and "stream" not in opts and "ls_structured_output_format" not in opts
    assert chat._get_ls_params(stop=["c"])["ls_stop"] == ["a", "b", "c"]
