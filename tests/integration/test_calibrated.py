"""The calibrated score: fitting on hand-made feature vectors, calibration, the flag threshold,
profiles (round trip, refusal for another pair) and the metrics it is judged by."""

import json
import math
import random

import pytest

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec
from blendin_llm.score_model import ScoreModel, fingerprint
from blendin_llm.eval.calibration import choose_threshold, fit_score_model
from blendin_llm.eval.calibration import calibrate
from blendin_llm.config import load_profile
from blendin_llm.eval.datasets import load_dataset
from blendin_llm.errors import ConfigError
from blendin_llm.eval.runner import rescore, summarize
from blendin_llm.eval.metrics import auroc, brier, ece, prr, risk_coverage

pytest.importorskip("sklearn")


def synthetic(n, seed, w=(2.0, -1.5), b=0.3):
    """Answers whose correctness follows P(right) = sigmoid(b + w . x) exactly, with x two
    features (norm_prob, divergence_mean) ~ N(0, 1), plus a feature that carries nothing."""
    rng = random.Random(seed)
    rows, ys, ps = [], [], []
    for _ in range(n):
        x1, x2, noise = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)
        p = 1 / (1 + math.exp(-(b + w[0] * x1 + w[1] * x2)))
        rows.append({"norm_prob": x1, "divergence_mean": x2, "min_prob": noise})
        ys.append(rng.random() < p)
        ps.append(p)
    return rows, ys, ps


FEATS = ("norm_prob", "divergence_mean", "min_prob")


def test_fit_recovers_a_known_logistic_relation():
    rows, ys, _ = synthetic(4000, 0)
    m = fit_score_model(rows, ys, features=FEATS, calibration="platt")
    # coefficients on the original scale: coef / scale
    w = [c / s for c, s in zip(m.coef, m.scale)]
    a = m.calibration["a"]  # Platt rescales the logit; with a true logistic relation a ~ 1
    assert a == pytest.approx(1.0, abs=0.15)
    assert w[0] * a == pytest.approx(2.0, rel=0.15)
    assert w[1] * a == pytest.approx(-1.5, rel=0.15)
    assert abs(w[2] * a) < 0.15  # the feature that carries nothing gets ~0
    # and its probabilities are the true ones on new answers
    rows2, _, ps2 = synthetic(500, 1)
    err = sum(abs(m.predict(r) - p) for r, p in zip(rows2, ps2)) / len(ps2)
    assert err < 0.03


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_maps_scores_to_observed_frequencies(method):
    # a miscalibrated relation: the truth is sigmoid(3 x); the regression is fitted to it, the
    # calibration map must bring its output to the observed frequencies on held-out data
    rows, ys, _ = synthetic(3000, 2, w=(3.0, 0.0), b=-1.0)
    m = fit_score_model(rows, ys, features=FEATS, calibration=method)
    assert m.calibration["method"] == method
    rows2, ys2, _ = synthetic(3000, 3, w=(3.0, 0.0), b=-1.0)
    probs = [m.predict(r) for r in rows2]
    assert ece(probs, ys2) < 0.04
    # per bin, the mean score is the observed share of right answers
    for lo in (0.0, 0.2, 0.4, 0.6, 0.8):
        sel = [(p, y) for p, y in zip(probs, ys2) if lo <= p < lo + 0.2]
        if len(sel) > 150:
            assert sum(p for p, _ in sel) / len(sel) == pytest.approx(
                sum(y for _, y in sel) / len(sel), abs=0.06)


@pytest.mark.parametrize("target", ["precision=0.9", "recall=0.8"])
def test_threshold_meets_its_target_on_held_out_data(target):
    rows, ys, _ = synthetic(3000, 4)
    m = fit_score_model(rows, ys, features=FEATS, target=target)
    assert m.target == target and m.fit["threshold_on_fit"]["met"]
    rows2, ys2, _ = synthetic(4000, 5)
    probs = [m.predict(r) for r in rows2]
    kept = [y for p, y in zip(probs, ys2) if p >= m.threshold]
    wrong_flagged = [p < m.threshold for p, y in zip(probs, ys2) if not y]
    kind, goal = target.split("=")
    if kind == "precision":
        assert sum(kept) / len(kept) >= float(goal) - 0.02
    else:
        assert sum(wrong_flagged) / len(wrong_flagged) >= float(goal) - 0.02
    # the threshold is the least strict one that meets it (on the fit data's out-of-fold scores)
    lower = choose_threshold([0.1, 0.2, 0.3, 0.9], [False, True, False, True], "recall=1.0")
    assert lower["threshold"] == pytest.approx(0.9) and lower["met"]
    prec = choose_threshold([0.1, 0.2, 0.3, 0.9], [False, True, False, True], "precision=1.0")
    assert prec["threshold"] == pytest.approx(0.9) and prec["kept"] == 0.25
    never = choose_threshold([0.5, 0.5], [False, False], "precision=0.9")
    assert not never["met"] and never["threshold"] == 1.0  # unreachable: everything flagged


def test_fit_refuses_what_it_cannot_fit():
    rows, ys, _ = synthetic(50, 6)
    with pytest.raises(ConfigError, match="2 right and 2 wrong"):
        fit_score_model(rows, [True] * 49 + [False], features=FEATS)
    with pytest.raises(ConfigError, match="flag target"):
        fit_score_model(rows, ys, features=FEATS, target="accuracy=0.9")
    with pytest.raises(ConfigError, match="calibration"):
        fit_score_model(rows, ys, features=FEATS, calibration="beta")


def test_score_model_round_trips_as_plain_json():
    rows, ys, _ = synthetic(400, 7)
    for method in ("platt", "isotonic"):
        m = fit_score_model(rows, ys, features=FEATS, calibration=method,
                            fingerprints={"base": "a", "guides": ["b"]})
        text = json.dumps(m.to_dict())  # plain numbers and strings only
        back = ScoreModel.from_dict(json.loads(text))
        assert back == m
        assert all(back.predict(r) == m.predict(r) for r in rows[:50])
    # missing features are filled with their fit-data mean, not taken as 0
    assert m.predict({}) == m.predict(dict(zip(m.features, m.fill)))
    bad = m.to_dict()
    bad["coef"] = bad["coef"][:1]
    with pytest.raises(ConfigError, match="malformed"):
        ScoreModel.from_dict(bad)


def test_metrics_on_known_cases():
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.3, 0.7], [True, True]) is None
    assert prr([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == pytest.approx(1.0)
    assert prr([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) < 0
    assert prr([0.5] * 4, [False, False, True, True]) == pytest.approx(0.0)  # ties: random
    assert brier([1.0, 0.0], [True, True]) == 0.5
    assert ece([0.9] * 10, [True] * 9 + [False]) == pytest.approx(0.0)
    assert ece([0.9] * 10, [True] * 5 + [False] * 5) == pytest.approx(0.4)
    rc = risk_coverage([0.1, 0.9], [False, True])
    assert rc == [(1.0, 0.5), (0.5, 0.0)]


def test_rescore_applies_a_model_to_stored_records():
    rows, ys, _ = synthetic(300, 8)
    m = fit_score_model(rows, ys, features=FEATS, target="recall=0.8")
    recs = [{"task": "t", "strategy": s, "correct": y, "elapsed_s": 1.0, "tokens": 3,
             "reliability": {"strategy": s, "features": r, "tokens": 3, "score": 0.5,
                             "flagged": False, "intervention_rate": 0.0}}
            for r, y, s in zip(rows, ys, ["blendin", "base_only"] * 150)]
    out = rescore(recs, m)
    assert all(o["reliability"]["score"] == m.predict(r["reliability"]["features"])
               for o, r in zip(out, recs) if r["strategy"] == "blendin")
    assert all(o["reliability"]["score"] == 0.5 for o in out if o["strategy"] == "base_only")
    assert recs[0]["reliability"]["score"] == 0.5  # the input is not changed
    row = next(r for r in summarize(out) if r["strategy"] == "blendin")
    assert row["auroc_score"] > 0.75 and row["ece_score"] is not None
    assert set(row["baselines"]) >= {"norm_prob", "base_min_prob"}


# -- profiles on real (tiny) models ---------------------------------------------------------------
def _items(tmp_path):
    lines = [json.dumps({"prompt": f"what is {a} + {b}?", "answer": str(a + b)})
             for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 2), (9, 9), (4, 4), (8, 3)]]
    lines += [json.dumps({"prompt": p, "label": lab}) for p, lab in
              [("The quick brown fox", "safe"), ("I cannot help with", "unsafe"),
               ("how to kill a process", "safe"), ("hello there", "unsafe")]]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return load_dataset(p)


def test_profile_with_score_model_round_trips_and_is_refused_for_another_pair(
        make_llm, tmp_path, tok, base_model, guide2_model):
    llm = make_llm()
    ds = _items(tmp_path)
    # the tiny models' answers are rule-scored; make sure both classes occur for the fit
    cal = calibrate(llm, ds.items, max_new_tokens=4, gamma=0.4, flag_target="recall=0.5",
                    out=tmp_path / "run")
    ys = [r["correct"] for r in cal.records]
    if min(sum(ys), len(ys) - sum(ys)) < 2:
        pytest.skip("the tiny pair's answers are all right or all wrong here")
    sm = cal.score_model
    assert sm is not None and sm.fingerprints == {"base": fingerprint(llm.base),
                                                 "guides": [fingerprint(llm.guides[0])]}
    path = cal.save(tmp_path / "p.json")
    prof = load_profile(path)
    assert prof["score_model"] == sm
    assert prof["config"].reliability.score_model == sm
    again = BlendedLLM.from_profile(path, base=llm.base, guides=llm.guides)
    res = again.generate("what is 2 + 3?", max_new_tokens=4, strategy="blendin")
    rel = res.reliability
    assert rel.score_source == "profile" and rel.score == pytest.approx(sm.predict(rel.features))
    assert rel.threshold == sm.threshold and rel.flag_target == "recall=0.5"
    assert rel.flagged == (rel.score < sm.threshold)
    # base_only answers are not what the model was fitted on: the default score, said so
    other = again.generate("what is 2 + 3?", max_new_tokens=4, strategy="base_only")
    assert other.reliability.score_source.startswith("normalized_probability (profile fitted")
    # another guide: refused, with a message that says what to do; forced: applied
    stranger = ModelSpec(model=guide2_model, tokenizer=tok, prompt_format="raw", name="g2")
    with pytest.raises(ConfigError, match="another model pair.*blendin calibrate.*force"):
        BlendedLLM.from_profile(path, base=llm.base, guides=[stranger])
    forced = BlendedLLM.from_profile(path, base=llm.base, guides=[stranger], force=True)
    assert forced.generate("hi", max_new_tokens=2, strategy="blendin"
                           ).reliability.score_source == "profile"
    # the records of the fit are reused by a second run in the same directory
    again_cal = calibrate(llm, ds.items, max_new_tokens=4, gamma=0.4, flag_target="recall=0.5",
                          out=tmp_path / "run")
    assert again_cal.score_model.coef == sm.coef


def test_fingerprint_tells_models_apart(make_llm, tok, base_model, guide_model):
    llm = make_llm()
    a, b = fingerprint(llm.base), fingerprint(llm.guides[0])
    assert a != b
    same = BlendedLLM(ModelSpec(model=base_model, tokenizer=tok, prompt_format="raw", name="x"),
                      config=BlendConfig(strategy="base_only"))
    assert fingerprint(same.base) == a  # the same weights under another name


def test_cli_calibrate_fits_a_profile_and_eval_applies_it(tok, base_model, guide_model, tmp_path):
    from typer.testing import CliRunner

    from blendin_llm.cli import app
    from blendin_llm.eval.runner import read_records

    for name, model in (("base", base_model), ("guide", guide_model)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    models = ["--base", str(tmp_path / "base"), "--guide", str(tmp_path / "guide")]
    data = str(_items(tmp_path).items and tmp_path / "d.jsonl")

    def cli(*args):
        res = CliRunner().invoke(app, list(args))
        return res.exit_code, " ".join(res.output.split())

    code, text = cli("calibrate", data, *models, "--limit", "12", "--gamma", "0.4", "-n", "4",
                     "--flag-target", "recall=0.5", "--profile", str(tmp_path / "p.json"))
    assert code == 0, text
    prof = load_profile(tmp_path / "p.json")
    if prof["score_model"] is None:
        pytest.skip("the tiny pair's answers are all right or all wrong here")
    assert "out-of-fold" in text and "flag threshold" in text and "recall=0.5" in text
    code, text = cli("eval", data, *models, "--limit", "12", "--strategies", "blendin", "-n", "4",
                     "--profile", str(tmp_path / "p.json"), "--out", str(tmp_path / "ev"),
                     "--no-plots")
    assert code == 0, text
    assert "not held-out" in text  # the same items as the fit: the command says so
    recs = read_records(tmp_path / "ev")
    sm = prof["score_model"]
    assert all(r["reliability"]["score_source"] == "profile" for r in recs)
    assert all(r["reliability"]["score"] == pytest.approx(sm.predict(r["reliability"]["features"]))
               for r in recs)
    code, text = cli("calibrate", data, *models, "--flag-target", "f1", "--profile",
                     str(tmp_path / "q.json"))
    assert code == 2 and "precision=P" in text


def test_auto_selection_prefers_one_signal_when_the_others_carry_nothing():
    rng = random.Random(9)
    rows, ys = [], []
    for _ in range(300):
        x = rng.gauss(0, 1)
        rows.append({"min_prob": x, **{f: rng.gauss(0, 1) for f in ("norm_prob", "mean_margin",
                                                                    "divergence_mean",
                                                                    "alpha_mean")}})
        ys.append(rng.random() < 1 / (1 + math.exp(-2 * x)))
    m = fit_score_model(rows, ys, features=tuple(rows[0]), select="auto")
    assert m.fit["selected"] == "min_prob" and m.features == ("min_prob",)
    assert set(m.fit["oof_logloss_of_candidates"]) == {"all", *rows[0]}
    full = fit_score_model(rows, ys, features=tuple(rows[0]))
    assert full.fit["selected"] == "all" and len(full.features) == 5
