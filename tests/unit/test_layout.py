"""The package's layout: the core imports no evaluation, command-line, server or framework code,
nothing imports in a circle, and importing the core pulls in no optional heavy package."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import blendin_llm

ROOT = Path(blendin_llm.__file__).parent
OPTIONAL = ("blendin_llm.eval", "blendin_llm.cli", "blendin_llm.server")


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ("blendin_llm", *p.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _runtime_imports(tree: ast.AST) -> list[ast.AST]:
    """Import statements that run (those under ``if TYPE_CHECKING:`` do not), anywhere: at the
    top or inside functions."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                for c in child.orelse:
                    visit(c)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports at run time (at the top or inside functions)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != m:
                    graph[m].add(t)
    return graph


def test_nothing_imports_in_a_circle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path + [v])
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_core_imports_no_eval_cli_or_server_code():
    graph = import_graph()
    core = [m for m in graph if not m.startswith(OPTIONAL)]
    assert "blendin_llm.llm" in core and "blendin_llm.engine" in core
    bad = {m: sorted(t for t in graph[m] if t.startswith(OPTIONAL)) for m in core}
    assert {m: t for m, t in bad.items() if t} == {}
    # and the eval package is reached from the command line only
    users = {m for m, ts in graph.items() if any(t.startswith("blendin_llm.eval") for t in ts)}
    assert {m for m in users if not m.startswith(("blendin_llm.eval", "blendin_llm.cli"))} \
        == set()


def test_importing_the_core_pulls_in_no_optional_package():
    code = (
        "import sys, blendin_llm\n"
        "from blendin_llm import BlendedLLM, BlendConfig, RemoteModel, RawPrompt\n"
        "import blendin_llm.llm, blendin_llm.backends.remote\n"
        "heavy = ('matplotlib', 'sklearn', 'langchain_core', 'llama_index', 'fastapi', 'ray',"
        " 'blendin_llm.eval', 'blendin_llm.cli', 'blendin_llm.server')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module imported first, in a fresh interpreter: a module that needs another to be
    imported before it, or an optional package at import time, fails here."""
    names = sorted(m for m in modules() if not m.endswith("__main__"))
    code = ("import subprocess, sys\n"
            "bad = []\n"
            "for name in sys.argv[1:]:\n"
            "    r = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True,"
            " text=True)\n"
            "    if r.returncode: bad.append((name, r.stderr.strip().splitlines()[-1]))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
