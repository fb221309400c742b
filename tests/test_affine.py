import numpy as np
import pytest
from conftest import dice, shared_file
from scipy.spatial.transform import Rotation

from unireg.affine import align_affine, read_affine_txt, read_itk_affine, write_affine_txt, write_itk_affine
from unireg.intensity import normalise_intensity
from unireg.io import Grid, apply_affine, load_image
from unireg.transforms import reorient_to_ras, resample


def _random_affine(rng) -> np.ndarray:
    """Rotation <= 15 deg, translation <= 15 mm, scale within +-10 %."""
    axis = rng.normal(size=3)
    rotation = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.deg2rad(rng.uniform(8, 15))).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(rng.uniform(0.9, 1.1, 3))
    matrix[:3, 3] = rng.uniform(-15, 15, 3)
    return matrix


def _bbox_corners_world(atlas) -> np.ndarray:
    nz = np.argwhere(atlas.mask.data)
    lo, hi = nz.min(0), nz.max(0)
    corners = np.array([[(hi if b else lo)[a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], float)
    return apply_affine(atlas.grid.affine, corners)


def _moved_template(atlas, truth):
    """The template seen through `truth` (atlas world -> moving world), on a padded grid."""
    pad = np.eye(4)
    pad[:3, 3] = -12
    grid = Grid(tuple(np.array(atlas.grid.shape) + 24), atlas.grid.affine @ pad)
    return resample(atlas.image, grid, np.linalg.inv(truth))


def _nonmonotonic_remap(image):
    d = image.data
    return image.with_data(np.where(d > 0.02, 0.2 + 0.8 * np.sin(1.5 * np.pi * d) ** 2, 0).astype(np.float32))


@pytest.mark.parametrize("remap", [False, True], ids=["same-modality", "nonmonotonic-remap"])
@pytest.mark.parametrize("seed", [3, 11])
def test_recovers_known_affine_on_mni_template_within_1mm(default_atlas, remap, seed):
    truth = _random_affine(np.random.default_rng(seed))
    moving = _moved_template(default_atlas, truth)
    if remap:
        moving = _nonmonotonic_remap(moving)
    result = align_affine(moving, default_atlas.image, fixed_mask=default_atlas.mask.data > 0, similarity="mi")
    corners = _bbox_corners_world(default_atlas)
    error = np.linalg.norm(apply_affine(result.matrix, corners) - apply_affine(truth, corners), axis=1).mean()
    start = np.linalg.norm(apply_affine(result.initial_matrix, corners) - apply_affine(truth, corners), axis=1).mean()
    assert start > 5.0  # the problem was not solved by the centre-of-mass start
    assert error < 1.0, f"mean bounding-box corner error {error:.2f} mm"
    assert result.loss_after < result.loss_before


def test_lncc_same_modality_also_recovers(default_atlas):
    truth = _random_affine(np.random.default_rng(5))
    moving = _moved_template(default_atlas, truth)
    result = align_affine(moving, default_atlas.image, similarity="lncc", iterations=(100, 60, 20))
    corners = _bbox_corners_world(default_atlas)
    error = np.linalg.norm(apply_affine(result.matrix, corners) - apply_affine(truth, corners), axis=1).mean()
    assert error < 1.5


def test_deterministic_for_a_seed(default_atlas):
    moving = _moved_template(default_atlas, _random_affine(np.random.default_rng(1)))
    kwargs = dict(levels=(4, 2), iterations=(40, 20), seed=7)
    first = align_affine(moving, default_atlas.image, **kwargs).matrix
    second = align_affine(moving, default_atlas.image, **kwargs).matrix
    np.testing.assert_array_equal(first, second)


def test_real_t2_aligns_to_its_t1():
    """Real cross-modal pair (IXI002): T2 moved by a known affine comes back onto T1."""
    t1 = reorient_to_ras(load_image(shared_file("ixi002_t1_t2", "hd_bet_IXI002-Guys-0828-T1.nii.gz")))
    t2 = reorient_to_ras(load_image(shared_file("ixi002_t1_t2", "hd_bet_IXI002-Guys-0828-T2.nii.gz")))
    m1 = reorient_to_ras(load_image(shared_file("ixi002_t1_t2", "hd_bet_mask_IXI002-Guys-0828-T1.nii.gz"), label=True))
    m2 = reorient_to_ras(load_image(shared_file("ixi002_t1_t2", "hd_bet_mask_IXI002-Guys-0828-T2.nii.gz"), label=True))
    # work at 2 mm, as the pipeline does
    from unireg.transforms import grid_with_spacing

    grid = grid_with_spacing(t1.grid, 2.0)
    fixed = normalise_intensity(resample(t1, grid), mask=resample(m1, grid).data > 0)
    fixed_mask = resample(m1, grid).data > 0
    perturb = _random_affine(np.random.default_rng(2))
    # give the T2 a wrong header: its world is moved by `perturb`
    t2_moved = t2.with_data(t2.data, affine=perturb @ t2.affine)
    m2_moved = m2.with_data(m2.data, affine=perturb @ m2.affine)
    moving = normalise_intensity(t2_moved, mask=m2_moved.data > 0)
    before = dice(resample(m2_moved, grid).data, fixed_mask)
    result = align_affine(moving, fixed, moving_mask=m2_moved.data > 0, fixed_mask=fixed_mask)
    after = dice(resample(m2_moved, grid, result.matrix).data, fixed_mask)
    assert before < 0.85
    assert after > 0.95, f"brain-mask Dice T2->T1 after alignment {after:.3f} (before {before:.3f})"


def test_transform_files_round_trip_and_itk_is_lps(tmp_path):
    matrix = _random_affine(np.random.default_rng(4))
    write_affine_txt(tmp_path / "a.txt", matrix)
    np.testing.assert_allclose(read_affine_txt(tmp_path / "a.txt"), matrix, atol=1e-8)
    write_itk_affine(tmp_path / "a_itk.txt", matrix)
    np.testing.assert_allclose(read_itk_affine(tmp_path / "a_itk.txt"), matrix, atol=1e-8)
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -3.0, 2.0]  # RAS: 5 mm right, 3 mm posterior, 2 mm superior
    text = write_itk_affine(tmp_path / "s.txt", shift)
    assert "AffineTransform_double_3_3" in text
    assert text.splitlines()[3].split()[-3:] == ["-5", "3", "2"]  # LPS: x and y flip sign
    # an ITK file with a rotation centre reads back to the same point mapping
    (tmp_path / "c.txt").write_text(
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        "Parameters: 0 -1 0 1 0 0 0 0 1 0 0 0\nFixedParameters: 10 0 0\n"
    )
    ras = read_itk_affine(tmp_path / "c.txt")
    centre_ras = np.array([-10.0, 0.0, 0.0])  # LPS (10, 0, 0)
    np.testing.assert_allclose(apply_affine(ras, centre_ras[None])[0], centre_ras, atol=1e-9)
