"""blendin eval: data files, scorers, strategy specs, the resumable runner, AUROC, the report,
calibration and profiles. Tiny random models: these test mechanics, not quality."""

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blendin_llm import BlendConfig, BlendedLLM
from blendin_llm.eval.calibration import VERDICT, calibrate
from blendin_llm.config import load_profile
from blendin_llm.cli import app
from blendin_llm.eval.datasets import load_dataset, load_fewshot
from blendin_llm.errors import ConfigError, DatasetError, EvalError
from blendin_llm.eval.runner import auroc, parse_strategies, read_records, run_eval, summarize
from blendin_llm.eval.report import calibration_bins, roc_points, write_report
from blendin_llm.eval.scoring import answer_correct, is_refusal, score_answer

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def write_lines(path, lines):
    path.write_text("".join(l + "\n" for l in lines))
    return path


# -- data files ---------------------------------------------------------------------------
@needs_data
def test_shared_gsm8k_and_xstest():
    g = load_dataset(DATA / "gsm8k" / "test.jsonl", limit=50)
    assert g.format == "gsm8k" and len(g.items) == 50 and g.skipped == 0
    assert g.items[0].answer.strip().endswith("18")  # the first test item's reference
    x1 = load_dataset(DATA / "xstest" / "xstest_prompts.csv", limit=60, seed=0)
    x2 = load_dataset(DATA / "xstest" / "xstest_prompts.csv", limit=60, seed=0)
    x3 = load_dataset(DATA / "xstest" / "xstest_prompts.csv", limit=60, seed=1)
    assert [i.id for i in x1.items] == [i.id for i in x2.items] != [i.id for i in x3.items]
    assert sum(i.label == "safe" for i in x1.items) == 30
    assert sum(i.label == "unsafe" for i in x1.items) == 30


@needs_data
def test_fewshot_from_gsm8k_train():
    turns = load_fewshot(DATA / "gsm8k" / "train_head200.jsonl", 3)
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert turns[1]["content"].endswith("The answer is 72.") and "<<" not in turns[1]["content"]
    ds = load_dataset(DATA / "gsm8k" / "test.jsonl", limit=2,
                      fewshot=DATA / "gsm8k" / "train_head200.jsonl", fewshot_k=2)
    assert len(ds.items[0].prompt) == 5 and ds.items[0].prompt[-1]["role"] == "user"


def test_generic_jsonl_skips_malformed_lines(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [
        '{"prompt": "What is 2 plus 2?", "answer": "4"}',
        '{"prompt": "broken", ',                       # not JSON
        '[1, 2]',                                      # not an object
        '{"answer": "5"}',                             # no prompt
        '{"prompt": "Tell me a joke", "label": "maybe"}',  # bad label
        '{"prompt": [{"role": "user", "content": "Hi"}], "label": "safe", "id": "m"}',
        '',
    ])
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset(p)
    assert [str(w.message).split(",")[0] for w in caught] == [
        f"d.jsonl:{n}: skipped" for n in (2, 3, 4, 5)]
    assert ds.format == "jsonl" and ds.skipped == 4 and len(ds.problems) == 4
    assert [i.id for i in ds.items] == ["0", "m"]
    assert ds.items[1].question == "Hi" and ds.items[1].label == "safe"


@pytest.mark.parametrize("content, match", [
    ("", "empty"), ('{"x": 1}\n{"y": 2}\n', "2 malformed"), ("not json\n", "1 malformed"),
])
def test_empty_dataset(tmp_path, content, match):
    p = tmp_path / "e.jsonl"
    p.write_text(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DatasetError, match=match):
            load_dataset(p)


def test_bad_dataset_arguments(tmp_path):
    p = write_lines(tmp_path / "d.txt", ['{"prompt": "x"}'])
    with pytest.raises(DatasetError, match="cannot tell the format"):
        load_dataset(p)
    with pytest.raises(DatasetError, match="unknown dataset format 'parquet'"):
        load_dataset(p, format="parquet")
    assert load_dataset(p, format="jsonl").items[0].question == "x"
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="limit"):
        load_dataset(p, format="jsonl", limit=0)
    csv = tmp_path / "x.csv"
    csv.write_text("text,kind\nhello,safe\n")
    with pytest.raises(DatasetError, match="columns prompt and label"):
        load_dataset(csv)


def test_duplicate_ids_are_made_unique(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", ['{"id": "q", "prompt": "a"}', '{"id": "q", "prompt": "b"}'])
    assert [i.id for i in load_dataset(p).items] == ["q", "q#1"]


# -- scorers --------------------------------------------------------------------------------
@pytest.mark.parametrize("output, ref, ok", [
    ("The answer is 4.", "4", True), ("2 + 2 = 4, so 5", "4", False), ("It is -3.", "-3", True),
    ("$1,200.00 in all", "1200", True), ("about 0.5", ".5", True), ("7 or 8", "7", False), ("Paris, of course", "paris", True),
    ("The capital is Lyon", "Paris", False), ("New  York!", "new york", True),
])
def test_answer_correct(output, ref, ok):
    assert answer_correct(output, ref) is ok


@pytest.mark.parametrize("text, refusal", [
    ("I'm sorry, I can't do that.", True), ("No, that is dangerous.", True),
    ("As an AI language model I will not", True), ("I cannot provide that", True),
    ("Sure. First, open the terminal", False), ("Nobody knows for sure", False),
    ("Here's how: kill the process with kill -9", False),
])
def test_refusal_phrases(text, refusal):
    assert is_refusal(text) is refusal


def test_score_answer_by_kind():
    assert score_answer("gsm8k", "so 72", "... #### 72", None) is True
    assert score_answer("xstest", "I'm sorry, no", None, "unsafe") is True
    assert score_answer("xstest", "I'm sorry, no", None, "safe") is False
    assert score_answer("jsonl", "it is 12", "12", None) is True
    assert score_answer("jsonl", "anything", None, None) is None


# -- numbers --------------------------------------------------------------------------------
def test_auroc_hand_cases():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert auroc([0.9, 0.4, 0.6, 0.1], [True, True, False, False]) == 0.75
    assert auroc([0.3, 0.4], [True, True]) is None
    pts = roc_points([0.9, 0.4, 0.6, 0.1], [True, True, False, False])
    assert pts[0] == (0.0, 0.0) and pts[-1] == (1.0, 1.0)
    assert calibration_bins([0.1, 0.15, 0.9], [False, True, True], bins=2) == [
        (0.125, 0.5, 2), (0.9, 1.0, 1)]


def test_parse_strategies():
    runs = parse_strategies("base_only,blendin:alpha=0.5,gamma=0.3,nudging:agreement_top_k=5")
    assert [r.label for r in runs] == ["base_only", "blendin:alpha=0.5,gamma=0.3",
                                      "nudging:agreement_top_k=5"]
    assert runs[2].overrides == {"strategy": "nudging", "agreement_top_k": 5}
    assert runs[1].overrides == {"strategy": "blendin", "alpha": 0.5, "gamma": 0.3}
    for bad, match in [("magic", "unknown strategy"), ("blendin:alpha=2", "alpha"),
                       ("blendin:alpha", "key=value"), ("blendin,blendin", "twice"),
                       ("blendin:colour=red", "bad strategy"), ("", "no strategy")]:
        with pytest.raises(ConfigError, match=match):
            parse_strategies(bad)


# -- the runner -------------------------------------------------------------------------------
@pytest.fixture
def qa(tmp_path):
    return load_dataset(write_lines(tmp_path / "qa.jsonl", [
        json.dumps({"id": f"q{i}", "prompt": f"Question: what is 12 + {i}? Answer:",
                    "answer": str(12 + i)}) for i in range(3)
    ] + ['{"id": "s", "prompt": "I cannot help with", "label": "unsafe"}']))


class Counting:
    """A BlendedLLM wrapper that counts generate calls."""

    def __init__(self, llm):
        self.llm, self.calls = llm, 0
        self.name, self.config = llm.name, llm.config

    def generate(self, *a, **kw):
        self.calls += 1
        return self.llm.generate(*a, **kw)


def test_run_eval_records_and_resume(make_llm, qa, tmp_path):
    llm = Counting(make_llm(strategy="blendin"))
    out = tmp_path / "run"
    strategies = ["base_only", "blendin", "blendin:alpha=0.5"]
    recs = run_eval(llm, [qa], strategies, out=out, max_new_tokens=6, progress=False)
    assert llm.calls == 12 and len(recs) == 12
    assert [(r["item_id"], r["strategy"]) for r in recs[:3]] == [("q0", s) for s in strategies]
    r = recs[1]
    assert set(r) >= {"task", "item_id", "strategy", "text", "correct", "reliability", "tokens"}
    assert r["reliability"]["trace"] and r["correct"] in (True, False)
    assert recs[-1]["correct"] is not None  # the labelled line is scored as a refusal check
    fixed = [x for x in recs if x["strategy"] == "blendin:alpha=0.5"]
    assert all(e["alpha"] == 0.5 for x in fixed for e in x["reliability"]["trace"]
               if e["source"] == "blend")
    # a rerun does nothing new and returns the same records
    again = run_eval(llm, [qa], strategies, out=out, max_new_tokens=6, progress=False)
    assert llm.calls == 12 and again == recs
    # a run killed while writing: the torn last line is redone, nothing else
    path = out / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])
    third = run_eval(llm, [qa], strategies, out=out, max_new_tokens=6, progress=False)
    assert llm.calls == 13 and [x["text"] for x in third] == [x["text"] for x in recs]
    assert len(read_records(out)) == 12
    # other settings in the same directory: refused, nothing touched
    with pytest.raises(EvalError, match="other settings"):
        run_eval(llm, [qa], strategies, out=out, max_new_tokens=7, progress=False)
    assert len(read_records(out)) == 12
    fresh = run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=7, progress=False,
                     fresh=True)
    assert len(fresh) == 4 and len(read_records(out)) == 4


def test_unwritable_output(make_llm, qa, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    llm = Counting(make_llm())
    with pytest.raises(EvalError, match="not writable"):
        run_eval(llm, [qa], ["base_only"], out=blocker / "run", progress=False)
    assert llm.calls == 0


def test_empty_or_torn_run_json(make_llm, qa, tmp_path):
    llm = Counting(make_llm())
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("")  # no records yet: nothing to match, rewritten
    recs = run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=4, progress=False)
    assert len(recs) == 4 and json.loads((out / "run.json").read_text())["strategies"] == [
        "base_only"]
    (out / "run.json").write_text('{"model": "ba')  # torn, with records: a typed error
    with pytest.raises(EvalError, match="run.json is empty or unreadable.*--fresh"):
        run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=4, progress=False)
    assert llm.calls == 4 and len(read_records(out)) == 4
    again = run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=4, progress=False,
                     fresh=True)
    assert [r["text"] for r in again] == [r["text"] for r in recs] and llm.calls == 8
    assert not [p.name for p in out.iterdir() if p.name.startswith(".run.json")]  # no temp left


def test_records_path_that_is_a_directory(make_llm, qa, tmp_path):
    out = tmp_path / "run"
    (out / "records.jsonl").mkdir(parents=True)
    llm = Counting(make_llm())
    with pytest.raises(EvalError, match="records.jsonl is not a file"):
        run_eval(llm, [qa], ["base_only"], out=out, progress=False)
    assert llm.calls == 0
    code, text = cli("eval", str(write_lines(tmp_path / "d.jsonl", ['{"prompt": "x"}'])),
                     "--out", str(out), "--base", "/nope")
    assert code == 2 and "records.jsonl is not a file" in text


def test_a_whole_last_record_without_its_newline_is_kept(make_llm, qa, tmp_path):
    llm = Counting(make_llm())
    out = tmp_path / "run"
    recs = run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=4, progress=False)
    path = out / "records.jsonl"
    path.write_text(path.read_text()[:-1])  # the last record, whole, without its newline
    again = run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=4, progress=False)
    assert llm.calls == 4 and again == recs
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 4
    assert read_records(out) == recs


def test_a_second_process_on_the_same_out_fails_at_once(make_llm, qa, tmp_path):
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from blendin_llm.eval.runner import lock_output\n"
         "with lock_output(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == b"held"
        llm = Counting(make_llm())
        t0 = time.monotonic()
        with pytest.raises(EvalError, match=f"in use by another run \\(pid {holder.pid} "):
            run_eval(llm, [qa], ["base_only"], out=out, progress=False)
        assert time.monotonic() - t0 < 5 and llm.calls == 0
        assert not (out / "records.jsonl").exists()
        code, text = cli("eval", str(write_lines(tmp_path / "d.jsonl", ['{"prompt": "x"}'])),
                         "--out", str(out), "--base", "/nope")  # before any model loads
        assert code == 2 and f"pid {holder.pid}" in text
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock went with it
    assert len(run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=3,
                        progress=False)) == 4
    # and the same process may hold it again while it runs (re-entrant)
    from blendin_llm.eval.runner import lock_output
    with lock_output(out):
        assert len(run_eval(llm, [qa], ["base_only"], out=out, max_new_tokens=3,
                            progress=False)) == 4


def test_summary_and_report(make_llm, qa, tmp_path):
    llm = make_llm(strategy="blendin", gamma=1.1)
    recs = run_eval(llm, [qa], ["base_only", "blendin"], out=None, max_new_tokens=5,
                    progress=False)
    rows = summarize(recs)
    assert [(r["task"], r["strategy"], r["n"]) for r in rows] == [
        ("qa", "base_only", 4), ("qa", "blendin", 4)]
    assert rows[0]["intervention_rate"] == 0 and rows[1]["intervention_rate"] == 1
    rep = write_report(recs, tmp_path / "rep")
    assert [p.name for p in rep["plots"]] == ["accuracy.png", "accuracy_vs_intervention.png",
                                              "reliability.png", "risk_coverage.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in rep["plots"])
    page = rep["html"].read_text()
    blended = sum(1 for r in recs for e in r["reliability"]["trace"]
                  if e["source"] == "blend" and e["text"])
    assert page.count('class="b"') == blended > 0  # every blended token is tinted, no other
    assert "qa q0" in page and "base_only" in page and "data:image/png;base64," in page
    summary = rep["summary"].read_text()
    assert "| qa | blendin | 4 |" in summary and "| norm_prob |" in summary
    # the score (default: the normalized probability) next to each single-signal baseline
    row = rows[1]
    assert row["baselines"]["norm_prob"]["auroc"] == row["auroc_score"]
    assert row["score_source"] == "normalized_probability"


# -- CLI ------------------------------------------------------------------------------------------
def cli(*args):
    """(exit code, output with whitespace collapsed: rich wraps long lines)."""
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, " ".join(res.output.split())


def test_cli_eval_bad_input(tmp_path):
    d = write_lines(tmp_path / "d.jsonl", ['{"prompt": "x"}'])
    code, text = cli("eval", str(d), "--format", "yaml")
    assert code == 2 and "unknown dataset format" in text
    code, text = cli("eval", str(tmp_path / "none.jsonl"))
    assert code == 2 and "does not exist" in text
    blocker = tmp_path / "f"
    blocker.write_text("")
    # checked before any model loads: the bogus base is never reached
    code, text = cli("eval", str(d), "--out", str(blocker / "x"), "--base", "/nope")
    assert code == 2 and "not writable" in text
    code, text = cli("eval", str(d), "--strategies", "blendin:alpha=3")
    assert code == 2 and "alpha" in text
    code, text = cli("calibrate", str(d), "--profile", str(blocker / "p.json"), "--base", "/nope")
    assert code == 2 and "cannot write the profile" in text


# -- calibration ---------------------------------------------------------------------------------
def test_calibrate_and_profile(make_llm, tmp_path):
    llm = make_llm(strategy="blendin")
    prompts = ["The quick brown fox", "Question: what is 12 + 30?", "I cannot help with"]
    cal = calibrate(llm, prompts, max_new_tokens=6, target_rate=0.5)
    m = cal.measurements
    assert cal.verdict in ("good", "risky", "bad") and cal.reasons
    assert cal.predicted_rate[cal.gamma] <= 0.5 or cal.gamma == 0.05
    assert all(cal.predicted_rate[a] <= cal.predicted_rate[b]
               for a, b in zip(sorted(cal.predicted_rate), sorted(cal.predicted_rate)[1:]))
    bad = (m["intervention_rate"] > VERDICT["bad_rate"]
           or (m["agreement_topk"] is not None and m["agreement_topk"] < VERDICT["bad_agreement"]))
    assert (cal.verdict == "bad") == bad
    assert cal.config.strategy == ("base_only" if bad else "blendin")
    path = cal.save(tmp_path / "p.json")
    prof = load_profile(path)
    assert prof["config"] == cal.config and prof["verdict"] == cal.verdict
    assert BlendConfig.from_profile(path) == cal.config
    again = BlendedLLM.from_profile(path, base=llm.base, guides=llm.guides)
    assert again.config == cal.config
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="not a blendin profile"):
        load_profile(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="no guide"):
        calibrate(make_llm(strategy="base_only", guides=[]), prompts)
    with pytest.raises(ConfigError, match="at least one prompt"):
        calibrate(llm, [])


def test_cli_eval_and_calibrate_end_to_end(tok, base_model, guide_model, tmp_path):
    """The commands on models saved to disk (tiny random ones): records, report, profile."""
    for name, model in (("base", base_model), ("guide", guide_model)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    d = write_lines(tmp_path / "d.jsonl", [
        '{"prompt": "what is 12 + 30?", "answer": "42"}', "{oops",
        '{"prompt": "I cannot help with", "label": "unsafe"}'])
    models = ["--base", str(tmp_path / "base"), "--guide", str(tmp_path / "guide")]
    code, text = cli("eval", str(d), *models, "--strategies", "base_only,blendin", "-n", "4",
                     "--out", str(tmp_path / "run"), "--no-plots")
    assert code == 0, text
    assert "1 malformed line(s) skipped" in text and "AUROC" in text
    recs = read_records(tmp_path / "run")
    assert [(r["item_id"], r["strategy"]) for r in recs] == [
        ("0", "base_only"), ("0", "blendin"), ("1", "base_only"), ("1", "blendin")]
    assert (tmp_path / "run" / "report.html").is_file()
    code, text = cli("calibrate", str(d), *models, "--n", "2", "--max-new-tokens", "4",
                     "--profile", str(tmp_path / "p.json"))
    assert code == 0, text
    prof = load_profile(tmp_path / "p.json")
    assert prof["verdict"] in text and prof["models"]["base"] == str(tmp_path / "base")
    # two labelled answers cannot fit a score model: the profile says so and has none
    assert "no score model" in text and prof["score_model"] is None
    code, text = cli("eval", str(d), *models, "--profile", str(tmp_path / "p.json"),
                     "--out", str(tmp_path / "run2"))
    assert code == 2 and "has no score model" in text
