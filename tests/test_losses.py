"""unireg.losses: the fast local NCC (box sums), MIND-SSC's box filter, and their invariances."""

import pytest
import torch
import torch.nn.functional as F
from conftest import blobs
from monai.losses import LocalNormalizedCrossCorrelationLoss

from unireg.losses import ImageSimilarity, _box_sum, box_sum, lncc_loss


@pytest.mark.parametrize("size", [3, 5, 7])
def test_lncc_matches_monai(size):
    warped, fixed = blobs(0), blobs(1)
    fixed = 0.6 * warped + 0.4 * fixed
    reference = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=size, kernel_type="rectangular")
    # float32 box sums by cumulative sums vs convolutions: equal up to rounding in near-constant windows
    assert lncc_loss(warped, fixed, size).item() == pytest.approx(reference(warped, fixed).item(), rel=2e-3)


def test_box_sum_is_a_zero_padded_box_filter():
    x = torch.rand(2, 3, 9, 10, 11, dtype=torch.float64)
    ones = torch.ones(3, 1, 5, 5, 5, dtype=torch.float64)
    expected = F.conv3d(x, ones, padding=2, groups=3)
    assert torch.allclose(box_sum(x, 5), expected, atol=1e-10)


def test_box_sum_backward_is_its_adjoint():
    """The hand-written backward (the box sum of the gradient) is the exact gradient: torch's own
    check in float64, and equal to autograd through the cumulative sums."""
    x = torch.rand(1, 2, 6, 7, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_sum(t, 3), (x,))
    weights = torch.rand(1, 2, 6, 7, 8, dtype=torch.float64)
    (mine,) = torch.autograd.grad((box_sum(x, 5) * weights).sum(), x)
    (autograd,) = torch.autograd.grad((_box_sum(x, 5) * weights).sum(), x)
    assert torch.allclose(mine, autograd, atol=1e-12)


def test_a_prepared_target_gives_the_same_loss_and_gradient():
    """ImageSimilarity.prepare (the fixed image's window sums computed once, as instance optimisation
    does) changes neither the LNCC nor its gradient with respect to the warped image."""
    fixed = blobs(1)
    similarity = ImageSimilarity("lncc")
    prepared = similarity.prepare(fixed)
    results = []
    for target in (fixed, prepared):
        warped = (0.7 * blobs(0) + 0.3 * fixed).requires_grad_(True)
        loss = similarity.compare(warped, target)
        results.append((loss.detach(), torch.autograd.grad(loss, warped)[0]))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-9)
    assert similarity.prepare(fixed) is not fixed and ImageSimilarity("mind").prepare(fixed) is fixed


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
