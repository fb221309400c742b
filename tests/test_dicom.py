"""Cohort indexing and DICOM -> NIfTI conversion (unireg.dicom) on real DICOM files.

References no one here wrote: dcm_qa_ts (one MR volume in nine transfer syntaxes with dcm2niix's
own Ref/ output) and a real 120-slice MPRAGE whose geometry is checked against its DICOM tags.
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
from pydicom.uid import generate_uid

from conftest import shared_file
from unireg.cli import main
from unireg.dicom import (MANIFEST_COLUMNS, SIDECAR_ADDED, SIDECAR_KEYS, anonymous_subject_id, convert_command,
                          convert_series, files_path, hashed_uid, index_command, index_dicom, orientation_label,
                          read_manifest, read_uid_salt, select_series, series_key, sidecar_path, validate_subject_id,
                          write_manifest)
from unireg.errors import UniregError
from unireg.io import apply_affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
MPRAGE_UID = "1.3.6.1.4.1.14519.5.2.1.149357697745643823053302398129943470751"
# Sidecar keys compared with dcm_qa_ts/Ref: kept by our scrubbing and stable across dcm2niix versions
# (v1.0.20260724 rounds ImagingFrequency differently, adds "MAGNITUDE" to ImageType and no longer
# writes PartialFourier for this file).
QA_SIDECAR_KEYS = ("Modality", "MagneticFieldStrength", "Manufacturer", "ManufacturersModelName", "MRAcquisitionType",
                   "SeriesDescription", "ProtocolName", "ScanningSequence", "SequenceVariant", "ScanOptions",
                   "SequenceName", "SeriesNumber", "SliceThickness", "SpacingBetweenSlices", "EchoTime",
                   "RepetitionTime", "FlipAngle", "PhaseEncodingSteps", "AcquisitionMatrixPE",
                   "ReconMatrixPE", "PixelBandwidth", "InPlanePhaseEncodingDirectionDICOM", "ConversionSoftware")
PLANTED = {"PatientName": "PHI^PLANTED", "PatientID": "PHIID123", "PatientBirthDate": "19010101",
           "AccessionNumber": "PHIACC", "InstitutionName": "PHIHOSPITAL", "StudyDate": "19020202"}
PLANTED_DATE_TIME = "2010072308581490"  # YYYYMMDDhhmmssff, as Siemens writes it into its UIDs
PLANTED_DATES = {"SeriesDate": "20100723", "AcquisitionDate": "20100723", "ContentDate": "20100723"}


@pytest.fixture(scope="module", autouse=True)
def isolated_home_for_module_fixtures(tmp_path_factory):
    """UNIREG_HOME (where index and convert keep the default UID salt) for module-scoped fixtures too:
    they run before conftest's per-test isolation; the same folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIREG_HOME", str(tmp_path_factory.getbasetemp() / "unireg_home"))
        yield


def mprage_files(first: int, count: int) -> list[Path]:
    root = shared_file("dicom_mprage_vsseg001")
    return [root / f"1-{n:03d}.dcm" for n in range(first, first + count)]


def copy_series(sources: list[Path], folder: Path, names: str, *, shrink: int = 1, drop: tuple[str, ...] = (),
                **tags) -> list[Path]:
    """Re-write real slices into ``folder`` as a new series, with ``tags`` changed (a callable gets the
    file's number) and the tags ``drop`` removed; fresh SOP instance UIDs unless ``tags`` sets them.

    ``shrink``: keep every ``shrink``-th pixel of each row and column (PixelSpacing scaled to match):
    small files with the real header, for series that are indexed but never converted (EPI, DWI, ...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        if shrink > 1:
            pixels = np.ascontiguousarray(ds.pixel_array[::shrink, ::shrink])
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelSpacing = [f"{float(v) * shrink:g}" for v in ds.PixelSpacing]
            ds.PixelData = pixels.tobytes()
        for keyword in drop:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in tags.items():
            setattr(ds, keyword, value(number) if callable(value) else value)
        if "SOPInstanceUID" not in tags:
            ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        paths.append(folder / names.format(number))
        ds.save_as(paths[-1])
    return paths


# ---------------------------------------------------------------------------------------------
# Subject ids and orientation labels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subject", ["../etc", "a/b", "a b", "", "sub-01", "a..b", "s\u00fc", "x\n"])
def test_invalid_subject_ids_are_rejected(subject):
    with pytest.raises(UniregError, match="letters and digits"):
        validate_subject_id(subject)


def test_anonymous_subject_id_is_salted_hash_of_patient_id():
    sid = anonymous_subject_id("PHIID123")
    assert validate_subject_id(sid) == sid and len(sid) == 11 and sid.startswith("s")
    assert sid == anonymous_subject_id("PHIID123") != anonymous_subject_id("PHIID124")
    assert "PHIID123" not in sid


@pytest.mark.parametrize("iop, label", [
    ([1, 0, 0, 0, 1, 0], "axial"),
    ([0, 1, 0, 0, 0, -1], "sagittal"),
    ([1, 0, 0, 0, 0, -1], "coronal"),
    ([1, 0, 0, 0, np.cos(0.35), -np.sin(0.35)], "axial"),  # 20 degrees tilted: still axial
    ([1, 0, 0, 0, np.cos(0.8), -np.sin(0.8)], "oblique"),  # 46 degrees
    (None, "unknown"),
])
def test_orientation_label(iop, label):
    assert orientation_label(iop) == label


@pytest.mark.filterwarnings("ignore")  # pydicom warns about the odd files it ships on purpose
def test_index_survives_pydicom_test_files():
    """pydicom's own test files: malformed values, deflate, RLE/JPEG, a deliberately truncated MR."""
    from pydicom.data import get_testdata_file
    manifest = index_dicom(Path(get_testdata_file("CT_small.dcm")).parent)
    truncated = {Path(p).name for p in manifest.attrs["skipped"]["truncated"]}
    assert "MR_truncated.dcm" in truncated
    assert not truncated & {"CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                            "SC_rgb_jpeg.dcm", "image_dfl.dcm"}
    assert manifest.attrs["skipped"]["not_dicom"] > 0 and len(manifest) > 10
    cine = manifest[manifest["sop_class"] == "Ultrasound Multi-frame Image Storage"]
    assert len(cine) == 1 and cine["n_slices"].iloc[0] > 1  # frames without positions: NumberOfFrames


def test_index_enhanced_multiframe(tmp_path):
    """An enhanced MR file: geometry in functional groups, slices = distinct per-frame positions."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    def item(**tags):
        ds = Dataset()
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        return ds

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID, ds.Modality = generate_uid(), generate_uid(), "P1", "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 4, 4, 6
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SharedFunctionalGroupsSequence = [item(
        PlaneOrientationSequence=[item(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])],
        PixelMeasuresSequence=[item(PixelSpacing=[0.5, 0.5], SliceThickness=2)])]
    ds.PerFrameFunctionalGroupsSequence = [  # 3 slices x 2 time points
        item(PlanePositionSequence=[item(ImagePositionPatient=[2.0 * (n % 3), 0, 0])]) for n in range(6)]
    ds.PixelData = bytes(4 * 4 * 6 * 2)
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    row = index_dicom(tmp_path).iloc[0]
    assert (row.n_files, row.n_slices, row.orientation) == (1, 3, "sagittal")
    assert (row.pixel_spacing, row.slice_thickness, row.sop_class) == ("0.5x0.5", "2", "Enhanced MR Image Storage")
    assert row.n_truncated == 0


# ---------------------------------------------------------------------------------------------
# dcm_qa_ts: nine transfer syntaxes against dcm2niix's reference output
# ---------------------------------------------------------------------------------------------

def test_index_dcm_qa_ts_reads_headers_of_every_transfer_syntax():
    manifest = index_dicom(shared_file("dcm_qa_ts", "In"))
    # the nine files are one image (one SeriesInstanceUID) in nine encodings, a Siemens mosaic
    assert len(manifest) == 1 and manifest.attrs["skipped"]["truncated"] == []
    row = manifest.iloc[0]
    assert (row.n_files, row.n_slices, row.rows, row.columns) == (9, 35, 384, 384)
    assert (row.orientation, row.modality, row.sop_class) == ("axial", "MR", "MR Image Storage")
    assert len(manifest.attrs["files"][series_key(row.subject, row.series_uid)]) == 9


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
    np.testing.assert_allclose(sidecar["ImageOrientationPatientDICOM"], reference["ImageOrientationPatientDICOM"],
                               atol=1e-5)
    assert sidecar["ImagingFrequency"] == pytest.approx(reference["ImagingFrequency"], abs=1e-3)
    assert set(reference["ImageType"]) <= set(sidecar["ImageType"])


# ---------------------------------------------------------------------------------------------
# A real 120-slice MPRAGE: index, convert, geometry from the DICOM tags
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mprage(tmp_path_factory):
    root = shared_file("dicom_mprage_vsseg001")
    out = tmp_path_factory.mktemp("mprage")
    manifest = index_command(root, out / "manifest.tsv")
    nifti = convert_command(out / "manifest.tsv", manifest["subject"].iloc[0], out / "sub" / "T1w.nii.gz")
    return root, out, manifest, nifti


def test_mprage_index(mprage):
    _, out, manifest, _ = mprage
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 1
    row = manifest.iloc[0]
    assert row.subject == anonymous_subject_id("VS-SEG-001")
    series_uid = hashed_uid(MPRAGE_UID, read_uid_salt())  # the session's salt, in its own UNIREG_HOME
    assert (row.series_uid, row.n_files, row.n_slices, row.rows, row.columns) == (series_uid, 120, 120, 512, 512)
    assert (row.orientation, row.pixel_spacing, row.slice_thickness) == ("axial", "0.410156x0.410156", "1.5")
    assert (row.transfer_syntax, row.sop_class, row.image_type) == ("1.2.840.10008.1.2", "MR Image Storage",
                                                                    "ORIGINAL\\PRIMARY\\M\\ND")
    # the acquisition fields the selection reads, as the headers give them
    assert (row.series_number, row.protocol_name, row.mr_acquisition_type, row.n_temporal) == (
        2, "t1_mpr_tra_gk_v4", "3D", 1)
    assert (row.scanning_sequence, row.sequence_variant, row.sequence_name) == ("GR\\IR", "SP\\MP\\OSP", "*tfl3d1")
    assert (row.echo_time, row.repetition_time, row.inversion_time, row.b_value, row.contrast_agent) == (
        "2.97", "1900", "1100", "", 0)
    assert (row.selected, row.problem) == (1, "")
    assert row.selection_reason == ("chosen: 3-D T1-weighted MR series (T1 by its name), 120 slices of "
                                    "0.410156x0.410156x1.5 mm; the only candidate")
    for written in (out / "manifest.tsv", files_path(out / "manifest.tsv")):
        assert MPRAGE_UID.encode() not in written.read_bytes()
    assert manifest.attrs["skipped"] == {"not_dicom": 1, "not_image": 0, "truncated": [], "corrupt": []}  # README.md
    back = read_manifest(out / "manifest.tsv")
    assert back.astype(str).equals(manifest.astype(str))
    assert back.attrs["files"] == manifest.attrs["files"]
    assert len(back.attrs["files"][series_key(row.subject, series_uid)]) == 120


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
        r, c = np.mgrid[0:ds.Rows, 0:ds.Columns]
        spacing_r, spacing_c = (float(v) for v in ds.PixelSpacing)
        world = (np.asarray(ds.ImagePositionPatient, float) + c[..., None] * spacing_c * row
                 + r[..., None] * spacing_r * col) @ LPS_TO_RAS
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


def test_planted_phi_never_reaches_outputs(tmp_path, capsys):
    """Planted identifiers, the original UIDs, the dates and the dates inside the UIDs reach no manifest,
    file list, sidecar, NIfTI (header or extension) or message of ``unireg index`` / ``unireg convert``,
    including the one-line error of a patient without an anatomical series."""
    dicom = tmp_path / "dicom"
    uids = {"StudyInstanceUID": siemens_uid(1), "FrameOfReferenceUID": siemens_uid(2)}
    copy_series(mprage_files(1, 12), dicom / "deep" / "er", "IM{:04d}", **PLANTED, **uids, **PLANTED_DATES,
                SeriesInstanceUID=siemens_uid(3), SOPInstanceUID=lambda n: siemens_uid(4, n))
    copy_series(mprage_files(60, 3), dicom / "deep" / "loc", "IM{:04d}", **PLANTED, **uids, **PLANTED_DATES,
                SeriesInstanceUID=siemens_uid(5), SOPInstanceUID=lambda n: siemens_uid(6, n),
                SeriesDescription="localizer", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    copy_series(mprage_files(60, 3), dicom / "other", "IM{:04d}", **{**PLANTED, "PatientID": "PHIID999"},
                **PLANTED_DATES, StudyInstanceUID=siemens_uid(7), SeriesInstanceUID=siemens_uid(8),
                SOPInstanceUID=lambda n: siemens_uid(9, n), SeriesDescription="localizer")
    out = tmp_path / "out"
    salt_file = tmp_path / "work" / "uid_salt"
    assert main(["index", "--input", str(dicom), "--out", str(out / "manifest.tsv"), "--salt-file",
                 str(salt_file)]) == 0
    manifest = read_manifest(out / "manifest.tsv")
    subject, lonely = anonymous_subject_id("PHIID123"), anonymous_subject_id("PHIID999")
    assert sorted(manifest["subject"]) == sorted([subject, subject, lonely])
    nifti = out / f"sub-{subject}" / "anat" / "T1w.nii.gz"
    assert main(["convert", "--manifest", str(out / "manifest.tsv"), "--subject", subject, "--out", str(nifti),
                 "--salt-file", str(salt_file)]) == 0
    assert main(["convert", "--manifest", str(out / "manifest.tsv"), "--subject", lonely, "--out",
                 str(out / "lonely.nii.gz"), "--salt-file", str(salt_file)]) == 1
    printed = capsys.readouterr()
    assert printed.err.startswith(f"unireg: {lonely}: no anatomical series to register among 1: 2.25.")
    produced = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in produced} == {"manifest.tsv", "manifest.files.json", "T1w.nii.gz", "T1w.json",
                                          "dataset_description.json", ".bidsignore"}
    blobs = {str(p): p.read_bytes() for p in produced}
    blobs["T1w.nii (gunzipped)"] = gzip.decompress(nifti.read_bytes())
    blobs["printed (the rules' logs)"] = (printed.out + printed.err).encode()
    # planted values, the original dates, the acquisition time (dcm2niix puts it into descrip/JSON), the
    # original UIDs and the date-time strings inside them
    forbidden = [*PLANTED.values(), "PHI PLANTED", "PLANTED", "19940904", "84338", "08:43:38", *PLANTED_DATES.values(),
                 *uids.values(), MPRAGE_UID, PLANTED_DATE_TIME, PLANTED_DATE_TIME[:8],
                 *(siemens_uid(k) for k in range(1, 10)), "1.3.12.2.1107"]
    for name, blob in blobs.items():
        for value in forbidden:
            assert value.encode() not in blob, f"{value} found in {name}"
    salt = read_uid_salt(salt_file)
    assert set(manifest["series_uid"]) == {hashed_uid(siemens_uid(k), salt) for k in (3, 5, 8)}
    assert set(manifest["study_uid"]) == {hashed_uid(siemens_uid(k), salt) for k in (1, 7)}


def test_subject_map(tmp_path):
    dicom = tmp_path / "dicom"
    copy_series(mprage_files(1, 10), dicom, "{}.dcm", PatientID="PHIID123")
    assert list(index_dicom(dicom, {"PHIID123": "sub01"})["subject"]) == ["sub01"]
    with pytest.raises(UniregError, match="letters and digits"):
        index_dicom(dicom, {"PHIID123": "../x"})
    with pytest.raises(UniregError, match="not in the subject map") as err:
        index_dicom(dicom, {"OTHER": "sub02"})
    assert "PHIID123" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Several series per subject, localisers, broken files
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One subject: T1 (one slice truncated), T2-named, mixed-orientation and localiser series + a text file."""
    root = tmp_path_factory.mktemp("cohort")
    dicom = root / "dicom"
    t1 = copy_series(mprage_files(1, 12), dicom / "a", "{}", SeriesInstanceUID=generate_uid())
    cut = t1[5].read_bytes()
    t1[5].write_bytes(cut[: len(cut) // 2])
    copy_series(mprage_files(13, 12), dicom / "b" / "c", "slice{}.dcm", SeriesInstanceUID=generate_uid(),
                SeriesDescription="t2_tse_tra")
    sagittal = ["0", "1", "0", "0", "0", "-1"]
    copy_series(mprage_files(25, 12), dicom / "d", "x{}", SeriesInstanceUID=generate_uid(),
                SeriesDescription="mixed_orientation",
                ImageOrientationPatient=lambda n: sagittal if n % 2 else ["1", "0", "0", "0", "1", "0"])
    copy_series(mprage_files(40, 3), dicom / "e", "loc{}", SeriesInstanceUID=generate_uid(),
                SeriesDescription="localizer", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    (dicom / "b" / "notes.txt").write_text("not a DICOM file\n" * 50)
    manifest = index_command(dicom, root / "manifest.tsv")
    return root, manifest, t1[5]


def by_description(manifest, description: str):
    return manifest[manifest["series_description"] == description].iloc[0]


def test_index_reports_skipped_and_truncated_files(cohort):
    _, manifest, truncated = cohort
    assert manifest["subject"].nunique() == 1 and len(manifest) == 4
    assert manifest.attrs["skipped"] == {"not_dicom": 1, "not_image": 0, "truncated": [str(truncated)], "corrupt": []}
    t1 = by_description(manifest, "t1_mpr_tra_gk_v4")
    assert (t1.n_files, t1.n_slices, t1.n_truncated) == (12, 12, 1)  # kept in its series: converting it must fail
    assert by_description(manifest, "mixed_orientation").orientation == "mixed"
    assert by_description(manifest, "localizer").n_slices == 3


def test_select_without_filter_chooses_the_t1_and_says_why(cohort):
    """No series filter: the T1 is chosen (its truncated slice is convert's business, not selection's)."""
    _, manifest, _ = cohort
    subject = manifest["subject"].iloc[0]
    assert select_series(manifest, subject)["series_description"] == "t1_mpr_tra_gk_v4"
    assert manifest.loc[manifest["selected"] == 1, "series_description"].tolist() == ["t1_mpr_tra_gk_v4"]
    reasons = dict(zip(manifest["series_description"], manifest["selection_reason"]))
    assert reasons == {
        "t1_mpr_tra_gk_v4": "chosen: 3-D T1-weighted MR series (T1 by its name), 12 slices of 0.410156x0.410156x1.5 "
                            "mm; ranked above 1 other candidate",
        "t2_tse_tra": "not chosen: 3-D non-T1 MR series, 12 slices of 0.410156x0.410156x1.5 mm; ranked below: not "
                      "T1-weighted, the chosen series is",
        "mixed_orientation": "not chosen: several slice orientations in one series (a multi-plane localiser?)",
        "localizer": "not chosen: localiser"}


@pytest.mark.parametrize("modality, regex, expected", [
    (None, "T2", "t2_tse_tra"), ("mr", "mpr", "t1_mpr_tra_gk_v4"), ("MR", "", "t1_mpr_tra_gk_v4")])
def test_select_with_filter(cohort, modality, regex, expected):
    _, manifest, _ = cohort
    assert select_series(manifest, manifest["subject"].iloc[0], modality, regex)["series_description"] == expected


@pytest.mark.parametrize("modality, regex, message", [
    (None, "flair", "no series matches the series filter (modality=any, description=flair) among 4: "),
    ("CT", None, "no series matches the series filter (modality=CT, description=any) among 4: "),
    (None, "(", "not a valid regular"),
    (None, "localizer", "no anatomical series to register (series filter modality=any, description=localizer) "
                        "among 4: "),  # localisers are never selected
    (None, "^mixed", "no anatomical series to register (series filter modality=any, description=^mixed) among 4: ")])
def test_select_errors(cohort, modality, regex, message):
    _, manifest, _ = cohort
    subject = manifest["subject"].iloc[0]
    with pytest.raises(UniregError) as err:
        select_series(manifest, subject, modality, regex)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{subject}: ") and message in text, text
    if "among" in message:  # every series listed, by its hashed uid, with the reason it was not chosen
        for row in manifest.itertuples():
            assert f"{row.series_uid} '{row.series_description}' MR (series 2, {row.n_slices} slices): " in text
        expected = {"flair": "description does not match series_filter 'flair'",
                    "localizer": "12 slices): description does not match series_filter 'localizer'",
                    "^mixed": "several slice orientations in one series"}.get(regex, "modality MR, not CT")
        assert expected in text and ("3 slices): localiser" in text) == (regex == "localizer")
    with pytest.raises(UniregError, match="not in the manifest"):
        select_series(manifest, "sother", modality, regex)


def test_convert_truncated_series_is_one_line_error(cohort):
    root, manifest, truncated = cohort
    subject = manifest["subject"].iloc[0]
    out = root / "t1" / "T1w.nii.gz"
    with pytest.raises(UniregError) as err:
        convert_command(root / "manifest.tsv", subject, out, "MR", "mpr")
    message = str(err.value)
    assert "\n" not in message and message.startswith(subject + ": ")
    assert by_description(manifest, "t1_mpr_tra_gk_v4").series_uid in message and "truncated" in message
    assert truncated.name in message and not out.exists()


def test_convert_mixed_orientation_series_is_one_line_error(cohort):
    """Never selected (index says why); converted anyway, dcm2niix's two volumes are refused."""
    root, manifest, _ = cohort
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


def test_convert_selected_series(cohort):
    root, manifest, _ = cohort
    out = convert_command(root / "manifest.tsv", manifest["subject"].iloc[0], root / "t2" / "x.nii.gz", None, "t2")
    assert nib.load(out).shape == (512, 512, 12)
    assert json.loads(sidecar_path(out).read_text())["SeriesDescription"] == "t2_tse_tra"


def test_convert_missing_file_list(cohort, tmp_path):
    root, manifest, _ = cohort
    shutil.copy(root / "manifest.tsv", tmp_path / "manifest.tsv")  # without its .files.json
    assert not files_path(tmp_path / "manifest.tsv").exists()
    with pytest.raises(UniregError, match="run 'unireg index' again"):
        convert_command(tmp_path / "manifest.tsv", manifest["subject"].iloc[0], tmp_path / "x.nii.gz", None, "t2")


def test_manifest_round_trip_keeps_types(cohort, tmp_path):
    _, manifest, _ = cohort
    write_manifest(manifest, tmp_path / "m.tsv")
    back = read_manifest(tmp_path / "m.tsv")
    assert list(back.columns) == MANIFEST_COLUMNS
    assert back["n_slices"].tolist() == manifest["n_slices"].tolist()
    assert back["series_uid"].tolist() == manifest["series_uid"].tolist()
    assert back.attrs["files"] == manifest.attrs["files"]


def test_cohort_tsv_with_dicom_and_nifti_subjects(tmp_path):
    """A cohort TSV: a DICOM folder subject and a NIfTI subject (nibabel's real low-resolution T1)."""
    nibabel_data = Path(nib.__file__).parent / "tests" / "data"
    shutil.copy(nibabel_data / "anatomical.nii", tmp_path / "anat.nii")  # big-endian, vox_offset 0, a descrip
    shutil.copy(nibabel_data / "example4d.nii.gz", tmp_path / "four.nii.gz")  # 2 volumes, 2 extensions
    copy_series(mprage_files(1, 10), tmp_path / "dcm", "{}")
    (tmp_path / "cohort.tsv").write_text("subject\tdicom\tnifti\treference\n"
                                         "sub01\tdcm\t\t\nanat01\t\tanat.nii\tanat.nii\nfour\t\tfour.nii.gz\t\n")
    manifest = index_command(tmp_path / "cohort.tsv", tmp_path / "out" / "manifest.tsv")
    assert sorted(manifest["subject"]) == ["anat01", "four", "sub01"]
    assert by_description(manifest, "t1_mpr_tra_gk_v4").subject == "sub01"  # the TSV names it, no hash
    assert manifest[manifest["subject"] == "anat01"]["reference"].iloc[0] == str(tmp_path / "anat.nii")

    out = convert_command(tmp_path / "out" / "manifest.tsv", "anat01", tmp_path / "out" / "anat01.nii.gz")
    ours, theirs = nib.load(out), nib.load(tmp_path / "anat.nii")
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    np.testing.assert_array_equal(ours.affine, theirs.affine)
    assert ours.header["descrip"].tobytes().strip(b"\0") == b"" and b"spm" not in gzip.decompress(out.read_bytes())
    with pytest.raises(UniregError, match="expected one 3-D volume"):
        convert_command(tmp_path / "out" / "manifest.tsv", "four", tmp_path / "out" / "four.nii.gz")
    assert not (tmp_path / "out" / "four.nii.gz").exists() and not (tmp_path / "out" / "four.json").exists()


def test_same_series_copied_for_two_subjects_keeps_each_subjects_files(tmp_path):
    """A cohort TSV naming two folders that hold the same series (a copied export), one of them
    damaged: each subject converts from its own files only."""
    copy_series(mprage_files(1, 12), tmp_path / "good", "{}")
    shutil.copytree(tmp_path / "good", tmp_path / "damaged")
    victim = sorted((tmp_path / "damaged").iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:-4000])
    (tmp_path / "cohort.tsv").write_text("subject\tdicom\ngood01\tgood\nbad01\tdamaged\n")
    manifest = index_command(tmp_path / "cohort.tsv", tmp_path / "out" / "manifest.tsv")
    assert manifest["series_uid"].nunique() == 1 and sorted(manifest["subject"]) == ["bad01", "good01"]
    files = read_manifest(tmp_path / "out" / "manifest.tsv").attrs["files"]
    uid = manifest["series_uid"].iloc[0]
    assert all("/good/" in f for f in files[series_key("good01", uid)])
    assert all("/damaged/" in f for f in files[series_key("bad01", uid)])
    out = convert_command(tmp_path / "out" / "manifest.tsv", "good01", tmp_path / "out" / "good01.nii.gz")
    assert nib.load(out).shape == (512, 512, 12)
    with pytest.raises(UniregError, match="truncated") as err:
        convert_command(tmp_path / "out" / "manifest.tsv", "bad01", tmp_path / "out" / "bad01.nii.gz")
    assert str(err.value).startswith("bad01: ")
