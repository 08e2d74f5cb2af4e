#!/usr/bin/env bash
# The GPU check (at most 8 minutes on one GPU): real configs on synthetic files in the real layouts;
# writes OUT/gpu_check.json and OUT/gpu_check.md (see benchmarks/gpu_check.py).
# Usage: bash scripts/gpu_check.sh [OUT] [--cpu]     (OUT defaults to $OUT, else output/gpu_check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { make install >&2 && PY=.venv/bin/python; }
out=${1:-${OUT:-output/gpu_check}}
shift || true
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py --out "$out" "$@"
