"""The blends the face's tests run on: random tiny models, and a scripted pair that follows
instructions (tools, JSON), both from the repository's test helpers (tests/tiny.py,
tests/scripted.py)."""

from scripted import ScriptedBackend, oracle
from tiny import make_model, make_tokenizer

from blendin_llm import BlendedLLM, ModelSpec

TOK = make_tokenizer(chat=True)
TINY = BlendedLLM(ModelSpec(model=make_model(TOK, seed=0), tokenizer=TOK, name="tiny-base"),
                  [ModelSpec(model=make_model(TOK, seed=1, hidden=48), tokenizer=TOK,
                             name="tiny-guide")])
# base unsure at every step (0.35 < gamma), so every token is a blend of the two
SCRIPTED = BlendedLLM(ScriptedBackend(TOK, oracle, 0.35, name="scripted-base"),
                      [ScriptedBackend(TOK, oracle, 0.9, name="scripted-guide")])
