"""Physical outputs of data consistency (issue #15 item 6): the plain k-space / slab-mean projection against the
alternating projections onto data consistency and the input's floor.

    python benchmarks/sr_physical.py [VOLUME]

VOLUME defaults to a validation volume (BraTS 2018 CBICA_ALU T1ce in ../shared/data; not one of the SR benchmark
volumes, so the number of rounds chosen on it is not chosen on the benchmark). For 4x in-plane (8 axial slices
through the middle) and 4x through-plane (an 80^3 block in the middle), the bicubic/linear
interpolation of the degraded input is projected both ways; printed: the fraction and minimum of negative voxels,
the remaining data-consistency error (max |degrade(output) - input| over the input's range), and the MSE to the
reference, for 1, 5, 20, 30 and 50 rounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from meddiffusion.io import load_image
from meddiffusion.sr.degradation import data_consistency, degrade, physical_consistency
from meddiffusion.sr.pipeline import SRPipeline, UpscaleOptions

VALIDATION = (
    Path(__file__).resolve().parents[2]
    / "shared/data/brats2018_deepbrainseg/Brats18_CBICA_ALU_1/Brats18_CBICA_ALU_1_t1ce.nii.gz"
)


def main(path: Path) -> None:
    volume = load_image(path).data[0].numpy()
    x, y, z = (n // 2 for n in volume.shape)
    cases = {
        "inplane": volume[:, :, z - 4 : z + 4],
        "through": volume[x - 40 : x + 40, y - 40 : y + 40, z - 40 : z + 40],
    }
    for axis, reference in cases.items():
        low = degrade(reference, 4, axis)
        options = UpscaleOptions(scale=4, axis=axis, data_consistency=False, progress=False)
        interpolated = SRPipeline.interpolation().upscale(low, np.eye(4), (1, 1, 1), options).volume
        plain = data_consistency(interpolated, low, 4, axis)
        print(
            f"{axis}: plain projection {np.mean(plain < 0):.1%} negative voxels (min {plain.min():.0f}), "
            f"MSE {np.mean((plain - reference) ** 2):.1f}"
        )
        for rounds in (1, 5, 20, 30, 50):
            physical, error = physical_consistency(interpolated, low, 4, axis, iterations=rounds)
            print(
                f"{axis}: {rounds:2d} rounds: min {physical.min():.1f}, consistency error {error:.2%}, "
                f"MSE {np.mean((physical - reference) ** 2):.1f}"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else VALIDATION)
