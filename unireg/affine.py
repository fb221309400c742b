"""Affine pre-alignment of a moving image to a fixed image (the atlas), in torch.

The result is a 4x4 matrix ``T`` in world coordinates (RAS mm) that maps a point of the
**fixed** world to the **moving** world: ``moving_world = T @ fixed_world``. Resampling the
moving image with :func:`unireg.transforms.resample` ``(moving, fixed.grid, T)`` brings it onto
the fixed grid. This is ITK's convention for a transform that resamples moving into fixed;
:func:`write_itk_affine` stores it in LPS for ITK/ANTs (``antsApplyTransforms -t file``).

Method: centre-of-mass initialisation, then a coarse-to-fine (multi-resolution) gradient
descent (Adam) on the 12 affine parameters, with a similarity that works across modalities
(MONAI's Parzen-window global mutual information, ``"mi"``) or local normalised
cross-correlation for the same modality (``"lncc"``). Deterministic for a given seed on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss
from scipy import ndimage

from .defaults import AFFINE_SIMILARITIES
from .errors import UniregError
from .fields import ALIGN_CORNERS, sampling_matrix

# the matrix file formats live in io (no torch needed to read them); part of this module's API too
from .io import (  # noqa: F401
    LPS_FLIP,
    Grid,
    Image,
    apply_affine,
    read_affine_txt,
    read_itk_affine,
    write_affine_txt,
    write_itk_affine,
)

SIMILARITIES = AFFINE_SIMILARITIES


@dataclass
class AffineResult:
    """``matrix``: fixed world -> moving world (RAS mm). ``history``: loss per level (start, end)."""

    matrix: np.ndarray
    initial_matrix: np.ndarray
    similarity: str
    loss_before: float
    loss_after: float
    history: list = field(default_factory=list)


def center_of_mass(image: Image, mask: np.ndarray | None = None) -> np.ndarray:
    """Intensity-weighted centre of mass in world mm (within ``mask`` if given)."""
    weights = np.clip(image.data, 0, None).astype(np.float64)
    if mask is not None:
        weights = weights * (mask > 0)
    total = weights.sum()
    if total <= 0:
        raise UniregError("image has no positive intensity: cannot find its centre of mass", path=image.path)
    com_voxel = np.array(ndimage.center_of_mass(weights))
    return apply_affine(image.affine, com_voxel[None])[0]


def _level_grid(grid: Grid, factor: int) -> Grid:
    """The grid of ``avg_pool3d(kernel=factor)`` applied to ``grid`` (voxel centres move)."""
    shape = tuple(max(1, s // factor) for s in grid.shape)
    scale = np.eye(4)
    scale[:3, :3] *= factor
    scale[:3, 3] = (factor - 1) / 2.0
    return Grid(shape, grid.affine @ scale)


def _to_tensor(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]


class _AffineSampler(torch.nn.Module):
    """Samples the moving image at ``T(theta) @ fixed_world`` for every voxel of a fixed grid.

    ``theta`` holds 12 parameters in mm: the linear part is ``I + L / radius`` (so one unit of
    any parameter moves a point at ``radius`` mm from the centre by about 1 mm) and the
    translation in mm. Rotation is about ``center`` (the fixed image's centre of mass).
    """

    def __init__(
        self, moving: torch.Tensor, moving_affine: np.ndarray, center: np.ndarray, init: np.ndarray, radius: float
    ):
        super().__init__()
        self.moving = moving
        self.radius = radius
        self.register_buffer("center", torch.tensor(center, dtype=torch.float64))
        self.register_buffer(
            "moving_to_grid",
            torch.tensor(sampling_matrix(moving.shape[2:]) @ np.linalg.inv(moving_affine), dtype=torch.float64),
        )
        lin0 = init[:3, :3]
        trans0 = init[:3, 3] + lin0 @ center - center
        self.theta = torch.nn.Parameter(
            torch.tensor(np.concatenate([((lin0 - np.eye(3)) * radius).ravel(), trans0]), dtype=torch.float64)
        )

    def matrix(self) -> torch.Tensor:
        lin = torch.eye(3, dtype=torch.float64) + self.theta[:9].reshape(3, 3) / self.radius
        trans = self.center + self.theta[9:] - lin @ self.center
        top = torch.cat([lin, trans[:, None]], dim=1)
        return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)], dim=0)

    def forward(self, fixed_world: torch.Tensor) -> torch.Tensor:
        """``fixed_world``: ``(D, H, W, 4)`` homogeneous mm. Returns ``(1, 1, D, H, W)``."""
        to_grid = (self.moving_to_grid @ self.matrix()).to(torch.float32)
        coords = fixed_world @ to_grid[:3].T
        if coords.dim() == 4:
            coords = coords[None]
        return F.grid_sample(self.moving, coords, mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS)


def _similarity_loss(name: str) -> torch.nn.Module:
    if name == "mi":
        return GlobalMutualInformationLoss(num_bins=32, sigma_ratio=0.5)
    if name == "lncc":
        return LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=5, kernel_type="rectangular")
    raise UniregError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")


def align_affine(
    moving: Image,
    fixed: Image,
    *,
    moving_mask: np.ndarray | None = None,
    fixed_mask: np.ndarray | None = None,
    similarity: str = "mi",
    levels: tuple[int, ...] = (4, 2, 1),
    iterations: tuple[int, ...] = (120, 80, 40),
    learning_rate: float = 2.0,
    samples: int = 20000,
    seed: int = 0,
) -> AffineResult:
    """Find the affine ``T`` (fixed world -> moving world) that best aligns ``moving`` to ``fixed``.

    Both images should be intensity-normalised to [0, 1] (see :mod:`unireg.preprocess`), with
    anything outside the brain already zeroed when brains are aligned. ``levels`` are
    downsampling factors of the fixed grid (coarse to fine), ``iterations`` the Adam steps at
    each; ``learning_rate`` is in mm and decays within each level. With ``"mi"`` each step uses
    ``samples`` random fixed voxels (seeded by ``seed``), so the result is deterministic.
    """
    if len(levels) != len(iterations):
        raise ValueError("levels and iterations must have the same length")
    torch.manual_seed(seed)
    loss_fn = _similarity_loss(similarity)
    fixed_com = center_of_mass(fixed, fixed_mask)
    moving_com = center_of_mass(moving, moving_mask)
    init = np.eye(4)
    init[:3, 3] = moving_com - fixed_com
    fg = (fixed.data > 0) if fixed_mask is None else fixed_mask > 0
    extent = np.ptp(apply_affine(fixed.affine, np.argwhere(fg).astype(float)), axis=0)
    radius = float(max(extent.max() / 2.0, 10.0))

    history = []
    current = init
    generator = torch.Generator().manual_seed(seed)
    for level, (factor, n_iter) in enumerate(zip(levels, iterations)):
        grid = _level_grid(fixed.grid, factor)
        fixed_t = F.avg_pool3d(_to_tensor(fixed.data), factor) if factor > 1 else _to_tensor(fixed.data)
        sigma = 0.5 * np.sqrt(
            np.maximum((factor * np.asarray(fixed.spacing) / np.asarray(moving.spacing)) ** 2 - 1.0, 0.0)
        )
        moving_t = _to_tensor(
            ndimage.gaussian_filter(moving.data.astype(np.float32), sigma) if np.any(sigma > 0) else moving.data
        )
        world = torch.tensor(
            np.concatenate([grid.world_coordinates(), np.ones((*grid.shape, 1))], axis=-1), dtype=torch.float32
        )
        sampler = _AffineSampler(moving_t, moving.affine, fixed_com, current, radius)
        optimiser = torch.optim.Adam(sampler.parameters(), lr=learning_rate / 2**level)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step, n=n_iter: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(n, 1)))
        )
        # MI is a histogram statistic: a fresh random subset of voxels per step estimates it well
        # at a fraction of the cost (as ITK's MI metrics do); LNCC needs whole neighbourhoods
        stochastic = similarity == "mi" and fixed_t.numel() > samples
        flat_world, flat_fixed = world.reshape(1, 1, -1, 4), fixed_t.reshape(1, 1, 1, 1, -1)
        start = None
        for _ in range(n_iter):
            optimiser.zero_grad()
            if stochastic:
                pick = torch.randint(flat_fixed.shape[-1], (samples,), generator=generator)
                loss = loss_fn(sampler(flat_world[:, :, pick]), flat_fixed[..., pick])
            else:
                loss = loss_fn(sampler(world), fixed_t)
            if not torch.isfinite(loss):
                raise UniregError(
                    "affine alignment diverged (non-finite similarity); check the image's intensities and affine",
                    path=moving.path,
                )
            start = float(loss.detach()) if start is None else start
            loss.backward()
            optimiser.step()
            schedule.step()
        with torch.no_grad():
            end = float(loss_fn(sampler(world), fixed_t))
        history.append({"factor": factor, "iterations": n_iter, "loss_start": start, "loss_end": end})
        current = sampler.matrix().detach().numpy()
    matrix = current
    return AffineResult(
        matrix=matrix,
        initial_matrix=init,
        similarity=similarity,
        loss_before=history[0]["loss_start"] if history else float("nan"),
        loss_after=history[-1]["loss_end"] if history else float("nan"),
        history=history,
    )
