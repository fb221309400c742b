"""The results layout (unireg.layout): one name per file, found back by the code that reads it."""

from pathlib import Path

import pytest

from unireg.errors import UniregError
from unireg.layout import PLAIN_NAMES, atlas_entities, find_all, find_subject_file, sibling, stage_names, subject_files


def test_every_file_is_in_the_subject_anat_folder_and_named_once():
    files = subject_files("01", "MNI152NLin2009aSym", "tissue")
    assert all(name.startswith("sub-01/anat/sub-01_") for name in files.values())
    assert len(set(files.values())) == len(files)
    assert files["labels"] == "sub-01/anat/sub-01_atlas-tissue_dseg.nii.gz"
    assert files["labels_tsv"] == "sub-01/anat/sub-01_atlas-tissue_dseg.tsv"
    assert files["preproc"] == "sub-01/anat/sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"
    assert files["preproc_json"] == "sub-01/anat/sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.json"
    assert files["displacement"] == (
        "sub-01/anat/sub-01_from-MNI152NLin2009aSym_to-T1w_mode-image_desc-nonlinear_xfm.nii.gz"
    )
    assert subject_files("{subject}", "S", "A")["metrics"] == "sub-{subject}/anat/sub-{subject}_atlas-A_metrics.tsv"


@pytest.mark.parametrize(
    "atlas, expected",
    [
        ("mni2009a", ("MNI152NLin2009aSym", "tissue")),
        ("work/atlas/mni2009a", ("MNI152NLin2009aSym", "tissue")),
        ("/data/my_atlas-1mm/", ("myatlas1mm", "myatlas1mm")),
    ],
)
def test_atlas_entities(atlas, expected):
    assert atlas_entities(atlas) == expected


def test_atlas_folder_without_letters_is_refused():
    with pytest.raises(UniregError, match="no letters or digits"):
        atlas_entities("/data/__/")


def test_stage_names_plain_outside_the_workflow_and_layout_inside():
    assert stage_names("preprocess") == PLAIN_NAMES["preprocess"]
    assert stage_names("register", "01") == PLAIN_NAMES["register"]  # no space: plain
    files = subject_files("01", "S", "A")
    named = stage_names("register", "01", "S", "A")
    assert set(named) == set(PLAIN_NAMES["register"])
    assert named["info"] == Path(files["displacement_json"]).name
    assert named["labels"] == Path(files["warped_labels"]).name
    assert stage_names("preprocess", "01", "S")["info"] == Path(files["preproc_json"]).name


def test_files_are_found_back_whatever_the_atlas(tmp_path):
    for subject, space, atlas in (("01", "MNI152NLin2009aSym", "tissue"), ("02", "myatlas", "myatlas")):
        for key in ("labels", "metrics", "warped_labels"):
            path = tmp_path / subject_files(subject, space, atlas)[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    (tmp_path / "sub-bad_id").mkdir()
    (tmp_path / "sub-03").mkdir()  # a subject without files
    found = find_all(tmp_path, "labels")
    assert list(found) == ["01", "02"]
    assert found["01"].name == "sub-01_atlas-tissue_dseg.nii.gz"  # not the atlas-grid dseg with space-
    assert find_subject_file(tmp_path, "03", "labels") is None
    assert sibling(found["02"], "metrics") == tmp_path / "sub-02/anat/sub-02_atlas-myatlas_metrics.tsv"
    with pytest.raises(UniregError, match="not a file of the results layout"):
        sibling(tmp_path / "labels.nii.gz", "metrics")
