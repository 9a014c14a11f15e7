#!/usr/bin/env bash
# The GPU path in one go (issue 20): on a machine with one CUDA GPU, ~8 minutes, one JSON.
#   bash scripts/gpu-check.sh [--out gpu-check.json] [--data-dir DIR] [--dry-run] [--device cpu --smoke]
# Needs a Python with torch (CUDA build) and this repository's dependencies; noprop is imported from
# src/ (no install needed). See scripts/gpu_check.py for what is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" scripts/gpu_check.py "$@"
