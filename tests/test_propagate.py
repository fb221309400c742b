import numpy as np
from conftest import shared_file

from unireg.affine import write_affine_txt
from unireg.cli import main
from unireg.io import Grid, Image, load_image, save_displacement, save_image
from unireg.metrics import mean_dice
from unireg.propagate import propagate_labels
from unireg.transforms import DisplacementField, resample


def _odd_native_grid() -> Grid:
    """PSR-oriented 1.5 x 1.5 x 2.5 mm grid around the brain, like a scanner's sagittal series."""
    affine = np.zeros((4, 4))
    affine[:3, 0] = [0, -1.5, 0]
    affine[:3, 1] = [0, 0, 1.5]
    affine[:3, 2] = [2.5, 0, 0]
    affine[:3, 3] = [-80, 110, -80]
    affine[3, 3] = 1
    return Grid((150, 120, 64), affine)


def _some_affine() -> np.ndarray:
    t = np.eye(4)
    angle = np.deg2rad(8)
    t[:3, :3] = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]) * 1.05
    t[:3, 3] = [3.0, -6.0, 4.0]
    return t


def test_propagation_composes_affine_and_displacement_in_one_resampling(default_atlas, tmp_path):
    grid = _odd_native_grid()
    native = Image(np.zeros(grid.shape, np.float32), grid.affine)
    matrix = _some_affine()
    shift = np.array([4.0, 0.0, -2.0])  # mm, constant displacement on the atlas grid
    field = np.broadcast_to(shift[:, None, None, None], (3, *default_atlas.grid.shape)).copy()
    out = propagate_labels(default_atlas.labels, native, matrix, DisplacementField(field, default_atlas.grid.affine))
    translate = np.eye(4)
    translate[:3, 3] = shift
    expected = resample(default_atlas.labels, grid, translate @ np.linalg.inv(matrix))
    assert (out.data == expected.data).mean() > 0.995  # only ties at voxel boundaries may differ
    assert set(np.unique(out.data)) == {0, 1, 2, 3}
    # through the CLI, with files
    save_image(native, tmp_path / "native.nii.gz")
    save_image(default_atlas.labels, tmp_path / "atlas_labels.nii.gz")
    write_affine_txt(tmp_path / "affine.txt", matrix)
    save_displacement(field, default_atlas.grid.affine, tmp_path / "disp.nii.gz")
    assert (
        main(
            [
                "propagate",
                "--atlas-labels",
                str(tmp_path / "atlas_labels.nii.gz"),
                "--native",
                str(tmp_path / "native.nii.gz"),
                "--affine",
                str(tmp_path / "affine.txt"),
                "--displacement",
                str(tmp_path / "disp.nii.gz"),
                "--out",
                str(tmp_path / "labels.nii.gz"),
            ]
        )
        == 0
    )
    written = load_image(tmp_path / "labels.nii.gz", label=True)
    np.testing.assert_array_equal(written.data, out.data)
    np.testing.assert_allclose(written.affine, grid.affine)


def test_real_labels_survive_native_to_atlas_and_back(default_atlas):
    """Real DLMUSE labels: native -> atlas grid through T, then propagated back: conventions agree."""
    native = load_image(shared_file("ixi_t1_dlmuse", "labels", "IXI012-HH-1211_T1_DLMUSE.nii.gz"), label=True)
    matrix = _some_affine()
    on_atlas = resample(native, default_atlas.grid, matrix)
    back = propagate_labels(on_atlas, native, matrix)
    brain = native.data > 0
    assert mean_dice(native.data, back.data) > 0.8
    assert (back.data[brain] == native.data[brain]).mean() > 0.85
