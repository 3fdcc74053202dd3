"""Degradation models and their geometry, against hand-computed cases."""

import numpy as np
import pytest

from meddiffusion.errors import MeddiffError
from meddiffusion.sr.degradation import (
    data_consistency,
    degrade,
    high_res_affine,
    kspace_downsample,
    low_res_affine,
    thick_slice_downsample,
)


def test_thick_slices_are_means_of_consecutive_slices():
    volume = np.arange(2 * 2 * 8, dtype=np.float32).reshape(2, 2, 8)
    thick = thick_slice_downsample(volume, 4, axis=2)
    assert thick.shape == (2, 2, 2)
    assert thick[0, 0].tolist() == [1.5, 5.5]  # mean(0,1,2,3), mean(4,5,6,7)


def test_kspace_crop_keeps_constants_and_low_frequencies():
    assert np.allclose(kspace_downsample(np.full((8, 8, 3), 3.0), 2), 3.0)
    # a cosine below the new Nyquist limit survives sampled at every s-th voxel (voxel j <-> j*s)
    n, s = 32, 4
    x = np.arange(n)
    row = 2.0 + np.cos(2 * np.pi * 3 * x / n)
    volume = np.repeat(np.repeat(row[:, None, None], n, 1), 2, 2)
    low = kspace_downsample(volume, s)
    assert low.shape == (8, 8, 2)
    assert np.allclose(low[:, 0, 0], row[::s], atol=1e-5)


def test_kspace_crop_removes_frequencies_above_the_new_nyquist():
    n = 32
    x = np.arange(n)
    volume = np.repeat(np.repeat((2.0 + np.cos(2 * np.pi * 10 * x / n))[:, None, None], n, 1), 2, 2)
    assert np.allclose(kspace_downsample(volume, 4), 2.0, atol=1e-5)  # 10 cycles > 4 kept


def test_scale_that_does_not_fit_is_an_error():
    with pytest.raises(MeddiffError, match="does not fit"):
        kspace_downsample(np.zeros((30, 32, 4)), 4)
    with pytest.raises(MeddiffError, match="does not fit"):
        thick_slice_downsample(np.zeros((8, 8, 6)), 4)


def test_low_res_affines_follow_the_index_maps():
    affine = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    inplane = low_res_affine(affine, 4, "inplane")
    assert np.allclose(inplane[:3, 3], affine[:3, 3])  # same origin: LR voxel 0 is HR voxel 0
    assert np.allclose(inplane @ [1, 1, 1, 1], affine @ [4, 4, 1, 1])  # LR voxel j sits at HR voxel j*s
    through = low_res_affine(affine, 4, "through")
    assert np.allclose(through @ [0, 0, 0, 1], affine @ [0, 0, 1.5, 1])  # mean of HR slices 0..3
    for axis in ("inplane", "through"):
        assert np.allclose(high_res_affine(low_res_affine(affine, 4, axis), 4, axis), affine)


@pytest.mark.parametrize("axis", ["inplane", "through"])
def test_data_consistency_reproduces_the_measurement(axis):
    rng = np.random.default_rng(0)
    high = rng.random((32, 24, 16)).astype(np.float32)
    measured = degrade(high, 4, axis)
    output = rng.random(high.shape).astype(np.float32) * 2
    fixed = data_consistency(output, measured, 4, axis)
    assert np.abs(degrade(fixed, 4, axis) - measured).max() < 1e-5
    # consistency keeps what the measurement does not constrain: it changes the output, but not to the input
    assert not np.allclose(fixed, high)


@pytest.mark.parametrize("axis", ["inplane", "through"])
def test_physical_consistency_is_never_below_the_floor_and_nearly_consistent(real_crop, axis):
    """On a real volume: the plain projection leaves negative values around the head; the alternating projections
    end at or above the floor, stay within 1 % of the measurement, and are no further from the truth."""
    from meddiffusion.io import load_image
    from meddiffusion.sr.degradation import physical_consistency

    high = load_image(real_crop["t1ce"]).data[0].numpy()
    measured = degrade(high, 4, axis)
    output = np.repeat(measured, 4, axis=2) if axis == "through" else np.kron(measured, np.ones((4, 4, 1)))
    output = output + np.random.default_rng(0).normal(0, 0.1 * high.max(), output.shape)  # a model's errors
    plain = data_consistency(output.astype(np.float32), measured, 4, axis)
    assert plain.min() < 0
    physical, error = physical_consistency(output.astype(np.float32), measured, 4, axis)
    assert physical.min() >= measured.min() >= 0 and error < 0.01
    assert np.mean((physical - high) ** 2) <= np.mean((plain - high) ** 2)
