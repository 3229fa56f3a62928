"""blendin_llm.options: the one mapping of a framework face's settings and a call's arguments to
the engine's, and the one way a face builds or shares its engine (both faces use them)."""

import pytest

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec
from blendin_llm.errors import ConfigError, GenerationArgumentError
from blendin_llm.options import (
    blend_overrides,
    build_llm,
    call_options,
    check_settings,
    describe,
    merge_stops,
)

from tiny import make_model, make_tokenizer

TOK = make_tokenizer(chat=True)
TINY = BlendedLLM(ModelSpec(model=make_model(TOK, seed=0), tokenizer=TOK, name="tiny-base"),
                  [ModelSpec(model=make_model(TOK, seed=1, hidden=48), tokenizer=TOK,
                             name="tiny-guide")])
MSGS = [{"role": "user", "content": "The quick brown fox"}]


def test_stop_is_merged_field_first_each_string_once():
    assert call_options({"stop": ["a", "b"]}, ["b", "c"])["stop"] == ["a", "b", "c"]
    assert call_options({"stop": "a"}, "b")["stop"] == ["a", "b"]
    assert call_options({"stop": None}, None)["stop"] is None
    assert call_options({}, ["x"])["stop"] == ["x"]
    assert merge_stops(None, [], ()) is None
    with pytest.raises(GenerationArgumentError, match="stop must be a string or a list"):
        merge_stops(["a"], 5)


def test_call_arguments_replace_fields_and_unset_fields_are_left_out():
    fields = {"max_tokens": 40, "temperature": 0.7, "seed": None, "top_k": 5, "gamma": 0.5,
              "frequency_penalty": None, "logprobs": False}
    opts = call_options(fields, seed=3, max_tokens=7, alpha=0.2, agreement_top_k=2)
    assert opts == {"max_new_tokens": 7, "temperature": 0.7, "top_k": 5, "gamma": 0.5,
                    "logprobs": False, "seed": 3, "alpha": 0.2, "agreement_top_k": 2,
                    "stop": None}
    # the engine's name works as well as the framework's
    assert call_options({"max_new_tokens": 40}, max_tokens=9)["max_new_tokens"] == 9


def test_the_mapping_is_what_the_engine_runs():
    fields = {"max_tokens": 30, "temperature": 1.0, "top_k": 5, "seed": 1, "stop": None}
    got = TINY.generate(MSGS, **call_options(fields, seed=7, max_tokens=9))
    want = TINY.generate(MSGS, temperature=1.0, seed=7, max_new_tokens=9, top_k=5)
    assert got.text == want.text and got.usage.completion_tokens == 9


def test_unknown_call_arguments_are_the_engines_to_name():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['foo'\]"):
        TINY.generate(MSGS, **call_options({"max_tokens": 3}, foo=1))


@pytest.mark.parametrize("fields, match", [
    ({"max_tokens": 0}, r"Face: max_new_tokens must be .*got 0 \(Face's max_tokens is the "
                        r"engine's max_new_tokens\)"),
    ({"max_new_tokens": 0}, r"Face: max_new_tokens must be .*got 0$"),
    ({"top_p": 1.5}, "top_p must be"),
    ({"stop": [""]}, "stop strings must not be empty"),
    ({"top_logprobs": 50}, "top_logprobs must be .*got 50"),
    ({"frequency_penalty": 2.5}, r"frequency_penalty must be a number in \[-2, 2\]"),
    ({"strategy": "bogus"}, "unknown strategy 'bogus'"),
    ({"gamma": -1.0}, "gamma must be"),
])
def test_bad_settings_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        check_settings(fields, "Face")


def test_settings_override_the_config():
    config = check_settings({"gamma": 0.7, "alpha": None, "temperature": 0.5},
                            "Face", BlendConfig(alpha=0.3))
    assert (config.gamma, config.alpha) == (0.7, 0.3)
    assert blend_overrides({"gamma": 0.7, "alpha": None, "seed": 1}) == {"gamma": 0.7}


def test_check_options_is_the_config_a_call_would_use():
    assert TINY.check_options() is TINY.config
    assert TINY.check_options(gamma=0.9).gamma == 0.9 and TINY.config.gamma == 0.4
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['foo'\]"):
        TINY.check_options(foo=1)
    solo = BlendedLLM(TINY.base, config=BlendConfig(strategy="base_only"))
    with pytest.raises(ConfigError, match="needs at least one guide"):
        solo.check_options(strategy="blendin")


@pytest.mark.parametrize("kwargs, match", [
    ({"llm": "x"}, "llm must be a loaded BlendedLLM.*model='x'"),
    ({"llm": TINY, "model": "a"}, "either llm=.*got llm= and model="),
    ({"llm": TINY, "config": BlendConfig()}, "either llm=.*config="),
    ({"model": "a", "base": "b"}, "model= and base="),
    ({}, "Face needs model="),
    ({"model": "/nonexistent/model", "config": {"gamma": 0.5}}, "config must be a BlendConfig"),
])
def test_build_llm_rejects_conflicting_or_missing_sources(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_llm({}, owner="Face", **kwargs)


def test_build_llm_checks_settings_before_loading_and_shares_an_engine():
    for bad in ({"max_tokens": 0}, {"strategy": "bogus"}, {"top_p": 0}):
        with pytest.raises(ConfigError):  # not ModelLoadError: nothing was loaded
            build_llm(bad, owner="Face", model="/nonexistent/model")
    assert build_llm({"gamma": 0.9}, owner="Face", llm=TINY) is TINY
    solo = BlendedLLM(TINY.base, config=BlendConfig(strategy="base_only"))
    with pytest.raises(ConfigError, match="needs at least one guide"):
        build_llm({"strategy": "blendin"}, owner="Face", llm=solo)


def test_build_llm_loads_with_the_settings_config(tmp_path):
    TINY.base.model.save_pretrained(tmp_path)
    TOK.save_pretrained(tmp_path)
    llm = build_llm({"strategy": "base_only", "gamma": 0.2}, owner="Face", model=str(tmp_path),
                    guides=[])
    assert llm.guides == [] and (llm.config.strategy, llm.config.gamma) == ("base_only", 0.2)


def test_faces_describe_the_engine_settings_in_the_engines_words():
    from langchain_blendin import ChatBlendIn
    from llama_index.llms.blendin import BlendIn

    assert describe("gamma").startswith("The guides are consulted when")
    assert describe("seed", "Face note.").endswith("Face note.")
    with pytest.raises(KeyError, match="no engine setting 'max_tokens'"):
        describe("max_tokens")
    for face in (ChatBlendIn, BlendIn):
        for name in ("temperature", "top_p", "seed", "frequency_penalty", "gamma", "alpha"):
            assert face.model_fields[name].description.startswith(describe(name)), (face, name)
