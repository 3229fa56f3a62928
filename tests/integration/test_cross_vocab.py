"""Cross-vocabulary blending: token map, incremental guide tokenization, and the engine path."""

import pytest
import torch

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec, SamplingParams
from blendin_llm.guides import CrossVocabGuide
from blendin_llm.model_calls import complete
from blendin_llm.backends import TransformersBackend
from blendin_llm.vocab import IncrementalTokenizer, VocabMap, token_bytes

from tiny import make_char_tokenizer, make_model, make_sentencepiece_tokenizer

PROMPT = "User: hello there\nAssistant:"


@pytest.fixture(scope="module")
def sp_tok():
    return make_sentencepiece_tokenizer()


@pytest.fixture(scope="module")
def char_pair():
    tok = make_char_tokenizer()
    return tok, make_model(tok, seed=0, init=0.3), make_model(tok, seed=1, hidden=48, init=0.3)


def test_forced_cross_vocab_path_equals_same_vocab_path(char_pair):
    tok, base, guide = char_pair
    spec = lambda m, n: ModelSpec(model=m, tokenizer=tok, prompt_format="raw", name=n)  # noqa
    for kw in (dict(gamma=0.5), dict(gamma=2.0), dict(gamma=0.5, temperature=0.8, seed=3),
               dict(strategy="guide_only"), dict(gamma=0.5, alpha=0.7)):
        fast = BlendedLLM(spec(base, "b"), [spec(guide, "g")], BlendConfig())
        cross = BlendedLLM(spec(base, "b"), [spec(guide, "g")], BlendConfig(), cross_vocab="always")
        assert fast.vocab_maps == [None] and cross.vocab_maps[0] is not None
        a = fast.generate(PROMPT, max_new_tokens=40, **kw)
        b = cross.generate(PROMPT, max_new_tokens=40, **kw)
        assert a.reliability.interventions > 0
        assert b.token_ids == a.token_ids, kw
        assert b.text == a.text
        assert b.reliability.mean_alpha == pytest.approx(a.reliability.mean_alpha, abs=1e-5)


def test_vocab_map_between_byte_level_and_sentencepiece(tok, sp_tok):
    vm = VocabMap(tok, sp_tok, sp_tok.eos_token_id, len(tok))
    gb, _ = token_bytes(tok)
    bb, _ = token_bytes(sp_tok)
    m = vm.guide_to_base.tolist()
    the_g, the_b = tok.convert_tokens_to_ids("Ġthe"), sp_tok.convert_tokens_to_ids("\u2581the")
    assert gb[the_g] == bb[the_b] == b" the"
    assert m[the_g] == the_b  # identical strings match across "Ġ" and "▁" spellings
    assert vm.exact > 0.5 * len(tok)
    # a letter maps to the base's letter token, not to its byte-fallback token of the same byte
    letter_g, letter_b = tok.convert_tokens_to_ids("T"), sp_tok.convert_tokens_to_ids("T")
    assert bb[sp_tok.convert_tokens_to_ids("<0x54>")] == b"T"
    assert m[letter_g] == letter_b
    base_texts = {x for x in bb if x}
    for g, b in enumerate(gb):
        if b:  # every mapped token is the same text, or the longest base prefix of it
            assert b.startswith(bb[m[g]]), (g, b, bb[m[g]])
            assert not any(b[:n] in base_texts for n in range(len(bb[m[g]]) + 1, len(b) + 1))
    assert m[tok.convert_tokens_to_ids("<|im_end|>")] == sp_tok.eos_token_id
    assert m[tok.eos_token_id] == sp_tok.eos_token_id  # same special text
    assert m[tok.bos_token_id] == sp_tok.bos_token_id
    assert vm.exact + vm.prefix + vm.retokenized + vm.special == len(tok)
    # no probability mass is dropped
    q = torch.rand(len(tok)).softmax(-1)
    assert vm.project(q, len(sp_tok)).sum().item() == pytest.approx(1.0, abs=1e-6)


TEXTS = [
    "The quick brown fox jumps over the lazy dog.  Double  spaces\tand\ttabs\n\nnew lines",
    "naïve café 東京 😀 ümlaut — ellipsis… numbers 12345 and 3.14 😀😀 東京東京",
    "   leading spaces, then words:a,b;c!!  ??",
    # words the tokenizers never saw: the guide's last tokens keep merging as the text grows
    "Thequickbrownfoxes jumpedoverthelazydogs helloworldish cafébabble 東京京東😀😀😀",
]


def _pieces(text, tokenizer):
    """Split text the way a base model commits it: at its own token boundaries, and sometimes in
    the middle of a multi-byte character (the piece then ends before that character)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    out, prev = [], ""
    for k in range(1, len(ids) + 1):
        t = tokenizer.decode(ids[:k])
        if not t.endswith("\ufffd") and t != prev:
            out.append(t)
            prev = t
    assert out[-1] == text
    return out


@pytest.mark.parametrize("which", ["bytelevel", "sentencepiece"])
def test_guide_stream_incremental_equals_from_scratch(which, tok, sp_tok):
    guide_tok, base_tok = (tok, sp_tok) if which == "bytelevel" else (sp_tok, tok)
    for text in TEXTS:
        s = IncrementalTokenizer(guide_tok)
        for prefix in _pieces(text, base_tok):
            before = list(s.ids)
            keep = s.update(prefix)
            scratch = guide_tok(prefix, add_special_tokens=False).input_ids
            assert s.ids == scratch, prefix
            assert before[:keep] == s.ids[:keep]
        assert s.full_encodes == 0  # re-tokenizing the tail always sufficed


def test_guide_reads_the_answer_in_tokens_it_would_write_itself(tok, sp_tok):
    """Fed the answer piece by piece (consulted on some steps only), the guide's tokens always
    spell the committed text, every first token of new text is the guide's most likely reading of
    it, and its distributions equal a recompute from scratch on those tokens."""
    guide = TransformersBackend(make_model(tok, seed=1), tok)
    vm = VocabMap(tok, sp_tok, sp_tok.eos_token_id, len(tok))
    prompt = tok(PROMPT).input_ids
    g = CrossVocabGuide(guide, prompt, vm)
    gb, _ = token_bytes(tok)

    def fresh(ids):
        with torch.no_grad():
            return guide.model(torch.tensor([ids])).logits[0].float().softmax(-1)

    text = TEXTS[1] + " " + TEXTS[3]
    consults = 0
    for i, prefix in enumerate(_pieces(text, sp_tok)):
        if i % 3:  # consulted only on some steps: the guide catches up on several pieces at once
            continue
        path, head, end = list(g.path), g.head, g.end
        with torch.inference_mode():
            probs, ran = complete(g.probs(prefix, len(sp_tok)))
        consults += 1
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert b"".join(gb[t] for t in g.path) == g.head and prefix.encode().startswith(g.head)
        torch.testing.assert_close(g.end, fresh(prompt + g.path)[-1], atol=1e-5, rtol=1e-4)
        rest = prefix.encode()[len(head):]
        if end is not None and rest:
            best, extends = vm.reading(end, rest)
            cands = [t for t, b in enumerate(gb) if b and (rest.startswith(b) or
                                                         b.startswith(rest))]
            assert end[best] == end[cands].max()  # the most likely consistent guide token
            assert extends == (len(gb[best]) > len(rest))
            if extends:
                assert g.path == path  # nothing fixed while the text ends inside its token
            elif g.path != path:
                assert g.path[len(path)] == best  # the new text starts with the guide's reading
        if ran:  # the cache spells the whole answer; the distribution equals a recompute
            cached = g.state.tokens
            assert b"".join(gb[t] for t in cached[len(prompt):]) == prefix.encode()
            rows = fresh(cached)
            ref = vm.project(rows[-1], len(sp_tok)) if len(cached) == len(prompt + g.path) \
                else vm.project_healed(rows[-2], rows[-1], cached[-1], len(sp_tok))
            torch.testing.assert_close(probs, ref, atol=1e-5, rtol=1e-4)
    assert consults > 5


def test_text_ending_inside_the_guides_likely_token_is_healed_then_kept_as_its_token(tok, sp_tok):
    """The guide favours one long token; the base commits it in pieces. While the text ends
    inside it, nothing is fixed and the next text is the rest of the guide's candidates; once the
    text is the whole token, that token is the guide's, and it continues after it."""
    guide = TransformersBackend(make_model(tok, seed=1), tok)
    vm = VocabMap(tok, sp_tok, sp_tok.eos_token_id, len(tok))
    gb, _ = token_bytes(tok)
    word = max((t for t, b in enumerate(gb) if b and b.startswith(b" ") and b[1:].isalpha()),
               key=lambda t: len(gb[t]))
    text = gb[word].decode()
    prompt = tok(PROMPT).input_ids
    g = CrossVocabGuide(guide, prompt, vm)
    with torch.inference_mode():
        complete(g.probs("", len(sp_tok)))
        g.end = torch.full_like(g.end, 0.1 / g.end.shape[0])
        g.end[word] += 0.9  # the guide's next token is almost surely ``word``
        for n in (2, 3):
            probs, ran = complete(g.probs(text[:n], len(sp_tok)))
            assert g.path == [] and g.head == b""
            exact = vm.guide_token(text[:n].encode())
            ref = vm.project_extensions(g.end, text[:n].encode(), len(sp_tok)) if exact is None \
                else vm.project_healed(g.end, guide.model(torch.tensor([prompt + [exact]])).logits[
                    0, -1].float().softmax(-1), exact, len(sp_tok))
            torch.testing.assert_close(probs, ref, atol=1e-5, rtol=1e-4)
            rest = vm.base_token_for(gb[word][n:])[0]
            assert probs.argmax().item() == rest  # the rest of the guide's word comes next
        probs, ran = complete(g.probs(text, len(sp_tok)))
    assert g.path == [word] and ran == 1
    after = guide.model(torch.tensor([prompt + [word]])).logits[0, -1].float().softmax(-1)
    torch.testing.assert_close(probs, vm.project(after, len(sp_tok)), atol=1e-5, rtol=1e-4)


def test_cross_vocab_pair_generates_with_text_equal_to_committed_pieces(tok, sp_tok):
    base = ModelSpec(model=make_model(sp_tok, seed=0), tokenizer=sp_tok, prompt_format="raw",
                     name="sp-base")
    guide = ModelSpec(model=make_model(tok, seed=1, hidden=48), tokenizer=tok,
                      prompt_format="raw", name="bl-guide")
    llm = BlendedLLM(base, [guide], BlendConfig(gamma=0.6))
    assert llm.vocab_maps[0] is not None
    events = list(llm.stream("naïve café 東京", max_new_tokens=40, trace=True))
    res = events[-1].result
    assert 0 < res.reliability.interventions
    assert "".join(e.text for e in events) == res.text
    assert "".join(t.text for t in res.reliability.trace) == res.text
    assert res.usage.guide_tokens_computed > 0


def test_after_an_intervention_the_base_reads_the_answer_in_its_own_tokens(tok, sp_tok):
    """Commit a split the base would never make ("t","h","e","▁","q",...) and check that the base's
    cache then holds its own tokenization of the text, and that its logits equal a recompute."""
    base_model = make_model(sp_tok, seed=0)
    llm = BlendedLLM(ModelSpec(model=base_model, tokenizer=sp_tok, prompt_format="raw"),
                     [ModelSpec(model=make_model(tok, seed=1), tokenizer=tok, prompt_format="raw")])
    gen, _ = llm._prepare("User: hello", SamplingParams(max_new_tokens=40), llm.config,
                          trace=False)
    text = "the quick brown fox 😀 jumps"
    canonical = sp_tok(text, add_special_tokens=False).input_ids
    split = [sp_tok.convert_tokens_to_ids(c) for c in "the\u2581quick\u2581brown\u2581fox\u2581"]
    split += sp_tok(" 😀 jumps", add_special_tokens=False).input_ids[1:] + [sp_tok.convert_tokens_to_ids(c) for c in ("\u2581",)]
    complete(gen._advance(None))
    gen.healing = True  # as after the first blended step
    for t in split:
        delta = gen.detok.push(t)
        gen.answer_text += delta
        complete(gen._advance(t, bool(delta)))
    assert gen.base_heals > 0
    p = len(gen.base_prompt)
    assert gen.base_state.tokens[p:] == sp_tok(gen.answer_text, add_special_tokens=False).input_ids
    assert gen.base_state.tokens[p:] != split
    assert len(gen.base_state.tokens[p:]) < len(split)
    with torch.no_grad():
        ref = base_model(torch.tensor([gen.base_state.tokens])).logits[0, -1].float()
    torch.testing.assert_close(gen._base_logits, ref, atol=1e-4, rtol=1e-4)
    assert canonical[:3] == gen.base_state.tokens[p:p + 3]


def test_base_only_on_a_cross_vocab_pair_is_the_base_alone(tok, sp_tok):
    base_model = make_model(sp_tok, seed=0)
    spec = ModelSpec(model=base_model, tokenizer=sp_tok, prompt_format="raw")
    alone = BlendedLLM(spec, config=BlendConfig(strategy="base_only"))
    paired = BlendedLLM(spec, [ModelSpec(model=make_model(tok, seed=1), tokenizer=tok,
                                         prompt_format="raw")],
                        BlendConfig(strategy="base_only"))
    assert paired.generate("the quick", max_new_tokens=30).token_ids == \
        alone.generate("the quick", max_new_tokens=30).token_ids


def test_healing_recovers_what_the_guide_meant_by_a_token_the_base_lacks(tok, sp_tok):
    """The guide's last token s may be the start of a longer guide token ("'" of "'s"). The healed
    distribution gives each base continuation the guide's probability of the longer token."""
    vm = VocabMap(tok, sp_tok, sp_tok.eos_token_id, len(tok))
    gb, _ = token_bytes(tok)
    # a guide token with several extensions, e.g. "Ġqu" -> "Ġquick", ...
    s = max((g for g, b in enumerate(gb) if b), key=lambda g: len(vm.continuations(g)[0]))
    ids, base = vm.continuations(s)
    assert len(ids) >= 2 and all(gb[int(i)].startswith(gb[s]) for i in ids)
    before = torch.zeros(len(tok))
    before[ids[0]], before[ids[1]], before[s] = 0.5, 0.3, 0.2
    after = torch.zeros(len(tok))
    after[tok.eos_token_id] = 1.0  # after s itself, the guide would stop
    out = vm.project_healed(before, after, s, len(sp_tok))
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert out[sp_tok.eos_token_id].item() == pytest.approx(0.2, abs=1e-6)
    expect = torch.zeros(len(sp_tok))
    expect.index_add_(0, base[:2], torch.tensor([0.5, 0.3]))
    expect[sp_tok.eos_token_id] += 0.2
    torch.testing.assert_close(out, expect)
    # nothing extends a token: the plain projection
    lone = next(g for g, b in enumerate(gb) if b and len(vm.continuations(g)[0]) == 0)
    torch.testing.assert_close(vm.project_healed(before, after, lone, len(sp_tok)),
                               vm.project(after, len(sp_tok)))


ALPHA0_PROMPTS = ["the quick", "User: hello there\nAssistant:", "naïve café", "Question: what is",
                  "STOP here", "12345 and", "I cannot help", "a short poem about the sea"]


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.9, seed=1), dict(temperature=1.3, seed=5),
                                dict(temperature=0.7, top_p=0.9, seed=11),
                                dict(temperature=0.9, seed=2, repetition_penalty=1.3),
                                dict(repetition_penalty=1.3, no_repeat_ngram_size=2)])
def test_a_guide_without_a_say_reproduces_base_only_on_a_cross_vocab_pair(tok, sp_tok, kw):
    """alpha = 0 at every step (gamma 2: always consulted) and at the default gamma: the answer is
    base_only's, token for token, greedy and sampled; the base never re-reads its own answer."""
    base = ModelSpec(model=make_model(sp_tok, seed=0), tokenizer=sp_tok, prompt_format="raw")
    guide = ModelSpec(model=make_model(tok, seed=1, hidden=48), tokenizer=tok, prompt_format="raw")
    llm = BlendedLLM(base, [guide], BlendConfig(alpha=0.0))
    assert llm.vocab_maps[0] is not None
    consulted = 0
    for prompt in ALPHA0_PROMPTS:
        alone = llm.generate(prompt, max_new_tokens=32, strategy="base_only", **kw)
        for gamma in (2.0, 0.4):
            gen, _ = llm._prepare(prompt, SamplingParams(max_new_tokens=32, **kw),
                                  llm._resolve_config(dict(gamma=gamma)), trace=False)
            res = list(gen.events())[-1].result
            consulted += res.reliability.interventions
            assert res.token_ids == alone.token_ids, (prompt, gamma)
            assert gen.base_heals == 0 and not gen.healing
    assert consulted > 100


def test_guide_only_through_the_cross_vocab_path_follows_the_guide_alone(tok):
    """Same byte-level vocabulary with merges, forced through the cross-vocabulary path: the
    guide's own greedy answer has splits its tokenizer would not make ("t"+"he"), and reading the
    text back in the guide's own tokens keeps guide_only on that answer, token for token."""
    base = make_model(tok, seed=0, init=0.3)
    guide = make_model(tok, seed=3, hidden=48, init=0.3)
    spec = lambda m, n: ModelSpec(model=m, tokenizer=tok, prompt_format="raw", name=n)  # noqa
    alone = BlendedLLM(spec(guide, "g"), config=BlendConfig(strategy="base_only"))
    cross = BlendedLLM(spec(base, "b"), [spec(guide, "g")], BlendConfig(strategy="guide_only"),
                       cross_vocab="always")
    odd = 0
    for prompt in ALPHA0_PROMPTS:
        own = alone.generate(prompt, max_new_tokens=40, ignore_eos=True)
        odd += own.token_ids != tok(own.text, add_special_tokens=False).input_ids
        got = cross.generate(prompt, max_new_tokens=40, ignore_eos=True)
        assert got.text == own.text, prompt
        assert got.token_ids == own.token_ids
    assert odd > 0  # some of the guide's answers are not its tokenizer's tokenization of them
