#!/usr/bin/env bash
# Install meddiffusion (CPU): torch first from the pinned CPU wheel, so no CUDA packages are pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test]"
