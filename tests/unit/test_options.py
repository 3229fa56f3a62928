"""One mapping of call options for both framework faces (``blendin_llm.options``)."""

import pytest

from blendin_llm.options import call_options, check_options
from blendin_llm.errors import GenerationArgumentError


def test_settings_and_a_call_map_with_one_rule():
    opts = call_options({"max_tokens": 8, "temperature": None, "seed": 3, "stop": ["A"],
                         "gamma": 0.5, "strategy": None},
                        {"stop": ["B", "A"], "seed": 4, "top_k": 5, "stream": True},
                        ignore={"stream"})
    # None settings are the engine's defaults; a call's value replaces the setting; stop adds
    assert opts == {"max_new_tokens": 8, "seed": 4, "gamma": 0.5, "top_k": 5, "stop": ["A", "B"]}
    assert call_options({}, {"stop": "END"})["stop"] == ["END"]
    assert call_options({"stop": None})["stop"] == []


def test_check_options_checks_sampling_values_now():
    assert check_options(call_options({"max_tokens": 4, "logprobs": True})).logprobs == 0
    with pytest.raises(GenerationArgumentError, match="max_new_tokens"):
        check_options(call_options({"max_tokens": 0}))


def test_both_faces_map_the_same_options_the_same_way():
    pytest.importorskip("langchain_blendin")
    pytest.importorskip("llama_index.llms.blendin")
    from langchain_blendin import ChatBlendIn
    from llama_index.llms.blendin import BlendIn
    from tiny import make_model, make_tokenizer

    from blendin_llm import BlendedLLM, ModelSpec

    tok = make_tokenizer(chat=True)
    llm = BlendedLLM(ModelSpec(model=make_model(tok, seed=0), tokenizer=tok),
                     [ModelSpec(model=make_model(tok, seed=1), tokenizer=tok)])
    lc = ChatBlendIn(llm=llm, stop=["x"], max_tokens=5, gamma=0.3, top_k=7)
    li = BlendIn(llm=llm, stop=["x"], max_new_tokens=5, gamma=0.3, top_k=7)
    got = lc._opts(["y"], {"seed": 1})
    assert got == li._opts({"stop": ["y"], "seed": 1})
    assert (got["stop"], got["max_new_tokens"], got["seed"], got["gamma"], got["top_k"]) == \
        (["x", "y"], 5, 1, 0.3, 7)
