#!/usr/bin/env bash
# The GPU check (benchmarks/device_check.py) as one command on a lent GPU machine whose image has CUDA PyTorch but
# not this package's other dependencies and no network. Prepare here, in the repository root (both folders are
# listed in .git/info/exclude and carried to the machine):
#   .whl/      wheels (cp312, manylinux) of diffusers, monai, torchio, nibabel, deprecated, humanize, cripser,
#              importlib_metadata (pip download --no-deps ...; the device README says how)
#   .devdata/  one BraTS case as {flair,t1,t1ce,t2,seg}.nii.xz (xz keeps it under the transfer limit) and
#              stub/SimpleITK/__init__.py, an import-only stand-in (TorchIO imports SimpleITK at start; its 50 MB
#              wheel does not fit the transfer, and the check reads volumes with nibabel)
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
rm -rf /tmp/pkg && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/pkg . >/dev/null
export PYTHONPATH=/tmp/pkg:/tmp/site:$PWD/.devdata/stub PYTHONUNBUFFERED=1
mkdir -p /tmp/case
python3 -c "import lzma,glob,os;[open('/tmp/case/'+os.path.basename(f)[:-3],'wb').write(lzma.decompress(open(f,'rb').read())) for f in glob.glob('.devdata/*.nii.xz')]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/device_check.py --case /tmp/case --out "${OUT:-/tmp/out}" "$@"
