"""``blendin generate`` and ``blendin chat``: answers with their reliability report."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import TYPE_CHECKING, cast

import typer
from rich.table import Table
from rich.text import Text

from ..errors import BlendInError
from ..sources import DEFAULT_BASE
from .common import _build, _check_text, _errors, _one_line, app, out

if TYPE_CHECKING:
    from ..results import BlendResult, Reliability


def reliability_table(rel: Reliability) -> Table:
    t = Table(title="reliability", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    verdict = Text("FLAGGED", style="bold red") if rel.flagged else Text("ok", style="bold green")
    t.add_row("verdict", verdict)
    if rel.score_source == "profile":
        t.add_row(
            "score",
            f"{rel.score:.2f}  (calibrated P(correct); flagged below "
            f"{rel.threshold:.2f}, chosen for {rel.flag_target})",
        )
    else:
        t.add_row(
            "score",
            f"{rel.score:.2f}  ({rel.score_source.replace('_', ' ')}, "
            "uncalibrated: `blendin calibrate` fits a profile)",
        )
    t.add_row("strategy", rel.strategy)
    t.add_row(
        "tokens / interventions",
        f"{rel.tokens} / {rel.interventions} "
        f"({rel.intervention_rate:.0%})"
        + (
            f", {rel.unscored_tokens} stop-string token(s) not scored"
            if rel.unscored_tokens
            else ""
        ),
    )

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    t.add_row("mean alpha", f(rel.mean_alpha))
    t.add_row(
        "agreement top-1 / top-k",
        f"{f(rel.agreement_top1)} / {f(rel.agreement_topk)} (k={rel.agreement_k})",
    )
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
        t.add_row(
            str(e.index),
            repr(e.text),
            e.source,
            a,
            f"{e.base_top1:.2f}",
            f"{e.base_prob:.2f}",
            g,
            f"{e.prob:.2f}",
            style=style,
        )
    return t


def _show(res: BlendResult, as_json: bool, trace: bool) -> None:
    if as_json:
        out.print_json(res.model_dump_json())
        return
    out.print(Text(res.text.strip() or "(empty answer)", style="bold"))
    out.print(
        f"[dim]finish: {res.finish_reason}"
        f"{' (' + repr(res.stop_sequence) + ')' if res.stop_sequence else ''}, "
        f"{res.usage.completion_tokens} tokens in {res.elapsed_s:.1f}s[/dim]"
    )
    if trace:
        out.print(trace_table(res.reliability))
    out.print(reliability_table(res.reliability))


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="the question or instruction"),
    base: str = typer.Option(DEFAULT_BASE, help="base model: preset, directory, hub id or .gguf"),
    guide: list[str] | None = typer.Option(None, help="guide model (repeat for several)"),
    strategy: str = typer.Option(
        "blendin", help="base_only, guide_only, nudging, blendin, ensemble"
    ),
    gamma: float = typer.Option(0.4, help="consult the guide when the base's top-1 prob < gamma"),
    alpha: str = typer.Option("auto", help="guide weight in [0, 1], or 'auto'"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0),
    top_k: int = typer.Option(0),
    seed: int | None = typer.Option(None),
    stop: list[str] | None = typer.Option(None, help="stop string (repeat for several)"),
    system: str | None = typer.Option(None, help="system prompt"),
    as_json: bool = typer.Option(False, "--json", help="print the whole result as JSON"),
    trace: bool = typer.Option(False, help="show each token's source and alpha"),
    repetition_penalty: float = typer.Option(
        1.0, help="transformers' repetition penalty (1 = off)"
    ),
    frequency_penalty: float = typer.Option(0.0, help="OpenAI's frequency penalty (0 = off)"),
    presence_penalty: float = typer.Option(0.0, help="OpenAI's presence penalty (0 = off)"),
    no_repeat_ngram_size: int = typer.Option(0, help="no n-gram of this size twice (0 = off)"),
) -> None:
    """Generate one blended answer and print its reliability report."""
    call = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop,
        trace=trace,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    with _errors():
        _check_text("the prompt", prompt, required=True)
        llm = _build(base, guide, strategy, gamma, alpha, system, call)
        res = llm.generate(prompt, **call)
    _show(res, as_json, trace)


@app.command()
def chat(
    base: str = typer.Option(DEFAULT_BASE),
    guide: list[str] | None = typer.Option(None),
    strategy: str = typer.Option("blendin"),
    gamma: float = typer.Option(0.4),
    alpha: str = typer.Option("auto"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    system: str | None = typer.Option(None),
) -> None:
    """Chat interactively; the reliability of each answer is shown after it. Empty line or
    /exit quits."""
    with _errors():
        llm = _build(
            base, guide, strategy, gamma, alpha, system, dict(max_new_tokens=max_new_tokens)
        )
    with contextlib.suppress(AttributeError, ValueError):  # a byte that is not UTF-8: see below
        cast(io.TextIOWrapper, sys.stdin).reconfigure(errors="surrogateescape")
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
        assert result is not None  # the last event carries it
        history.append({"role": "assistant", "content": result.text.strip()})
        out.print(reliability_table(result.reliability))
