"""The cohort and its manifest (unireg.cohort) on real DICOM files: subject ids, indexing (a real
120-slice MPRAGE, a subject with several series and broken files, cohort TSVs), the selection
rule's outcome and the manifest's round trip. Sessions of every kind of series: test_cohort_selection.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import MPRAGE_UID, by_description, copy_series, mprage_files

from unireg.cohort import (
    MANIFEST_COLUMNS,
    anonymous_subject_id,
    files_path,
    hashed_uid,
    index_command,
    index_dicom,
    read_manifest,
    read_uid_salt,
    select_series,
    series_key,
    validate_subject_id,
    write_manifest,
)
from unireg.convert import convert_command
from unireg.errors import UniregError

# ---------------------------------------------------------------------------------------------
# Subject ids
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
# A real 120-slice MPRAGE: its manifest row
# ---------------------------------------------------------------------------------------------


def test_mprage_index(mprage_index):
    _, out, manifest = mprage_index
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 1
    row = manifest.iloc[0]
    assert row.subject == anonymous_subject_id("VS-SEG-001")
    series_uid = hashed_uid(MPRAGE_UID, read_uid_salt())  # the session's salt, in its own UNIREG_HOME
    assert (row.series_uid, row.n_files, row.n_slices, row.rows, row.columns) == (series_uid, 120, 120, 512, 512)
    assert (row.orientation, row.pixel_spacing, row.slice_thickness) == ("axial", "0.410156x0.410156", "1.5")
    assert (row.transfer_syntax, row.sop_class, row.image_type) == (
        "1.2.840.10008.1.2",
        "MR Image Storage",
        "ORIGINAL\\PRIMARY\\M\\ND",
    )
    # the acquisition fields the selection reads, as the headers give them
    assert (row.series_number, row.protocol_name, row.mr_acquisition_type, row.n_temporal) == (
        2,
        "t1_mpr_tra_gk_v4",
        "3D",
        1,
    )
    assert (row.scanning_sequence, row.sequence_variant, row.sequence_name) == ("GR\\IR", "SP\\MP\\OSP", "*tfl3d1")
    assert (row.echo_time, row.repetition_time, row.inversion_time, row.b_value, row.contrast_agent) == (
        "2.97",
        "1900",
        "1100",
        "",
        0,
    )
    assert (row.selected, row.problem) == (1, "")
    assert row.selection_reason == (
        "chosen: 3-D T1-weighted MR series (T1 by its name), 120 slices of 0.410156x0.410156x1.5 mm; the only candidate"
    )
    for written in (out / "manifest.tsv", files_path(out / "manifest.tsv")):
        assert MPRAGE_UID.encode() not in written.read_bytes()
    assert manifest.attrs["skipped"] == {"not_dicom": 1, "not_image": 0, "truncated": [], "corrupt": []}  # README.md
    back = read_manifest(out / "manifest.tsv")
    assert back.astype(str).equals(manifest.astype(str))
    assert back.attrs["files"] == manifest.attrs["files"]
    assert len(back.attrs["files"][series_key(row.subject, series_uid)]) == 120


# ---------------------------------------------------------------------------------------------
# Several series per subject, localisers, broken files
# ---------------------------------------------------------------------------------------------


def test_index_reports_skipped_and_truncated_files(dicom_cohort):
    _, manifest, truncated = dicom_cohort
    assert manifest["subject"].nunique() == 1 and len(manifest) == 4
    assert manifest.attrs["skipped"] == {"not_dicom": 1, "not_image": 0, "truncated": [str(truncated)], "corrupt": []}
    t1 = by_description(manifest, "t1_mpr_tra_gk_v4")
    assert (t1.n_files, t1.n_slices, t1.n_truncated) == (12, 12, 1)  # kept in its series: converting it must fail
    assert by_description(manifest, "mixed_orientation").orientation == "mixed"
    assert by_description(manifest, "localizer").n_slices == 3


def test_select_without_filter_chooses_the_t1_and_says_why(dicom_cohort):
    """No series filter: the T1 is chosen (its truncated slice is convert's business, not selection's)."""
    _, manifest, _ = dicom_cohort
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
        "localizer": "not chosen: localiser",
    }


@pytest.mark.parametrize(
    "modality, regex, expected",
    [(None, "T2", "t2_tse_tra"), ("mr", "mpr", "t1_mpr_tra_gk_v4"), ("MR", "", "t1_mpr_tra_gk_v4")],
)
def test_select_with_filter(dicom_cohort, modality, regex, expected):
    _, manifest, _ = dicom_cohort
    assert select_series(manifest, manifest["subject"].iloc[0], modality, regex)["series_description"] == expected


@pytest.mark.parametrize(
    "modality, regex, message",
    [
        (None, "flair", "no series matches the series filter (modality=any, description=flair) among 4: "),
        ("CT", None, "no series matches the series filter (modality=CT, description=any) among 4: "),
        (None, "(", "not a valid regular"),
        (
            None,
            "localizer",
            "no anatomical series to register (series filter modality=any, description=localizer) among 4: ",
        ),  # localisers are never selected
        (None, "^mixed", "no anatomical series to register (series filter modality=any, description=^mixed) among 4: "),
    ],
)
def test_select_errors(dicom_cohort, modality, regex, message):
    _, manifest, _ = dicom_cohort
    subject = manifest["subject"].iloc[0]
    with pytest.raises(UniregError) as err:
        select_series(manifest, subject, modality, regex)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{subject}: ") and message in text, text
    if "among" in message:  # every series listed, by its hashed uid, with the reason it was not chosen
        for row in manifest.itertuples():
            assert f"{row.series_uid} '{row.series_description}' MR (series 2, {row.n_slices} slices): " in text
        expected = {
            "flair": "description does not match series_filter 'flair'",
            "localizer": "12 slices): description does not match series_filter 'localizer'",
            "^mixed": "several slice orientations in one series",
        }.get(regex, "modality MR, not CT")
        assert expected in text and ("3 slices): localiser" in text) == (regex == "localizer")
    with pytest.raises(UniregError, match="not in the manifest"):
        select_series(manifest, "sother", modality, regex)


def test_manifest_round_trip_keeps_types(dicom_cohort, tmp_path):
    _, manifest, _ = dicom_cohort
    write_manifest(manifest, tmp_path / "m.tsv")
    back = read_manifest(tmp_path / "m.tsv")
    assert list(back.columns) == MANIFEST_COLUMNS
    assert back["n_slices"].tolist() == manifest["n_slices"].tolist()
    assert back["series_uid"].tolist() == manifest["series_uid"].tolist()
    assert back.attrs["files"] == manifest.attrs["files"]


# ---------------------------------------------------------------------------------------------
# Cohort TSVs
# ---------------------------------------------------------------------------------------------


def test_cohort_tsv_with_dicom_and_nifti_subjects(tmp_path):
    """A cohort TSV: a DICOM folder subject and a NIfTI subject (nibabel's real low-resolution T1)."""
    nibabel_data = Path(nib.__file__).parent / "tests" / "data"
    shutil.copy(nibabel_data / "anatomical.nii", tmp_path / "anat.nii")  # big-endian, vox_offset 0, a descrip
    shutil.copy(nibabel_data / "example4d.nii.gz", tmp_path / "four.nii.gz")  # 2 volumes, 2 extensions
    copy_series(mprage_files(1, 10), tmp_path / "dcm", "{}")
    (tmp_path / "cohort.tsv").write_text(
        "subject\tdicom\tnifti\treference\nsub01\tdcm\t\t\nanat01\t\tanat.nii\tanat.nii\nfour\t\tfour.nii.gz\t\n"
    )
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
