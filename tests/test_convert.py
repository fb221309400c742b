"""DICOM -> NIfTI conversion (unireg.convert) on real DICOM files.

References no one here wrote: dcm_qa_ts (one MR volume in nine transfer syntaxes with dcm2niix's
own Ref/ output) and a real 120-slice MPRAGE whose geometry is checked against its DICOM tags.
Planted identifiers reach no output of ``unireg index`` and ``unireg convert``.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import MPRAGE_UID, by_description, copy_series, mprage_files, shared_file

from unireg.cli import main
from unireg.cohort import (
    anonymous_subject_id,
    files_path,
    hashed_uid,
    read_manifest,
    read_uid_salt,
    series_key,
    write_manifest,
)
from unireg.convert import SIDECAR_ADDED, SIDECAR_KEYS, convert_command, convert_series, sidecar_path
from unireg.errors import UniregError
from unireg.io import apply_affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Sidecar keys compared with dcm_qa_ts/Ref: kept by our scrubbing and stable across dcm2niix versions
# (v1.0.20260724 rounds ImagingFrequency differently, adds "MAGNITUDE" to ImageType and no longer
# writes PartialFourier for this file).
QA_SIDECAR_KEYS = (
    "Modality",
    "MagneticFieldStrength",
    "Manufacturer",
    "ManufacturersModelName",
    "MRAcquisitionType",
    "SeriesDescription",
    "ProtocolName",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "SequenceName",
    "SeriesNumber",
    "SliceThickness",
    "SpacingBetweenSlices",
    "EchoTime",
    "RepetitionTime",
    "FlipAngle",
    "PhaseEncodingSteps",
    "AcquisitionMatrixPE",
    "ReconMatrixPE",
    "PixelBandwidth",
    "InPlanePhaseEncodingDirectionDICOM",
    "ConversionSoftware",
)
PLANTED = {
    "PatientName": "PHI^PLANTED",
    "PatientID": "PHIID123",
    "PatientBirthDate": "19010101",
    "AccessionNumber": "PHIACC",
    "InstitutionName": "PHIHOSPITAL",
    "StudyDate": "19020202",
}
PLANTED_DATE_TIME = "2010072308581490"  # YYYYMMDDhhmmssff, as Siemens writes it into its UIDs
PLANTED_DATES = {"SeriesDate": "20100723", "AcquisitionDate": "20100723", "ContentDate": "20100723"}


# ---------------------------------------------------------------------------------------------
# dcm_qa_ts: nine transfer syntaxes against dcm2niix's reference output
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", range(1, 10))
def test_transfer_syntax_converts_like_reference(number, tmp_path):
    dcm = shared_file("dcm_qa_ts", "In", f"{number}.dcm")
    ref = shared_file("dcm_qa_ts", "Ref", f"{number}.nii")
    out = convert_series([dcm], tmp_path / "qa.nii.gz", "qa")
    ours, theirs = nib.load(out), nib.load(ref)
    assert ours.shape == theirs.shape == (64, 64, 35)
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    np.testing.assert_allclose(ours.affine, theirs.affine, rtol=0, atol=1e-5)
    assert (int(ours.header["qform_code"]), int(ours.header["sform_code"])) == (1, 1)
    assert ours.header["descrip"].tobytes().strip(b"\0") == b""  # dcm2niix wrote the acquisition time there
    sidecar = json.loads(sidecar_path(out).read_text())
    reference = json.loads(ref.with_suffix(".json").read_text())
    assert set(sidecar) <= set(SIDECAR_KEYS) | set(SIDECAR_ADDED)
    for key in QA_SIDECAR_KEYS:
        assert sidecar[key] == pytest.approx(reference[key], abs=1e-6), key
    np.testing.assert_allclose(
        sidecar["ImageOrientationPatientDICOM"], reference["ImageOrientationPatientDICOM"], atol=1e-5
    )
    assert sidecar["ImagingFrequency"] == pytest.approx(reference["ImagingFrequency"], abs=1e-3)
    assert set(reference["ImageType"]) <= set(sidecar["ImageType"])


# ---------------------------------------------------------------------------------------------
# A real 120-slice MPRAGE: convert, geometry from the DICOM tags
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mprage(mprage_index):
    root, out, manifest = mprage_index
    nifti = convert_command(out / "manifest.tsv", manifest["subject"].iloc[0], out / "sub" / "T1w.nii.gz")
    return root, out, manifest, nifti


def test_mprage_geometry_matches_dicom_tags(mprage):
    """Every pixel of the first and last slice lands, by the NIfTI affine, where the DICOM tags put it.

    dcm2niix keeps DICOM columns along i and stores rows bottom-up (j = Rows-1-r); for a 3-D
    acquisition (MRAcquisitionType 3D, no -x i) it then flips axes towards RAS. Here the row
    direction (LPS +x, towards the patient's left) becomes RAS -x, so i is flipped too: both
    in-plane axes of the affine point opposite to the DICOM row/column cosines (in RAS).
    """
    root, _, _, nifti = mprage
    img = nib.load(nifti)
    assert img.shape == (512, 512, 120)
    data = np.asanyarray(img.dataobj)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(root.glob("*.dcm"))]
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    row, col, normal = iop[:3], iop[3:], np.cross(iop[:3], iop[3:])
    along = [float(np.asarray(ds.ImagePositionPatient, float) @ normal) for ds in headers]
    first, last = headers[int(np.argmin(along))], headers[int(np.argmax(along))]
    slice_step = (max(along) - min(along)) / (len(headers) - 1)

    axes = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    np.testing.assert_allclose(axes[:, 0], -LPS_TO_RAS @ row, atol=1e-6)
    np.testing.assert_allclose(axes[:, 1], -LPS_TO_RAS @ col, atol=1e-6)
    np.testing.assert_allclose(axes[:, 2], LPS_TO_RAS @ normal, atol=1e-6)
    np.testing.assert_allclose(img.header.get_zooms()[:3], (0.41015625, 0.41015625, slice_step), atol=1e-5)

    for ds, k in ((first, 0), (last, 119)):
        corner = LPS_TO_RAS @ np.asarray(ds.ImagePositionPatient, float)  # centre of pixel (row 0, column 0)
        assert np.abs(apply_affine(img.affine, [511, 511, k]) - corner).max() < 0.01
        pixels = pydicom.dcmread(Path(ds.filename)).pixel_array
        r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
        spacing_r, spacing_c = (float(v) for v in ds.PixelSpacing)
        world = (
            np.asarray(ds.ImagePositionPatient, float) + c[..., None] * spacing_c * row + r[..., None] * spacing_r * col
        ) @ LPS_TO_RAS
        voxel = apply_affine(np.linalg.inv(img.affine), world)
        index = np.rint(voxel).astype(int)
        assert np.abs(apply_affine(img.affine, index) - world).max() < 0.01
        np.testing.assert_array_equal(data[index[..., 0], index[..., 1], index[..., 2]], pixels)


def test_mprage_outputs_carry_no_free_text(mprage):
    _, out, _, nifti = mprage
    header = nib.load(nifti).header
    for field in ("descrip", "aux_file", "db_name", "intent_name"):
        assert header[field].tobytes().strip(b"\0") == b"", field
    sidecar = json.loads(sidecar_path(nifti).read_text())
    assert set(sidecar) <= set(SIDECAR_KEYS) | set(SIDECAR_ADDED) and sidecar["SeriesDescription"] == "t1_mpr_tra_gk_v4"
    assert sorted(p.name for p in nifti.parent.iterdir()) == ["T1w.json", "T1w.nii.gz"]  # no temp files


# ---------------------------------------------------------------------------------------------
# Privacy: planted identifiers never reach an output
# ---------------------------------------------------------------------------------------------


def siemens_uid(kind: int, n: int = 0) -> str:
    """A Siemens-style UID with the acquisition date and time inside (as real Siemens UIDs have)."""
    return f"1.3.12.2.1107.5.2.32.35162.{kind}.{PLANTED_DATE_TIME}{n:05d}"


def name_by_sop_uid(folder: Path) -> None:
    """Rename every file below ``folder`` ``MR.<SOPInstanceUID>.dcm``, as many exports name them."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        path.rename(path.with_name(f"MR.{pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID}.dcm"))


def test_planted_phi_never_reaches_outputs(tmp_path, capsys):
    """Planted identifiers, the original UIDs, the dates and the dates inside the UIDs reach no path or
    content under the results folder (manifest, sidecar, NIfTI header or extension) nor any message of
    ``unireg index`` / ``unireg convert``, including the one-line error of a patient without an
    anatomical series. The files are named by their SOPInstanceUID, as many exports name them: their
    list (``--files-out``) lives in the work folder, where ``unireg convert --files`` finds it."""
    dicom = tmp_path / "dicom"
    uids = {"StudyInstanceUID": siemens_uid(1), "FrameOfReferenceUID": siemens_uid(2)}
    copy_series(
        mprage_files(1, 12),
        dicom / "deep" / "er",
        "IM{:04d}",
        **PLANTED,
        **uids,
        **PLANTED_DATES,
        SeriesInstanceUID=siemens_uid(3),
        SOPInstanceUID=lambda n: siemens_uid(4, n),
    )
    copy_series(
        mprage_files(60, 3),
        dicom / "deep" / "loc",
        "IM{:04d}",
        **PLANTED,
        **uids,
        **PLANTED_DATES,
        SeriesInstanceUID=siemens_uid(5),
        SOPInstanceUID=lambda n: siemens_uid(6, n),
        SeriesDescription="localizer",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
    )
    copy_series(
        mprage_files(60, 3),
        dicom / "other",
        "IM{:04d}",
        **{**PLANTED, "PatientID": "PHIID999"},
        **PLANTED_DATES,
        StudyInstanceUID=siemens_uid(7),
        SeriesInstanceUID=siemens_uid(8),
        SOPInstanceUID=lambda n: siemens_uid(9, n),
        SeriesDescription="localizer",
    )
    name_by_sop_uid(dicom)
    out = tmp_path / "out"
    salt_file, listing = tmp_path / "work" / "uid_salt", tmp_path / "work" / "manifest.files.json"
    assert (
        main(
            [
                "index",
                "--input",
                str(dicom),
                "--out",
                str(out / "manifest.tsv"),
                "--files-out",
                str(listing),
                "--salt-file",
                str(salt_file),
            ]
        )
        == 0
    )
    # the UIDs are in the file names, so in the file list: kept in the work folder, out of the results
    assert siemens_uid(4, 0) in listing.read_text()
    manifest = read_manifest(out / "manifest.tsv", listing)
    subject, lonely = anonymous_subject_id("PHIID123"), anonymous_subject_id("PHIID999")
    assert sorted(manifest["subject"]) == sorted([subject, subject, lonely])
    nifti = out / f"sub-{subject}" / "anat" / "T1w.nii.gz"
    assert (
        main(
            [
                "convert",
                "--manifest",
                str(out / "manifest.tsv"),
                "--files",
                str(listing),
                "--subject",
                subject,
                "--out",
                str(nifti),
                "--salt-file",
                str(salt_file),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                "--manifest",
                str(out / "manifest.tsv"),
                "--files",
                str(listing),
                "--subject",
                lonely,
                "--out",
                str(out / "lonely.nii.gz"),
                "--salt-file",
                str(salt_file),
            ]
        )
        == 1
    )
    printed = capsys.readouterr()
    assert printed.err.startswith(f"unireg: {lonely}: no anatomical series to register among 1: 2.25.")
    produced = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in produced} == {
        "manifest.tsv",
        "T1w.nii.gz",
        "T1w.json",
        "dataset_description.json",
        ".bidsignore",
    }
    blobs = {str(p): p.read_bytes() for p in produced}
    blobs["T1w.nii (gunzipped)"] = gzip.decompress(nifti.read_bytes())
    blobs["printed (the rules' logs)"] = (printed.out + printed.err).encode()
    # planted values, the original dates, the acquisition time (dcm2niix puts it into descrip/JSON), the
    # original UIDs and the date-time strings inside them
    forbidden = [
        *PLANTED.values(),
        "PHI PLANTED",
        "PLANTED",
        "19940904",
        "84338",
        "08:43:38",
        *PLANTED_DATES.values(),
        *uids.values(),
        MPRAGE_UID,
        PLANTED_DATE_TIME,
        PLANTED_DATE_TIME[:8],
        *(siemens_uid(k) for k in range(1, 10)),
        "1.3.12.2.1107",
    ]
    for name, blob in blobs.items():
        for value in forbidden:
            assert value.encode() not in blob, f"{value} found in {name}"
    for path in produced:
        relative = str(path.relative_to(out))
        assert not any(value in relative for value in forbidden), relative
    salt = read_uid_salt(salt_file)
    assert set(manifest["series_uid"]) == {hashed_uid(siemens_uid(k), salt) for k in (3, 5, 8)}
    assert set(manifest["study_uid"]) == {hashed_uid(siemens_uid(k), salt) for k in (1, 7)}


# ---------------------------------------------------------------------------------------------
# Broken and unselected series, a missing file list
# ---------------------------------------------------------------------------------------------


def test_convert_truncated_series_is_one_line_error(dicom_cohort):
    root, manifest, truncated = dicom_cohort
    subject = manifest["subject"].iloc[0]
    out = root / "t1" / "T1w.nii.gz"
    with pytest.raises(UniregError) as err:
        convert_command(root / "manifest.tsv", subject, out, "MR", "mpr")
    message = str(err.value)
    assert "\n" not in message and message.startswith(subject + ": ")
    assert by_description(manifest, "t1_mpr_tra_gk_v4").series_uid in message and "truncated" in message
    assert truncated.name in message and not out.exists()


def test_convert_mixed_orientation_series_is_one_line_error(dicom_cohort):
    """Never selected (index says why); converted anyway, dcm2niix's two volumes are refused."""
    root, manifest, _ = dicom_cohort
    subject = manifest["subject"].iloc[0]
    out = root / "mixed" / "x.nii.gz"
    with pytest.raises(UniregError, match="no anatomical series to register .* several slice orientations"):
        convert_command(root / "manifest.tsv", subject, out, None, "mixed")
    row = by_description(manifest, "mixed_orientation")
    files = read_manifest(root / "manifest.tsv").attrs["files"][series_key(subject, row.series_uid)]
    with pytest.raises(UniregError, match="converts to 2 volumes; it has 2 slice orientations") as err:
        convert_series(files, out, subject, row.series_uid)
    assert row.series_uid in str(err.value) and "\n" not in str(err.value)
    assert not out.parent.exists()  # nothing written, not even the sidecar


def test_convert_selected_series(dicom_cohort):
    root, manifest, _ = dicom_cohort
    out = convert_command(root / "manifest.tsv", manifest["subject"].iloc[0], root / "t2" / "x.nii.gz", None, "t2")
    assert nib.load(out).shape == (512, 512, 12)
    assert json.loads(sidecar_path(out).read_text())["SeriesDescription"] == "t2_tse_tra"


def test_the_file_list_can_live_outside_the_results(dicom_cohort, tmp_path):
    """``write_manifest``/``read_manifest``/``convert_command`` with the file list in a work folder
    (the workflow's ``<work>/manifest.files.json``): nothing but the TSV in the results."""
    root, manifest, _ = dicom_cohort
    results, listing = tmp_path / "results", tmp_path / "work" / "manifest.files.json"
    write_manifest(manifest, results / "manifest.tsv", listing)
    assert [p.name for p in results.iterdir()] == ["manifest.tsv"]
    assert read_manifest(results / "manifest.tsv", listing).attrs["files"] == manifest.attrs["files"]
    assert read_manifest(results / "manifest.tsv").attrs["files"] == {}  # the default: beside it, absent
    subject = manifest["subject"].iloc[0]
    with pytest.raises(UniregError, match=r"results/manifest\.files\.json; run 'unireg index' again"):
        convert_command(results / "manifest.tsv", subject, tmp_path / "x.nii.gz", None, "t2")
    elsewhere = tmp_path / "other.files.json"
    elsewhere.write_text("{}\n")
    with pytest.raises(UniregError, match=r"file list .*other\.files\.json; run 'unireg index' again"):
        convert_command(results / "manifest.tsv", subject, tmp_path / "x.nii.gz", None, "t2", files=elsewhere)
    out = convert_command(results / "manifest.tsv", subject, tmp_path / "t2" / "x.nii.gz", None, "t2", files=listing)
    assert nib.load(out).shape == (512, 512, 12)


def test_convert_missing_file_list(dicom_cohort, tmp_path):
    root, manifest, _ = dicom_cohort
    shutil.copy(root / "manifest.tsv", tmp_path / "manifest.tsv")  # without its .files.json
    assert not files_path(tmp_path / "manifest.tsv").exists()
    with pytest.raises(UniregError, match="run 'unireg index' again"):
        convert_command(tmp_path / "manifest.tsv", manifest["subject"].iloc[0], tmp_path / "x.nii.gz", None, "t2")
