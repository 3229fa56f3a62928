"""Test setup shared with the repository's tests: their helpers (tiny models, the scripted pair)
and float32 on CPU (subprocesses inherit it)."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_TESTS = HERE.parents[2] / "tests"
for p in (str(HERE), str(REPO_TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("BLENDIN_CPU_DTYPE", "float32")
