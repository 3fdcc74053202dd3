"""Image-quality metrics for super-resolution: PSNR, SSIM, NRMSE, HFEN, gradient-energy ratio, LPIPS.

The data range is always explicit (an argument, never guessed from one image), so numbers are comparable
across methods. Without a mask they equal scikit-image's functions; with one, the per-voxel error (or SSIM
map) is averaged inside it. PSNR of identical images is ``inf``: callers that tabulate it cap it themselves.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import normalized_root_mse, structural_similarity

from meddiffusion.errors import MeddiffError


def _check(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> None:
    if pred.shape != ref.shape:
        raise MeddiffError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if mask is not None and mask.shape != ref.shape:
        raise MeddiffError(f"mask shape {mask.shape} differs from image shape {ref.shape}")
    if mask is not None and not mask.any():
        raise MeddiffError("mask is empty")


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """10 log10(data_range^2 / MSE), the MSE taken inside ``mask`` if given."""
    _check(pred, ref, mask)
    err = (pred.astype(np.float64) - ref.astype(np.float64)) ** 2
    mse = float(err[mask].mean() if mask is not None else err.mean())
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(
    pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray | None = None, slice_axis: int | None = None
) -> float:
    """scikit-image SSIM (7-voxel window, its defaults); with a mask, the SSIM map averaged inside it.

    ``slice_axis`` computes 2D SSIM maps slice by slice (as super-resolution papers report it, and for slabs
    thinner than the window); the maps are then averaged over the mask as one.
    """
    _check(pred, ref, mask)
    pred, ref = pred.astype(np.float64), ref.astype(np.float64)
    if slice_axis is None:
        if min(ref.shape) < 7:
            raise MeddiffError(f"3D SSIM needs at least 7 voxels along every axis, got {ref.shape}; use slice_axis")
        if mask is None:
            return float(structural_similarity(ref, pred, data_range=data_range))
        smap = structural_similarity(ref, pred, data_range=data_range, full=True)[1]
    else:
        maps = [
            structural_similarity(
                np.take(ref, k, slice_axis), np.take(pred, k, slice_axis), data_range=data_range, full=True
            )[1]
            for k in range(ref.shape[slice_axis])
        ]
        smap = np.stack(maps, axis=slice_axis)
    return float(smap[mask].mean() if mask is not None else smap.mean())


def nrmse(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """||ref - pred|| / ||ref|| (scikit-image's 'euclidean' normalisation)."""
    _check(pred, ref, mask)
    if mask is None:
        return float(normalized_root_mse(ref.astype(np.float64), pred.astype(np.float64)))
    diff = (ref - pred)[mask].astype(np.float64)
    return float(np.linalg.norm(diff) / np.linalg.norm(ref[mask].astype(np.float64)))


def hfen(pred: np.ndarray, ref: np.ndarray, sigma: float = 1.5, mask: np.ndarray | None = None) -> float:
    """High-frequency error norm (Ravishankar & Bresler 2011): ||LoG(pred) - LoG(ref)|| / ||LoG(ref)||.

    Written here: no maintained library ships HFEN. Laplacian of Gaussian from scipy, sigma 1.5 voxels.
    """
    _check(pred, ref, mask)
    log_pred = ndimage.gaussian_laplace(pred.astype(np.float64), sigma)
    log_ref = ndimage.gaussian_laplace(ref.astype(np.float64), sigma)
    if mask is not None:
        log_pred, log_ref = log_pred[mask], log_ref[mask]
    return float(np.linalg.norm(log_pred - log_ref) / np.linalg.norm(log_ref))


def gradient_energy_ratio(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """sum |grad pred|^2 / sum |grad ref|^2 (central differences along every axis, inside ``mask``): 1 when the
    output has the reference's high-frequency energy, below 1 when it is smoother (a regression mean), above 1
    when it adds texture or noise. PSNR rewards blur; this says which way an output departs from the reference.

    Written here: a few lines of NumPy, and no maintained library names this ratio.
    """
    _check(pred, ref, mask)

    def energy(image: np.ndarray) -> float:
        squared = sum(g**2 for g in np.gradient(image.astype(np.float64)))
        return float(squared[mask].sum() if mask is not None else squared.sum())

    return energy(pred) / energy(ref)


def uncertainty_error_correlation(std: np.ndarray, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Spearman correlation, inside ``mask``, of the std over samples with the absolute error of their mean: how
    far the uncertainty map points at where the output is wrong (0 = not at all)."""
    from scipy.stats import spearmanr

    _check(pred, ref, mask)
    return float(spearmanr(std[mask], np.abs(pred - ref)[mask]).statistic)


class LpipsUnavailable(RuntimeError):
    """LPIPS cannot be computed here; the message says why."""


def lpips_distance(
    pred: np.ndarray, ref: np.ndarray, data_range: float, slice_axis: int = 2, net: str = "alex", min_fg: float = 0.05
) -> float:
    """Mean LPIPS over slices along ``slice_axis`` (slices with < ``min_fg`` non-zero reference voxels skipped).

    Channel handling: each grey slice is scaled to [-1, 1] by ``data_range`` (clipped) and repeated to the
    three channels the ImageNet backbone expects. Needs the optional ``lpips`` extra (which needs
    torchvision and its backbone weights available locally); raises ``LpipsUnavailable`` otherwise.
    """
    _check(pred, ref, None)
    try:
        import lpips  # noqa: PLC0415 - optional extra, imported only when asked for
        import torch

        model = lpips.LPIPS(net=net, verbose=False)
    except Exception as exc:  # ImportError, torchvision operator errors, failed weight download
        raise LpipsUnavailable(f"LPIPS unavailable: {type(exc).__name__}: {exc}") from exc
    scores = []
    for k in range(ref.shape[slice_axis]):
        r = np.take(ref, k, axis=slice_axis)
        if (r != 0).mean() < min_fg:
            continue
        p = np.take(pred, k, axis=slice_axis)
        to_t = lambda a: torch.from_numpy(np.clip(2 * a / data_range - 1, -1, 1)).float()[None, None].repeat(1, 3, 1, 1)  # noqa: E731
        with torch.no_grad():
            scores.append(float(model(to_t(p), to_t(r)).item()))
    if not scores:
        raise MeddiffError("no slice has enough foreground for LPIPS")
    return float(np.mean(scores))


def lpips_or_reason(pred: np.ndarray, ref: np.ndarray, data_range: float, slice_axis: int = 2) -> float | str:
    """LPIPS as a number, or the reason it is unavailable (never a made-up number)."""
    try:
        return lpips_distance(pred, ref, data_range, slice_axis)
    except LpipsUnavailable as exc:
        return str(exc)


def image_metrics(
    pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray | None = None, with_lpips: bool = True
) -> dict[str, float | str]:
    """All super-resolution metrics at once, as ``meddiff eval sr`` reports them."""
    out: dict[str, float | str] = {
        "psnr": psnr(pred, ref, data_range, mask),
        "ssim": ssim(pred, ref, data_range, mask),
        "nrmse": nrmse(pred, ref, mask),
        "hfen": hfen(pred, ref, mask=mask),
        "gradient_energy_ratio": gradient_energy_ratio(pred, ref, mask),
        "data_range": float(data_range),
    }
    if with_lpips:
        out["lpips"] = lpips_or_reason(pred, ref, data_range)
    return out
