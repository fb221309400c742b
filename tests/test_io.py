import nibabel as nib
import numpy as np
import pytest

from unireg.errors import UniregError
from unireg.io import Grid, Image, load_image, save_image


def _affine():
    aff = np.diag([0.9, 1.1, 3.0, 1.0])
    aff[:3, 3] = [-40.0, 12.5, 7.0]
    return aff


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("label", [False, True])
def test_save_load_round_trip(tmp_path, suffix, label):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 300, (7, 8, 9)).astype(np.int32) if label else rng.normal(size=(7, 8, 9)).astype(np.float32)
    path = save_image(Image(data, _affine(), is_label=label), tmp_path / f"x{suffix}")
    back = load_image(path, label=label)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, _affine(), atol=1e-6)
    assert back.spacing == pytest.approx((0.9, 1.1, 3.0))
    assert back.orientation == ("R", "A", "S")
    assert back.meta["source_path"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    header = nib.load(str(path)).header
    assert header["descrip"].tobytes().strip(b"\x00") == b""


def test_single_volume_4d_is_squeezed_and_multi_volume_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), tmp_path / "one.nii.gz")
    assert load_image(tmp_path / "one.nii.gz").shape == (4, 5, 6)
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 3), np.float32), np.eye(4)), tmp_path / "three.nii.gz")
    with pytest.raises(UniregError, match=r"three.nii.gz: expected a 3-D image, got shape \(4, 5, 6, 3\)"):
        load_image(tmp_path / "three.nii.gz", subject="sub-01")


@pytest.mark.parametrize("shape", [(10, 12), (10, 12, 1)])
def test_2d_image_refused(tmp_path, shape):
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(UniregError) as err:
        load_image(tmp_path / "flat.nii.gz", subject="sub-02")
    assert str(err.value).startswith("sub-02: ") and "flat.nii.gz" in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(UniregError, match="sub-03: .*broken.nii.gz: cannot read as NIfTI"):
        load_image(bad, subject="sub-03")
    with pytest.raises(UniregError, match="file not found"):
        load_image(tmp_path / "nope.nii.gz")


def test_label_map_with_fractional_values_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 1.5, np.float32), np.eye(4)), tmp_path / "lab.nii.gz")
    with pytest.raises(UniregError, match="non-integer"):
        load_image(tmp_path / "lab.nii.gz", label=True)


def test_grid_world_coordinates_and_corners():
    grid = Grid((3, 4, 5), _affine())
    world = grid.world_coordinates()
    np.testing.assert_allclose(world[2, 3, 4], _affine()[:3, :3] @ [2, 3, 4] + _affine()[:3, 3])
    corners = grid.corners_world()
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(axis=0), world.reshape(-1, 3).min(axis=0))
