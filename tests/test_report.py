"""Cohort aggregation (dask), QC flags, the self-contained HTML report and metric regeneration."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unireg.io import Image, save_image, write_label_table
from unireg.metrics import METRIC_COLUMNS
from unireg.report import aggregate, failed_subjects, qc_flags, regenerate_metrics, write_aggregates, write_report

N_SUBJECTS, N_LABELS = 200, 10
OUTLIER, FOLDER, FAILED = "s007", "s011", "s9"


def _write_metrics(results: Path, subject: str, rows: list[dict], columns=METRIC_COLUMNS) -> None:
    folder = results / f"sub-{subject}"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).reindex(columns=columns).to_csv(folder / f"sub-{subject}_metrics.tsv", sep="\t",
                                                       index=False, float_format="%.6g")


def _row(subject, label, dice, hd95, folding=0.1, reason=""):
    return {"subject": subject, "label": label, "name": f"region_{label}", "dice": dice, "hd95_mm": hd95,
            "msd_mm": hd95 / 3, "volume_reference_ml": 1.0, "volume_propagated_ml": 1.1, "reason": reason,
            "folding_percent": folding, "log_jacobian_std": 0.2}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """200 subjects x 10 labels with seeded Dice/HD95; a few NaN Dice (empty labels), one low
    outlier, one folding subject, one subject in an old table format (no hd95/msd columns), and
    one failed subject (a log line, no metrics)."""
    root = tmp_path_factory.mktemp("cohort")
    results, logs = root / "results", root / "logs"
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
        f"some output\nunireg: s9: {root}/results/sub-s9/sub-s9_T1w.nii.gz: cannot read as NIfTI\n")
    return results, logs


def _concatenated(results: Path) -> pd.DataFrame:
    files = sorted(results.glob("sub-*/sub-*_metrics.tsv"))
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
    assert failed_subjects(results).equals(failed)  # default logs folder: results/../logs
    assert list(failed_subjects(results, logs.parent / "no-logs")["subject"]) == []


# --------------------------------------------------------------------------- tiny NIfTI subjects

TABLE = {1: "left_blob", 2: "right_blob"}


def _blobs(shape=(20, 20, 20), shift=0) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[4 + shift:10 + shift, 6:14, 6:14] = 1
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
        folder = results / f"sub-{subject}"
        affine = _affine(flip)
        labels = _blobs()
        image = (labels * 40.0 + rng.normal(100, 5, labels.shape)).astype(np.float32)
        save_image(Image(image, affine), folder / "anat" / f"sub-{subject}_T1w.nii.gz")
        save_image(Image(labels, affine, is_label=True), folder / f"sub-{subject}_labels.nii.gz")
        save_image(Image(_blobs(shift=1), affine, is_label=True), refs / f"sub-{subject}_labels.nii.gz")
        manifest.append(f"{subject}\t{refs / f'sub-{subject}_labels.nii.gz'}")
        (folder / "reg").mkdir()
        (folder / "reg" / "registration.json").write_text(
            json.dumps({"jacobian": {"folding_percent": 0.8 if flip else 0.0, "log_jacobian_std": 0.1}}))
    (tmp_path / "manifest.tsv").write_text("\n".join(manifest) + "\n")
    assert regenerate_metrics(results, tmp_path / "table.tsv", manifest_path=tmp_path / "manifest.tsv") == []
    (tmp_path / "logs" / "metrics").mkdir(parents=True)
    (tmp_path / "logs" / "metrics" / "c3.log").write_text(
        f"unireg: c3: {tmp_path}/in/c3.nii.gz: expected a 3-D image, got shape (4, 4); extract one volume first\n")
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


def test_report_is_self_contained_with_plots_qc_table_and_subject_images(tiny_results):
    results = tiny_results / "results"
    out = write_report(results, results / "report.html", results / "cohort_metrics.tsv")
    text = (results / "report.html").read_text()
    page = _Page()
    page.feed(text)
    page.close()
    assert page.open == [] and page.links == []
    assert {"qc-flags", "qc-failed", "per-label", "per-subject"} <= set(page.tables)
    pngs = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(pngs) == len(page.images) == 2 + 2  # Dice and HD95 plots, one QC image per subject
    assert "sub-a1 QC" in text and "sub-b2 QC" in text
    assert "http://" not in text and "https://" not in text
    assert str(tiny_results) not in text and "/tmp" not in text
    assert "c3" in list(out["failed"]["subject"]) and "extract one volume first" in text
    assert list(out["qc"]["subject"]) == ["b2"] and "folding 0.8 %" in text
    summary = pd.read_csv(results / "cohort_metrics.tsv", sep="\t")
    assert list(summary["name"]) == ["left_blob", "right_blob"]
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


def test_regenerate_metrics_with_new_references_leaves_registration_alone(tiny_results):
    results = tiny_results / "results"
    sentinel = results / "sub-a1" / "reg" / "registration.json"
    os.utime(sentinel, (1_000_000_000, 1_000_000_000))
    before = pd.read_csv(results / "sub-a1" / "sub-a1_metrics.tsv", sep="\t")
    new_refs = tiny_results / "new_refs"
    new_refs.mkdir()
    for subject, flip in (("a1", False), ("b2", True)):
        save_image(Image(_blobs(shift=3), _affine(flip), is_label=True), new_refs / f"sub-{subject}_labels.nii.gz")
    # a third subject with a broken labels file must not stop the others
    (results / "sub-c3").mkdir()
    (results / "sub-c3" / "sub-c3_labels.nii.gz").write_bytes(b"not a nifti")
    errors = regenerate_metrics(results, tiny_results / "table.tsv", new_refs, tiny_results / "manifest.tsv")
    assert len(errors) == 1 and errors[0].startswith("c3: ") and "\n" not in errors[0]
    after = pd.read_csv(results / "sub-a1" / "sub-a1_metrics.tsv", sep="\t")
    assert before.loc[0, "dice"] == pytest.approx(10 / 12, abs=1e-5)
    # reference planes 7-10 (label 2 covers 11-12) vs propagated 4-9: 2 * 3 / (4 + 6)
    assert after.loc[0, "dice"] == pytest.approx(0.6, abs=1e-5)
    assert after.loc[0, "folding_percent"] == 0.0
    assert sentinel.stat().st_mtime == 1_000_000_000
    assert not (results / "sub-c3" / "sub-c3_metrics.tsv").exists()
