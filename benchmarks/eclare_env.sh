#!/usr/bin/env bash
# A separate environment for the ECLARE peer (issue #15; Remedios et al., self-supervised through-plane SR that
# trains on the input volume itself): eclare 1.0.1 pins scipy==1.11.4, which the toolkit's scientific stack has
# moved past, so it gets its own venv with the CPU torch build. Usage: bash benchmarks/eclare_env.sh [VENV_DIR]
set -euo pipefail
venv="${1:-$HOME/venvs/eclare}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu --timeout 20 --retries 1 \
    || "$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q "eclare==1.0.1"
"$venv/bin/python" -c "import eclare, torch; print('ECLARE', eclare.__file__, 'torch', torch.__version__)"
