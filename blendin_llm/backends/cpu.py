"""CPU specifics: which dtype ``ModelSpec(dtype="auto")`` means on a CPU, and the OpenMP thread
pools of the threads that hand work to the decoding thread (``release_thread_pool``).

bfloat16 halves the weights' memory and, on CPUs with native bf16 arithmetic (x86 ``avx512_bf16``
or ``amx_bf16``), decodes faster than float32: Gemma-3-270M runs at about 1.9x the float32 speed on
this project's CPU under transformers' own ``generate``. Elsewhere bf16 is emulated and slower, so
the rule is: bfloat16 when the CPU has native bf16 AND a one-time measurement (matrix products at
decoding shapes, float32 vs bfloat16) says it is faster; float32 otherwise. The measurement is
cached per (CPU, torch version) in the cache directory, so it runs once per machine.
``BLENDIN_CPU_DTYPE=float32|bfloat16`` overrides the rule.

Only the weights and the KV cache take the model's dtype: the backend returns float32 logits, so
blending, the softmax of mixed distributions, divergences and the reliability record stay float32.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

ENV = "BLENDIN_CPU_DTYPE"
_CHOICES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_FASTER = 1.15  # bf16 must be at least this much faster to be chosen


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX-512 BF16 or AMX BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def measure_speedup(size: int = 1024, rows: int = 8, repeats: int = 20) -> float:
    """float32 time / bfloat16 time of the matrix products of a decoding step (a few rows times a
    square weight), best of ``repeats``."""
    x = torch.randn(rows, size)
    w = torch.randn(size, 4 * size)

    def best(dtype: torch.dtype) -> float:
        a, b = x.to(dtype), w.to(dtype)
        a @ b  # warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)


def _cache_file() -> Path:
    from ..sources import cache_dir

    return Path(cache_dir()) / "cpu-dtype.json"


def _machine_key(flags: set[str]) -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    raw = json.dumps([model, sorted(flags), torch.__version__, os.cpu_count()])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def auto_cpu_dtype(flags: set[str] | None = None, cache: Path | None = None) -> torch.dtype:
    """The dtype ``"auto"`` means on this CPU (see the module's docstring).

    Args:
        flags: the CPU's feature flags (default: read from the system).
        cache: where the measured decision is kept (default: ``cpu-dtype.json`` in the cache
            directory); an unwritable place only means measuring again next time.

    Returns:
        ``torch.bfloat16`` or ``torch.float32``.
    """
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in _CHOICES:
            from ..errors import ConfigError

            raise ConfigError(f"{ENV} must be float32 or bfloat16, got {forced!r}")
        return _CHOICES[forced]
    flags = cpu_flags() if flags is None else flags
    if not native_bf16(flags):
        return torch.float32
    path = cache if cache is not None else _cache_file()
    key = _machine_key(flags)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key) if isinstance(known, dict) else None
    if not isinstance(entry, dict) or "speedup" not in entry:
        entry = {"speedup": round(measure_speedup(), 3)}
        known = known if isinstance(known, dict) else {}
        known[key] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass
    return torch.bfloat16 if entry["speedup"] >= _FASTER else torch.float32


@functools.cache
def _libgomp() -> Any | None:
    """The GNU OpenMP runtime that runs torch's CPU threads, when it is loaded and can pause
    (``omp_pause_resource_all``, OpenMP 5.0); None elsewhere (another runtime, not Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.rsplit(None, 1)[-1]
        if "/libgomp" in path:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                return None
            return lib if hasattr(lib, "omp_pause_resource_all") else None
    return None


def release_thread_pool() -> bool:
    """Let the calling thread's idle OpenMP worker threads go; True if a runtime was asked to.

    torch runs its CPU kernels on an OpenMP pool per calling thread. The thread that loaded the
    models (or ran any other torch work) keeps its pool after it hands decoding to the decoding
    thread, which has its own. With more OpenMP threads in the process than CPUs, GNU OpenMP stops
    spinning at its barriers and sleeps instead (its "throttled" wait), and every forward pass of
    the decoding thread paid for it: a batched step of a SmolLM2-135M-shaped model took 1.6x as
    long in bfloat16 and 1.3x in float32 on this project's 2-core machine (2 torch threads,
    ``benchmarks/bench_cpu_threads.py``). The loading thread releases its idle pool when it builds
    a ``BlendedLLM``, and a caller its own when it hands a request to the scheduler, so the
    decoding thread's is the only one; a caller's comes back by itself the next time it runs torch
    work. Nothing happens with one torch thread (no pool) or another OpenMP runtime.

    A thread that runs torch work on CPU but hands no request itself (a main thread that embedded
    documents, then lets worker threads call ``generate``) keeps its pool: call this in that thread
    when its torch work is done; otherwise every decoding step pays the slowdown above.
    """
    if torch.get_num_threads() <= 1:
        return False
    lib = _libgomp()
    if lib is None:
        return False
    lib.omp_pause_resource_all(1)  # omp_pause_soft: the calling thread's pool only
    return True
