"""Geometry on :class:`~unireg.io.Image`: reorientation, resampling in world space, cropping.

Conventions (defined here once, imported everywhere):

* World space is RAS+ mm (NIfTI). Voxel order is the array order ``[i, j, k]``.
* A *spatial transform* given to :func:`resample` is a 4x4 matrix ``T`` that maps a point of
  the **reference (output) grid's world** to the **input image's world**:
  ``out[v] = image(T @ ref.affine @ v)`` ("pull" direction, as ITK and ANTs apply transforms).
  The affine pre-alignment writes exactly this matrix (atlas world -> subject world).
* Label maps are never interpolated: ``label_mode="nearest"`` picks the nearest voxel's label;
  ``label_mode="onehot"`` interpolates each label's indicator linearly and takes the argmax.
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
        label_mode: ``"nearest"`` or ``"onehot"`` (linear per label + argmax) for label maps.
        antialias: Gaussian-prefilter intensities when the output voxels are larger.
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
        out = np.zeros(grid.shape, dtype=image.data.dtype)
        best = np.full(grid.shape, 0.5, dtype=np.float32)  # below 0.5 everywhere: background wins
        for value in np.unique(image.data):
            if value == 0:
                continue
            weight = ndimage.map_coordinates(
                (image.data == value).astype(np.float32), coords, order=1, mode="constant", cval=0.0
            )
            better = weight > best
            out[better] = value
            best[better] = weight[better]
    else:
        raise ValueError(f"label_mode must be 'nearest' or 'onehot', not {label_mode!r}")
    return Image(out.astype(image.data.dtype), grid.affine, path=None, is_label=True, meta=dict(image.meta))


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
