"""The repository's test helpers (``tiny``: tiny random models; ``scripted``: a model that follows
instructions) on the path, and the core tests' settings: two torch threads, float32 on CPU."""

import os
import sys
from pathlib import Path

import torch

HELPERS = Path(__file__).resolve().parents[3] / "tests"
if not (HELPERS / "tiny.py").is_file():
    raise RuntimeError(f"these tests use blendin-llm's test helpers in {HELPERS}: run them from a "
                       "checkout of the blendin-llm repository")
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))

torch.set_num_threads(2)
os.environ.setdefault("BLENDIN_CPU_DTYPE", "float32")
