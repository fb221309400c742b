"""Geometry on :class:`~unireg.io.Image`: reorientation, resampling in world space, cropping.

Conventions (defined here once, imported everywhere):

* World space is RAS+ mm (NIfTI). Voxel order is the array order ``[i, j, k]``.
* A *spatial transform* given to :func:`resample` is a 4x4 matrix ``T`` that maps a point of
  the **reference (output) grid's world** to the **input image's world**:
  ``out[v] = image(T @ ref.affine @ v)`` ("pull" direction, as ITK and ANTs apply transforms).
  The affine pre-alignment writes exactly this matrix (atlas world -> subject world).
* Label maps are never interpolated: ``label_mode="nearest"`` picks the nearest voxel's label;
  ``label_mode="onehot"`` is partial-volume resampling: each label's indicator (background
  included) is smoothed like an intensity when the output voxels are larger, sampled linearly,
  and the largest weight wins (ties go to the background, then to the smaller label value).
  Both only ever output label values present in the input (plus background 0 outside the FOV).
* A deformable transform in world space is a :class:`DisplacementField`: ``p -> p + d(p)`` in
  mm, ``d`` sampled trilinearly on its own grid. Its voxel-grid (torch) counterpart, used by the
  network and registration, is in :mod:`unireg.fields`; this module stays numpy-only so label
  propagation never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import UniregError
from .io import Grid, Image, apply_affine

RAS_ORNT = np.array([[0, 1], [1, 1], [2, 1]])


@dataclass(frozen=True)
class DisplacementField:
    """A world-space displacement: ``data`` ``(3, X, Y, Z)`` in RAS mm on a grid with ``affine``.

    Calling it maps world points ``(N, 3)`` to ``p + d(p)`` with ``d`` sampled trilinearly
    (nearest edge value beyond the grid). This is the field ``unireg register`` writes
    (:func:`unireg.io.save_displacement`).
    """

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[1:])

    def __call__(self, points: np.ndarray) -> np.ndarray:
        voxels = apply_affine(np.linalg.inv(self.affine), points).T
        shift = np.stack([ndimage.map_coordinates(c, voxels, order=1, mode="nearest") for c in self.data], axis=1)
        return points + shift


def reorient_to_ras(image: Image) -> Image:
    """Permute/flip voxel axes so that i, j, k grow to R, A, S. World positions are unchanged."""
    ornt = nib.io_orientation(image.affine)
    if np.array_equal(ornt, RAS_ORNT):
        return image
    transform = nib.orientations.ornt_transform(ornt, RAS_ORNT)
    data = np.ascontiguousarray(nib.orientations.apply_orientation(image.data, transform))
    affine = image.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    return image.with_data(data, affine=affine)


def grid_with_spacing(grid: Grid, spacing: float | tuple[float, float, float]) -> Grid:
    """A grid covering the same field of view as ``grid`` with another voxel size (same axes)."""
    new = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    old = np.asarray(grid.spacing)
    extent = old * np.asarray(grid.shape)  # mm covered, voxel edge to voxel edge
    shape = np.maximum(1, np.round(extent / new)).astype(int)
    directions = grid.affine[:3, :3] / old
    affine = np.eye(4)
    affine[:3, :3] = directions * new
    # keep the field of view centred: first voxel centre moves by half the size change
    first_edge = grid.affine[:3, 3] - directions @ (old / 2)
    affine[:3, 3] = first_edge + directions @ (new / 2) + directions @ ((extent - shape * new) / 2)
    return Grid(tuple(shape), affine)


def _antialias_sigma(image: Image, grid: Grid, transform: np.ndarray | None) -> np.ndarray:
    """Gaussian sigma (input voxels) so that downsampling to ``grid`` does not alias."""
    scale = np.linalg.norm(
        (transform if transform is not None else np.eye(4))[:3, :3] @ grid.affine[:3, :3], axis=0
    ).max()
    ratio = scale / np.asarray(image.spacing)
    return np.where(ratio > 1.0, 0.5 * np.sqrt(np.maximum(ratio**2 - 1.0, 0.0)), 0.0)


def voxel_coordinates(image_affine: np.ndarray, grid: Grid, transform: np.ndarray | None = None) -> np.ndarray:
    """Input-image voxel coordinates sampled by each voxel of ``grid``, shape ``(3, *grid.shape)``."""
    matrix = np.linalg.inv(image_affine) @ (transform if transform is not None else np.eye(4)) @ grid.affine
    idx = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    return (matrix[:3, :3] @ idx + matrix[:3, 3:4]).reshape(3, *grid.shape)


def resample(
    image: Image,
    grid: Grid,
    transform: np.ndarray | None = None,
    *,
    label_mode: str = "nearest",
    antialias: bool = True,
    fill: float = 0.0,
) -> Image:
    """Resample ``image`` onto ``grid`` in world coordinates.

    Args:
        image: intensity image (trilinear interpolation) or label map (``image.is_label``).
        grid: output grid (e.g. the atlas grid).
        transform: optional 4x4 world->world matrix, output world -> input world (see module doc).
        label_mode: ``"nearest"`` or ``"onehot"`` (partial volume: linear per label + argmax) for
            label maps.
        antialias: Gaussian-prefilter intensities (and, for ``"onehot"``, each label's indicator)
            when the output voxels are larger.
        fill: value outside the input's field of view (intensities; labels get 0).
    """
    coords = voxel_coordinates(image.affine, grid, transform)
    if not image.is_label:
        data = image.data.astype(np.float32)
        if antialias:
            sigma = _antialias_sigma(image, grid, transform)
            if np.any(sigma > 0):
                data = ndimage.gaussian_filter(data, sigma, mode="nearest")
        out = ndimage.map_coordinates(data, coords, order=1, mode="constant", cval=fill)
        return Image(out.astype(np.float32), grid.affine, path=None, is_label=False, meta=dict(image.meta))
    if label_mode == "nearest":
        out = ndimage.map_coordinates(image.data, coords, order=0, mode="constant", cval=0)
    elif label_mode == "onehot":
        sigma = _antialias_sigma(image, grid, transform) if antialias else np.zeros(3)
        out = _partial_volume_labels(image.data, coords, sigma)
    else:
        raise ValueError(f"label_mode must be 'nearest' or 'onehot', not {label_mode!r}")
    return Image(out.astype(image.data.dtype), grid.affine, path=None, is_label=True, meta=dict(image.meta))


def _partial_volume_labels(data: np.ndarray, coords: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Argmax over labels of each label's (smoothed) indicator sampled at ``coords`` (input voxels).

    The background's weight is one minus the labels' sum, so a voxel gets a label only where that
    label covers more of it than the background and than any other label. Smoothing extends an
    indicator past the image's edge by its edge value (as for intensities); sampling outside the
    field of view gives 0. Each label is smoothed and sampled only inside its bounding box (plus
    the kernel's reach): cost grows with the labels' size, not with their number times the image size.
    """
    values = np.unique(data)
    values = values[values != 0]
    if data.dtype.kind in "iu" and values.size and values.min() > 0 and values.max() < 2**16:
        ids = data  # find_objects' box k - 1 is label value k
    else:  # large or negative ids: number the labels 1..n first
        ids = np.where(data == 0, 0, np.searchsorted(values, data) + 1).astype(np.int32)
    boxes = ndimage.find_objects(ids)
    reach = np.ceil(4.0 * np.asarray(sigma)).astype(int) + 2  # Gaussian truncation + linear interpolation
    points = coords.reshape(3, -1)
    out = np.zeros(points.shape[1], dtype=data.dtype)
    best = np.zeros(points.shape[1], dtype=np.float32)
    total = np.zeros(points.shape[1], dtype=np.float32)
    for number, value in enumerate(values, start=1):
        box = boxes[(int(value) if ids is data else number) - 1]
        start = np.array([max(sl.start - r, 0) for sl, r in zip(box, reach)])
        stop = np.array([min(sl.stop + r, n) for sl, r, n in zip(box, reach, data.shape)])
        inside = np.all((points >= start[:, None] - 1) & (points <= stop[:, None]), axis=0)
        if not inside.any():
            continue
        indicator = (data[tuple(slice(a, b) for a, b in zip(start, stop))] == value).astype(np.float32)
        if np.any(sigma > 0):
            indicator = ndimage.gaussian_filter(indicator, sigma, mode="nearest")
        where = np.flatnonzero(inside)
        weight = ndimage.map_coordinates(
            indicator, points[:, where] - start[:, None], order=1, mode="constant", cval=0.0
        ).astype(np.float32)
        total[where] += weight
        better = weight > best[where]
        out[where[better]] = value
        best[where[better]] = weight[better]
    out[best <= 1.0 - total] = 0  # the background covers at least as much as the best label
    return out.reshape(coords.shape[1:])


def foreground_bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive-exclusive voxel bounding box ``(start, stop)`` of the non-zero voxels."""
    nz = np.argwhere(mask)
    if nz.size == 0:
        raise UniregError("no foreground voxels: cannot crop around an empty mask")
    return nz.min(axis=0), nz.max(axis=0) + 1


def crop_or_pad(image: Image, start: np.ndarray, shape: tuple[int, int, int], fill: float = 0) -> Image:
    """Extract the box ``[start, start + shape)`` in voxels, padding with ``fill`` outside.

    Exact (no interpolation): the affine's origin moves by ``start`` voxels.
    """
    start = np.asarray(start, dtype=int)
    shape = tuple(int(s) for s in shape)
    out = np.full(shape, fill, dtype=image.data.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + np.asarray(shape), image.shape)
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = image.data[
            tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        ]
    affine = image.affine.copy()
    affine[:3, 3] = apply_affine(image.affine, start[None].astype(float))[0]
    return image.with_data(out, affine=affine)


def crop_to_multiple(
    image: Image, mask: np.ndarray | None = None, multiple: int = 16, margin: int = 2
) -> tuple[Image, np.ndarray]:
    """Crop/pad around the foreground (``mask``, default ``data > 0``) to a shape divisible by ``multiple``.

    ``margin`` voxels are kept around the foreground. Returns the new image and the voxel
    ``start`` of the box in the input grid, so the same box can be cut from other images.
    """
    lo, hi = foreground_bbox(image.data > 0 if mask is None else mask)
    lo, hi = lo - margin, hi + margin
    size = hi - lo
    shape = (np.ceil(size / multiple) * multiple).astype(int)
    start = lo - (shape - size) // 2
    return crop_or_pad(image, start, tuple(shape)), start
