import numpy as np
import pytest

from unireg.errors import UniregError
from unireg.intensity import handle_nonfinite, normalise_intensity
from unireg.io import Image


def _image(data, path="/data/sub-01_T1w.nii.gz"):
    return Image(np.asarray(data, np.float32), np.eye(4), path=path)


def test_normalise_clips_robust_percentiles_to_unit_range():
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 200, (20, 20, 20))
    data[0, 0, 0] = 1e6  # one hot outlier must not compress everything else
    out = normalise_intensity(_image(data), percentiles=(1, 99))
    assert out.data.min() == 0.0 and out.data.max() == 1.0
    assert 0.4 < np.median(out.data) < 0.6
    lo, hi = np.percentile(data, (1, 99))
    assert out.meta["normalisation"]["low"] == pytest.approx(lo, rel=1e-5)
    assert out.meta["normalisation"]["high"] == pytest.approx(hi, rel=1e-5)


def test_normalise_uses_mask_and_zeroes_outside():
    data = np.full((10, 10, 10), 1000.0)
    data[2:8, 2:8, 2:8] = np.linspace(10, 20, 216).reshape(6, 6, 6)
    mask = np.zeros(data.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    out = normalise_intensity(_image(data), mask=mask, percentiles=(0, 100))
    np.testing.assert_allclose(out.data[mask], (data[mask] - 10) / 10, atol=1e-6)
    assert np.all(out.data[~mask] == 0)


def test_nan_is_an_error_naming_subject_and_file():
    data = np.ones((6, 6, 6))
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    with pytest.raises(UniregError) as err:
        handle_nonfinite(_image(data), "error", subject="sub-07")
    msg = str(err.value)
    assert msg.startswith("sub-07: /data/sub-01_T1w.nii.gz: 2 NaN/Inf voxels") and "\n" not in msg
    with pytest.raises(UniregError, match="NaN/Inf"):
        normalise_intensity(_image(data))


def test_nan_zero_policy_masks_them():
    data = np.random.default_rng(1).uniform(1, 2, (6, 6, 6))
    data[1, 2, 3] = np.nan
    fixed, finite = handle_nonfinite(_image(data), "zero")
    assert np.all(np.isfinite(fixed.data)) and fixed.data[1, 2, 3] == 0 and not finite[1, 2, 3]
    assert finite.sum() == data.size - 1


@pytest.mark.parametrize("data,match", [(np.zeros((8, 8, 8)), "empty"), (np.full((8, 8, 8), 3.0), "constant")])
def test_empty_or_constant_image_refused(data, match):
    with pytest.raises(UniregError, match=match):
        normalise_intensity(_image(data))
