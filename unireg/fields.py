"""Displacement-field algebra on a voxel grid, in torch: the one home of warping, integration,
resizing and Jacobians.

**Convention** (everywhere in unireg). A displacement ``ddf`` has shape ``(B, 3, D, H, W)`` on
the **fixed** grid, in **voxels of that grid**, channels in voxel-axis order ``(i, j, k)``; the
warped moving image is ``moving(x + ddf(x))``. A velocity is a displacement-shaped stationary
field whose flow for unit time (:func:`integrate`) is a diffeomorphic displacement.

**Sampling.** Every resampling here goes through :func:`sample`, which maps voxel coordinates to
``torch.nn.functional.grid_sample``'s normalised coordinates with one convention,
``align_corners=True``: voxel index ``0`` is ``-1`` and ``n - 1`` is ``+1`` on each axis, and the
axes are reversed (``grid_sample`` wants ``x = k, y = j, z = i``). :func:`sampling_matrix` is the
same map as a 4x4 matrix (the affine pre-alignment composes it with world matrices), and
:func:`warp_affine` applies a ``torch.nn.functional.affine_grid`` theta under the same
convention (training augmentation).

World-space fields in mm (what ``unireg register`` writes and ``unireg propagate`` reads) are
:class:`unireg.transforms.DisplacementField` values: numpy only, so label propagation never
imports torch. :func:`to_world_mm` / :func:`from_world_mm` convert between the two.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ALIGN_CORNERS = True  # the one grid_sample convention (see the module docstring)
INTEGRATION_STEPS = 7  # scaling-and-squaring steps: velocity / 2**7, then 7 self-compositions


def _axis_spans(shape: tuple[int, ...]) -> list[int]:
    """Voxel steps from the first to the last voxel per axis (1 for a lone voxel, which maps to -1)."""
    return [max(int(n) - 1, 1) for n in shape]


def sampling_matrix(shape: tuple[int, ...]) -> np.ndarray:
    """4x4 matrix: voxel index ``(i, j, k, 1)`` of a grid of ``shape`` -> ``grid_sample``
    coordinates ``(x = k, y = j, z = i, 1)`` in ``[-1, 1]``."""
    matrix = np.zeros((4, 4))
    spans = _axis_spans(shape)
    for out_axis, in_axis in enumerate((2, 1, 0)):
        matrix[out_axis, in_axis] = 2.0 / spans[in_axis]
        matrix[out_axis, 3] = -1.0
    matrix[3, 3] = 1.0
    return matrix


def sampling_grid(points: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Voxel coordinates ``(B, 3, *S)`` on a grid of ``shape`` -> a ``grid_sample`` grid ``(B, *S, 3)``."""
    spans = _axis_spans(shape)
    return torch.stack([points[:, axis] * 2 / spans[axis] - 1.0 for axis in (2, 1, 0)], dim=-1)  # x = k first


def sample(
    source: torch.Tensor, points: torch.Tensor, *, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
    """``source`` ``(B, C, *shape)`` at the voxel coordinates ``points`` ``(B, 3, *S)`` -> ``(B, C, *S)``."""
    return F.grid_sample(
        source,
        sampling_grid(points, tuple(source.shape[2:])),
        mode=mode,
        padding_mode=padding_mode,
        align_corners=ALIGN_CORNERS,
    )


def voxel_grid(box: tuple[int, ...] | tuple[slice, ...], *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Voxel coordinates ``(1, 3, *S)`` of a whole grid (``box`` a shape) or of a box of slices."""
    ranges = [
        torch.arange(b.start, b.stop, dtype=dtype, device=device)
        if isinstance(b, slice)
        else torch.arange(int(b), dtype=dtype, device=device)
        for b in box
    ]
    return torch.stack(torch.meshgrid(*ranges, indexing="ij"), dim=0)[None]


def warp(image: torch.Tensor, ddf: torch.Tensor, *, label: bool = False) -> torch.Tensor:
    """``image(x + ddf(x))`` on ``ddf``'s grid: trilinear with border padding, or for a label map
    (``label=True``) the nearest voxel's value with zero padding, in ``image``'s dtype."""
    points = voxel_grid(tuple(ddf.shape[2:]), dtype=ddf.dtype, device=ddf.device) + ddf
    if label:
        return sample(image.to(ddf.dtype), points, mode="nearest", padding_mode="zeros").to(image.dtype)
    return sample(image, points)


def warp_in_box(source: torch.Tensor, ddf: torch.Tensor, box: tuple[slice, slice, slice]) -> torch.Tensor:
    """:func:`warp` for the voxels of ``box`` only (trilinear): ``(B, C, *box shape)``."""
    return sample(source, voxel_grid(box, dtype=ddf.dtype, device=ddf.device) + ddf[(..., *box)])


def foreground_box(image: torch.Tensor, margin: int) -> tuple[slice, slice, slice]:
    """Voxel box around the non-zero voxels of ``(1, C, D, H, W)`` plus ``margin`` (the whole grid
    when the image has no zero background)."""
    nonzero = (image != 0).any(dim=1)[0]
    if not nonzero.any():
        return tuple(slice(0, n) for n in nonzero.shape)
    box = []
    for axis, n in enumerate(nonzero.shape):
        hits = torch.nonzero(nonzero.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        box.append(slice(max(0, int(hits[0]) - margin), min(n, int(hits[-1]) + margin + 1)))
    return tuple(box)


def integrate(velocity: torch.Tensor, steps: int = INTEGRATION_STEPS) -> torch.Tensor:
    """Scaling and squaring: a stationary velocity ``(B, 3, ...)`` in voxels -> its displacement
    (a diffeomorphism up to discretisation)."""
    ddf = velocity / (2**steps)
    for _ in range(steps):
        ddf = ddf + warp(ddf, ddf)
    return ddf


def resize_field(field: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A displacement or velocity resized to ``shape`` (trilinear), its voxel units rescaled per axis."""
    if tuple(field.shape[2:]) == tuple(shape):
        return field
    scale = torch.tensor([s / f for s, f in zip(shape, field.shape[2:])], dtype=field.dtype, device=field.device)
    resized = F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=ALIGN_CORNERS)
    return resized * scale.view(1, 3, 1, 1, 1)


def mirror_field(field: torch.Tensor, axis: int) -> torch.Tensor:
    """A displacement or velocity ``(B, 3, D, H, W)`` mirrored along voxel ``axis``: the field of the
    mirrored images (the grid flipped on that axis, and that axis's component negated)."""
    mirrored = torch.flip(field, dims=(2 + axis,))
    sign = torch.ones(3, dtype=field.dtype, device=field.device)
    sign[axis] = -1.0
    return mirrored * sign.view(1, 3, 1, 1, 1)


def warp_affine(volume: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``volume`` resampled by an ``affine_grid`` theta ``(B, 3, 4)`` (normalised coordinates,
    ``x = k`` first), zero outside."""
    grid = F.affine_grid(theta.to(volume.dtype), list(volume.shape), align_corners=ALIGN_CORNERS)
    return F.grid_sample(volume, grid, mode=mode, padding_mode="zeros", align_corners=ALIGN_CORNERS)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + ddf(x)`` (central differences), ``(B, D-2, H-2, W-2)``."""
    grads = []
    for axis in range(3):
        plus, minus = [slice(1, -1)] * 3, [slice(1, -1)] * 3
        plus[axis], minus[axis] = slice(2, None), slice(None, -2)
        grads.append((ddf[(slice(None), slice(None), *plus)] - ddf[(slice(None), slice(None), *minus)]) / 2)
    # J[c, a] = d(x_c + u_c)/d x_a
    J = torch.stack(grads, dim=2)  # (B, 3 components, 3 axes, ...)
    J = J + torch.eye(3, dtype=ddf.dtype, device=ddf.device).view(1, 3, 3, 1, 1, 1)
    return (
        J[:, 0, 0] * (J[:, 1, 1] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 1])
        - J[:, 0, 1] * (J[:, 1, 0] * J[:, 2, 2] - J[:, 1, 2] * J[:, 2, 0])
        + J[:, 0, 2] * (J[:, 1, 0] * J[:, 2, 1] - J[:, 1, 1] * J[:, 2, 0])
    )


def jacobian_stats(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """Folding and smoothness of a displacement: % voxels with det(J) <= 0, std of log det(J)."""
    det = jacobian_determinant(ddf.detach().double())
    if mask is not None:
        det = det[mask[:, 0, 1:-1, 1:-1, 1:-1] > 0]
    det = det.flatten()
    positive = det[det > 0]
    return {
        "folding_percent": float(100.0 * (det <= 0).double().mean()),
        "log_jacobian_std": float(torch.log(positive).std()) if positive.numel() > 1 else float("nan"),
        "jacobian_min": float(det.min()),
        "jacobian_max": float(det.max()),
    }


def to_world_mm(ddf: torch.Tensor, grid_affine: np.ndarray) -> np.ndarray:
    """A voxel displacement ``(1, 3, ...)`` -> ``(3, ...)`` RAS mm on a grid with ``grid_affine``."""
    return np.tensordot(grid_affine[:3, :3], ddf[0].detach().cpu().double().numpy(), axes=(1, 0))


def from_world_mm(displacement_mm: np.ndarray, grid_affine: np.ndarray) -> torch.Tensor:
    """``(3, ...)`` RAS mm on a grid with ``grid_affine`` -> a voxel displacement ``(1, 3, ...)`` (float64)."""
    return torch.from_numpy(np.tensordot(np.linalg.inv(grid_affine[:3, :3]), displacement_mm, axes=(1, 0)))[None]
