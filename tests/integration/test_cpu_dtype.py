"""dtype="auto" on a CPU: bfloat16 only where native and measured faster; float32 logits always."""

import json

import pytest
import torch

from blendin_llm import ConfigError, ModelSpec
from blendin_llm.backends import cpu
from blendin_llm.backends.transformers import TransformersBackend


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(cpu.ENV, raising=False)


def test_without_native_bf16_auto_is_float32_and_nothing_is_measured(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "measure_speedup", lambda: pytest.fail("measured"))
    assert cpu.auto_cpu_dtype({"avx2", "fma"}, tmp_path / "d.json") is torch.float32
    assert not (tmp_path / "d.json").exists()


@pytest.mark.parametrize("speedup, expected", [(1.9, torch.bfloat16), (1.05, torch.float32)])
def test_native_bf16_is_measured_once_and_the_decision_cached(monkeypatch, tmp_path, speedup,
                                                               expected):
    calls = []
    monkeypatch.setattr(cpu, "measure_speedup", lambda: calls.append(1) or speedup)
    path = tmp_path / "d.json"
    flags = {"avx512f", "avx512_bf16"}
    assert cpu.auto_cpu_dtype(flags, path) is expected
    assert cpu.auto_cpu_dtype(flags, path) is expected
    assert calls == [1]  # the second call read the cache
    (entry,) = json.loads(path.read_text()).values()
    assert entry["speedup"] == speedup
    path.write_text("{not json")  # a damaged cache is measured again, not an error
    assert cpu.auto_cpu_dtype(flags, path) is expected and calls == [1, 1]


def test_the_environment_overrides_the_rule(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "measure_speedup", lambda: pytest.fail("measured"))
    monkeypatch.setenv(cpu.ENV, "bfloat16")
    assert cpu.auto_cpu_dtype(set(), tmp_path / "d.json") is torch.bfloat16
    monkeypatch.setenv(cpu.ENV, "float32")
    assert cpu.auto_cpu_dtype({"amx_bf16"}, tmp_path / "d.json") is torch.float32
    monkeypatch.setenv(cpu.ENV, "fp8")
    with pytest.raises(ConfigError, match="float32 or bfloat16"):
        cpu.auto_cpu_dtype(set(), tmp_path / "d.json")


def test_the_measurement_compares_real_products():
    assert cpu.measure_speedup(size=64, rows=2, repeats=3) > 0


@pytest.mark.parametrize("choice", ["float32", "bfloat16"])
def test_auto_loads_in_the_chosen_dtype_and_returns_float32_logits(tmp_path, monkeypatch, tok,
                                                                   base_model, choice):
    base_model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    monkeypatch.setenv(cpu.ENV, choice)
    be = TransformersBackend.load(ModelSpec(source=str(tmp_path / "m"), dtype="auto"))
    assert be.model.dtype == getattr(torch, choice)
    logits = be.forward(be.new_state(), tok("The quick brown fox").input_ids)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_a_caller_releases_its_idle_cpu_threads_when_it_hands_work_to_the_decoding_thread(tmp_path):
    """The loading thread's OpenMP workers would slow the decoding thread's (GNU OpenMP sleeps
    instead of spinning once the process has more of its threads than CPUs): BlendedLLM lets
    them go when it is built and when a caller submits a request. Counted as the process's OS
    threads, in a fresh interpreter with 2 torch threads."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, sys, time, torch
        sys.path.insert(0, "tests")
        torch.set_num_threads(2)
        from tiny import make_model, make_tokenizer
        from blendin_llm import BlendConfig, BlendedLLM, ModelSpec

        def threads():
            time.sleep(0.2)
            return len(os.listdir("/proc/self/task"))

        tok = make_tokenizer()
        base = ModelSpec(model=make_model(tok, seed=0), tokenizer=tok, prompt_format="raw")
        calm = threads()
        torch.ones(10_000_000).mul_(2)  # the caller's own torch work: its OpenMP pool
        busy = threads()
        llm = BlendedLLM(base, [], BlendConfig(strategy="base_only"))
        built = threads()
        torch.ones(10_000_000).mul_(2)
        llm.generate("hello", max_new_tokens=2)
        llm.scheduler.wait_stopped(30)  # the decoding thread (and its pool) ended too
        print(calm, busy, built, threads())
        """
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # no tokenizer threads in the count
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    calm, busy, built, after = map(int, out.stdout.split()[-4:])
    assert busy > calm  # the pool's worker thread exists
    assert built == calm and after == calm  # ... and is gone after construction and a request
