"""Overlap metrics between label maps (per label), used by training validation and reports."""

from __future__ import annotations

import numpy as np


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
