"""The ``blendin`` command line: generate, chat, evaluate, calibrate, serve, audit, and manage the
model presets. One module per command group; each parses its options, calls the library and renders
the result.

First contact matters here: every argument and every model source is checked before any model
loads; bad input ends with exit code 2 and one line on stderr that says what is wrong (``--debug``
adds the traceback); heavy modules (torch, transformers) are imported only by the commands that
load a model, so ``blendin --help`` answers at once.
"""

from __future__ import annotations

import sys
import traceback

from . import audit, decode, evaluate, models, serve  # noqa: F401  (they register the commands)
from .common import _one_line, app, state

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """The ``blendin`` entry point: bad input of any kind ends with exit code 2 and one line on
    stderr; an unexpected failure with exit code 1, one line, and the traceback with --debug."""
    try:
        from typer._click import exceptions as click  # typer 0.2x carries its own click
    except ImportError:  # older typer: click itself
        import click.exceptions as click  # type: ignore[no-redef]

    args = list(sys.argv[1:] if argv is None else argv)
    options = args[: args.index("--")] if "--" in args else args
    if "--debug" in options:  # accepted anywhere, not only before the command
        state.debug = True
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
        if state.debug:
            traceback.print_exception(exc)
        print(
            f"error: {_one_line(f'{type(exc).__name__}: {exc}')} (an unexpected failure; "
            "rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        rc = 1
    sys.exit(rc or 0)
