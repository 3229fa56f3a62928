"""UQLM interop: white-box scores computed from ChatBlendIn's OpenAI-shaped log-probs equal the
reliability record's features of the same answer.

UQLM (cvs-health/uqlm) calls ``llm.ainvoke(messages, logprobs=True, top_logprobs=15)`` and reads
``response_metadata["logprobs"]["content"]``; its single-generation scorers are transcribed below
(normalized probability, min probability, mean/min top-K negentropy with the top-K renormalised,
probability margin). When UQLM itself is importable (the ``uq`` extra) the same comparison runs
through its ``WhiteBoxUQ``.
"""

import asyncio
import math

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import HumanMessage  # noqa: E402

from langchain_blendin import ChatBlendIn  # noqa: E402

K = 15


def uqlm_scores(content):
    """UQLM 0.6's white-box formulas over OpenAI-shaped ``logprobs.content``."""
    lps = [d["logprob"] for d in content]
    negs, margins = [], []
    for d in content:
        ps = [math.exp(t["logprob"]) for t in d["top_logprobs"]]
        total = sum(ps)
        te = -sum(p / total * math.log(p / total) for p in ps if p > 0)
        if len(ps) == K:
            negs.append(1 - te / math.log(K))
        ps = sorted(ps, reverse=True)
        margins.append(ps[0] - ps[1])
    return {"norm_prob": math.exp(sum(lps) / len(lps)), "min_prob": math.exp(min(lps)),
            "mean_negentropy": sum(negs) / len(negs), "min_negentropy": min(negs),
            "mean_margin": sum(margins) / len(margins)}


@pytest.mark.parametrize("kw", [dict(gamma=0.0), dict(gamma=0.6), dict(gamma=0.6, stop=["e"])])
def test_uqlm_scores_from_log_probs_equal_the_record(make_llm, kw):
    stop = kw.pop("stop", None)
    chat = ChatBlendIn(llm=make_llm(**kw), max_tokens=12, stop=stop)
    msg = asyncio.run(chat.ainvoke([HumanMessage("hello there")], logprobs=True, top_logprobs=K))
    content = msg.response_metadata["logprobs"]["content"]
    rel = msg.response_metadata["reliability"]
    # one entry per text token of the answer: an EOS or a stop string's tokens have none
    eos = msg.response_metadata["finish_reason"] == "stop" and not stop
    assert 0 < len(content) == rel["tokens"] - (1 if eos and len(content) < rel["tokens"] else 0)
    if stop:
        assert rel["unscored_tokens"] >= 0 and len(content) == rel["tokens"]
    assert all(len(d["top_logprobs"]) == K for d in content)
    ours = uqlm_scores(content)
    for name, value in ours.items():
        assert rel["features"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    if kw.get("gamma"):
        assert rel["interventions"] > 0  # the final (blended) distribution is what is scored


def test_uqlm_white_box_uq_if_installed(make_llm):
    uqlm = pytest.importorskip("uqlm", reason="UQLM is not installed (extra [uq])")
    chat = ChatBlendIn(llm=make_llm(gamma=0.6), max_tokens=10)
    wb = uqlm.WhiteBoxUQ(llm=chat, scorers=["normalized_probability", "min_probability",
                                            "mean_token_negentropy", "probability_margin"])
    res = asyncio.run(wb.generate_and_score(prompts=["hello there"])).to_df()
    msg = chat.invoke("hello there", logprobs=True, top_logprobs=K)
    f = msg.response_metadata["reliability"]["features"]
    assert res["normalized_probability"][0] == pytest.approx(f["norm_prob"], rel=1e-4)
    assert res["min_probability"][0] == pytest.approx(f["min_prob"], rel=1e-4)
