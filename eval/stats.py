"""Paired statistics between two methods evaluated on the same cases (scipy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from meddiffusion.errors import MeddiffError


def paired_comparison(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Compare paired scores ``a`` and ``b`` (difference = b - a).

    Returns the mean difference, its bootstrap 95 % CI (percentile method, resampling cases), the paired
    t-test and Wilcoxon signed-rank p-values, and Cohen's d_z (mean difference / sd of differences).
    Cases with NaN in either method are dropped (and counted).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise MeddiffError(f"paired comparison needs the same cases: {a.size} vs {b.size} values")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = b[keep] - a[keep]
    n = int(diff.size)
    if n < 2:
        raise MeddiffError(f"paired comparison needs at least 2 cases with finite values, got {n}")
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    sd = float(diff.std(ddof=1))
    out = {
        "n": n,
        "n_dropped": int((~keep).sum()),
        "mean_a": float(a[keep].mean()),
        "mean_b": float(b[keep].mean()),
        "mean_diff": float(diff.mean()),
        "ci95_low": float(np.percentile(boots, 2.5)),
        "ci95_high": float(np.percentile(boots, 97.5)),
        "t_pvalue": float(stats.ttest_rel(b[keep], a[keep]).pvalue) if sd > 0 else float("nan"),
        "wilcoxon_pvalue": float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0,
        "cohens_dz": float(diff.mean() / sd) if sd > 0 else float("nan"),
    }
    return out
