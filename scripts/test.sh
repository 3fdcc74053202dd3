#!/usr/bin/env bash
# Install with the test, train and fl extras and run ruff and the test suite. pytest's exit code 5 (no tests) fails.
set -uo pipefail
cd "$(dirname "$0")/.."
MEDDIFF_EXTRAS="test,train,fl" bash scripts/install.sh || exit 1
py="${VIRTUAL_ENV:-$PWD/.venv}/bin/python"
"$py" -m ruff check . || exit 1
"$py" -m pytest -q -p no:cacheprovider tests
code=$?
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$code"
