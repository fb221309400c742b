"""Cohort aggregation of per-subject metric tables and a self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import write_text_atomic


def collect_metrics(results_dir: str | Path) -> pd.DataFrame:
    """All ``sub-*/sub-*_metrics.tsv`` under ``results_dir`` as one table (subject x label rows)."""
    files = sorted(Path(results_dir).glob("sub-*/sub-*_metrics.tsv"))
    if not files:
        return pd.DataFrame(columns=["subject", "label", "name", "dice"])
    return pd.concat([pd.read_csv(f, sep="\t", dtype={"subject": str}) for f in files], ignore_index=True)


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per label: n subjects with a Dice, mean, sd, median, min of Dice."""
    grouped = metrics.dropna(subset=["dice"]).groupby(["label", "name"])["dice"]
    return grouped.agg(n="count", mean="mean", sd="std", median="median", min="min").reset_index()


def write_report(results_dir: str | Path, html_path: str | Path, summary_path: str | Path) -> pd.DataFrame:
    metrics = collect_metrics(results_dir)
    summary = summarise(metrics) if len(metrics) else pd.DataFrame()
    write_text_atomic(summary_path, summary.to_csv(sep="\t", index=False, float_format="%.4f"))
    per_subject = (metrics.groupby("subject")["dice"].mean().rename("mean_dice").reset_index()
                   if len(metrics) else pd.DataFrame())
    body = ["<h1>unireg cohort report</h1>",
            f"<p>{metrics['subject'].nunique() if len(metrics) else 0} subjects.</p>",
            "<h2>Dice per label</h2>", summary.to_html(index=False, float_format="%.3f", na_rep="NaN"),
            "<h2>Mean Dice per subject</h2>", per_subject.to_html(index=False, float_format="%.3f", na_rep="NaN")]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>unireg report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    write_text_atomic(html_path, page)
    return summary
