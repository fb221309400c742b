"""Cohort aggregation of the per-subject metric tables, QC flags, and a self-contained HTML report.

Inputs (the results layout written by the workflow):

* ``RESULTS/sub-<id>/sub-<id>_metrics.tsv``: one row per label (columns of
  :data:`unireg.metrics.METRIC_COLUMNS`; older files without ``hd95_mm``/``msd_mm`` are read
  with those columns NaN).
* ``RESULTS/sub-<id>/anat/sub-<id>_T1w.nii.gz`` and ``RESULTS/sub-<id>/sub-<id>_labels.nii.gz``:
  the subject's image and its propagated labels on the same (native) grid, for QC pictures.
* ``LOGS/<rule>/<id>.log``: a failed subject has no metrics table; its error is the last line
  starting with ``unireg: `` in its logs.

Outputs: per-label and per-subject aggregates (TSV + Parquet, :func:`write_aggregates`), and one
HTML file that opens offline (inline CSS, PNG images as base64 data URIs, no links or scripts;
:func:`write_report`). The HTML holds subject ids, label names and numbers only: no absolute paths
(paths inside error messages are cut to their file name) and nothing from DICOM headers.

Dice is unitless; HD95 is in mm; ``folding_percent`` is the percentage of voxels with a
non-positive Jacobian determinant (from the registration).
"""

from __future__ import annotations

import base64
import html
import io as _io
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UniregError
from .io import write_atomic, write_text_atomic

SUBJECT_ID = re.compile(r"^[A-Za-z0-9]+$")
METRICS_GLOB = "sub-*/sub-*_metrics.tsv"

#: Columns read from every per-subject table, with their dtypes (missing columns become NaN).
READ_DTYPES = {"subject": "str", "label": "int64", "name": "str", "dice": "float64", "hd95_mm": "float64",
               "msd_mm": "float64", "volume_reference_ml": "float64", "volume_propagated_ml": "float64",
               "reason": "str", "folding_percent": "float64", "log_jacobian_std": "float64"}

#: Per-label statistics, computed for Dice and HD95 over the subjects with a finite value.
LABEL_STATS = ("mean", "sd", "median", "q1", "q3", "iqr", "min", "max")
PER_LABEL_COLUMNS = (["label", "name", "n"] + [f"dice_{s}" for s in LABEL_STATS]
                     + ["hd95_n"] + [f"hd95_mm_{s}" for s in LABEL_STATS])
PER_SUBJECT_COLUMNS = ["subject", "n_labels", "n_nan_dice", "mean_dice", "median_hd95_mm",
                       "folding_percent", "log_jacobian_std"]

AGGREGATE_FILES = {"per_label": "cohort_metrics_per_label", "per_subject": "cohort_metrics_per_subject"}

#: QC defaults: a subject is flagged below this mean Dice, or above this folding percentage.
MIN_DICE = 0.5
MAX_FOLDING_PERCENT = 0.5
MAX_QC_IMAGES = 50
STRIP_PER_LABEL = 300  # dots per label in the strip plots (boxes use every value)

# files per dask partition: one partition per file costs far more in scheduling than in parsing
_FILES_PER_PARTITION = 250


# --------------------------------------------------------------------------- reading


def metric_tables(results_dir: str | Path) -> list[Path]:
    """The per-subject metric tables under ``results_dir``, sorted (subject ids that are not
    ``^[A-Za-z0-9]+$`` are ignored)."""
    files = []
    for path in sorted(Path(results_dir).glob(METRICS_GLOB)):
        subject = path.parent.name[len("sub-"):]
        if SUBJECT_ID.match(subject) and path.name == f"sub-{subject}_metrics.tsv":
            files.append(path)
    return files


def _empty_metrics() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in READ_DTYPES.items()})


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
        frame = pd.read_csv(_io.StringIO(header + "\n" + "".join(bodies)), sep="\t", dtype=wanted,
                            usecols=list(wanted), keep_default_na=False, na_values=["", "nan", "NaN"])
        frames.append(frame.reindex(columns=list(READ_DTYPES)))
    if not frames:
        return _empty_metrics()
    frame = pd.concat(frames, ignore_index=True)
    return frame.astype(READ_DTYPES)


def read_metrics(results_dir: str | Path):
    """All per-subject metric tables as one ``dask.dataframe`` (subject x label rows).

    Every subject's rows lie in one partition (partitions are groups of whole files), so
    per-subject reductions need no shuffle.
    """
    import dask.dataframe as dd
    files = [str(p) for p in metric_tables(results_dir)]
    if not files:
        return dd.from_pandas(_empty_metrics(), npartitions=1)
    chunks = [files[i:i + _FILES_PER_PARTITION] for i in range(0, len(files), _FILES_PER_PARTITION)]
    return dd.from_map(_read_tables, chunks, meta=_empty_metrics(), enforce_metadata=False)


# --------------------------------------------------------------------------- aggregation


def _stats(values: np.ndarray, prefix: str) -> dict:
    """mean, sd (n-1), median, q1, q3, iqr, min, max of the finite ``values`` (NaN when none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {f"{prefix}_{s}": float("nan") for s in LABEL_STATS}
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])  # linear interpolation, as pandas
    return {f"{prefix}_mean": float(values.mean()),
            f"{prefix}_sd": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
            f"{prefix}_median": float(median), f"{prefix}_q1": float(q1), f"{prefix}_q3": float(q3),
            f"{prefix}_iqr": float(q3 - q1), f"{prefix}_min": float(values.min()), f"{prefix}_max": float(values.max())}


def _per_label_partition(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-label statistics of one partition that holds *all* rows of its labels."""
    rows = []
    for (label, name), group in frame.groupby(["label", "name"], sort=True, dropna=False):
        dice = group["dice"].to_numpy(dtype=np.float64)
        hd95 = group["hd95_mm"].to_numpy(dtype=np.float64)
        rows.append({"label": label, "name": name, "n": int(np.isfinite(dice).sum()), **_stats(dice, "dice"),
                     "hd95_n": int(np.isfinite(hd95).sum()), **_stats(hd95, "hd95_mm")})
    return _per_label_frame(rows)


def _per_label_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=PER_LABEL_COLUMNS)
    return frame.astype({"label": "int64", "name": "str", "n": "int64", "hd95_n": "int64"})


def _per_subject_partition(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-subject summary of one partition that holds all rows of its subjects."""
    dice = frame["dice"].where(np.isfinite(frame["dice"]))
    hd95 = frame["hd95_mm"].where(np.isfinite(frame["hd95_mm"]))
    grouped = frame.assign(dice=dice, hd95_mm=hd95, nan_dice=dice.isna()).groupby("subject", sort=True)
    out = pd.DataFrame({"n_labels": grouped["label"].count(), "n_nan_dice": grouped["nan_dice"].sum(),
                        "mean_dice": grouped["dice"].mean(), "median_hd95_mm": grouped["hd95_mm"].median(),
                        "folding_percent": grouped["folding_percent"].max(),
                        "log_jacobian_std": grouped["log_jacobian_std"].max()})
    return _per_subject_frame(out.reset_index())


def _per_subject_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reindex(columns=PER_SUBJECT_COLUMNS)
    return frame.astype({"subject": "str", "n_labels": "int64", "n_nan_dice": "int64", "mean_dice": "float64",
                         "median_hd95_mm": "float64", "folding_percent": "float64", "log_jacobian_std": "float64"})


def aggregate(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cohort aggregates of the per-subject metric tables, computed with ``dask.dataframe``.

    Returns ``(per_label, per_subject)``:

    * ``per_label``: one row per (label, name): ``n`` = subjects with a finite Dice, then
      ``dice_{mean,sd,median,q1,q3,iqr,min,max}`` over those subjects, ``hd95_n`` and the same
      statistics of HD95 in mm (``hd95_mm_*``). Quantiles are exact (linear interpolation, as
      pandas); ``sd`` uses n - 1. NaN Dice/HD95 (empty labels, no reference) are left out.
    * ``per_subject``: ``subject``, ``n_labels``, ``n_nan_dice`` (labels without a Dice),
      ``mean_dice`` and ``median_hd95_mm`` over the labels with a value, ``folding_percent``
      and ``log_jacobian_std`` of the subject's registration.
    """
    per_label, per_subject, _ = _compute_tables(results_dir)
    return per_label, per_subject


def _sample_partition(frame: pd.DataFrame, per_label: int) -> pd.DataFrame:
    """Up to ``per_label`` seeded random rows of each label from one partition."""
    columns = ["label", "dice", "hd95_mm"]
    if not len(frame):
        return frame[columns]
    # a seeded shuffle, then the first rows of each label: a random sample per label
    return frame[columns].sample(frac=1.0, random_state=0).groupby("label").head(per_label)


def _compute_tables(results_dir: str | Path, strip_per_label: int = 0):
    """One pass over the metric files: (per_label, per_subject, strip-plot sample or None)."""
    import dask
    frame = read_metrics(results_dir)
    columns = ["label", "name", "dice", "hd95_mm"]
    meta_label = _per_label_frame([])
    # exact quantiles need every value of a label in one place: shuffle rows by label first
    by_label = frame[columns].shuffle(on="label").map_partitions(_per_label_partition, meta=meta_label)
    by_subject = frame.map_partitions(_per_subject_partition, meta=_per_subject_frame(pd.DataFrame()))
    todo = [by_label, by_subject]
    if strip_per_label:
        k = max(1, strip_per_label // max(1, frame.npartitions))
        todo.append(frame.map_partitions(_sample_partition, k, meta=frame._meta[["label", "dice", "hd95_mm"]]))
    results = dask.compute(*todo, scheduler="threads")
    per_label = results[0].sort_values(["label", "name"], kind="stable").reset_index(drop=True)
    per_subject = results[1].sort_values("subject", kind="stable").reset_index(drop=True)
    return per_label, per_subject, (results[2] if strip_per_label else None)


def _write_table(frame: pd.DataFrame, stem: Path) -> list[Path]:
    """``stem.tsv`` and ``stem.parquet``, each written atomically."""
    tsv = write_text_atomic(stem.with_suffix(".tsv"), frame.to_csv(sep="\t", index=False, float_format="%.6g"))
    parquet = write_atomic(stem.with_suffix(".parquet"), lambda tmp: frame.to_parquet(tmp, index=False))
    return [tsv, parquet]


def _write_aggregate_tables(per_label: pd.DataFrame, per_subject: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return (_write_table(per_label, out_dir / AGGREGATE_FILES["per_label"])
            + _write_table(per_subject, out_dir / AGGREGATE_FILES["per_subject"]))


def write_aggregates(results_dir: str | Path, out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`aggregate`, written to ``out_dir`` as ``cohort_metrics_per_label.{tsv,parquet}`` and
    ``cohort_metrics_per_subject.{tsv,parquet}``; returns ``(per_label, per_subject)``."""
    per_label, per_subject = aggregate(results_dir)
    _write_aggregate_tables(per_label, per_subject, out_dir)
    return per_label, per_subject


# --------------------------------------------------------------------------- QC


def qc_flags(per_subject: pd.DataFrame, min_dice: float = MIN_DICE,
             max_folding_percent: float = MAX_FOLDING_PERCENT) -> pd.DataFrame:
    """Subjects to look at, with why: columns ``subject, mean_dice, folding_percent, reasons``.

    A subject is flagged when its mean Dice is below Q1 - 1.5 IQR of the cohort's subject means
    (a low outlier), or below ``min_dice``, or when its registration folds more than
    ``max_folding_percent`` % of voxels. Subjects without a Dice (no reference) are only
    checked for folding.
    """
    means = per_subject["mean_dice"].to_numpy(dtype=np.float64)
    finite = means[np.isfinite(means)]
    fence = float("nan")
    if finite.size >= 4:  # a quartile fence needs a few subjects to mean anything
        q1, q3 = np.quantile(finite, [0.25, 0.75])
        fence = q1 - 1.5 * (q3 - q1)
    rows = []
    for row in per_subject.itertuples(index=False):
        reasons = []
        if np.isfinite(row.mean_dice) and np.isfinite(fence) and row.mean_dice < fence:
            reasons.append(f"mean Dice {row.mean_dice:.3f} is a low outlier (< Q1 - 1.5 IQR = {fence:.3f})")
        if np.isfinite(row.mean_dice) and row.mean_dice < min_dice:
            reasons.append(f"mean Dice {row.mean_dice:.3f} < {min_dice:g}")
        if np.isfinite(row.folding_percent) and row.folding_percent > max_folding_percent:
            reasons.append(f"folding {row.folding_percent:.3g} % > {max_folding_percent:g} %")
        if reasons:
            rows.append({"subject": row.subject, "mean_dice": row.mean_dice,
                         "folding_percent": row.folding_percent, "reasons": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=["subject", "mean_dice", "folding_percent", "reasons"])


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
    logs_dir = Path(logs_dir) if logs_dir is not None else results_dir.parent / "logs"
    done = {p.parent.name[len("sub-"):] for p in metric_tables(results_dir)}
    logs: dict[str, list[Path]] = {}
    if logs_dir.is_dir():
        for log in logs_dir.glob("*/*.log"):
            if log.stem == log.parent.name:  # logs/<rule>/<rule>.log: a cohort-level rule (atlas, report)
                continue
            subject = log.stem[len("sub-"):] if log.stem.startswith("sub-") else log.stem
            if SUBJECT_ID.match(subject):
                logs.setdefault(subject, []).append(log)
    folders = {p.name[len("sub-"):] for p in results_dir.glob("sub-*") if p.is_dir()}
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
            error = (f"no metrics table, and no 'unireg: ' error in its logs "
                     f"({', '.join(sorted(f'{p.parent.name}/{p.name}' for p in logs[subject]))})")
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


def box_strip_figure(per_label: pd.DataFrame, sample: pd.DataFrame, metric: str, ylabel: str) -> str:
    """Box (quartiles, median, whiskers min-max) and strip plot per label; a PNG data URI.

    ``metric`` is the column prefix in ``per_label`` (``dice`` or ``hd95_mm``) and the column
    name in ``sample``.
    """
    from matplotlib.figure import Figure
    labels = per_label.reset_index(drop=True)
    fig = Figure(figsize=(max(4.0, 0.5 * len(labels) + 1.5), 3.2), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    stats, positions = [], []
    for pos, row in enumerate(labels.itertuples(index=False), start=1):
        get = row._asdict()
        if not np.isfinite(get[f"{metric}_median"]):
            continue
        stats.append({"med": get[f"{metric}_median"], "q1": get[f"{metric}_q1"], "q3": get[f"{metric}_q3"],
                      "whislo": get[f"{metric}_min"], "whishi": get[f"{metric}_max"], "fliers": [],
                      "label": str(get["name"])})
        positions.append(pos)
    if stats:
        ax.bxp(stats, positions=positions, showfliers=False, widths=0.6)
    rng = np.random.default_rng(0)
    for pos, label in enumerate(labels["label"], start=1):
        values = sample.loc[sample["label"] == label, metric].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        ax.scatter(pos + rng.uniform(-0.18, 0.18, values.size), values, s=6, alpha=0.5, color="tab:blue",
                   linewidths=0)
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels([str(n) for n in labels["name"]], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(0.5, len(labels) + 0.5)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png_data_uri(fig)


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
    centre = _label_centre(lab)
    finite = data[np.isfinite(data)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    spacing = labels.spacing
    # (name, 2-D slice with axes (horizontal, vertical), horizontal/vertical voxel sizes)
    panels = [("sagittal", np.s_[centre[0], :, :], (spacing[1], spacing[2])),
              ("coronal", np.s_[:, centre[1], :], (spacing[0], spacing[2])),
              ("axial", np.s_[:, :, centre[2]], (spacing[0], spacing[1]))]
    n_colours = 20
    colours = ListedColormap([(0, 0, 0, 0)] + [(*c[:3], 1.0) for c in colormaps["tab20"].colors[:n_colours]])
    fig = Figure(figsize=(7.5, 2.7), dpi=80)
    for n, (name, index, (dx, dy)) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 3, n)
        ax.imshow(data[index].T, origin="lower", cmap="gray", vmin=lo, vmax=hi, aspect=dy / dx,
                  interpolation="nearest")
        edges = _label_edges(lab[index])
        shown = np.where(edges > 0, (edges - 1) % n_colours + 1, 0)
        ax.imshow(shown.T, origin="lower", cmap=colours, vmin=0, vmax=n_colours, aspect=dy / dx,
                  interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png_data_uri(fig)


def subject_qc_images(results_dir: str | Path, subjects: list[str],
                      max_images: int = MAX_QC_IMAGES) -> tuple[list[tuple[str, str]], list[str]]:
    """QC pictures ``(subject, data URI)`` for up to ``max_images`` of ``subjects`` (in order),
    skipping subjects whose image or labels are missing; also one note per unreadable subject."""
    from .io import load_image
    results_dir = Path(results_dir)
    images, notes = [], []
    for subject in subjects:
        if len(images) >= max_images:
            break
        folder = results_dir / f"sub-{subject}"
        image_path = folder / "anat" / f"sub-{subject}_T1w.nii.gz"
        labels_path = folder / f"sub-{subject}_labels.nii.gz"
        if not (image_path.is_file() and labels_path.is_file()):
            continue
        try:
            image = load_image(image_path, subject=subject)
            labels = load_image(labels_path, label=True, subject=subject)
            if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
                raise UniregError("image and propagated labels are not on the same grid", subject=subject)
            images.append((subject, qc_figure(image, labels, f"sub-{subject}")))
        except UniregError as err:
            notes.append(f"sub-{subject}: no QC image ({err.message})")
    return images, notes


# --------------------------------------------------------------------------- HTML

_CSS = """body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+2){text-align:left}
.qc td{text-align:left}.flag{color:#a00}
figure{display:inline-block;margin:0.3em}figcaption{font-size:0.8em;color:#555}
details summary{cursor:pointer;margin:0.5em 0}"""


def _table(frame: pd.DataFrame, css_class: str = "", table_id: str | None = None) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="NaN", border=0,
                         classes=css_class or None, table_id=table_id)


def write_report(results_dir: str | Path, html_path: str | Path, summary_path: str | Path,
                 logs_dir: str | Path | None = None, *, min_dice: float = MIN_DICE,
                 max_folding_percent: float = MAX_FOLDING_PERCENT, max_qc_images: int = MAX_QC_IMAGES) -> dict:
    """Cohort tables, QC flags and a self-contained HTML report.

    Writes ``summary_path`` (the per-label TSV, the workflow's ``cohort_metrics.tsv``), the
    aggregates of :func:`write_aggregates` beside it, and ``html_path``. Logs of failed subjects
    are looked up in ``logs_dir`` (default ``results_dir/../logs``). Returns a dict with
    ``per_label``, ``per_subject``, ``qc`` (flagged subjects), ``failed`` (frames), and
    ``html``/``summary`` (paths).
    """
    per_label, per_subject, sample = _compute_tables(results_dir, strip_per_label=STRIP_PER_LABEL)
    write_text_atomic(summary_path, per_label.to_csv(sep="\t", index=False, float_format="%.6g"))
    _write_aggregate_tables(per_label, per_subject, Path(summary_path).parent)
    qc = qc_flags(per_subject, min_dice, max_folding_percent)
    failed = failed_subjects(results_dir, logs_dir)
    failed_shown = failed.assign(error=[_strip_absolute_paths(e) for e in failed["error"]])

    n_subjects = len(per_subject)
    n_with_dice = int(np.isfinite(per_subject["mean_dice"]).sum()) if n_subjects else 0
    body = ["<h1>unireg cohort report</h1>",
            f"<p>{n_subjects} subjects with metrics ({n_with_dice} with reference labels), "
            f"{len(failed)} failed, {len(qc)} flagged for QC.</p>"]

    body += ["<h2>Quality control</h2>",
             f"<p>Flagged: mean Dice below Q1 - 1.5 IQR of the subjects' means or below {min_dice:g}, "
             f"or folding (non-positive Jacobian) above {max_folding_percent:g} % of voxels.</p>",
             _table(qc, "qc", "qc-flags") if len(qc) else "<p>No subject flagged.</p>",
             "<h3>Failed subjects</h3>",
             _table(failed_shown, "qc", "qc-failed") if len(failed) else "<p>No failed subject.</p>"]

    body.append("<h2>Per label</h2>")
    if len(per_label):
        body += ['<figure>' + _img(box_strip_figure(per_label, sample, "dice", "Dice"), "Dice per label")
                 + "<figcaption>Dice per label: box = quartiles and median, whiskers = min-max, "
                   "dots = subjects (a random sample in large cohorts).</figcaption></figure>",
                 '<figure>' + _img(box_strip_figure(per_label, sample, "hd95_mm", "HD95 (mm)"), "HD95 per label")
                 + "<figcaption>HD95 (mm) per label.</figcaption></figure>",
                 _table(per_label, "", "per-label")]
    else:
        body.append("<p>No metrics tables found.</p>")

    body += ["<h2>Per subject</h2>", "<details open><summary>Table (sorted by mean Dice)</summary>",
             _table(per_subject.sort_values("mean_dice", kind="stable", na_position="last"), "", "per-subject"),
             "</details>"]

    flagged = list(qc["subject"])
    order = flagged + sorted(set(per_subject["subject"]) - set(flagged))
    images, notes = subject_qc_images(results_dir, order, max_qc_images)
    body += ["<h2>Subject QC images</h2>",
             f"<p>Propagated label contours on three slices through the labels' centre (RAS: superior and "
             f"anterior up, subject's right on the right in coronal and axial views); flagged subjects first, "
             f"at most {max_qc_images}.</p>"]
    body += [f"<figure>{_img(uri, f'sub-{s} QC')}</figure>" for s, uri in images]
    body += [f"<p>{html.escape(note)}</p>" for note in notes]
    if not images:
        body.append("<p>No subject image with propagated labels found.</p>")

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>unireg cohort report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    write_text_atomic(html_path, page)
    return {"per_label": per_label, "per_subject": per_subject, "qc": qc, "failed": failed,
            "html": Path(html_path), "summary": Path(summary_path)}


# --------------------------------------------------------------------------- regeneration


def regenerate_metrics(results_dir: str | Path, table_path: str | Path, reference_dir: str | Path | None = None,
                       manifest_path: str | Path | None = None) -> list[str]:
    """Rewrite every subject's metrics table from its existing propagated labels.

    For each ``results_dir/sub-<id>/sub-<id>_labels.nii.gz`` the reference is
    :func:`unireg.metrics.find_reference` (``reference_dir`` overrides the manifest), and the
    registration's folding statistics come from ``sub-<id>/reg/registration.json`` when present;
    registration outputs are only read, never written. A failing subject does not stop the others:
    the errors are printed (``unireg: <one line>`` on stderr) and returned, one line each.
    """
    from .metrics import find_reference, metrics_files
    errors = []
    for labels_path in sorted(Path(results_dir).glob("sub-*/sub-*_labels.nii.gz")):
        subject = labels_path.parent.name[len("sub-"):]
        if not SUBJECT_ID.match(subject) or labels_path.name != f"sub-{subject}_labels.nii.gz":
            continue
        registration = labels_path.parent / "reg" / "registration.json"
        try:
            reference = find_reference(subject, manifest_path, reference_dir)
            metrics_files(labels_path, table_path, labels_path.parent / f"sub-{subject}_metrics.tsv",
                          reference, registration if registration.is_file() else None, subject=subject)
        except UniregError as err:
            errors.append(str(err.with_context(subject=subject)))
        except (OSError, ValueError) as err:  # unreadable registration.json / manifest
            errors.append(str(UniregError(f"{type(err).__name__}: {err}", subject=subject)))
    for line in errors:
        print(f"unireg: {line}", file=sys.stderr)
    return errors
