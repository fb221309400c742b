#!/usr/bin/env bash
# Create .venv with unireg and everything its tests and workflow need (idempotent).
# torch==2.13.0 comes first: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -r requirements.txt
# peer tools of benchmarks/peers.py (see benchmarks/requirements.txt for the --no-deps)
.venv/bin/python -m pip install -q -r benchmarks/requirements.txt
.venv/bin/python -m pip install -q --no-deps "antspyx==0.6.3"
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/unireg --version
