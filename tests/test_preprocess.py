import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import dice, shared_file

from unireg.affine import read_affine_txt, read_itk_affine
from unireg.cli import main
from unireg.io import load_image
from unireg.preprocess import OUTPUT_FILES


def test_cli_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "unireg", "--help"], capture_output=True, text=True, check=True)
    for verb in ("preprocess", "atlas"):
        assert verb in out.stdout


def test_real_ixi_head_preprocesses_onto_mni_atlas(default_atlas, tmp_path, capsys):
    """A real, not skull-stripped IXI T1 head (2 mm, PSR on disk): deepbet + MI affine to MNI."""
    head = shared_file("ixi_t1_dlmuse", "t1", "IXI012-HH-1211_T1.nii.gz")
    rc = main(
        [
            "preprocess",
            "--image",
            str(head),
            "--atlas",
            default_atlas.path,
            "--out",
            str(tmp_path / "pp"),
            "--subject",
            "IXI012",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    files = {k: tmp_path / "pp" / v for k, v in OUTPUT_FILES.items()}
    assert all(p.is_file() for p in files.values())
    image = load_image(files["image"])
    mask = load_image(files["mask"], label=True)
    assert image.shape == default_atlas.grid.shape
    np.testing.assert_allclose(image.affine, default_atlas.grid.affine)
    assert 0.0 <= image.data.min() and image.data.max() <= 1.0
    # the brain lands on the atlas brain
    assert dice(mask.data, default_atlas.mask.data) > 0.9
    info = json.loads(files["info"].read_text())
    assert info["input"]["orientation"] == "PSR" and info["steps"]["brain_extraction"]["method"] == "deepbet"
    assert 900 < info["steps"]["brain_extraction"]["mask_volume_ml"] < 2000
    assert info["qc"]["brain_mask_dice_with_atlas"] == pytest.approx(dice(mask.data, default_atlas.mask.data), abs=1e-3)
    np.testing.assert_allclose(read_itk_affine(files["affine_itk"]), read_affine_txt(files["affine"]), atol=1e-6)
    # the matrix maps atlas world to subject world: the atlas brain centre lands inside the subject's head
    centre = (
        read_affine_txt(files["affine"])
        @ np.r_[
            np.argwhere(default_atlas.mask.data).mean(0) @ default_atlas.grid.affine[:3, :3].T
            + default_atlas.grid.affine[:3, 3],
            1,
        ]
    )
    raw = nib.load(str(head))
    ijk = np.round(np.linalg.inv(raw.affine) @ centre)[:3].astype(int)
    assert raw.get_fdata()[tuple(ijk)] > np.percentile(raw.get_fdata(), 50)


def test_skull_stripped_t2_without_brain_extraction(default_atlas, tmp_path):
    t2 = shared_file("ixi002_t1_t2", "hd_bet_IXI002-Guys-0828-T2.nii.gz")
    rc = main(
        [
            "preprocess",
            "--image",
            str(t2),
            "--atlas",
            default_atlas.path,
            "--out",
            str(tmp_path / "t2"),
            "--no-brain-extraction",
        ]
    )
    assert rc == 0
    mask = load_image(tmp_path / "t2" / OUTPUT_FILES["mask"], label=True)
    assert dice(mask.data, default_atlas.mask.data) > 0.85


def test_nan_input_gives_one_line_error_and_no_outputs(default_atlas, tmp_path):
    data = np.random.default_rng(0).uniform(0, 1, (32, 32, 32)).astype(np.float32)
    data[5, 5, 5] = np.nan
    path = tmp_path / "sub-bad_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unireg",
            "preprocess",
            "--image",
            str(path),
            "--atlas",
            default_atlas.path,
            "--out",
            str(tmp_path / "out"),
            "--subject",
            "bad",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"unireg: bad: {path}: 1 NaN/Inf voxels (0.0031 %); fix the image or set nonfinite: zero to mask them"
    ]
    assert not (tmp_path / "out").exists()


def test_empty_image_gives_clear_error(default_atlas, tmp_path, capsys):
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), path)
    assert (
        main(
            [
                "preprocess",
                "--image",
                str(path),
                "--atlas",
                default_atlas.path,
                "--out",
                str(tmp_path / "o"),
                "--no-brain-extraction",
                "--subject",
                "s1",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith(f"unireg: s1: {path}: image is empty") and err.count("\n") == 1


def test_partial_field_of_view_is_refused_before_any_work(default_atlas, tmp_path, capsys):
    """nibabel's real low-resolution T1 covers only the centre of a brain (33 x 41 x 25 voxels of
    2 mm): a one-line error naming the field of view, and no output folder."""
    from pathlib import Path

    anatomical = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    rc = main(
        [
            "preprocess",
            "--image",
            str(anatomical),
            "--atlas",
            default_atlas.path,
            "--out",
            str(tmp_path / "pp"),
            "--subject",
            "real01",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(
        f"unireg: real01: {anatomical}: partial field of view: the image covers 66 x 82 x 50 mm "
        "(R x A x S), less than 60% of the atlas brain's 148 x 182 x 156 mm"
    )
    assert not (tmp_path / "pp").exists()
