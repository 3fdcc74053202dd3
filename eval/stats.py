"""Paired statistics between two methods evaluated on the same patients (scipy).

Each pair must be one patient (average repeated seeds per patient first: seeds on one patient are not
independent pairs). The 95 % interval of the mean difference is Student's t-interval over patients, honest for
the small numbers of patients this field has; a patient-level percentile bootstrap interval is added only from
``MIN_BOOTSTRAP`` patients on, where it stops being too narrow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from meddiffusion.errors import MeddiffError

MIN_BOOTSTRAP = 15


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Student's 95 % t-interval of the mean of ``values`` (one per patient; at least 2)."""
    values = np.asarray(values, dtype=float)
    half = float(stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
    return float(values.mean() - half), float(values.mean() + half)


def paired_comparison(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Compare paired scores ``a`` and ``b`` (difference = b - a), one pair per patient.

    Returns the mean difference with its t-interval (``ci95_low``/``ci95_high``), the paired t-test and Wilcoxon
    signed-rank p-values, Cohen's d_z (mean difference / sd of differences) and, with at least ``MIN_BOOTSTRAP``
    pairs, a bootstrap interval (``boot_ci95_low``/``boot_ci95_high``). Pairs with NaN are dropped (and counted).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise MeddiffError(f"paired comparison needs the same cases: {a.size} vs {b.size} values")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = b[keep] - a[keep]
    n = int(diff.size)
    if n < 2:
        raise MeddiffError(f"paired comparison needs at least 2 cases with finite values, got {n}")
    sd = float(diff.std(ddof=1))
    low, high = t_interval(diff)
    out = {
        "n": n,
        "n_dropped": int((~keep).sum()),
        "mean_a": float(a[keep].mean()),
        "mean_b": float(b[keep].mean()),
        "mean_diff": float(diff.mean()),
        "ci95_low": low,
        "ci95_high": high,
        "t_pvalue": float(stats.ttest_rel(b[keep], a[keep]).pvalue) if sd > 0 else float("nan"),
        "wilcoxon_pvalue": float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0,
        "cohens_dz": float(diff.mean() / sd) if sd > 0 else float("nan"),
    }
    if n >= MIN_BOOTSTRAP:
        boots = diff[np.random.default_rng(seed).integers(0, n, size=(n_boot, n))].mean(axis=1)
        out["boot_ci95_low"], out["boot_ci95_high"] = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    return out
