#!/usr/bin/env bash
# A separate environment for the nnU-Net v2 peer (issue #14): nnunetv2 needs timm, hence torchvision, which does not
# import beside the CPU torch build the toolkit uses; so nnU-Net gets its own venv (torch 2.14.1 + torchvision
# 0.29.1, run on the CPU) and never touches the toolkit's. Usage: bash benchmarks/nnunet_env.sh [VENV_DIR]
set -euo pipefail
venv="${1:-$HOME/venvs/nnunet}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/pip" install -q "nnunetv2==2.8.1"
"$venv/bin/python" -c "import nnunetv2, torch; print('nnU-Net', nnunetv2.__file__, 'torch', torch.__version__)"
