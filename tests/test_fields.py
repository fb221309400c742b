"""unireg.fields: the voxel-grid field algebra and its one grid_sample convention."""

import numpy as np
import pytest
import torch
from monai.networks.blocks import DVF2DDF, Warp

from unireg.fields import (
    foreground_box,
    from_world_mm,
    integrate,
    jacobian_stats,
    resize_field,
    sample,
    sampling_grid,
    sampling_matrix,
    to_world_mm,
    voxel_grid,
    warp,
    warp_affine,
    warp_in_box,
)

SHAPE = (32, 32, 32)


def _smooth_field(amplitude: float, seed: int = 0, shape=SHAPE) -> torch.Tensor:
    """A smooth random field (1, 3, *shape) in voxels: a few low-frequency sinusoids."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 2 * np.pi, s) for s in shape], indexing="ij"))
    field = torch.zeros(1, 3, *shape)
    for c in range(3):
        k = torch.randint(1, 3, (3,), generator=g).float()
        phase = torch.rand(3, generator=g) * 6.28
        field[0, c] = amplitude * torch.sin((grid * k.view(3, 1, 1, 1)).sum(0) / 2 + phase.sum())
    return field


@pytest.mark.parametrize("amplitude", [1.0, 3.0, 6.0])
def test_scaling_and_squaring_of_smooth_velocity_does_not_fold(amplitude):
    velocity = _smooth_field(amplitude)
    ddf = integrate(velocity, 7)
    assert ddf.abs().max() > 0.5 * amplitude  # a real deformation, not a vanishing one
    stats = jacobian_stats(ddf)
    assert stats["folding_percent"] == 0.0 and stats["jacobian_min"] > 0
    # the same field used directly as a displacement does fold at the larger amplitudes
    if amplitude >= 6.0:
        assert jacobian_stats(velocity)["folding_percent"] > 0


def test_warp_and_integrate_match_monai_on_a_non_cubic_grid():
    """The hand-written sampling reproduces MONAI's Warp / DVF2DDF (the packaged model was trained with them)."""
    shape = (20, 28, 16)
    image = torch.rand(1, 2, *shape)
    ddf = _smooth_field(3.0, seed=1, shape=shape)
    torch.testing.assert_close(warp(image, ddf), Warp("bilinear", "border")(image, ddf))
    labels = torch.randint(0, 6, (1, 1, *shape)).float()
    torch.testing.assert_close(warp(labels, ddf, label=True), Warp("nearest", "zeros")(labels, ddf))
    torch.testing.assert_close(integrate(ddf, 7), DVF2DDF(7, "bilinear", "border")(ddf))


def test_zero_field_warp_is_identity_for_images_and_labels():
    image = torch.rand(1, 1, *SHAPE)
    labels = torch.randint(0, 5, (1, 1, *SHAPE))
    zero = torch.zeros(1, 3, *SHAPE)
    torch.testing.assert_close(warp(image, zero), image)
    out = warp(labels, zero, label=True)
    assert out.dtype == labels.dtype and torch.equal(out, labels)


def test_integer_shift_follows_voxel_axis_convention():
    """ddf channel c moves along voxel axis c: warped(x) = moving(x + ddf(x))."""
    moving = torch.rand(1, 1, *SHAPE)
    ddf = torch.zeros(1, 3, *SHAPE)
    ddf[:, 1] = 2.0  # +2 voxels along j
    torch.testing.assert_close(warp(moving, ddf)[0, 0, :, :-2], moving[0, 0, :, 2:])
    labels = torch.randint(0, 7, (1, 1, *SHAPE))
    assert torch.equal(warp(labels, ddf, label=True)[0, 0, :, :-2], labels[0, 0, :, 2:])
    assert set(warp(labels, _smooth_field(3.0), label=True).unique().tolist()) <= set(labels.unique().tolist())


def test_sampling_matrix_and_grid_are_one_convention():
    shape = (5, 9, 7)
    points = torch.rand(1, 3, 4, 4, 4, dtype=torch.float64) * torch.tensor([4.0, 8.0, 6.0]).view(1, 3, 1, 1, 1)
    homogeneous = torch.cat([points, torch.ones(1, 1, 4, 4, 4, dtype=torch.float64)], dim=1)
    by_matrix = torch.einsum("ab,nb...->na...", torch.from_numpy(sampling_matrix(shape)), homogeneous)[:, :3]
    torch.testing.assert_close(by_matrix.movedim(1, -1), sampling_grid(points, shape))
    # the first and last voxel centres are -1 and +1, axes reversed for grid_sample (x = k)
    corners = torch.tensor([[0.0, 0.0, 0.0], [4.0, 8.0, 6.0]], dtype=torch.float64).T.reshape(1, 3, 2, 1, 1)
    grid = sampling_grid(corners, shape)
    assert grid[0, 0, 0, 0].tolist() == [-1.0, -1.0, -1.0] and grid[0, 1, 0, 0].tolist() == [1.0, 1.0, 1.0]
    # sampling at integer voxel coordinates returns the voxel values exactly
    source = torch.rand(1, 1, *shape, dtype=torch.float64)
    torch.testing.assert_close(sample(source, voxel_grid(shape, dtype=torch.float64)), source)


def test_warp_affine_shares_the_convention():
    volume = torch.rand(1, 1, 8, 10, 12)
    identity = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]])
    torch.testing.assert_close(warp_affine(volume, identity), volume)
    shift = identity.clone()
    shift[0, 0, 3] = 2 * 2.0 / (12 - 1)  # +2 voxels along k (theta's x axis)
    torch.testing.assert_close(warp_affine(volume, shift)[..., :-2], volume[..., 2:])


def test_resize_field_rescales_voxel_units():
    up = resize_field(torch.ones(1, 3, 16, 16, 16), (32, 32, 32))
    assert up.shape == (1, 3, 32, 32, 32)
    torch.testing.assert_close(up, torch.full_like(up, 2.0))


def test_warp_in_box_equals_the_full_warp_cropped():
    source = torch.rand(1, 2, *SHAPE)
    ddf = torch.randn(1, 3, *SHAPE) * 2.0
    box = (slice(3, 29), slice(5, 30), slice(0, 30))
    torch.testing.assert_close(warp_in_box(source, ddf, box), warp(source, ddf)[(..., *box)])


def test_foreground_box_keeps_every_nonzero_voxel_with_margin():
    image = torch.zeros(1, 1, *SHAPE)
    image[0, 0, 10:20, 12:25, 8:30] = 1.0
    assert foreground_box(image, margin=3) == (slice(7, 23), slice(9, 28), slice(5, 32))
    assert foreground_box(torch.ones(1, 1, *SHAPE), margin=3) == tuple(slice(0, n) for n in SHAPE)


def test_world_mm_round_trip_on_an_oblique_grid():
    affine = np.eye(4)
    angle = np.deg2rad(20)
    affine[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([2.0, 1.5, 3.0])
    ddf = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64)
    mm = to_world_mm(ddf, affine)
    # a one-voxel step along i is the first column of the affine, in mm
    unit = torch.zeros(1, 3, 1, 1, 1, dtype=torch.float64)
    unit[0, 0] = 1.0
    np.testing.assert_allclose(to_world_mm(unit, affine)[:, 0, 0, 0], affine[:3, 0])
    torch.testing.assert_close(from_world_mm(mm, affine), ddf)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_mirrored_field_warps_the_mirrored_image_to_the_mirrored_result(axis):
    from unireg.fields import mirror_field

    g = torch.Generator().manual_seed(axis)
    image = torch.rand(1, 1, 12, 10, 8, generator=g)
    ddf = 2.0 * torch.rand(1, 3, 12, 10, 8, generator=g) - 1.0
    dims = (2 + axis,)
    torch.testing.assert_close(
        warp(torch.flip(image, dims), mirror_field(ddf, axis)), torch.flip(warp(image, ddf), dims)
    )
    torch.testing.assert_close(mirror_field(mirror_field(ddf, axis), axis), ddf)
