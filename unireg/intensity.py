"""Intensity checks and normalisation: robust percentile clipping and rescaling to [0, 1]."""

from __future__ import annotations

import numpy as np

from .defaults import NONFINITE_POLICIES
from .errors import UniregError
from .io import Image


def handle_nonfinite(image: Image, policy: str = "error", subject: str | None = None) -> tuple[Image, np.ndarray]:
    """Check for NaN/Inf voxels. Returns the image and a boolean mask of finite voxels.

    ``policy="error"`` raises a one-line :class:`UniregError` naming the file and the count;
    ``policy="zero"`` sets them to 0 and excludes them from every later statistic (the returned
    mask is False there). Nothing non-finite is ever passed on silently.
    """
    finite = np.isfinite(image.data)
    n_bad = int(finite.size - np.count_nonzero(finite))
    if n_bad == 0:
        return image, finite
    if policy == "error":
        raise UniregError(
            f"{n_bad} NaN/Inf voxels ({100.0 * n_bad / finite.size:.2g} %); "
            "fix the image or set nonfinite: zero to mask them",
            subject=subject,
            path=image.path,
        )
    if policy != "zero":
        raise ValueError(f"nonfinite policy must be one of {NONFINITE_POLICIES}, not {policy!r}")
    return image.with_data(np.where(finite, image.data, 0).astype(np.float32)), finite


def require_signal(image: Image, finite: np.ndarray | None = None, subject: str | None = None) -> None:
    """Refuse an image with no signal: every (finite) voxel zero, or all of one value.

    Run before any step that would fail on such an image in a less helpful way (brain
    extraction, the affine's centre of mass). ``finite``: the voxels to look at (default all).
    """
    values = image.data if finite is None else image.data[finite]
    if not values.size or not np.any(values):
        raise UniregError("image is empty (all voxels are zero)", subject=subject, path=image.path)
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        raise UniregError(f"image has constant intensity {lo:g}; it holds no anatomy", subject=subject, path=image.path)


def normalise_intensity(
    image: Image,
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    *,
    zero_outside: bool = True,
    subject: str | None = None,
) -> Image:
    """Clip to robust percentiles and rescale linearly to [0, 1].

    Percentiles are taken over ``mask`` voxels when given (e.g. the brain), else over the
    non-zero voxels (so a large zero background does not set the lower bound). With a mask
    and ``zero_outside``, voxels outside it become 0. Non-finite voxels are an error here:
    call :func:`handle_nonfinite` first to choose a policy.
    """
    data = image.data.astype(np.float32)
    if not np.all(np.isfinite(data)):
        raise UniregError("NaN/Inf voxels reached normalisation", subject=subject, path=image.path)
    if mask is not None and mask.shape != data.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {data.shape}")
    select = (mask > 0) if mask is not None else (data != 0)
    values = data[select]
    if values.size < 10:
        raise UniregError("image is empty (no foreground voxels to normalise)", subject=subject, path=image.path)
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:
        raise UniregError(f"image has constant intensity {lo:g} in its foreground", subject=subject, path=image.path)
    out = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
    if mask is not None and zero_outside:
        out = np.where(mask > 0, out, 0.0)
    result = image.with_data(out.astype(np.float32))
    result.meta["normalisation"] = {"percentiles": list(percentiles), "low": float(lo), "high": float(hi)}
    return result
