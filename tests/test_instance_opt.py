"""Test-time instance optimisation and the pieces it is built from (fast LNCC, box-restricted warp)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import LocalNormalizedCrossCorrelationLoss

from unireg.errors import UniregError
from unireg.features import build_extractor
from unireg.losses import ImageSimilarity, box_sum, lncc_loss
from unireg.fields import jacobian_stats, warp
from unireg.model import UniRegNet
from unireg.register import InstanceOptOptions, instance_optimise

SHAPE = (32, 40, 36)


def _blobs(seed: int, shape=SHAPE) -> torch.Tensor:
    """A brain-like test volume: smooth random blobs inside an ellipsoid, zero outside."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, *(s // 4 for s in shape), generator=g)
    volume = F.interpolate(noise, size=shape, mode="trilinear", align_corners=False)
    axes = [torch.linspace(-1, 1, s) for s in shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    inside = (zz ** 2 / 0.6 + yy ** 2 / 0.7 + xx ** 2 / 0.65) < 1
    return volume * inside


@pytest.mark.parametrize("size", [3, 5, 7])
def test_lncc_matches_monai(size):
    warped, fixed = _blobs(0), _blobs(1)
    fixed = 0.6 * warped + 0.4 * fixed
    reference = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=size, kernel_type="rectangular")
    # float32 box sums by cumulative sums vs convolutions: equal up to rounding in near-constant windows
    assert lncc_loss(warped, fixed, size).item() == pytest.approx(reference(warped, fixed).item(), rel=2e-3)


def test_box_sum_is_a_zero_padded_box_filter():
    x = torch.rand(2, 3, 9, 10, 11, dtype=torch.float64)
    ones = torch.ones(3, 1, 5, 5, 5, dtype=torch.float64)
    expected = F.conv3d(x, ones, padding=2, groups=3)
    assert torch.allclose(box_sum(x, 5), expected, atol=1e-10)


def test_lncc_is_blind_to_a_contrast_inversion():
    """Squared correlation: an inverted copy matches as well as the image itself (up to the windows at
    the grid border, which see zero padding), an unrelated image does not."""
    image, other = torch.rand(2, 1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(2))
    same = lncc_loss(image, image).item()
    assert same < -0.99
    assert lncc_loss(image, 1.0 - image).item() < 0.6 * same
    assert lncc_loss(image, other).item() > 0.2 * same


def test_mind_box_filter_is_the_separable_form_of_a_cubic_mean():
    x = torch.rand(1, 12, 14, 15, 16)
    cubic = F.avg_pool3d(x, 5, stride=1)
    separable = x
    for axis in range(3):
        separable = F.avg_pool3d(separable, tuple(5 if a == axis else 1 for a in range(3)), stride=1)
    assert torch.allclose(cubic, separable, atol=1e-6)


def test_schedule_splits_two_thirds_coarse():
    opt = InstanceOptOptions.schedule(30)
    assert (opt.coarse_steps, opt.steps, opt.total) == (20, 10, 30)
    assert InstanceOptOptions.schedule(0).total == 0
    assert InstanceOptOptions.schedule(1).total == 1


def _model() -> UniRegNet:
    torch.manual_seed(0)
    return UniRegNet(build_extractor("mind"), channels=(4, 8), flow_stride=2, int_steps=7).eval()


@pytest.mark.parametrize("integrate", ["fine", "end", "step"])
def test_instance_opt_recovers_a_shift_without_folding(integrate):
    """Fixed = moving shifted by 2 voxels: the optimised field must move most of the way."""
    moving = _blobs(5)
    fixed = torch.roll(moving, shifts=2, dims=2)
    model = _model()
    zero = torch.zeros(1, 3, *model.flow_shape(SHAPE))
    options = InstanceOptOptions(steps=15, coarse_steps=30, weight=0.05, learning_rate=0.1, integrate=integrate)
    ddf = instance_optimise(model, fixed, moving, zero, options)
    similarity = ImageSimilarity("lncc")
    before = similarity(moving, fixed).item()
    after = similarity(warp(moving, ddf), fixed).item()
    assert after < before - 0.1
    inside = fixed[0, 0] > 0
    shift = ddf[0, 0][inside].mean().item()  # fixed(x) = moving(x - 2) along axis 0: ddf ~ -2 there
    assert -2.6 < shift < -1.0
    assert jacobian_stats(ddf)["folding_percent"] == 0.0


def test_unknown_integrate_mode_is_refused():
    model = _model()
    image = _blobs(6)
    with pytest.raises(UniregError, match="integrate"):
        instance_optimise(model, image, image, torch.zeros(1, 3, *model.flow_shape(SHAPE)),
                          InstanceOptOptions(steps=1, integrate="sometimes"))


def test_mind_similarity_also_runs():
    moving = _blobs(7)
    fixed = torch.roll(moving, shifts=1, dims=3)
    model = _model()
    ddf = instance_optimise(model, fixed, moving, torch.zeros(1, 3, *model.flow_shape(SHAPE)),
                            InstanceOptOptions(steps=3, coarse_steps=3, similarity="mind"))
    assert ddf.shape == (1, 3, *SHAPE) and torch.isfinite(ddf).all()
    assert np.isfinite(jacobian_stats(ddf)["folding_percent"])
