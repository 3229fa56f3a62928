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
        (PROMPT, {"temperature": -1}, GenerationArgumentError, "[0, 2]"),
        (PROMPT, {"top_p": 0}, GenerationArgumentError, "(0, 1]"),
        (PROMPT, {"top_k": -3}, GenerationArgumentError, ">= 0"),
        (PROMPT, {"seed": "abc"}, GenerationArgumentError, "seed"),
        (PROMPT, {"gamma": -0.1}, ConfigError, "gamma"),
        (PROMPT, {"gamma": float("nan")}, ConfigError, "gamma"),
        (PROMPT, {"alpha": 1.5}, ConfigError, "[0, 1]"),
        (PROMPT, {"alpha": "sometimes"}, ConfigError, "auto"),
        (PROMPT, {"strategy": "magic"}, ConfigError, "blendin"),
        (PROMPT, {"temprature": 0.5}, ConfigError, "unknown option"),
        # lone surrogates (json.loads('"\\ud800"') makes them) are typed errors, not TypeErrors
        ("a\ud800b", {}, PromptError, "character 1"),
        ([{"role": "user", "content": "ok"}, {"role": "assistant", "content": "x\udc00"}], {},
         PromptError, "message 1 content has a lone surrogate"),
        ([("system", "\udfff"), ("user", "hi")], {}, PromptError, "message 0 content"),
        (PROMPT, {"stop": ["ok", "\ud800"]}, GenerationArgumentError, "stop string 1"),
        (PROMPT, {"tools": [{"type": "function", "function": {
            "name": "f", "description": "d\ud800", "parameters": {"type": "object"}}}]},
         PromptError, "lone surrogate"),
        # a role must be a string
        ([{"role": ["user"], "content": "x"}], {}, PromptError, "role of type list"),
        ([{"role": {"r": 1}, "content": "x"}], {}, PromptError, "role of type dict"),
        ([{"role": None, "content": "x"}], {}, PromptError, "role of type NoneType"),
        # non-finite and out-of-range sampling values
        (PROMPT, {"temperature": float("inf")}, GenerationArgumentError, "finite"),
        (PROMPT, {"temperature": float("nan")}, GenerationArgumentError, "temperature"),
        (PROMPT, {"temperature": 2.5}, GenerationArgumentError, "[0, 2]"),
        (PROMPT, {"temperature": 10**400}, GenerationArgumentError, "temperature"),
        (PROMPT, {"top_p": float("inf")}, GenerationArgumentError, "(0, 1]"),
        (PROMPT, {"top_p": float("nan")}, GenerationArgumentError, "(0, 1]"),
        # strict types: no truthy strings, no floats for integers
        (PROMPT, {"ignore_eos": "no"}, GenerationArgumentError, "ignore_eos must be True or False"),
        (PROMPT, {"logprobs": "yes"}, GenerationArgumentError, "logprobs must be True or False"),
        (PROMPT, {"trace": 1}, GenerationArgumentError, "trace must be True or False"),
        (PROMPT, {"parallel_tool_calls": "x"}, GenerationArgumentError, "parallel_tool_calls"),
        (PROMPT, {"top_logprobs": 2.0}, GenerationArgumentError, "top_logprobs"),
        (PROMPT, {"top_logprobs": True}, GenerationArgumentError, "top_logprobs"),
        (PROMPT, {"top_logprobs": 21}, GenerationArgumentError, "[0, 20]"),
        (PROMPT, {"seed": 1.5}, GenerationArgumentError, "seed"),
        (PROMPT, {"seed": True}, GenerationArgumentError, "seed"),
        (PROMPT, {"top_k": 2.0}, GenerationArgumentError, "top_k"),
        # penalties
        (PROMPT, {"repetition_penalty": 0}, GenerationArgumentError, "> 0"),
        (PROMPT, {"repetition_penalty": float("inf")}, GenerationArgumentError, "finite"),
        (PROMPT, {"frequency_penalty": 2.5}, GenerationArgumentError, "[-2, 2]"),
        (PROMPT, {"presence_penalty": float("nan")}, GenerationArgumentError, "[-2, 2]"),
        (PROMPT, {"no_repeat_ngram_size": -1}, GenerationArgumentError, ">= 0"),
        (PROMPT, {"no_repeat_ngram_size": 2.0}, GenerationArgumentError, "integer"),
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
        (dict(source="x", system_prompt="Be \ud800 brief"), "lone surrogate"),
        (dict(source="x", user_prefix=None), "user_prefix must be a string"),
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


def test_model_narrower_than_its_tokenizer_is_refused(tok):
    narrow = make_model(tok, seed=0, width=len(tok) - 8)
    with pytest.raises(ModelLoadError, match=f"tokenizer has {len(tok)} token ids"):
        BlendedLLM((narrow, tok), config=BlendConfig(strategy="base_only"))
    with pytest.raises(ModelLoadError, match="belongs to the model"):
        BlendedLLM((make_model(tok, seed=0), tok), [(narrow, tok)])


def test_tokenizer_smaller_than_the_model_warns_and_its_missing_ids_are_never_chosen(tok):
    import torch

    wide = make_model(tok, seed=3, width=len(tok) + 40)
    with torch.no_grad():  # make the rows without a token likely, as untrained padding can be
        wide.lm_head.weight[len(tok):] *= 8
    with pytest.warns(UserWarning, match="never chosen"):
        llm = BlendedLLM((wide, tok), config=BlendConfig(strategy="base_only"))
    res = [llm.generate(PROMPT, max_new_tokens=30, temperature=2.0, seed=s, ignore_eos=True)
           for s in range(3)]
    assert all(i < len(tok) for r in res for i in r.token_ids)
    greedy = llm.generate(PROMPT, max_new_tokens=30, ignore_eos=True, logprobs=True,
                          top_logprobs=3)
    assert all(i < len(tok) for i in greedy.token_ids)


def test_seeds_of_any_size_are_accepted(llm_and_reference):
    llm, _ = llm_and_reference
    for seed in (2**64, -(2**63) - 1, 10**100, -(10**100)):
        assert llm.generate(PROMPT, max_new_tokens=3, temperature=1.0, seed=seed).text is not None
