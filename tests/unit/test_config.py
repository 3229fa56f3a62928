"""blendin_llm.config: pydantic settings that check themselves, explain a bad value in the
project's words (never a raw ValidationError), document every field and round-trip to dicts."""

import math

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from blendin_llm.config import (
    BlendConfig,
    MitigationConfig,
    ModelSpec,
    ReliabilityConfig,
    SamplingParams,
)
from blendin_llm.errors import ConfigError, GenerationArgumentError

CONFIGS = (BlendConfig, ReliabilityConfig, MitigationConfig, SamplingParams, ModelSpec)


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_has_a_description_in_the_schema(cls):
    assert issubclass(cls, BaseModel)
    schema = cls.model_json_schema()
    assert schema.get("description")
    undocumented = [n for n, f in cls.model_fields.items() if not f.description]
    assert undocumented == []
    assert set(schema["properties"]) <= set(cls.model_fields)


@pytest.mark.parametrize("cls, kwargs, error, words", [
    (BlendConfig, {"gamma": "high"}, ConfigError, "gamma must be a number >= 0"),
    (BlendConfig, {"gamma": math.nan}, ConfigError, "gamma must be"),
    (BlendConfig, {"agreement_top_k": 2.0}, ConfigError, "agreement_top_k must be an integer >= 1"),
    (BlendConfig, {"alpha": True}, ConfigError, "alpha must be a number in [0, 1] or 'auto'"),
    (BlendConfig, {"gama": 0.3}, ConfigError, "BlendConfig has no field 'gama'"),
    (BlendConfig, {"reliability": {"min_score": 2}}, ConfigError,
     "ReliabilityConfig.min_score must be a number in [0, 1], got 2"),
    (BlendConfig, {"mitigation": {"decay": -1}}, ConfigError, "MitigationConfig.decay"),
    (ReliabilityConfig, {"score_model": "x"}, ConfigError, "must be a ScoreModel"),
    (MitigationConfig, {"guide_health": "yes"}, ConfigError, "guide_health must be True or False"),
    (MitigationConfig, {"off_agreement": 0.4, "min_agreement": 0.3}, ConfigError,
     "off_agreement must be <= min_agreement"),
    (SamplingParams, {"temperature": "0.5"}, GenerationArgumentError,
     "temperature must be a finite number in [0, 2]"),
    (SamplingParams, {"seed": 1.5}, GenerationArgumentError, "seed must be an integer or None"),
    (SamplingParams, {"ignore_eos": 1}, GenerationArgumentError, "ignore_eos must be True or False"),
    (SamplingParams, {"stop": 5}, GenerationArgumentError, "stop must be a string or a list"),
    (SamplingParams, {"max_tokens": 5}, GenerationArgumentError, "has no field 'max_tokens'"),
    (ModelSpec, {"source": "x", "device": 0}, ConfigError, "ModelSpec.device must be"),
    (ModelSpec, {"source": "x", "trust_remote_code": "no"}, ConfigError, "True or False"),
])
def test_a_bad_value_is_the_library_error_with_a_readable_message(cls, kwargs, error, words):
    with pytest.raises(error) as info:
        cls(**kwargs)
    assert words in str(info.value)
    assert not isinstance(info.value, ValidationError)
    assert "pydantic" not in str(info.value) and "errors.pydantic.dev" not in str(info.value)


def test_two_problems_are_both_named():
    with pytest.raises(ConfigError) as info:
        BlendConfig(gamma=-1, agreement_top_k=0)
    assert "gamma must be" in str(info.value) and "agreement_top_k must be" in str(info.value)


def test_configs_are_frozen_and_replace_checks_like_a_new_object():
    c = BlendConfig()
    with pytest.raises(ValidationError):  # pydantic's frozen-instance error: a programming slip
        c.gamma = 0.1
    d = c.replace(gamma=0.1, alpha=0.3)
    assert (d.gamma, d.alpha, c.gamma, c.alpha) == (0.1, 0.3, 0.4, "auto")
    assert d.reliability is c.reliability
    with pytest.raises(ConfigError, match="gamma must be"):
        c.replace(gamma=-2)
    with pytest.raises(ConfigError, match="no field 'gamm'"):
        c.replace(gamm=0.2)
    assert c == BlendConfig() and hash(c) == hash(BlendConfig())


def test_dicts_round_trip_nested_configs_included():
    c = BlendConfig(gamma=0.3, alpha=0.5, mitigation=MitigationConfig(intervention_cap=0.2),
                    reliability=ReliabilityConfig(weights=[1, 1, 0], min_consulted=2))
    data = c.to_dict()
    assert data["mitigation"]["intervention_cap"] == 0.2 and data["reliability"]["weights"] == (
        1.0, 1.0, 0.0)
    assert BlendConfig.from_dict(data) == c
    with pytest.raises(ConfigError, match="needs a dict"):
        BlendConfig.from_dict([("gamma", 0.3)])


def test_sampling_params_take_numpy_numbers_and_any_integer_seed():
    p = SamplingParams(temperature=np.float32(0.5), max_new_tokens=np.int64(7), top_k=np.int32(3),
                       seed=-(2 ** 100), stop="x", logprobs=np.int16(2))
    assert (p.temperature, p.max_new_tokens, p.top_k, p.seed, p.stop, p.logprobs) == (
        0.5, 7, 3, -(2 ** 100), ("x",), 2)
    assert type(p.max_new_tokens) is int and type(p.temperature) is float
    assert SamplingParams(stop=["a", "b", "a"]).stop == ("a", "b")
    assert SamplingParams().greedy and not p.greedy


def test_model_spec_takes_its_source_by_position_or_by_name():
    assert ModelSpec("some/model") == ModelSpec(source="some/model")
    spec = ModelSpec("m", name="n").replace(source="other")
    assert (spec.source, spec.name) == ("other", "n")
    loaded = ModelSpec(model=object(), tokenizer=object())
    assert "model" not in loaded.to_dict() and "tokenizer" not in loaded.to_dict()
    assert "model=" not in repr(loaded)


def test_an_unknown_field_is_named_as_it_was_passed():
    with pytest.raises(ConfigError, match=r"^ReliabilityConfig has no field 'foo'; its fields"):
        ReliabilityConfig(foo=1)
    with pytest.raises(ConfigError, match=r"^ModelSpec has no field 'sorce'"):
        ModelSpec("x", sorce=1)
