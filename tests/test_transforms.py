import numpy as np
import pytest
from conftest import shared_file

from unireg.io import Grid, Image, apply_affine, load_image
from unireg.transforms import (
    DisplacementField,
    crop_or_pad,
    crop_to_multiple,
    grid_with_spacing,
    reorient_to_ras,
    resample,
)

BLOB_CENTRE = np.array([3.7, -5.2, 9.1])  # world mm


def _blob(grid: Grid, sigma=5.0) -> Image:
    world = grid.world_coordinates()
    data = np.exp(-((world - BLOB_CENTRE) ** 2).sum(-1) / (2 * sigma**2))
    return Image(data.astype(np.float32), grid.affine)


def _centroid_world(image: Image) -> np.ndarray:
    w = np.clip(image.data, 0, None)
    world = image.grid.world_coordinates()
    return (world * w[..., None]).reshape(-1, 3).sum(0) / w.sum()


def _odd_grid() -> Grid:
    """Flipped, permuted, anisotropic (0.9 x 0.9 x 3 mm) and shifted relative to RAS."""
    affine = np.zeros((4, 4))
    affine[:3, 0] = [0, -0.9, 0]  # i -> posterior
    affine[:3, 1] = [0, 0, 3.0]  # j -> superior, 3 mm
    affine[:3, 2] = [-0.9, 0, 0]  # k -> left
    affine[:3, 3] = [31.3, 38.7, -27.4]
    affine[3, 3] = 1
    return Grid((80, 20, 70), affine)


RAS_GRID = Grid((64, 64, 64), np.array([[1.0, 0, 0, -30], [0, 1, 0, -33.5], [0, 0, 1, -28], [0, 0, 0, 1]]))


@pytest.mark.parametrize("codes", [("P", "S", "R"), ("L", "I", "A"), ("R", "A", "S"), ("S", "L", "P")])
def test_reorient_to_ras_keeps_every_voxel_at_its_world_position(codes):
    axis = {"R": [1, 0, 0], "L": [-1, 0, 0], "A": [0, 1, 0], "P": [0, -1, 0], "S": [0, 0, 1], "I": [0, 0, -1]}
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack([axis[c] for c in codes]) * [1.2, 0.8, 2.5]
    affine[:3, 3] = [10, -20, 5]
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    image = Image(data, affine)
    ras = reorient_to_ras(image)
    assert ras.orientation == ("R", "A", "S")
    assert sorted(ras.spacing) == sorted(image.spacing)
    # the voxel holding value v sits at the same world point before and after
    before = image.grid.world_coordinates().reshape(-1, 3)[data.ravel().astype(int)]
    order = ras.data.ravel().astype(int)
    after = np.empty_like(before)
    after[order] = ras.grid.world_coordinates().reshape(-1, 3)
    np.testing.assert_allclose(after, before, atol=1e-9)


def test_resample_round_trip_through_odd_grid_within_half_a_voxel():
    source = _blob(RAS_GRID, sigma=8.0)
    odd = resample(source, _odd_grid())
    # on the odd grid, the blob is where it is in the world (within half its voxel)
    half_odd = 0.5 * np.array(sorted(_odd_grid().spacing))
    err_odd = np.abs(_centroid_world(odd) - BLOB_CENTRE)
    assert np.all(err_odd <= half_odd.max()), err_odd
    back = resample(odd, RAS_GRID)
    assert np.linalg.norm(_centroid_world(back) - BLOB_CENTRE) < 0.5
    # and the intensities agree with the analytic blob, not only the centroid
    inside = source.data > 0.3
    assert np.abs(back.data[inside] - source.data[inside]).max() < 0.08


def test_resample_with_transform_pulls_from_moved_world():
    source = _blob(RAS_GRID)
    shift = np.eye(4)
    shift[:3, 3] = [4.0, -2.0, 6.0]  # output world p samples input world p + shift
    moved = resample(source, RAS_GRID, shift)
    np.testing.assert_allclose(_centroid_world(moved), BLOB_CENTRE - shift[:3, 3], atol=0.05)


@pytest.mark.parametrize("mode", ["nearest", "onehot"])
def test_label_resampling_never_invents_labels(mode):
    labels = load_image(shared_file("ixi_t1_dlmuse", "labels", "IXI012-HH-1211_T1_DLMUSE.nii.gz"), label=True)
    grid = _odd_grid()
    grid = Grid(grid.shape, np.array(grid.affine) @ np.diag([2.0, 1.0, 2.0, 1.0]))  # cover the head
    out = resample(labels, grid, label_mode=mode)
    assert out.is_label and out.data.dtype.kind in "iu"
    assert set(np.unique(out.data)) <= set(np.unique(labels.data))
    assert len(np.unique(out.data)) > 50  # really resampled the head, not an empty box
    back = resample(out, labels.grid, label_mode=mode)
    assert set(np.unique(back.data)) <= set(np.unique(labels.data))


def test_label_resampling_on_synthetic_map_keeps_only_present_values():
    rng = np.random.default_rng(0)
    data = rng.choice([0, 3, 17, 250], size=(20, 20, 20)).astype(np.int32)
    lab = Image(data, RAS_GRID.affine, is_label=True)
    for mode in ("nearest", "onehot"):
        out = resample(lab, grid_with_spacing(lab.grid, 0.7), label_mode=mode)
        assert set(np.unique(out.data)) <= {0, 3, 17, 250}


def test_onehot_label_resampling_is_partial_volume():
    """4x coarser: a label covering a quarter of an output voxel vanishes, one covering three
    quarters stays, and where labels meet without background no hole opens."""
    data = np.zeros((16, 16, 16), np.int32)
    data[6] = 7  # 1 of the 4 fine slices of coarse slice 1 (fine 4..7)
    data[8:11] = 9  # 3 of the 4 fine slices of coarse slice 2 (fine 8..11)
    coarse = grid_with_spacing(Grid(data.shape, np.eye(4)), 4.0)
    out = resample(Image(data, np.eye(4), is_label=True), coarse, label_mode="onehot").data
    assert 7 not in out and (out[2] == 9).all() and (out[[0, 1, 3]] == 0).all()
    nearest = resample(Image(data, np.eye(4), is_label=True), coarse, label_mode="nearest").data
    assert (nearest[1] == 7).all()  # point sampling keeps the thin slice: what partial volume avoids
    three = np.ones((16, 16, 16), np.int32)
    three[:, 6:] = 2
    three[:, 10:] = 3
    out = resample(Image(three, np.eye(4), is_label=True), coarse, label_mode="onehot").data
    assert (out > 0).all() and set(np.unique(out)) <= {1, 2, 3}


def test_grid_with_spacing_keeps_field_of_view():
    grid = Grid((91, 109, 91), np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]))
    fine = grid_with_spacing(grid, 1.0)
    assert fine.shape == (182, 218, 182)
    assert fine.spacing == (1.0, 1.0, 1.0) and fine.orientation == grid.orientation
    coarse_centre = grid.corners_world().mean(0)
    np.testing.assert_allclose(fine.corners_world().mean(0), coarse_centre, atol=1e-9)


def test_crop_to_multiple_of_16_is_exact_and_contains_foreground():
    data = np.zeros((50, 61, 47), np.float32)
    data[7:40, 12:55, 3:30] = 1.0
    image = Image(data, RAS_GRID.affine)
    cropped, start = crop_to_multiple(image, multiple=16)
    assert all(s % 16 == 0 for s in cropped.shape)
    assert cropped.data.sum() == data.sum()  # nothing of the foreground lost
    # same world position for the same voxel value: origin moved by exactly `start` voxels
    np.testing.assert_allclose(cropped.affine[:3, 3], apply_affine(image.affine, start[None].astype(float))[0])
    back = crop_or_pad(cropped, -start, data.shape)
    np.testing.assert_array_equal(back.data, data)


def test_displacement_field_moves_world_points_by_its_mm_values():
    """p -> p + d(p), d trilinear on the field's own (oblique, anisotropic) grid; constant beyond its edge."""
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ affine[:3, :3]
    affine[:3, 3] = [10.0, -4.0, 2.0]
    data = np.random.default_rng(0).normal(size=(3, 6, 5, 4))
    field = DisplacementField(data, affine)
    assert field.shape == (6, 5, 4)
    voxels = np.array([[0, 0, 0], [5, 4, 3], [2, 3, 1]], dtype=float)
    points = apply_affine(affine, voxels)
    expected = points + data[:, [0, 5, 2], [0, 4, 3], [0, 3, 1]].T
    np.testing.assert_allclose(field(points), expected, atol=1e-9)
    halfway = apply_affine(affine, np.array([[0.5, 0.0, 0.0]]))
    np.testing.assert_allclose(field(halfway), halfway + (data[:, 0, 0, 0] + data[:, 1, 0, 0]) / 2, atol=1e-9)
    beyond = apply_affine(affine, np.array([[-3.0, 0.0, 0.0]]))
    np.testing.assert_allclose(field(beyond), beyond + data[:, 0, 0, 0], atol=1e-9)
