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
# MLX's venv, for tests/integration/test_mlx_engine.py, which skips saying why when MLX cannot be installed on this
# platform (unless LMFORGE_REQUIRE_MLX=1: .ci/run). Not installed when the only paths pytest is given are under
# tests/unit, which never run it; no path at all (the whole suite), or any other path, installs it. An argument
# that is no path on disk (an option's value, as in `-p no:cacheprovider`) counts for neither.
unit_only=""
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    tests/unit | tests/unit/*) unit_only="${unit_only:-yes}" ;;
    *) if [ -e "${arg%%::*}" ]; then unit_only=no; fi ;;
  esac
done
if [ "$unit_only" != yes ]; then
  LMFORGE_HOME="$LMFORGE_TEST_CACHE/home" .venv/bin/lmforge -q engine install mlx \
    || echo "MLX could not be installed here: tests/integration/test_mlx_engine.py will say so" >&2
fi

.venv/bin/python -m pytest "$@"
