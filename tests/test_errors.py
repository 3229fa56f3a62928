"""Every bad input gets a typed error that says what to do, and the object stays usable."""

import os

import pytest

from blendin_llm import (
    BlendConfig,
    BlendedLLM,
    ConfigError,
    GenerationArgumentError,
    IncompatibleModelsError,
    ModelLoadError,
    ModelSpec,
    PromptError,
    ReliabilityConfig,
)

from tiny import make_model, make_tokenizer

PROMPT = "User: hello there\nAssistant:"


@pytest.fixture
def llm_and_reference(make_llm):
    llm = make_llm(gamma=0.4)
    return llm, llm.generate(PROMPT, max_new_tokens=10)


@pytest.mark.parametrize(
    "prompt, kwargs, error, words",
    [
        ("", {}, PromptError, "empty"),
        ("   \n", {}, PromptError, "empty"),
        ([], {}, PromptError, "at least one user message"),
        ([{"role": "robot", "content": "x"}], {}, PromptError, "supported roles"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], {}, PromptError, "text"),
        ([{"role": "user"}], {}, PromptError, "'role'"),
        (42, {}, PromptError, "string or a list"),
        ("word " * 400, {}, PromptError, "shorten the prompt"),
        (PROMPT, {"max_new_tokens": 0}, GenerationArgumentError, ">= 1"),
        (PROMPT, {"max_new_tokens": 2.5}, GenerationArgumentError, "integer"),
        (PROMPT, {"stop": [""]}, GenerationArgumentError, "must not be empty"),
        (PROMPT, {"stop": ""}, GenerationArgumentError, "must not be empty"),
        (PROMPT, {"temperature": -1}, GenerationArgumentError, ">= 0"),
        (PROMPT, {"top_p": 0}, GenerationArgumentError, "(0, 1]"),
        (PROMPT, {"top_k": -3}, GenerationArgumentError, ">= 0"),
        (PROMPT, {"seed": "abc"}, GenerationArgumentError, "seed"),
        (PROMPT, {"gamma": -0.1}, ConfigError, "gamma"),
        (PROMPT, {"gamma": float("nan")}, ConfigError, "gamma"),
        (PROMPT, {"alpha": 1.5}, ConfigError, "[0, 1]"),
        (PROMPT, {"alpha": "sometimes"}, ConfigError, "auto"),
        (PROMPT, {"strategy": "magic"}, ConfigError, "blendin"),
        (PROMPT, {"temprature": 0.5}, ConfigError, "unknown option"),
    ],
)
def test_bad_call_arguments(llm_and_reference, prompt, kwargs, error, words):
    llm, ref = llm_and_reference
    with pytest.raises(error) as info:
        llm.generate(prompt, **kwargs)
    assert words in str(info.value)
    with pytest.raises(error):  # stream() checks its arguments before returning
        llm.stream(prompt, **kwargs)
    again = llm.generate(PROMPT, max_new_tokens=10)
    assert again.token_ids == ref.token_ids and again.reliability == ref.reliability


def test_errors_are_value_errors_too():
    assert issubclass(ConfigError, ValueError) and issubclass(PromptError, ValueError)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(gamma=-1), "gamma"),
        (dict(alpha=-0.5), "alpha"),
        (dict(strategy="nope"), "choose one of"),
        (dict(agreement_top_k=0), "agreement_top_k"),
    ],
)
def test_bad_config(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        BlendConfig(**kwargs)


def test_bad_reliability_config():
    with pytest.raises(ConfigError, match="max_intervention_rate"):
        ReliabilityConfig(max_intervention_rate=2)
    with pytest.raises(ConfigError, match="weights"):
        ReliabilityConfig(weights=(1, -1, 0))


def test_strategy_needing_a_guide_without_one(base_model, tok):
    spec = ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw")
    with pytest.raises(ConfigError, match="needs at least one guide"):
        BlendedLLM(spec)
    llm = BlendedLLM(spec, config=BlendConfig(strategy="base_only"))
    with pytest.raises(ConfigError, match="needs at least one guide"):
        llm.generate(PROMPT, strategy="nudging")
    assert llm.generate(PROMPT, max_new_tokens=3).usage.completion_tokens == 3


def test_guide_with_another_vocabulary_is_blended_across_vocabularies(base_model, tok):
    other_tok = make_tokenizer(vocab_size=300)
    other = make_model(other_tok, seed=5)
    llm = BlendedLLM((base_model, tok), [(other, other_tok)])
    assert llm.vocab_maps[0] is not None
    with pytest.raises(ConfigError, match="cross_vocab"):
        BlendedLLM((base_model, tok), [(other, other_tok)], cross_vocab="sometimes")


def test_guide_on_another_device_is_rejected(tok):
    base = make_model(tok, seed=0)
    guide = make_model(tok, seed=1).to("meta")
    with pytest.raises(IncompatibleModelsError, match="same device"):
        BlendedLLM((base, tok), [(guide, tok)])


def test_missing_model_gives_a_load_error(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="^no such directory: .*existing checkpoint directory"):
        BlendedLLM(str(tmp_path / "no-such-model"), config=BlendConfig(strategy="base_only"))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(source=""), "non-empty"),
        (dict(source="x", prompt_format="fancy"), "prompt_format"),
        (dict(source="x", dtype="int3"), "dtype"),
        (dict(model=object()), "both model and tokenizer"),
    ],
)
def test_bad_model_spec(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        ModelSpec(**kwargs)


def test_chat_format_without_template(base_model, tok):
    llm = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, prompt_format="chat"),
                     config=BlendConfig(strategy="base_only"))
    with pytest.raises(PromptError, match="no chat template"):
        llm.generate("hi")
