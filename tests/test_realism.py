"""Realism measures of painted lesions (issue #16) on the embedded real case: the real-vs-synthetic classifier
is at chance on two halves of one real set and near 1 on trivially different sets; seams are measured against
real tumour edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from meddiffusion.data.prepare import brain_normalise
from meddiffusion.eval.synthesis import edge_strength, interior_features, lesion_features, realism_auc, seam_ratio
from meddiffusion.io import load_image


@pytest.fixture(scope="module")
def flair(case_paths):
    image = brain_normalise(load_image(case_paths["flair"]).data[0].numpy().astype(np.float32))
    label = load_image(case_paths["label"], label=True).data[0].numpy() > 0
    return image, label


def _spheres(image: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Ball-shaped regions of healthy-looking brain (inside the brain, off the tumour's bounding box)."""
    rng = np.random.default_rng(seed)
    brain = ndimage.binary_erosion(image > 0, iterations=8)
    centres = np.argwhere(brain)
    grid = np.indices(image.shape)
    masks = []
    while len(masks) < n:
        c = centres[rng.integers(len(centres))]
        radius = rng.uniform(3, 6)
        box = tuple(slice(max(int(x - 7), 0), int(x + 8)) for x in c)
        mask = np.zeros(image.shape, bool)
        mask[box] = sum((g[box] - x) ** 2 for g, x in zip(grid, c, strict=True)) <= radius**2
        masks.append(mask)
    return masks


def test_the_classifier_is_at_chance_on_one_real_set_and_near_one_on_trivially_different_sets(flair):
    image, _ = flair
    masks = _spheres(image, 80, seed=0)
    features = np.stack([lesion_features(image, m) for m in masks])
    groups = [k % 10 for k in range(80)]
    half = realism_auc(features[:40], features[40:], groups[:40], groups[40:])
    assert 0.25 <= half <= 0.75
    # "painted" = the same regions made 50 % brighter inside with a hard edge: trivially told apart
    painted = []
    for m in masks[40:]:
        bright = image.copy()
        bright[m] *= 1.5
        painted.append(lesion_features(bright, m))
    different = realism_auc(features[:40], np.stack(painted), groups[:40], groups[40:])
    assert different >= 0.95


def test_seam_ratio_is_one_for_real_edges_and_above_one_for_a_hard_pasted_lesion(flair):
    image, tumour = flair
    assert seam_ratio([(image, tumour)], [(image, tumour)]) == pytest.approx(1.0)
    (mask,) = _spheres(image, 1, seed=3)
    pasted = image.copy()
    pasted[mask] = image[mask].mean() + 0.5  # a constant bright blob, cut in with no transition
    assert edge_strength(pasted, mask) > edge_strength(image, mask)
    assert seam_ratio([(pasted, mask)], [(image, tumour)]) > 1.0


def test_interior_features_see_the_lesion_alone(flair):
    """The interior features judge the painting: a changed surrounding leaves them as they are (the full features
    see it), a changed interior does not."""
    image, _ = flair
    (mask,) = _spheres(image, 1, seed=5)
    around = image.copy()
    around[ndimage.binary_dilation(mask, iterations=3) & ~mask] += 0.5
    assert np.array_equal(interior_features(around, mask), interior_features(image, mask))
    assert not np.allclose(lesion_features(around, mask), lesion_features(image, mask))
    inside = image.copy()
    inside[mask] += 0.5
    assert interior_features(inside, mask)[0] == pytest.approx(interior_features(image, mask)[0] + 0.5)
