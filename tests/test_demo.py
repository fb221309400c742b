"""The demo cohort: real MR DICOM series that dcm2niix converts onto the grid of their reference labels."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dcm2niix
import nibabel
import numpy as np
import pydicom
import pytest

from unireg.demo import (
    SliceStack,
    make_demo_cohort,
    mni_tissue_labels,
    plane_directions,
    predicted_nifti_grid,
    write_dicom_series,
)
from unireg.errors import UniregError
from unireg.io import Image, load_image
from unireg.metrics import dice_per_label
from unireg.transforms import grid_with_spacing, reorient_to_ras, resample

CSF, GM, WM = 1, 2, 3


def run_dcm2niix(folder: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    subprocess.run(
        [dcm2niix.bin, "-z", "y", "-b", "y", "-ba", "y", "-f", "%j", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    return out


def read_series(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    """Every series in ``folder`` (by SeriesInstanceUID), slices in InstanceNumber order."""
    series: dict[str, list] = {}
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    return {uid: sorted(slices, key=lambda ds: int(ds.InstanceNumber)) for uid, slices in series.items()}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cohort"
    return out, make_demo_cohort(out, low_res=True, seed=0, reference_atlas="mni2009a")  # tissue labels


@pytest.fixture(scope="module")
def converted(cohort, tmp_path_factory) -> dict[str, Image]:
    """The main series of each subject as dcm2niix converts it (the whole subject folder is given)."""
    out_dir, info = cohort
    root = tmp_path_factory.mktemp("dcm2niix")
    images = {}
    for subject in info["subjects"]:
        out = run_dcm2niix(out_dir / subject["dicom"], root / subject["subject"])
        images[subject["subject"]] = load_image(out / f"{subject['main_series']}.nii.gz")
    return images


def test_low_res_cohort_layout(cohort):
    out_dir, info = cohort
    assert info["seed"] == 0 and info["low_res"] is True
    assert [s["subject"] for s in info["subjects"]] == ["demo01", "demo02"]
    lines = (out_dir / "cohort.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["subject", "dicom", "reference"]
    rows = [line.split("\t") for line in lines[1:]]
    assert rows == [[s["subject"], s["dicom"], s["reference"]] for s in info["subjects"]]
    for subject, dicom, reference in rows:
        assert subject.isalnum()
        assert (out_dir / dicom).is_dir() and (out_dir / reference).is_file()
    descriptions = [[series["description"] for series in s["series"]] for s in info["subjects"]]
    assert descriptions == [["localizer", "T1w_MPRAGE_demo"], ["T2w_demo"]]
    assert not any(p.name.startswith(".demo-") for p in out_dir.iterdir())  # no work folder left


def test_series_are_real_mr_dicom_with_consistent_geometry(cohort):
    out_dir, info = cohort
    sop_uids = set()
    for subject in info["subjects"]:
        series = read_series(out_dir / subject["dicom"])
        assert set(series) == {s["series_uid"] for s in subject["series"]}
        number = int(subject["subject"][-2:])
        for entry in subject["series"]:
            slices = series[entry["series_uid"]]
            assert len(slices) == entry["n_files"]
            for ds in slices:
                assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
                assert ds.SeriesDescription == entry["description"]
                assert (ds.BitsAllocated, ds.PixelRepresentation, ds.SamplesPerPixel) == (16, 0, 1)
                assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
                assert (str(ds.PatientName), ds.PatientID) == (f"Demo^Subject{number:02d}", f"DEMO{number:02d}")
                sop_uids.add(ds.SOPInstanceUID)
            if entry["image_type"].endswith("LOCALIZER"):
                continue
            assert sorted(subject["shape"]) == sorted([slices[0].Rows, slices[0].Columns, len(slices)])
            orientation = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
            row, col = orientation[:3], orientation[3:]
            assert np.allclose([row @ row, col @ col, row @ col], [1, 1, 0], atol=1e-6)
            positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in slices])
            steps = np.diff(positions, axis=0)
            spacing = float(slices[0].SpacingBetweenSlices)
            assert spacing == info["slice_thickness_mm"] == float(slices[0].SliceThickness)
            np.testing.assert_allclose(steps, np.broadcast_to(spacing * np.cross(row, col), steps.shape), atol=1e-6)
    n_files = sum(s["n_files"] for subject in info["subjects"] for s in subject["series"])
    assert len(sop_uids) == n_files


def test_localizer_is_a_separate_three_plane_series(cohort):
    out_dir, info = cohort
    series = read_series(out_dir / "dicom" / "demo01")
    localizer = [s for s in series.values() if "LOCALIZER" in s[0].ImageType]
    assert len(localizer) == 1 and len(series) == 2
    normals = {
        tuple(np.round(np.cross(*np.reshape(np.asarray(ds.ImageOrientationPatient, float), (2, 3))), 3))
        for ds in localizer[0]
    }
    assert len(localizer[0]) == 3 and len(normals) == 3


def test_dcm2niix_grid_is_predicted_from_tags_and_matches_the_reference(cohort, converted):
    out_dir, info = cohort
    for subject in info["subjects"]:
        image = converted[subject["subject"]]
        slices = read_series(out_dir / subject["dicom"])[subject["main_series"]]
        predicted = predicted_nifti_grid(slices)
        assert image.shape == predicted.shape == tuple(subject["shape"])
        np.testing.assert_allclose(image.affine, predicted.affine, atol=1e-3)
        reference = load_image(out_dir / subject["reference"], label=True)
        assert reference.shape == image.shape
        np.testing.assert_allclose(reference.affine, image.affine, atol=1e-3)
    # the 3D T1 is reoriented to RAS by dcm2niix, the 2D sagittal T2 keeps its slice order
    assert converted["demo01"].orientation == ("R", "A", "S")
    assert converted["demo02"].orientation == ("P", "S", "R")


def _agreement(image: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of brain voxels whose intensity is nearest to the mean of their own tissue."""
    brain = labels > 0
    means = np.array([image[labels == k].mean() for k in (CSF, GM, WM)])
    nearest = np.argmin(np.abs(image[brain][:, None] - means[None]), axis=1) + 1
    return float(np.mean(nearest == labels[brain]))


@pytest.mark.parametrize("subject, order", [("demo01", (CSF, GM, WM)), ("demo02", (WM, GM, CSF))])
def test_image_content_agrees_with_reference_labels(cohort, converted, subject, order):
    out_dir, info = cohort
    image = converted[subject].data
    labels = load_image(out_dir / f"reference/sub-{subject}_labels.nii.gz", label=True).data
    means = [image[labels == k].mean() for k in order]  # darkest tissue first
    assert means[0] * 1.15 < means[1] and means[1] * 1.15 < means[2]
    brain = labels > 0
    bright = image > 0.15 * np.percentile(image[brain], 99)
    assert bright[brain].mean() > 0.97
    assert bright[~brain].mean() < 0.25
    # voxel-wise agreement, and a left-right flip of the labels (a symmetric template!) breaks it
    lr_axis = [i for i, code in enumerate(converted[subject].orientation) if code in "LR"][0]
    agreement = _agreement(image, labels)
    assert agreement > 0.6
    assert agreement > _agreement(image, np.flip(labels, lr_axis)) + 0.2


def test_deformations_are_real_smooth_and_distinct(cohort):
    out_dir, info = cohort
    t1, mni_labels = mni_tissue_labels()
    mni_grid = grid_with_spacing(t1.grid, 2.0)
    in_mni = []
    for subject in info["subjects"]:
        assert subject["jacobian_min"] > 0.2
        assert 3.0 < subject["displacement_mm"]["max"] < 20.0
        reference = load_image(out_dir / subject["reference"], label=True)
        to_mni = np.asarray(subject["subject_to_mni_affine"])
        # same grid and resampling, affine only: the deformation changes GM clearly but not wildly
        affine_only = resample(mni_labels, reference.grid, transform=to_mni)
        gm_dice = dice_per_label(reference.data, affine_only.data, [GM])[GM]
        assert 0.5 < gm_dice < 0.9
        in_mni.append(resample(reference, mni_grid, transform=np.linalg.inv(to_mni)))
    gm_dice = dice_per_label(in_mni[0].data, in_mni[1].data, [GM])[GM]
    assert 0.5 < gm_dice < 0.9
    brain_dice = dice_per_label(in_mni[0].data > 0, in_mni[1].data > 0, [1])[1]
    assert brain_dice > 0.9


def test_same_seed_gives_byte_identical_files(cohort, tmp_path):
    out_dir, info = cohort
    again = make_demo_cohort(tmp_path / "again", low_res=True, seed=0, reference_atlas="mni2009a")
    assert tree_digest(tmp_path / "again") == tree_digest(out_dir)
    assert {k: v for k, v in again.items() if k != "out_dir"} == {k: v for k, v in info.items() if k != "out_dir"}


def test_structure_reference_labels_are_the_allen_atlas_under_the_same_deformation(cohort, tmp_path):
    """The default reference: the structures of mni2009a-allen (ids of the 2 mm atlas), drawn through
    the very same deformation as the images (which do not change) and the tissue labels."""
    from unireg.atlas import load_atlas

    out_dir, info = cohort
    allen = make_demo_cohort(tmp_path / "allen", low_res=True, seed=0)  # the default reference atlas
    assert allen["reference_labels"] == {"atlas": "mni2009a-allen", "atlas_spacing_mm": 2.0}
    assert tree_digest(tmp_path / "allen" / "dicom") == tree_digest(out_dir / "dicom")
    table = load_atlas("mni2009a-allen").table
    hippocampus = [i for i, name in table.items() if "hippocampus" in name and "parahippocampal" not in name]
    for subject, tissue_subject in zip(allen["subjects"], info["subjects"]):
        structures = load_image(tmp_path / "allen" / subject["reference"], label=True)
        tissue = load_image(out_dir / tissue_subject["reference"], label=True)
        assert structures.shape == tissue.shape and np.allclose(structures.affine, tissue.affine)
        assert set(np.unique(structures.data).tolist()) - {0} <= set(table)
        assert len(np.unique(structures.data)) > 100  # many structures, not 3 classes
        labelled = structures.data > 0
        assert (tissue.data[labelled] > 0).mean() > 0.95  # structures lie inside the brain
        in_hippocampus = np.isin(structures.data, hippocampus)
        assert in_hippocampus.sum() > 20 and (tissue.data[in_hippocampus] == GM).mean() > 0.5


def test_no_reference_labels_for_an_atlas_of_your_own(tmp_path):
    info = make_demo_cohort(tmp_path, n_subjects=1, low_res=True, reference_atlas=None)
    assert info["reference_labels"] is None and info["subjects"][0]["reference"] is None
    assert not (tmp_path / "reference").exists()
    assert (tmp_path / "cohort.tsv").read_text().splitlines()[1] == "demo01\tdicom/demo01\t"
    with pytest.raises(UniregError, match="built-in atlas"):
        make_demo_cohort(tmp_path / "x", n_subjects=1, low_res=True, reference_atlas="aal")


def test_refuses_to_replace_folders_it_did_not_write(tmp_path):
    (tmp_path / "dicom").mkdir()
    with pytest.raises(UniregError, match="not written by the demo"):
        make_demo_cohort(tmp_path, low_res=True)


def test_real_subject_converts_back_to_the_nibabel_file(tmp_path):
    """The nibabel T1 alone: stored with a rescale intercept, exact after dcm2niix."""
    info = make_demo_cohort(tmp_path / "cohort", n_subjects=0, real_subject=True)
    (subject,) = info["subjects"]
    assert subject["reference"] is None and "no reference" in subject["reference_note"]
    assert (tmp_path / "cohort" / "cohort.tsv").read_text().splitlines()[1] == "demo01\tdicom/demo01\t"
    out = run_dcm2niix(tmp_path / "cohort" / subject["dicom"], tmp_path / "nii")
    converted = load_image(out / f"{subject['main_series']}.nii.gz")
    original = reorient_to_ras(load_image(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"))
    assert converted.shape == original.shape
    np.testing.assert_allclose(converted.affine, original.affine, atol=1e-3)
    np.testing.assert_array_equal(converted.data, original.data)


@pytest.mark.parametrize(
    "plane, tilt",
    [("axial", 0.0), ("axial", 15.0), ("coronal", 0.0), ("coronal", -12.0), ("sagittal", 0.0), ("sagittal", 8.0)],
)
@pytest.mark.parametrize("acquisition", ["2D", "3D"])
def test_stack_grid_prediction_matches_dcm2niix(tmp_path, plane, tilt, acquisition):
    """Random voxels in every slice plane: dcm2niix puts each one where the predicted grid says."""
    row, col = plane_directions(plane, tilt)
    stack = SliceStack(tuple(row), tuple(col), (2.0, 1.5), 12, 10, 5, (-20.3, 10.7, 5.1), 3.0, 3.0).as_written()
    grid = stack.nifti_grid()
    data = np.random.default_rng(7).integers(0, 4096, grid.shape).astype(np.uint16)
    tags = {
        "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.1234",
        "SeriesNumber": 1,
        "Modality": "MR",
        "MRAcquisitionType": acquisition,
    }
    paths = write_dicom_series(tmp_path / "dicom", Image(data, grid.affine), stack, tags)
    assert len(paths) == 5
    predicted = predicted_nifti_grid([pydicom.dcmread(p) for p in paths])
    out = run_dcm2niix(tmp_path / "dicom", tmp_path / "nii")
    converted = load_image(out / "1.2.826.0.1.3680043.8.498.1234.nii.gz")
    np.testing.assert_allclose(converted.affine, predicted.affine, atol=1e-3)
    expected = Image(data, grid.affine)
    if acquisition == "3D":
        expected = reorient_to_ras(expected)
    np.testing.assert_allclose(expected.affine, predicted.affine, atol=1e-6)
    np.testing.assert_array_equal(converted.data, expected.data)
