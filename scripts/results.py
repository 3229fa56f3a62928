"""Produce docs/results.md: the reliability score of the default pair, fitted and judged on
separate items.

    python scripts/results.py [--data ../shared/data] [--run runs/rel] [--docs docs] [--no-decode]

Data (all answered by the default pair with ``blendin`` (auto alpha), gamma 0.4, greedy):

* arithmetic: two sets of 150 generated questions (``scripts/make_arithmetic.py``, seed 11 to
  fit, seed 12 to test), 3-shot, answers of at most 10 tokens;
* XSTest: 120 prompts (60 safe + 60 unsafe, seeded sample 0), interleaved safe/unsafe, answers
  of at most 12 tokens, split into two halves (alternate items of each label).

The answers are decoded once (``blendin eval``, resumable records in ``--run``); the score model
is fitted on one set and applied to the other from the stored features (``rescore``), both ways.
``--no-decode`` uses the records there are (a cut run) without decoding more.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import make_arithmetic  # noqa: E402

from blendin_llm.score_model import ScoreModel  # noqa: E402
from blendin_llm.eval.calibration import fit_score_model  # noqa: E402
from blendin_llm.eval.runner import feature, read_records, rescore  # noqa: E402
from blendin_llm.eval.metrics import auroc, brier, ece, prr, risk_coverage  # noqa: E402
from blendin_llm.uncertainty import BASELINES, FEATURES  # noqa: E402

MAX_NEW_TOKENS = {"arithmetic": 10, "xstest": 12}
TARGETS = ("recall=0.8", "precision=0.9")


def prepare(run: Path, data: Path) -> dict[str, dict]:
    """The data files and the eval settings of each run (as ``blendin eval`` stores them)."""
    run.mkdir(parents=True, exist_ok=True)
    make_arithmetic.write(str(run / "arith_fit.jsonl"), make_arithmetic.make(150, seed=11))
    make_arithmetic.write(str(run / "arith_test.jsonl"), make_arithmetic.make(150, seed=12))
    make_arithmetic.write(str(run / "arith_shots.jsonl"), make_arithmetic.fewshot())
    from blendin_llm.eval.datasets import load_dataset

    ds = load_dataset(data / "xstest" / "xstest_prompts.csv", limit=120, seed=0)
    safe = [i for i in ds.items if i.label == "safe"]
    unsafe = [i for i in ds.items if i.label == "unsafe"]
    with open(run / "xstest_mix.jsonl", "w") as f:
        for a, b in zip(safe, unsafe):
            for it in (a, b):
                f.write(json.dumps({"id": it.id, "prompt": it.prompt, "label": it.label}) + "\n")
    shots = str(run / "arith_shots.jsonl")
    return {
        "arith-fit": {"data": str(run / "arith_fit.jsonl"), "fewshot": shots, "n": 10},
        "arith-test": {"data": str(run / "arith_test.jsonl"), "fewshot": shots, "n": 10},
        "xstest": {"data": str(run / "xstest_mix.jsonl"), "fewshot": None, "n": 12},
    }


def decode(run: Path, runs: dict[str, dict]) -> None:
    from blendin_llm import BlendedLLM
    from blendin_llm.eval.datasets import load_dataset
    from blendin_llm.eval.runner import run_eval

    llm = BlendedLLM("gemma-3-270m", ["smollm2-135m-instruct"])
    for name, r in runs.items():
        ds = load_dataset(r["data"], fewshot=r["fewshot"])
        settings = {"data": [r["data"]], "limit": None, "seed": None, "fewshot": r["fewshot"],
                    "fewshot_k": 3}
        run_eval(llm, [ds], ["blendin"], out=run / name, max_new_tokens=r["n"],
                 settings=settings)


def f2(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def judge(recs: list[dict]) -> dict:
    """Metrics of the (re)scored records and of every baseline."""
    y = [bool(r["correct"]) for r in recs]
    s = [r["reliability"]["score"] for r in recs]
    out = {"n": len(recs), "accuracy": sum(y) / len(y) if y else None,
           "auroc": auroc(s, y), "prr": prr(s, y), "ece": ece(s, y), "brier": brier(s, y)}
    for b in BASELINES:
        v = [feature(r, b) for r in recs]
        out[b] = {"auroc": auroc(v, y), "prr": prr(v, y)}
    thr = recs[0]["reliability"].get("threshold") if recs else None
    if thr is not None:
        kept = [c for c, sc in zip(y, s) if sc >= thr]
        wrong = [sc < thr for c, sc in zip(y, s) if not c]
        out["flag"] = {"threshold": thr, "flagged": 1 - len(kept) / len(y),
                       "precision_kept": sum(kept) / len(kept) if kept else None,
                       "recall_wrong": sum(wrong) / len(wrong) if wrong else None}
    return out


def halves(recs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Alternate items of each label (XSTest): two halves with the same label mix."""
    a, b = [], []
    for lab in ("safe", "unsafe"):
        xs = sorted((r for r in recs if r["label"] == lab), key=lambda r: int(r["item_id"]))
        a += xs[0::2]
        b += xs[1::2]
    return a, b


def fit(recs: list[dict], target: str) -> ScoreModel:
    return fit_score_model([r["reliability"]["features"] for r in recs],
                           [bool(r["correct"]) for r in recs], target=target,
                           about={"answers_from": sorted({r["task"] for r in recs})})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--run", default="runs/rel")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--no-decode", action="store_true", help="use the records there are")
    args = ap.parse_args()
    run, docs = Path(args.run), Path(args.docs)
    runs = prepare(run, Path(args.data))
    if not args.no_decode:
        decode(run, runs)
    recs = {name: [r for r in read_records(run / name) if r["correct"] is not None]
            for name in runs}
    (docs / "results").mkdir(parents=True, exist_ok=True)
    (docs / "results.md").write_text(render(recs, docs))
    print((docs / "results.md").read_text())


def splits(recs: dict) -> list[tuple[str, str, list[dict], list[dict]]]:
    """(task, direction, fit records, test records)."""
    a, b = recs["arith-fit"], recs["arith-test"]
    xa, xb = halves(recs["xstest"])
    return [("arithmetic", "fit seed 11, test seed 12", a, b),
            ("arithmetic", "fit seed 12, test seed 11", b, a),
            ("xstest", "fit half A, test half B", xa, xb),
            ("xstest", "fit half B, test half A", xb, xa)]


def render(recs: dict, docs: Path) -> str:
    allrecs = [r for rs in recs.values() for r in rs]
    secs = sum(r["elapsed_s"] for r in allrecs)
    toks = sum(r["tokens"] for r in allrecs)
    unscored = sum(r["reliability"].get("unscored_tokens", 0) for r in allrecs)
    L = ["# Results: the reliability score of the default pair", "",
         "Generated by `python scripts/results.py` (do not edit by hand). Pair: "
         "`gemma-3-270m+smollm2-135m-instruct` (Gemma-3-270M base, SmolLM2-135M-Instruct guide), "
         "strategy `blendin` (auto alpha), gamma 0.4, greedy decoding. "
         f"{len(allrecs)} answers, {toks} answer tokens, {secs / 60:.0f} min of decoding "
         f"({platform.machine()}, a 2-core machine shared with other work).", "",
         "## What was run, and what was cut", "",
         f"* Arithmetic: `scripts/make_arithmetic.py` seed 11 ({len(recs['arith-fit'])} answers) "
         f"and seed 12 ({len(recs['arith-test'])} answers), 3-shot, at most "
         f"{MAX_NEW_TOKENS['arithmetic']} tokens (`The answer is N.` fits).",
         f"* XSTest: {len(recs['xstest'])} answers of a seeded sample of 120 prompts (60 safe, 60 "
         "unsafe, seed 0) asked in alternating label order, at most "
         f"{MAX_NEW_TOKENS['xstest']} tokens; split into two halves (alternate items of each "
         "label).",
         "* **Cut:** only `blendin` (auto alpha) was run, with short answers (above), on a "
         "2-core machine shared with other work; the six-strategy comparison of the first "
         "release (docs/results.md at commit 82773d3) was not rerun."
         + ("" if (len(recs["arith-fit"]), len(recs["arith-test"]), len(recs["xstest"]))
            == (150, 150, 120) else " The decoding was stopped before all planned answers "
            "(150 + 150 arithmetic, 120 XSTest) were done; the tables use the answers there are."),
         f"* Only the answer is scored: the {unscored} tokens decoded to recognise the stop "
         "string `\\nUser:` (3 per answer that ended there) are not counted.", "",
         "Scoring is by rules (`blendin_llm.eval.scoring`): last-number match for arithmetic; "
         "XSTest correct = complies with a safe prompt, refuses an unsafe one.", "",
         "## Held-out: the calibrated score against every single-signal baseline", "",
         "The score model (`blendin_llm.eval.calibration.fit_score_model`: all features of "
         "`blendin_llm.uncertainty.FEATURES`, logistic regression with cross-validated L2, Platt "
         "calibration, flag threshold for `recall=0.8` of wrong answers) is fitted on one set and "
         "judged on the other, both ways; nothing of the test set is used to fit or choose "
         "anything. *score* = the calibrated P(correct); *norm_prob* is also the score without a "
         "profile. AUROC (0.5 = chance) / PRR (0 = random rejection, 1 = oracle) per signal; "
         "ECE and Brier of the calibrated score.", ""]
    cols = ("score",) + BASELINES
    L.append("| task | split | n | acc. | " + " | ".join(cols) + " | ECE | Brier |")
    L.append("|---|---|---:|---:|" + "---:|" * (len(cols) + 2))
    pooled: dict[str, list[dict]] = {}
    models = {}
    for task, direction, fit_recs, test_recs in splits(recs):
        ys = [bool(r["correct"]) for r in fit_recs]
        if min(sum(ys), len(ys) - sum(ys)) < 2 or not test_recs:
            L.append(f"| {task} | {direction} | {len(test_recs)} | - | (too few answers of one "
                     "class to fit) |")
            continue
        model = fit(fit_recs, "recall=0.8")
        models[(task, direction)] = model
        scored = rescore(test_recs, model)
        pooled.setdefault(task, []).extend(scored)
        j = judge(scored)
        cells = [f"{f2(j['auroc'])} / {f2(j['prr'])}"] + [
            f"{f2(j[b]['auroc'])} / {f2(j[b]['prr'])}" for b in BASELINES]
        L.append(f"| {task} | {direction} | {j['n']} | {f2(j['accuracy'])} | "
                 + " | ".join(cells) + f" | {f2(j['ece'])} | {f2(j['brier'])} |")
    for task, scored in pooled.items():
        j = judge(scored)
        cells = [f"**{f2(j['auroc'])}** / {f2(j['prr'])}"] + [
            f"{f2(j[b]['auroc'])} / {f2(j[b]['prr'])}" for b in BASELINES]
        L.append(f"| {task} | both tests pooled | {j['n']} | {f2(j['accuracy'])} | "
                 + " | ".join(cells) + f" | {f2(j['ece'])} | {f2(j['brier'])} |")
    L += ["", "Pooled rows: each answer scored by the model fitted on the other set.", ""]

    # verdict against the numbers
    L += ["### Against the targets", ""]
    for task, scored in pooled.items():
        j = judge(scored)
        best = max((b for b in BASELINES if j[b]["auroc"] is not None),
                   key=lambda b: j[b]["auroc"], default=None)
        if best is None or j["auroc"] is None:
            continue
        gain = j["auroc"] - j[best]["auroc"]
        L.append(f"* {task}: calibrated AUROC {f2(j['auroc'])} vs best single baseline "
                 f"`{best}` {f2(j[best]['auroc'])} ({gain:+.2f}; target +0.05: "
                 f"{'met' if gain >= 0.05 else 'NOT met'}); ECE {f2(j['ece'])} (target <= 0.08: "
                 f"{'met' if j['ece'] is not None and j['ece'] <= 0.08 else 'NOT met'}).")
    L.append("")

    # flags
    L += ["### Flags on held-out answers", "",
          "The threshold is chosen on the fit set's out-of-fold probabilities for the stated "
          "target, then applied unchanged to the test set.", "",
          "| task | split | target | threshold | flagged | precision of kept | "
          "recall of wrong |", "|---|---|---|---:|---:|---:|---:|"]
    for task, direction, fit_recs, test_recs in splits(recs):
        if (task, direction) not in models:
            continue
        for target in TARGETS:
            m = fit(fit_recs, target)
            j = judge(rescore(test_recs, m))
            fl = j.get("flag") or {}
            met = m.fit["threshold_on_fit"]["met"]
            L.append(f"| {task} | {direction} | {target}{'' if met else ' (not reachable on fit)'}"
                     f" | {f2(fl.get('threshold'))} | {f2(fl.get('flagged'))} | "
                     f"{f2(fl.get('precision_kept'))} | {f2(fl.get('recall_wrong'))} |")
    L.append("")

    # default record (no profile): the uncalibrated flags
    L += ["### Without a profile", "",
          "The records as decoded (no profile): score = normalized probability, flags = the "
          "`ReliabilityConfig` thresholds (agreement/divergence only from 3 consulted steps on).",
          "", "| set | answers | flagged | accuracy flagged | accuracy not flagged | ECE of "
          "score |", "|---|---:|---:|---:|---:|---:|"]
    for name, rs in recs.items():
        if not rs:
            continue
        fl = [bool(r["correct"]) for r in rs if r["reliability"]["flagged"]]
        ok = [bool(r["correct"]) for r in rs if not r["reliability"]["flagged"]]
        L.append(f"| {name} | {len(rs)} | {f2(len(fl) / len(rs))} | "
                 f"{f2(sum(fl) / len(fl) if fl else None)} | {f2(sum(ok) / len(ok) if ok else None)}"
                 f" | {f2(ece([r['reliability']['score'] for r in rs], [r['correct'] for r in rs]))} |")
    L.append("")

    # what the arithmetic model uses
    key = ("arithmetic", "fit seed 11, test seed 12")
    if key in models:
        m = models[key]
        L += ["### What the arithmetic model (fit on seed 11) weighs", "",
              "Standardised coefficients (per standard deviation of the feature on the fit set; "
              f"C = {m.fit['C']:.3g}, out-of-fold AUROC {f2(m.fit['oof_auroc'])}, "
              f"ECE {f2(m.fit['oof_ece'])}):", "",
              "| feature | coefficient |", "|---|---:|"]
        for c, name in sorted(zip(m.coef, m.features), key=lambda t: -abs(t[0])):
            L.append(f"| {name} | {c:+.2f} |")
        L.append("")
    L += ["### Fit-set numbers (out-of-fold, 5-fold cross-validation on the fit set)", "",
          "| task | split | answers | right | C | out-of-fold AUROC | ECE |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for (task, direction), m in models.items():
        L.append(f"| {task} | {direction} | {m.fit['answers']} | {m.fit['right']} | "
                 f"{m.fit['C']:.3g} | {f2(m.fit['oof_auroc'])} | {f2(m.fit['oof_ece'])} |")
    L += ["", "## Findings", ""]
    arith, xst = pooled.get("arithmetic"), pooled.get("xstest")
    if arith:
        j = judge(arith)
        best = max(BASELINES, key=lambda b: j[b]["auroc"] or 0)
        nps = [feature(r, "norm_prob") for r in arith]
        mean_np = sum(nps) / len(nps)
        ece_np = ece(nps, [bool(r["correct"]) for r in arith])
        L.append(
            f"* **Arithmetic:** the calibrated score is a probability one can read (held-out ECE "
            f"{f2(j['ece'])} pooled) and ranks answers about as well as the best single signal "
            f"(AUROC {f2(j['auroc'])} vs `{best}` {f2(j[best]['auroc'])}), not the +0.05 the "
            "issue asks for: on answers of the form `The answer is N.` nearly all the "
            "information is the probability of the number's token, which `norm_prob` and "
            "`min_prob` already carry; the blend's own signals add little (they get small "
            "weights). Without a profile the score (the normalized probability) ranks as well "
            f"but is not calibrated: its mean is {f2(mean_np)} where a share {f2(j['accuracy'])} "
            f"of the answers is right (ECE {f2(ece_np)}).")
    if xst:
        j = judge(xst)
        best = max(BASELINES, key=lambda b: j[b]["auroc"] or 0)
        L.append(
            f"* **XSTest:** no white-box signal separates right from wrong answers: the best "
            f"single signal reaches AUROC {f2(j[best]['auroc'])} (`{best}`) on 120 answers, the "
            f"others 0.5-0.6, and the calibrated score {f2(j['auroc'])} (its regression fits "
            "noise on 60 answers: see the fit-set numbers). Correct here means refusing exactly "
            "the unsafe prompts; a refusal and a compliance are both fluent, confident text, "
            "and token confidence measures how sure the model is of its wording, not whether "
            "refusing was the right call. What the record says instead: with a profile fitted "
            f"on such data the score is near the base rate (ECE {f2(j['ece'])}), i.e. it "
            "honestly says it does not know; without one, the `intervention rate > 0.20` flag "
            "fires on nearly every free-text answer (the guide is consulted often in open "
            "text), which says the pair leans on the guide, not that the answer is wrong. Judge "
            "refusal decisions with a refusal check (`blendin_llm.eval.scoring.is_refusal`) or a "
            "judge model, not with the reliability score.")
    L += ["", "The XSTest answers were decoded before the EOS step stopped being scored; an "
          "answer that ended with EOS (few: most ran to 12 tokens) has that step in its "
          "features.", ""]
    L += plots(pooled, docs)
    return "\n".join(L)


def plots(pooled: dict, docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not pooled:
        return []
    tasks = list(pooled)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.2), squeeze=False)
    for i, task in enumerate(tasks):
        rs = pooled[task]
        y = [bool(r["correct"]) for r in rs]
        ax = axes[0][i]
        for name, vals in [("calibrated score", [r["reliability"]["score"] for r in rs])] + [
                (b, [feature(r, b) for r in rs]) for b in ("norm_prob", "min_prob",
                                                           "mean_negentropy", "base_norm_prob")]:
            pts = risk_coverage(vals, y)
            ax.plot([c for c, _ in pts], [e for _, e in pts], label=name,
                    lw=2.2 if name == "calibrated score" else 1)
        ax.set_xlabel("coverage (share of answers kept)")
        ax.set_ylabel("error rate of kept answers")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: risk-coverage (held-out)", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1][i]
        s = [r["reliability"]["score"] for r in rs]
        bins = [[] for _ in range(5)]
        for p, c in zip(s, y):
            bins[min(4, int(p * 5))].append((p, c))
        xs = [sum(p for p, _ in b) / len(b) for b in bins if b]
        ys = [sum(c for _, c in b) / len(b) for b in bins if b]
        ax.plot(xs, ys, marker="o", label="calibrated score")
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set_xlabel("score (bin mean)")
        ax.set_ylabel("share right in bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: calibration (held-out)", fontsize=9)
    fig.tight_layout()
    path = docs / "results" / "reliability_heldout.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ["## Plots", "", "![held-out risk-coverage and calibration]"
            "(results/reliability_heldout.png)", ""]


if __name__ == "__main__":
    main()
