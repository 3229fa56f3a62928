"""What every ``blendin`` command shares: the typer apps, the consoles, ``--debug``, the one-line
errors, and the checks made before any model loads."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import typer
from rich.console import Console

from ..errors import BlendInError, ConfigError, GenerationArgumentError, PromptError

if TYPE_CHECKING:
    from ..llm import BlendedLLM

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Blend a small aligned guide model into a larger base model.",
)
models_app = typer.Typer(no_args_is_help=True, help="List, fetch and inspect model presets.")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)


class _State:
    """What the command line was asked for as a whole (``--debug`` anywhere)."""

    debug = bool(os.environ.get("BLENDINstate.debug"))


state = _State()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="on an error, show the full traceback too"),
) -> None:
    state.debug = state.debug or debug


def _one_line(text: object) -> str:
    """A message as one printable line: newlines folded, lone surrogates escaped."""
    return " ".join(str(text).split()).encode("utf-8", "backslashreplace").decode("utf-8")


def _fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    """Print one line ``error: ...`` on stderr (the traceback first with --debug) and exit."""
    if state.debug and isinstance(exc, BaseException):
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


def _check_text(
    what: str, value: str | None, error: type[BlendInError] = PromptError, required: bool = False
) -> None:
    """Text from the command line must be UTF-8: a byte that is not (decoded by Python as a lone
    surrogate) would fail deep inside the tokenizer."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start : e.end].encode(
            "utf-8",
            "surrogateescape"
            if all(0xDC80 <= ord(c) <= 0xDCFF for c in value[e.start : e.end])
            else "backslashreplace",
        )
        raise error(
            f"{what} is not valid UTF-8 text (bytes {bad!r} at character {e.start}); "
            "pass UTF-8 text"
        ) from None
    if required and not value.strip():
        raise error(f"{what} is empty; pass some text")


def _alpha(value: str) -> float | Literal["auto"]:
    if value == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"alpha must be 'auto' or a number in [0, 1], got {value!r}") from None


def _check_call(call: dict[str, Any]) -> None:
    """Check per-call options now (``-n 0``, a bad ``--top-p``, an empty ``--stop``), not after
    the models have loaded: every key that SamplingParams knows is validated by it."""
    from ..config import SamplingParams

    for s in call.get("stop") or ():
        _check_text("a stop string", s, GenerationArgumentError)
    known = SamplingParams.model_fields
    args: dict[str, Any] = {
        k: (tuple(v) if k == "stop" and v else v)
        for k, v in call.items()
        if k in known and v is not None
    }
    SamplingParams(**args)


def _build(
    base: str,
    guide: list[str] | None,
    strategy: str,
    gamma: float,
    alpha: str,
    system: str | None,
    call: dict[str, Any] | None = None,
) -> BlendedLLM:
    """Check the command line's text and per-call options, then build the blend
    (``blendin_llm.pairs.build_pair``, which checks every source before the first model
    loads)."""
    from ..pairs import build_pair

    _check_text("the system prompt", system)
    config_alpha = _alpha(alpha)
    _check_call(call or {})
    return build_pair(
        base,
        guide or None,
        strategy=strategy,
        gamma=gamma,
        alpha=config_alpha,
        system_prompt=system,
        quiet=not state.debug,
    )
