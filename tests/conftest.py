import os

import pytest
import torch

from blendin_llm import BlendConfig, BlendedLLM, ModelSpec

from tiny import make_model, make_tokenizer

torch.set_num_threads(2)
# the mechanics tests compare float32 numbers (and their subprocesses inherit this); dtype="auto"
# picking bfloat16 on a CPU with native bf16 has its own tests (test_cpu_dtype.py)
os.environ.setdefault("BLENDIN_CPU_DTYPE", "float32")


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="session")
def chat_tok():
    return make_tokenizer(chat=True)


@pytest.fixture(scope="session")
def base_model(tok):
    return make_model(tok, seed=0)


@pytest.fixture(scope="session")
def guide_model(tok):
    return make_model(tok, seed=1, hidden=48)


@pytest.fixture(scope="session")
def guide2_model(tok):
    return make_model(tok, seed=2)


@pytest.fixture
def make_llm(base_model, guide_model, tok):
    """BlendedLLM over the tiny pair; both models read the prompt verbatim by default."""

    def make(config=None, guides=None, base_format="raw", guide_format="raw", **cfg):
        base = ModelSpec(model=base_model, tokenizer=tok, prompt_format=base_format, name="base")
        if guides is None:
            guides = [ModelSpec(model=guide_model, tokenizer=tok, prompt_format=guide_format,
                                name="guide")]
        return BlendedLLM(base, guides, config or BlendConfig(**cfg))

    return make


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/pgserver.py), torn down after. Outside CI
    the tests that need it skip when PostgreSQL is not installed; in CI (CI=true, where .ci/run
    installs it) they fail instead."""
    import os

    from pgserver import PostgresServer, bindir

    missing = None
    if bindir() is None:
        missing = "PostgreSQL is not installed (no initdb/pg_ctl): apt-get install postgresql"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed: pip install -e '.[postgres]'"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (CI must run the PostgreSQL tests)")
        pytest.skip(missing)
    server = PostgresServer(bindir()).start()
    yield server
    server.stop()
