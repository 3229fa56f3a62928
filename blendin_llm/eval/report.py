"""Tables, plots (matplotlib PNG) and an HTML report of an evaluation run's records.

from blendin_llm.eval.report import write_report
write_report(records, "runs/eval")   # summary.md, summary.json, plots/*.png, report.html
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from .metrics import risk_coverage
from .runner import auroc, feature, format_baselines, format_table, summarize

#: the baselines drawn next to the score in the plots (the rest are in the tables)
PLOTTED = ("norm_prob", "min_prob", "mean_negentropy", "base_norm_prob")


def roc_points(scores: Sequence[float], correct: Sequence[bool]) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) for every threshold, from strict to loose."""
    pos = sum(1 for c in correct if c)
    neg = len(correct) - pos
    if not pos or not neg:
        return []
    pts, tp, fp = [(0.0, 0.0)], 0, 0
    pairs = sorted(zip(scores, correct), key=lambda x: -x[0])
    for i, (s, c) in enumerate(pairs):
        tp += bool(c)
        fp += not c
        if i + 1 == len(pairs) or pairs[i + 1][0] != s:
            pts.append((fp / neg, tp / pos))
    return pts


def calibration_bins(
    scores: Sequence[float], correct: Sequence[bool], bins: int = 5
) -> list[tuple[float, float, int]]:
    """(mean score, accuracy, count) per equal-width score bin in [0, 1]."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [
            (s, c) for s, c in zip(scores, correct) if lo <= s < hi or (b == bins - 1 and s == 1)
        ]
        if sel:
            out.append(
                (sum(s for s, _ in sel) / len(sel), sum(c for _, c in sel) / len(sel), len(sel))
            )
    return out


def plot_all(records: Sequence[dict], rows: Sequence[dict], out: Path) -> list[Path]:
    """Four PNGs: accuracy per strategy, accuracy vs intervention rate, reliability ROC and
    calibration, and risk-coverage per task. Returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    paths = []

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(strategies), 3.6))
    width = 0.8 / max(1, len(tasks))
    for t_i, task in enumerate(tasks):
        acc = [
            next((r["accuracy"] or 0 for r in rows if r["task"] == task and r["strategy"] == s), 0)
            for s in strategies
        ]
        ax.bar([i + t_i * width for i in range(len(strategies))], acc, width, label=task)
    ax.set_xticks([i + width * (len(tasks) - 1) / 2 for i in range(len(strategies))])
    ax.set_xticklabels(strategies, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("accuracy per strategy")
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    markers = "osD^v<>px*"
    for t_i, task in enumerate(tasks):
        for r in rows:
            if r["task"] == task and r["accuracy"] is not None:
                ax.scatter(
                    r["intervention_rate"],
                    r["accuracy"],
                    marker=markers[t_i % 10],
                    color=f"C{t_i % 10}",
                    label=task if r["strategy"] == strategies[0] else None,
                )
                ax.annotate(
                    r["strategy"],
                    (r["intervention_rate"], r["accuracy"]),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    ax.axvline(0.2, color="grey", ls=":", lw=1)
    ax.set_xlabel("mean intervention rate")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8)
    ax.set_title("accuracy vs intervention rate (dotted: 20 %)")
    fig.tight_layout()
    paths.append(out / "accuracy_vs_intervention.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    scored = [r for r in records if r["correct"] is not None]
    y = [bool(r["correct"]) for r in scored]
    for name, vals in [("reliability score", [r["reliability"]["score"] for r in scored])] + [
        (b, [feature(r, b) for r in scored]) for b in PLOTTED
    ]:
        if any(v is None for v in vals):
            continue
        pts = roc_points(vals, y)
        if pts:
            a = auroc(vals, y)
            axes[0].plot(*zip(*pts), label=f"{name} (AUROC {a:.2f})")
    axes[0].plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    axes[0].set_xlabel("false positive rate")
    axes[0].set_ylabel("true positive rate")
    axes[0].set_title("ROC: predicting a correct answer (all tasks)", fontsize=9)
    axes[0].legend(fontsize=7)
    for task in tasks:
        rs = [r for r in scored if r["task"] == task]
        b = calibration_bins([r["reliability"]["score"] for r in rs], [r["correct"] for r in rs])
        if b:
            axes[1].plot([x[0] for x in b], [x[1] for x in b], marker="o", label=task)
    axes[1].plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    axes[1].set_xlabel("reliability score (bin mean)")
    axes[1].set_ylabel("accuracy in bin")
    axes[1].set_xlim(0, 1)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("calibration", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "reliability.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rs = [r for r in scored if r["task"] == task]
        yy = [bool(r["correct"]) for r in rs]
        for name, vals in [("score", [r["reliability"]["score"] for r in rs])] + [
            (b, [feature(r, b) for r in rs]) for b in PLOTTED
        ]:
            if rs and all(v is not None for v in vals):
                pts = risk_coverage(vals, yy)
                ax.plot(
                    [c for c, _ in pts],
                    [e for _, e in pts],
                    label=name,
                    lw=2 if name == "score" else 1,
                )
        ax.set_xlabel("coverage (share of answers kept)")
        ax.set_ylabel("error rate of kept answers")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"risk-coverage: {task}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "risk_coverage.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _trace_html(rec: dict) -> str:
    """The answer's tokens: plain when the base chose alone, tinted by alpha when blended."""
    trace = rec["reliability"].get("trace")
    if not trace:
        return html.escape(rec["text"])
    spans = []
    for e in trace:
        text = html.escape(e["text"]).replace("\n", "&#8629;<br>")
        if not text:
            continue
        tip = (
            f"#{e['index']} base top-1 {e['base_top1']:.2f}, p(base) {e['base_prob']:.2f}, "
            f"p {e['prob']:.2f}"
        )
        if e["source"] == "blend":
            a = e["alpha"] or 0.0
            tip += f", alpha {a:.2f}, p(guide) {(e['guide_prob'] or 0):.2f}"
            spans.append(
                f'<span class="b" style="background:rgba(230,120,20,{0.15 + 0.75 * a:.2f})"'
                f' title="{tip}">{text}</span>'
            )
        else:
            spans.append(f'<span title="{tip}">{text}</span>')
    return "".join(spans)


def write_html(
    records: Sequence[dict],
    rows: Sequence[dict],
    plots: Sequence[Path],
    path: Path,
    title: str = "blendin-llm evaluation",
    per_task: int = 6,
) -> None:
    strategies = list(dict.fromkeys(r["strategy"] for r in records))
    parts = [
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>"
        "body{font:14px sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
        ".tok{font-family:monospace;white-space:pre-wrap}.b{border-radius:2px}"
        ".ok{color:#070}.bad{color:#a00}</style>",
        f"<h1>{html.escape(title)}</h1><h2>Summary</h2><table><tr>",
    ]
    cols = [
        "task",
        "strategy",
        "n",
        "accuracy",
        "intervention_rate",
        "reliability",
        "flagged",
        "tokens_per_s",
        "auroc_score",
        "prr_score",
        "ece_score",
        "brier_score",
        "best_baseline",
    ]
    parts.append("".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for r in rows:
        cells = [
            r[c] if isinstance(r[c], (str, int)) else ("-" if r[c] is None else f"{r[c]:.2f}")
            for c in cols
        ]
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    for p in plots:
        data = base64.b64encode(Path(p).read_bytes()).decode()
        parts.append(f'<p><img alt="{p.name}" src="data:image/png;base64,{data}"></p>')
    parts.append(
        "<h2>Answers, token by token</h2><p>Plain: the base chose alone. Tinted: the "
        "guide was consulted; darker = larger alpha (guide weight). Hover a token for "
        "its numbers.</p>"
    )
    by_item: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        by_item.setdefault((r["task"], r["item_id"]), {})[r["strategy"]] = r
    shown: dict[str, int] = {}
    for (task, item_id), recs in by_item.items():
        if shown.get(task, 0) >= per_task:
            continue
        shown[task] = shown.get(task, 0) + 1
        first = next(iter(recs.values()))
        ref = first.get("answer") or first.get("label") or ""
        ref = ref.split("####")[-1].strip() if "####" in ref else ref
        parts.append(
            f"<h3>{html.escape(task)} {html.escape(item_id)}</h3><p>"
            f"{html.escape(first['question'])} <i>(reference: {html.escape(ref)})</i></p>"
            "<table><tr><th>strategy</th><th>answer</th><th>correct</th>"
            "<th>interv.</th><th>score</th></tr>"
        )
        for s in strategies:
            if s not in recs:
                continue
            r = recs[s]
            ok = {
                True: '<span class="ok">yes</span>',
                False: '<span class="bad">no</span>',
                None: "-",
            }[r["correct"]]
            rel = r["reliability"]
            parts.append(
                f"<tr><td>{html.escape(s)}</td><td class=tok>{_trace_html(r)}</td>"
                f"<td>{ok}</td><td>{rel['intervention_rate']:.2f}</td>"
                f"<td>{rel['score']:.2f}</td></tr>"
            )
        parts.append("</table>")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_report(
    records: Sequence[dict],
    out: str | Path,
    title: str = "blendin-llm evaluation",
    plots: bool = True,
) -> dict:
    """Write summary.md / summary.json / plots / report.html into ``out``; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    (out / "summary.md").write_text(
        format_table(rows) + "\n\nAUROC / PRR of the score and of "
        "each single-signal baseline:\n\n" + format_baselines(rows) + "\n"
    )
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    pngs = plot_all(records, rows, out / "plots") if plots and records else []
    write_html(records, rows, pngs, out / "report.html", title)
    return {"summary": out / "summary.md", "plots": pngs, "html": out / "report.html", "rows": rows}
