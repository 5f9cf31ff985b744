#!/usr/bin/env bash
# Set everything up, then run every quality gate and the whole test suite (boot tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff" >&2
python3 -m ruff check provision builders providers tests bench
echo "== mypy --strict" >&2
python3 -m mypy
echo "== pytest" >&2
python3 -m pytest -n 2 --timeout=900 "$@"
