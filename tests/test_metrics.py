"""Per-label metrics (Dice, HD95, MSD, volumes, empty labels), the metrics CLI, and regenerating
every subject's table of a results folder."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from unireg.cli import main
from unireg.fields import integrate, warp
from unireg.io import Image, save_image, write_label_table, write_text_atomic
from unireg.layout import subject_files
from unireg.metrics import dice_per_label, find_reference, regenerate_metrics, subject_metrics, surface_distances


def _cubes(shape, side, shift, axis):
    a = np.zeros(shape, bool)
    a[10 : 10 + side, 10 : 10 + side, 10 : 10 + side] = True
    return a, np.roll(a, shift, axis=axis)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 0.9, 3.0), (2.0, 1.0, 0.5)])
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 3])
def test_offset_cubes_have_exact_dice_and_hd95(spacing, axis, shift):
    side = 12
    ref, pred = _cubes((40, 40, 40), side, shift, axis)
    ref_img = Image(ref.astype(np.int32), np.diag([*spacing, 1.0]), is_label=True)
    pred_img = Image(pred.astype(np.int32) * 1, np.diag([*spacing, 1.0]), is_label=True)
    row = subject_metrics(pred_img, ref_img, {1: "cube"}, "s1")[0]
    assert row["dice"] == pytest.approx((side - shift) / side, abs=1e-12)
    # the far faces (1/6 of the surface, more than 5 %) sit exactly `shift` voxels apart
    assert row["hd95_mm"] == pytest.approx(shift * spacing[axis], abs=1e-6)
    volume = side**3 * np.prod(spacing) / 1000.0
    assert row["volume_reference_ml"] == pytest.approx(volume) and row["volume_propagated_ml"] == pytest.approx(volume)
    assert 0 < row["msd_mm"] < row["hd95_mm"] and row["reason"] == ""


def test_empty_labels_are_nan_with_a_reason():
    ref = np.zeros((10, 10, 10), np.int32)
    pred = np.zeros((10, 10, 10), np.int32)
    ref[2:5, 2:5, 2:5] = 1  # 1: only in the reference
    pred[6:9, 6:9, 6:9] = 2  # 2: only in the prediction
    ref[0:2, 0:2, 0:2] = pred[0:2, 0:2, 0:2] = 4  # 4: in both, identical
    table = {1: "a", 2: "b", 3: "c", 4: "d"}  # 3: in neither
    rows = {
        r["label"]: r
        for r in subject_metrics(
            Image(pred, np.eye(4), is_label=True), Image(ref, np.eye(4), is_label=True), table, "s1"
        )
    }
    assert rows[1]["reason"] == "empty in propagated labels"
    assert rows[2]["reason"] == "empty in reference"
    assert rows[3]["reason"] == "empty in both"
    for label in (1, 2, 3):
        assert np.isnan(rows[label]["dice"]) and np.isnan(rows[label]["hd95_mm"]) and np.isnan(rows[label]["msd_mm"])
    assert rows[4]["dice"] == 1.0 and rows[4]["hd95_mm"] == 0.0 and rows[4]["reason"] == ""
    no_ref = subject_metrics(Image(pred, np.eye(4), is_label=True), None, table, "s1")
    assert all(r["reason"] == "no reference labels" and np.isnan(r["dice"]) for r in no_ref)
    assert no_ref[1]["volume_propagated_ml"] == pytest.approx(27 / 1000)


def _scipy_surface_distances(ref: np.ndarray, pred: np.ndarray, spacing) -> tuple[float, float]:
    """An independent implementation: boundary voxels and Euclidean distance transforms."""

    def boundary(mask):
        return mask & ~ndimage.binary_erosion(mask)

    ref_b, pred_b = boundary(ref), boundary(pred)
    to_ref = ndimage.distance_transform_edt(~ref_b, sampling=spacing)[pred_b]
    to_pred = ndimage.distance_transform_edt(~pred_b, sampling=spacing)[ref_b]
    hd95 = max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))
    msd = (to_ref.sum() + to_pred.sum()) / (to_ref.size + to_pred.size)
    return hd95, msd


def test_hd95_and_msd_agree_with_scipy_on_real_masks(default_atlas):
    """MNI GM/WM labels against a copy deformed by a smooth diffeomorphism, anisotropic grid."""
    g = torch.Generator().manual_seed(0)
    shape = default_atlas.grid.shape
    velocity = torch.nn.functional.interpolate(
        torch.randn(1, 3, *(s // 16 for s in shape), generator=g) * 3, size=shape, mode="trilinear", align_corners=True
    )
    with torch.no_grad():
        moved = (
            warp(torch.from_numpy(default_atlas.labels.data)[None, None].float(), integrate(velocity, 7), label=True)[
                0, 0
            ]
            .long()
            .numpy()
        )
    spacing = (2.0, 2.0, 3.0)  # pretend anisotropic voxels: both implementations get the same
    for label in (2, 3):
        ref, pred = default_atlas.labels.data == label, moved == label
        ours = surface_distances(ref, pred, spacing)
        theirs = _scipy_surface_distances(ref, pred, spacing)
        assert ours[0] == pytest.approx(theirs[0], rel=0.01), ("hd95", ours, theirs)
        assert ours[1] == pytest.approx(theirs[1], rel=0.01), ("msd", ours, theirs)
        assert ours[0] > 2.0  # a real deformation


def test_dice_per_label_matches_definition():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (20, 20, 20)), rng.integers(0, 4, (20, 20, 20))
    for label, value in dice_per_label(a, b).items():
        assert value == pytest.approx(
            2 * ((a == label) & (b == label)).sum() / ((a == label).sum() + (b == label).sum())
        )


def test_metrics_cli_finds_reference_through_manifest(tmp_path, capsys):
    labels = np.zeros((12, 12, 12), np.int16)
    labels[2:8, 2:8, 2:8] = 1
    save_image(Image(labels, np.eye(4), is_label=True), tmp_path / "labels.nii.gz")
    save_image(Image(np.roll(labels, 1, 0), np.eye(4), is_label=True), tmp_path / "ref.nii.gz")
    (tmp_path / "table.tsv").write_text("index\tname\n1\tbox\n")
    (tmp_path / "manifest.tsv").write_text(f"subject\treference\nab1\t{tmp_path / 'ref.nii.gz'}\n")
    assert find_reference("ab1", tmp_path / "manifest.tsv") == str(tmp_path / "ref.nii.gz")
    assert (
        main(
            [
                "metrics",
                "--labels",
                str(tmp_path / "labels.nii.gz"),
                "--manifest",
                str(tmp_path / "manifest.tsv"),
                "--table",
                str(tmp_path / "table.tsv"),
                "--subject",
                "ab1",
                "--out",
                str(tmp_path / "m.tsv"),
            ]
        )
        == 0
    )
    header, row = (tmp_path / "m.tsv").read_text().splitlines()
    values = dict(zip(header.split("\t"), row.split("\t")))
    assert float(values["dice"]) == pytest.approx(5 / 6) and float(values["hd95_mm"]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- regeneration


def _box(shift: int = 0) -> Image:
    """Label 1: six planes of a 12^3 grid, moved by ``shift`` planes along the first axis."""
    labels = np.zeros((12, 12, 12), np.int16)
    labels[2 + shift : 8 + shift, 2:8, 2:8] = 1
    return Image(labels, np.eye(4), is_label=True)


def _dice_and_folding(path) -> tuple[float, float]:
    with open(path) as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    return float(row["dice"]), float(row["folding_percent"])


def test_regenerate_metrics_with_new_references_leaves_registration_alone(tmp_path, capsys):
    """Every subject's table from its propagated labels: references from the manifest, then from a
    new reference folder that overrides it; registration records only read; a broken subject fails alone."""
    results, new_refs = tmp_path / "results", tmp_path / "new_refs"
    write_label_table(tmp_path / "table.tsv", {1: "box"})
    files = {
        subject: {key: results / name for key, name in subject_files(subject, "MNI152NLin2009aSym", "tissue").items()}
        for subject in ("a1", "b2", "c3")
    }
    manifest = ["subject\treference"]
    for subject, folding in (("a1", 0.0), ("b2", 0.8)):
        save_image(_box(), files[subject]["labels"])
        save_image(_box(shift=1), tmp_path / f"{subject}_reference.nii.gz")  # 5 of 6 planes overlap
        manifest.append(f"{subject}\t{tmp_path / f'{subject}_reference.nii.gz'}")
        save_image(_box(shift=3), new_refs / f"sub-{subject}_labels.nii.gz")  # 3 of 6 planes overlap
        write_text_atomic(
            files[subject]["displacement_json"],
            json.dumps({"jacobian": {"folding_percent": folding, "log_jacobian_std": 0.1}}),
        )
    (tmp_path / "manifest.tsv").write_text("\n".join(manifest) + "\n")
    assert regenerate_metrics(results, tmp_path / "table.tsv", manifest_path=tmp_path / "manifest.tsv") == []
    assert _dice_and_folding(files["a1"]["metrics"]) == (pytest.approx(10 / 12, abs=1e-5), 0.0)

    sentinel = files["a1"]["displacement_json"]
    os.utime(sentinel, (1_000_000_000, 1_000_000_000))
    files["c3"]["labels"].parent.mkdir(parents=True)
    files["c3"]["labels"].write_bytes(b"not a nifti")
    errors = regenerate_metrics(results, tmp_path / "table.tsv", new_refs, tmp_path / "manifest.tsv")
    assert len(errors) == 1 and errors[0].startswith("c3: ") and "\n" not in errors[0]
    assert capsys.readouterr().err == f"unireg: {errors[0]}\n"
    assert _dice_and_folding(files["a1"]["metrics"]) == (pytest.approx(0.5, abs=1e-5), 0.0)
    assert _dice_and_folding(files["b2"]["metrics"]) == (pytest.approx(0.5, abs=1e-5), 0.8)
    assert sentinel.stat().st_mtime == 1_000_000_000
    assert not files["c3"]["metrics"].exists()
