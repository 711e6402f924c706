#!/usr/bin/env bash
# Creates .venv (if missing) and installs metaticket with its test tools into it. Safe to re-run.
# PYTHON selects the interpreter (default python3, >= 3.10). torch/torchvision are pinned by
# scripts/constraints.txt (the versions the benchmarks were measured with).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[dev]"
