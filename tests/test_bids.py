"""BIDS input (unireg.bids.index_bids) and BIDS-derivatives names checked by the official validator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unireg.bids import (
    BIDS_COLUMNS,
    BIDS_VERSION,
    NON_BIDS_PATTERNS,
    derivative_name,
    index_bids,
    is_bids_root,
    parse_bids_name,
    unit_id,
    validate_derivatives,
    validator_command,
    write_dataset_description,
)
from unireg.cohort import INT_COLUMNS, MANIFEST_COLUMNS
from unireg.errors import UniregError


def tiny_nifti(path: Path, value: int = 1, is_label: bool = False) -> Path:
    """A real 6x6x6 NIfTI with mm units (the validator warns about unit-less headers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full((6, 6, 6), value, dtype=np.int16 if is_label else np.float32)
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return path


def make_dataset(
    root: Path, files: list[str], participants: list[str] | None = None, description: dict | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(description or {"Name": "tiny", "BIDSVersion": "1.10.0"}))
    for name in files:
        tiny_nifti(root / name)
    if participants is not None:
        rows = "".join(f"sub-{p}\t40\n" for p in participants)
        (root / "participants.tsv").write_text("participant_id\tage\n" + rows)
    return root


@pytest.fixture
def dataset(tmp_path):
    """Sessions, two runs, a contrast-enhanced image, a T2w only, a participant without files, and
    a derivatives/ and sourcedata/ that must not be read."""
    return make_dataset(
        tmp_path / "ds",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-02/ses-1/anat/sub-02_ses-1_run-1_T1w.nii.gz",
            "sub-02/ses-1/anat/sub-02_ses-1_run-2_T1w.nii.gz",
            "sub-02/ses-1/anat/sub-02_ses-1_ce-gadolinium_run-3_T1w.nii.gz",
            "sub-02/ses-2/anat/sub-02_ses-2_acq-mprage_T1w.nii",
            "sub-03/anat/sub-03_T2w.nii.gz",
            "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz",
            "derivatives/sub-09/anat/sub-09_T1w.nii.gz",
            "sourcedata/sub-08/anat/sub-08_T1w.nii.gz",
        ],
        participants=["01", "02", "03", "04"],
    )


def test_is_bids_root(dataset, tmp_path):
    assert is_bids_root(dataset)
    assert not is_bids_root(dataset / "sub-01")
    assert not is_bids_root(make_dataset(tmp_path / "nosubjects", []))
    (tmp_path / "nodescription" / "sub-01").mkdir(parents=True)
    assert not is_bids_root(tmp_path / "nodescription")


def test_index_bids_rows(dataset):
    manifest = index_bids(dataset)
    assert list(manifest.columns) == list(MANIFEST_COLUMNS) + list(BIDS_COLUMNS)
    assert manifest["subject"].tolist() == ["01", "02ses1", "02ses1", "02ses1", "02ses2", "03", "04"]
    assert (manifest["kind"] == "nifti").all()
    assert all(manifest[c].dtype == np.int64 for c in INT_COLUMNS if c in manifest.columns)
    assert set(manifest["reference"]) == {""}
    by_source = manifest.set_index(manifest["source"].map(lambda s: Path(s).name if s else ""))

    one = by_source.loc["sub-01_T1w.nii.gz"]
    assert one["source"] == str(dataset.absolute() / "sub-01/anat/sub-01_T1w.nii.gz")
    assert (one["selected"], one["n_files"], one["series_number"], one["problem"]) == (1, 1, 0, "")
    assert one["selection_reason"] == "chosen: the only T1w image of this subject"
    assert (one["bids_subject"], one["bids_session"], one["bids_run"], one["bids_acq"]) == ("01", "", "", "")

    # two runs and a later contrast-enhanced run: the last run without contrast agent wins
    session = manifest[manifest["subject"] == "02ses1"].set_index("bids_run")
    assert session["selected"].to_dict() == {"1": 0, "2": 1, "3": 0}
    assert session.loc["2", "selection_reason"] == (
        "chosen: without contrast agent (no ce-), then the highest run number (run-2, the last repeat), of 3 T1w images"
    )
    assert session.loc["3", "selection_reason"].startswith("not chosen: contrast-enhanced (ce-gadolinium)")
    assert session.loc["1", "selection_reason"].startswith("not chosen: an earlier run than sub-02_ses-1_run-2")
    assert set(session["bids_session"]) == {"1"} and set(session["problem"]) == {""}

    second = by_source.loc["sub-02_ses-2_acq-mprage_T1w.nii"]  # .nii, not .nii.gz
    assert (second["subject"], second["selected"], second["bids_acq"]) == ("02ses2", 1, "mprage")

    # a T2w only (03) and a participant without a folder (04) do not vanish
    for subject in ("03", "04"):
        row = manifest[manifest["subject"] == subject].iloc[0]
        assert (row["selected"], row["n_files"], row["source"]) == (0, 0, "")
        assert row["problem"] == "no T1w image in the BIDS dataset"
    # nothing from derivatives/ or sourcedata/
    assert not manifest["source"].str.contains("derivatives|sourcedata").any()
    assert "09" not in set(manifest["bids_subject"]) and "08" not in set(manifest["bids_subject"])


def test_index_bids_other_suffix(dataset):
    manifest = index_bids(dataset, suffix="T2w")
    chosen = manifest[manifest["selected"] == 1]
    assert chosen["subject"].tolist() == ["03"]
    assert manifest.loc[manifest["subject"] == "01", "problem"].item() == "no T2w image in the BIDS dataset"


def test_equal_rank_is_decided_by_file_name(tmp_path):
    root = make_dataset(tmp_path / "ds", ["sub-01/anat/sub-01_acq-b_T1w.nii.gz", "sub-01/anat/sub-01_acq-a_T1w.nii.gz"])
    manifest = index_bids(root).set_index("bids_acq")
    assert manifest["selected"].to_dict() == {"a": 1, "b": 0}
    assert manifest.loc["a", "selection_reason"] == (
        "chosen: first by file name among equally ranked images, of 2 T1w images"
    )


def test_broken_link_is_never_chosen(tmp_path):
    root = make_dataset(tmp_path / "ds", ["sub-01/anat/sub-01_run-1_T1w.nii.gz"])
    (root / "sub-01/anat/sub-01_run-2_T1w.nii.gz").symlink_to(root / ".git/annex/objects/missing")
    manifest = index_bids(root).set_index("bids_run")
    assert manifest["selected"].to_dict() == {"1": 1, "2": 0}
    assert "broken link" in manifest.loc["2", "selection_reason"]
    (root / "sub-01/anat/sub-01_run-1_T1w.nii.gz").unlink()
    (root / "sub-01/anat/sub-01_run-1_T1w.nii.gz").symlink_to(root / ".git/annex/objects/gone")
    manifest = index_bids(root)
    assert manifest["selected"].sum() == 0
    assert manifest["problem"].str.startswith("every T1w image of this subject is a broken link").all()


def test_unit_id_collision_is_one_line_naming_both(tmp_path):
    root = make_dataset(
        tmp_path / "ds", ["sub-01ses1/anat/sub-01ses1_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"]
    )
    with pytest.raises(UniregError, match=r"sub-01/ses-1 and sub-01ses1 both become the workflow id '01ses1'") as err:
        index_bids(root)
    assert "\n" not in str(err.value)
    assert unit_id("01", "1") == "01ses1" and unit_id("01") == "01"


@pytest.mark.parametrize(
    "bad,match",
    [
        ("sub-01/anat/sub-02_T1w.nii.gz", "does not start with sub-01_"),
        ("sub-01/ses-1/anat/sub-01_T1w.nii.gz", "does not start with sub-01_ses-1_"),
        ("sub-01/anat/sub-01_run-x_T1w.nii.gz", "run- must be a non-negative integer"),
        ("sub-01/anat/sub-01_acq_T1w.nii.gz", "not a key-label pair"),
        ("sub-0_1/anat/sub-0_1_T1w.nii.gz", "not a BIDS sub- folder name"),
    ],
)
def test_bad_names_are_one_line_errors(tmp_path, bad, match):
    root = make_dataset(tmp_path / "ds", [bad])
    with pytest.raises(UniregError, match=match):
        index_bids(root)


def test_not_a_bids_dataset(tmp_path):
    with pytest.raises(UniregError, match="not a BIDS dataset"):
        index_bids(tmp_path)


def test_bad_participants_tsv(tmp_path):
    root = make_dataset(tmp_path / "ds", ["sub-01/anat/sub-01_T1w.nii.gz"])
    (root / "participants.tsv").write_text("participant_id\n01\n")
    with pytest.raises(UniregError, match="participant_id '01' is not sub-<letters and digits>"):
        index_bids(root)


# ---------------------------------------------------------------------------------------------
# Derivative names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs,expected",
    [
        (("01", "T1w"), {}, "sub-01/anat/sub-01_T1w.nii.gz"),
        (
            ("01", "T1w"),
            {"desc": "preproc", "space": "MNI152NLin2009aSym", "session": "2"},
            "sub-01/ses-2/anat/sub-01_ses-2_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
        ),
        (
            ("01", "dseg", ".nii.gz"),
            {"res": "2", "atlas": "tissue", "space": "MNI152NLin2009aSym"},
            "sub-01/anat/sub-01_space-MNI152NLin2009aSym_atlas-tissue_res-2_dseg.nii.gz",
        ),
        (
            ("01", "xfm", ".txt"),
            {"desc": "affine", "mode": "image", "to": "T1w", "from_": "MNI152NLin2009aSym"},
            "sub-01/anat/sub-01_from-MNI152NLin2009aSym_to-T1w_mode-image_desc-affine_xfm.txt",
        ),
        (
            ("{subject}", "metrics", ".tsv"),
            {"desc": "tissue", "datatype": None},
            "sub-{subject}/sub-{subject}_desc-tissue_metrics.tsv",
        ),
        ((None, "dseg", ".tsv"), {"atlas": "tissue"}, "atlas-tissue_dseg.tsv"),
        (
            ("01", "T1w"),
            {"run": "2", "acq": "mprage", "ce": "gad", "desc": None},
            "sub-01/anat/sub-01_acq-mprage_ce-gad_run-2_T1w.nii.gz",
        ),
    ],
)
def test_derivative_name(args, kwargs, expected):
    assert derivative_name(*args, **kwargs) == expected
    name = parse_bids_name(expected.replace("{subject}", "01"))
    assert name.suffix == args[1] and expected.endswith(name.extension)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"space": "MNI-152"}, "letters and digits"),
        ({"run": "two"}, "non-negative integer"),
        ({"colour": "red"}, "unknown BIDS entities"),
        ({"sub": "02"}, "unknown BIDS entities"),
    ],
)
def test_derivative_name_refuses_bad_entities(kwargs, match):
    with pytest.raises(UniregError, match=match):
        derivative_name("01", "T1w", **kwargs)


# ---------------------------------------------------------------------------------------------
# dataset_description.json, .bidsignore and the validator
# ---------------------------------------------------------------------------------------------


def test_write_dataset_description(tmp_path, dataset):
    source = json.loads((dataset / "dataset_description.json").read_text())
    source["DatasetDOI"] = "doi:10.18112/openneuro.ds000001.v1.0.0"
    (dataset / "dataset_description.json").write_text(json.dumps(source))
    out = tmp_path / "results"
    path = write_dataset_description(out, source_dataset=dataset)
    description = json.loads(path.read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"] == BIDS_VERSION
    assert description["GeneratedBy"][0]["Name"] == "unireg"
    assert description["SourceDatasets"] == [{"Name": "tiny", "DOI": "doi:10.18112/openneuro.ds000001.v1.0.0"}]
    assert str(tmp_path) not in path.read_text()  # the source's path is private
    assert (out / ".bidsignore").read_text().splitlines() == list(NON_BIDS_PATTERNS)
    assert "SourceDatasets" not in json.loads(write_dataset_description(tmp_path / "r2").read_text())
    assert not list(out.glob(".*.tmp*")) and sorted(p.name for p in out.iterdir()) == [
        ".bidsignore",
        "dataset_description.json",
    ]


def _validator_or_skip():
    try:
        validator_command()
    except UniregError as exc:
        pytest.skip(f"BIDS validator not installed: {exc}")


SPACE = "MNI152NLin2009aSym"


def derivatives_tree(root: Path, subject: str = "01", session: str | None = None) -> list[str]:
    """Every kind of unireg output, named by derivative_name, with the sidecars the validator requires."""
    names = []

    def image(suffix, sidecar=None, is_label=False, **entities):
        name = derivative_name(subject, suffix, session=session, **entities)
        tiny_nifti(root / name, is_label=is_label)
        names.append(name)
        if sidecar is not None:
            json_name = derivative_name(subject, suffix, ".json", session=session, **entities)
            (root / json_name).write_text(json.dumps(sidecar))
            names.append(json_name)

    image("T1w", {"SkullStripped": False})  # converted input, native
    image("T1w", {"SkullStripped": True}, space=SPACE, desc="preproc")  # preprocessed, atlas space
    image("mask", {"Type": "Brain"}, is_label=True, space=SPACE, desc="brain")  # brain mask, atlas space
    image("T1w", {"SkullStripped": False}, space=SPACE, desc="warpedatlas")  # atlas template warped
    image("dseg", None, is_label=True, space=SPACE, atlas="tissue")  # atlas labels warped, atlas grid
    image("dseg", {"Description": "atlas labels in native space"}, is_label=True, atlas="tissue")  # native
    image(
        "T1w",
        {"SkullStripped": True, "SpatialReference": "https://example.org/unireg2mm.nii.gz"},
        space="unireg2mm",
        desc="preproc",
    )  # a custom space label
    table = derivative_name(subject, "dseg", ".tsv", session=session, atlas="tissue")
    (root / table).write_text("index\tname\n1\tCSF\n2\tgrey_matter\n3\twhite_matter\n")
    xfm = derivative_name(subject, "xfm", ".txt", session=session, from_=SPACE, to="T1w", mode="image", desc="affine")
    (root / xfm).write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    tiny_nifti(
        root / derivative_name(subject, "xfm", session=session, from_=SPACE, to="T1w", mode="image", desc="nonlinear")
    )
    metrics = derivative_name(subject, "metrics", ".tsv", session=session, desc="tissue")
    (root / metrics).write_text("label\tdice\n1\t0.9\n")
    (root / "atlas-tissue_description.json").write_text(json.dumps({"Name": "MNI 2009a tissue classes"}))
    return names + [table]


def test_derivative_names_pass_the_bids_validator(tmp_path, dataset):
    _validator_or_skip()
    out = tmp_path / "results"
    write_dataset_description(out, source_dataset=dataset)
    derivatives_tree(out)
    derivatives_tree(out, subject="02", session="1")
    for top in ("manifest.tsv", "manifest.files.json", "report.html", "cohort_metrics.tsv"):
        (out / top).write_text("x\n")
    assert validate_derivatives(out) == []
    warnings = validate_derivatives(out, warnings=True)
    assert warnings and all(
        line.split(":")[0].split("/")[0] in {"README_FILE_MISSING", "SIDECAR_KEY_RECOMMENDED", "TOO_FEW_AUTHORS"}
        for line in warnings
    ), warnings


@pytest.mark.parametrize(
    "name,code",
    [
        ("sub-01/anat/sub-01_desc-preproc_space-MNI152NLin2009aSym_T1w.nii.gz", "FILENAME_MISMATCH"),  # entity order
        ("sub-01/anat/sub-01_desc-bogus_blah.nii.gz", "NOT_INCLUDED"),  # unknown suffix
        ("sub-01/preproc/preproc.nii.gz", "NOT_INCLUDED"),  # the old layout
        ("sub-01/anat/sub-01_space-unireg2mm_desc-brain_mask.nii.gz", "SIDECAR_KEY_REQUIRED/SpatialReference"),
        ("sub-01/anat/sub-01_desc-preproc_T1w.nii.gz", "SIDECAR_KEY_REQUIRED/SkullStripped"),
    ],
)
def test_invalid_derivative_names_are_reported(tmp_path, name, code):
    _validator_or_skip()
    out = tmp_path / "results"
    write_dataset_description(out)
    tiny_nifti(out / name)
    problems = validate_derivatives(out)
    assert [p for p in problems if p.startswith(f"{code}: /{name}")], problems


def test_a_raw_dataset_is_not_a_derivatives_dataset(tmp_path):
    _validator_or_skip()
    root = make_dataset(tmp_path / "raw", ["sub-01/anat/sub-01_T1w.nii.gz"])
    assert any(p.startswith("DATASET_TYPE") for p in validate_derivatives(root))


def test_validator_missing_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    write_dataset_description(tmp_path)
    with pytest.raises(UniregError, match="bids-validator-deno not found: pip install bids-validator-deno"):
        validate_derivatives(tmp_path)


def test_unireg_index_and_convert_take_a_bids_dataset(dataset, tmp_path, capsys):
    """`unireg index --input <BIDS root>` as the workflow runs it: one input per subject/session, the
    chosen image converted with a de-identified sidecar, the results folder described as a BIDS
    derivatives dataset; an input without a T1w fails alone with a one-line error."""
    from unireg.cli import main
    from unireg.cohort import read_manifest

    results, salt = tmp_path / "results", tmp_path / "uid_salt"
    (dataset / "sub-01" / "anat" / "sub-01_T1w.json").write_text(
        json.dumps(
            {"RepetitionTime": 2.3, "InversionTime": 0.9, "InstitutionName": "Hospital", "AcquisitionTime": "08:58:14"}
        )
    )
    assert (
        main(["index", "--input", str(dataset), "--out", str(results / "manifest.tsv"), "--salt-file", str(salt)]) == 0
    )
    manifest = read_manifest(results / "manifest.tsv")
    chosen = manifest[manifest["selected"].astype(int) == 1]
    assert sorted(chosen["subject"]) == ["01", "02ses1", "02ses2"]
    assert set(manifest["subject"]) == {"01", "02ses1", "02ses2", "03", "04"}  # nobody vanishes
    assert chosen.set_index("subject").loc["02ses1", "source"].endswith("sub-02_ses-1_run-2_T1w.nii.gz")
    description = json.loads((results / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "unireg"
    assert str(dataset) not in (results / "dataset_description.json").read_text()

    out = results / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert (
        main(
            [
                "convert",
                "--manifest",
                str(results / "manifest.tsv"),
                "--subject",
                "01",
                "--out",
                str(out),
                "--salt-file",
                str(salt),
            ]
        )
        == 0
    )
    sidecar = json.loads(out.with_name("sub-01_T1w.json").read_text())
    assert sidecar["RepetitionTime"] == 2.3 and sidecar["SkullStripped"] is False
    assert "InstitutionName" not in sidecar and "AcquisitionTime" not in sidecar
    capsys.readouterr()
    assert (
        main(
            [
                "convert",
                "--manifest",
                str(results / "manifest.tsv"),
                "--subject",
                "04",
                "--out",
                str(results / "sub-04" / "anat" / "sub-04_T1w.nii.gz"),
                "--salt-file",
                str(salt),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unireg: 04: ") and "no T1w image" in err, err
