#!/usr/bin/env bash
# ECLARE (the self-supervised through-plane SR peer of issue #15) on the benchmark's 4x thick-slice slabs
# (benchmarks/sr_eclare.py prepare), on a lent GPU whose image has CUDA PyTorch: carry WORK with whl/ holding the
# wheels of eclare 1.0.1, radifox-utils 1.0.3, sigpy-lite 0.1.27, transforms3d 0.4.2 and nibabel (its scipy pin
# is not needed to run). Usage: [BUDGET=seconds PATCHES=n] bash benchmarks/sr_eclare.sh WORK; outputs in
# $OUT/eclare.tgz. Volumes are started until BUDGET seconds have passed.
set -e
work="${1:?usage: sr_eclare.sh WORK}"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$work"/whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p /tmp/eo
start=$(date +%s)
for f in "$work"/in/*.nii.gz; do
  [ $(( $(date +%s) - start )) -gt "${BUDGET:-300}" ] && { echo "budget reached before $f"; break; }
  t0=$(date +%s)
  python3 -c "from eclare.main import main; main()" --in-fpath "$f" --out-dir /tmp/eo --gpu-id 0 \
      --n-patches "${PATCHES:-262144}" --relative-slice-thickness 4 --relative-slice-profile-type rect 2>&1 \
      | grep -v "it/s" | tail -3
  echo "$(basename "$f") $(( $(date +%s) - t0 )) s"
done
tar czf "$OUT/eclare.tgz" -C /tmp/eo .
