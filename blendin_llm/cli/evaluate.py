"""``blendin eval`` and ``blendin calibrate``: evaluation runs, reports and profiles."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from ..errors import BlendInError, ConfigError
from ..sources import DEFAULT_BASE, DEFAULT_GUIDE
from .common import _build, _check_call, _errors, app, err, out

if TYPE_CHECKING:
    from ..eval.datasets import Dataset

from ..eval.runner import DEFAULT_STRATEGIES as _DEFAULT_STRATEGIES


@app.command("eval")
def eval_cmd(
    data: list[str] = typer.Argument(
        ...,
        help="data files: GSM8K .jsonl, XSTest .csv, or a generic .jsonl (prompt, answer, label)",
    ),
    format: str = typer.Option("auto", "--format", help="auto, gsm8k, xstest, jsonl"),
    limit: int | None = typer.Option(None, help="items per data file"),
    seed: int | None = typer.Option(
        None,
        help="with --limit: a seeded sample (equal shares per label) instead of the first items",
    ),
    fewshot: str | None = typer.Option(
        None, help="file of exemplars (question/answer or prompt/answer JSONL)"
    ),
    fewshot_k: int = typer.Option(3, help="exemplars taken from --fewshot"),
    strategies: str = typer.Option(
        ",".join(_DEFAULT_STRATEGIES), help="comma-separated; name or name:key=value"
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n"),
    out_dir: str = typer.Option(
        "runs/eval", "--out", help="output directory (records.jsonl, report.html, plots/)"
    ),
    fresh: bool = typer.Option(False, help="discard finished records in --out instead of resuming"),
    plots: bool = typer.Option(True, help="write PNG plots"),
    base: str = typer.Option(DEFAULT_BASE),
    guide: list[str] | None = typer.Option(None),
    gamma: float = typer.Option(0.4),
    profile: str | None = typer.Option(
        None, help="apply this profile's calibrated score (from `blendin calibrate`)"
    ),
    force_profile: bool = typer.Option(
        False, help="apply --profile even if it was fitted for other models"
    ),
    batch_size: int = typer.Option(
        8,
        "--batch-size",
        help="answers decoded together (continuous batching; 1 = one after another)",
    ),
) -> None:
    """Compare strategies on local data: per-answer records, a summary table with accuracy,
    intervention rate, reliability (AUROC, PRR, ECE, Brier) next to single-signal baselines,
    plots and an HTML report. Resumable."""
    from ..eval.datasets import load_dataset
    from ..eval.report import write_report
    from ..eval.runner import lock_output, parse_strategies, run_eval

    settings = {
        "data": [str(d) for d in data],
        "limit": limit,
        "seed": seed,
        "fewshot": fewshot,
        "fewshot_k": fewshot_k,
    }
    # everything that can be checked is checked before the models load, --out included: it is
    # held (locked) for the whole run, so a second process writing it fails at once
    with _errors(), contextlib.ExitStack() as held:
        _check_call({"max_new_tokens": max_new_tokens})
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        runs = parse_strategies(strategies)
        sets = [
            load_dataset(d, format, limit=limit, seed=seed, fewshot=fewshot, fewshot_k=fewshot_k)
            for d in data
        ]
        for ds in sets:
            if ds.skipped:
                err.print(
                    f"[yellow]warning:[/yellow] {ds.name}: {ds.skipped} malformed line(s) skipped"
                )
        held.enter_context(lock_output(out_dir))
        prof = _load_score_profile(profile, force_profile, sets) if profile else None
        llm = _build(base, guide or [DEFAULT_GUIDE], "blendin", gamma, "auto", None)
        llm.scheduler.max_batch_size = max(llm.scheduler.max_batch_size, batch_size)
        if prof is not None:
            rel = llm.config.reliability.replace(score_model=prof)
            llm.config = llm.config.replace(reliability=rel)
            llm._check_config(llm.config)  # the pair check: refused for other models
        records = run_eval(
            llm,
            sets,
            [r.label for r in runs],
            out=out_dir,
            max_new_tokens=max_new_tokens,
            fresh=fresh,
            settings=settings,
            batch_size=batch_size,
        )
        rep = write_report(records, out_dir, plots=plots)
    eval_table(rep["rows"])
    out.print(f"[dim]records: {out_dir}/records.jsonl, report: {rep['html']}[/dim]")


def _load_score_profile(path: str, force: bool, sets: list[Dataset]) -> object:
    """The score model of a profile; warns when items to evaluate were used to fit it."""
    from ..config import load_profile

    model = load_profile(path, force=force)["score_model"]
    if model is None:
        raise BlendInError(
            f"the profile {path!r} has no score model: run `blendin calibrate` on "
            "labelled data to fit one"
        )
    fitted = {tuple(x) for x in (model.fit or {}).get("items") or []}
    seen = sum((it.task, it.id) in fitted for ds in sets for it in ds.items)
    if seen:
        err.print(
            f"[yellow]warning:[/yellow] {seen} of these items were used to fit the profile: "
            "its numbers on them are not held-out"
        )
    return model


def eval_table(rows: Sequence[dict]) -> None:
    def f(x: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if x is None else fmt.format(x)

    t = Table(title="evaluation", title_justify="left")
    for c in (
        "task",
        "strategy",
        "n",
        "accuracy",
        "interv. rate",
        "mean score",
        "flagged",
        "tok/s",
    ):
        t.add_column(c, justify="left" if c in ("task", "strategy") else "right")
    for r in rows:
        t.add_row(
            r["task"],
            r["strategy"],
            str(r["n"]),
            f(r["accuracy"]),
            f(r["intervention_rate"]),
            f(r["reliability"]),
            f(r["flagged"]),
            f(r["tokens_per_s"], "{:.1f}"),
        )
    out.print(t)
    t = Table(
        title="reliability score: right vs wrong answers (best single baseline by AUROC)",
        title_justify="left",
    )
    for c in ("task", "strategy", "AUROC", "PRR", "ECE", "Brier", "baseline", "AUROC", "PRR"):
        t.add_column(c, justify="left" if c in ("task", "strategy", "baseline") else "right")
    for r in rows:
        best = r.get("best_baseline")
        b = r["baselines"][best] if best else {"auroc": None, "prr": None}
        t.add_row(
            r["task"],
            r["strategy"],
            f(r["auroc_score"]),
            f(r["prr_score"]),
            f(r["ece_score"]),
            f(r["brier_score"]),
            best or "-",
            f(b["auroc"]),
            f(b["prr"]),
        )
    out.print(t)


@app.command()
def calibrate(
    data: str = typer.Argument(..., help="labelled data: any data file `blendin eval` reads"),
    format: str = typer.Option("auto", "--format"),
    limit: int | None = typer.Option(
        None, "--limit", "--n", help="items per data file (default: all), as for `blendin eval`"
    ),
    seed: int | None = typer.Option(
        None,
        help="with --limit: a seeded sample (equal shares per label) instead of the first items",
    ),
    fewshot: str | None = typer.Option(None, help="file of exemplars, as for `blendin eval`"),
    fewshot_k: int = typer.Option(3, help="exemplars taken from --fewshot"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n"),
    target_rate: float = typer.Option(0.20, help="intervention rate to stay under"),
    gamma: float | None = typer.Option(
        None, help="fix gamma (skips the base-only pass and the recommendation)"
    ),
    flag_target: str = typer.Option(
        "recall=0.8",
        help="what the flag threshold must reach on "
        "the fit data: precision=P (share of kept answers that are "
        "right) or recall=R (share of wrong answers flagged)",
    ),
    calibration: str = typer.Option(
        "auto", help="platt, isotonic or auto (isotonic from 500 answers on)"
    ),
    out_dir: str | None = typer.Option(
        None,
        "--out",
        help="keep the answers' records here "
        "(resumable; an eval run with the same settings is "
        "reused)",
    ),
    profile: str = typer.Option("blendin-profile.json", help="where to write the profile"),
    base: str = typer.Option(DEFAULT_BASE),
    guide: list[str] | None = typer.Option(None),
) -> None:
    """Judge a base/guide pair on labelled items (intervention rate, agreement, divergence, a
    verdict, recommended gamma and alpha) and fit its calibrated reliability score; writes a
    profile that BlendedLLM.from_profile and `blendin eval --profile` load."""

    from ..eval.calibration import calibrate as run_calibration
    from ..eval.datasets import load_dataset
    from ..score_model import parse_target

    settings = {
        "data": [str(data)],
        "limit": limit,
        "seed": seed,
        "fewshot": fewshot,
        "fewshot_k": fewshot_k,
    }
    with _errors(), contextlib.ExitStack() as held:
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        _check_call({"max_new_tokens": max_new_tokens})
        parse_target(flag_target)
        if calibration not in ("auto", "platt", "isotonic"):
            raise ConfigError(f"--calibration must be auto, platt or isotonic, got {calibration!r}")
        ds = load_dataset(
            data, format, limit=limit, seed=seed, fewshot=fewshot, fewshot_k=fewshot_k
        )
        if not Path(profile).resolve().parent.is_dir() or not os.access(
            Path(profile).resolve().parent, os.W_OK
        ):
            raise BlendInError(
                f"cannot write the profile to {profile!r}: its directory is "
                "missing or not writable; pass another --profile"
            )
        if out_dir is not None:
            from ..eval.runner import lock_output

            held.enter_context(lock_output(out_dir))
        llm = _build(base, guide or [DEFAULT_GUIDE], "blendin", 0.4, "auto", None)
        from rich.progress import Progress

        with Progress(transient=True) as prog:
            task = prog.add_task(
                "calibrating", total=(1 if gamma is not None else 2) * len(ds.items)
            )
            cal = run_calibration(
                llm,
                ds.items,
                max_new_tokens=max_new_tokens,
                target_rate=target_rate,
                gamma=gamma,
                flag_target=flag_target,
                calibration=calibration,
                out=out_dir,
                settings=settings,
                progress=lambda: prog.advance(task),
            )
        cal.save(profile)
    style = {"good": "bold green", "risky": "bold yellow", "bad": "bold red"}[cal.verdict]
    t = Table(title=f"calibration on {cal.prompts} items", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("verdict", Text(cal.verdict, style=style))
    for r in cal.reasons:
        t.add_row("why", r)
    t.add_row(
        "recommended", f"strategy {cal.config.strategy}, gamma {cal.gamma}, alpha {cal.alpha}"
    )
    for k, v in cal.measurements.items():
        t.add_row(k.replace("_", " "), "-" if v is None else f"{v:.3f}")
    sm = cal.score_model
    if sm is not None:
        fit, thr = sm.fit, sm.fit["threshold_on_fit"]

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        t.add_row(
            "score model",
            f"logistic regression (C={fit['C']:.3g}) + {fit['calibration']}"
            f" on {fit['answers']} answers ({fit['right']} right)",
        )
        t.add_row(
            "out-of-fold",
            f"AUROC {f(fit['oof_auroc'])}, Brier {f(fit['oof_brier'])}, ECE {f(fit['oof_ece'])}",
        )
        t.add_row(
            "flag threshold",
            f"{sm.threshold:.3f} for {sm.target}: on the fit data "
            f"precision {thr['precision']:.2f}, recall of wrong "
            f"{thr['recall']:.2f}, kept {thr['kept']:.0%}"
            + ("" if thr["met"] else " (target NOT reached)"),
        )
    else:
        t.add_row(
            "score model",
            Text(
                cal.no_score_model or "none: the items have no answers or labels to score",
                style="yellow",
            ),
        )
    out.print(t)
    out.print(f"[dim]profile: {profile} (BlendedLLM.from_profile, blendin eval --profile)[/dim]")
