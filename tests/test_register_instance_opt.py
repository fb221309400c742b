"""Test-time instance optimisation (unireg.register.instance_optimise); its similarities are in test_losses,
its box-restricted warp in test_fields."""

import numpy as np
import pytest
import torch
from conftest import blobs

from unireg.errors import UniregError
from unireg.features import build_extractor
from unireg.fields import jacobian_stats, warp
from unireg.losses import ImageSimilarity
from unireg.model import UniRegNet
from unireg.register import InstanceOptOptions, instance_optimise

SHAPE = (32, 40, 36)


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
    moving = blobs(5)
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
    image = blobs(6)
    with pytest.raises(UniregError, match="integrate"):
        instance_optimise(
            model,
            image,
            image,
            torch.zeros(1, 3, *model.flow_shape(SHAPE)),
            InstanceOptOptions(steps=1, integrate="sometimes"),
        )


def test_mind_similarity_also_runs():
    moving = blobs(7)
    fixed = torch.roll(moving, shifts=1, dims=3)
    model = _model()
    ddf = instance_optimise(
        model,
        fixed,
        moving,
        torch.zeros(1, 3, *model.flow_shape(SHAPE)),
        InstanceOptOptions(steps=3, coarse_steps=3, similarity="mind"),
    )
    assert ddf.shape == (1, 3, *SHAPE) and torch.isfinite(ddf).all()
    assert np.isfinite(jacobian_stats(ddf)["folding_percent"])
