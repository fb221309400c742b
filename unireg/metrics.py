"""Per-label metrics between propagated and reference label maps: Dice, HD95, mean surface
distance (mm), volumes (ml), and the registration's folding statistics.

Dice uses one joint histogram of the two maps; HD95 and MSD use MONAI's surface-distance
metrics (definition in :func:`surface_distances`). Empty labels give NaN with a reason, never a
misleading 0 or 1 (see :func:`subject_metrics`).

One subject's table comes from :func:`metrics_files` (``unireg metrics``, rule ``metrics``);
:func:`regenerate_metrics` (``unireg report --table``) rewrites every subject's table of a
results folder from its propagated labels, e.g. against new reference labels, reading but never
writing the registration outputs. The cohort report (:mod:`unireg.report`) only reads the tables.
"""

from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from .errors import UniregError
from .io import load_image, read_label_table, write_text_atomic
from .layout import find_all, find_registration_record, sibling


def dice_per_label(reference: np.ndarray, prediction: np.ndarray, labels=None) -> dict[int, float]:
    """Dice of each label id (default: ids > 0 present in either map). NaN when both are empty."""
    reference = np.asarray(reference).ravel()
    prediction = np.asarray(prediction).ravel()
    if labels is None:
        labels = np.union1d(np.unique(reference), np.unique(prediction))
        labels = labels[labels > 0]
    size = int(max(reference.max(initial=0), prediction.max(initial=0), max(labels, default=0))) + 1
    # one joint histogram instead of a pass per label
    joint = np.bincount(reference.astype(np.int64) * size + prediction.astype(np.int64), minlength=size * size)
    joint = joint.reshape(size, size)
    ref_count, pred_count, both = joint.sum(1), joint.sum(0), np.diag(joint)
    out = {}
    for label in labels:
        label = int(label)
        denominator = ref_count[label] + pred_count[label]
        out[label] = float(2.0 * both[label] / denominator) if denominator > 0 else float("nan")
    return out


def mean_dice(reference: np.ndarray, prediction: np.ndarray, labels=None) -> float:
    """Mean Dice over the labels present in ``reference`` (or ``labels``)."""
    if labels is None:
        labels = np.unique(reference)
        labels = labels[labels > 0]
    values = [v for v in dice_per_label(reference, prediction, labels).values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


METRIC_COLUMNS = [
    "subject",
    "label",
    "name",
    "dice",
    "hd95_mm",
    "msd_mm",
    "volume_reference_ml",
    "volume_propagated_ml",
    "reason",
    "folding_percent",
    "log_jacobian_std",
]


def surface_distances(reference: np.ndarray, prediction: np.ndarray, spacing) -> tuple[float, float]:
    """(HD95, mean surface distance) in mm between two non-empty binary masks (MONAI).

    Definition: surfaces are the masks' boundary voxels (the mask minus its erosion); for every
    boundary voxel of one mask, the Euclidean distance (voxel spacing honoured, anisotropic
    included) to the nearest boundary voxel of the other. HD95 is the larger of the two directed
    95th percentiles; MSD is the mean over both directions together (symmetric). Both masks are
    cropped to their joint bounding box (plus a margin) first, which changes no distance.
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    both = reference | prediction
    lo = np.maximum(np.argwhere(both).min(axis=0) - 2, 0)
    hi = np.argwhere(both).max(axis=0) + 3
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ref = torch.from_numpy(reference[box])[None, None].float()
    pred = torch.from_numpy(prediction[box])[None, None].float()
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95, spacing=spacing)
        msd = compute_average_surface_distance(pred, ref, include_background=True, symmetric=True, spacing=spacing)
    return float(hd95.item()), float(msd.item())


def subject_metrics(
    labels, reference, table: dict[int, str], subject: str, registration: dict | None = None
) -> list[dict]:
    """One row per label of ``table``: Dice, HD95 and MSD (mm), volumes (ml), registration quality.

    ``labels`` and ``reference`` are :class:`unireg.io.Image` label maps on the same grid
    (``reference`` may be None: volumes only). Empty labels: when a label is empty in the
    reference, in the propagated map, or in both, Dice, HD95 and MSD are NaN and ``reason`` says
    which ("empty in reference", "empty in propagated labels", "empty in both"): never a
    misleading 0 or 1. Without reference labels the reason is "no reference labels".
    """
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    pred = labels.data
    ref = reference.data if reference is not None else None
    if ref is not None and (ref.shape != pred.shape or not np.allclose(reference.affine, labels.affine, atol=1e-3)):
        raise UniregError(
            "reference labels are not on the propagated labels' grid (the converted image's grid)",
            subject=subject,
            path=reference.path,
        )
    size = max(max(table, default=0), int(pred.max(initial=0)), int(ref.max(initial=0)) if ref is not None else 0) + 1
    pred_counts = np.bincount(pred.ravel().clip(0), minlength=size)
    ref_counts = np.bincount(ref.ravel().clip(0), minlength=size) if ref is not None else None
    dice = dice_per_label(ref, pred, list(table)) if ref is not None else {}
    jac = (registration or {}).get("jacobian", {})
    rows = []
    for label, name in sorted(table.items()):
        n_pred = int(pred_counts[label])
        n_ref = int(ref_counts[label]) if ref_counts is not None else 0
        value = hd95 = msd = float("nan")
        if ref is None:
            reason = "no reference labels"
        elif n_ref == 0 and n_pred == 0:
            reason = "empty in both"
        elif n_ref == 0:
            reason = "empty in reference"
        elif n_pred == 0:
            reason = "empty in propagated labels"
        else:
            reason = ""
            value = dice[label]
            hd95, msd = surface_distances(ref == label, pred == label, labels.spacing)
        rows.append(
            {
                "subject": subject,
                "label": label,
                "name": name,
                "dice": value,
                "hd95_mm": hd95,
                "msd_mm": msd,
                "volume_reference_ml": n_ref * voxel_ml if ref is not None else float("nan"),
                "volume_propagated_ml": n_pred * voxel_ml,
                "reason": reason,
                "folding_percent": jac.get("folding_percent", float("nan")),
                "log_jacobian_std": jac.get("log_jacobian_std", float("nan")),
            }
        )
    return rows


def write_metrics_tsv(rows: list[dict], path) -> None:
    def fmt(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = ["\t".join(METRIC_COLUMNS)] + ["\t".join(fmt(r[c]) for c in METRIC_COLUMNS) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def metrics_files(
    labels_path, table_path, out_path, reference_path=None, registration_path=None, subject: str = ""
) -> list[dict]:
    labels = load_image(labels_path, label=True, subject=subject)
    reference = load_image(reference_path, label=True, subject=subject) if reference_path else None
    registration = json.loads(open(registration_path).read()) if registration_path else None
    rows = subject_metrics(labels, reference, read_label_table(table_path), subject, registration)
    write_metrics_tsv(rows, out_path)
    return rows


def find_reference(subject: str, manifest_path=None, reference_dir=None):
    """The subject's reference label map: ``reference_dir/sub-<subject>_labels.nii.gz`` if given and
    present (a new reference set overrides the cohort's), else the manifest's ``reference``
    column (cohort TSV), else None."""
    if reference_dir:
        candidate = Path(reference_dir) / f"sub-{subject}_labels.nii.gz"
        if candidate.is_file():
            return str(candidate)
    if manifest_path:
        with open(manifest_path) as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row["subject"] == subject and row.get("reference"):
                    return row["reference"]
    return None


# --------------------------------------------------------------------------- regeneration


def registration_json(results_dir: str | Path, subject: str) -> Path | None:
    """The subject's registration record (the displacement's sidecar, or the fused labels' with an
    atlas set: :func:`unireg.layout.find_registration_record`), or None."""
    return find_registration_record(results_dir, subject)


def regenerate_metrics(
    results_dir: str | Path,
    table_path: str | Path,
    reference_dir: str | Path | None = None,
    manifest_path: str | Path | None = None,
) -> list[str]:
    """Rewrite every subject's metrics table from its existing propagated labels.

    For each subject's propagated ``labels`` (:mod:`unireg.layout`) the reference is
    :func:`find_reference` (``reference_dir`` overrides the manifest), and the
    registration's folding statistics come from its registration record when present;
    registration outputs are only read, never written. A failing subject does not stop the others:
    the errors are printed (``unireg: <one line>`` on stderr) and returned, one line each.
    """
    errors = []
    for subject, labels_path in find_all(results_dir, "labels").items():
        registration = registration_json(results_dir, subject)
        try:
            reference = find_reference(subject, manifest_path, reference_dir)
            metrics_files(
                labels_path, table_path, sibling(labels_path, "metrics"), reference, registration, subject=subject
            )
        except UniregError as err:
            errors.append(str(err.with_context(subject=subject)))
        except (OSError, ValueError) as err:  # unreadable registration.json / manifest
            errors.append(str(UniregError(f"{type(err).__name__}: {err}", subject=subject)))
    for line in errors:
        print(f"unireg: {line}", file=sys.stderr)
    return errors
