"""Cohort aggregation of the per-subject metric tables, QC flags, and a self-contained HTML report.

Inputs (the results layout written by the workflow, files found with :mod:`unireg.layout`), only
read here; the metric tables are written by :mod:`unireg.metrics` (re-measured for every subject
by :func:`unireg.metrics.regenerate_metrics`):

* each subject's ``metrics`` table: one row per label (columns of
  :data:`unireg.metrics.METRIC_COLUMNS`; older files without ``hd95_mm``/``msd_mm`` are read
  with those columns NaN).
* its ``image`` (the converted T1w) and ``labels`` (the propagated dseg): on the same (native)
  grid, for QC pictures.
* with an atlas set, its ``preproc`` image, fused ``warped_labels`` and ``confidence`` map (the
  preprocessed, atlas-space grid): a picture of the fusion's confidence.
* its registration record (the ``displacement_json`` sidecar): the registration's
  reference-free QC (``qc``, see :func:`unireg.register.registration_qc`) and Jacobian statistics.
* ``RESULTS/manifest.tsv`` (optional): with columns ``selected``, ``selection_reason`` and
  ``series_description``, the report says which series each subject's image came from.
* ``LOGS/<rule>/<id>.log``: a failed subject has no metrics table; its error is the last line
  starting with ``unireg: `` in its logs.

Outputs: per-label and per-subject aggregates (TSV + Parquet, :func:`write_aggregates`), and one
HTML file that opens offline (inline CSS, PNG images as base64 data URIs, no links or scripts;
:func:`write_report`). The HTML holds subject ids, label names, numbers and the selected series'
SeriesDescription only: no absolute paths (paths inside messages are cut to their file name) and
nothing else from DICOM headers.

What needs attention comes first (failed subjects, flagged subjects, volume outliers); Dice and
HD95 are shown only when some subject has reference labels. Plots show at most
:data:`LABELS_PER_FIGURE` labels each; long tables scroll inside the page.

Units: Dice is unitless; HD95 is in mm; volumes in ml; ``folding_percent`` is the percentage of
voxels with a non-positive Jacobian determinant (from the registration).

QC definitions (thresholds are the module constants, keyword arguments of :func:`write_report`):

* registration (:func:`registration_flags`, no reference needed): similarity = mean squared local
  NCC (7^3-voxel windows) of atlas and subject inside the subject's brain mask, before (affine
  only) and after deformable registration; flagged when it did not rise, or when either value is
  below :data:`MIN_SIMILARITY`; brain-mask Dice (subject mask vs atlas mask) before or after
  below :data:`MIN_BRAIN_MASK_DICE`; folding above :data:`MAX_FOLDING_PERCENT` %; std of
  log det(J) above :data:`MAX_LOG_JACOBIAN_STD`.
* Dice (:func:`qc_flags`, with reference labels): mean Dice below Q1 - 1.5 IQR of the subjects'
  means, or below :data:`MIN_DICE`.
* volumes (:func:`robust_z`): per label, the modified z-score of Iglewicz and Hoaglin,
  0.6745 (v - median) / MAD, over the subjects with a volume; ``|z| >`` :data:`OUTLIER_Z` is an
  outlier. Labels with volumes in fewer than :data:`MIN_OUTLIER_SUBJECTS` subjects are not assessed.
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UniregError
from .io import write_atomic, write_text_atomic
from .layout import SUBJECT_ID, find_all, find_subject_file

#: Columns read from every per-subject table, with their dtypes (missing columns become NaN).
READ_DTYPES = {
    "subject": "str",
    "label": "int64",
    "name": "str",
    "dice": "float64",
    "hd95_mm": "float64",
    "msd_mm": "float64",
    "volume_reference_ml": "float64",
    "volume_propagated_ml": "float64",
    "reason": "str",
    "folding_percent": "float64",
    "log_jacobian_std": "float64",
}

#: Per-label statistics, computed for Dice, HD95 and propagated volume over the subjects with a
#: finite value.
LABEL_STATS = ("mean", "sd", "median", "q1", "q3", "iqr", "min", "max")
PER_LABEL_COLUMNS = (
    ["label", "name", "n"]
    + [f"dice_{s}" for s in LABEL_STATS]
    + ["hd95_n"]
    + [f"hd95_mm_{s}" for s in LABEL_STATS]
    + ["volume_n"]
    + [f"volume_ml_{s}" for s in LABEL_STATS]
)
#: The volume-outlier and per-subject tables' columns with their dtypes (see :func:`_typed`).
OUTLIER_DTYPES = {
    "subject": "str",
    "label": "int64",
    "name": "str",
    "volume_ml": "float64",
    "label_median_ml": "float64",
    "robust_z": "float64",
}
PER_SUBJECT_DTYPES = {
    "subject": "str",
    "n_labels": "int64",
    "n_nan_dice": "int64",
    "mean_dice": "float64",
    "median_hd95_mm": "float64",
    "folding_percent": "float64",
    "log_jacobian_std": "float64",
}
REGISTRATION_QC_COLUMNS = [
    "subject",
    "similarity_before",
    "similarity_after",
    "brain_mask_dice_before",
    "brain_mask_dice_after",
    "folding_percent",
    "log_jacobian_std",
]

AGGREGATE_FILES = {"per_label": "cohort_metrics_per_label", "per_subject": "cohort_metrics_per_subject"}

#: QC defaults (see the module docstring). The registration thresholds were read off atlas ->
#: subject registrations of 4 IXI T1 subjects and one T2 (the packaged model, 30 instance-opt
#: steps; network alone in brackets): similarity before 0.35-0.42, after 0.62-0.81 (0.30-0.53),
#: brain-mask Dice 0.94-0.97 before and after, std log det(J) 0.38-0.60 (0.21-0.32); with the atlas
#: shifted by 24 mm (a failed affine) similarity before 0.07-0.10, brain-mask Dice before
#: 0.73-0.78, std log det(J) 0.67-0.79.
MIN_DICE = 0.5
MAX_FOLDING_PERCENT = 0.5
MIN_SIMILARITY = 0.2
MIN_BRAIN_MASK_DICE = 0.9
MAX_LOG_JACOBIAN_STD = 0.7
#: Volume outliers: modified z-score threshold (Iglewicz & Hoaglin) and the fewest subjects it needs.
OUTLIER_Z = 3.5
MIN_OUTLIER_SUBJECTS = 5
SMALL_COHORT = 20  # below: the report warns that chance outliers are frequent (see _attention_html)
MAX_QC_IMAGES = 50
STRIP_PER_LABEL = 300  # dots per label in the strip plots (boxes use every value)
LABELS_PER_FIGURE = 40  # more labels: several figures

# files per dask partition: one partition per file costs far more in scheduling than in parsing
_FILES_PER_PARTITION = 250


# --------------------------------------------------------------------------- reading


def metric_tables(results_dir: str | Path) -> list[Path]:
    """The per-subject metric tables under ``results_dir`` (:mod:`unireg.layout`), sorted by subject
    (subject ids that are not ``^[A-Za-z0-9]+$`` are ignored)."""
    return list(find_all(results_dir, "metrics").values())


def _empty_metrics() -> pd.DataFrame:
    return _typed(pd.DataFrame(), READ_DTYPES)


def _read_tables(paths: list[str]) -> pd.DataFrame:
    """Several per-subject TSVs as one frame with :data:`READ_DTYPES` columns.

    Files sharing a header are parsed together in one ``read_csv`` call (thousands of tiny
    files otherwise cost more in per-call overhead than in parsing).
    """
    by_header: dict[str, list[str]] = {}
    for path in paths:
        text = Path(path).read_text()
        header, _, body = text.partition("\n")
        if body.strip():
            by_header.setdefault(header, []).append(body if body.endswith("\n") else body + "\n")
    frames = []
    for header, bodies in by_header.items():
        columns = header.rstrip("\r").split("\t")
        wanted = {c: t for c, t in READ_DTYPES.items() if c in columns}
        frame = pd.read_csv(
            _io.StringIO(header + "\n" + "".join(bodies)),
            sep="\t",
            dtype=wanted,
            usecols=list(wanted),
            keep_default_na=False,
            na_values=["", "nan", "NaN"],
        )
        frames.append(frame)
    return _typed(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), READ_DTYPES)


def read_metrics(results_dir: str | Path):
    """All per-subject metric tables as one ``dask.dataframe`` (subject x label rows).

    Every subject's rows lie in one partition (partitions are groups of whole files), so
    per-subject reductions need no shuffle.
    """
    import dask.dataframe as dd

    files = [str(p) for p in metric_tables(results_dir)]
    if not files:
        return dd.from_pandas(_empty_metrics(), npartitions=1)
    chunks = [files[i : i + _FILES_PER_PARTITION] for i in range(0, len(files), _FILES_PER_PARTITION)]
    return dd.from_map(_read_tables, chunks, meta=_empty_metrics(), enforce_metadata=False)


# --------------------------------------------------------------------------- aggregation


def _stats(values: np.ndarray, prefix: str) -> dict:
    """mean, sd (n-1), median, q1, q3, iqr, min, max of the finite ``values`` (NaN when none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {f"{prefix}_{s}": float("nan") for s in LABEL_STATS}
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])  # linear interpolation, as pandas
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_sd": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
        f"{prefix}_median": float(median),
        f"{prefix}_q1": float(q1),
        f"{prefix}_q3": float(q3),
        f"{prefix}_iqr": float(q3 - q1),
        f"{prefix}_min": float(values.min()),
        f"{prefix}_max": float(values.max()),
    }


def _per_label_partition(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-label statistics of one partition that holds *all* rows of its labels."""
    rows = []
    for (label, name), group in frame.groupby(["label", "name"], sort=True, dropna=False):
        dice = group["dice"].to_numpy(dtype=np.float64)
        hd95 = group["hd95_mm"].to_numpy(dtype=np.float64)
        volume = group["volume_propagated_ml"].to_numpy(dtype=np.float64)
        rows.append(
            {
                "label": label,
                "name": name,
                "n": int(np.isfinite(dice).sum()),
                **_stats(dice, "dice"),
                "hd95_n": int(np.isfinite(hd95).sum()),
                **_stats(hd95, "hd95_mm"),
                "volume_n": int(np.isfinite(volume).sum()),
                **_stats(volume, "volume_ml"),
            }
        )
    return _per_label_frame(rows)


def _per_label_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=PER_LABEL_COLUMNS)
    return frame.astype({"label": "int64", "name": "str", "n": "int64", "hd95_n": "int64", "volume_n": "int64"})


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-scores (Iglewicz & Hoaglin 1993): ``0.6745 (v - median) / MAD``.

    MAD is the median absolute deviation from the median. When MAD is 0 (more than half the
    values equal), ``(v - median) / (1.253314 * mean absolute deviation)`` instead; when that is
    0 too (all values equal), every score is 0. NaN values give NaN and are left out of the
    median and MAD.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    z = np.full(values.shape, np.nan)
    if finite.size == 0:
        return z
    median = np.median(finite)
    mad = np.median(np.abs(finite - median))
    if mad > 0:
        return 0.6745 * (values - median) / mad
    mean_ad = np.mean(np.abs(finite - median))
    if mean_ad > 0:
        return (values - median) / (1.253314 * mean_ad)
    return np.where(np.isfinite(values), 0.0, np.nan)


def _volume_outliers_partition(frame: pd.DataFrame) -> pd.DataFrame:
    """Volume outliers (``|robust_z| > OUTLIER_Z``) of a partition that holds all rows of its labels;
    labels with volumes in fewer than :data:`MIN_OUTLIER_SUBJECTS` subjects are skipped."""
    found = []
    for (label, name), group in frame.groupby(["label", "name"], sort=True, dropna=False):
        volume = group["volume_propagated_ml"].to_numpy(dtype=np.float64)
        if np.isfinite(volume).sum() < MIN_OUTLIER_SUBJECTS:
            continue
        z = robust_z(volume)
        hit = np.abs(z) > OUTLIER_Z
        if hit.any():
            found.append(
                pd.DataFrame(
                    {
                        "subject": group["subject"].to_numpy()[hit],
                        "label": label,
                        "name": name,
                        "volume_ml": volume[hit],
                        "label_median_ml": float(np.nanmedian(volume)),
                        "robust_z": z[hit],
                    }
                )
            )
    return _typed(pd.concat(found, ignore_index=True) if found else pd.DataFrame(), OUTLIER_DTYPES)


def _typed(frame: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """``frame`` with exactly the columns of ``dtypes`` (missing ones NaN), in that order and of those dtypes."""
    return frame.reindex(columns=list(dtypes)).astype(dtypes)


def _per_subject_partition(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-subject summary of one partition that holds all rows of its subjects."""
    dice = frame["dice"].where(np.isfinite(frame["dice"]))
    hd95 = frame["hd95_mm"].where(np.isfinite(frame["hd95_mm"]))
    grouped = frame.assign(dice=dice, hd95_mm=hd95, nan_dice=dice.isna()).groupby("subject", sort=True)
    out = pd.DataFrame(
        {
            "n_labels": grouped["label"].count(),
            "n_nan_dice": grouped["nan_dice"].sum(),
            "mean_dice": grouped["dice"].mean(),
            "median_hd95_mm": grouped["hd95_mm"].median(),
            "folding_percent": grouped["folding_percent"].max(),
            "log_jacobian_std": grouped["log_jacobian_std"].max(),
        }
    )
    return _typed(out.reset_index(), PER_SUBJECT_DTYPES)


def aggregate(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cohort aggregates of the per-subject metric tables, computed with ``dask.dataframe``.

    Returns ``(per_label, per_subject)``:

    * ``per_label``: one row per (label, name): ``n`` = subjects with a finite Dice, then
      ``dice_{mean,sd,median,q1,q3,iqr,min,max}`` over those subjects, ``hd95_n`` and the same
      statistics of HD95 in mm (``hd95_mm_*``), ``volume_n`` and the same statistics of the
      propagated volume in ml (``volume_ml_*``, no reference needed). Quantiles are exact (linear
      interpolation, as pandas); ``sd`` uses n - 1. NaN values (empty labels, no reference) are
      left out.
    * ``per_subject``: ``subject``, ``n_labels``, ``n_nan_dice`` (labels without a Dice),
      ``mean_dice`` and ``median_hd95_mm`` over the labels with a value, ``folding_percent``
      and ``log_jacobian_std`` of the subject's registration.
    """
    per_label, per_subject, _, _ = _compute_tables(results_dir)
    return per_label, per_subject


def _sample_partition(frame: pd.DataFrame, per_label: int) -> pd.DataFrame:
    """Up to ``per_label`` seeded random rows of each label from one partition (the propagated
    volume as ``volume_ml``)."""
    columns = ["label", "dice", "hd95_mm", "volume_propagated_ml"]
    frame = frame[columns].rename(columns={"volume_propagated_ml": "volume_ml"})
    if not len(frame):
        return frame
    # a seeded shuffle, then the first rows of each label: a random sample per label
    return frame.sample(frac=1.0, random_state=0).groupby("label").head(per_label)


def _compute_tables(results_dir: str | Path, strip_per_label: int = 0):
    """One pass over the metric files: (per_label, per_subject, strip-plot sample or None,
    volume outliers)."""
    import dask

    frame = read_metrics(results_dir)
    columns = ["subject", "label", "name", "dice", "hd95_mm", "volume_propagated_ml"]
    # exact quantiles (and robust z-scores) need every value of a label in one place: shuffle by label
    by_label_rows = frame[columns].shuffle(on="label")
    by_label = by_label_rows.map_partitions(_per_label_partition, meta=_per_label_frame([]))
    outliers = by_label_rows.map_partitions(_volume_outliers_partition, meta=_typed(pd.DataFrame(), OUTLIER_DTYPES))
    by_subject = frame.map_partitions(_per_subject_partition, meta=_typed(pd.DataFrame(), PER_SUBJECT_DTYPES))
    todo = [by_label, by_subject, outliers]
    if strip_per_label:
        k = max(1, strip_per_label // max(1, frame.npartitions))
        sample_meta = frame._meta[["label", "dice", "hd95_mm", "volume_propagated_ml"]].rename(
            columns={"volume_propagated_ml": "volume_ml"}
        )
        todo.append(frame.map_partitions(_sample_partition, k, meta=sample_meta))
    results = dask.compute(*todo, scheduler="threads")
    per_label = results[0].sort_values(["label", "name"], kind="stable").reset_index(drop=True)
    per_subject = results[1].sort_values("subject", kind="stable").reset_index(drop=True)
    order = results[2].assign(size=results[2]["robust_z"].abs())
    outliers = (
        order.sort_values(["size", "subject", "label"], ascending=[False, True, True], kind="stable")
        .drop(columns="size")
        .reset_index(drop=True)
    )
    return per_label, per_subject, (results[3] if strip_per_label else None), outliers


def _write_table(frame: pd.DataFrame, stem: Path) -> list[Path]:
    """``stem.tsv`` and ``stem.parquet``, each written atomically."""
    tsv = write_text_atomic(stem.with_suffix(".tsv"), frame.to_csv(sep="\t", index=False, float_format="%.6g"))
    parquet = write_atomic(stem.with_suffix(".parquet"), lambda tmp: frame.to_parquet(tmp, index=False))
    return [tsv, parquet]


def _write_aggregate_tables(per_label: pd.DataFrame, per_subject: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return _write_table(per_label, out_dir / AGGREGATE_FILES["per_label"]) + _write_table(
        per_subject, out_dir / AGGREGATE_FILES["per_subject"]
    )


def write_aggregates(results_dir: str | Path, out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`aggregate`, written to ``out_dir`` as ``cohort_metrics_per_label.{tsv,parquet}`` and
    ``cohort_metrics_per_subject.{tsv,parquet}``; returns ``(per_label, per_subject)``."""
    per_label, per_subject = aggregate(results_dir)
    _write_aggregate_tables(per_label, per_subject, out_dir)
    return per_label, per_subject


# --------------------------------------------------------------------------- QC


def _folding_reason(folding_percent: float, max_folding_percent: float) -> str | None:
    if np.isfinite(folding_percent) and folding_percent > max_folding_percent:
        return f"folding {folding_percent:.3g} % > {max_folding_percent:g} %"
    return None


def qc_flags(
    per_subject: pd.DataFrame,
    min_dice: float = MIN_DICE,
    max_folding_percent: float = MAX_FOLDING_PERCENT,
    registration: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Subjects to look at, with why: columns ``subject, mean_dice, folding_percent, reasons``.

    A subject is flagged when its mean Dice is below Q1 - 1.5 IQR of the cohort's subject means
    (a low outlier), or below ``min_dice``, or when its registration folds more than
    ``max_folding_percent`` % of voxels. Subjects without a Dice (no reference) are only
    checked for folding. ``registration`` (:func:`registration_flags`) adds its ``reasons``
    (and its subjects); a reason found both ways is given once.
    """
    means = per_subject["mean_dice"].to_numpy(dtype=np.float64)
    finite = means[np.isfinite(means)]
    fence = float("nan")
    if finite.size >= 4:  # a quartile fence needs a few subjects to mean anything
        q1, q3 = np.quantile(finite, [0.25, 0.75])
        fence = q1 - 1.5 * (q3 - q1)
    found: dict[str, dict] = {}
    for row in per_subject.itertuples(index=False):
        reasons = []
        if np.isfinite(row.mean_dice) and np.isfinite(fence) and row.mean_dice < fence:
            reasons.append(f"mean Dice {row.mean_dice:.3f} is a low outlier (< Q1 - 1.5 IQR = {fence:.3f})")
        if np.isfinite(row.mean_dice) and row.mean_dice < min_dice:
            reasons.append(f"mean Dice {row.mean_dice:.3f} < {min_dice:g}")
        reasons.append(_folding_reason(row.folding_percent, max_folding_percent))
        found[row.subject] = {
            "subject": row.subject,
            "mean_dice": row.mean_dice,
            "folding_percent": row.folding_percent,
            "reasons": [r for r in reasons if r],
        }
    if registration is not None:
        for row in registration.itertuples(index=False):
            entry = found.setdefault(
                row.subject,
                {
                    "subject": row.subject,
                    "mean_dice": float("nan"),
                    "folding_percent": row.folding_percent,
                    "reasons": [],
                },
            )
            if not np.isfinite(entry["folding_percent"]):
                entry["folding_percent"] = row.folding_percent
            entry["reasons"] += [r for r in row.reasons.split("; ") if r and r not in entry["reasons"]]
    rows = [{**entry, "reasons": "; ".join(entry["reasons"])} for _, entry in sorted(found.items()) if entry["reasons"]]
    return pd.DataFrame(rows, columns=["subject", "mean_dice", "folding_percent", "reasons"])


def read_registration_qc(results_dir: str | Path) -> pd.DataFrame:
    """The QC numbers of every subject's registration.json (:data:`REGISTRATION_QC_COLUMNS`), or of
    its fused labels' record with an atlas set (:data:`unireg.layout.REGISTRATION_RECORDS`).

    Similarities and brain-mask Dice come from its ``qc`` entry, folding and std log det(J) from
    ``jacobian``; what a file lacks (older runs) is NaN. An unreadable file gives a row of NaN
    and a ``problem`` (one line); the column ``problem`` is empty otherwise.
    """
    rows = []
    records = {**find_all(results_dir, "segment_json"), **find_all(results_dir, "displacement_json")}
    for subject, path in sorted(records.items()):
        row = {"subject": subject, "problem": ""}
        try:
            info = json.loads(path.read_text())
            qc, jacobian = info.get("qc") or {}, info.get("jacobian") or {}
        except (OSError, ValueError, AttributeError) as err:
            qc, jacobian = {}, {}
            row["problem"] = f"registration record unreadable ({type(err).__name__})"
        for column in REGISTRATION_QC_COLUMNS[1:]:
            value = (jacobian if column in ("folding_percent", "log_jacobian_std") else qc).get(column)
            row[column] = float(value) if isinstance(value, (int, float)) else float("nan")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=REGISTRATION_QC_COLUMNS + ["problem"])
    return frame.astype({"subject": "str", "problem": "str", **{c: "float64" for c in REGISTRATION_QC_COLUMNS[1:]}})


def registration_flags(
    registration: pd.DataFrame,
    *,
    min_similarity: float = MIN_SIMILARITY,
    min_brain_mask_dice: float = MIN_BRAIN_MASK_DICE,
    max_folding_percent: float = MAX_FOLDING_PERCENT,
    max_log_jacobian_std: float = MAX_LOG_JACOBIAN_STD,
) -> pd.DataFrame:
    """:func:`read_registration_qc` plus ``reasons`` (``"; "``-joined, empty when none), flagged
    subjects first. Flags: the similarity did not rise (after <= before); similarity before or
    after below ``min_similarity``; brain-mask Dice before or after below ``min_brain_mask_dice``;
    folding above ``max_folding_percent`` %; std log det(J) above ``max_log_jacobian_std``; an
    unreadable registration.json. Missing values raise no flag."""
    reasons_per_row = []
    for row in registration.itertuples(index=False):
        before, after = row.similarity_before, row.similarity_after
        reasons = [row.problem] if row.problem else []
        if np.isfinite(before) and np.isfinite(after) and after <= before:
            reasons.append(f"similarity not improved ({before:.3f} -> {after:.3f})")
        for when, value in (("before", before), ("after", after)):
            if np.isfinite(value) and value < min_similarity:
                reasons.append(f"similarity {when} {value:.3f} < {min_similarity:g}")
        for when, value in (("before", row.brain_mask_dice_before), ("after", row.brain_mask_dice_after)):
            if np.isfinite(value) and value < min_brain_mask_dice:
                reasons.append(f"brain-mask Dice {when} {value:.3f} < {min_brain_mask_dice:g}")
        reasons.append(_folding_reason(row.folding_percent, max_folding_percent))
        if np.isfinite(row.log_jacobian_std) and row.log_jacobian_std > max_log_jacobian_std:
            reasons.append(f"std log det(J) {row.log_jacobian_std:.3f} > {max_log_jacobian_std:g}")
        reasons_per_row.append("; ".join(r for r in reasons if r))
    frame = registration.drop(columns="problem", errors="ignore").assign(reasons=reasons_per_row)
    flagged = frame["reasons"] != ""
    return pd.concat([frame[flagged], frame[~flagged]], ignore_index=True)


#: Manifest columns the report reads: nothing else from the DICOM headers reaches the HTML.
MANIFEST_SELECTION_COLUMNS = ("subject", "selected", "selection_reason", "series_description")


def selected_series(manifest_path: str | Path) -> pd.DataFrame | None:
    """Per subject of the manifest: ``subject, series_description, selection_reason, n_series``
    of its selected row (``selected`` = 1; none: empty description, and the reason of its first
    row). None when the manifest is absent or lacks any of :data:`MANIFEST_SELECTION_COLUMNS`."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        return None
    try:
        manifest = pd.read_csv(
            manifest_path,
            sep="\t",
            dtype=str,
            keep_default_na=False,
            usecols=lambda column: column in MANIFEST_SELECTION_COLUMNS,
        )
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not set(MANIFEST_SELECTION_COLUMNS) <= set(manifest.columns):
        return None
    rows = []
    for subject, group in manifest.groupby("subject", sort=True):
        chosen = group[group["selected"].str.strip().isin(("1", "1.0", "True", "true"))]
        if len(chosen):
            row = chosen.iloc[0]
            description, reason = row["series_description"], row["selection_reason"]
        else:
            description, reason = "", group["selection_reason"].iloc[0] or "no series selected"
        rows.append(
            {
                "subject": subject,
                "series_description": description,
                "selection_reason": _strip_absolute_paths(reason),
                "n_series": len(group),
            }
        )
    return pd.DataFrame(rows, columns=["subject", "series_description", "selection_reason", "n_series"])


def _last_unireg_line(path: Path) -> str | None:
    last = None
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.startswith("unireg: "):
                    last = line.strip()
    except OSError:
        return None
    return last


def failed_subjects(results_dir: str | Path, logs_dir: str | Path | None = None) -> pd.DataFrame:
    """Subjects with a results folder or a per-subject log but no metrics table.

    Columns ``subject, error``: the error is the last line starting with ``unireg: `` in the
    subject's logs (``logs_dir/<rule>/<id>.log``, default ``results_dir/../logs``; the newest log
    holding such a line wins), else a note that the logs hold no unireg error. Never a traceback.
    ``logs_dir/<rule>/<rule>.log`` belongs to a cohort-level rule (atlas, index, report), not a subject.
    """
    results_dir = Path(results_dir)
    logs_dir = Path(logs_dir) if logs_dir is not None else results_dir.parent / "work" / "logs"
    done = set(find_all(results_dir, "metrics"))
    logs: dict[str, list[Path]] = {}
    if logs_dir.is_dir():
        for log in logs_dir.glob("*/*.log"):
            if log.stem == log.parent.name:  # logs/<rule>/<rule>.log: a cohort-level rule (atlas, report)
                continue
            subject = log.stem[len("sub-") :] if log.stem.startswith("sub-") else log.stem
            if SUBJECT_ID.match(subject):
                logs.setdefault(subject, []).append(log)
    folders = {p.name[len("sub-") :] for p in results_dir.glob("sub-*") if p.is_dir()}
    candidates = sorted(s for s in (folders | set(logs)) - done if SUBJECT_ID.match(s))
    rows = []
    for subject in candidates:
        found = []
        for log in logs.get(subject, []):
            line = _last_unireg_line(log)
            if line:
                found.append((log.stat().st_mtime, line))
        if found:
            error = max(found)[1]
        elif subject in logs:
            error = (
                f"no metrics table, and no 'unireg: ' error in its logs "
                f"({', '.join(sorted(f'{p.parent.name}/{p.name}' for p in logs[subject]))})"
            )
        else:
            error = "no metrics table and no log"
        rows.append({"subject": subject, "error": error})
    return pd.DataFrame(rows, columns=["subject", "error"])


# --------------------------------------------------------------------------- figures

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s/:'\"]+/)*([^\s/:'\"]+)")


def _strip_absolute_paths(text: str) -> str:
    """Cut absolute paths to their file name: the report may travel, the file system does not."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def _png_data_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def box_strip_figure(
    per_label: pd.DataFrame,
    sample: pd.DataFrame,
    metric: str,
    ylabel: str,
    *,
    log_scale: bool = False,
    marks: pd.DataFrame | None = None,
) -> str:
    """Box (quartiles, median, whiskers min-max) and strip plot per label; a PNG data URI.

    One box per row of ``per_label``, in its order (callers page long label lists, see
    :func:`paged_box_figures`). ``metric`` is the column prefix in ``per_label`` (``dice``,
    ``hd95_mm`` or ``volume_ml``) and the column name in ``sample``. ``log_scale``: a log y axis,
    with zeros drawn on its bottom edge. ``marks``: rows ``label, value`` drawn as red crosses
    (outliers).
    """
    from matplotlib.figure import Figure

    labels = per_label.reset_index(drop=True)
    fig = Figure(figsize=(max(4.0, 0.3 * len(labels) + 1.5), 3.6), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    floor = None
    if log_scale:  # zeros have no place on a log axis: draw them at half the smallest positive value
        values = labels[[f"{metric}_min", f"{metric}_median"]].to_numpy(dtype=np.float64).ravel()
        positive = values[np.isfinite(values) & (values > 0)]
        floor = 0.5 * positive.min() if positive.size else 1e-3
    lift = (lambda v: np.maximum(v, floor)) if floor else (lambda v: v)
    stats, positions = [], []
    for pos, row in enumerate(labels.itertuples(index=False), start=1):
        get = row._asdict()
        if not np.isfinite(get[f"{metric}_median"]):
            continue
        stats.append(
            {
                "med": lift(get[f"{metric}_median"]),
                "q1": lift(get[f"{metric}_q1"]),
                "q3": lift(get[f"{metric}_q3"]),
                "whislo": lift(get[f"{metric}_min"]),
                "whishi": lift(get[f"{metric}_max"]),
                "fliers": [],
                "label": str(get["name"]),
            }
        )
        positions.append(pos)
    if stats:
        ax.bxp(stats, positions=positions, showfliers=False, widths=0.6)
    rng = np.random.default_rng(0)
    position = {label: pos for pos, label in enumerate(labels["label"], start=1)}
    for label, pos in position.items():
        values = sample.loc[sample["label"] == label, metric].to_numpy(dtype=np.float64)
        values = lift(values[np.isfinite(values)])
        ax.scatter(pos + rng.uniform(-0.18, 0.18, values.size), values, s=6, alpha=0.5, color="tab:blue", linewidths=0)
    if marks is not None and len(marks):
        shown = marks[marks["label"].isin(position)]
        ax.scatter(
            shown["label"].map(position),
            lift(shown["value"].to_numpy(dtype=np.float64)),
            s=30,
            marker="x",
            color="tab:red",
            linewidths=1.2,
            zorder=3,
        )
    if log_scale:
        ax.set_yscale("log")
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels([str(n) for n in labels["name"]], rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_xlim(0.5, len(labels) + 0.5)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png_data_uri(fig)


def paged_box_figures(
    per_label: pd.DataFrame,
    sample: pd.DataFrame,
    metric: str,
    ylabel: str,
    caption: str,
    *,
    per_figure: int = LABELS_PER_FIGURE,
    **options,
) -> str:
    """:func:`box_strip_figure` over ``per_label`` (in its order) in pages of at most
    ``per_figure`` labels: HTML with the first figure shown and the others in a collapsed
    ``<details>``. ``options`` go to :func:`box_strip_figure`."""
    labels = per_label[np.isfinite(per_label[f"{metric}_median"])].reset_index(drop=True)
    if not len(labels):
        return ""
    pages = [labels.iloc[i : i + per_figure] for i in range(0, len(labels), per_figure)]
    figures = []
    for n, page in enumerate(pages, start=1):
        part = ""
        if len(pages) > 1:
            part = f" ({n} of {len(pages)}: labels {page['name'].iloc[0]} to {page['name'].iloc[-1]})"
        figures.append(
            f"<figure>{_img(box_strip_figure(page, sample, metric, ylabel, **options), ylabel + part)}"
            f"<figcaption>{html.escape(caption + part)}</figcaption></figure>"
        )
    if len(figures) == 1:
        return figures[0]
    return (
        figures[0] + f"<details><summary>{len(figures) - 1} more figures ({len(labels) - len(pages[0])} "
        f"more labels)</summary>" + "".join(figures[1:]) + "</details>"
    )


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """Label values on the 4-connected boundary of each label of a 2-D slice, 0 elsewhere."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return np.where(edge & (labels > 0), labels, 0)


def _label_centre(labels: np.ndarray) -> np.ndarray:
    """Voxel index of the labels' centroid; on each axis, the nearest slice holding labels
    (a centroid between two hemispheres would otherwise show an empty slice)."""
    inside = labels > 0
    if not inside.any():
        return np.asarray(labels.shape) // 2
    centre = np.round(np.argwhere(inside).mean(axis=0)).astype(int)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        filled = np.flatnonzero(inside.any(axis=others))
        centre[axis] = filled[np.argmin(np.abs(filled - centre[axis]))]
    return centre


def _ras_panels(spacing, centre) -> list[tuple[str, tuple, tuple[float, float]]]:
    """(name, 2-D slice with axes (horizontal, vertical), horizontal/vertical voxel sizes) of the
    sagittal, coronal and axial slices through ``centre`` of a RAS-oriented grid."""
    return [
        ("sagittal", np.s_[centre[0], :, :], (spacing[1], spacing[2])),
        ("coronal", np.s_[:, centre[1], :], (spacing[0], spacing[2])),
        ("axial", np.s_[:, :, centre[2]], (spacing[0], spacing[1])),
    ]


def _grey_limits(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    return tuple(np.percentile(finite, [1, 99])) if finite.size else (0.0, 1.0)


def qc_figure(image, labels, title: str) -> str:
    """Label contours over the image on three orthogonal slices through the labels' centre.

    ``image`` and ``labels`` are :class:`unireg.io.Image` on the same grid; both are reoriented
    to RAS first, so panels show (left to right) sagittal (A to the right), coronal and axial
    (R to the right: neurological view), superior/anterior up, with the voxel aspect honoured.
    Returns a PNG data URI.
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from .transforms import reorient_to_ras

    image, labels = reorient_to_ras(image), reorient_to_ras(labels)
    data, lab = image.data, labels.data
    lo, hi = _grey_limits(data)
    n_colours = 20
    colours = ListedColormap([(0, 0, 0, 0)] + [(*c[:3], 1.0) for c in colormaps["tab20"].colors[:n_colours]])
    fig = Figure(figsize=(7.5, 2.7), dpi=80)
    for n, (name, index, (dx, dy)) in enumerate(_ras_panels(labels.spacing, _label_centre(lab)), start=1):
        ax = fig.add_subplot(1, 3, n)
        ax.imshow(data[index].T, origin="lower", cmap="gray", vmin=lo, vmax=hi, aspect=dy / dx, interpolation="nearest")
        edges = _label_edges(lab[index])
        shown = np.where(edges > 0, (edges - 1) % n_colours + 1, 0)
        ax.imshow(
            shown.T, origin="lower", cmap=colours, vmin=0, vmax=n_colours, aspect=dy / dx, interpolation="nearest"
        )
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png_data_uri(fig)


def confidence_figure(image, confidence, labels, title: str) -> str:
    """A multi-atlas fusion's confidence (:func:`unireg.fusion.fuse`: the share of the atlases'
    weight the winning label got) over the image, on the three RAS slices through the centre of
    the voxels where the atlases disagree (confidence < 1); voxels where all agree, or outside the
    fused labels, show the image alone. All three :class:`unireg.io.Image` on one grid (the
    preprocessed, atlas-space grid the fusion ran on). Returns a PNG data URI."""
    from matplotlib.figure import Figure

    from .transforms import reorient_to_ras

    image, confidence, labels = (reorient_to_ras(x) for x in (image, confidence, labels))
    data, conf = image.data, confidence.data.astype(np.float32)
    shown = np.ma.masked_where((conf >= 1.0) | (labels.data <= 0), conf)
    disagree = (~np.ma.getmaskarray(shown)).astype(np.int32)
    lo, hi = _grey_limits(data)
    fig = Figure(figsize=(8.2, 2.7), dpi=80)
    axes = [fig.add_subplot(1, 3, n) for n in (1, 2, 3)]
    for ax, (name, index, (dx, dy)) in zip(axes, _ras_panels(image.spacing, _label_centre(disagree))):
        ax.imshow(data[index].T, origin="lower", cmap="gray", vmin=lo, vmax=hi, aspect=dy / dx, interpolation="nearest")
        overlay = ax.imshow(
            shown[index].T, origin="lower", cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect=dy / dx, interpolation="nearest"
        )
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.colorbar(overlay, ax=axes, fraction=0.02, pad=0.01).ax.tick_params(labelsize=7)
    inside = labels.data > 0
    low = float((conf[inside] < 0.5).mean() * 100) if inside.any() else 0.0
    fig.suptitle(f"{title}: {low:.1f} % of labelled voxels below 0.5", fontsize=9)
    return _png_data_uri(fig)


def subject_qc_images(
    results_dir: str | Path, subjects: list[str], max_images: int = MAX_QC_IMAGES
) -> tuple[list[tuple[str, str]], list[str]]:
    """QC pictures ``(caption, data URI)`` for up to ``max_images`` of ``subjects`` (in order),
    skipping subjects whose image or labels are missing; also one note per unreadable subject.

    Each subject's picture shows its propagated labels on its native image. A subject segmented
    with an atlas set (it has a ``confidence`` map) gets a second one: the fusion's confidence on
    its preprocessed image (:func:`confidence_figure`)."""
    from .io import load_image

    results_dir = Path(results_dir)
    images, notes, shown = [], [], 0
    for subject in subjects:
        if shown >= max_images:
            break
        image_path = find_subject_file(results_dir, subject, "image")
        labels_path = find_subject_file(results_dir, subject, "labels")
        if image_path is None or labels_path is None:
            continue
        try:
            image = load_image(image_path, subject=subject)
            labels = load_image(labels_path, label=True, subject=subject)
            if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
                raise UniregError("image and propagated labels are not on the same grid", subject=subject)
            images.append((f"sub-{subject} QC", qc_figure(image, labels, f"sub-{subject}")))
            shown += 1
        except UniregError as err:
            notes.append(f"sub-{subject}: no QC image ({err.message})")
            continue
        fused = [find_subject_file(results_dir, subject, k) for k in ("preproc", "confidence", "warped_labels")]
        if not all(fused):
            continue
        try:
            preproc, confidence = (load_image(p, subject=subject) for p in fused[:2])
            fused_labels = load_image(fused[2], label=True, subject=subject)
            if {preproc.shape, fused_labels.shape} != {confidence.shape}:
                raise UniregError("preprocessed image and fusion confidence are not on one grid", subject=subject)
            title = f"sub-{subject} fusion confidence"
            images.append((title, confidence_figure(preproc, confidence, fused_labels, title)))
        except UniregError as err:
            notes.append(f"sub-{subject}: no fusion-confidence picture ({err.message})")
    return images, notes


# --------------------------------------------------------------------------- HTML

_CSS = """body{font-family:sans-serif;margin:2em;color:#222;max-width:110em}
table{border-collapse:collapse;font-size:0.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
.text{text-align:left;white-space:normal;min-width:18em}tr.flag td{background:#fdecea}
.scroll{display:inline-block;max-width:100%;max-height:30em;overflow:auto;border:1px solid #ddd;margin:0.5em 0}
.attention{border-left:5px solid #c0392b;padding:0.1em 1em;margin:1em 0;background:#fffaf9}
.ok{border-left-color:#27ae60;background:#f7fcf8}.note{color:#555}
img{max-width:100%;height:auto}figure{display:inline-block;margin:0.3em;max-width:100%}
figcaption{font-size:0.8em;color:#555}details summary{cursor:pointer;margin:0.5em 0}"""


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.3f}" if np.isfinite(value) else "&ndash;"
    return html.escape(str(value))


def _table(
    frame: pd.DataFrame,
    css_class: str = "",
    table_id: str | None = None,
    *,
    text_columns: tuple[str, ...] = (),
    flag_column: str | None = None,
) -> str:
    """An HTML table in a scrolling box (long or wide tables scroll inside the page; the header
    row stays in view). Floats have 3 decimals, NaN shows as a dash; ``text_columns`` wrap;
    rows with a non-empty ``flag_column`` are highlighted."""
    attributes = (f' class="{css_class}"' if css_class else "") + (f' id="{table_id}"' if table_id else "")
    head = "".join(
        f'<th class="text">{html.escape(str(c))}</th>' if c in text_columns else f"<th>{html.escape(str(c))}</th>"
        for c in frame.columns
    )
    rows = []
    for record in frame.itertuples(index=False):
        cells = "".join(
            f'<td class="text">{_cell(v)}</td>' if c in text_columns else f"<td>{_cell(v)}</td>"
            for c, v in zip(frame.columns, record)
        )
        flagged = flag_column is not None and str(getattr(record, flag_column))
        rows.append(f'<tr class="flag">{cells}</tr>' if flagged else f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table{attributes}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _attention_html(
    failed: pd.DataFrame, qc: pd.DataFrame, outliers: pd.DataFrame, per_label: pd.DataFrame, has_reference: bool
) -> list[str]:
    """Failed subjects, flagged subjects and volume outliers: the report's first section."""
    anything = len(failed) or len(qc) or len(outliers)
    qc = qc[["subject", "mean_dice", "reasons"] if has_reference else ["subject", "reasons"]]
    body = [
        f'<section class="attention{"" if anything else " ok"}"><h2>Needs attention</h2>',
        f"<h3>Failed subjects ({len(failed)})</h3>",
        _table(failed, "qc", "qc-failed", text_columns=("error",)) if len(failed) else "<p>No failed subject.</p>",
        f"<h3>Flagged subjects ({len(qc)})</h3>",
        '<p class="note">Why each subject is flagged; the thresholds are under Registration QC and Dice below.</p>',
        _table(qc, "qc", "qc-flags", text_columns=("reasons",)) if len(qc) else "<p>No subject flagged.</p>",
        f"<h3>Volume outliers ({len(outliers)} in {outliers['subject'].nunique()} subjects)</h3>",
    ]
    assessed = per_label["volume_n"] >= MIN_OUTLIER_SUBJECTS if len(per_label) else pd.Series(dtype=bool)
    rule = (
        f"Per label, modified z-score 0.6745 (volume - median) / MAD over the subjects (Iglewicz and Hoaglin); "
        f"|z| &gt; {OUTLIER_Z:g} is an outlier."
    )
    if not assessed.any():
        most = int(per_label["volume_n"].max()) if len(per_label) else 0
        body.append(
            f"<p>Volume outliers not assessed: the robust z-score needs propagated volumes from at least "
            f"{MIN_OUTLIER_SUBJECTS} subjects (here at most {most}).</p>"
        )
    else:
        skipped = int((~assessed).sum())
        small = int(per_label["volume_n"].max()) < SMALL_COHORT
        body.append(
            f'<p class="note">{rule}'
            + (
                f" {skipped} labels with volumes in fewer than {MIN_OUTLIER_SUBJECTS} subjects were not assessed."
                if skipped
                else ""
            )
            + (
                f" With fewer than {SMALL_COHORT} subjects the MAD itself is uncertain: even normally "
                "distributed volumes exceed the threshold in about 1-5 % of values (simulated, 20 to 5 "
                "subjects), so read the largest |z| first."
                if small
                else ""
            )
            + "</p>"
        )
        if len(outliers):
            by_subject = []
            for subject, group in outliers.groupby("subject", sort=False):
                shown = [f"{r.name} (z {r.robust_z:+.1f})" for r in group.head(12).itertuples(index=False)]
                more = f", and {len(group) - 12} more" if len(group) > 12 else ""
                by_subject.append({"subject": subject, "n_labels": len(group), "labels": ", ".join(shown) + more})
            by_subject = pd.DataFrame(by_subject).sort_values(
                ["n_labels", "subject"], ascending=[False, True], kind="stable"
            )
            body += [
                _table(by_subject, "qc", "volume-outliers-by-subject", text_columns=("labels",)),
                f"<details><summary>All {len(outliers)} outliers (subject, label), largest |z| first</summary>",
                _table(outliers, "", "volume-outliers"),
                "</details>",
            ]
        else:
            body.append("<p>No volume outlier.</p>")
    return body + ["</section>"]


def _registration_html(registration: pd.DataFrame, thresholds: dict) -> list[str]:
    body = [
        "<h2>Registration QC</h2>",
        '<p class="note">Needs no reference labels. <b>similarity</b>: mean squared local NCC '
        "(7&times;7&times;7-voxel windows; 1 = locally identical up to contrast, also inverted contrast) of "
        "the atlas and the subject inside the subject's brain mask, <b>before</b> (affine alignment only) and "
        "<b>after</b> deformable registration. <b>brain_mask_dice</b>: the subject's brain mask against the "
        "atlas brain mask, before and after. <b>folding_percent</b>: voxels with det(J) &le; 0 (% of the brain "
        "mask); <b>log_jacobian_std</b>: spread of log det(J). Flagged when the similarity did not rise, "
        f"similarity &lt; {thresholds['min_similarity']:g}, brain-mask Dice &lt; "
        f"{thresholds['min_brain_mask_dice']:g}, folding &gt; {thresholds['max_folding_percent']:g} % or "
        f"std log det(J) &gt; {thresholds['max_log_jacobian_std']:g}; flagged subjects first.</p>",
    ]
    if not len(registration):
        return body + ["<p>No registration record found (the nonlinear transform's JSON sidecar of each subject).</p>"]
    return body + [_table(registration, "", "registration-qc", text_columns=("reasons",), flag_column="reasons")]


def _series_html(series: pd.DataFrame | None) -> list[str]:
    if series is None:
        return []
    return [
        "<h2>Input series</h2>",
        '<p class="note">The series each subject\'s image was converted from (manifest.tsv: '
        "SeriesDescription and why it was chosen among the subject's n_series series).</p>",
        "<details open><summary>Table</summary>",
        _table(series, "", "input-series", text_columns=("selection_reason",)),
        "</details>",
    ]


def _volume_html(per_label: pd.DataFrame, sample: pd.DataFrame, outliers: pd.DataFrame) -> list[str]:
    body = ["<h2>Label volumes</h2>"]
    with_volume = per_label[per_label["volume_n"] > 0]
    if not len(with_volume):
        return body + ["<p>No propagated volume found.</p>"]
    marks = outliers.rename(columns={"volume_ml": "value"})[["label", "value"]]
    body.append(
        paged_box_figures(
            with_volume,
            sample,
            "volume_ml",
            "volume (ml)",
            "Propagated volume per label (ml, log scale): box = quartiles and median, whiskers = min-max, dots = "
            "subjects (a random sample in large cohorts), red crosses = outliers; empty labels on the bottom edge.",
            log_scale=True,
            marks=marks,
        )
    )
    table = with_volume[
        ["label", "name", "volume_n"] + [f"volume_ml_{s}" for s in ("median", "q1", "q3", "iqr", "min", "max")]
    ]
    table = table.rename(columns={"volume_n": "n"})
    return body + [
        f"<details open><summary>Table: {len(table)} labels, volume in ml over the subjects</summary>",
        _table(table, "", "label-volumes"),
        "</details>",
    ]


def _overlap_html(per_label: pd.DataFrame, sample: pd.DataFrame, min_dice: float) -> list[str]:
    """Dice and HD95 figures and table: only for labels that some subject has a reference for."""
    measured = per_label[per_label["n"] > 0]
    if not len(measured):
        return [
            "<h2>Dice and HD95</h2>",
            "<p>No subject has reference labels: Dice and HD95 are not computed (the volumes and the "
            "registration QC above need no reference).</p>",
        ]
    box = "box = quartiles and median, whiskers = min-max, dots = subjects (a random sample in large cohorts)"
    columns = (
        ["label", "name", "n"] + [f"dice_{s}" for s in LABEL_STATS] + ["hd95_n"] + [f"hd95_mm_{s}" for s in LABEL_STATS]
    )
    unmeasured = len(per_label) - len(measured)
    return [
        "<h2>Dice and HD95</h2>",
        f'<p class="note">Against the subjects\' reference labels. A subject is flagged when its mean Dice '
        f"is below Q1 - 1.5 IQR of the subjects' means or below {min_dice:g}."
        + (f" {unmeasured} labels without any reference are not shown." if unmeasured else "")
        + "</p>",
        paged_box_figures(
            measured.sort_values(["dice_median", "label"], kind="stable"),
            sample,
            "dice",
            "Dice",
            f"Dice per label, lowest median first: {box}.",
        ),
        paged_box_figures(
            measured.sort_values(["hd95_mm_median", "label"], ascending=[False, True], kind="stable"),
            sample,
            "hd95_mm",
            "HD95 (mm)",
            f"HD95 (mm) per label, highest median first: {box}.",
        ),
        f"<details open><summary>Table: {len(measured)} labels</summary>",
        _table(measured[columns], "", "per-label"),
        "</details>",
    ]


def _subject_html(per_subject: pd.DataFrame, outliers: pd.DataFrame, has_reference: bool) -> list[str]:
    counts = outliers.groupby("subject").size()
    table = per_subject.assign(n_volume_outliers=per_subject["subject"].map(counts).fillna(0).astype("int64"))
    if has_reference:
        table = table.sort_values("mean_dice", kind="stable", na_position="last")
        order = "sorted by mean Dice"
    else:
        table = table.drop(columns=["n_nan_dice", "mean_dice", "median_hd95_mm"]).sort_values(
            ["n_volume_outliers", "subject"], ascending=[False, True], kind="stable"
        )
        order = "most volume outliers first"
    return [
        "<h2>Per subject</h2>",
        f"<details open><summary>Table: {len(table)} subjects ({order})</summary>",
        _table(table, "", "per-subject"),
        "</details>",
    ]


def write_report(
    results_dir: str | Path,
    html_path: str | Path,
    summary_path: str | Path,
    logs_dir: str | Path | None = None,
    *,
    min_dice: float = MIN_DICE,
    max_folding_percent: float = MAX_FOLDING_PERCENT,
    max_qc_images: int = MAX_QC_IMAGES,
    min_similarity: float = MIN_SIMILARITY,
    min_brain_mask_dice: float = MIN_BRAIN_MASK_DICE,
    max_log_jacobian_std: float = MAX_LOG_JACOBIAN_STD,
    manifest_path: str | Path | None = None,
) -> dict:
    """Cohort tables, QC flags and a self-contained HTML report.

    Writes ``summary_path`` (the per-label TSV, the workflow's ``cohort_metrics.tsv``), the
    aggregates of :func:`write_aggregates` beside it, and ``html_path``. Logs of failed subjects
    are looked up in ``logs_dir`` (default ``results_dir/../logs``); the selected series in
    ``manifest_path`` (default ``results_dir/manifest.tsv``; skipped when absent or without the
    selection columns). Returns a dict with the frames ``per_label``, ``per_subject``, ``qc``
    (flagged subjects), ``failed``, ``registration`` (:func:`registration_flags`),
    ``volume_outliers``, ``series`` (or None), and ``html``/``summary`` (paths).
    """
    results_dir = Path(results_dir)
    per_label, per_subject, sample, outliers = _compute_tables(results_dir, strip_per_label=STRIP_PER_LABEL)
    write_text_atomic(summary_path, per_label.to_csv(sep="\t", index=False, float_format="%.6g"))
    _write_aggregate_tables(per_label, per_subject, Path(summary_path).parent)
    thresholds = {
        "min_similarity": min_similarity,
        "min_brain_mask_dice": min_brain_mask_dice,
        "max_folding_percent": max_folding_percent,
        "max_log_jacobian_std": max_log_jacobian_std,
    }
    registration = registration_flags(read_registration_qc(results_dir), **thresholds)
    qc = qc_flags(per_subject, min_dice, max_folding_percent, registration)
    failed = failed_subjects(results_dir, logs_dir)
    failed_shown = failed.assign(error=[_strip_absolute_paths(e) for e in failed["error"]])
    series = selected_series(manifest_path if manifest_path is not None else results_dir / "manifest.tsv")

    n_subjects = len(per_subject)
    n_with_dice = int(np.isfinite(per_subject["mean_dice"]).sum()) if n_subjects else 0
    body = [
        "<h1>unireg cohort report</h1>",
        f"<p>{n_subjects} subjects with metrics ({n_with_dice} with reference labels), "
        f"{len(failed)} failed, {len(qc)} flagged for QC, {outliers['subject'].nunique()} with volume "
        f"outliers; {len(per_label)} labels.</p>",
    ]
    body += _attention_html(failed_shown, qc, outliers, per_label, n_with_dice > 0)
    body += _registration_html(registration, thresholds)
    body += _series_html(series)
    if len(per_label):
        body += _volume_html(per_label, sample, outliers)
        body += _overlap_html(per_label, sample, min_dice)
        body += _subject_html(per_subject, outliers, n_with_dice > 0)
    else:
        body.append("<p>No metrics tables found.</p>")

    flagged = list(qc["subject"]) + list(dict.fromkeys(outliers["subject"]))
    order = list(dict.fromkeys(flagged)) + sorted(set(per_subject["subject"]) - set(flagged))
    images, notes = subject_qc_images(results_dir, order, max_qc_images)
    body += [
        "<h2>Subject QC images</h2>",
        f'<p class="note">Propagated label contours on three slices through the labels\' centre (RAS: superior '
        f"and anterior up, subject's right on the right in coronal and axial views); flagged subjects first, "
        f"then those with volume outliers, at most {max_qc_images}.</p>",
    ]
    if any(caption.endswith("fusion confidence") for caption, _ in images):
        body.append(
            "<p class=\"note\">Multi-atlas segmentation: each subject's second picture shows the fusion's "
            "confidence, the share of the atlases' weight its label got, on the preprocessed (atlas-space) image "
            "where the atlases disagree (red: low); where they all agree the image shows alone.</p>"
        )
    body += [f"<figure>{_img(uri, caption)}</figure>" for caption, uri in images]
    body += [f"<p>{html.escape(note)}</p>" for note in notes]
    if not images:
        body.append("<p>No subject image with propagated labels found.</p>")

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>unireg cohort report</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    write_text_atomic(html_path, page)
    return {
        "per_label": per_label,
        "per_subject": per_subject,
        "qc": qc,
        "failed": failed,
        "registration": registration,
        "volume_outliers": outliers,
        "series": series,
        "html": Path(html_path),
        "summary": Path(summary_path),
    }
