"""Automatic series selection, one subject per PatientID and hashed UIDs (unireg.cohort), on sessions
built from the real MPRAGE headers (../shared/data/dicom_mprage_vsseg001, files 1-12: axial, 1.5 mm
apart): each series is those slices re-written with pydicom, with the header fields changed that
make a scanner's localiser, field map, phase image, EPI, DWI, reformat, T2 or post-contrast T1
(series that are only indexed, never converted, keep a fraction of the pixels to stay small).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import pandas as pd
import pydicom
import pytest
from conftest import copy_series, mprage_files
from pydicom.uid import generate_uid

from unireg.cli import main
from unireg.cohort import (
    _manifest_frame,
    anonymous_subject_id,
    choose_series,
    hashed_uid,
    read_manifest,
    read_uid_salt,
    select_series,
    series_key,
)
from unireg.convert import convert_command, sidecar_path
from unireg.errors import UniregError

pytestmark = pytest.mark.usefixtures("isolated_home_for_module_fixtures")

N = 12  # slices of every series
AXIAL, SAGITTAL, CORONAL = (
    ["1", "0", "0", "0", "1", "0"],
    ["0", "1", "0", "0", "0", "-1"],
    ["1", "0", "0", "0", "0", "-1"],
)
ORIGINAL = ["ORIGINAL", "PRIMARY", "M", "ND"]
NO_INVERSION = ("InversionTime",)


def t1(count: int = 1) -> list[Path]:
    """The 12 real slices, ``count`` times (echoes, b-values, time points at every position)."""
    return mprage_files(1, N) * count


def spec(sources: list[Path], shrink: int = 1, drop: tuple[str, ...] = (), **tags) -> dict:
    return {"sources": sources, "shrink": shrink, "drop": drop, "tags": tags}


# name (its first word is the SeriesDescription) -> how the series is written from the real headers
SERIES = {
    "localizer": spec(
        mprage_files(60, 15),
        4,
        NO_INVERSION,
        SeriesNumber=1,
        ImageType=ORIGINAL,
        ProtocolName="localizer",
        MRAcquisitionType="2D",
        ScanningSequence="GR",
        SequenceVariant=["SP", "OSP"],
        SequenceName="*fl2d1",
        ImageOrientationPatient=lambda n: (AXIAL, SAGITTAL, CORONAL)[n // 5],
    ),
    "AAHead_Scout_32ch": spec(
        mprage_files(60, 3),
        4,
        NO_INVERSION,
        SeriesNumber=1,
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        MRAcquisitionType="2D",
        ScanningSequence="GR",
    ),
    "t1_mpr_tra_gk_v4": spec(t1(), SeriesNumber=2),  # the real series
    "t1_mpr_tra_gk_v4 repeat": spec(t1(), SeriesNumber=5),
    "gre_field_mapping": spec(  # magnitude: 2 echoes at every position
        t1(2),
        8,
        NO_INVERSION,
        SeriesNumber=6,
        ImageType=ORIGINAL,
        ProtocolName="gre_field_mapping",
        MRAcquisitionType="2D",
        ScanningSequence="GR",
        SequenceVariant="SP",
        SequenceName="*fm2d2r",
        EchoTime=lambda n: "4.92" if n < N else "7.38",
        RepetitionTime="488",
        SliceThickness="3",
        EchoNumbers=lambda n: 1 + n // N,
    ),
    "gre_field_mapping phase": spec(  # phase difference
        t1(),
        8,
        NO_INVERSION,
        SeriesNumber=7,
        ImageType=["ORIGINAL", "PRIMARY", "P", "ND"],
        ProtocolName="gre_field_mapping",
        MRAcquisitionType="2D",
        ScanningSequence="GR",
        SequenceName="*fm2d2r",
        EchoTime="7.38",
        SliceThickness="3",
    ),
    "t2_swi_tra_Pha": spec(
        t1(),
        4,
        NO_INVERSION,
        SeriesNumber=8,
        ImageType=["ORIGINAL", "PRIMARY", "P", "ND"],
        ProtocolName="t2_swi_tra",
        ScanningSequence="GR",
        SequenceVariant=["SP", "OSP"],
        SequenceName="*swi3d1r",
        EchoTime="20",
        RepetitionTime="27",
    ),
    "ep2d_bold_rest": spec(  # 3 time points
        t1(3),
        8,
        NO_INVERSION,
        SeriesNumber=9,
        ImageType=ORIGINAL,
        ProtocolName="ep2d_bold_rest",
        MRAcquisitionType="2D",
        ScanningSequence="EP",
        SequenceVariant=["SK", "SS"],
        SequenceName="*epfid2d1_64",
        EchoTime="30",
        RepetitionTime="2000",
        AcquisitionNumber=lambda n: 1 + n // N,
    ),
    "ep2d_diff_mddw_30": spec(  # b = 0 and 1000
        t1(2),
        8,
        NO_INVERSION,
        SeriesNumber=10,
        ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
        ProtocolName="ep2d_diff_mddw_30",
        MRAcquisitionType="2D",
        ScanningSequence="EP",
        SequenceVariant=["SK", "SP"],
        SequenceName=lambda n: "*ep_b0" if n < N else "*ep_b1000t",
        DiffusionBValue=lambda n: 0.0 if n < N else 1000.0,
        EchoTime="89",
        RepetitionTime="8000",
    ),
    "t1_mpr_tra_gk_v4_MPR_cor": spec(t1(), 4, SeriesNumber=12, ImageType=["DERIVED", "SECONDARY", "MPR", "ND"]),
    "t2_tse_tra": spec(  # a 2-D T2 with 5 mm slices: a candidate, ranked below
        t1(),
        2,
        NO_INVERSION,
        SeriesNumber=13,
        ImageType=ORIGINAL,
        ProtocolName="t2_tse_tra",
        MRAcquisitionType="2D",
        ScanningSequence="SE",
        SequenceVariant=["SK", "SP", "OSP"],
        SequenceName="*tse2d1_15",
        EchoTime="101",
        RepetitionTime="5000",
        SliceThickness="5",
    ),
    "t1_mpr_tra_gk_v4 post-contrast": spec(t1(), SeriesNumber=14, ContrastBolusAgent="Gadovist"),  # highest number
}
VOXEL = "0.410156x0.410156x1.5 mm"
REPEAT = f"3-D T1-weighted MR series (T1 by its name), {N} slices of {VOXEL}"
EXPECTED_REASONS = {  # patient A, by the SERIES name
    "localizer": "not chosen: localiser",
    "t1_mpr_tra_gk_v4": f"not chosen: {REPEAT}; the same rank, lower series number (an earlier repeat)",
    "t1_mpr_tra_gk_v4 repeat": f"chosen: {REPEAT}; tie with 1 other of the same rank (a repeat?) broken by the "
    "highest series number (the later repeat); ranked above 2 other candidates",
    "gre_field_mapping": "not chosen: field map",
    "gre_field_mapping phase": "not chosen: field map",
    "t2_swi_tra_Pha": "not chosen: phase image (ImageType ORIGINAL\\PRIMARY\\P\\ND), not a magnitude image",
    "ep2d_bold_rest": "not chosen: EPI (fMRI, diffusion or perfusion), not an anatomical image",
    "ep2d_diff_mddw_30": "not chosen: diffusion-weighted",
    "t1_mpr_tra_gk_v4_MPR_cor": "not chosen: derived image (ImageType DERIVED\\SECONDARY\\MPR\\ND): a reformat, "
    "projection or computed map, not an acquisition",
    "t2_tse_tra": f"not chosen: 2-D non-T1 MR series, {N} slices of 0.820312x0.820312x5 mm; ranked below: 2-D with "
    "slices thicker than 2 mm, the chosen series is volumetric",
    "t1_mpr_tra_gk_v4 post-contrast": f"not chosen: post-contrast {REPEAT}; ranked below: post-contrast, the chosen "
    "series is not",
}
PATIENTS = {  # PatientID -> the series of that patient's session
    "PATA": list(SERIES)[:1] + list(SERIES)[2:],  # everything a session holds, two T1 repeats among them
    "PATB": ["AAHead_Scout_32ch", "gre_field_mapping", "ep2d_bold_rest"],  # nothing to register
    "PATC": ["AAHead_Scout_32ch"],  # a localiser only: still a subject
}


def write_session(root: Path, patient: str, names: list[str]) -> None:
    """One patient's session: the ``names`` of :data:`SERIES`, one study, a series uid each."""
    study = generate_uid()
    for name in names:
        series = SERIES[name]
        copy_series(
            series["sources"],
            root / patient / name.replace(" ", "_"),
            "IM{:04d}",
            shrink=series["shrink"],
            drop=series["drop"],
            **series["tags"],
            PatientID=patient,
            StudyInstanceUID=study,
            SeriesInstanceUID=generate_uid(),
            SeriesDescription=name.split()[0],
        )


def restamp(paths: list[Path], **tags) -> None:
    """Set ``tags`` in every file (SOPInstanceUID kept: the same images)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


def cli(*args: str) -> tuple[int, str]:
    """``unireg <args>``: exit status and what it printed (stdout then stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue() + err.getvalue()


def subject_of(patient: str) -> str:
    return anonymous_subject_id(patient)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three patients in one folder, indexed as the workflow does with the default series_filter."""
    root = tmp_path_factory.mktemp("sessions")
    for patient, names in PATIENTS.items():
        write_session(root / "dicom", patient, names)
    salt_file = root / "work" / "uid_salt"
    status, printed = cli(
        "index",
        "--input",
        str(root / "dicom"),
        "--out",
        str(root / "out" / "manifest.tsv"),
        "--modality",
        "MR",
        "--description",
        "",
        "--salt-file",
        str(salt_file),
    )
    assert status == 0, printed
    return root, read_manifest(root / "out" / "manifest.tsv"), printed, salt_file


def rows_of(manifest, patient: str):
    return manifest[manifest["subject"] == subject_of(patient)]


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def test_every_patient_is_a_subject(cohort):
    _, manifest, printed, _ = cohort
    assert sorted(manifest["subject"].unique()) == sorted(subject_of(p) for p in PATIENTS)
    for patient, names in PATIENTS.items():
        assert len(rows_of(manifest, patient)) == len(names)
    assert (manifest["problem"] == "").all()
    assert manifest.groupby("subject")["selected"].sum().to_dict() == {
        subject_of("PATA"): 1,
        subject_of("PATB"): 0,
        subject_of("PATC"): 0,
    }
    warning = [line for line in printed.splitlines() if "no anatomical series" in line]
    assert warning == [
        f"unireg index: warning: 2 subjects have no anatomical series to register (they will not "
        f"convert; the manifest's selection_reason says why): "
        f"{', '.join(sorted(subject_of(p) for p in ('PATB', 'PATC')))}"
    ]


@pytest.mark.parametrize("name", PATIENTS["PATA"])
def test_each_series_of_a_full_session_says_why(cohort, name):
    """The later MPRAGE repeat is chosen; every other series of the session says why not."""
    _, manifest, _, _ = cohort
    number = {
        "localizer": 1,
        "t1_mpr_tra_gk_v4": 2,
        "t1_mpr_tra_gk_v4 repeat": 5,
        "gre_field_mapping": 6,
        "gre_field_mapping phase": 7,
        "t2_swi_tra_Pha": 8,
        "ep2d_bold_rest": 9,
        "ep2d_diff_mddw_30": 10,
        "t1_mpr_tra_gk_v4_MPR_cor": 12,
        "t2_tse_tra": 13,
        "t1_mpr_tra_gk_v4 post-contrast": 14,
    }[name]
    row = rows_of(manifest, "PATA").set_index("series_number").loc[number]
    assert row.selection_reason == EXPECTED_REASONS[name]
    assert row.selected == (name == "t1_mpr_tra_gk_v4 repeat")


@pytest.mark.parametrize(
    "number, fields",
    [
        (
            2,
            dict(
                n_files=12,
                n_slices=12,
                n_temporal=1,
                mr_acquisition_type="3D",
                scanning_sequence="GR\\IR",
                inversion_time="1100",
                b_value="",
                contrast_agent=0,
                image_type="ORIGINAL\\PRIMARY\\M\\ND",
            ),
        ),
        (
            6,
            dict(
                n_files=24,
                n_slices=12,
                n_temporal=2,
                mr_acquisition_type="2D",
                sequence_name="*fm2d2r",
                inversion_time="",
                echo_time="4.92",
                protocol_name="gre_field_mapping",
            ),
        ),
        (
            9,
            dict(
                n_files=36,
                n_slices=12,
                n_temporal=3,
                scanning_sequence="EP",
                sequence_variant="SK\\SS",
                pixel_spacing="3.28125x3.28125",
            ),
        ),
        (10, dict(n_files=24, n_temporal=2, b_value="1000", image_type="ORIGINAL\\PRIMARY\\DIFFUSION\\NONE")),
        (14, dict(contrast_agent=1, series_description="t1_mpr_tra_gk_v4")),
    ],
)
def test_manifest_records_the_header_fields_of_the_rule(cohort, number, fields):
    _, manifest, _, _ = cohort
    row = rows_of(manifest, "PATA").set_index("series_number").loc[number]
    assert {key: row[key] for key in fields} == fields


def test_convert_converts_the_selected_repeat(cohort):
    root, manifest, _, salt_file = cohort
    out = root / "out" / "a" / "T1w.nii.gz"
    status, printed = cli(
        "convert",
        "--manifest",
        str(root / "out" / "manifest.tsv"),
        "--subject",
        subject_of("PATA"),
        "--out",
        str(out),
        "--salt-file",
        str(salt_file),
    )
    assert status == 0, printed
    assert nib.load(out).shape == (512, 512, N)
    assert json.loads(sidecar_path(out).read_text())["SeriesNumber"] == 5


@pytest.mark.parametrize("patient, n_series", [("PATB", 3), ("PATC", 1)])
def test_subject_without_anatomical_series_fails_convert_alone(cohort, patient, n_series):
    """One line naming the subject and listing its series with the reason each was not chosen."""
    root, manifest, _, salt_file = cohort
    subject = subject_of(patient)
    status, printed = cli(
        "convert",
        "--manifest",
        str(root / "out" / "manifest.tsv"),
        "--subject",
        subject,
        "--out",
        str(root / "out" / patient / "T1w.nii.gz"),
        "--salt-file",
        str(salt_file),
    )
    assert status == 1 and printed.count("\n") == 1
    assert printed.startswith(f"unireg: {subject}: no anatomical series to register among {n_series}: ")
    for row in rows_of(manifest, patient).itertuples():
        assert (
            f"{row.series_uid} '{row.series_description}' MR (series {row.series_number}, {row.n_slices} "
            f"slices): {row.selection_reason.removeprefix('not chosen: ')}"
        ) in printed
    assert "localiser" in printed and ("field map" in printed) == (patient == "PATB")
    assert not (root / "out" / patient).exists()


@pytest.mark.parametrize(
    "description, expected",
    [
        ("t2", "t2_tse_tra"),  # the filter narrows the candidates: the 2-D T2 is then the one
        ("mpr", "t1_mpr_tra_gk_v4"),  # the MPR reformat matches but is never chosen: the later repeat is
    ],
)
def test_index_series_filter_and_convert_follows_it(cohort, tmp_path, description, expected):
    root, _, _, salt_file = cohort
    manifest_path = tmp_path / "manifest.tsv"
    assert (
        cli(
            "index",
            "--input",
            str(root / "dicom" / "PATA"),
            "--out",
            str(manifest_path),
            "--description",
            description,
            "--salt-file",
            str(salt_file),
        )[0]
        == 0
    )
    manifest = read_manifest(manifest_path)
    chosen = manifest[manifest["selected"] == 1]
    assert chosen["series_description"].tolist() == [expected]
    others = manifest[(manifest["selected"] == 0) & ~manifest["series_description"].str.contains(description)]
    assert (others["selection_reason"] == f"not chosen: description does not match series_filter '{description}'").all()
    if description == "t2":  # convert takes the row index selected, with no filter of its own
        out = convert_command(manifest_path, subject_of("PATA"), tmp_path / "T2w.nii.gz", salt_file=salt_file)
        assert json.loads(sidecar_path(out).read_text())["SeriesDescription"] == "t2_tse_tra"


@pytest.mark.parametrize(
    "row, t1",
    [
        ({"series_description": "mp2rage_UNI_Images", "image_type": "DERIVED\\PRIMARY\\M\\ND\\UNI"}, "by its name"),
        ({"series_description": "mp2rage_INV2", "inversion_time": "2500"}, None),
        ({"series_description": "Sag IR-FSPGR 3D"}, "by its name"),
        ({"series_description": "3D_T1_TFE", "protocol_name": "WIP 3D_T1"}, "by its name"),
        ({"series_description": "t2_space_dark-fluid_sag", "protocol_name": "t1_space"}, None),  # the description wins
        (
            {
                "series_description": "sag 3d",
                "scanning_sequence": "GR\\IR",
                "sequence_variant": "SP\\MP",
                "inversion_time": "900",
                "echo_time": "2.98",
            },
            "by its timing: inversion recovery, TI 900 ms, TE 2.98 ms",
        ),
        (
            {"series_description": "ax 3d", "scanning_sequence": "GR", "repetition_time": "8.2", "echo_time": "3.2"},
            "by its timing: spoiled gradient echo, TR 8.2 ms, TE 3.2 ms",
        ),
        ({"series_description": "ax 3d", "scanning_sequence": "IR", "inversion_time": "2500", "echo_time": "90"}, None),
    ],
)
def test_t1_by_name_or_timing(row, t1):
    """The T1 preference on manifest rows as other vendors' sessions write them (a 3-D series each)."""
    manifest = pd.DataFrame(
        [
            {
                "subject": "x",
                "series_uid": "2.25.1",
                "kind": "dicom",
                "modality": "MR",
                "image_type": "ORIGINAL\\PRIMARY\\M",
                "n_slices": 176,
                "n_temporal": 1,
                "orientation": "sagittal",
                "mr_acquisition_type": "3D",
                "pixel_spacing": "1x1",
                "slice_thickness": "1",
                **row,
            }
        ]
    )
    assert select_series(manifest, "x").name == 0  # the only candidate, whatever its contrast
    reason = choose_series(manifest, "x").reasons.iloc[0]
    assert reason.startswith("chosen: 3-D " + ("MP2RAGE UNI " if "UNI" in row.get("image_type", "") else ""))
    assert f"T1-weighted MR series (T1 {t1}), 176 slices" in reason if t1 else "non-T1 MR series, 176" in reason


def test_selection_copies_no_file_list_per_row(cohort):
    """pandas deep-copies a frame's attrs (the file list of every series) into each row and subset taken:
    indexing selects before the list joins the manifest (copied per row, it made indexing quadratic in the
    cohort size), and choose_series takes the subject's rows once, never a copy per row."""
    _, manifest, _, _ = cohort
    copies = []

    class FileList(list):
        def __deepcopy__(self, memo):
            copies.append(len(self))
            return FileList(self)

    files = {series_key(s, uid): FileList(["IM0001"]) for s, uid in zip(manifest["subject"], manifest["series_uid"])}
    again = _manifest_frame(manifest.assign(selected=0, selection_reason="").to_dict("records"), files, {}, "MR", "")
    assert copies == [] and again.attrs["files"] is files
    assert again["selected"].tolist() == manifest["selected"].tolist() and sum(manifest["selected"]) == 1
    assert again["selection_reason"].tolist() == manifest["selection_reason"].tolist()
    for subject in manifest["subject"].unique():
        copies.clear()
        choice = choose_series(again, subject, "MR")
        assert len(copies) <= 3 * len(files)  # a column, a mask and a subset at most, for 4 to 10 rows
        rows = again[again["subject"] == subject]
        assert choice.reasons.tolist() == rows["selection_reason"].tolist()


# ---------------------------------------------------------------------------------------------
# No subject lost or merged
# ---------------------------------------------------------------------------------------------


def test_same_scan_under_two_patient_ids_is_a_problem_for_both(tmp_path):
    """The same export under two pseudonyms: two subjects, neither converts, the third is unaffected."""
    dicom = tmp_path / "dicom"
    first = copy_series(t1(), dicom / "PATD", "IM{:04d}", PatientID="PATD", SeriesInstanceUID=generate_uid())
    shutil.copytree(dicom / "PATD", dicom / "PATE")
    restamp(sorted((dicom / "PATE").iterdir()), PatientID="PATE")  # same SOPInstanceUIDs, other PatientID
    copy_series(t1(), dicom / "PATF", "IM{:04d}", PatientID="PATF", SeriesInstanceUID=generate_uid())
    salt_file = tmp_path / "uid_salt"
    status, printed = cli(
        "index", "--input", str(dicom), "--out", str(tmp_path / "manifest.tsv"), "--salt-file", str(salt_file)
    )
    assert status == 0, printed
    d, e, f = (subject_of(p) for p in ("PATD", "PATE", "PATF"))
    pair = sorted([d, e])
    assert [line for line in printed.splitlines() if "warning" in line] == [
        f"unireg index: warning: subjects {pair[0]} and {pair[1]} hold the same images (SOPInstanceUID): the same "
        "scan exported under two PatientIDs? none of them will convert; remove one copy and run 'unireg index' again"
    ]
    manifest = read_manifest(tmp_path / "manifest.tsv")
    assert sorted(manifest["subject"]) == sorted([d, e, f]) and manifest["series_uid"].nunique() == 2
    problems = dict(zip(manifest["subject"], manifest["problem"]))
    for subject, other in ((d, e), (e, d)):
        assert problems[subject] == (
            f"the same images (SOPInstanceUID) also appear under subject {other}: the same "
            "scan exported under two PatientIDs? remove one copy and run 'unireg index' again"
        )
        status, printed = cli(
            "convert",
            "--manifest",
            str(tmp_path / "manifest.tsv"),
            "--subject",
            subject,
            "--out",
            str(tmp_path / subject / "T1w.nii.gz"),
            "--salt-file",
            str(salt_file),
        )
        assert (status, printed) == (1, f"unireg: {subject}: {problems[subject]}\n")
        assert not (tmp_path / subject).exists()
    assert problems[f] == ""
    files = read_manifest(tmp_path / "manifest.tsv").attrs["files"]
    key = series_key(
        d, hashed_uid(pydicom.dcmread(first[0], stop_before_pixels=True).SeriesInstanceUID, read_uid_salt(salt_file))
    )
    assert all("/PATD/" in path for path in files[key])  # each subject keeps its own files
    assert (
        cli(
            "convert",
            "--manifest",
            str(tmp_path / "manifest.tsv"),
            "--subject",
            f,
            "--out",
            str(tmp_path / f / "T1w.nii.gz"),
            "--salt-file",
            str(salt_file),
        )[0]
        == 0
    )


def test_export_copied_twice_is_a_problem(tmp_path):
    """The same files twice under one PatientID: one series, flagged, not a 2-volume surprise at convert."""
    copy_series(t1(), tmp_path / "dicom" / "a", "IM{:04d}", PatientID="PATG", SeriesInstanceUID=generate_uid())
    shutil.copytree(tmp_path / "dicom" / "a", tmp_path / "dicom" / "a copy")
    salt_file = tmp_path / "uid_salt"
    status, printed = cli(
        "index",
        "--input",
        str(tmp_path / "dicom"),
        "--out",
        str(tmp_path / "manifest.tsv"),
        "--salt-file",
        str(salt_file),
    )
    row = read_manifest(tmp_path / "manifest.tsv").iloc[0]
    expected = (
        f"series {row.series_uid}: 12 images are stored in more than one file (the same SOPInstanceUID): the "
        "export copied twice? remove the copies and run 'unireg index' again"
    )
    assert (status, row.n_files, row.n_temporal, row.selected, row.problem) == (0, 24, 1, 1, expected)
    assert f"unireg index: warning: {row.subject}: series {row.series_uid}: 12 images are stored" in printed
    with pytest.raises(UniregError) as err:
        convert_command(tmp_path / "manifest.tsv", row.subject, tmp_path / "x.nii.gz", salt_file=salt_file)
    assert str(err.value) == f"{row.subject}: {expected}"


# ---------------------------------------------------------------------------------------------
# Hashed UIDs and their salt
# ---------------------------------------------------------------------------------------------


def test_hashed_uid_is_a_valid_uid():
    salt = "ab" * 32
    uid = hashed_uid("1.3.12.2.1107.5.2.32.35162.2010072308581490312345678", salt)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    assert int(uid[5:]) < 2**128
    assert uid == hashed_uid("1.3.12.2.1107.5.2.32.35162.2010072308581490312345678", salt)
    assert uid != hashed_uid("1.3.12.2.1107.5.2.32.35162.2010072308581490312345678", "cd" * 32)
    assert hashed_uid("", salt) == ""


def test_uid_salt_is_made_once_and_reruns_are_identical(cohort, tmp_path):
    root, manifest, _, _ = cohort
    salt_file = tmp_path / "deep" / "uid_salt"
    salt = read_uid_salt(salt_file, create=True)
    assert re.fullmatch(r"[0-9a-f]{64}", salt) and salt_file.stat().st_mode & 0o777 == 0o600
    assert read_uid_salt(salt_file, create=True) == salt  # never replaced
    outputs = []
    for name in ("a", "b"):
        assert (
            cli(
                "index",
                "--input",
                str(root / "dicom"),
                "--out",
                str(tmp_path / name / "manifest.tsv"),
                "--salt-file",
                str(salt_file),
            )[0]
            == 0
        )
        outputs.append([(tmp_path / name / f).read_bytes() for f in ("manifest.tsv", "manifest.files.json")])
    assert outputs[0] == outputs[1]  # bit-identical reruns
    again = read_manifest(tmp_path / "a" / "manifest.tsv")
    assert not set(again["series_uid"]) & set(manifest["series_uid"])  # another salt: other uids ...
    columns = ["subject", "series_number", "selected", "selection_reason"]  # ... and the same selection
    assert (
        again.sort_values(columns[:2])[columns]
        .reset_index(drop=True)
        .equals(manifest.sort_values(columns[:2])[columns].reset_index(drop=True))
    )


def test_convert_needs_the_salt_index_used(cohort, tmp_path):
    root, _, _, _ = cohort
    manifest_path, subject = root / "out" / "manifest.tsv", subject_of("PATA")
    with pytest.raises(UniregError, match="UID salt file not found: pass the --salt-file that 'unireg index' used"):
        convert_command(manifest_path, subject, tmp_path / "x.nii.gz", salt_file=tmp_path / "missing")
    (tmp_path / "other").write_text("cd" * 32 + "\n")
    with pytest.raises(UniregError, match="file belongs to another series .*pass the same --salt-file"):
        convert_command(manifest_path, subject, tmp_path / "x.nii.gz", salt_file=tmp_path / "other")
    (tmp_path / "bad").write_text("not a salt\n")
    with pytest.raises(UniregError, match="UID salt file holds no salt"):
        convert_command(manifest_path, subject, tmp_path / "x.nii.gz", salt_file=tmp_path / "bad")
    assert not (tmp_path / "x.nii.gz").exists()
