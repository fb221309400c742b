"""Cohort aggregation (dask), QC flags and the self-contained HTML report (on metric tables written
by :func:`unireg.metrics.regenerate_metrics`)."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unireg.io import Image, save_image, write_label_table
from unireg.layout import subject_files
from unireg.metrics import METRIC_COLUMNS, regenerate_metrics
from unireg.report import aggregate, failed_subjects, qc_flags, write_aggregates, write_report

N_SUBJECTS, N_LABELS = 200, 10
OUTLIER, FOLDER, FAILED = "s007", "s011", "s9"


def _at(results: Path, subject: str, key: str) -> Path:
    """File ``key`` of the results layout (unireg.layout) for the default atlas; its folder made."""
    path = results / subject_files(subject, "MNI152NLin2009aSym", "tissue")[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_metrics(results: Path, subject: str, rows: list[dict], columns=METRIC_COLUMNS) -> None:
    pd.DataFrame(rows).reindex(columns=columns).to_csv(
        _at(results, subject, "metrics"), sep="\t", index=False, float_format="%.6g"
    )


def _row(subject, label, dice, hd95, folding=0.1, reason=""):
    return {
        "subject": subject,
        "label": label,
        "name": f"region_{label}",
        "dice": dice,
        "hd95_mm": hd95,
        "msd_mm": hd95 / 3,
        "volume_reference_ml": 1.0,
        "volume_propagated_ml": 1.1,
        "reason": reason,
        "folding_percent": folding,
        "log_jacobian_std": 0.2,
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """200 subjects x 10 labels with seeded Dice/HD95; a few NaN Dice (empty labels), one low
    outlier, one folding subject, one subject in an old table format (no hd95/msd columns), and
    one failed subject (a log line, no metrics)."""
    root = tmp_path_factory.mktemp("cohort")
    results, logs = root / "results", root / "work" / "logs"
    rng = np.random.default_rng(42)
    for s in range(N_SUBJECTS):
        subject = f"s{s:03d}"
        rows = []
        for label in range(1, N_LABELS + 1):
            dice = 0.2 if subject == OUTLIER else float(np.round(rng.uniform(0.7, 0.9), 6))
            hd95 = float(np.round(rng.uniform(1.0, 6.0), 6))
            row = _row(subject, label, dice, hd95, folding=1.2 if subject == FOLDER else 0.1)
            if (s + label) % 37 == 0:  # an empty label: NaN with a reason
                row.update(dice=float("nan"), hd95_mm=float("nan"), reason="empty in reference")
            rows.append(row)
        columns = [c for c in METRIC_COLUMNS if c not in ("hd95_mm", "msd_mm")] if s == 5 else METRIC_COLUMNS
        _write_metrics(results, subject, rows, columns)
    (logs / "register").mkdir(parents=True)
    (logs / "atlas").mkdir()  # a cohort-level rule's log names no subject
    (logs / "atlas" / "atlas.log").write_text("unireg: atlas folder not found\n")
    (logs / "register" / f"{FAILED}.log").write_text(
        "Traceback (most recent call last):\n  File x\nunireg: s9: earlier warning\n"
        f"some output\nunireg: s9: {root}/results/sub-s9/sub-s9_T1w.nii.gz: cannot read as NIfTI\n"
    )
    return results, logs


def _concatenated(results: Path) -> pd.DataFrame:
    files = sorted(results.glob("sub-*/anat/sub-*_metrics.tsv"))
    return pd.concat([pd.read_csv(f, sep="\t", dtype={"subject": str}) for f in files], ignore_index=True)


def test_aggregate_matches_pandas_on_the_whole_table(cohort):
    results, _ = cohort
    per_label, per_subject = aggregate(results)
    table = _concatenated(results)
    assert len(per_label) == N_LABELS and len(per_subject) == N_SUBJECTS
    for label in (1, 4, 10):
        dice = table.loc[table["label"] == label, "dice"].dropna()
        hd95 = table.loc[table["label"] == label, "hd95_mm"].dropna()
        row = per_label.set_index("label").loc[label]
        assert row["name"] == f"region_{label}"
        assert row["n"] == len(dice) < N_SUBJECTS  # NaN Dice are not counted
        assert row["dice_mean"] == pytest.approx(dice.mean(), rel=1e-12)
        assert row["dice_sd"] == pytest.approx(dice.std(), rel=1e-12)
        assert row["dice_median"] == pytest.approx(dice.median(), rel=1e-12)
        assert row["dice_iqr"] == pytest.approx(dice.quantile(0.75) - dice.quantile(0.25), rel=1e-12)
        assert row["dice_min"] == pytest.approx(0.2)  # the outlier subject
        assert row["hd95_n"] == len(hd95) == row["n"] - 1  # s005 has no HD95 column
        assert row["hd95_mm_q1"] == pytest.approx(hd95.quantile(0.25), rel=1e-12)
        assert row["hd95_mm_median"] == pytest.approx(hd95.median(), rel=1e-12)
    subject = per_subject.set_index("subject")
    rows = table[table["subject"] == "s036"]
    assert subject.loc["s036", "mean_dice"] == pytest.approx(rows["dice"].mean(), rel=1e-12)
    assert subject.loc["s036", "median_hd95_mm"] == pytest.approx(rows["hd95_mm"].median(), rel=1e-12)
    assert subject.loc["s036", "n_nan_dice"] == rows["dice"].isna().sum() == 1
    assert subject.loc[FOLDER, "folding_percent"] == pytest.approx(1.2)
    assert np.isnan(subject.loc["s005", "median_hd95_mm"])


def test_aggregates_written_as_equal_tsv_and_parquet(cohort, tmp_path):
    results, _ = cohort
    per_label, per_subject = write_aggregates(results, tmp_path)
    for stem, expected in (("cohort_metrics_per_label", per_label), ("cohort_metrics_per_subject", per_subject)):
        tsv = pd.read_csv(tmp_path / f"{stem}.tsv", sep="\t", dtype={"subject": str, "name": str})
        parquet = pd.read_parquet(tmp_path / f"{stem}.parquet")
        assert list(tsv.columns) == list(parquet.columns) == list(expected.columns)
        pd.testing.assert_frame_equal(tsv, parquet, check_dtype=False, rtol=1e-5)
        pd.testing.assert_frame_equal(parquet, expected, check_dtype=False)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_qc_flags_outlier_folding_and_failed_subjects(cohort):
    results, logs = cohort
    _, per_subject = aggregate(results)
    flags = qc_flags(per_subject).set_index("subject")
    assert set(flags.index) == {OUTLIER, FOLDER}
    assert "outlier" in flags.loc[OUTLIER, "reasons"] and "< 0.5" in flags.loc[OUTLIER, "reasons"]
    assert "folding 1.2 %" in flags.loc[FOLDER, "reasons"]
    assert qc_flags(per_subject, min_dice=0.8).shape[0] > 2  # the absolute threshold alone
    failed = failed_subjects(results, logs)
    assert list(failed["subject"]) == [FAILED]
    assert failed["error"][0].startswith("unireg: s9: ") and failed["error"][0].endswith("cannot read as NIfTI")
    assert failed_subjects(results).equals(failed)  # default logs folder: results/../work/logs
    assert list(failed_subjects(results, logs.parent / "no-logs")["subject"]) == []


# --------------------------------------------------------------------------- tiny NIfTI subjects

TABLE = {1: "left_blob", 2: "right_blob"}


def _blobs(shape=(20, 20, 20), shift=0) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[4 + shift : 10 + shift, 6:14, 6:14] = 1
    labels[11:17, 6:14, 6:14] = 2
    return labels


def _affine(flip: bool) -> np.ndarray:
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    if flip:  # an LPS-stored subject: the report must still show RAS slices
        affine[0, 0] = affine[1, 1] = -1.5
        affine[:3, 3] = [28.5, 28.5, 0]
    return affine


@pytest.fixture
def tiny_results(tmp_path):
    """Two subjects with a T1w image, propagated labels, a reference (via manifest), a
    registration.json sentinel and metrics; plus a failed subject's log."""
    results, refs = tmp_path / "results", tmp_path / "refs"
    refs.mkdir()
    write_label_table(tmp_path / "table.tsv", TABLE)
    manifest = ["subject\treference"]
    rng = np.random.default_rng(0)
    for subject, flip in (("a1", False), ("b2", True)):
        affine = _affine(flip)
        labels = _blobs()
        image = (labels * 40.0 + rng.normal(100, 5, labels.shape)).astype(np.float32)
        save_image(Image(image, affine), _at(results, subject, "image"))
        save_image(Image(labels, affine, is_label=True), _at(results, subject, "labels"))
        save_image(Image(_blobs(shift=1), affine, is_label=True), refs / f"sub-{subject}_labels.nii.gz")
        manifest.append(f"{subject}\t{refs / f'sub-{subject}_labels.nii.gz'}")
        _at(results, subject, "displacement_json").write_text(
            json.dumps({"jacobian": {"folding_percent": 0.8 if flip else 0.0, "log_jacobian_std": 0.1}})
        )
    (tmp_path / "manifest.tsv").write_text("\n".join(manifest) + "\n")
    assert regenerate_metrics(results, tmp_path / "table.tsv", manifest_path=tmp_path / "manifest.tsv") == []
    (tmp_path / "work" / "logs" / "metrics").mkdir(parents=True)
    (tmp_path / "work" / "logs" / "metrics" / "c3.log").write_text(
        f"unireg: c3: {tmp_path}/in/c3.nii.gz: expected a 3-D image, got shape (4, 4); extract one volume first\n"
    )
    return tmp_path


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables, self.links, self.open = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "table":
            self.tables.append(attrs.get("id"))
        if tag in ("script", "link", "a", "iframe"):
            self.links.append(tag)
        if tag not in ("img", "meta", "br", "hr", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()


def _decoded_png(uri: str) -> np.ndarray:
    import base64
    import io

    from matplotlib.image import imread

    return imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")


def test_an_atlas_set_subject_gets_a_fusion_confidence_picture(tiny_results):
    """A subject with a fusion confidence map (multi-atlas segmentation) gets a second QC picture: the
    confidence over its preprocessed image, red where the atlases disagreed; a subject whose atlases
    all agreed shows no red; a confidence map on another grid is a note, not a crash."""
    results = tiny_results / "results"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    labels = _blobs()
    for subject, low in (("a1", 0.2), ("b2", 1.0)):
        confidence = np.ones(labels.shape, np.float32)
        confidence[4:10, 6:14, 6:14] = low  # label 1: the atlases disagreed (a1) or not (b2)
        save_image(Image((labels * 50.0 + 20).astype(np.float32), affine), _at(results, subject, "preproc"))
        save_image(Image(labels, affine, is_label=True), _at(results, subject, "warped_labels"))
        save_image(Image(confidence, affine), _at(results, subject, "confidence"))
    write_report(results, results / "report.html", results / "cohort_metrics.tsv")
    text = (results / "report.html").read_text()
    page = _page(text)
    assert len(page.images) == 3 + 2 * 2  # plots; per subject its labels and its fusion confidence
    assert "sub-a1 fusion confidence" in text and "where the atlases disagree" in text
    pictures = dict(re.findall(r'<img src="([^"]+)" alt="([^"]+)"', text))
    by_caption = {caption: _decoded_png(uri) for uri, caption in pictures.items()}

    def red(rgb):  # RdYlGn at 0.2 is orange-red (0.96, 0.43, 0.26); in the slices, left of the colour bar
        rgb = rgb[:, : int(rgb.shape[1] * 0.85)]
        return int(((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.55) & (rgb[..., 2] < 0.4)).sum())

    assert red(by_caption["sub-a1 fusion confidence"]) > 100
    assert red(by_caption["sub-b2 fusion confidence"]) == 0
    save_image(Image(np.ones((4, 4, 4), np.float32), affine), _at(results, "b2", "confidence"))
    write_report(results, results / "report.html", results / "cohort_metrics.tsv")
    text = (results / "report.html").read_text()
    assert "sub-b2: no fusion-confidence picture (preprocessed image and fusion confidence are not on one grid)" in text
    assert "sub-b2 QC" in text and "sub-b2 fusion confidence" not in text


def test_report_is_self_contained_with_plots_qc_table_and_subject_images(tiny_results):
    results = tiny_results / "results"
    out = write_report(results, results / "report.html", results / "cohort_metrics.tsv")
    text = (results / "report.html").read_text()
    page = _page(text)
    text = _without_images(text)
    assert {"qc-flags", "qc-failed", "per-label", "per-subject"} <= set(page.tables)
    pngs = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(pngs) == len(page.images) == 3 + 2  # Dice, HD95 and volume plots, one QC image per subject
    assert "sub-a1 QC" in text and "sub-b2 QC" in text
    assert "http://" not in text and "https://" not in text
    assert str(tiny_results) not in text and "/tmp" not in text
    assert "c3" in list(out["failed"]["subject"]) and "extract one volume first" in text
    assert list(out["qc"]["subject"]) == ["b2"]
    assert text.count("folding 0.8 % &gt; 0.5 %") == 2  # flagged subjects + registration QC
    assert list(out["registration"]["subject"]) == ["b2", "a1"]  # flagged first
    assert "NaN" not in text and "No subject has reference labels" not in text
    assert out["series"] is None and "Input series" not in text  # no manifest.tsv in the results
    summary = pd.read_csv(results / "cohort_metrics.tsv", sep="\t")
    assert list(summary["name"]) == ["left_blob", "right_blob"]
    # 6 x 8 x 8 voxels of 1.5 x 1.5 x 2 mm in both subjects
    assert summary["volume_ml_median"].tolist() == pytest.approx([384 * 4.5 / 1000] * 2)
    # the shift of one voxel plane in label 1 only: 5/6 overlap -> Dice 2*5/(6+6)
    assert summary.loc[0, "dice_mean"] == pytest.approx(10 / 12, abs=1e-5)
    assert summary.loc[1, "dice_mean"] == pytest.approx(1.0)
    for name in ("cohort_metrics_per_label", "cohort_metrics_per_subject"):
        assert (results / f"{name}.tsv").is_file() and (results / f"{name}.parquet").is_file()


def test_report_cli_keeps_working(tiny_results):
    from unireg.cli import main

    results = tiny_results / "results"
    assert main(["report", str(results)]) == 0
    assert (results / "report.html").is_file() and (results / "cohort_metrics.tsv").is_file()


# --------------------------------------------------------------------------- cohorts without / with references

BLOCK, BLOCKS = 6, 5  # label maps: a 5 x 5 x 5 grid of 6^3-voxel blocks, one label each
SPACING = (1.5, 1.5, 1.5)
VOXEL_ML = 1.5**3 / 1000
BIG_LABEL, MERGED_LABEL, ODD_SUBJECT = 7, 8, "s03"  # in sub-s03 label 8 is taken over by label 7


def _block_labels(n_labels: int, index: int, merge: bool = False) -> np.ndarray:
    """Labels 1..n_labels as 6^3 blocks; in subject ``index`` each misses 0, 2, ..., 14 voxels (a
    label's 8 subjects take each value once: the cohort's spread, median 7, MAD 4); label
    MERGED_LABEL relabelled BIG_LABEL when ``merge`` (a doubled and an empty label)."""
    size = BLOCK * BLOCKS
    labels = np.zeros((size, size, size), np.int32)
    for label in range(1, n_labels + 1):
        i, j, k = np.unravel_index(label - 1, (BLOCKS,) * 3)
        block = labels[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK, k * BLOCK : (k + 1) * BLOCK]
        block[...] = label
        missing = 2 * ((3 * index + label) % 8)  # the first voxels of the block's first plane, row by row
        block[0, : missing // BLOCK, :] = 0
        block[0, missing // BLOCK, : missing % BLOCK] = 0
    if merge:
        labels[labels == MERGED_LABEL] = BIG_LABEL
    return labels


def _registration_info(similarity=(0.40, 0.75), mask_dice=(0.96, 0.97), folding=0.0, log_jac=0.45) -> dict:
    return {
        "qc": {
            "similarity_before": similarity[0],
            "similarity_after": similarity[1],
            "brain_mask_dice_before": mask_dice[0],
            "brain_mask_dice_after": mask_dice[1],
        },
        "jacobian": {"folding_percent": folding, "log_jacobian_std": log_jac},
    }


#: registration.json of the subjects that should be flagged (the others get the default)
ODD_REGISTRATIONS = {
    "s01": _registration_info(similarity=(0.41, 0.38)),  # did not improve
    "s05": _registration_info(mask_dice=(0.80, 0.86)),  # brain masks disagree
    "s06": _registration_info(folding=0.9, log_jac=0.95),
}  # folds


def make_cohort(
    root: Path, n_subjects: int = 8, n_labels: int = 120, references: bool = False, manifest: bool = True
) -> Path:
    """A results tree of ``n_subjects`` real NIfTI subjects (T1w, propagated labels of
    :func:`_block_labels`), registration.json files, metrics measured by
    :func:`regenerate_metrics` (against references shifted by one voxel when ``references``),
    a failed subject's log and, with ``manifest``, a manifest.tsv with series selection."""
    results, refs = root / "results", root / "refs"
    refs.mkdir(parents=True)
    names = {
        label: f"{'Left' if label % 2 else 'Right'}-region-{label:03d}-{'gyrus' if label % 3 else 'nucleus'}"
        for label in range(1, n_labels + 1)
    }
    write_label_table(root / "table.tsv", names)
    affine = np.diag([*SPACING, 1.0])
    rng = np.random.default_rng(3)
    rows = ["subject\tseries_description\tselected\tselection_reason\tsource\tn_slices"]
    for s in range(n_subjects):
        subject = f"s{s:02d}"
        labels = _block_labels(n_labels, s, merge=subject == ODD_SUBJECT)
        image = ((labels % 7) * 20.0 + rng.normal(100, 5, labels.shape)).astype(np.float32)
        save_image(Image(image, affine), _at(results, subject, "image"))
        save_image(Image(labels, affine, is_label=True), _at(results, subject, "labels"))
        if references:
            save_image(Image(np.roll(labels, 1, axis=0), affine, is_label=True), refs / f"sub-{subject}_labels.nii.gz")
        _at(results, subject, "displacement_json").write_text(
            json.dumps(ODD_REGISTRATIONS.get(subject, _registration_info()))
        )
        rows += [
            f"{subject}\tt1_mprage_sag_p2_iso\t1\t3-D T1-weighted (MPRAGE), 176 slices\t{root}/dicom/{subject}/a\t176",
            f"{subject}\tlocalizer\t0\tnot a candidate: a localiser\t{root}/dicom/{subject}/b\t3",
        ]
    if manifest:
        (results / "manifest.tsv").write_text("\n".join(rows) + "\n")
    assert regenerate_metrics(results, root / "table.tsv", refs if references else None) == []
    (root / "work" / "logs" / "convert").mkdir(parents=True)
    (root / "work" / "logs" / "convert" / "s99.log").write_text(
        f"unireg: s99: {root}/dicom/s99: no DICOM series found\n"
    )
    return results


@pytest.fixture(scope="module")
def no_reference_cohort(tmp_path_factory):
    """8 subjects x 120 labels, no reference labels (a user's own atlas on a new cohort)."""
    results = make_cohort(tmp_path_factory.mktemp("noref"))
    return results, write_report(results, results / "report.html", results / "cohort_metrics.tsv")


@pytest.fixture(scope="module")
def reference_cohort(tmp_path_factory):
    """8 subjects x 12 labels with reference labels."""
    results = make_cohort(tmp_path_factory.mktemp("ref"), n_labels=12, references=True)
    return results, write_report(results, results / "report.html", results / "cohort_metrics.tsv")


def _page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.open == [] and page.links == []
    return page


def _without_images(text: str) -> str:
    return re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', text)


def test_report_without_references_shows_volumes_registration_qc_and_series_not_dice(no_reference_cohort):
    results, out = no_reference_cohort
    page = _page((results / "report.html").read_text())
    text = _without_images((results / "report.html").read_text())
    # no Dice/HD95 plot or table, one line instead, and no NaN anywhere
    assert "per-label" not in page.tables and "No subject has reference labels" in text and "NaN" not in text
    assert "Dice per label" not in text and "HD95 (mm) per label" not in text
    # 120 labels: volume plots of at most 40 labels (3), one QC image per subject (8)
    assert len(page.images) == 3 + 8 and text.count("Propagated volume per label") == 3
    assert "2 more figures (80 more labels)" in text
    assert {
        "qc-failed",
        "qc-flags",
        "volume-outliers-by-subject",
        "registration-qc",
        "input-series",
        "label-volumes",
        "per-subject",
    } <= set(page.tables)
    # attention first: failed, flagged and outliers come before the registration table and the volumes
    assert text.index("Needs attention") < text.index("Registration QC") < text.index("Label volumes")
    # volumes: medians per label from the subjects' tables
    table = _concatenated(results)
    volumes = out["per_label"].set_index("label")
    for label in (1, 60, 120):
        ml = table.loc[table["label"] == label, "volume_propagated_ml"]
        assert volumes.loc[label, "volume_n"] == 8
        assert volumes.loc[label, "volume_ml_median"] == pytest.approx(ml.median(), rel=1e-6)
        assert volumes.loc[label, "volume_ml_iqr"] == pytest.approx(ml.quantile(0.75) - ml.quantile(0.25), rel=1e-6)
    # the doubled and the emptied label of one subject, and nothing else, are outliers
    outliers = out["volume_outliers"]
    found = sorted(zip(outliers["subject"], outliers["label"]))
    assert found == [(ODD_SUBJECT, BIG_LABEL), (ODD_SUBJECT, MERGED_LABEL)]
    big = table.loc[table["label"] == BIG_LABEL, "volume_propagated_ml"].to_numpy()
    z = outliers.set_index("label").loc[BIG_LABEL, "robust_z"]
    assert np.median(np.abs(big - np.median(big))) == pytest.approx(4 * VOXEL_ML)
    assert z == pytest.approx(0.6745 * (big.max() - np.median(big)) / (4 * VOXEL_ML), rel=1e-4)
    assert outliers.set_index("label").loc[MERGED_LABEL, "volume_ml"] == 0.0
    assert "Left-region-007-gyrus (z +" in text
    # registration QC: the three odd registrations flagged, first, with their reasons
    registration = out["registration"].set_index("subject")
    assert list(out["registration"]["subject"][:3]) == ["s01", "s05", "s06"]
    assert registration.loc["s01", "reasons"] == "similarity not improved (0.410 -> 0.380)"
    assert registration.loc["s05", "reasons"] == (
        "brain-mask Dice before 0.800 < 0.9; brain-mask Dice after 0.860 < 0.9"
    )
    assert registration.loc["s06", "reasons"] == "folding 0.9 % > 0.5 %; std log det(J) 0.950 > 0.7"
    assert list(out["qc"]["subject"]) == ["s01", "s05", "s06"]
    assert list(out["failed"]["subject"]) == ["s99"] and "no DICOM series found" in text
    # the selected series by its description; the manifest's paths never reach the page
    assert list(out["series"]["series_description"]) == ["t1_mprage_sag_p2_iso"] * 8
    assert "3-D T1-weighted (MPRAGE), 176 slices" in text and "localizer" not in text
    assert str(results.parent) not in text and "/tmp" not in text and "dicom/s" not in text
    # the per-subject table leaves out the Dice columns
    assert "mean_dice" not in text.split('id="per-subject"')[1].split("</table>")[0]


def test_report_with_references_shows_dice_and_hd95(reference_cohort):
    results, out = reference_cohort
    page = _page((results / "report.html").read_text())
    text = _without_images((results / "report.html").read_text())
    assert {"per-label", "label-volumes", "registration-qc", "per-subject"} <= set(page.tables)
    assert "No subject has reference labels" not in text
    assert len(page.images) == 3 + 8  # Dice, HD95, volumes; one QC image per subject
    # references are the labels rolled by one voxel along x: 5 of 6 planes overlap
    dice = out["per_label"].set_index("label")["dice_median"]
    assert dice.loc[2] == pytest.approx(5 / 6, abs=0.03)
    # the same doubled and emptied label; a small cohort's chance outliers are explained
    assert "Volume outliers (2 in 1 subjects)" in text and "the MAD itself is uncertain" in text


def test_volume_outliers_need_five_subjects(tmp_path):
    results = make_cohort(tmp_path, n_subjects=4, n_labels=10, manifest=False)
    out = write_report(results, results / "report.html", results / "cohort_metrics.tsv")
    text = (results / "report.html").read_text()
    assert len(out["volume_outliers"]) == 0 and out["series"] is None
    assert (
        "Volume outliers not assessed: the robust z-score needs propagated volumes from at least 5 subjects "
        "(here at most 4)" in text
    )
    assert "Input series" not in text


def test_manifest_without_selection_columns_is_skipped(tmp_path):
    from unireg.report import selected_series

    (tmp_path / "old.tsv").write_text("subject\tseries_description\tsource\na\tT1\t/x/y\n")
    assert selected_series(tmp_path / "old.tsv") is None
    assert selected_series(tmp_path / "absent.tsv") is None
    (tmp_path / "m.tsv").write_text(
        "subject\tseries_description\tselected\tselection_reason\n"
        "a\tT2 tse\t0\tnot T1-weighted\nb\tMPRAGE\t1\tonly candidate\n"
    )
    series = selected_series(tmp_path / "m.tsv")
    assert series.to_dict("records") == [
        {"subject": "a", "series_description": "", "selection_reason": "not T1-weighted", "n_series": 1},
        {"subject": "b", "series_description": "MPRAGE", "selection_reason": "only candidate", "n_series": 1},
    ]


def test_robust_z_is_the_modified_z_score():
    from unireg.report import robust_z

    values = np.array([10.0, 11.0, 12.0, 13.0, 40.0, np.nan])
    # median 12, absolute deviations 2, 1, 0, 1, 28: MAD 1
    np.testing.assert_allclose(robust_z(values)[:5], 0.6745 * np.array([-2, -1, 0, 1, 28]))
    assert np.isnan(robust_z(values)[5])
    # MAD 0 (most values equal): mean absolute deviation instead
    same = np.array([5.0, 5.0, 5.0, 5.0, 9.0])
    np.testing.assert_allclose(robust_z(same), (same - 5.0) / (1.253314 * 0.8))
    assert robust_z(np.full(6, 2.0)).tolist() == [0.0] * 6


def test_registration_qc_without_qc_entry_and_unreadable_json(tiny_results):
    from unireg.report import read_registration_qc, registration_flags

    results = tiny_results / "results"
    _at(results, "b2", "displacement_json").write_text("{not json")
    frame = registration_flags(read_registration_qc(results))
    assert list(frame["subject"]) == ["b2", "a1"]
    assert frame["reasons"].tolist() == ["registration record unreadable (JSONDecodeError)", ""]
    assert np.isnan(frame.loc[1, "similarity_after"]) and frame.loc[1, "folding_percent"] == 0.0


# --------------------------------------------------------------------------- the page in a real browser

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1400, 3000)  # width, height in CSS pixels (device scale 1)


def screenshot(html_path: Path, png: Path, profile: Path, window: tuple[int, int] = WINDOW) -> None:
    """Render ``html_path`` with headless Chromium (offline: no network features) into ``png``."""
    import subprocess

    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={window[0]},{window[1]}",
        html_path.resolve().as_uri(),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is absent (Debian: apt-get install chromium)")
@pytest.mark.parametrize("cohort_fixture", ["no_reference_cohort", "reference_cohort"])
def test_report_renders_in_headless_chromium(cohort_fixture, request, tmp_path):
    """The report as a browser draws it: the right size, not blank, the attention box's red edge
    drawn (the inline CSS applies) and the plots decoded. Set UNIREG_SCREENSHOT_DIR to keep the PNGs."""
    import shutil

    from matplotlib.image import imread

    results, _ = request.getfixturevalue(cohort_fixture)
    png = tmp_path / f"report_{cohort_fixture}.png"
    screenshot(results / "report.html", png, tmp_path / "profile")
    if os.environ.get("UNIREG_SCREENSHOT_DIR"):
        shutil.copy(png, Path(os.environ["UNIREG_SCREENSHOT_DIR"]) / png.name)
    pixels = imread(png)[..., :3]  # floats in [0, 1]
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert pixels.std() > 0.05 and (pixels.min(axis=2) < 0.9).mean() > 0.03  # ink on much of the page
    red_edge = np.abs(pixels - np.array([0xC0, 0x39, 0x2B]) / 255).max(axis=2) < 0.03
    assert red_edge[:800].sum() > 200  # the "Needs attention" box's left border, near the top
    # the box plots' orange median lines: the data-URI PNGs were decoded and drawn
    orange = np.abs(pixels - np.array([0xFF, 0x7F, 0x0E]) / 255).max(axis=2) < 0.15
    assert orange.sum() > 100
