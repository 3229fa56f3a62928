"""The public API documents itself: every field of the settings and result types has a
description, and the public methods of the engine, the configs and the strategies' extension
points say what they take (Args) and give (Returns)."""

import inspect

import pytest
from pydantic import BaseModel

from blendin_llm import BlendedLLM, config, results, strategies, tools

MODEL_MODULES = (config, results, tools)


def _models():
    for module in MODEL_MODULES:
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, BaseModel)
                    and obj.__module__ == module.__name__ and not name.startswith("_")):
                yield obj


@pytest.mark.parametrize("cls", list(_models()), ids=lambda c: c.__name__)
def test_every_public_model_and_field_is_described(cls):
    assert cls.__doc__ and cls.__doc__.strip(), cls
    assert [n for n, f in cls.model_fields.items() if not f.description] == []


def _public_methods(cls):
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        fn = fn.fget if isinstance(fn, property) else fn
        if callable(fn):
            yield name, fn


API = [BlendedLLM, config.BlendConfig, config.ModelSpec, strategies.Strategy,
       strategies.ConsultPolicy]


@pytest.mark.parametrize("cls", API, ids=lambda c: c.__name__)
def test_public_methods_say_what_they_take_and_give(cls):
    missing = []
    for name, fn in _public_methods(cls):
        doc = inspect.getdoc(fn) or ""
        if name == "__init__":
            doc = doc if "Args:" in doc else inspect.getdoc(cls) or ""
        sig = inspect.signature(fn)
        takes = [p for p in sig.parameters if p not in ("self", "cls")]
        if takes and "Args:" not in doc:
            missing.append(f"{name}: Args")
        if name != "__init__" and sig.return_annotation not in ("None", None, sig.empty) and not (
                "Returns:" in doc or "Yields:" in doc):
            missing.append(f"{name}: Returns")
    assert missing == []


def test_strategy_functions_are_documented():
    for fn in (strategies.register_strategy, strategies.available_strategies,
               strategies.get_strategy):
        assert "Returns:" in (fn.__doc__ or ""), fn
