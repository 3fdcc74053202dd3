#!/usr/bin/env bash
# Install meddiffusion into a virtual environment, torch first so that no CUDA packages are pulled in.
#
#   bash scripts/install.sh            # into the active virtual environment, else into ./.venv (created)
#   MEDDIFF_EXTRAS=test bash scripts/install.sh
#
# A venv sidesteps PEP 668 (Debian/Ubuntu's system Python refuses pip installs). torch: on a machine without an
# NVIDIA GPU the CPU build, from PyTorch's CPU wheel index when it is reachable (a plain `pip install torch` on
# Linux is the multi-GB CUDA build); offline, whatever wheel pip can find (e.g. a local CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="torch==2.13.0"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || {
      echo "install.sh: 'python3 -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
      exit 1
    }
  fi
  py="$PWD/.venv/bin/python"
fi

if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$py" -m pip install -q "$TORCH"
  elif ! "$py" -m pip install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu --timeout 20 --retries 1; then
    echo "install.sh: PyTorch's CPU index not reachable; installing $TORCH from the configured index" >&2
    "$py" -m pip install -q "$TORCH"
  fi
fi
"$py" -m pip install -q -e ".[${MEDDIFF_EXTRAS:-train}]"
echo "installed; run: $(dirname "$py")/meddiff --help"
